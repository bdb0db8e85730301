"""SAGAN generator and discriminator (Zhang et al. 2019; BigGAN's ResNet tables).

ImageNet 128x128, ch = 64 (the paper's model):

  Generator                                   Discriminator
  z (128) -> SN-Linear -> 4x4x16ch            x 128x128x3
  GBlock 16ch -> 16ch     8x8                 OptimizedDBlock 3 -> ch     64x64
  GBlock 16ch ->  8ch    16x16                [Self-attention @64: feat64]
  GBlock  8ch ->  4ch    32x32                DBlock  ch ->  2ch          32x32
  GBlock  4ch ->  2ch    64x64                DBlock 2ch ->  4ch          16x16
  [Self-attention @64: feat64]                DBlock 4ch ->  8ch           8x8
  GBlock  2ch ->   ch   128x128               DBlock 8ch -> 16ch           4x4
  BN -> ReLU -> SN-conv3x3 (3) -> tanh        DBlock 16ch -> 16ch (no down) 4x4
                                              ReLU -> sum over HxW
                                              SN-Linear(1) + <SN-Embed(y), h>

Self-attention goes after the block whose output has a size listed in
`g_attention` / `d_attention` (first such block in D when several share it).
A size in `g_residual` / `d_residual` puts an extra residual block that keeps
size and width at that same place, before any attention there (the paper's
Table 1 "residual" control). `g_sn` / `d_sn` False: plain layers, no SN.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from sagan_jax.models import blocks, layers


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  in_ch: int
  out_ch: int
  out_res: int
  downsample: bool = True


@dataclasses.dataclass(frozen=True)
class Architecture:
  g_blocks: tuple[BlockSpec, ...]
  d_blocks: tuple[BlockSpec, ...]


# Channel multipliers of ch per resolution: G (in, out) per up-block; D out per
# block (the first is the optimized block) and whether it downsamples.
_G_TABLE = {
    16: ([4, 4], [4, 4]),
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 8, 4, 2], [8, 4, 2, 1]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
}
_D_TABLE = {
    16: ([4, 4, 4], [True, True, False]),
    32: ([4, 4, 4, 4], [True, True, False, False]),
    64: ([1, 2, 4, 8, 16], [True, True, True, True, False]),
    128: ([1, 2, 4, 8, 16, 16], [True, True, True, True, True, False]),
    256: ([1, 2, 4, 8, 8, 16, 16], [True, True, True, True, True, True, False]),
}

RESOLUTIONS = tuple(sorted(_G_TABLE))   # the image sizes these tables build (config checks ask)


def architecture(resolution: int, ch: int) -> Architecture:
  """Block list for a resolution; raises ValueError for unknown sizes."""
  if resolution not in _G_TABLE:
    raise ValueError(f"resolution {resolution} not supported; use one of {sorted(_G_TABLE)}")
  g_in, g_out = _G_TABLE[resolution]
  g = tuple(BlockSpec(i * ch, o * ch, 8 * 2**k) for k, (i, o) in enumerate(zip(g_in, g_out)))
  d_out, d_down = _D_TABLE[resolution]
  d, res, in_ch = [], resolution, 3
  for o, down in zip(d_out, d_down):
    res = res // 2 if down else res
    d.append(BlockSpec(in_ch, o * ch, res, down))
    in_ch = o * ch
  return Architecture(g, tuple(d))


class Generator(nn.Module):
  """z [B, z_dim], labels int32 [B] -> images [B, R, R, 3] in [-1, 1].

  G owns its conditioning: with num_classes == 0 it is unconditional and
  ignores `labels` (callers pass them, or None, either way).
  """
  resolution: int = 128
  ch: int = 64
  z_dim: int = 128
  num_classes: int = 1000
  attention: Sequence[int] = (64,)
  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  bn_group_size: int = 0
  dtype: Any = jnp.float32
  conv_impl: str = "xla"
  attention_impl: str = "einsum"
  use_sn: bool = True
  residual: Sequence[int] = ()

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    arch = architecture(self.resolution, self.ch)
    sn = dict(weight_init=self.weight_init, sn_eps=self.sn_eps, sn_init_iters=self.sn_init_iters,
              dtype=self.dtype, use_sn=self.use_sn)
    convs = dict(sn, conv_impl=self.conv_impl)
    c0 = arch.g_blocks[0].in_ch
    h = layers.SNDense(4 * 4 * c0, name="linear", **sn)(z, train)
    h = h.reshape(z.shape[0], 4, 4, c0)
    gblock = functools.partial(blocks.GBlock, num_classes=self.num_classes,
                               bn_momentum=self.bn_momentum, bn_eps=self.bn_eps,
                               bn_group_size=self.bn_group_size, **convs)
    for k, spec in enumerate(arch.g_blocks):
      h = gblock(out_ch=spec.out_ch, name=f"block{k + 1}")(h, labels, train)
      if spec.out_res in self.residual:
        h = gblock(out_ch=spec.out_ch, upsample=False,
                   name=f"residual{spec.out_res}")(h, labels, train)
      if spec.out_res in self.attention:
        h = layers.SelfAttention(name=f"attention{spec.out_res}",
                                 attention_impl=self.attention_impl, **convs)(h, train)
    h = layers.BatchNorm(self.bn_momentum, self.bn_eps, group_size=self.bn_group_size,
                         dtype=self.dtype, name="bn_out")(h, train)
    h = layers.SNConv(3, 3, name="conv_out", **convs)(nn.relu(h), train)
    return jnp.tanh(h.astype(jnp.float32))


class Discriminator(nn.Module):
  """images [B, R, R, 3], labels int32 [B] -> logits [B]; the projection term only when
  num_classes > 0 (an unconditional D ignores `labels`, which may then be None)."""
  resolution: int = 128
  ch: int = 64
  num_classes: int = 1000
  attention: Sequence[int] = (64,)
  relu_shortcut: bool = False  # DBlock shortcuts from ReLU(x) (StudioGAN's D)
  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  dtype: Any = jnp.float32
  conv_impl: str = "xla"
  attention_impl: str = "einsum"
  use_sn: bool = True
  residual: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, update_sn: bool) -> jax.Array:
    arch = architecture(self.resolution, self.ch)
    sn = dict(weight_init=self.weight_init, sn_eps=self.sn_eps, sn_init_iters=self.sn_init_iters,
              dtype=self.dtype, use_sn=self.use_sn)
    convs = dict(sn, conv_impl=self.conv_impl)
    h = x.astype(self.dtype)
    attended, extra = set(), set()
    for k, spec in enumerate(arch.d_blocks):
      if k == 0:
        h = blocks.OptimizedDBlock(out_ch=spec.out_ch, name="block1", **convs)(h, update_sn)
      else:
        h = blocks.DBlock(out_ch=spec.out_ch, downsample=spec.downsample,
                          relu_shortcut=self.relu_shortcut, name=f"block{k + 1}",
                          **convs)(h, update_sn)
      if spec.out_res in self.residual and spec.out_res not in extra:
        extra.add(spec.out_res)
        h = blocks.DBlock(out_ch=spec.out_ch, downsample=False, relu_shortcut=self.relu_shortcut,
                          name=f"residual{spec.out_res}", **convs)(h, update_sn)
      if spec.out_res in self.attention and spec.out_res not in attended:
        attended.add(spec.out_res)
        h = layers.SelfAttention(name=f"attention{spec.out_res}",
                                 attention_impl=self.attention_impl, **convs)(h, update_sn)
    h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    out = layers.SNDense(1, name="linear", **{**sn, "dtype": jnp.float32})(h, update_sn)[:, 0]
    if self.num_classes > 0:
      embed = layers.SNEmbed(self.num_classes, h.shape[-1], weight_init=self.weight_init,
                             sn_eps=self.sn_eps, sn_init_iters=self.sn_init_iters,
                             use_sn=self.use_sn, name="embed")(labels, update_sn)
      out = out + jnp.sum(embed * h, axis=-1)
    return out


# The config.model fields that set G's and D's variable trees (which arrays, their shapes);
# the other model fields change numerics or speed, not the trees (tests/test_models.py
# checks both halves). ARCH_FIELDS adds the ones that keep the variables but compute another
# function of them. A checkpoint restores only into a config that agrees on all of these.
SHAPE_FIELDS = ("resolution", "ch", "d_ch", "z_dim", "num_classes", "g_attention",
                "d_attention", "g_residual", "d_residual", "g_sn", "d_sn")
ARCH_FIELDS = SHAPE_FIELDS + ("d_relu_shortcut",)


def generator_from_config(m, dtype=None) -> Generator:
  """Builds G from `config.model`."""
  return Generator(resolution=m.resolution, ch=m.ch, z_dim=m.z_dim,
                   num_classes=m.num_classes, attention=tuple(m.g_attention),
                   weight_init=m.init, sn_eps=m.sn_eps, sn_init_iters=m.sn_init_iters,
                   bn_momentum=m.bn_momentum, bn_eps=m.bn_eps,
                   bn_group_size=m.bn_group_size, dtype=dtype or jnp.dtype(m.dtype),
                   conv_impl=m.conv_impl, attention_impl=m.attention_impl,
                   use_sn=m.g_sn, residual=tuple(m.g_residual))


def discriminator_from_config(m, dtype=None) -> Discriminator:
  """Builds D from `config.model` (width `d_ch`, or `ch` when that is 0)."""
  return Discriminator(resolution=m.resolution, ch=m.d_ch or m.ch, num_classes=m.num_classes,
                       attention=tuple(m.d_attention), relu_shortcut=m.d_relu_shortcut,
                       weight_init=m.init, sn_eps=m.sn_eps, sn_init_iters=m.sn_init_iters,
                       dtype=dtype or jnp.dtype(m.dtype), conv_impl=m.conv_impl,
                       attention_impl=m.attention_impl, use_sn=m.d_sn,
                       residual=tuple(m.d_residual))


def block_resolutions(resolution: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Feature-map sizes after each G block and each D block (where attention can go)."""
  arch = architecture(resolution, 1)
  return tuple(b.out_res for b in arch.g_blocks), tuple(b.out_res for b in arch.d_blocks)


