"""SAGAN's building layers: spectral norm, SN conv/dense/embed, CBN, self-attention.

Every SN layer takes `use_sn` (default True); with False it is the plain
layer, with the same `params` and no `spectral` entries (model.g_sn/d_sn).

Variable collections:
  params      trainable weights (kernels, biases, CBN tables, attention gamma)
  spectral    power-iteration state of every SN layer: `u` (left singular
              vector estimate) and `sigma` (last spectral-norm estimate);
              updated only when a layer is called with `update_sn=True`
  batch_stats BN running mean/var, updated in training calls

Kernels are stored float32; the convolution/matmul runs in `dtype`
(float32 or bfloat16). The power iteration always runs in float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from sagan_jax.models import attention, conv_tune, resampling

SPECTRAL = "spectral"
Dtype = Any


# Weight initialisers by config name (model.init): 'glorot' (the paper), 'orthogonal', N(0, 0.02).
KERNEL_INITS = {"glorot": nn.initializers.xavier_uniform,
                "orthogonal": nn.initializers.orthogonal,
                "normal02": lambda: nn.initializers.normal(0.02)}


def kernel_init(name: str) -> Callable:
  """Weight initialiser by config name (a key of KERNEL_INITS)."""
  if name not in KERNEL_INITS:
    raise ValueError(f"unknown init {name!r}; use one of {sorted(KERNEL_INITS)}")
  return KERNEL_INITS[name]()


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(x * x)) + eps)


def power_iteration(w_mat: jax.Array, u: jax.Array, n_iters: int, eps: float):
  """`n_iters` rounds of power iteration on w_mat [out, in] from u [out].

  Returns (u, v, sigma) with sigma = u^T W v, the estimate of W's largest
  singular value. u and v carry no gradient; sigma does (through W), as in
  Miyato et al. 2018 and torch.nn.utils.spectral_norm.

  The products are written on W^T (for a conv, `as_matrix`'s transpose cancels:
  the kernel's own [kh*kw*in, out] layout), W^T u as `k @ u` and W v as `v @ k`,
  so that XLA:CPU multiplies in place instead of writing a transposed copy of
  each kernel first (~20-30 ms per 1024-channel 3x3 kernel on a 2-core CPU, a
  few percent of the 128x128 step).
  """
  k = w_mat.astype(jnp.float32).T   # [in, out]
  u = u.astype(jnp.float32)
  v = _l2_normalize(k @ u, eps)

  def body(_, uv):
    u = _l2_normalize(uv[1] @ k, eps)
    return u, _l2_normalize(k @ u, eps)

  if n_iters == 1:
    u, v = body(0, (u, v))
  elif n_iters > 1:  # a loop, not n unrolled copies: keeps init's compile small
    u, v = jax.lax.fori_loop(0, n_iters, body, (u, v))
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(v)
  sigma = (v @ k) @ u
  return u, v, sigma


def as_matrix(kernel: jax.Array) -> jax.Array:
  """Kernel [..., in, out] (flax layout) -> matrix [out, prod(...)*in]."""
  return kernel.reshape(-1, kernel.shape[-1]).T


class SpectralNorm(nn.Module):
  """Divides a kernel by its power-iteration spectral norm (`sigma` alone: for a caller
  that divides its output instead, as SNConv does where the kernel dwarfs its output).

  Owns `u` [out] and `sigma` in the `spectral` collection. With
  `update=True` it runs one power iteration and stores the new u and sigma;
  with `update=False` it reuses the stored u (no state change), which is
  what evaluation and the G step's pass through D do.
  """

  eps: float = 1e-12
  init_iters: int = 10
  transpose: bool = False  # True for embeddings: table [classes, features] -> W = table

  def __call__(self, kernel: jax.Array, update: bool) -> jax.Array:
    return kernel / self.sigma(kernel, update).astype(kernel.dtype)

  @nn.compact
  def sigma(self, kernel: jax.Array, update: bool) -> jax.Array:
    """The kernel's spectral norm estimate (float32 scalar, gradient through the kernel),
    after one power iteration if `update`, for a caller that divides its output by it."""
    w_mat = kernel if self.transpose else as_matrix(kernel)

    def init_u():
      u0 = jax.random.normal(self.make_rng("params"), (w_mat.shape[0],), jnp.float32)
      u0 = _l2_normalize(u0, self.eps)
      # Warm-up so that sigma is accurate from step 0.
      u0, _, _ = power_iteration(w_mat, u0, self.init_iters, self.eps)
      return u0

    u_var = self.variable(SPECTRAL, "u", init_u)
    sigma_var = self.variable(SPECTRAL, "sigma", lambda: jnp.ones((), jnp.float32))
    n_iters = 1 if update else 0
    u, _, sigma = power_iteration(w_mat, u_var.value, n_iters, self.eps)
    if update and not self.is_initializing():
      u_var.value = u
      sigma_var.value = jax.lax.stop_gradient(sigma)
    if self.is_initializing():
      sigma_var.value = jax.lax.stop_gradient(sigma)
    return sigma


class SNConv(nn.Module):
  """Spectrally normalised 2-D convolution, NHWC, 'SAME' padding."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # see sagan_jax.models.conv ('auto': chosen per shape)
  use_sn: bool = True  # False: a plain conv (no `spectral` entries)

  @nn.compact
  def __call__(self, x: jax.Array, update_sn: bool, resample: str | None = None) -> jax.Array:
    """resample: None, 'up' (nearest x2 before the conv) or 'down' (2x2 mean pool after)."""
    k = self.kernel_size
    kernel = self.param("kernel", kernel_init(self.weight_init),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    sigma = None
    if self.use_sn:
      sn = SpectralNorm(self.sn_eps, self.sn_init_iters, name="sn")
      if conv_tune.divides_output(self.conv_impl, x.shape, kernel.shape, resample):
        sigma = sn.sigma(kernel, update_sn)   # y = conv(x, W) / sigma: no W / sigma pass
      else:
        kernel = sn(kernel, update_sn)
    choose = functools.partial(conv_tune.resolve, self.conv_impl, dtype=self.dtype)
    y = resampling.resampled_conv(
        x.astype(self.dtype), kernel.astype(self.dtype), choose, resample,
        fuse=conv_tune.fuses_resampling(self.conv_impl, resample, x.shape))
    if sigma is not None:
      y = y / sigma.astype(self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class SNDense(nn.Module):
  """Spectrally normalised linear layer."""

  features: int
  use_bias: bool = True
  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  dtype: Dtype = jnp.float32
  use_sn: bool = True  # False: a plain linear layer

  @nn.compact
  def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
    kernel = self.param("kernel", kernel_init(self.weight_init),
                        (x.shape[-1], self.features), jnp.float32)
    if self.use_sn:
      kernel = SpectralNorm(self.sn_eps, self.sn_init_iters, name="sn")(kernel, update_sn)
    y = x.astype(self.dtype) @ kernel.astype(self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class SNEmbed(nn.Module):
  """Spectrally normalised class embedding (the projection D's `V`).

  Implemented as one_hot @ table so that it shards like a matmul
  (linen's nn.Embed gather is awkward with sharded labels).
  """

  num_embeddings: int
  features: int
  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  use_sn: bool = True  # False: a plain embedding table

  @nn.compact
  def __call__(self, labels: jax.Array, update_sn: bool) -> jax.Array:
    table = self.param("embedding", kernel_init(self.weight_init),
                       (self.num_embeddings, self.features), jnp.float32)
    if self.use_sn:
      table = SpectralNorm(self.sn_eps, self.sn_init_iters, transpose=True,
                           name="sn")(table, update_sn)
    return jax.nn.one_hot(labels, self.num_embeddings, dtype=jnp.float32) @ table


class BatchNorm(nn.Module):
  """Batch norm over the global batch, or over groups of `group_size` images.

  Under a sharded jit the batch axis spans all devices, so the default
  (group_size 0) is cross-replica BN. group_size = per-device batch
  reproduces the per-device statistics of PyTorch DataParallel codes.
  Statistics are computed in float32. Variables match flax's nn.BatchNorm:
  params scale/bias (when affine), batch_stats mean/var (biased variance,
  ra <- momentum * ra + (1 - momentum) * batch).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  affine: bool = True
  group_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.float32)
    if train:
      b = x.shape[0]
      g = self.group_size if self.group_size and self.group_size < b else b
      if b % g:
        raise ValueError(f"batch {b} is not divisible by bn_group_size {g}")
      grouped = xf.reshape((b // g, g) + x.shape[1:])
      axes = tuple(range(1, grouped.ndim - 1))
      mean = jnp.mean(grouped, axis=axes, keepdims=True)
      var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
      y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=(0,) + axes)
        ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=(0,) + axes)
    else:
      y = (xf - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    if self.affine:
      y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
      y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return y.astype(self.dtype)


class ConditionalBatchNorm(nn.Module):
  """Batch norm without affine, then per-class gain and bias from tables.

  gamma table initialised to 1, beta table to 0 (so the gain is 1 at
  init; no "+1" trick needed). No SN on the tables. With num_classes == 0
  it is an ordinary BN with a learned affine.
  """

  num_classes: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  group_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    c = x.shape[-1]
    bn = functools.partial(BatchNorm, self.momentum, self.epsilon, group_size=self.group_size,
                           dtype=self.dtype, name="bn")
    if self.num_classes == 0:
      return bn(affine=True)(x, train)
    x = bn(affine=False)(x, train)
    gamma = self.param("gamma", nn.initializers.ones, (self.num_classes, c), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (self.num_classes, c), jnp.float32)
    onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    g = (onehot @ gamma)[:, None, None, :].astype(self.dtype)
    b = (onehot @ beta)[:, None, None, :].astype(self.dtype)
    return x * g + b


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, of NHWC `x` (even H and W): the attention's phi and g.

  A max over the axes of a reshape, not `nn.max_pool`: the two windows do not overlap,
  so the values are the same, and the gradient of a max over axes is elementwise (the
  cotangent goes to the window's maximum), where a max `reduce_window`'s gradient is
  built from a variadic reduce_window that carries one int32 index array per dimension
  (four iotas of the input's size): 4-5x the time of this one for the attention's
  shapes (benchmarks/results/intel_2026-12-07_cpu.json). A tie within a window shares
  the gradient equally among the tied entries (`nn.max_pool` gives it to one); the
  attention's inputs are products of float weights, where ties do not occur in practice.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


avg_pool2 = resampling.avg_pool2
upsample2 = resampling.upsample2


class SelfAttention(nn.Module):
  """SAGAN self-attention block (Zhang et al. 2019, Sec. 3 / Fig. 2).

  theta = W_f x (C/8), phi = maxpool(W_g x) (C/8), g = maxpool(W_h x) (C/2);
  beta = softmax_j(theta_i . phi_j) over the N/4 pooled positions;
  o = W_v (beta g) (C/2 -> C); y = x + gamma * o, gamma a scalar init 0.
  The logits and softmax run in float32 (or inside a fused kernel, see
  `sagan_jax.models.attention`). The attention map beta is sown into the
  `intermediates` collection when that collection is mutable (then always
  computed explicitly).
  """

  weight_init: str = "glorot"
  sn_eps: float = 1e-12
  sn_init_iters: int = 10
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"
  attention_impl: str = "einsum"  # attention.IMPLS
  use_sn: bool = True  # False: plain 1x1 convs

  @nn.compact
  def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
    b, h, w, c = x.shape
    conv1x1 = lambda f, name: SNConv(  # noqa: E731
        f, 1, use_bias=False, weight_init=self.weight_init, sn_eps=self.sn_eps,
        sn_init_iters=self.sn_init_iters, dtype=self.dtype, conv_impl=self.conv_impl,
        use_sn=self.use_sn, name=name)
    theta = conv1x1(c // 8, "theta")(x, update_sn).reshape(b, h * w, c // 8)
    phi = max_pool2(conv1x1(c // 8, "phi")(x, update_sn)).reshape(b, h * w // 4, c // 8)
    g = max_pool2(conv1x1(c // 2, "g")(x, update_sn)).reshape(b, h * w // 4, c // 2)
    if self.is_mutable_collection("intermediates"):
      beta = attention.attention_map(theta, phi)
      self.sow("intermediates", "attention", beta)
      o = jnp.einsum("bnm,bmc->bnc", beta.astype(self.dtype), g)
    else:
      o = attention.attend(theta, phi, g, attention.resolve(self.attention_impl, self.dtype))
    o = conv1x1(c, "o")(o.reshape(b, h, w, c // 2), update_sn)
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    return x + gamma.astype(self.dtype) * o.astype(self.dtype)


def refresh_spectral(params, spectral, n_iters: int = 1, eps: float = 1e-12):
  """Power-iterates every SN layer's stored u against the kernel in `params`.

  Pure tree function (no forward pass, no data): the `spectral` collection
  mirrors the module tree, `.../<layer>/sn/{u, sigma}` pairing with
  `.../<layer>/{kernel | embedding}` in params. Used to keep the EMA
  generator's SN vectors tied to the EMA weights themselves.
  """

  def walk(p, s):
    out = {}
    for name, sub in s.items():
      if name == "sn":
        if "kernel" in p:
          w_mat = as_matrix(p["kernel"])
        else:
          w_mat = p["embedding"]
        u, _, sigma = power_iteration(w_mat, sub["u"], n_iters, eps)
        out[name] = {"u": u, "sigma": sigma}
      else:
        out[name] = walk(p[name], sub)
    return out

  return walk(params, spectral)
