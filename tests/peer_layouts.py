"""State dicts with the exact key names, order and shapes of the PyTorch SAGANs, in numpy.

Written from the peers' model code (BigGAN-PyTorch BigGAN.py/layers.py with
its SAGAN launch settings; StudioGAN models/resnet.py + utils/ops.py, v0.4+
and v0.3 names), at 32x32, for the converter tests: keys come in
state_dict order (a module's own parameters, then its buffers, then its
children in registration order), so the trainable ones are in the order
torch's optimisers index them.
"""

from __future__ import annotations

import collections

import numpy as np

# 32x32 channel multipliers (G in/out per block; D out per block, downsample).
G32 = ([4, 4, 4], [4, 4, 4])
BIGGAN_D32 = ([4, 4, 4, 4], [True, True, False, False])
STUDIOGAN_D32 = ([2, 2, 2, 2], [True, True, False, False])


class _Dict(collections.OrderedDict):
  def __init__(self, rng):
    super().__init__()
    self.rng = rng

  def add(self, key, *shape, value=None):
    self[key] = (np.asarray(value, np.float32) if value is not None
                 else self.rng.standard_normal(shape).astype(np.float32) * 0.2)


def _unit(rng, n):
  u = rng.standard_normal(n).astype(np.float32)
  return u / np.linalg.norm(u)


# ---------------------------------------------------------------------------
# BigGAN-PyTorch (SNConv2d/SNLinear/SNEmbedding: weight, bias, u0 [1, out], sv0 [1])

def _bg_sn(sd, prefix, out, *rest, bias=True):
  sd.add(f"{prefix}.weight", out, *rest)
  if bias:
    sd.add(f"{prefix}.bias", out)
  sd.add(f"{prefix}.u0", value=_unit(sd.rng, out)[None])
  sd.add(f"{prefix}.sv0", value=[1.0])


