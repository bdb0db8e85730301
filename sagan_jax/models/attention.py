"""The core of SAGAN's self-attention, o = softmax(theta phi^T) g, plain or fused.

SAGAN's queries and keys are C/8 wide, its values C/2, and the logits are
not scaled. A fused kernel (`jax.nn.dot_product_attention`) takes one width
for all three, so q and k are zero-padded to v's width: the extra zero
channels add exactly 0 to every logit, and scale=1 keeps SAGAN's unscaled
logits. The fused kernel never materialises the [N, N/4] logits (at 64x64
feature maps, 4096 x 1024 per image and layer), which is where the memory
of the paper's 'feat64' placement goes.

  einsum  the logits and softmax in float32, as written in the paper; on a
          CPU, for more than QUERY_CHUNK queries, that many at a time
          (`attend_in_chunks`: the same numbers, a fraction of the memory)
  xla     jax.nn.dot_product_attention, XLA's implementation (any backend;
          equals 'einsum' within rounding: the test of the padding)
  cudnn   jax.nn.dot_product_attention's cuDNN flash kernel (NVIDIA GPUs,
          bfloat16/float16 inputs)
  auto    'cudnn' on a GPU in bfloat16/float16, else 'einsum'

`attend_in_chunks` has two backward passes (the same gradients within float32
rounding), chosen by jaxlib, because XLA:CPU compiles them so differently:

  autodiff  each chunk under `jax.checkpoint`: its logits, softmax and both row
            reductions recomputed, then autodiff's softmax backward (another row
            reduction over the M keys). jaxlib >= 0.11 hands each of those pieces,
            matmuls and reductions together, to YNNPACK as one fused subgraph,
            and this is the faster one there.
  written   the forward keeps each row's max m and 1/sum r ([B, N] each); the
            backward recomputes exp(logits - m) and uses the flash-attention
            identity rowsum(dp * p) = rowsum(do * o) (Cv wide, not M wide): no
            reduction over the keys. jaxlib 0.10.2's fusions of the first run slowly.

Measured (2-core Intel Xeon, family 6 model 167, float32, value and all gradients of
D's attention at the 128px benchmark shape, [16, 4096] queries, 1024 keys, 8/32
channels; best of 5, both compiled with `xla_flags.compiler_options`): jaxlib 0.10.2
587 ms autodiff, 389-395 ms written; jaxlib 0.12.1 383-390 ms autodiff, 457-469 ms
written. G's (batch 8, 16/64 channels): 0.10.2 382 -> 304 ms; 0.12.1 222 -> 254 ms.
The written backward computes dg and dphi transposed ([B, C, M], the few channels as the
matmul's rows; transposed back after the loop): as [B, M, C] XLA:CPU ran those two
matmuls at 7-30 GFLOP/s. Same CPU, plain jit, best of 10: D's 498 -> 389 ms and G's
280 -> 227 ms on jaxlib 0.10.2; 0.12.1's written 443 -> 468 and 253 -> 240 ms (its
autodiff 435-445 and 246-255 ms: still the one used there).

The chunks: 1024 queries (a 64x64 map in 4) until 2026-12-07, then smaller ones, timed alone
(same CPU, best of 5, forward alone / value and all gradients). jaxlib 0.10.2, written: D's
197 / 293 ms at 1024 queries, 143 / 269 at 512, 68 / 285 at 256; G's 106 / 190, 61 / 178,
52 / 206: so 512 where the pass is differentiated and `FORWARD_CHUNK` = 256 where nothing
differentiates it (G's forward pass in the D update; the custom_vjp's undifferentiated
function chunks on its own). jaxlib 0.12.1, autodiff, gradients: D's 306 -> 230-252 ms, G's
148 -> 126-130 ms from 1024 to 256 (forward alone 45 -> 48-50 and 32 -> 34-37 ms). The 128px
step, old and new alternated in one process: 4.71 -> 4.48 s (0.10.2), 4.53 -> 4.46 s (0.12.1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sagan_jax import xla_flags
from sagan_jax.models import loops

IMPLS = ("auto", "einsum", "xla", "cudnn")
# 'einsum' on a CPU: queries per chunk, per backward pass (module docstring)
QUERY_CHUNK = {"autodiff": 256, "written": 512}
FORWARD_CHUNK = 256   # 'written': queries per chunk of a pass nothing differentiates
BACKWARDS = ("autodiff", "written")   # attend_in_chunks's (module docstring)
WRITTEN_BACKWARD_BEFORE_JAXLIB = (0, 11, 0)   # the written one on older jaxlibs


def resolve(impl: str, dtype) -> str:
  """'auto' -> the implementation for this backend and dtype; others as given."""
  if impl != "auto":
    return impl
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.default_backend() == "gpu" else "einsum"


def _logits(theta: jax.Array, phi: jax.Array) -> jax.Array:
  """theta [B, N, d] . phi [B, M, d] -> [B, N, M], in float32."""
  return jnp.einsum("bnc,bmc->bnm", theta.astype(jnp.float32), phi.astype(jnp.float32))


def attention_map(theta: jax.Array, phi: jax.Array) -> jax.Array:
  """beta [B, N, M] = softmax over the M keys of theta [B, N, d] . phi [B, M, d], in float32."""
  return jax.nn.softmax(_logits(theta, phi), axis=-1)


def _attend_einsum(theta: jax.Array, phi: jax.Array, g: jax.Array) -> jax.Array:
  return jnp.einsum("bnm,bmc->bnc", attention_map(theta, phi).astype(g.dtype), g)


def _chunk_forward(t: jax.Array, phi: jax.Array, g: jax.Array):
  """One chunk of queries t [B, rows, d]: o [B, rows, Cv], the logits' row max m and r = 1 /
  the row sum of exp(logits - m) ([B, rows, 1] each). o = (exp(logits - m) g) r: the
  softmax's normalisation applied to the Cv-wide result instead of the M-wide weights."""
  s = _logits(t, phi)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  r = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
  o = jnp.einsum("bnm,bmc->bnc", e.astype(g.dtype), g, preferred_element_type=jnp.float32)
  return (o * r).astype(g.dtype), m, r


