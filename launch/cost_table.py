#!/usr/bin/env python3
"""Estimated time and cost of the SAGAN ImageNet-128 run per accelerator slice.

    python launch/cost_table.py                 # the table in launch/README.md
    python launch/cost_table.py --mfu 0.2 --price H100=2.5 --iterations 500000

Every number this prints is an ESTIMATE built from the assumptions below:

- Work: ~160 GFLOP per image per 1:1 iteration (D step on real + fake with its
  backward pass, G step through D; from the model's ~9.2 GMAC G and ~4.7 GMAC
  D forward passes), batch 256 -> ~41 TFLOP per iteration; the paper
  trained 1M iterations.
- Speed: the chips' dense bf16 peak times an assumed model-FLOPs utilisation
  (MFU, default 35%), the same for every chip. Nothing here was measured;
  this GAN (batch norm, spectral norm, attention, narrow early layers) may
  well run below that, and MFU falls further when the per-chip batch gets
  small (rows marked with a dagger have fewer than 8 images per chip).
- Prices: public on-demand list prices per chip-hour (GPU: the cloud VM's
  price divided by its GPUs), remembered from the vendors' pricing pages as
  of 2025 and NOT re-checked (written without web access, Nov 2026); spot
  assumed at 40% of on-demand (Google lists spot discounts of 60-91%; spot
  prices change as often as daily). Check current prices before spending.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

PRICES_AS_OF = "2025 list prices (not re-checked)"


@dataclasses.dataclass(frozen=True)
class Chip:
  peak_tflops: float   # dense bf16, per chip, datasheet
  usd_per_hour: float  # on-demand, per chip (GPU: VM price / GPUs)
  note: str


CHIPS: dict[str, Chip] = {
    "v4": Chip(275.0, 3.22, "Cloud TPU v4, us-central2"),
    "v5e": Chip(197.0, 1.20, "Cloud TPU v5e (v5litepod), US regions"),
    "v5p": Chip(459.0, 4.20, "Cloud TPU v5p, US regions"),
    "v6e": Chip(918.0, 2.70, "Cloud TPU v6e (Trillium), US regions"),
    "A100": Chip(312.0, 3.67, "A100 40GB: GCP a2-highgpu-8g (~$29.4/h) / 8, us-central1"),
    "H100": Chip(989.0, 11.06, "H100 SXM: GCP a3-highgpu-8g (~$88.5/h) / 8, us-central1; "
                               "GPU clouds list ~$2-4/GPU-h"),
}

# (slice name, chip, chips, hosts)
SLICES: list[tuple[str, str, int, int]] = [
    ("v4-8", "v4", 4, 1),
    ("v4-16", "v4", 8, 2),
    ("v4-32", "v4", 16, 4),
    ("v4-64", "v4", 32, 8),
    ("v4-128", "v4", 64, 16),
    ("v5litepod-8 (v5e)", "v5e", 8, 1),
    ("v5litepod-16 (v5e)", "v5e", 16, 4),
    ("v5litepod-32 (v5e)", "v5e", 32, 8),
    ("v5litepod-64 (v5e)", "v5e", 64, 16),
    ("v5p-8", "v5p", 4, 1),
    ("v5p-16", "v5p", 8, 2),
    ("v5p-32", "v5p", 16, 4),
    ("v6e-8", "v6e", 8, 1),
    ("v6e-16", "v6e", 16, 4),
    ("8x A100 (1 node)", "A100", 8, 1),
    ("1x H100", "H100", 1, 1),
    ("8x H100 (1 node)", "H100", 8, 1),
    ("16x H100 (2 nodes)", "H100", 16, 2),
]


def estimate(chip: Chip, chips: int, *, gflop_per_image: float, batch: int,
             iterations: float, mfu: float, spot_fraction: float) -> dict[str, float]:
  """Seconds per iteration, hours and dollars for one slice."""
  flop_per_iter = gflop_per_image * 1e9 * batch
  flops = chips * chip.peak_tflops * 1e12 * mfu
  s_per_iter = flop_per_iter / flops
  hours = s_per_iter * iterations / 3600.0
  usd = hours * chips * chip.usd_per_hour
  return {"s_per_iter": s_per_iter, "hours": hours, "usd": usd,
          "usd_spot": usd * spot_fraction, "img_per_chip": batch / chips}


def _duration(hours: float) -> str:
  if hours < 48:
    return f"{hours:.0f} h" if hours >= 10 else f"{hours:.1f} h"
  return f"{hours / 24:.1f} d"


def _usd(x: float) -> str:
  return f"${x:,.0f}"


def table(chips: dict[str, Chip], slices, *, gflop_per_image: float, batch: int,
          iterations: float, mfu: float, spot_fraction: float) -> str:
  """The markdown table (and its assumptions) as one string."""
  out = []
  out.append(f"Estimates: {gflop_per_image:g} GFLOP/image/iteration x batch {batch} = "
             f"{gflop_per_image * batch / 1e3:.1f} TFLOP/iteration, "
             f"{iterations:,.0f} iterations, MFU {mfu:.0%} of dense bf16 peak, "
             f"on-demand {PRICES_AS_OF}, spot = {spot_fraction:.0%} of on-demand.")
  out.append("")
  out.append("| slice | chips (hosts) | img/chip | peak bf16 TFLOP/s per chip | "
             "est. s/iter | est. time | est. on-demand | est. spot |")
  out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, kind, n, hosts in slices:
    chip = chips[kind]
    e = estimate(chip, n, gflop_per_image=gflop_per_image, batch=batch,
                 iterations=iterations, mfu=mfu, spot_fraction=spot_fraction)
    dagger = " †" if e["img_per_chip"] < 8 else ""
    ipc = e["img_per_chip"]
    ipc_s = f"{ipc:.0f}" if math.isclose(ipc, round(ipc)) else f"{ipc:.1f}"
    out.append(f"| {name} | {n} ({hosts}) | {ipc_s}{dagger} | {chip.peak_tflops:g} | "
               f"{e['s_per_iter']:.3f} | {_duration(e['hours'])} | {_usd(e['usd'])} | "
               f"{_usd(e['usd_spot'])} |")
  out.append("")
  out.append("† fewer than 8 images per chip: expect a lower MFU than assumed.")
  out.append("")
  out.append("Prices assumed (USD per chip-hour, on-demand):")
  out.append("")
  for kind, chip in chips.items():
    if any(k == kind for _, k, _, _ in slices):
      out.append(f"- {kind}: ${chip.usd_per_hour:.2f} ({chip.note}); "
                 f"peak {chip.peak_tflops:g} TFLOP/s bf16 dense")
  return "\n".join(out)


def _pairs(values: list[str], what: str) -> dict[str, float]:
  parsed = {}
  for v in values:
    key, sep, num = v.partition("=")
    if not sep or key not in CHIPS:
      raise SystemExit(f"--{what} expects CHIP=NUMBER with CHIP in {sorted(CHIPS)}, got {v!r}")
    parsed[key] = float(num)
  return parsed


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation")
  p.add_argument("--gflop-per-image", type=float, default=160.0,
                 help="training FLOPs per image per iteration, in GFLOP")
  p.add_argument("--batch", type=int, default=256, help="global batch size")
  p.add_argument("--iterations", type=float, default=1_000_000, help="training iterations")
  p.add_argument("--spot-fraction", type=float, default=0.40,
                 help="spot price as a fraction of on-demand")
  p.add_argument("--price", action="append", default=[], metavar="CHIP=USD",
                 help="override an on-demand $/chip-hour, e.g. H100=2.5")
  p.add_argument("--peak", action="append", default=[], metavar="CHIP=TFLOPS",
                 help="override a dense bf16 peak, e.g. H100=790")
  args = p.parse_args(argv)
  if not 0 < args.mfu <= 1:
    p.error("--mfu must be in (0, 1]")
  chips = dict(CHIPS)
  for k, v in _pairs(args.price, "price").items():
    chips[k] = dataclasses.replace(chips[k], usd_per_hour=v, note="given on the command line")
  for k, v in _pairs(args.peak, "peak").items():
    chips[k] = dataclasses.replace(chips[k], peak_tflops=v)
  print(table(chips, SLICES, gflop_per_image=args.gflop_per_image, batch=args.batch,
              iterations=args.iterations, mfu=args.mfu, spot_fraction=args.spot_fraction))
  return 0


if __name__ == "__main__":
  sys.exit(main())
