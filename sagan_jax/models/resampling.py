"""The resampling that SAGAN's residual blocks put around a conv, and its exact rewrites.

`resampled_conv`: nearest x2 upsampling before a conv (G) or 2x2 average
pooling after it (D).
Fused, both are exact rewrites with 2.25x fewer multiplies for a 3x3 kernel:

  up    conv3x3(upsample2(x)): each of the 4 output phases (row and column
        parity) is a 2x2 conv of x with the 3x3 taps that land on the same
        input pixel summed (rows: [w0, w1+w2] for even outputs, [w0+w1, w2]
        for odd ones), interleaved back.
  down  avgpool2(conv3x3(x)): a 4x4 stride-2 conv with kernel w (*) box/4,
        computed as a 2x2 stride-1 conv of the space-to-depth input.

The convolutions themselves, and which implementation computes each, are `conv.py`'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sagan_jax.models import conv


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling (NHWC)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (NHWC; an odd H or W drops its last row or column).

  For even H and W, the sum of the four strided slices (in `nn.avg_pool`'s window order,
  the same values), not a `reduce_window`: XLA:CPU hands a reduction, with the convolution
  whose output joins it (D's conv+pool added to the pooled shortcut), to YNNPACK as one
  fused subgraph, and YNNPACK ran that 2x2 convolution at a third of XLA's speed (79
  against 220-250 GFLOP/s, [32-64, 17, 17, 512] x [2, 2, 512, 128], 2-core Intel Xeon,
  jaxlib 0.10.2). Slices and adds are no reduction, so the convolution stays XLA's; their
  gradient is elementwise as well."""
  h, w = x.shape[1:3]
  if h % 2 or w % 2:
    return nn.avg_pool(x, (2, 2), (2, 2))
  return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) * 0.25