def _split(a: jax.Array, rows: int) -> jax.Array:
  """[B, N, ...] -> [N / rows, B, rows, ...]: chunks of `rows` queries, the loop axis first."""
  b, n = a.shape[:2]
  return a.reshape((b, n // rows, rows) + a.shape[2:]).swapaxes(0, 1)


def _join(a: jax.Array) -> jax.Array:
  """`_split`'s inverse."""
  k, b, rows = a.shape[:3]
  return a.swapaxes(0, 1).reshape((b, k * rows) + a.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _written(theta: jax.Array, phi: jax.Array, g: jax.Array, rows: int,
             forward_rows: int) -> jax.Array:
  """o [B, N, Cv], `forward_rows` queries at a time where nothing differentiates it; under
  differentiation `_written_fwd` and `_written_bwd`, `rows` at a time."""
  return _join(loops.map(lambda t: _chunk_forward(t, phi, g)[0], _split(theta, forward_rows)))


def _written_fwd(theta, phi, g, rows, forward_rows):
  o, m, r = (_join(a) for a in loops.map(lambda t: _chunk_forward(t, phi, g),
                                         _split(theta, rows)))
  return o, (theta, phi, g, o, m, r)


def _written_bwd(rows, forward_rows, res, do):
  """Chunk by chunk, with p = exp(logits - m) r and dp = do g^T: dg = p^T do, and the
  logits' gradient ds = p (dp - delta), delta = rowsum(dp p) = rowsum(do o); r is folded
  into do ([B, rows, Cv]) rather than applied to the [B, rows, M] weights."""
  theta, phi, g, o, m, r = res
  f32 = jnp.float32
  delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)

  def chunk(args):
    t, do_c, m_c, r_c, delta_c = args
    e = jnp.exp(_logits(t, phi) - m_c)                  # p = e r
    do_r = (do_c.astype(f32) * r_c).astype(g.dtype)
    # dg and dphi transposed, [B, C, M]: a matmul with the few channels as its rows. As
    # [B, M, C], XLA:CPU ran them at 7-30 GFLOP/s; the transposes wait until after the loop.
    dg_t = jnp.einsum("bnc,bnm->bcm", do_r, e.astype(g.dtype), preferred_element_type=f32)
    dp_r = jnp.einsum("bnc,bmc->bnm", do_r, g, preferred_element_type=f32)   # dp r
    ds = e * (dp_r - delta_c * r_c)
    dt = jnp.einsum("bnm,bmc->bnc", ds, phi.astype(f32))
    dphi_t = jnp.einsum("bnc,bnm->bcm", t.astype(f32), ds)
    return dt.astype(t.dtype), dphi_t, dg_t

  dt, dphi_t, dg_t = loops.map(chunk, tuple(_split(a, rows) for a in (theta, do, m, r, delta)))
  return (_join(dt), dphi_t.sum(0).swapaxes(1, 2).astype(phi.dtype),
          dg_t.sum(0).swapaxes(1, 2).astype(g.dtype))


_written.defvjp(_written_fwd, _written_bwd)


def chunk_backward() -> str:
  """The backward pass `attend_in_chunks` uses with this jaxlib (module docstring)."""
  return "written" if xla_flags.jaxlib_before(WRITTEN_BACKWARD_BEFORE_JAXLIB) else "autodiff"


def attend_in_chunks(theta: jax.Array, phi: jax.Array, g: jax.Array, rows: int | None = None,
                     backward: str | None = None, forward_rows: int | None = None) -> jax.Array:
  """'einsum' for `rows` queries at a time (each softmax row is the same sum), each chunk's
  logits and softmax recomputed in the backward pass instead of kept: [B, rows, M] of them
  live instead of [B, N, M] about three times over (the logits, the exponentials, the
  softmax: 0.8 GB in a 128px batch-8 D step). A loop, because XLA on CPU merges a
  `jax.checkpoint`'s recomputation with the forward pass again outside one.
  backward: one of BACKWARDS (module docstring); default `chunk_backward()`. rows: default
  `QUERY_CHUNK[backward]`; forward_rows ('written' only): the chunk where nothing
  differentiates the pass (G's forward pass in the D update), default `FORWARD_CHUNK`."""
  backward = backward or chunk_backward()
  if backward not in BACKWARDS:
    raise ValueError(f"unknown backward {backward!r}; use one of {BACKWARDS}")
  rows = rows or QUERY_CHUNK[backward]
  n = theta.shape[1]
  if n <= rows or n % rows:
    return _attend_einsum(theta, phi, g)
  if backward == "written":
    forward_rows = forward_rows or FORWARD_CHUNK
    return _written(theta, phi, g, rows, rows if n % forward_rows else forward_rows)
  return _join(loops.map(jax.checkpoint(lambda t: _attend_einsum(t, phi, g)), _split(theta, rows)))


def attend(theta: jax.Array, phi: jax.Array, g: jax.Array, impl: str) -> jax.Array:
  """o [B, N, C_v] = softmax(theta phi^T) g; theta [B, N, d], phi [B, M, d], g [B, M, C_v]."""
  if impl == "einsum":   # chunks on CPU, where their memory was measured (not the loop's cost
    # on an accelerator, whose fused kernels 'xla' / 'cudnn' are the memory-saving choice)
    if jax.default_backend() == "cpu":
      return attend_in_chunks(theta, phi, g)
    return _attend_einsum(theta, phi, g)
  if impl not in ("xla", "cudnn"):
    raise ValueError(f"unknown attention implementation {impl!r}; use one of {IMPLS}")
  width = g.shape[-1]
  if theta.shape[-1] > width:
    raise ValueError(f"queries ({theta.shape[-1]}) wider than values ({width})")
  pad = ((0, 0), (0, 0), (0, width - theta.shape[-1]))
  q = jnp.pad(theta.astype(g.dtype), pad)[:, :, None, :]  # one head: [B, N, 1, C_v]
  k = jnp.pad(phi.astype(g.dtype), pad)[:, :, None, :]
  o = jax.nn.dot_product_attention(q, k, g[:, :, None, :], scale=1.0, implementation=impl)
  return o[:, :, 0, :]
