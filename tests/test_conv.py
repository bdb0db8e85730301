"""Convolution implementations against lax.conv and numpy; 'auto' and 'tune' selection."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import config_base, errors, preflight
from sagan_jax.models import conv, conv_tune, layers, loops, resampling


def _numpy_conv(x, w):
  """'SAME' stride-1 cross-correlation, NHWC x HWIO, float64 loops over the taps."""
  k = w.shape[0]
  p = k // 2
  n, h, wd, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
  y = np.zeros((n, h, wd, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      y += xp[:, i:i + h, j:j + wd, :] @ w[i, j].astype(np.float64)
  return y


def _inputs(k, dtype=np.float32, shape=(3, 5, 7, 6), out=5, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(dtype)
  w = (rng.standard_normal((k, k, shape[-1], out)) * 0.3).astype(dtype)
  dy = rng.standard_normal(shape[:3] + (out,)).astype(dtype)
  return x, w, dy


def _value_and_grads(impl, x, w, dy):
  def f(x, w):
    y, vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, impl), x, w)
    return (y,) + vjp(dy)
  return [np.asarray(a, np.float64) for a in jax.jit(f)(x, w)]


@pytest.mark.parametrize("k", [1, 3])
def test_xla_reference_matches_numpy(k):
  x, w, _ = _inputs(k)
  np.testing.assert_allclose(np.asarray(conv.conv_xla(x, w)), _numpy_conv(x, w),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["im2col", "matmul", "shift", "blocked", "taps"])
@pytest.mark.parametrize("k", [1, 3])
def test_impl_matches_lax_conv_values_and_gradients(impl, k):
  # Odd sizes everywhere: batch 3, 5x7 maps, 6 -> 5 channels.
  x, w, dy = _inputs(k)
  ref = _value_and_grads("xla", x, w, dy)
  got = _value_and_grads(impl, x, w, dy)
  for name, a, b in zip(("y", "dx", "dw"), got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("impl", ["im2col", "matmul", "shift", "blocked", "taps"])
def test_impl_matches_lax_conv_in_bfloat16(impl):
  x, w, dy = _inputs(3, jnp.bfloat16, shape=(2, 6, 6, 16), out=8, seed=1)
  ref = _value_and_grads("xla", x, w, dy)
  got = _value_and_grads(impl, x, w, dy)
  for name, a, b in zip(("y", "dx", "dw"), got, ref):
    assert got[0].dtype == ref[0].dtype
    # bf16 keeps 8 bits: the sums may round differently, not more than a few ulps of the scale.
    np.testing.assert_allclose(a, b, atol=0.03 * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("rows", [None, 7])
def test_weight_gradients_agree(rows, monkeypatch):
  """rows=7: 'blocked' in many 7-row blocks and a shorter last one (a block ends mid-row)."""
  if rows:
    monkeypatch.setattr(conv, "block_rows", lambda *_: rows)
  x, w, dy = _inputs(3, shape=(2, 4, 9, 3), out=7)
  ref = np.asarray(conv.weight_grad(x, dy, w.shape, "xla"))
  for impl in ("im2col", "shift", "blocked"):
    np.testing.assert_allclose(np.asarray(conv.weight_grad(x, dy, w.shape, impl)), ref,
                               rtol=1e-5, atol=1e-5, err_msg=impl)
  # An even kernel with one-sided padding (the fused upsampling's phase convs), and one
  # without padding (the fused downsampling's 2x2 conv).
  w2 = w[:2, :2]
  for pad in (((1, 0), (0, 1)), ((0, 0), (0, 0))):
    dy2 = np.asarray(conv.conv2d(x, w2, "xla", pad))
    ref = np.asarray(conv.weight_grad(x, dy2, w2.shape, "xla", pad))
    for impl in ("im2col", "shift", "blocked"):
      np.testing.assert_allclose(np.asarray(conv.weight_grad(x, dy2, w2.shape, impl, pad)), ref,
                                 rtol=1e-5, atol=1e-4, err_msg=f"{impl} {pad}")


def test_blocked_weight_gradient_against_numpy_and_its_flop_count(monkeypatch):
  """'blocked' against a float64 numpy loop over the taps; counted inside `loops.unrolled()`
  its FLOPs are every block's (2 x rows x kh*kw*C x O, rows on the padded grid), in its
  loop only one block's."""
  monkeypatch.setattr(conv, "block_rows", lambda *_: 16)
  x, w, dy = _inputs(3, shape=(2, 5, 6, 4), out=3, seed=9)
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + 5, j:j + 6], dy)
                            for j in range(3)]) for i in range(3)])
  fn = lambda x, dy: conv.weight_grad(x, dy, w.shape, "blocked")  # noqa: E731
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(x, dy)), ref, rtol=1e-5, atol=1e-5)
  rows = 2 * 7 * 8 - (2 * 8 + 2)      # the padded grid's rows, less the last all-zero ones
  products = 2 * rows * 9 * 4 * 3
  def flops():   # a fresh function each time: a traced one keeps the loops it was traced with
    fresh = lambda x, dy: fn(x, dy)  # noqa: E731
    return jax.jit(fresh).lower(x, dy).compile().cost_analysis()["flops"]

  looped = flops()
  with loops.unrolled():
    counted = flops()
  assert products <= counted < 1.1 * products
  assert looped < products / 2


