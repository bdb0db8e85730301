r"""BigGAN-PyTorch's own SAGAN training iteration, timed at sagan_jax's benchmark shapes.

An optional extra for comparing speed with the PyTorch peer: never imported by
the package, not in requirements or CI. It runs on the CPU and needs torch and
numpy in an environment of their own, and a checkout of BigGAN-PyTorch, which
it imports from where you put it (nothing of it is copied here):

  git clone https://github.com/ajbrock/BigGAN-PyTorch /tmp/BigGAN-PyTorch
  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
  /tmp/torchvenv/bin/python benchmarks/peer_pytorch.py --biggan_pytorch /tmp/BigGAN-PyTorch \
      --steps 5 --warmup 1

and sagan_jax at the same shapes, right before or after it (benchmarks/README.md):

  python benchmarks/train_speed.py --peer_shapes --steps 5 --warmup 1

What one iteration is: BigGAN-PyTorch's `train_fns.GAN_training_function`
exactly as its train.py calls it: one D step (G's fake batch concatenated with
the real batch through D, hinge loss, Adam), one G step (G -> D, Adam), then
the EMA update of G. The models, optimisers, noise samplers and EMA are built
by its own code (BigGAN.Generator / Discriminator / G_D, utils.ema,
utils.prepare_z_y) from the arguments of its scripts/launch_SAGAN_bs128x2_ema.sh
(read from the checkout: attention, TTUR learning rates, Adam betas, SN and BN
epsilons, xavier init, EMA), with these changes for a one-process CPU
benchmark: the shape's resolution, width (G_ch = D_ch), batch and attention
size; one accumulation per step instead of 128 x 2; fp32; no data loader (a
fixed random real batch in [-1, 1] with random labels of 1,000 classes).

Shapes (the same names as `benchmarks/train_speed.py --peer_shapes`):

  32px   32x32,   ch 32, batch 64, attention at 16x16 in G and D
  128px  128x128, ch 64, batch 8,  attention at 64x64 in G and D (the paper's model)

Prints one JSON line per shape: median (and min) seconds per iteration over
--steps timed iterations after --warmup untimed ones, the median process CPU
seconds (all threads) per iteration, images/s, G and D
trainable parameter counts (equal to sagan_jax's at these shapes), the last
losses, torch version, threads (default: all cores, as XLA:CPU uses them),
CPU model and the checkout's commit.

Runtime shims (the checkout's files are never edited):
- `torchvision`, `torchvision.transforms` and BigGAN-PyTorch's `datasets` are
  stubbed in sys.modules before its utils.py / train_fns.py are imported:
  they are used only for data loading and image saving, which this never calls
  (so torchvision, PIL, h5py and tqdm need not be installed).
- 32px only: BigGAN-PyTorch's 32x32 discriminator table labels all four of its
  blocks "resolution 16" (their outputs are 16, 8, 8, 8), so `--D_attn 16`
  would add an attention layer after every block. The table's labels are set
  to the true output sizes, so D has one attention layer after its 16x16
  block, as in sagan_jax; the parameter counts then match sagan_jax's exactly
  (`--native_d32` keeps the table as it is: three more attention layers at 8x8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import types

# name -> (resolution, ch, batch, attention size); train_speed.py reads this table too.
SHAPES = {
    "32px": (32, 32, 64, 16),
    "128px": (128, 64, 8, 64),
}
LAUNCH_SCRIPT = "scripts/launch_SAGAN_bs128x2_ema.sh"


def cpu_model() -> str:
  """The CPU's marketing name (`lscpu`'s Model name), or the platform's best guess.

  (As `sagan_jax.cpu_devices.cpu_model`: this script runs where sagan_jax's dependencies are not.)
  """
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def launch_args(checkout: str) -> list[str]:
  """The command-line arguments of BigGAN-PyTorch's SAGAN launch script."""
  with open(os.path.join(checkout, LAUNCH_SCRIPT)) as f:
    text = f.read().replace("\\\n", " ").rstrip().rstrip("\\")  # its last line ends in "\\"
    words = shlex.split(text, comments=True)
  return words[words.index("train.py") + 1:]


def stub_data_modules():
  """Empty stand-ins for the data/image-saving imports of utils.py and train_fns.py."""
  stubs = {}
  for name in ("torchvision", "torchvision.transforms", "datasets"):
    if name not in sys.modules:  # never shadow a module something already imported
      stubs[name] = sys.modules[name] = types.ModuleType(name)
      stubs[name].__getattr__ = lambda attr, _name=name: f"<stub {_name}.{attr}>"
  if "torchvision" in stubs:
    stubs["torchvision"].transforms = sys.modules["torchvision.transforms"]


def import_peer(checkout: str):
  """BigGAN-PyTorch's modules BigGAN, utils, train_fns, imported from the checkout."""
  sys.path.insert(0, os.path.abspath(checkout))
  stub_data_modules()
  import BigGAN
  import train_fns
  import utils
  return BigGAN, utils, train_fns


def peer_config(utils, checkout: str, shape: tuple[int, int, int, int]) -> dict:
  """train.py's config dict for the launch script's arguments at one benchmark shape."""
  res, ch, batch, attn = shape
  args = launch_args(checkout) + [
      "--batch_size", str(batch), "--num_G_accumulations", "1", "--num_D_accumulations", "1",
      "--G_ch", str(ch), "--D_ch", str(ch), "--G_attn", str(attn), "--D_attn", str(attn)]
  config = vars(utils.prepare_parser().parse_args(args))
  # As train.run derives them (resolution from the shape instead of the dataset).
  config["resolution"] = res
  config["n_classes"] = utils.nclass_dict[config["dataset"]]
  config["G_activation"] = utils.activation_dict[config["G_nl"]]
  config["D_activation"] = utils.activation_dict[config["D_nl"]]
  return config


def match_d32_table(BigGAN):
  """Labels the 32x32 D table's blocks with their true output sizes (see the docstring)."""
  native = BigGAN.D_arch

  def d_arch(*args, **kwargs):
    arch = native(*args, **kwargs)
    table = arch[32]
    table["resolution"] = [16, 8, 8, 8]
    assert len(table["downsample"]) == 4, "unexpected 32x32 D table"
    return arch

  BigGAN.D_arch = d_arch


def count(module) -> int:
  return sum(p.numel() for p in module.parameters())


def bench_shape(modules, checkout: str, name: str, steps: int, warmup: int, seed: int) -> dict:
  import torch
  BigGAN, utils, train_fns = modules
  config = peer_config(utils, checkout, SHAPES[name])
  torch.manual_seed(seed)
  with contextlib.redirect_stdout(sys.stderr):  # its progress prints; stdout is JSON only
    G = BigGAN.Generator(**config)
    D = BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True})
    ema = utils.ema(G, G_ema, config["ema_decay"], config["ema_start"])
  GD = BigGAN.G_D(G, D)
  state_dict = {"itr": 0, "epoch": 0, "config": config}
  z_, y_ = utils.prepare_z_y(config["batch_size"], G.dim_z, config["n_classes"], device="cpu")
  train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config)
  res, batch = config["resolution"], config["batch_size"]
  x = torch.rand(batch, 3, res, res) * 2 - 1
  y = torch.randint(0, config["n_classes"], (batch,))

  def iteration():  # the body of train.py's loop, less data loading and logging
    state_dict["itr"] += 1
    G.train()
    D.train()
    G_ema.train()
    return train(x, y)

  for _ in range(warmup):
    iteration()
  times, cpu_times = [], []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    metrics = iteration()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  s = statistics.median(times)
  return {"peer": "BigGAN-PyTorch", "shape": name, "resolution": res,
          "ch": config["G_ch"], "batch_size": batch, "attention": config["G_attn"],
          "g_params": count(G), "d_params": count(D), "dtype": "float32",
          "steps": steps, "warmup": warmup, "sec_per_iteration": round(s, 4),
          "sec_per_iteration_min": round(min(times), 4),
          "cpu_sec_per_iteration": round(statistics.median(cpu_times), 4),
          "images_per_sec": round(batch / s, 2),
          "losses": {k: round(v, 4) for k, v in metrics.items()}}