def check_config(c) -> None:
  """ConfigError for the fields these tables and modules decide (preflight.check_config): the
  resolution, where attention and residual blocks can go, the weight init, the conv and
  attention implementations; freeze_d_blocks within D's depth, init_class_map one old class
  per class of the model."""
  from sagan_jax.errors import check_field
  from sagan_jax.models import attention, conv_tune
  m = c.model
  check_field(m.resolution in RESOLUTIONS, "model.resolution", m.resolution,
              f"use one of {RESOLUTIONS}")
  for f, width, attn in (("ch", m.ch, m.g_attention), ("d_ch", m.d_ch or m.ch, m.d_attention)):
    check_field(width % 8 == 0 or not attn, f"model.{f}", m[f], "must be a multiple of 8 "
                "when self-attention is used (theta/phi have C/8 channels)")
  g_res, d_res = block_resolutions(m.resolution)
  for f, allowed in (("g_attention", g_res), ("d_attention", d_res),
                     ("g_residual", g_res), ("d_residual", d_res)):
    check_field(all(v in allowed for v in tuple(m[f])), f"model.{f}", tuple(m[f]),
                f"sizes must be feature-map sizes of this model: {sorted(set(allowed))}")
  check_field(m.init in layers.KERNEL_INITS, "model.init", m.init,
              f"use one of {sorted(layers.KERNEL_INITS)}")
  check_field(m.conv_impl in conv_tune.CHOICES, "model.conv_impl", m.conv_impl,
              f"use one of {conv_tune.CHOICES} ('auto': a rule per shape on CPU, XLA's conv "
              "elsewhere; 'tune': timed per shape on this CPU)")
  check_field(m.attention_impl in attention.IMPLS, "model.attention_impl", m.attention_impl,
              f"use one of {attention.IMPLS}")
  cmap, n = tuple(c.init_class_map), c.model.num_classes
  check_field(not cmap or (bool(c.init_from) and len(cmap) == n and
                           all(isinstance(k, int) and k >= 0 for k in cmap)),
              "init_class_map", cmap, f"needs init_from and one old class index >= 0 for "
              f"each of the {n} classes (model.num_classes)")
  depth = len(architecture(c.model.resolution, 1).d_blocks)
  check_field(isinstance(c.freeze_d_blocks, int) and 0 <= c.freeze_d_blocks <= depth,
              "freeze_d_blocks", c.freeze_d_blocks,
              f"must be an integer in [0, {depth}] (D has {depth} blocks at this resolution)")
