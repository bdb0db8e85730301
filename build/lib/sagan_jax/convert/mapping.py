"""Walks our G and D in model order and fills each layer from a source's names.

Both PyTorch SAGANs are the same network as ours; they differ in what they
call each layer, how their spectral norm stores its state, and how their
conditional BN holds its tables. A `ModelMap` subclass (one per source)
supplies exactly those; the walk itself is here, once.
"""

from __future__ import annotations

import numpy as np

from sagan_jax.convert import common
from sagan_jax.models import sagan


def layer_sequence(blocks, attention, first_only: bool) -> list[tuple[str, int]]:
  """Our G's or D's residual blocks and attention layers in model order.

  Returns (name, k): ('block<k+1>', k) for block k and ('attention<res>', k)
  for an attention layer after block k. D attends after the first block of a
  size only (`first_only`), as `models.sagan.Discriminator` does.
  """
  out, done = [], set()
  for k, spec in enumerate(blocks):
    out.append((f"block{k + 1}", k))
    if spec.out_res in attention and not (first_only and spec.out_res in done):
      done.add(spec.out_res)
      out.append((f"attention{spec.out_res}", k))
  return out


class ModelMap:
  """One source's names for our layers, and its SN and BN readers (subclasses fill these in)."""

  g_linear = g_bn_out = g_conv_out = d_linear = d_embed = ""
  conv_names: dict[str, str] = {}        # our block conv name -> the source's
  attention_names: dict[str, str] = {}   # theta, phi, g, o, gamma -> the source's

  def prefix(self, name: str, k: int, position: int) -> str:
    """The source's module prefix of our layer `name` (after block k; `position` in order)."""
    raise NotImplementedError

  def sn(self, sd: common.StateDict, prefix: str) -> common.SNWeight:
    """The SN weight of module `prefix` (and how the source normalises it in evaluation)."""
    raise NotImplementedError

  def cbn(self, tb: common.TreeBuilder, path: tuple[str, ...], prefix: str) -> None:
    """A conditional BN: gamma / beta tables and running statistics."""
    raise NotImplementedError

  def bn_out(self, tb: common.TreeBuilder, prefix: str) -> None:
    """G's last (unconditional, affine) BN."""
    raise NotImplementedError

  # The walk -------------------------------------------------------------------

  def sn_layer(self, tb, path, prefix: str, kind: str, perm=None) -> None:
    weight = self._weight_key(tb.sd, prefix)
    bias = f"{prefix}.bias" if tb.sd.has(f"{prefix}.bias") else None
    tb.sn_layer(path, weight, self.sn(tb.sd, prefix), bias, kind, perm)

  @staticmethod
  def _weight_key(sd, prefix: str) -> str:
    return f"{prefix}.weight_orig" if sd.has(f"{prefix}.weight_orig") else f"{prefix}.weight"

  def generator(self, tb: common.TreeBuilder, model: sagan.Generator) -> None:
    arch = sagan.architecture(model.resolution, model.ch)
    perm = common.chw_to_hwc(arch.g_blocks[0].in_ch)
    self.sn_layer(tb, ("linear",), self.g_linear, "dense", perm)
    for j, (name, k) in enumerate(layer_sequence(arch.g_blocks, model.attention, False)):
      prefix = self.prefix(name, k, j)
      if name.startswith("attention"):
        self._attention(tb, name, prefix)
        continue
      self._convs(tb, name, prefix)
      for bn in ("bn1", "bn2"):
        self.cbn(tb, (name, bn), f"{prefix}.{bn}")
    self.bn_out(tb, self.g_bn_out)
    self.sn_layer(tb, ("conv_out",), self.g_conv_out, "conv")

  def discriminator(self, tb: common.TreeBuilder, model: sagan.Discriminator) -> None:
    arch = sagan.architecture(model.resolution, model.ch)
    for j, (name, k) in enumerate(layer_sequence(arch.d_blocks, model.attention, True)):
      prefix = self.prefix(name, k, j)
      if name.startswith("attention"):
        self._attention(tb, name, prefix)
      else:
        self._convs(tb, name, prefix)
    self.sn_layer(tb, ("linear",), self.d_linear, "dense")
    if model.num_classes:
      self.sn_layer(tb, ("embed",), self.d_embed, "embed")

  def _convs(self, tb, name: str, prefix: str) -> None:
    """The convs our block has (its template says which; conv_sc only where shapes change)."""
    for ours in tb.template["params"][name]:
      if ours in self.conv_names:
        self.sn_layer(tb, (name, ours), f"{prefix}.{self.conv_names[ours]}", "conv")

  def _attention(self, tb, name: str, prefix: str) -> None:
    for ours in ("theta", "phi", "g", "o"):
      self.sn_layer(tb, (name, ours), f"{prefix}.{self.attention_names[ours]}", "conv")
    key = f"{prefix}.{self.attention_names['gamma']}"
    tb.param((name, "gamma"), key, tb.sd.take(key), _scalar)


def _scalar(x: np.ndarray) -> np.ndarray:
  """A gain stored as shape () or [1] -> shape ()."""
  return np.reshape(x, ())
