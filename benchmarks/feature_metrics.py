r"""Seconds of the k-NN and kernel metrics alone (no Inception pass), on this machine.

  python benchmarks/feature_metrics.py [--n 10000] [--dim 2048] [--trials 2]

Random Gaussian features stand in for Inception's pool3 (n fakes and n reals
of `dim` floats; the work does not depend on the values). Times, each the
median of --trials runs after one untimed warm-up call that compiles:

  prdc       `feature_metrics.prdc` (k 3 and 5): the k-NN radii of both sets
             and one fakes x reals pass, three n x n distance passes
  kid        `feature_metrics.kid` over 100 subsets of 1,000 (the defaults)
  kid_exact  one unbiased estimate over all n (subset size n)

and the float32 FLOPs of their matmuls (2 n^2 dim per n x n pass), so the
achieved GFLOP/s can be set against `train_speed.py`'s matmul peak. Prints one
JSON line with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _seconds(fn, trials: int) -> float:
  fn()                                  # compiles (block shapes are fixed by n and dim)
  times = []
  for _ in range(trials):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=10000, help="features per set (fakes and reals)")
  p.add_argument("--dim", type=int, default=2048, help="feature length (Inception pool3: 2048)")
  p.add_argument("--trials", type=int, default=2, help="timed runs per metric (median)")
  args = p.parse_args(argv)
  if args.n < 1001 or args.dim < 1 or args.trials < 1:
    p.error("--n must be above 1000 (KID's subsets are 1,000), --dim and --trials at least 1")

  import jax
  from sagan_jax import cpu_devices
  from sagan_jax.evaluation import feature_metrics

  rng = np.random.default_rng(0)
  fake = rng.standard_normal((args.n, args.dim), dtype=np.float32)
  real = rng.standard_normal((args.n, args.dim), dtype=np.float32) + 0.1
  n, d = args.n, args.dim
  work = {
      "prdc": (lambda: feature_metrics.prdc(fake, real, 3, 5), 3 * 2 * n * n * d),
      "kid": (lambda: feature_metrics.kid(fake, real), 100 * 3 * 2 * 1000 * 1000 * d),
      "kid_exact": (lambda: feature_metrics.kid(fake, real, subsets=1, subset_size=n),
                    3 * 2 * n * n * d),
  }
  out = {"n": n, "dim": d, "trials": args.trials}
  for name, (fn, flops) in work.items():
    s = _seconds(fn, args.trials)
    out[name] = {"seconds": round(s, 3), "gflop": round(flops / 1e9, 3),
                 "gflop_per_s": round(flops / s / 1e9, 2)}
  out["machine"] = {"cpu": cpu_devices.cpu_model(), "cores": os.cpu_count(),
                    "jax": jax.__version__, "device": jax.devices()[0].platform,
                    "load_average": [round(x, 2) for x in os.getloadavg()]}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