@pytest.mark.parametrize("impl", ["im2col", "matmul", "shift", "blocked", "auto"])
def test_sn_conv_gradients_match_xla_through_spectral_norm(impl):
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 8, 16)), jnp.float32)
  ref_mod = layers.SNConv(24, 3, conv_impl="xla")
  v = ref_mod.init(jax.random.PRNGKey(0), x, update_sn=False)

  def loss(params, mod):
    y, _ = mod.apply({**v, "params": params}, x, update_sn=True, mutable=["spectral"])
    return jnp.sum(jnp.sin(y))

  ref = jax.grad(loss)(v["params"], ref_mod)
  got = jax.grad(loss)(v["params"], layers.SNConv(24, 3, conv_impl=impl))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("resample", [None, "up", "down"])
def test_sn_conv_dividing_its_output_equals_dividing_its_kernel(resample, k):
  """Few pixels, a large kernel (conv_tune.divides_output): y = conv(x, W) / sigma, not
  conv(x, W / sigma). The same outputs, gradients (sigma's included) and SN state as the
  'xla' reference, and no kernel-sized division left in the program."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 2, 2, 80)), jnp.float32)
  assert conv_tune.divides_output("auto", x.shape, (k, k, 80, 16), resample)
  assert not conv_tune.divides_output("xla", x.shape, (k, k, 80, 16), resample)
  ref_mod, mod = layers.SNConv(16, k, conv_impl="xla"), layers.SNConv(16, k, conv_impl="auto")
  v = ref_mod.init(jax.random.PRNGKey(1), x, update_sn=False)

  def loss(params, x, m):
    y, state = m.apply({**v, "params": params}, x, update_sn=True, resample=resample,
                       mutable=["spectral"])
    return jnp.sum(jnp.sin(y)), (y, state)

  (_, (y_ref, s_ref)), g_ref = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      v["params"], x, ref_mod)
  (_, (y, s)), g = jax.value_and_grad(loss, (0, 1), has_aux=True)(v["params"], x, mod)
  for a, b in zip(jax.tree.leaves((y, g, s)), jax.tree.leaves((y_ref, g_ref, s_ref))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-5 * float(jnp.abs(b).max()))
  kernel = v["params"]["kernel"]
  for m, divided in ((ref_mod, True), (mod, False)):
    jaxpr = jax.make_jaxpr(lambda p: loss(p, x, m)[0])(v["params"]).jaxpr
    kernel_divs = [e for e in jaxpr.eqns if e.primitive.name == "div"
                   and e.outvars[0].aval.shape == kernel.shape]
    assert bool(kernel_divs) == divided


def test_divides_output_only_where_the_kernel_dwarfs_the_output_map():
  # the 128x128 model's deep layers (D at batch 16, G at batch 8)
  assert conv_tune.divides_output("auto", (16, 4, 4, 1024), (3, 3, 1024, 1024))
  assert conv_tune.divides_output("auto", (16, 8, 8, 1024), (3, 3, 1024, 1024), "down")
  assert conv_tune.divides_output("auto", (8, 4, 4, 1024), (3, 3, 1024, 1024), "up")
  assert conv_tune.divides_output("auto", (16, 8, 8, 512), (3, 3, 512, 1024))     # 4.5x
  assert conv_tune.divides_output("auto", (8, 4, 4, 1024), (1, 1, 1024, 1024), "up")  # 2x
  assert not conv_tune.divides_output("auto", (16, 32, 32, 256), (3, 3, 256, 256), "down")
  # the digits default and the 32x32 model: none (the digits' largest ratio is 1.1x)
  assert not conv_tune.divides_output("auto", (32, 4, 4, 64), (3, 3, 64, 64))
  assert not conv_tune.divides_output("auto", (64, 8, 8, 128), (3, 3, 128, 128))


@pytest.mark.parametrize("impl", conv.IMPLS)
@pytest.mark.parametrize("resample", ["up", "down"])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_resampling_equals_the_literal_form(impl, resample, k):
  # up: conv(upsample2(x)); down: avg_pool2(conv(x)); odd widths and channel counts.
  x, w, _ = _inputs(k, shape=(3, 6, 10, 5), out=7, seed=4)

  def run(fuse, choose):
    def f(x, w):
      return resampling.resampled_conv(x, w, choose, resample, fuse=fuse)
    y = f(x, w)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    return [np.asarray(a, np.float64) for a in (y,) + jax.vjp(f, x, w)[1](dy)]

  ref = run(False, lambda xs, ws: "xla")
  got = run(True, lambda xs, ws: impl)
  assert got[0].shape == ((3, 12, 20, 7) if resample == "up" else (3, 3, 5, 7))
  for name, a, b in zip(("y", "dx", "dw"), got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


# (dy shape, kernel, padding): odd and even kernels, the up-phase and down paddings
_FLIP_CASES = [((2, 3, 5, 24), (3, 3, 16, 24), ((1, 1), (1, 1))),
               ((3, 4, 2, 20), (3, 3, 12, 20), ((0, 2), (2, 0))),
               ((2, 3, 4, 24), (2, 2, 40, 24), ((0, 0), (0, 0))),      # fused down
               ((2, 4, 3, 24), (2, 2, 32, 24), ((1, 0), (0, 1))),      # an up phase
               ((1, 2, 2, 8), (3, 1, 32, 8), ((1, 1), (0, 0)))]


def _input_grad_inputs(dy_shape, w_shape, padding, seed):
  """x, w, dy (float32, standard normal) for an input-gradient case; x's shape follows from
  dy's, the kernel's and the padding."""
  rng = np.random.default_rng(seed)
  kh, kw, c, _ = w_shape
  (pt, pb), (pl, pr) = padding
  x_shape = (dy_shape[0], dy_shape[1] + kh - 1 - pt - pb, dy_shape[2] + kw - 1 - pl - pr, c)
  return [rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, dy_shape)]


def _numpy_input_grad(dy, w, padding, x_shape):
  """dx in float64: dx[n, r + i - pt, s + j - pl, c] += dy[n, r, s, :] . w[i, j, c, :]."""
  kh, kw = w.shape[:2]
  (pt, pb), (pl, pr) = padding
  dx = np.zeros((x_shape[0], x_shape[1] + pt + pb, x_shape[2] + pl + pr, x_shape[3]))
  for i in range(kh):
    for j in range(kw):
      dx[:, i:i + dy.shape[1], j:j + dy.shape[2]] += dy.astype(np.float64) @ w[i, j].T
  return dx[:, pt:pt + x_shape[1], pl:pl + x_shape[2]]


@pytest.mark.parametrize("dy_shape,w_shape,padding", _FLIP_CASES)
def test_input_grad_flipping_the_activations_equals_autodiff(dy_shape, w_shape, padding):
  """`conv.input_grad` where it flips dy and dx instead of the kernel (kernel larger than
  dy and dx): XLA's autodiff input gradient, for any kernel shape and padding."""
  assert conv._dx_flips_activations(dy_shape, w_shape)
  x, w, dy = _input_grad_inputs(dy_shape, w_shape, padding, seed=11)
  x_shape = x.shape
  ref = jax.vjp(lambda x_: conv.conv_xla(x_, w, padding), x)[1](dy)[0]
  got = jax.jit(conv.input_grad, static_argnums=(2, 3))(dy, w, padding, x_shape)
  assert got.shape == x_shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5,
                             atol=1e-5 * float(np.abs(ref).max()))
  # and through the layer: an implementation with input_grad against the reference
  y_ref = _value_and_grads("xla", x, w, dy) if padding == ((1, 1), (1, 1)) else None
  if y_ref is not None:
    for a, b in zip(_value_and_grads("xla_dw", x, w, dy), y_ref):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