def checkout_commit(checkout: str) -> str:
  try:
    return subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--biggan_pytorch", required=True, metavar="DIR",
                  help="a checkout of github.com/ajbrock/BigGAN-PyTorch")
  ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES),
                  help="benchmark shapes (default: all)")
  ap.add_argument("--steps", type=int, default=5, help="timed iterations per shape")
  ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
  ap.add_argument("--threads", type=int, default=os.cpu_count(),
                  help="torch.set_num_threads (default: all cores, as XLA:CPU uses)")
  ap.add_argument("--seed", type=int, default=0, help="torch seed for init and noise")
  ap.add_argument("--native_d32", action="store_true",
                  help="keep BigGAN-PyTorch's 32x32 D table (attention after all 4 blocks)")
  args = ap.parse_args()
  for f in ("BigGAN.py", LAUNCH_SCRIPT):
    if not os.path.isfile(os.path.join(args.biggan_pytorch, f)):
      ap.error(f"--biggan_pytorch {args.biggan_pytorch!r} is not a BigGAN-PyTorch checkout "
               f"(no {f}): git clone https://github.com/ajbrock/BigGAN-PyTorch")
  try:
    import torch
  except ImportError:
    ap.error(f"torch is not installed for {sys.executable}: run this with a Python that has "
             "torch (see the recipe at the top of --help)")
  torch.set_num_threads(args.threads)
  modules = import_peer(args.biggan_pytorch)
  if not args.native_d32:
    match_d32_table(modules[0])
  machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
             "threads": torch.get_num_threads(),
             "biggan_pytorch_commit": checkout_commit(args.biggan_pytorch)}
  for name in args.shapes:
    r = bench_shape(modules, args.biggan_pytorch, name, args.steps, args.warmup, args.seed)
    r["native_d32"] = args.native_d32
    r["machine"] = machine
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
