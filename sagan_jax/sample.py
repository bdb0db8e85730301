r"""Images from a trained run (EMA generator by default).

  python -m sagan_jax.sample --workdir runs/digits --out grid.png
  python -m sagan_jax.sample --workdir runs/digits --out sheet.png --classes=3,5 --per_class=16
  python -m sagan_jax.sample --workdir runs/digits --out t.png --truncation=0.5
  python -m sagan_jax.sample --workdir runs/digits --interpolate interp.png --steps 8
  python -m sagan_jax.sample --workdir runs/digits --attention attn.png --queries=4:4,8:8
  python -m sagan_jax.sample --workdir runs/digits --npz samples.npz --num_samples 1000
  python -m sagan_jax.sample --workdir runs/digits --out grid.png --standing_stats 16
  python -m sagan_jax.sample --workdir runs/digits --out best.png --best

`sagan-jax sample ...` is the same command. The grid has one row per class. `--interpolate` writes one row per class
walking linearly between two noise vectors; `--attention` writes, for each
sample, the image and where G's self-attention looks from each query pixel
(the SAGAN paper's Figure 5). `--npz` writes `images` (uint8 N x H x W x 3)
and `labels` (int32 N), classes balanced, for evaluation tools.
`--standing_stats N` first recomputes G's BN statistics from N train-mode
passes (BigGAN's standing statistics). Python code: `sagan_jax.load(workdir)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath

from sagan_jax import api, command, errors, exploration, images, utils
from sagan_jax.sampling import balanced_labels
from sagan_jax.state import generator_variables

FLAGS = flags.FLAGS


def write_interpolation(run: api.Run, classes, use_ema):
  """One row per class: G(z) along a line from z0 to z1 (class fixed)."""
  m = run.config.model
  key = jax.random.PRNGKey(FLAGS.seed)
  zs = []
  for k in range(len(classes)):
    k0, k1 = jax.random.split(jax.random.fold_in(key, k))
    z0 = exploration.truncated_z(k0, 1, m.z_dim, FLAGS.truncation)[0]
    z1 = exploration.truncated_z(k1, 1, m.z_dim, FLAGS.truncation)[0]
    zs.append(exploration.interpolate(z0, z1, FLAGS.steps))
  z = np.asarray(jnp.concatenate(zs))
  labels = np.repeat(np.asarray(classes, np.int32), FLAGS.steps)
  imgs = images.to_uint8(run.generate(z, labels, ema=use_ema, batch_size=FLAGS.batch_size))
  images.save_png(FLAGS.interpolate, images.make_grid(imgs, FLAGS.steps),
                  scale=FLAGS.scale or images.display_scale(m.resolution))
  utils.say(f"wrote {FLAGS.interpolate}: {len(classes)} rows x {FLAGS.steps} interpolation steps")


def write_attention(run: api.Run, classes, use_ema):
  """Per sample: the image, then one overlay per query pixel of G's attention."""
  m = run.config.model
  if not m.g_attention:
    raise app.UsageError("this generator has no self-attention layer (model.g_attention is empty)")
  n = FLAGS.attention_samples
  labels = np.asarray([classes[i % len(classes)] for i in range(n)], np.int32)
  z = exploration.truncated_z(jax.random.PRNGKey(FLAGS.seed), n, m.z_dim, FLAGS.truncation)
  out, maps = exploration.generate_with_attention(
      run.models.generator, generator_variables(run.state, use_ema), z,
      jnp.asarray(labels))
  name = FLAGS.attention_layer or sorted(maps)[0]
  if name not in maps:
    raise app.UsageError(f"--attention_layer {name!r}: G has {sorted(maps)}")
  try:
    queries = (exploration.parse_queries(FLAGS.queries, m.resolution) if FLAGS.queries
               else exploration.default_queries(m.resolution))
  except ValueError as e:
    raise app.UsageError(f"--queries {FLAGS.queries!r}: {e} (give row:col,row:col in "
                         "pixels)") from None
  tiles = exploration.attention_sheet(images.to_uint8(out), np.asarray(maps[name]), queries)
  images.save_png(FLAGS.attention, images.make_grid(tiles, 1 + len(queries)),
                  scale=FLAGS.scale or images.display_scale(m.resolution))
  utils.say(f"wrote {FLAGS.attention}: {n} samples x {len(queries)} query points, layer {name}")