# (x shape, kernel, padding) with a narrow x: D's RGB input layer, odd and even kernels
_NARROW_CASES = [((2, 6, 5, 3), (3, 3, 3, 16), ((1, 1), (1, 1))),
                 ((3, 5, 4, 1), (3, 3, 1, 9), ((0, 2), (2, 0))),
                 ((2, 6, 6, 7), (2, 2, 7, 12), ((0, 0), (0, 0))),
                 ((1, 4, 5, 3), (3, 1, 3, 10), ((1, 1), (0, 0)))]


@pytest.mark.parametrize("x_shape,w_shape,padding", _NARROW_CASES)
def test_input_grad_of_a_narrow_input_equals_autodiff(x_shape, w_shape, padding):
  """`conv.input_grad` where x has fewer than conv.NARROW channels ('taps' of dy with the
  flipped, transposed kernel): XLA's autodiff input gradient, and numpy's."""
  rng = np.random.default_rng(12)
  kh, kw = w_shape[:2]
  (pt, pb), (pl, pr) = padding
  dy_shape = (x_shape[0], x_shape[1] + pt + pb - kh + 1, x_shape[2] + pl + pr - kw + 1,
              w_shape[-1])
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  dy = rng.standard_normal(dy_shape).astype(np.float32)
  ref = jax.vjp(lambda x_: conv.conv_xla(x_, w, padding), x)[1](dy)[0]
  got = jax.jit(conv.input_grad, static_argnums=(2, 3))(dy, w, padding, x_shape)
  jaxpr = str(jax.make_jaxpr(conv.input_grad, static_argnums=(2, 3))(dy, w, padding, x_shape))
  assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr  # the matmul path
  for r in (ref, _numpy_input_grad(dy, w, padding, x_shape)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(r), rtol=1e-5,
                               atol=1e-5 * float(np.abs(r).max()))


