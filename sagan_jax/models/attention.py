"""The core of SAGAN's self-attention, o = softmax(theta phi^T) g, plain or fused.

SAGAN's queries and keys are C/8 wide, its values C/2, and the logits are
not scaled. A fused kernel (`jax.nn.dot_product_attention`) takes one width
for all three, so q and k are zero-padded to v's width: the extra zero
channels add exactly 0 to every logit, and scale=1 keeps SAGAN's unscaled
logits. The fused kernel never materialises the [N, N/4] logits (at 64x64
feature maps, 4096 x 1024 per image and layer), which is where the memory
of the paper's 'feat64' placement goes.

  einsum  the logits and softmax in float32, as written in the paper; on a
          CPU, for more than QUERY_CHUNK queries, QUERY_CHUNK of them at a time
          (`attend_in_chunks`: the same numbers, a fraction of the memory)
  xla     jax.nn.dot_product_attention, XLA's implementation (any backend;
          equals 'einsum' within rounding: the test of the padding)
  cudnn   jax.nn.dot_product_attention's cuDNN flash kernel (NVIDIA GPUs,
          bfloat16/float16 inputs)
  auto    'cudnn' on a GPU in bfloat16/float16, else 'einsum'
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sagan_jax.models import loops

IMPLS = ("auto", "einsum", "xla", "cudnn")
QUERY_CHUNK = 1024   # 'einsum': queries per chunk (a 64x64 map's 4096 in 4)


def resolve(impl: str, dtype) -> str:
  """'auto' -> the implementation for this backend and dtype; others as given."""
  if impl != "auto":
    return impl
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.default_backend() == "gpu" else "einsum"


def attention_map(theta: jax.Array, phi: jax.Array) -> jax.Array:
  """beta [B, N, M] = softmax over the M keys of theta [B, N, d] . phi [B, M, d], in float32."""
  logits = jnp.einsum("bnc,bmc->bnm", theta.astype(jnp.float32), phi.astype(jnp.float32))
  return jax.nn.softmax(logits, axis=-1)


def _attend_einsum(theta: jax.Array, phi: jax.Array, g: jax.Array) -> jax.Array:
  return jnp.einsum("bnm,bmc->bnc", attention_map(theta, phi).astype(g.dtype), g)


def attend_in_chunks(theta: jax.Array, phi: jax.Array, g: jax.Array,
                     rows: int = QUERY_CHUNK) -> jax.Array:
  """'einsum' for `rows` queries at a time (each softmax row is the same sum), each chunk's
  logits and softmax recomputed in the backward pass instead of kept: [B, rows, M] of them
  live instead of [B, N, M] about three times over (the logits, the exponentials, the
  softmax: 0.8 GB in a 128px batch-8 D step). A loop, because XLA on CPU merges a
  `jax.checkpoint`'s recomputation with the forward pass again outside one."""
  b, n, d = theta.shape
  if n <= rows or n % rows:
    return _attend_einsum(theta, phi, g)
  chunks = theta.reshape(b, n // rows, rows, d).swapaxes(0, 1)   # [N / rows, B, rows, d]
  o = loops.map(jax.checkpoint(lambda t: _attend_einsum(t, phi, g)), chunks)
  return o.swapaxes(0, 1).reshape(b, n, g.shape[-1])


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
