"""BigGAN-PyTorch (ajbrock/BigGAN-PyTorch) SAGAN checkpoints.

The folder is `weights/<experiment>/` as its `utils.save_weights` writes it:
G.pth, D.pth, and when present G_ema.pth, G_optim.pth, D_optim.pth and
state_dict.pth (`itr`, best metrics, and the training `config`); with
`--select SUFFIX` the files G_SUFFIX.pth, ... (e.g. best0, copy1).

Its names (BigGAN.py and layers.py with the SAGAN launch settings: G_shared
off, one singular vector, 'bn' norm style, ReLU):

  G  linear                      SNLinear z -> 16ch x 4 x 4, features (C, H, W)
     blocks.<k>.0.conv1/conv2/conv_sc        SNConv2d (weight, bias, u0, sv0)
     blocks.<k>.0.bn1/bn2       ccbn: gain/bias nn.Embedding [classes, C], gain = 1 + table;
                                stored_mean, stored_var
     blocks.<k>.1.theta/phi/g/o, blocks.<k>.1.gamma   attention after block k
     output_layer.0             bn: gain, bias, stored_mean, stored_var (eps 1e-5)
     output_layer.2             SNConv2d to RGB
  D  blocks.<k>.0.conv1/conv2/conv_sc, blocks.<k>.1.* (attention), linear, embed (SNEmbedding)

Its SN stores u (`u0`, [1, out]) and the last training sigma (`sv0`); in
evaluation it runs one power iteration from u without saving it, which
`sn` reproduces (common.carry_sigma then makes ours use that sigma).
"""

from __future__ import annotations

import os

import numpy as np

from sagan_jax.convert import common, mapping
from sagan_jax.errors import CheckpointError

# The SAGAN launch script's values (scripts/launch_SAGAN_bs128x2_ema.sh), used
# when the folder has no state_dict.pth with the training config.
LAUNCH_DEFAULTS = {"SN_eps": 1e-8, "BN_eps": 1e-5, "adam_eps": 1e-8}

# Training options our model cannot represent: option -> the value it must have.
_REQUIRED = {"model": "BigGAN", "G_param": "SN", "D_param": "SN", "G_shared": False,
             "hier": False, "mybn": False, "cross_replica": False, "norm_style": "bn",
             "num_G_SVs": 1, "num_D_SVs": 1, "num_G_SV_itrs": 1, "num_D_SV_itrs": 1,
             "G_nl": "relu", "D_nl": "relu", "D_wide": True, "BN_eps": 1e-5}


class BigGANMap(mapping.ModelMap):
  g_linear, g_bn_out, g_conv_out = "linear", "output_layer.0", "output_layer.2"
  d_linear, d_embed = "linear", "embed"
  conv_names = {"conv1": "conv1", "conv2": "conv2", "conv_sc": "conv_sc"}
  attention_names = {"theta": "theta", "phi": "phi", "g": "g", "o": "o", "gamma": "gamma"}

  def __init__(self, sn_eps: float):
    self.sn_eps = sn_eps

  def prefix(self, name, k, position):
    return f"blocks.{k}.{1 if name.startswith('attention') else 0}"

  def sn(self, sd, prefix):
    w = sd.take(f"{prefix}.weight")
    u = sd.take(f"{prefix}.u0").reshape(-1)
    sd.drop(f"{prefix}.sv0")                     # the training-time sigma, for its logs
    w_mat = w.reshape(w.shape[0], -1)
    v = common.l2_normalize(w_mat.T @ u, self.sn_eps)
    u1 = common.l2_normalize(w_mat @ v, self.sn_eps)
    return common.SNWeight(w, u, float(u1 @ w_mat @ v))

  def cbn(self, tb, path, prefix):
    for ours, theirs, offset in (("gamma", "gain", 1.0), ("beta", "bias", 0.0)):
      key = f"{prefix}.{theirs}.weight"
      tb.param(path + (ours,), key, tb.sd.take(key), offset=offset)
    tb.bn_stats(path + ("bn",), f"{prefix}.stored_mean", f"{prefix}.stored_var")

  def bn_out(self, tb, prefix):
    for ours, theirs in (("scale", "gain"), ("bias", "bias")):
      tb.param(("bn_out", ours), f"{prefix}.{theirs}", tb.sd.take(f"{prefix}.{theirs}"))
    tb.bn_stats(("bn_out",), f"{prefix}.stored_mean", f"{prefix}.stored_var")