# (dy shape, kernel, padding) with a kernel >= conv.KERNEL_FIRST times dy and dx together
_KERNEL_FIRST_CASES = [((2, 2, 3, 16), (3, 3, 32, 16), ((1, 1), (1, 1))),
                       ((1, 2, 2, 24), (2, 2, 64, 24), ((0, 0), (0, 0))),     # fused down
                       ((1, 3, 2, 16), (2, 2, 48, 16), ((1, 0), (0, 1))),     # an up phase
                       ((1, 1, 2, 8), (3, 1, 64, 8), ((2, 0), (0, 0)))]


@pytest.mark.parametrize("dy_shape,w_shape,padding", _KERNEL_FIRST_CASES)
def test_input_grad_kernel_first_equals_autodiff_and_numpy(dy_shape, w_shape, padding):
  """`conv.input_grad` where the kernel dwarfs dy and dx (one matmul with the kernel as
  stored, then shifted sums): XLA's autodiff input gradient and numpy's, in float32, and
  in bfloat16 to bfloat16 rounding."""
  assert conv._dx_kernel_first(dy_shape, w_shape)
  x, w, dy = _input_grad_inputs(dy_shape, w_shape, padding, seed=13)
  x_shape = x.shape
  grad = jax.jit(conv.input_grad, static_argnums=(2, 3))
  got = grad(dy, w, padding, x_shape)
  jaxpr = str(jax.make_jaxpr(conv.input_grad, static_argnums=(2, 3))(dy, w, padding, x_shape))
  assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr  # the matmul path
  ref = jax.vjp(lambda x_: conv.conv_xla(x_, w, padding), x)[1](dy)[0]
  ref_np = _numpy_input_grad(dy, w, padding, x_shape)
  assert got.shape == x_shape and got.dtype == jnp.float32
  for r in (ref, ref_np):
    np.testing.assert_allclose(np.asarray(got), np.asarray(r), rtol=1e-5,
                               atol=1e-5 * float(np.abs(r).max()))
  bf = grad(dy.astype(jnp.bfloat16), w.astype(jnp.bfloat16), padding, x_shape)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, np.float32), ref_np, rtol=0,
                             atol=0.03 * float(np.abs(ref_np).max()))
  # and through the layer: 'xla_dw' (its input gradient is input_grad's) against 'xla'
  if padding == ((1, 1), (1, 1)):
    for a, b in zip(_value_and_grads("xla_dw", x, w, dy), _value_and_grads("xla", x, w, dy)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_input_grad_keeps_autodiff_where_the_activations_are_larger():
  assert not conv._dx_flips_activations((64, 16, 16, 64), (3, 3, 64, 64))
  assert not conv._dx_flips_activations((16, 4, 4, 1024), (1, 1, 1024, 1024))  # no flip to move
  assert conv._dx_flips_activations((16, 4, 4, 1024), (3, 3, 1024, 1024))
  # kernel-first only where the kernel is >= 8x dy and dx: D's 4x4 1024-channel convs, not
  # its 8x8 512 -> 1024 one (slower that way: 42 -> 58 ms, jaxlib 0.10.2)
  assert conv._dx_kernel_first((16, 4, 4, 1024), (3, 3, 1024, 1024))
  assert not conv._dx_kernel_first((16, 8, 8, 1024), (3, 3, 512, 1024))
  assert not conv._dx_kernel_first((16, 4, 4, 1024), (1, 1, 1024, 1024))


@pytest.mark.parametrize("impl", ["xla_dw", "im2col", "shift", "blocked"])
def test_fused_down_with_a_large_kernel_equals_the_literal_form(impl):
  """Few pixels, many channels: the rewrite's input gradient flips the activations and uses
  the transposed kernel `_conv_down` builds itself (k2t), not the one input_grad would make."""
  x, w, _ = _inputs(3, shape=(1, 4, 6, 16), out=24, seed=6)
  assert conv._dx_flips_activations((1, 2, 3, 24), (2, 2, 64, 24))  # the rewrite's shapes

  def run(fuse, choose):
    def f(x, w):
      return resampling.resampled_conv(x, w, choose, "down", fuse=fuse)
    y = f(x, w)
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
    return [np.asarray(a, np.float64) for a in (y,) + jax.vjp(f, x, w)[1](dy)]

  ref = run(False, lambda xs, ws: "xla")
  got = run(True, lambda xs, ws: impl)
  for name, a, b in zip(("y", "dx", "dw"), got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


def test_pooled_kernel_is_the_box_filtered_kernel():
  """The down rewrite's 4x4 kernel against numpy: w (*) box/4, zero outside the 3x3."""
  w = np.random.default_rng(8).standard_normal((3, 3, 2, 5)).astype(np.float32)
  wp = np.pad(w.astype(np.float64), ((1, 1), (1, 1), (0, 0), (0, 0)))
  ref = sum(wp[i:i + 4, j:j + 4] for i in (0, 1) for j in (0, 1)) / 4
  np.testing.assert_allclose(np.asarray(resampling._pooled_kernel(w)), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["xla_dw", "im2col", "shift", "blocked"])
def test_fused_down_gradient_keeps_no_padded_copies_of_the_kernel(impl):
  """XLA's buffers for the fused down conv's gradients hold no padded [5, 5, C, O] copies
  of the kernel's gradient: the pooled kernel written as one pad then four slices made
  XLA:CPU keep them (17 such buffers in this program, temporaries 7.3-9.1x w's bytes at
  this shape, jaxlib 0.10.2 and 0.12.1; 173 MB more of the 128px benchmark step's
  temporaries on 0.10.2). As the sum of four pads: none, 4.2-6.0x; as a product over
  the taps (`resampling._pooled_kernel` now): none, 5.7-7.5x (the 128px step's temporaries
  the same to 0.2%)."""
  w = jnp.zeros((3, 3, 64, 64), jnp.float32)
  x = jnp.ones((2, 8, 8, 64), jnp.float32)

  def loss(w, x):
    return jnp.sum(resampling.resampled_conv(x, w, lambda xs, ws: impl, "down") ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile()
  assert "f32[5,5,64,64]" not in compiled.as_text()
  assert compiled.memory_analysis().temp_size_in_bytes < 8 * w.nbytes


def test_fused_down_builds_its_2x2_kernel_without_a_transposed_copy():
  """The down rewrite's [2, 2, 4C, O] kernel comes out of the product over the taps in its
  own order: XLA:CPU compiled the former 4x4 kernel's transpose into a copy per user (56 ms
  for D's 1024-channel kernel at 128x128). Forward only (the transposed kernel for the
  input gradient is the backward pass's)."""
  w = jnp.zeros((3, 3, 16, 24), jnp.float32)
  x = jnp.ones((2, 6, 6, 16), jnp.float32)
  y = jax.jit(lambda x, w: resampling.resampled_conv(x, w, lambda xs, ws: "xla_dw", "down"))
  hlo = y.lower(x, w).compile().as_text()
  kernel_transposes = [s for s in re.findall(r"= f32\[([\d,]+)\]\S* transpose\(", hlo)
                       if s.endswith("16,24")]
  assert not kernel_transposes
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(np.asarray(y(x, w + 1.0)), _numpy_conv(x64, np.ones(w.shape))
                             .reshape(2, 3, 2, 3, 2, 24).mean(axis=(2, 4)), rtol=1e-5)


def test_resampling_reference_matches_numpy():
  x, w, _ = _inputs(3, shape=(2, 4, 6, 3), out=4)
  up = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(np.asarray(resampling.resampled_conv(x, w, lambda *_: "xla", "up")),
                             _numpy_conv(up, w), rtol=1e-5, atol=1e-5)
  y = _numpy_conv(x, w)
  pooled = y.reshape(2, 2, 2, 3, 2, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(resampling.resampled_conv(x, w, lambda *_: "xla", "down")),
                             pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (1, 5, 7, 2)])
def test_avg_pool2_values_and_gradient_against_numpy(shape):
  """2x2 average pooling against numpy's block mean (an odd last row or column dropped, as
  `nn.avg_pool` does), and its gradient: a quarter of each window's cotangent on each of
  its four inputs, zero on a dropped row or column."""
  rng = np.random.default_rng(11)
  x = rng.standard_normal(shape).astype(np.float32)
  n, h, w, c = shape
  hh, wh = h // 2, w // 2
  ref = x[:, :2 * hh, :2 * wh].astype(np.float64).reshape(n, hh, 2, wh, 2, c).mean(axis=(2, 4))
  y, vjp = jax.vjp(resampling.avg_pool2, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6, atol=1e-7)
  dy = rng.standard_normal(ref.shape).astype(np.float32)
  want = np.zeros(shape)
  want[:, :2 * hh, :2 * wh] = np.repeat(np.repeat(dy / 4, 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), want, rtol=1e-6, atol=1e-7)


def _ynn_fused_convolutions(hlo: str) -> int:
  """How many convolutions of a compiled CPU program sit inside YNNPACK fusions."""
  bodies = dict(re.findall(r"\n%([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S))
  return sum(bodies.get(called, "").count(" convolution(") for called in re.findall(
      r'calls=%([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo))


def test_pooled_shortcut_keeps_the_conv_out_of_ynnpacks_fusions(monkeypatch):
  """D's downsampling block as the G update runs it (forward and input gradient, float32
  with the train step's XLA options): with its shortcut pooled by a `reduce_window`,
  XLA:CPU (jaxlib 0.10.2 and 0.12.1) put the block's fused conv+pool into a YNNPACK fusion
  with the reduction, where it ran at a third of XLA's speed; with `avg_pool2`'s slices
  it stays out. Skipped where even the reduce_window form fuses no convolution (another
  XLA, or no YNNPACK)."""
  from flax import linen as nn
  from sagan_jax import xla_flags
  rng = np.random.default_rng(12)
  x = jnp.asarray(rng.standard_normal((4, 16, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32) * 0.1
  wsc = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32) * 0.1

  dy = jnp.asarray(rng.standard_normal((4, 8, 8, 32)), jnp.float32)

  def program():
    def block(x):
      return (resampling.resampled_conv(jax.nn.relu(x), w, lambda xs, ws: "xla_dw", "down")
              + resampling.avg_pool2(x) @ wsc)

    def output_and_input_grad(x):   # the block's output (for the next block) and dx, no sum
      y, vjp = jax.vjp(block, x)
      return y, vjp(dy)[0]
    return jax.jit(output_and_input_grad, compiler_options=xla_flags.compiler_options(
        "float32")).lower(x).compile().as_text()

  now = _ynn_fused_convolutions(program())
  monkeypatch.setattr(resampling, "avg_pool2", lambda x: nn.avg_pool(x, (2, 2), (2, 2)))
  before = _ynn_fused_convolutions(program())
  if before == 0:
    pytest.skip("this XLA fuses no convolution into YNNPACK's reductions")
  assert now == 0


def test_unknown_impl_and_bad_kernel_are_refused():
  x, w, _ = _inputs(3)
  with pytest.raises(ValueError, match="unknown conv implementation"):
    conv.conv2d(x, w, "fft")
  with pytest.raises(ValueError, match="give the padding"):
    conv.conv2d(x, np.zeros((2, 2, 6, 5), np.float32), "xla")
  with pytest.raises(ValueError, match="resample"):
    resampling.resampled_conv(x, w, lambda *_: "xla", "sideways")


def test_config_rejects_unknown_conv_impl():
  c = config_base.base_config()
  c.model.conv_impl = "fast"
  with pytest.raises(errors.ConfigError, match="model.conv_impl"):
    preflight.check_config(c)


def test_auto_rule_on_cpu():
  r = lambda x, w: conv_tune.resolve("auto", x, w, np.float32)  # noqa: E731
  assert r((64, 16, 16, 64), (1, 1, 64, 64)) == "matmul"    # 1x1: a matmul
  assert r((64, 16, 16, 64), (3, 3, 64, 3)) == "taps"       # RGB output layer
  assert r((128, 16, 16, 3), (3, 3, 3, 64)) == "im2col"     # RGB input layer
  assert r((64, 16, 16, 64), (3, 3, 64, 64)) == "blocked"   # 16,384 pixels, 64 -> 64
  assert r((8, 128, 128, 64), (3, 3, 64, 64)) == "blocked"
  assert r((64, 32, 32, 32), (3, 3, 32, 32)) == "shift"     # 32 channels
  assert r((16, 64, 64, 128), (3, 3, 128, 128)) == "shift"  # more than 64 outputs
  assert r((8, 32, 32, 64), (3, 3, 64, 64)) == "shift"      # 8,192 pixels
  assert r((2, 8, 8, 64), (3, 3, 64, 64)) == "xla_dw"       # too few pixels to gain
  for impl in conv.IMPLS:
    assert conv_tune.resolve(impl, (1, 4, 4, 8), (3, 3, 8, 8), np.float32) == impl


def test_auto_keeps_small_downsampling_convs_literal():
  f = conv_tune.fuses_resampling
  assert not f("auto", "down", (8, 8, 8, 1024))      # 512 input pixels: literal
  assert f("auto", "down", (8, 16, 16, 512))         # 2,048: the rewrite
  assert f("tune", "down", (8, 16, 16, 512)) and not f("tune", "down", (2, 8, 8, 64))
  assert f("auto", "up", (8, 4, 4, 1024))            # upsampling: always the rewrite
  assert f("shift", "down", (1, 4, 4, 8))            # an implementation asked for: as asked
  assert not f("xla", "up", (8, 64, 64, 64))         # the reference never rewrites


@pytest.fixture
def tune_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("SAGAN_JAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(conv_tune, "_choices", {})
  monkeypatch.setattr(conv_tune, "_disk_loaded", False)
  return tmp_path / "conv_impl.json"


def test_tune_times_once_and_keeps_the_choice_on_disk(tune_cache, monkeypatch):
  shape, kernel = (8, 8, 8, 32), (3, 3, 32, 32)  # 9.4 MFLOP: above the timing floor
  calls = []
  real = conv_tune.time_candidates

  def counting(*args, **kwargs):
    calls.append(args)
    return real(*args, rounds=1, **kwargs)

  monkeypatch.setattr(conv_tune, "time_candidates", counting)
  first = conv_tune.resolve("tune", shape, kernel, np.float32)
  assert first in conv_tune.CANDIDATES and len(calls) == 1
  saved = json.loads(tune_cache.read_text())
  assert list(saved.values()) == [first]
  assert "x 8x8x8x32|w 3x3x32x32|float32" in next(iter(saved))
  # The same shape again, in this process or in a new one (memory cleared): no timing.
  assert conv_tune.resolve("tune", shape, kernel, np.float32) == first
  monkeypatch.setattr(conv_tune, "_choices", {})
  monkeypatch.setattr(conv_tune, "_disk_loaded", False)
  assert conv_tune.resolve("tune", shape, kernel, np.float32) == first
  assert len(calls) == 1


def test_tune_inside_a_jitted_trace(tune_cache):
  x = jnp.ones((8, 8, 8, 32))
  mod = layers.SNConv(32, 3, conv_impl="tune")
  v = mod.init(jax.random.PRNGKey(0), x[:1], update_sn=False)
  y = jax.jit(lambda v, x: mod.apply(v, x, update_sn=False))(v, x)
  ref = layers.SNConv(32, 3, conv_impl="xla").apply(v, x, update_sn=False)
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert tune_cache.exists()


def test_tune_uses_the_rule_for_tiny_shapes(tune_cache):
  assert conv_tune.resolve("tune", (2, 4, 4, 8), (3, 3, 8, 8), np.float32) == "xla_dw"
  assert not tune_cache.exists()


def test_pick_keeps_xla_unless_clearly_beaten():
  assert conv_tune._pick({"xla_dw": 1.0, "im2col": 0.95, "shift": 0.97}) == "xla_dw"
  assert conv_tune._pick({"xla_dw": 1.0, "im2col": 0.5, "shift": 0.6}) == "im2col"
