"""Residual blocks of SAGAN / BigGAN (Miyato & Koyama 2018 layout).

GBlock         CBN -> ReLU -> up x2 -> SN-conv3x3 -> CBN -> ReLU -> SN-conv3x3,
               shortcut: up x2 -> SN-conv1x1; with upsample=False and the same
               width (the paper's Table 1 "residual" control) no up x2 and an
               identity shortcut.
DBlock         ReLU -> SN-conv3x3 -> ReLU -> SN-conv3x3 -> [avgpool2],
               shortcut: SN-conv1x1 -> [avgpool2] when shape changes, else identity;
               with relu_shortcut the shortcut starts from ReLU(x), as StudioGAN's
               resnet D computes (its in-place ReLU also rewrites the block input).
OptimizedDBlock  (D's first block, no pre-activation on the image)
               SN-conv3x3 -> ReLU -> SN-conv3x3 -> avgpool2,
               shortcut: avgpool2 -> SN-conv1x1.

An up x2 before a conv and an avgpool2 after it are the conv's `resample`
argument: on CPU they are computed fused, as exact rewrites with fewer
multiplies (`sagan_jax.models.resampling.resampled_conv`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from sagan_jax.models import layers


class _SNConvFactory(nn.Module):
  """Mixin holding the SN/init/dtype settings shared by all block convs."""

  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  dtype: Any = jnp.float32
  conv_impl: str = "xla"
  use_sn: bool = True

  def conv(self, features: int, kernel_size: int, name: str) -> layers.SNConv:
    return layers.SNConv(features, kernel_size, weight_init=self.weight_init, sn_eps=self.sn_eps,
                         sn_init_iters=self.sn_init_iters, dtype=self.dtype,
                         conv_impl=self.conv_impl, use_sn=self.use_sn, name=name)


class GBlock(_SNConvFactory):
  out_ch: int = 0
  num_classes: int = 0
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  bn_group_size: int = 0
  upsample: bool = True

  def _bn(self, name):
    return layers.ConditionalBatchNorm(self.num_classes, self.bn_momentum, self.bn_eps,
                                       self.dtype, self.bn_group_size, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    up = "up" if self.upsample else None
    h = nn.relu(self._bn("bn1")(x, labels, train))
    h = self.conv(self.out_ch, 3, "conv1")(h, train, resample=up)
    h = nn.relu(self._bn("bn2")(h, labels, train))
    h = self.conv(self.out_ch, 3, "conv2")(h, train)
    sc = x
    if self.upsample or x.shape[-1] != self.out_ch:
      sc = self.conv(self.out_ch, 1, "conv_sc")(x, train, resample=up)
    return h + sc


class DBlock(_SNConvFactory):
  out_ch: int = 0
  downsample: bool = True
  relu_shortcut: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
    down = "down" if self.downsample else None
    h = self.conv(self.out_ch, 3, "conv1")(nn.relu(x), update_sn)
    h = self.conv(self.out_ch, 3, "conv2")(nn.relu(h), update_sn, resample=down)
    sc = nn.relu(x) if self.relu_shortcut else x
    if self.downsample or x.shape[-1] != self.out_ch:
      sc = self.conv(self.out_ch, 1, "conv_sc")(sc, update_sn, resample=down)
    return h + sc


class OptimizedDBlock(_SNConvFactory):
  out_ch: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
    h = self.conv(self.out_ch, 3, "conv1")(x, update_sn)
    h = self.conv(self.out_ch, 3, "conv2")(nn.relu(h), update_sn, resample="down")
    sc = self.conv(self.out_ch, 1, "conv_sc")(layers.avg_pool2(x), update_sn)
    return h + sc
