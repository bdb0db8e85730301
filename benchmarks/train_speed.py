r"""Training-step throughput, printed as one JSON line per config.

  python benchmarks/train_speed.py                      # digits default + a small 128px model
  python benchmarks/train_speed.py --configs configs/imagenet128.py --set batch_size=256 --steps 20
  python benchmarks/train_speed.py --peer_shapes --steps 5 --warmup 1   # vs BigGAN-PyTorch

  python benchmarks/train_speed.py --configs configs/digits.py --steps 20 \
      --compare 'model.conv_impl=xla' 'model.conv_impl=auto' --devices 1 2

For each config: compile time, seconds per iteration (median of --steps
timed iterations after --warmup; also the median process CPU seconds, all
threads, per iteration, which other jobs on a shared machine move less),
images/s, the XLA FLOPs of one iteration, and achieved GFLOP/s. It also
measures this machine's float32 (and bfloat16) matmul peak in the same run,
so the `mfu` field is achieved FLOP/s over that measured peak (on
accelerators pass --peak_tflops for the datasheet peak instead; `mfu_measured`
then gives the ratio to the measured matmul rate too).

--peer_shapes NAME... runs configs/imagenet128.py at the shapes that
benchmarks/peer_pytorch.py times BigGAN-PyTorch's SAGAN at (32px, 128px; all
when no name is given), fp32, with the same parameter counts: run the two
scripts one after the other with the same --steps/--warmup and compare
sec_per_iteration (benchmarks/README.md).

--compare times variants of one config side by side instead (conv
implementations, device counts, any override): all are compiled in one
process, then one step of each in turn, --steps rounds; each JSON line gives
the median and its ratio to the first variant. --devices splits the CPU into
that many XLA devices (a 1-device mesh then uses one of them: the same
threads as a 1-device process). A variant containing `xla_options=none` compiles
its step without sagan_jax's per-program XLA options (`xla_flags.compiler_options`,
float32 on CPU), to time what they are worth:

  python benchmarks/train_speed.py --configs configs/imagenet128.py --steps 3 --warmup 0 \
      --set model.resolution=128 model.ch=64 model.g_attention=64 model.d_attention=64 \
      batch_size=8 model.dtype=float32 model.sn_eps=1e-8 --compare '' 'xla_options=none'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peer_pytorch import SHAPES  # noqa: E402  (this directory; imports no torch)


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


def matmul_peak_gflops(dtype: str, n: int | None = None, reps: int = 10) -> float:
  """The best of `reps` n x n x n matmuls on the default device, GFLOP/s. Random operands
  (zeros or ones can run faster than real data); n = 2048 on a CPU, 8192 on an accelerator
  (a smaller product does not fill a GPU)."""
  import jax
  import jax.numpy as jnp
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def setup(path: str, overrides: list[str]):
  """(config, mesh, models, state, jitted step, rng, batch()) for one config; batch() gives
  the next global batch (digits: real data; others: synthetic uint8, to measure the model,
  not I/O)."""
  import numpy as np
  from sagan_jax import data, parallel, state as state_lib, train, utils
  config = load_config(path, overrides)
  source = data.make_source(config) if config.data.source == "digits" else None
  mesh = parallel.make_mesh(config.mesh.num_devices)
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  utils.release_freed_memory()   # as the train loop does (benchmarks/README.md, "Memory")
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

  return config, mesh, models, state, step_fn, rng, batch


def bench_config(path: str, overrides: list[str], steps: int, warmup: int) -> dict:
  import jax
  from sagan_jax import train, utils
  from sagan_jax.describe import count, counted_flops
  config, mesh, models, state, step_fn, rng, batch = setup(path, overrides)
  m = config.model
  b = batch()
  t = time.perf_counter()
  compiled = step_fn.lower(state, b, rng).compile()   # the compile time alone
  compile_s = time.perf_counter() - t
  utils.release_freed_memory()   # the compiler's memory, before the first step's peak
  # XLA's count of the whole step, all devices (its loops unrolled: describe.counted_flops)
  flops = counted_flops(lambda: train.make_train_step(models, config, mesh).lower(
      state, b, rng), compiled, devices=mesh.devices.size)
  del compiled
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


NO_XLA_OPTIONS = "xla_options=none"   # a --compare word: the step without per-program options


def compare(path: str, overrides: list[str], variants: list[str], devices: list[int],
            rounds: int, warmup: int) -> list[dict]:
  """Side by side in one process: every (variant, device count) pair is compiled, then
  one step of each is timed in turn, `rounds` times (A B C A B C ...), so that a machine
  whose speed drifts (other jobs) moves all alike; ratios are to the first pair."""
  import jax
  from sagan_jax import xla_flags
  runs = []
  for variant in variants:
    words = variant.split()
    plain = NO_XLA_OPTIONS in words
    for d in devices:
      extra = [w for w in words if w != NO_XLA_OPTIONS] + [f"mesh.num_devices={d}"]
      ours = xla_flags.compiler_options
      if plain:  # make_train_step reads the options when it is called, in setup
        xla_flags.compiler_options = lambda *a, **k: None
      try:
        config, mesh, _, state, step_fn, rng, batch = setup(path, overrides + extra)
      finally:
        xla_flags.compiler_options = ours
      t = time.perf_counter()
      for _ in range(1 + warmup):  # the first call compiles
        state, metrics = step_fn(state, batch(), rng)
      jax.block_until_ready(metrics)
      runs.append({"variant": variant, "devices": d, "batch_size": config.batch_size,
                   "xla_options": None if plain else xla_flags.compiler_options(config.model.dtype),
                   "first_steps_s": round(time.perf_counter() - t, 2), "times": [],
                   "fn": step_fn, "state": state, "rng": rng, "batch": batch})
  for _ in range(rounds):
    for r in runs:
      b = r["batch"]()
      t = time.perf_counter()
      r["state"], metrics = r["fn"](r["state"], b, r["rng"])
      jax.block_until_ready(metrics)
      r["times"].append(time.perf_counter() - t)
  base = statistics.median(runs[0]["times"])
  out = []
  for r in runs:
    med = statistics.median(r["times"])
    out.append({"config": os.path.basename(path), "overrides": overrides,
                "variant": r["variant"], "devices": r["devices"], "rounds": rounds,
                "xla_options": r["xla_options"],
                "sec_per_iteration": round(med, 4),
                "sec_per_iteration_min": round(min(r["times"]), 4),
                "images_per_sec": round(r["batch_size"] / med, 2),
                "ratio_to_first": round(med / base, 3), "first_steps_s": r["first_steps_s"]})
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", nargs="*", default=None,
                  help="config files (default: digits, and imagenet128 shrunk to ch=16, batch 8)")
  ap.add_argument("--peer_shapes", nargs="*", default=None, choices=list(SHAPES),
                  help="imagenet128.py at peer_pytorch.py's shapes (no name: all of them)")
  ap.add_argument("--set", nargs="*", default=[], help="overrides FIELD=VALUE for every config")
  ap.add_argument("--steps", type=int, default=10, help="timed iterations")
  ap.add_argument("--warmup", type=int, default=2, help="untimed iterations after compile")
  ap.add_argument("--compare", nargs="*", default=None, metavar="'FIELD=VALUE ...'",
                  help="variants timed side by side, interleaved, in one process (each a quoted "
                       "list of overrides, '' for the config as is), e.g. "
                       "'model.conv_impl=xla' 'model.conv_impl=auto'; the word "
                       f"{NO_XLA_OPTIONS} compiles that variant's step without sagan_jax's "
                       "per-program XLA options")
  ap.add_argument("--devices", type=int, nargs="*", default=None,
                  help="with --compare: CPU device counts to time each variant on, e.g. 1 2; "
                       "without: the CPU device count for every run (default: as `main` "
                       "chooses for the first config's batch)")
  ap.add_argument("--peak_tflops", type=float, default=0.0,
                  help="device peak for MFU (default: measured matmul peak of this machine)")
  args = ap.parse_args()
  import jax
  from sagan_jax import cpu_devices
  if args.compare is not None:
    devices = args.devices or [0]
    if max(devices) > 1:  # before the backend starts; a 1-device mesh then uses device 0
      jax.config.update("jax_num_cpu_devices", max(devices))
    machine = {"cpu": cpu_devices.cpu_model(), "cores": os.cpu_count(), "jax": jax.__version__,
               "backend": jax.default_backend()}
    for path in args.configs or [os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "configs/digits.py")]:
      for r in compare(path, list(args.set), args.compare or [""], devices, args.steps,
                       args.warmup):
        print(json.dumps({**r, "machine": machine}), flush=True)
    return
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
  if args.devices:  # the CPU split for every run; by default the one `main` would choose
    jax.config.update("jax_num_cpu_devices", max(args.devices))
  else:
    cpu_devices.configure(load_config(runs[0][0], runs[0][1]).batch_size)
  peak32 = matmul_peak_gflops("float32")
  peak16 = matmul_peak_gflops("bfloat16")
  machine = {"cpu": cpu_devices.cpu_model(), "backend": jax.default_backend(),
             "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
             "cpu_count": os.cpu_count(),
             "matmul_peak_gflops_f32": round(peak32, 1),
             "matmul_peak_gflops_bf16": round(peak16, 1)}
  for path, overrides, shape in runs:
    r = bench_config(path, overrides, args.steps, args.warmup)
    if shape:
      r["shape"] = shape
    measured = peak16 if r["dtype"] == "bfloat16" else peak32
    r["mfu"] = round(r["achieved_gflops"] / (args.peak_tflops * 1e3 or measured), 4)
    if args.peak_tflops:  # also against what this chip's matmul reached in this run
      r["mfu_measured"] = round(r["achieved_gflops"] / measured, 4)
    r["machine"] = machine
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
