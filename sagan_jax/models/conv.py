"""2-D convolutions (stride 1, NHWC x HWIO) with interchangeable implementations.

XLA:CPU computes a convolution's weight gradient far below its matmul speed
(measured on a 2-core AMD EPYC: 4-5 GFLOP/s for a 3x3 conv's dW against
100+ for a plain matmul) and runs 1x1 convolutions well below a matmul of
the same size. The same arithmetic written as matmuls avoids both. Every
implementation computes the same function and gradients within float32
rounding:

  xla     `lax.conv_general_dilated` and its autodiff (the reference; what
          accelerators use).
  xla_dw  XLA's forward and weight gradient, the input gradient by
          `input_grad` (below), as in im2col and shift.
  im2col  XLA's forward, `input_grad`; the weight gradient as one
          matmul of the kh*kw shifted input views ("patches") with dy.
  matmul  everything as matmuls over the patches: y = patches(x) @ W; its
          autodiff gives dW = patches^T dy and dx = col2im(dy W^T).
  shift   XLA's forward, `input_grad`; the weight gradient as kh*kw
          matmuls of shifted input views with dy, one view at a time (no
          patch tensor: kh*kw times less memory than im2col).
  blocked XLA's forward, `input_grad`; the weight gradient as im2col's one
          matmul, cut into blocks of a few hundred rows that stay in cache.
          x padded and dy (zeros where the padded grid has no output) are
          flattened to rows; tap (i, j) pairs dy's row r with x's row
          r + i*Wp + j, so a block's patches are kh*kw row ranges of x side
          by side, and each block is one matmul dy_block^T @ patches. No
          full-size copies per tap and no skinny [rows, C]^T [rows, O]
          matmuls (XLA:CPU ran those at 35-50 GFLOP/s at 64 channels).
  taps    for a narrow output (the RGB layer, O = 3): one matmul of x with
          every tap's weights side by side, Z = x @ [C, kh*kw*O], then the
          kh*kw shifted O-channel views of Z summed; its autodiff gives dx and
          dW as matmuls with kh*kw*O columns. XLA:CPU runs a convolution with
          a 3-channel output or input far below its matmul speed.

A 1x1 kernel is a plain matmul in every implementation but 'xla'.

The input gradient is a convolution of dy with the kernel flipped in space and
transposed (in and out swapped). Where x is narrow (C < `NARROW`: the RGB input of D's
first layer), `input_grad` computes that convolution as 'taps' does. XLA's autodiff
writes that kernel as one fused reverse-and-transpose, which XLA:CPU runs far below
memory speed: 57 ms for a 3x3x1024x1024 kernel against 13 ms for the plain transpose
(2-core Intel Xeon, jaxlib 0.12.1); with it, the whole input gradient of such a layer
at 4x4, batch 16, took 72 ms. `input_grad` flips dy and the result instead, and
transposes the kernel alone (32 ms for that layer), wherever the kernel has more
elements than dy and dx together (the deep, low-resolution layers); elsewhere
it is XLA's autodiff, which was as fast or faster. Where the kernel has 8 or more times
the elements of dy and dx together (`KERNEL_FIRST`: D's and G's 4x4 and 8x8 layers with
1024 channels at 128x128), no transposed kernel at all: one matmul with the kernel as
stored, W[kh*kw*C, O] @ dy^T, then shifted sums (`_input_grad_kernel_first`). jaxlib
0.10.2 drops the barrier that keeps that transpose apart, and XLA:CPU then ran it fused
with SN's division at ~1.3 GB/s (57 ms for 3x3x1024x1024). Alone (2-core Intel Xeon, best
of 5): 79 -> 34 ms at [16, 4, 4, 1024] and 94 -> 55 ms at [8, 8, 8, 1024] on 0.10.2,
44 -> 35 and 61 -> 52 ms on 0.12.1; at 3x (D's 8x8 512 -> 1024 conv) it was slower,
42 -> 58 ms.

The fused up/down resampling rewrites around these convs are in `resampling.py`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax.models import loops

IMPLS = ("xla", "xla_dw", "im2col", "matmul", "shift", "blocked", "taps")
NARROW = 8  # fewer channels than this: a narrow side (RGB), for 'taps' and `input_grad`
KERNEL_FIRST = 8  # kernel / (dy + dx) elements from which `input_grad` is kernel-first
_DIMS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]
Chooser = Callable[[tuple, tuple], str]  # (x shape, kernel shape) -> one of IMPLS


def same_padding(w_shape) -> Padding:
  """'SAME' for an odd kernel at stride 1."""
  kh, kw = w_shape[:2]
  if kh % 2 == 0 or kw % 2 == 0:
    raise ValueError(f"kernel {tuple(w_shape[:2])} is not odd: give the padding")
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def conv_xla(x: jax.Array, w: jax.Array, padding: Padding | None = None) -> jax.Array:
  """The reference: XLA's convolution, stride 1 ('SAME' by default)."""
  pad = padding or same_padding(w.shape)
  return jax.lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=_DIMS)


