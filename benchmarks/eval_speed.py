r"""Images/s of the evaluation programs: G in eval mode (`sample`, in-training grids and
evaluations) and the Inception feature extractor (FID, IS, KID, PRDC), each compiled as
sagan_jax compiles it and, beside it, as a plain `jax.jit` without per-program XLA options.

  python benchmarks/eval_speed.py                                   # 128px peer shape
  python benchmarks/eval_speed.py --set model.resolution=32 model.ch=32 model.g_attention=16 \
      model.d_attention=16 model.dtype=float32 model.sn_eps=1e-8   # (--set replaces the defaults)

On a CPU, float32 programs compile with per-program XLA options that set YNNPACK's
fusions to reductions only (`xla_flags.compiler_options`: on jaxlib >= 0.11 that gives
back the reduce fusion the process-wide bfloat16 workaround turns off; on jaxlib 0.10
it keeps the convolutions out of YNNPACK's slower fusions). This script measures what that is worth
outside the train step (where `train_speed.py` measures it): the two variants of each
program are compiled in one process and run in turn, --rounds times; the JSON line gives
each variant's median seconds per batch, images/s and the ratio plain / ours. Weights
are random (the work does not depend on their values). Where the options do not apply
(an older jaxlib, an accelerator, bfloat16), the two variants are the same program.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_speed import load_config, peer_shape_overrides  # noqa: E402  (this directory)


def _interleaved(fns: dict, rounds: int) -> dict:
  """Median seconds of each no-argument callable, one call of each in turn per round
  (after one untimed call each, which compiles)."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def _report(seconds: dict, images: int) -> dict:
  return {"ours_s": round(seconds["ours"], 4), "plain_s": round(seconds["plain"], 4),
          "ours_img_per_s": round(images / seconds["ours"], 2),
          "plain_img_per_s": round(images / seconds["plain"], 2),
          "plain_over_ours": round(seconds["plain"] / seconds["ours"], 3)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/imagenet128.py")
  p.add_argument("--set", nargs="*", default=None,
                 help="overrides FIELD=VALUE (default: peer_pytorch's 128px shape)")
  p.add_argument("--sample_batch", type=int, default=50, help="images per G call")
  p.add_argument("--inception_batch", type=int, default=8,
                 help="images per Inception call (8: the extractor's CPU default)")
  p.add_argument("--rounds", type=int, default=5, help="timed calls of each variant")
  args = p.parse_args(argv)
  if min(args.sample_batch, args.inception_batch, args.rounds) < 1:
    p.error("--sample_batch, --inception_batch and --rounds must be at least 1")

  import jax
  import jax.numpy as jnp
  from sagan_jax import cpu_devices, parallel, sampling, xla_flags
  from sagan_jax import state as state_lib
  from sagan_jax.evaluation import inception

  overrides = peer_shape_overrides("128px") if args.set is None else args.set
  config = load_config(args.config, overrides)
  m = config.model
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, parallel.make_mesh(1))
  g_var = state_lib.generator_variables(state, True)
  b = args.sample_batch
  z = jax.random.normal(jax.random.PRNGKey(0), (b, m.z_dim))
  y = jnp.arange(b, dtype=jnp.int32) % max(m.num_classes, 1)
  gen = models.generator
  ours_g = sampling.jitted_generate(gen)
  plain_g = jax.jit(functools.partial(sampling.generate, gen))
  g_seconds = _interleaved({"ours": lambda: ours_g(g_var, z, y).block_until_ready(),
                            "plain": lambda: plain_g(g_var, z, y).block_until_ready()},
                           args.rounds)

  params = inception.InceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
  images = np.random.default_rng(0).integers(
      0, 256, (args.inception_batch, m.resolution, m.resolution, 3), dtype=np.uint8)
  ours_i = inception.FeatureExtractor(params, False, batch_size=args.inception_batch)
  options = xla_flags.compiler_options
  xla_flags.compiler_options = lambda *a, **k: None
  try:
    plain_i = inception.FeatureExtractor(params, False, batch_size=args.inception_batch)
  finally:
    xla_flags.compiler_options = options
  i_seconds = _interleaved({"ours": lambda: ours_i(images), "plain": lambda: plain_i(images)},
                           args.rounds)

  out = {"config": args.config, "overrides": overrides, "dtype": str(m.dtype),
         "options": xla_flags.compiler_options(m.dtype),
         "generate": {"batch": b, "resolution": m.resolution, **_report(g_seconds, b)},
         "inception": {"batch": args.inception_batch,
                       **_report(i_seconds, args.inception_batch)},
         "rounds": args.rounds,
         "machine": {"cpu": cpu_devices.cpu_model(), "cores": os.cpu_count(),
                     "jax": jax.__version__, "device": jax.devices()[0].platform,
                     "load_average": [round(x, 2) for x in os.getloadavg()]}}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
