"""PyTorch-StudioGAN (POSTECH-CVLab) SAGAN checkpoints.

StudioGAN's SAGAN configs (ImageNet SAGAN-256, CIFAR10 SAGAN, Tiny-ImageNet,
...) use its `resnet` backbone (models/resnet.py) with cBN in G and a
projection D. The folder is its checkpoint directory:
`model=G-<best|current>-weights-step=N.pth`, `model=D-...`, and
`model=G_ema-...` when the run kept an EMA; each file is a dict with
`state_dict` (G and D also `optimizer`; D or G `step`). `--select best` or
`current` picks one set when both are there.

Its names (torch.nn.utils.spectral_norm everywhere: weight_orig, weight_u,
weight_v; eps 1e-6; BN eps 1e-4, momentum 0.1; Adam eps 1e-6):

  G  linear0; blocks.<j>.0 = GenBlock (conv2d1, conv2d2, conv2d0 = shortcut,
     bn1/bn2) or SelfAttention (conv1x1_theta/phi/g/attn, sigma) - attention
     is its own entry j of `blocks`; bn4 (affine BN), conv2d5 to RGB
  D  blocks.<j>.0 = DiscOptBlock / DiscBlock (conv2d1, conv2d2, conv2d0) or
     SelfAttention; linear1; embedding

Its conditional BN keeps the BN statistics in `bnX.bn` and its class tables
spectrally normalised (ours are plain tables): since v0.4 (Sep 2021) as
`bnX.gain` / `bnX.bias`, SN linear layers [C, classes] over one-hot labels;
before (the published v0.3 SAGAN runs) as `bnX.embed0` / `bnX.embed1`, SN
embeddings [classes, C]. Either way gain = 1 + table / sigma. The converter
folds that sigma into our table, so the converted G computes the same
function; continued training then updates the plain table (its Adam moments
are rescaled to it, the SN projection term aside).
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from sagan_jax.convert import common, mapping
from sagan_jax.errors import CheckpointError

_FILE = re.compile(r"model=(G|D|G_ema)-(best|current)-weights-step=(\d+)\.pth$")
# Fixed in StudioGAN's code (utils/ops.py and config.py).
# d_relu_shortcut: its DiscBlock applies nn.ReLU(inplace=True) to its input, which x0
# (the shortcut) aliases, so D's shortcuts start from ReLU(x).
SETTINGS = {"model.sn_eps": 1e-6, "model.bn_eps": 1e-4, "model.bn_momentum": 0.9,
            "optim.eps": 1e-6, "model.d_relu_shortcut": True}


class StudioGANMap(mapping.ModelMap):
  g_linear, g_bn_out, g_conv_out = "linear0", "bn4", "conv2d5"
  d_linear, d_embed = "linear1", "embedding"
  conv_names = {"conv1": "conv2d1", "conv2": "conv2d2", "conv_sc": "conv2d0"}
  attention_names = {"theta": "conv1x1_theta", "phi": "conv1x1_phi", "g": "conv1x1_g",
                     "o": "conv1x1_attn", "gamma": "sigma"}

  def prefix(self, name, k, position):
    return f"blocks.{position}.0"

  def sn(self, sd, prefix):
    if not sd.has(f"{prefix}.weight_orig"):
      raise CheckpointError(
          f"{sd.name}: {prefix} has no spectral norm (weight_orig/weight_u/weight_v); "
          "sagan_jax's SAGAN normalises every conv and linear (StudioGAN: apply_g_sn and "
          "apply_d_sn True, as its SAGAN configs set).")
    w = sd.take(f"{prefix}.weight_orig")
    u, v = sd.take(f"{prefix}.weight_u"), sd.take(f"{prefix}.weight_v")
    return common.SNWeight(w, u, float(u @ w.reshape(w.shape[0], -1) @ v))

  def cbn(self, tb, path, prefix):
    sd = tb.sd
    if sd.has(f"{prefix}.embed0.weight_orig") or sd.has(f"{prefix}.embed0.weight"):
      tables = (("gamma", "embed0", 1.0), ("beta", "embed1", 0.0))   # v0.3: [classes, C]
      layout = common.identity
    else:
      tables = (("gamma", "gain", 1.0), ("beta", "bias", 0.0))       # v0.4+: [C, classes]
      layout = common.dense_layout
    for ours, theirs, offset in tables:
      table = f"{prefix}.{theirs}"
      if sd.has(f"{table}.weight_orig"):
        sn = self.sn(sd, table)
        tb.param(path + (ours,), f"{table}.weight_orig", sn.weight, layout,
                 scale=1.0 / sn.sigma, offset=offset)
      else:
        tb.param(path + (ours,), f"{table}.weight", sd.take(f"{table}.weight"), layout,
                 offset=offset)
    self._bn_stats(tb, path + ("bn",), f"{prefix}.bn")

  def bn_out(self, tb, prefix):
    for ours, theirs in (("scale", "weight"), ("bias", "bias")):
      tb.param(("bn_out", ours), f"{prefix}.{theirs}", tb.sd.take(f"{prefix}.{theirs}"))
    self._bn_stats(tb, ("bn_out",), prefix)

  @staticmethod
  def _bn_stats(tb, path, prefix):
    tb.bn_stats(path, f"{prefix}.running_mean", f"{prefix}.running_var")
    tb.sd.drop(f"{prefix}.num_batches_tracked")


def _pick(weights_dir: str, select: str) -> dict[str, tuple[str, int]]:
  """{'G' | 'D' | 'G_ema': (path, step)} of the chosen checkpoint set."""
  sets: dict[str, dict[str, tuple[str, int]]] = {}
  for path in glob.glob(os.path.join(glob.escape(weights_dir), "model=*.pth")):
    m = _FILE.search(os.path.basename(path))
    if m:
      sets.setdefault(m.group(2), {})[m.group(1)] = (path, int(m.group(3)))
  if select and select not in ("best", "current"):
    raise CheckpointError(f"--select {select!r}: StudioGAN folders hold 'best' or 'current'.")
  whens = [select] if select else sorted(sets)
  complete = [w for w in whens if {"G", "D"} <= set(sets.get(w, {}))]
  if not complete:
    raise CheckpointError(
        f"{weights_dir} has no StudioGAN checkpoint pair model=G-{select or '<when>'}-weights-"
        "step=N.pth and model=D-...: --weights must be StudioGAN's checkpoint folder.")
  if len(complete) > 1:
    raise CheckpointError(f"{weights_dir} holds both 'best' and 'current' checkpoints: "
                          "choose one with --select best or --select current.")
  return sets[complete[0]]


def read(weights_dir: str, select: str = "") -> common.Source:
  files = _pick(weights_dir, select)
  src = common.Source("StudioGAN", weights_dir, settings=dict(SETTINGS))
  for role in ("G", "D", "G_ema"):
    if role not in files:
      continue
    path = files[role][0]
    ckpt = common.load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
      raise CheckpointError(f"{path}: not a StudioGAN checkpoint (no 'state_dict').")
    sd = common.StateDict(ckpt["state_dict"], os.path.basename(path))
    setattr(src, {"G": "g", "D": "d", "G_ema": "ema"}[role], sd)
    if role != "G_ema" and isinstance(ckpt.get("optimizer"), dict):
      src.optim[role] = (ckpt["optimizer"], f"{os.path.basename(path)}['optimizer']")
    if role == "D" or src.step is None:
      src.step = int(np.asarray(ckpt.get("step", files[role][1])))
  return src


def model_map(src: common.Source) -> StudioGANMap:
  return StudioGANMap()