def _shifts(x: jax.Array, kh: int, kw: int, padding: Padding) -> list[jax.Array]:
  """The kh*kw shifted [N, Ho, Wo, C] views of the padded input, kernel-tap order (i, j)."""
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return [xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]


def patches(x: jax.Array, kh: int, kw: int, padding: Padding) -> jax.Array:
  """im2col: [N, Ho, Wo, kh*kw*C], channel (i*kw + j)*C + c, matching HWIO.reshape."""
  if (kh, kw) == (1, 1) and padding == ((0, 0), (0, 0)):
    return x
  return jnp.concatenate(_shifts(x, kh, kw, padding), axis=-1)


def _flat(a: jax.Array) -> jax.Array:
  return a.reshape(-1, a.shape[-1])


def conv_matmul(x: jax.Array, w: jax.Array, padding: Padding | None = None) -> jax.Array:
  """y = patches(x) @ W[kh*kw*C, O]; plain autodiff, so both gradients are matmuls too."""
  kh, kw, c, o = w.shape
  p = patches(x, kh, kw, padding or same_padding(w.shape))
  return (_flat(p) @ w.reshape(kh * kw * c, o)).reshape(p.shape[:3] + (o,))


def conv_taps(x: jax.Array, w: jax.Array, padding: Padding | None = None) -> jax.Array:
  """'taps': y = sum over taps (i, j) of Z[:, i:i+Ho, j:j+Wo, tap (i, j)], Z the padded
  x @ W[C, kh*kw*O]. x is read once by one matmul with kh*kw*O columns (27 for the RGB
  layer) instead of a convolution with O; the sums run in float32. Meant for small O:
  Z holds kh*kw*O channels per pixel."""
  kh, kw, c, o = w.shape
  n, h, wd, _ = x.shape
  (pt, pb), (pl, pr) = padding or same_padding(w.shape)
  ho, wo = h + pt + pb - kh + 1, wd + pl + pr - kw + 1
  wm = jnp.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw * o)
  z = jnp.einsum("pc,ck->pk", _flat(x), wm, preferred_element_type=jnp.float32)
  z = jnp.pad(z.reshape(n, h, wd, kh * kw, o), ((0, 0), (pt, pb), (pl, pr), (0, 0), (0, 0)))
  y = sum(z[:, i:i + ho, j:j + wo, i * kw + j] for i in range(kh) for j in range(kw))
  return y.astype(x.dtype)


def _dx_kernel_first(dy_shape, w_shape) -> bool:
  """`input_grad`'s choice of `_input_grad_kernel_first`: a spatial kernel with at least
  KERNEL_FIRST times as many elements as dy and dx together."""
  kh, kw, c, o = w_shape
  n, h, w = dy_shape[:3]
  return kh * kw > 1 and kh * kw * c * o >= KERNEL_FIRST * n * h * w * (c + o)