def _phase_taps(w: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """A 3-tap axis of w folded for x2 nearest upsampling: (even, odd) output phases."""
  t = [jax.lax.index_in_dim(w, i, axis) for i in range(3)]
  return (jnp.concatenate([t[0], t[1] + t[2]], axis),
          jnp.concatenate([t[0] + t[1], t[2]], axis))


def _conv_up(x: jax.Array, w: jax.Array, choose: conv.Chooser) -> jax.Array:
  """conv3x3_same(upsample2(x)) as 4 phase-wise 2x2 convs of x, interleaved."""
  n, h, wd, _ = x.shape
  rows = []
  for a, wa in enumerate(_phase_taps(w, 0)):
    cols = []
    for b, wab in enumerate(_phase_taps(wa, 1)):
      pad = ((1 - a, a), (1 - b, b))  # even phase: taps at -1, 0; odd phase: 0, +1
      cols.append(conv.conv2d(x, wab, choose(x.shape, wab.shape), pad))
    rows.append(jnp.stack(cols, axis=3))          # [N, h, w, 2 (b), O]
  y = jnp.stack(rows, axis=2)                     # [N, h, 2 (a), w, 2 (b), O]
  return y.reshape(n, 2 * h, 2 * wd, w.shape[-1])


def _pool_taps() -> np.ndarray:
  """[4, 4, 3, 3]: how much of 3x3 tap (i, j) each 4x4 tap of w (*) box/4 holds."""
  m = np.zeros((4, 4, 3, 3), np.float32)
  for i in range(3):
    for j in range(3):
      m[i:i + 2, j:j + 2, i, j] = 0.25
  return m


_POOL_TAPS = _pool_taps()
# The same taps in the order of `_conv_down`'s 2x2 kernel over the space-to-depth input:
# [u, v, p, q, 3, 3] is the 4x4 tap (2u + p, 2v + q).
_POOL_TAPS_S2D = _POOL_TAPS.reshape(2, 2, 2, 2, 3, 3).transpose(0, 2, 1, 3, 4, 5)


def _pooled_kernel(w: jax.Array) -> jax.Array:
  """The 4x4 kernel of avg_pool2(conv3x3(.)) from the 3x3 kernel w [3, 3, A, B]: [4, 4, A, B],
  w (*) box/4 as one product over the 9 taps, [16, 9] @ [9, A*B] (its gradient another).
  A dot is its own operation: written as pads and sums, XLA fused it with the transposes
  `_conv_down` applies to it into one loop that ran at a fraction of memory speed (322 ms
  for D's [2, 2, 1024, 4096] transposed kernel at 128x128, jaxlib 0.10.2)."""
  return jnp.einsum("uvij,ijab->uvab", _POOL_TAPS.astype(w.dtype), w)


def _conv_down(x: jax.Array, w: jax.Array, choose: conv.Chooser) -> jax.Array:
  """avg_pool2(conv3x3_same(x)) as a 2x2 conv of the space-to-depth padded input."""
  n, h, wd, c = x.shape
  o = w.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  hs, ws = (h + 2) // 2, (wd + 2) // 2
  xs = xp.reshape(n, hs, 2, ws, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hs, ws, 4 * c)
  # The 2x2 kernel [2, 2, 4C, O] straight from the product over the taps (`_pooled_kernel`'s,
  # its rows already in space-to-depth order): built as the 4x4 kernel, then transposed,
  # XLA:CPU wrote the transpose as its own copy, once per user (2 x 28 ms for D's
  # [2, 2, 4096, 1024] kernel at 128x128, jaxlib 0.10.2; the step 5.00 -> 4.80 s).
  k2 = jnp.einsum("uvpqij,ijco->uvpqco", _POOL_TAPS_S2D.astype(w.dtype), w).reshape(
      2, 2, 4 * c, o)
  # k2 with in and out swapped, for the input gradient, built the same way from w with in
  # and out swapped: only whole rows of C move (XLA fused swapaxes(k2) with k2's
  # construction into one slow loop, 250-540 ms for D's 1024-channel kernel at 128x128;
  # with this, the 128px step on jaxlib 0.10.2 took 6.89 s against 7.10 s, on 0.12.1 the
  # same as input_grad's own transpose behind a barrier).
  k4t = _pooled_kernel(jnp.swapaxes(w, 2, 3))                           # [4, 4, O, C]
  k2t = k4t.reshape(2, 2, 2, 2, o, c).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, o, 4 * c)
  return conv.conv2d(xs, k2, choose(xs.shape, k2.shape), ((0, 0), (0, 0)), wt=k2t)


def resampled_conv(x: jax.Array, w: jax.Array, choose: conv.Chooser,
                   resample: str | None = None, fuse: bool = True) -> jax.Array:
  """conv2d with SAME padding, after x2 upsampling ('up') or before 2x2 pooling ('down').

  choose: picks the implementation for each (inner) conv from its shapes.
  fuse=False computes the resampling literally (the reference); True uses
  the rewrites above for 3x3 kernels and moves a 1x1 conv to the low
  resolution side (it commutes with both).
  """
  k = w.shape[0]
  if resample is None:
    return conv.conv2d(x, w, choose(x.shape, w.shape))
  if resample not in ("up", "down"):
    raise ValueError(f"resample must be None, 'up' or 'down', not {resample!r}")
  odd = x.shape[1] % 2 or x.shape[2] % 2
  if not fuse or k not in (1, 3) or (resample == "down" and odd):
    if resample == "up":
      xu = upsample2(x)
      return conv.conv2d(xu, w, choose(xu.shape, w.shape))
    return avg_pool2(conv.conv2d(x, w, choose(x.shape, w.shape)))
  if k == 1:
    if resample == "up":
      return upsample2(conv.conv2d(x, w, choose(x.shape, w.shape)))
    xd = avg_pool2(x)
    return conv.conv2d(xd, w, choose(xd.shape, w.shape))
  return _conv_up(x, w, choose) if resample == "up" else _conv_down(x, w, choose)
