r"""Input-pipeline throughput on this CPU, and the CPU a TPU chip needs to stay fed.

  python benchmarks/input_pipeline.py [--images 300] [--seconds 5] [--trials 3]

Writes synthetic ImageNet-like JPEGs (500x375, quality 90, ~95 KB; an average
ImageNet file is ~110 KB, smooth content plus noise) to a temporary
class-subfolder tree and runs the real
training pipeline over them (`sagan_jax.data.pipeline.train_dataset`,
source 'folder': read, JPEG decode of the crop window, random square crop of
the short side, antialiased bilinear resize to 128x128, random flip, batch 64).
Files sit in the page cache, so this is the decode/transform CPU cost, not
storage or network I/O. It is measured with tf.data limited to one thread
and with all cores, as images per wall-clock second and per CPU-second the
process used (the per-core cost, robust to other jobs on the machine); the
median of --trials runs counts.

Then: images/s a TPU chip consumes at 128x128 SAGAN (one 1:1 iteration ~160
GFLOP per image, ~41 TFLOP per batch-256 iteration) at an
assumed 40% MFU of the bf16 peak, and so how many such CPU cores one chip and
one TPU host need. Prints one JSON line; docs/performance_input.md has the
numbers of a run and the reasoning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESOLUTION = 128
BATCH = 64
FLOP_PER_IMAGE = 41e12 / 256          # one D step on real+fake + one G step, per image
MFU = 0.40                            # assumed model FLOP utilisation
CHIPS = {  # bf16 dense peak FLOP/s; chips and vCPUs of one TPU VM host (Cloud TPU docs)
    "v4": {"peak_flops": 275e12, "chips_per_host": 4, "host_vcpus": 240},
    "v5e": {"peak_flops": 197e12, "chips_per_host": 8, "host_vcpus": 224},
}


def write_jpegs(root: str, n: int, classes: int = 10) -> float:
  """n synthetic 500x375 JPEGs in `classes` subfolders; returns mean file size (bytes)."""
  from PIL import Image
  rng = np.random.default_rng(0)
  sizes = []
  for i in range(n):
    d = os.path.join(root, f"class{i % classes}")
    os.makedirs(d, exist_ok=True)
    base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    img = np.asarray(base.resize((500, 375), Image.BICUBIC)).astype(np.int16)
    img = np.clip(img + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)
    path = os.path.join(d, f"{i:05d}.jpg")
    Image.fromarray(img).save(path, quality=90)
    sizes.append(os.path.getsize(path))
  return float(np.mean(sizes))


def measure(config, threads: int | None, seconds: float) -> tuple[float, float]:
  """(images per wall-clock second, images per CPU-second this process used)."""
  from sagan_jax.data import DataSpec, pipeline
  it = iter(pipeline.train_dataset(DataSpec.of(config), threads=threads).dataset)
  for _ in range(3):  # warm-up: tracing, autotune, thread start
    next(it)
  n, t0, c0 = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += BATCH
  return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=300)
  p.add_argument("--seconds", type=float, default=5.0)
  p.add_argument("--trials", type=int, default=3)
  args = p.parse_args()

  from sagan_jax import config_base, cpu_devices
  with tempfile.TemporaryDirectory() as root:
    mean_bytes = write_jpegs(root, args.images)
    c = config_base.base_config()
    c.data.source, c.data.dir = "folder", root
    c.model.resolution, c.model.num_classes, c.batch_size = RESOLUTION, 10, BATCH
    rates = {}
    for label, threads in (("one_core", 1), ("all_cores", None)):
      runs = [measure(c, threads, args.seconds) for _ in range(args.trials)]
      rates[label] = {"wall": statistics.median(r[0] for r in runs),
                      "cpu": statistics.median(r[1] for r in runs),
                      "runs": [round(r[0], 1) for r in runs]}

  # Images per CPU-second (all cores busy) is the cost that scales to a TPU host;
  # it is also insensitive to other jobs sharing this machine.
  per_core = rates["all_cores"]["cpu"]
  tpu = {}
  for name, chip in CHIPS.items():
    img_s = chip["peak_flops"] * MFU / FLOP_PER_IMAGE
    cores = img_s / per_core
    tpu[name] = {
        "chip_images_per_s": round(img_s, 1),
        "cpu_cores_per_chip": round(cores, 2),
        "cpu_cores_per_host": round(cores * chip["chips_per_host"], 1),
        "host_vcpus": chip["host_vcpus"],
        "host_vcpu_fraction": round(cores * chip["chips_per_host"] / chip["host_vcpus"], 3),
    }
  print(json.dumps({
      "benchmark": "input_pipeline",
      "pipeline": f"folder JPEG -> random square crop -> {RESOLUTION}x{RESOLUTION} "
                  "antialiased bilinear -> flip -> batch",
      "images": args.images, "mean_jpeg_bytes": round(mean_bytes), "jpeg_size": "500x375",
      "cpu": cpu_devices.cpu_model(), "cpu_count": os.cpu_count(),
      "images_per_s_one_thread": round(rates["one_core"]["wall"], 1),
      "images_per_s_all_cores": round(rates["all_cores"]["wall"], 1),
      "images_per_cpu_second": round(per_core, 1),
      "images_per_cpu_second_one_thread": round(rates["one_core"]["cpu"], 1),
      "runs_images_per_s": {k: v["runs"] for k, v in rates.items()},
      "load_average_1min": round(os.getloadavg()[0], 2),
      "assumptions": {"flop_per_image_per_iteration": FLOP_PER_IMAGE, "mfu": MFU,
                      "peak_bf16_flops": {k: v["peak_flops"] for k, v in CHIPS.items()}},
      "tpu": tpu,
  }))


if __name__ == "__main__":
  main()