def _input_grad_kernel_first(dy: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
  """dx of conv_xla(x, w, padding) with the kernel as the matmul's left side, in the layout
  it is stored in: Z^T = W[kh*kw*C, O] @ dy^T [O, N*Ho*Wo] (float32 sums), then dx^T, padded,
  is the sum over taps (i, j) of Z^T's tap rows placed at offset (i, j), cropped by the
  padding and transposed back. Only dy and dx are transposed, never the kernel, where
  those are the small side (the deep 4x4 and 8x8 layers at 128x128)."""
  kh, kw, c, o = w.shape
  n, ho, wo, _ = dy.shape
  (pt, pb), (pl, pr) = padding
  zt = jnp.einsum("ko,op->kp", w.reshape(kh * kw * c, o), _flat(dy).T,
                  preferred_element_type=jnp.float32).reshape(kh * kw, c, n, ho, wo)
  hp, wp = ho + kh - 1, wo + kw - 1   # x's padded size
  dxt = sum(jnp.pad(zt[i * kw + j], ((0, 0), (0, 0), (i, kh - 1 - i), (j, kw - 1 - j)))
            for i in range(kh) for j in range(kw))
  return jnp.transpose(dxt[:, :, pt:hp - pb, pl:wp - pr], (1, 2, 3, 0)).astype(dy.dtype)


def _dx_flips_activations(dy_shape, w_shape) -> bool:
  """`input_grad`'s choice: flip dy and dx (True) or, as XLA's autodiff, the kernel."""
  kh, kw, c, o = w_shape
  n, h, w = dy_shape[:3]
  return kh * kw > 1 and kh * kw * c * o > n * h * w * (c + o)


def input_grad(dy: jax.Array, w: jax.Array, padding: Padding, x_shape,
               wt: jax.Array | None = None) -> jax.Array:
  """dx [x_shape] of y = conv_xla(x, w, padding), stride 1 (module docstring). Where x is
  narrow: 'taps' of dy with the kernel flipped and transposed. Where the kernel is the
  larger: the correlation of dy, padded by k - 1 - p, with the kernel flipped and
  transposed, computed as flip(correlation of flip(dy), padded the other way round, with
  the kernel transposed: `wt`, w with in and out swapped, if the caller has it), or,
  where it is KERNEL_FIRST times larger, `_input_grad_kernel_first` (no transposed
  kernel; `wt` unused). Elsewhere XLA's autodiff."""
  kh, kw, c, _ = w.shape
  (pt, pb), (pl, pr) = padding
  dx_pad = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
  if c < NARROW and kh * kw > 1 and min(v for p in dx_pad for v in p) >= 0:
    # The correlation of dy padded by k - 1 - p with the flipped, transposed kernel (C
    # output channels), as 'taps': 14 against 38 ms for D's RGB layer at 32x32, batch 64.
    return conv_taps(dy, jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3), dx_pad)
  if _dx_kernel_first(dy.shape, w.shape):
    return _input_grad_kernel_first(dy, w, padding)
  if not _dx_flips_activations(dy.shape, w.shape):
    x = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda x_: conv_xla(x_, w, padding), x)[1](dy)[0]
  pad = ((kh - 1 - pb, kh - 1 - pt), (kw - 1 - pr, kw - 1 - pl))
  # The barrier keeps the transpose a transpose: fused with what computes w, XLA:CPU
  # runs the two as one slow loop (for the conv+pool rewrite's [2, 2, 4C, O] kernel 250
  # ms at 128x128, the step 7% slower on jaxlib 0.12.1). jaxlib 0.10.2's XLA:CPU drops
  # the barrier before fusing, so `_conv_down` passes a `wt` of its own.
  if wt is None:
    wt = jnp.swapaxes(jax.lax.optimization_barrier(w), 2, 3)
  return jnp.flip(conv_xla(jnp.flip(dy, (1, 2)), wt, pad), (1, 2))


def _dw_autodiff(conv_fn):
  """The weight gradient of conv_fn(x, w, padding) by autodiff."""
  def dw(x, dy, w_shape, padding):
    w = jnp.zeros(w_shape, x.dtype)
    return jax.vjp(lambda w_: conv_fn(x, w_, padding), w)[1](dy)[0]
  return dw


