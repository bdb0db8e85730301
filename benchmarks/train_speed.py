r"""Training-step throughput, printed as one JSON line per config.

  python benchmarks/train_speed.py                      # digits default + a small 128px model
  python benchmarks/train_speed.py --configs configs/imagenet128.py --set batch_size=256 --steps 20
  python benchmarks/train_speed.py --peer_shapes --steps 5 --warmup 1   # vs BigGAN-PyTorch

For each config: compile time, seconds per iteration (median of --steps
timed iterations after --warmup; also the median process CPU seconds, all
threads, per iteration, which other jobs on a shared machine move less),
images/s, the XLA FLOPs of one iteration, and achieved GFLOP/s. It also
measures this machine's float32 (and bfloat16) matmul peak in the same run,
so the `mfu` field is achieved FLOP/s over that measured peak (on
accelerators pass --peak_tflops for the datasheet peak instead).

--peer_shapes NAME... runs configs/imagenet128.py at the shapes that
benchmarks/peer_pytorch.py times BigGAN-PyTorch's SAGAN at (32px, 128px; all
when no name is given), fp32, with the same parameter counts: run the two
scripts one after the other with the same --steps/--warmup and compare
sec_per_iteration (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peer_pytorch import SHAPES, cpu_model  # noqa: E402  (this directory; imports no torch)


def load_config(path: str, overrides: list[str]):
  """config_base.load with FIELD=VALUE strings (parsed as the field's type)."""
  from sagan_jax import config_base
  return config_base.load(path, dict(kv.split("=", 1) for kv in overrides))


def peer_shape_overrides(name: str) -> list[str]:
  """configs/imagenet128.py overrides for one of peer_pytorch's SHAPES: float32, and the
  SN epsilon of BigGAN-PyTorch's SAGAN script."""
  res, ch, batch, attn = SHAPES[name]
  return [f"model.resolution={res}", f"model.ch={ch}", f"model.g_attention={attn}",
          f"model.d_attention={attn}", f"batch_size={batch}", "model.dtype=float32",
          "model.sn_eps=1e-8"]


def matmul_peak_gflops(dtype: str, n: int = 2048, reps: int = 10) -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def bench_config(path: str, overrides: list[str], steps: int, warmup: int) -> dict:
  import jax
  import numpy as np
  from sagan_jax import data, parallel, state as state_lib, train
  from sagan_jax.describe import _flops, count
  config = load_config(path, overrides)
  if config.data.source != "digits":  # synthetic uint8 batches: measure the model, not I/O
    source = None
  else:
    source = data.make_source(config)
  mesh = parallel.make_mesh(config.mesh.num_devices)
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  step_fn = train.make_train_step(models, config, mesh)
  m = config.model
  rng = train.step_rng(config, mesh)
  n = config.optim.n_critic
  fake = {"image": np.random.default_rng(0).integers(
      0, 256, (n, config.batch_size, m.resolution, m.resolution, 3), dtype=np.uint8),
          "label": np.zeros((n, config.batch_size), np.int32)}

  def batch():
    if source is None:
      return parallel.global_batch(fake, mesh, 1)
    parts = [next(source) for _ in range(n)]
    return parallel.global_batch({k: np.stack([p[k] for p in parts]) for k in fake}, mesh, 1)

  b = batch()
  t = time.perf_counter()
  compiled = step_fn.lower(state, b, rng).compile()
  compile_s = time.perf_counter() - t
  flops = _flops(compiled) * mesh.devices.size
  for _ in range(warmup):
    state, metrics = step_fn(state, batch(), rng)
  jax.block_until_ready(state)  # (state, not metrics: --warmup 0 runs no step here)
  times, cpu_times = [], []
  for _ in range(steps):
    b = batch()
    t, c = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, b, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  s = statistics.median(times)
  return {"config": os.path.basename(path), "overrides": overrides,
          "resolution": m.resolution, "ch": m.ch, "batch_size": config.batch_size,
          "g_params": count(state.g["params"]), "d_params": count(state.d["params"]),
          "dtype": m.dtype, "devices": mesh.devices.size, "compile_s": round(compile_s, 2),
          "sec_per_iteration": round(s, 4), "sec_per_iteration_min": round(min(times), 4),
          "cpu_sec_per_iteration": round(statistics.median(cpu_times), 4),
          "steps_per_sec": round(1 / s, 3), "images_per_sec": round(config.batch_size / s, 2),
          "gflop_per_iteration": round(flops / 1e9, 2),
          "achieved_gflops": round(flops / s / 1e9, 1)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", nargs="*", default=None,
                  help="config files (default: digits, and imagenet128 shrunk to ch=16, batch 8)")
  ap.add_argument("--peer_shapes", nargs="*", default=None, choices=list(SHAPES),
                  help="imagenet128.py at peer_pytorch.py's shapes (no name: all of them)")
  ap.add_argument("--set", nargs="*", default=[], help="overrides FIELD=VALUE for every config")
  ap.add_argument("--steps", type=int, default=10, help="timed iterations")
  ap.add_argument("--warmup", type=int, default=2, help="untimed iterations after compile")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="device peak for MFU (default: measured matmul peak of this machine)")
  args = ap.parse_args()
  import jax
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if args.peer_shapes is not None:  # (config, overrides, peer shape name)
    runs = [(os.path.join(root, "configs/imagenet128.py"), peer_shape_overrides(name)
             + list(args.set), name) for name in (args.peer_shapes or SHAPES)]
  elif args.configs:
    runs = [(c, list(args.set), None) for c in args.configs]
  else:
    runs = [(os.path.join(root, "configs/digits.py"), list(args.set), None),
            (os.path.join(root, "configs/imagenet128.py"),
             ["model.ch=16", "batch_size=8", "model.dtype=float32"] + list(args.set), None)]
  peak32 = matmul_peak_gflops("float32")
  peak16 = matmul_peak_gflops("bfloat16")
  machine = {"cpu": cpu_model(), "backend": jax.default_backend(),
             "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
             "cpu_count": os.cpu_count(),
             "matmul_peak_gflops_f32": round(peak32, 1),
             "matmul_peak_gflops_bf16": round(peak16, 1)}
  for path, overrides, shape in runs:
    r = bench_config(path, overrides, args.steps, args.warmup)
    if shape:
      r["shape"] = shape
    peak = args.peak_tflops * 1e3 if args.peak_tflops else (
        peak16 if r["dtype"] == "bfloat16" else peak32)
    r["mfu"] = round(r["achieved_gflops"] / peak, 4)
    r["machine"] = machine
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