def _bg_attention(sd, prefix, c):
  sd.add(f"{prefix}.gamma", value=0.3)                  # a 0-d parameter, registered first
  for name, o, i in (("theta", c // 8, c), ("phi", c // 8, c), ("g", c // 2, c), ("o", c, c // 2)):
    _bg_sn(sd, f"{prefix}.{name}", o, i, 1, 1, bias=False)


def biggan_g(ch=8, z_dim=8, classes=3, attention=(16,), seed=0):
  sd = _Dict(np.random.default_rng(seed))
  ins, outs = [ch * m for m in G32[0]], [ch * m for m in G32[1]]
  _bg_sn(sd, "linear", ins[0] * 16, z_dim)
  for k, (i, o) in enumerate(zip(ins, outs)):
    p = f"blocks.{k}.0"
    for conv, ci, co, ks in (("conv1", i, o, 3), ("conv2", o, o, 3), ("conv_sc", i, o, 1)):
      _bg_sn(sd, f"{p}.{conv}", co, ci, ks, ks)
    for bn, c in (("bn1", i), ("bn2", o)):          # ccbn: buffers, then gain/bias Embeddings
      sd.add(f"{p}.{bn}.stored_mean", c)
      sd.add(f"{p}.{bn}.stored_var", value=sd.rng.uniform(0.5, 2.0, c))
      sd.add(f"{p}.{bn}.gain.weight", classes, c)
      sd.add(f"{p}.{bn}.bias.weight", classes, c)
    if 8 * 2 ** k in attention:
      _bg_attention(sd, f"blocks.{k}.1", o)
  c = outs[-1]
  sd.add("output_layer.0.gain", c)
  sd.add("output_layer.0.bias", c)
  sd.add("output_layer.0.stored_mean", c)
  sd.add("output_layer.0.stored_var", value=sd.rng.uniform(0.5, 2.0, c))
  _bg_sn(sd, "output_layer.2", 3, c, 3, 3)
  return sd


def biggan_d(ch=8, classes=3, attention=(), seed=1):
  sd = _Dict(np.random.default_rng(seed))
  outs, downs = [ch * m for m in BIGGAN_D32[0]], BIGGAN_D32[1]
  i = 3
  for k, (o, down) in enumerate(zip(outs, downs)):
    p = f"blocks.{k}.0"
    _bg_sn(sd, f"{p}.conv1", o, i, 3, 3)
    _bg_sn(sd, f"{p}.conv2", o, o, 3, 3)
    if down or i != o:
      _bg_sn(sd, f"{p}.conv_sc", o, i, 1, 1)
    if k == 0 and attention:
      _bg_attention(sd, f"blocks.{k}.1", o)
    i = o
  _bg_sn(sd, "linear", 1, i)
  _bg_sn(sd, "embed", classes, i, bias=False)
  return sd


# ---------------------------------------------------------------------------
# StudioGAN (torch spectral_norm: bias, weight_orig, then buffers weight_u, weight_v)

def _sg_sn(sd, prefix, out, *rest, bias=True):
  if bias:
    sd.add(f"{prefix}.bias", out)
  sd.add(f"{prefix}.weight_orig", out, *rest)
  sd.add(f"{prefix}.weight_u", value=_unit(sd.rng, out))
  sd.add(f"{prefix}.weight_v", value=_unit(sd.rng, int(np.prod(rest))))


def _sg_bn_stats(sd, prefix, c):
  sd.add(f"{prefix}.running_mean", c)
  sd.add(f"{prefix}.running_var", value=sd.rng.uniform(0.5, 2.0, c))
  sd.add(f"{prefix}.num_batches_tracked", value=np.int64(7))


def _sg_attention(sd, prefix, c):
  sd.add(f"{prefix}.sigma", value=[0.3])
  for name, o, i in (("theta", c // 8, c), ("phi", c // 8, c), ("g", c // 2, c),
                     ("attn", c, c // 2)):
    _sg_sn(sd, f"{prefix}.conv1x1_{name}", o, i, 1, 1, bias=False)


def studiogan_g(ch=8, z_dim=8, classes=3, attn_loc=(2,), legacy=False, seed=2):
  sd = _Dict(np.random.default_rng(seed))
  ins, outs = [ch * m for m in G32[0]], [ch * m for m in G32[1]]
  _sg_sn(sd, "linear0", ins[0] * 16, z_dim)
  j = 0
  for k, (i, o) in enumerate(zip(ins, outs)):
    p = f"blocks.{j}.0"
    for bn, c in (("bn1", i), ("bn2", o)):
      _sg_bn_stats(sd, f"{p}.{bn}.bn", c)
      for table in (("embed0", "embed1") if legacy else ("gain", "bias")):
        if legacy:
          _sg_sn(sd, f"{p}.{bn}.{table}", classes, c, bias=False)    # SN embedding [K, C]
        else:
          _sg_sn(sd, f"{p}.{bn}.{table}", c, classes, bias=False)    # SN linear [C, K]
    for conv, ci, ks in (("conv2d0", i, 1), ("conv2d1", i, 3), ("conv2d2", o, 3)):
      _sg_sn(sd, f"{p}.{conv}", o, ci, ks, ks)
    j += 1
    if k + 1 in attn_loc:
      _sg_attention(sd, f"blocks.{j}.0", o)
      j += 1
  c = outs[-1]
  sd.add("bn4.weight", c)
  sd.add("bn4.bias", c)
  _sg_bn_stats(sd, "bn4", c)
  _sg_sn(sd, "conv2d5", 3, c, 3, 3)
  return sd


def studiogan_d(ch=16, classes=3, attn_loc=(1,), seed=3):
  sd = _Dict(np.random.default_rng(seed))
  outs, downs = [ch * m for m in STUDIOGAN_D32[0]], STUDIOGAN_D32[1]
  i, j = 3, 0
  for k, (o, down) in enumerate(zip(outs, downs)):
    p = f"blocks.{j}.0"
    if down or i != o:
      _sg_sn(sd, f"{p}.conv2d0", o, i, 1, 1)
    _sg_sn(sd, f"{p}.conv2d1", o, i, 3, 3)
    _sg_sn(sd, f"{p}.conv2d2", o, o, 3, 3)
    j += 1
    if k + 1 in attn_loc:
      _sg_attention(sd, f"blocks.{j}.0", o)
      j += 1
    i = o
  _sg_sn(sd, "linear1", 1, i)
  _sg_sn(sd, "embedding", classes, i, bias=False)
  return sd


# ---------------------------------------------------------------------------

BUFFERS = ("u0", "sv0", "stored_mean", "stored_var", "running_mean", "running_var",
           "num_batches_tracked", "weight_u", "weight_v")


def adam_state(sd, step=5, lr=1e-4, betas=(0.0, 0.999), eps=1e-8, seed=4):
  """torch.optim.Adam's state_dict for the parameters of `sd`, in parameter order."""
  rng = np.random.default_rng(seed)
  params = [k for k in sd if k.rsplit(".", 1)[-1] not in BUFFERS]
  state = {i: {"step": np.float32(step),
               "exp_avg": rng.standard_normal(np.shape(sd[k])).astype(np.float32),
               "exp_avg_sq": rng.uniform(0.1, 1.0, np.shape(sd[k])).astype(np.float32)}
           for i, k in enumerate(params)}
  group = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0, "amsgrad": False,
           "params": list(range(len(params)))}
  return {"state": state, "param_groups": [group]}, params