_dw_xla = _dw_autodiff(conv_xla)
_dw_taps = _dw_autodiff(conv_taps)


def _dw_im2col(x, dy, w_shape, padding):
  kh, kw = w_shape[:2]
  return (_flat(patches(x, kh, kw, padding)).T @ _flat(dy)).reshape(w_shape)


def batch_groups(n: int) -> int:
  """Groups `_dw_shift` cuts a batch of n into: the device count when it divides n, else 1.

  Sharded data-parallel, each device then holds whole groups, so the loop's
  per-tap sums stay on their device and the one sum over groups after the
  loop is the layer's only cross-device reduction. Summed over the batch
  inside the loop, the partitioned program had an all-reduce inside a while
  loop, which jaxlib 0.12's XLA:CPU may run in a different order on two
  devices than an all-reduce outside it: both wait for each other (the
  digits default deadlocked on a 2-core machine under load).
  """
  d = jax.device_count()
  return d if d > 1 and n % d == 0 else 1


def _dw_shift(x, dy, w_shape, padding):
  """One matmul per kernel tap, in a loop: one shifted view of x in memory at a time (as a
  list of slices XLA kept all kh*kw of them, and those of other layers, alive at once).
  The batch is cut into `batch_groups` groups summed after the loop."""
  kh, kw, c, o = w_shape
  n, ho, wo, _ = dy.shape
  g = batch_groups(n)
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  # dy transposed once, [g, O, pixels]: each tap's product is then a plain matmul
  # (dy^T @ view), 10-25% faster on XLA:CPU than contracting both over their rows.
  dyt = jnp.swapaxes(dy.reshape(g, (n // g) * ho * wo, o), 1, 2)

  def tap(t):
    # xp enters the loop in its own shape, split into groups in here: reshaped outside,
    # XLA wrote a second copy of a space-to-depth x (`resampling._conv_down`) for the loop
    xg = xp.reshape((g, n // g) + xp.shape[1:])
    view = jax.lax.dynamic_slice(xg, (0, 0, t // kw, t % kw, 0), (g, n // g, ho, wo, c))
    return jnp.einsum("gop,gpc->goc", dyt, view.reshape(g, -1, c))

  dw_t = loops.map(tap, jnp.arange(kh * kw)).sum(axis=1)          # [kh*kw, O, C]
  return jnp.swapaxes(dw_t, 1, 2).reshape(w_shape)


_BLOCK_ELEMS = 2 ** 19  # `_dw_blocked`: patch elements per block (2 MB in float32)


def block_rows(kh: int, kw: int, c: int) -> int:
  """Rows per block of `_dw_blocked`: ~`_BLOCK_ELEMS` patch elements, 512 to 2048 rows.
  Timed alone (2-core Intel Xeon, jaxlib 0.10.2): 1024-2048 rows at 64 channels, 512 at
  128 and 256 were the fastest of 128-4096."""
  return int(np.clip(_BLOCK_ELEMS // (kh * kw * c), 512, 2048))


def _dw_blocked(x, dy, w_shape, padding):
  """im2col's matmul in cache-sized blocks of rows (see the module docstring), summed in a
  loop in float32. The batch is cut into `batch_groups` groups, summed after the loop."""
  kh, kw, c, o = w_shape
  n, ho, wo, _ = dy.shape
  g = batch_groups(n)
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  hp, wp = xp.shape[1:3]
  offsets = [i * wp + j for i in range(kh) for j in range(kw)]
  halo = offsets[-1]
  # dy on x's padded grid, zeros past its last row and column: its last `halo` rows are all
  # zeros, so the m - halo rows before them pair with x's m rows exactly, no padding past x.
  m = (n // g) * hp * wp - halo
  dyt = jnp.pad(dy, ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(g, -1, o)
  dyt = jnp.swapaxes(dyt[:, :m], 1, 2)                                    # [g, O, m]
  rows = min(block_rows(kh, kw, c), m)
  nb, tail = divmod(m, rows)

  def block(start, length):
    xr = xp.reshape(g, -1, c)   # in here, as in `_dw_shift`: one copy of x, not two
    xb = jax.lax.dynamic_slice_in_dim(xr, start, length + halo, axis=1)
    cols = jnp.concatenate([xb[:, s:s + length] for s in offsets], axis=2)
    db = jax.lax.dynamic_slice_in_dim(dyt, start, length, axis=2)
    return jnp.einsum("gor,grk->gok", db, cols, preferred_element_type=jnp.float32)

  if loops.is_unrolled():
    dw = block(0, m)                               # the same products as one block, to count
  else:
    dw = jax.lax.fori_loop(0, nb, lambda k, acc: acc + block(k * rows, rows),
                           jnp.zeros((g, o, kh * kw * c), jnp.float32))
    if tail:
      dw = dw + block(nb * rows, tail)
  return dw.sum(axis=0).T.reshape(w_shape).astype(x.dtype)   # [g, O, kh*kw*C] -> w's layout


_WEIGHT_GRADS = {"xla": _dw_xla, "xla_dw": _dw_xla, "im2col": _dw_im2col, "shift": _dw_shift,
                 "blocked": _dw_blocked, "taps": _dw_taps}


def weight_grad(x: jax.Array, dy: jax.Array, w_shape, impl: str,
                padding: Padding | None = None) -> jax.Array:
  """dL/dW of a stride-1 conv of x given dL/dy, as 'xla', 'im2col', 'shift', 'blocked' or
  'taps' compute it."""
  return _WEIGHT_GRADS[impl](x, dy, tuple(w_shape), padding or same_padding(w_shape))


def _xla_with_dw(dw_fn):
  """XLA forward, `input_grad`, weight gradient from `dw_fn`."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def conv(x, w, wt, padding):
    return conv_xla(x, w, padding)

  def fwd(x, w, wt, padding):
    return conv_xla(x, w, padding), (x, w, wt)

  def bwd(padding, res, dy):
    x, w, wt = res   # wt: None, or w transposed by the caller (only the backward pass reads it)
    return (input_grad(dy, w, padding, x.shape, wt),
            dw_fn(x, dy, w.shape, padding).astype(w.dtype), None)

  conv.defvjp(fwd, bwd)
  return conv


# (x, w, wt, padding) -> y; 'xla', 'matmul' and 'taps' differentiate themselves, ignore wt.
_CONVS = {"xla": lambda x, w, wt, padding: conv_xla(x, w, padding),
          "xla_dw": _xla_with_dw(_dw_xla), "im2col": _xla_with_dw(_dw_im2col),
          "matmul": lambda x, w, wt, padding: conv_matmul(x, w, padding),
          "shift": _xla_with_dw(_dw_shift), "blocked": _xla_with_dw(_dw_blocked),
          "taps": lambda x, w, wt, padding: conv_taps(x, w, padding)}


def conv2d(x: jax.Array, w: jax.Array, impl: str = "xla",
           padding: Padding | None = None, wt: jax.Array | None = None) -> jax.Array:
  """Stride-1 convolution of x [N, H, W, C] with w [kh, kw, C, O] by `impl`.

  padding: ((top, bottom), (left, right)); default 'SAME' (odd kernels).
  wt: optionally w with in and out swapped [kh, kw, O, C], for `input_grad` (the value
  must equal jnp.swapaxes(w, 2, 3); no gradient flows through it).
  """
  if impl not in _CONVS:
    raise ValueError(f"unknown conv implementation {impl!r}; use one of {IMPLS}")
  pad = tuple(map(tuple, padding)) if padding is not None else same_padding(w.shape)
  if impl != "xla" and w.shape[:2] == (1, 1) and pad == ((0, 0), (0, 0)):
    return conv_matmul(x, w, pad)
  return _CONVS[impl](x, w, wt, pad)