def _name(role: str, select: str) -> str:
  return f"{role}_{select}.pth" if select else f"{role}.pth"


def read(weights_dir: str, select: str = "") -> common.Source:
  """The folder's files (G and D required), the step and the training settings."""
  path = lambda role: os.path.join(weights_dir, _name(role, select))  # noqa: E731
  for role in ("G", "D"):
    if not os.path.isfile(path(role)):
      found = sorted(f for f in os.listdir(weights_dir) if f.endswith(".pth"))
      raise CheckpointError(f"{path(role)} does not exist: --weights must be BigGAN-PyTorch's "
                            f"weights/<experiment> folder (found {found or 'no .pth files'}); "
                            "use --select SUFFIX for G_SUFFIX.pth and friends.")
  src = common.Source("BigGAN-PyTorch", weights_dir)
  src.g = common.StateDict(common.load(path("G")), _name("G", select))
  src.d = common.StateDict(common.load(path("D")), _name("D", select))
  if os.path.isfile(path("G_ema")):
    src.ema = common.StateDict(common.load(path("G_ema")), _name("G_ema", select))
  for role in ("G_optim", "D_optim"):
    if os.path.isfile(path(role)):
      src.optim[role[0]] = (common.load(path(role)), _name(role, select))
  train_config = {}
  if os.path.isfile(path("state_dict")):
    meta = common.load(path("state_dict"))
    if isinstance(meta, dict):
      src.step = int(meta["itr"]) if "itr" in meta else None
      train_config = meta.get("config") or {}
  src.arch = _arch_from(train_config)
  _check_supported(train_config)
  get = lambda k: train_config.get(k, LAUNCH_DEFAULTS.get(k))  # noqa: E731
  src.settings = {"model.sn_eps": float(get("SN_eps")), "model.bn_eps": float(get("BN_eps")),
                  "model.bn_momentum": 0.9, "optim.eps": float(get("adam_eps")),
                  "model.d_relu_shortcut": False}
  if "G_B1" in train_config:
    src.settings.update({"optim.beta1": float(train_config["G_B1"]),
                         "optim.beta2": float(train_config["G_B2"])})
  if not train_config:
    src.notes.append("no state_dict.pth with the training config: assuming the SAGAN launch "
                     f"script's SN_eps, BN_eps and adam_eps {tuple(LAUNCH_DEFAULTS.values())}")
  return src


def _check_supported(train_config: dict) -> None:
  for option, need in _REQUIRED.items():
    have = train_config.get(option, need)
    if have != need and not (isinstance(need, float) and np.isclose(have, need)):
      raise CheckpointError(
          f"this BigGAN-PyTorch run was trained with --{option} {have!r}; sagan_jax's SAGAN "
          f"needs {need!r} (only BigGAN-PyTorch's SAGAN configuration converts).")


def _arch_from(train_config: dict) -> dict:
  """The architecture fields its config states, as our config's names and values."""
  attn = lambda s: tuple(sorted(int(a) for a in str(s).split("_") if int(a)))  # noqa: E731
  fields = {"resolution": "model.resolution", "G_ch": "model.ch", "D_ch": "model.d_ch",
            "dim_z": "model.z_dim", "n_classes": "model.num_classes",
            "G_attn": "model.g_attention", "D_attn": "model.d_attention"}
  out = {}
  for theirs, ours in fields.items():
    if theirs in train_config:
      value = train_config[theirs]
      out[ours] = (attn(value) if theirs.endswith("attn") else int(value), theirs)
  return out


def model_map(src: common.Source) -> BigGANMap:
  return BigGANMap(src.settings["model.sn_eps"])