def check_flags() -> None:
  """Every numeric flag in its range, before anything is loaded or written."""
  check = errors.check_flag
  for name in ("per_class", "num_samples", "batch_size", "attention_samples"):
    check(FLAGS[name].value >= 1, name, FLAGS[name].value, "must be a positive integer")
  for name in ("standing_stats", "scale"):
    check(FLAGS[name].value >= 0, name, FLAGS[name].value, "must be an integer >= 0")
  check(0 <= FLAGS.seed < 2**31, "seed", FLAGS.seed, "must be an integer in [0, 2**31)")
  check(FLAGS.step is None or FLAGS.step >= 0, "step", FLAGS.step,
        "must be a checkpoint step >= 0 (default: the newest)")
  check(FLAGS.steps >= 2, "steps", FLAGS.steps, "must be >= 2 (both ends of the line)")
  check(FLAGS.truncation is None or FLAGS.truncation > 0, "truncation", FLAGS.truncation,
        "must be > 0 (e.g. 0.5; leave it out for no truncation)")


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not (FLAGS.out or FLAGS.npz or FLAGS.interpolate or FLAGS.attention):
    raise app.UsageError("give --out grid.png, --npz samples.npz, --interpolate interp.png "
                         "or --attention attn.png")
  check_flags()
  run = api.load(FLAGS.workdir, FLAGS.step, best=FLAGS.best)
  m = run.config.model
  use_ema = FLAGS.ema
  if FLAGS.standing_stats:
    run = run.with_standing_stats(FLAGS.standing_stats, FLAGS.batch_size, FLAGS.seed, use_ema)
    utils.say(f"standing statistics: G's BN statistics from {FLAGS.standing_stats} passes of "
              f"{FLAGS.batch_size}")
  if FLAGS.classes:
    try:
      classes = [int(c) for c in FLAGS.classes.split(",")]
    except ValueError:
      raise app.UsageError(f"--classes {FLAGS.classes!r}: give class ids like 3,5") from None
    bad = [c for c in classes if not 0 <= c < max(m.num_classes, 1)]
    if bad:
      raise app.UsageError(f"--classes {bad} outside 0..{max(m.num_classes, 1) - 1}")
  else:
    classes = list(range(min(m.num_classes, 10))) if m.num_classes else [0]
  if FLAGS.out:
    labels = np.repeat(np.asarray(classes, np.int32), FLAGS.per_class)
    imgs = run.sample(len(labels), FLAGS.seed, labels, use_ema, FLAGS.batch_size,
                      FLAGS.truncation)
    grid = images.make_grid(imgs, FLAGS.per_class)
    images.save_png(FLAGS.out, grid, scale=FLAGS.scale or images.display_scale(m.resolution))
    utils.say(f"wrote {FLAGS.out}: {len(classes)} classes x {FLAGS.per_class} samples, "
          f"step {run.step}, {'EMA' if use_ema else 'raw'} generator")
  if FLAGS.interpolate:
    write_interpolation(run, classes, use_ema)
  if FLAGS.attention:
    write_attention(run, classes, use_ema)
  if FLAGS.npz:
    labels = balanced_labels(FLAGS.num_samples, m.num_classes)
    imgs = run.sample(FLAGS.num_samples, FLAGS.seed, labels, use_ema, FLAGS.batch_size)
    out = epath.Path(FLAGS.npz)
    out.parent.mkdir(parents=True, exist_ok=True)   # as the PNG writers do
    with out.open("wb") as f:
      np.savez(f, images=imgs, labels=labels)
    utils.say(f"wrote {FLAGS.npz}: images {imgs.shape} uint8, labels {labels.shape}")


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.")
  flags.DEFINE_string("out", None, "PNG path for a class grid (a row per class).")
  flags.DEFINE_string("classes", None, "Comma-separated class ids for the grid "
                      "(default: the first 10 classes).")
  flags.DEFINE_integer("per_class", 10, "Samples per class (grid columns).")
  flags.DEFINE_integer("seed", 0, "Noise seed.")
  flags.DEFINE_bool("ema", True, "Sample with the EMA generator (--noema: the raw G).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
  flags.DEFINE_bool("best", False, "From the best-evaluated checkpoint (WORKDIR/checkpoints_best, "
                    "kept when the run had an in-training evaluation) instead of the newest.")
  flags.DEFINE_string("npz", None, "Write --num_samples samples to this .npz (images, labels).")
  flags.DEFINE_integer("num_samples", 1000, "Number of samples for --npz.")
  flags.DEFINE_integer("batch_size", 100, "Generation batch size.")
  flags.DEFINE_integer("standing_stats", 0, "Recompute G's BN statistics from N train-mode "
                       "passes of --batch_size samples first (BigGAN's standing statistics); "
                       "0: the EMA running statistics.")
  flags.DEFINE_integer("scale", 0, "PNG upscale factor (0: to ~128 px tiles).")
  flags.DEFINE_float("truncation", None, "Truncation trick: sample z from N(0, I) "
                     "truncated to [-t, t] (e.g. 0.5); default no truncation.")
  flags.DEFINE_string("interpolate", None, "PNG path: latent interpolation, a row per class.")
  flags.DEFINE_integer("steps", 8, "Interpolation steps per row.")
  flags.DEFINE_string("attention", None, "PNG path: G's attention maps for query pixels.")
  flags.DEFINE_string("queries", None, "Query pixels 'row:col,row:col' (default: 3 on the "
                      "diagonal).")
  flags.DEFINE_integer("attention_samples", 4, "Samples (rows) in the attention sheet.")
  flags.DEFINE_string("attention_layer", None, "Which G attention layer, e.g. attention64 "
                      "(default: the first).")
  flags.mark_flag_as_required("workdir")


if __name__ == "__main__":
  command.run(main, define_flags)
