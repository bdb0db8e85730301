"""Layers against independent numpy references (SVD, plain attention, plain BN)."""

import re

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import losses
from sagan_jax.models import attention, layers


def _svd_sigma(kernel):
  mat = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
  return np.linalg.svd(mat, compute_uv=False)[0]


@pytest.mark.parametrize("module,x_shape,kernel_name", [
    (layers.SNConv(24, 3), (2, 6, 6, 5), "kernel"),
    (layers.SNConv(16, 1, use_bias=False), (2, 4, 4, 32), "kernel"),
    (layers.SNDense(40), (3, 17), "kernel"),
])
def test_sigma_matches_svd_after_power_iterations(module, x_shape, kernel_name):
  mod = module.clone(sn_init_iters=0)
  x = jnp.ones(x_shape)
  v = mod.init(jax.random.PRNGKey(0), x, update_sn=False)
  # 200 training calls = 200 power iterations from a random u.
  spectral = v["spectral"]
  for _ in range(200):
    _, new = mod.apply({**v, "spectral": spectral}, x, update_sn=True, mutable=["spectral"])
    spectral = new["spectral"]
  sigma = float(spectral["sn"]["sigma"])
  ref = _svd_sigma(v["params"][kernel_name])
  np.testing.assert_allclose(sigma, ref, rtol=1e-4)
  # The effective kernel then has spectral norm 1.
  w = np.asarray(v["params"][kernel_name]) / sigma
  np.testing.assert_allclose(_svd_sigma(w), 1.0, rtol=1e-4)


def test_init_warmup_makes_step0_sigma_accurate():
  mod = layers.SNDense(64, sn_init_iters=30)
  v = mod.init(jax.random.PRNGKey(3), jnp.ones((2, 64)), update_sn=False)
  np.testing.assert_allclose(float(v["spectral"]["sn"]["sigma"]),
                             _svd_sigma(v["params"]["kernel"]), rtol=1e-3)


def test_embedding_sigma_matches_svd():
  mod = layers.SNEmbed(10, 48, sn_init_iters=100)
  v = mod.init(jax.random.PRNGKey(1), jnp.arange(4), update_sn=False)
  table = np.asarray(v["params"]["embedding"], np.float64)
  ref = np.linalg.svd(table, compute_uv=False)[0]
  np.testing.assert_allclose(float(v["spectral"]["sn"]["sigma"]), ref, rtol=1e-4)
  out = mod.apply(v, jnp.array([2, 7]), update_sn=False)
  np.testing.assert_allclose(np.asarray(out), table[[2, 7]] / float(v["spectral"]["sn"]["sigma"]),
                             rtol=1e-5, atol=1e-6)


def test_sn_state_changes_only_in_training_calls():
  mod = layers.SNConv(8, 3, sn_init_iters=0)
  x = jnp.ones((1, 4, 4, 3))
  v = mod.init(jax.random.PRNGKey(0), x, update_sn=False)
  _, frozen = mod.apply(v, x, update_sn=False, mutable=["spectral"])
  np.testing.assert_array_equal(frozen["spectral"]["sn"]["u"], v["spectral"]["sn"]["u"])
  _, moved = mod.apply(v, x, update_sn=True, mutable=["spectral"])
  assert not np.allclose(moved["spectral"]["sn"]["u"], v["spectral"]["sn"]["u"])


def test_power_iteration_gradient_flows_through_w_only():
  # d sigma / dW = u v^T (u, v held constant), as in torch's spectral_norm.
  w = jax.random.normal(jax.random.PRNGKey(0), (5, 7))
  u0 = jax.random.normal(jax.random.PRNGKey(1), (5,))
  u, v, _ = layers.power_iteration(w, u0, 50, 1e-12)
  g = jax.grad(lambda w: layers.power_iteration(w, u0, 50, 1e-12)[2])(w)
  np.testing.assert_allclose(np.asarray(g), np.outer(u, v), atol=1e-5)


def test_refresh_spectral_matches_module_update():
  mod = layers.SNConv(6, 3, sn_init_iters=0)
  x = jnp.ones((1, 4, 4, 3))
  v = mod.init(jax.random.PRNGKey(2), x, update_sn=False)
  _, new = mod.apply(v, x, update_sn=True, mutable=["spectral"])
  refreshed = layers.refresh_spectral(v["params"], v["spectral"], 1)
  np.testing.assert_allclose(refreshed["sn"]["u"], new["spectral"]["sn"]["u"], rtol=1e-6)
  np.testing.assert_allclose(refreshed["sn"]["sigma"], new["spectral"]["sn"]["sigma"], rtol=1e-6)


def _np_conv1x1(x, k):
  return np.einsum("bhwc,cd->bhwd", x, k[0, 0])


def _np_maxpool2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def test_self_attention_matches_numpy():
  b, h, w, c = 2, 8, 8, 16
  x = np.random.default_rng(0).normal(size=(b, h, w, c)).astype(np.float32)
  mod = layers.SelfAttention(sn_init_iters=300)
  v = mod.init(jax.random.PRNGKey(0), jnp.asarray(x), update_sn=False)
  params = jax.tree.map(np.asarray, v["params"])
  params["gamma"] = np.float32(0.7)
  y = np.asarray(mod.apply({**v, "params": params}, jnp.asarray(x), update_sn=False))

  def k(name):  # the SN-normalised kernel, sigma from an SVD
    kern = params[name]["kernel"].astype(np.float64)
    return kern / _svd_sigma(kern)

  xd = x.astype(np.float64)
  theta = _np_conv1x1(xd, k("theta")).reshape(b, h * w, c // 8)
  phi = _np_maxpool2(_np_conv1x1(xd, k("phi"))).reshape(b, h * w // 4, c // 8)
  g = _np_maxpool2(_np_conv1x1(xd, k("g"))).reshape(b, h * w // 4, c // 2)
  logits = np.einsum("bnc,bmc->bnm", theta, phi)
  beta = np.exp(logits - logits.max(-1, keepdims=True))
  beta /= beta.sum(-1, keepdims=True)
  o = np.einsum("bnm,bmc->bnc", beta, g).reshape(b, h, w, c // 2)
  ref = xd + 0.7 * _np_conv1x1(o, k("o"))
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_self_attention_starts_as_identity_and_sows_map():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 16))
  mod = layers.SelfAttention()
  v = mod.init(jax.random.PRNGKey(1), x, update_sn=False)
  y, inter = mod.apply(v, x, update_sn=False, mutable=["intermediates"])
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))  # gamma = 0 at init
  att = inter["intermediates"]["attention"][0]
  assert att.shape == (1, 64, 16)  # N queries x N/4 pooled keys
  np.testing.assert_allclose(np.asarray(att).sum(-1), 1.0, rtol=1e-5)


def test_conditional_batch_norm_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=(6, 4, 4, 5)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  mod = layers.ConditionalBatchNorm(num_classes=3, epsilon=1e-5)
  v = mod.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(y), train=False)
  # Tables init to gamma 1, beta 0: plain normalisation at init.
  np.testing.assert_array_equal(v["params"]["gamma"], np.ones((3, 5)))
  np.testing.assert_array_equal(v["params"]["beta"], np.zeros((3, 5)))
  gamma = rng.normal(size=(3, 5)).astype(np.float32)
  beta = rng.normal(size=(3, 5)).astype(np.float32)
  out, new = mod.apply({**v, "params": {"gamma": gamma, "beta": beta}}, jnp.asarray(x),
                       jnp.asarray(y), train=True, mutable=["batch_stats"])
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  ref = (x - mean) / np.sqrt(var + 1e-5) * gamma[y][:, None, None] + beta[y][:, None, None]
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
  # Running statistics move towards the batch statistics (momentum 0.9).
  np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
  # Eval mode uses the running statistics instead.
  out_eval = mod.apply({"params": {"gamma": gamma, "beta": beta}, **new}, jnp.asarray(x),
                       jnp.asarray(y), train=False)
  rm, rv = np.asarray(new["batch_stats"]["bn"]["mean"]), np.asarray(new["batch_stats"]["bn"]["var"])
  ref_eval = (x - rm) / np.sqrt(rv + 1e-5) * gamma[y][:, None, None] + beta[y][:, None, None]
  np.testing.assert_allclose(np.asarray(out_eval), ref_eval, rtol=1e-4, atol=1e-4)


def test_hinge_losses_match_definition():
  rng = np.random.default_rng(0)
  d_real, d_fake = rng.normal(size=50), rng.normal(size=50)
  ref_d = np.mean(np.maximum(0, 1 - d_real)) + np.mean(np.maximum(0, 1 + d_fake))
  np.testing.assert_allclose(float(losses.hinge_d(jnp.asarray(d_real), jnp.asarray(d_fake))),
                             ref_d, rtol=1e-6)
  np.testing.assert_allclose(float(losses.hinge_g(jnp.asarray(d_fake))), -np.mean(d_fake),
                             rtol=1e-6)
  # Confident, correct D: zero loss.
  assert float(losses.hinge_d(jnp.full(4, 2.0), jnp.full(4, -2.0))) == 0.0


def test_upsample_and_pools():
  x = jnp.arange(16.0).reshape(1, 2, 2, 4)
  up = layers.upsample2(x)
  assert up.shape == (1, 4, 4, 4)
  np.testing.assert_array_equal(up[0, :2, :2, 0], np.full((2, 2), float(x[0, 0, 0, 0])))
  np.testing.assert_array_equal(layers.avg_pool2(up), x)
  np.testing.assert_array_equal(layers.max_pool2(up), x)


def test_max_pool2_gradient_goes_to_each_windows_maximum():
  # numpy reference: the window maximum, and a cotangent routed to its position.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 4, 5)).astype(np.float32)
  t = rng.normal(size=(2, 3, 2, 5)).astype(np.float32)
  windows = x.reshape(2, 3, 2, 2, 2, 5).transpose(0, 1, 3, 5, 2, 4).reshape(2, 3, 2, 5, 4)
  ref_y = windows.max(-1)
  onehot = windows == ref_y[..., None]
  ref_dx = (onehot * t[..., None]).reshape(2, 3, 2, 5, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  ref_dx = ref_dx.reshape(x.shape)
  y, vjp = jax.vjp(layers.max_pool2, jnp.asarray(x))
  np.testing.assert_array_equal(y, ref_y)
  np.testing.assert_array_equal(vjp(jnp.asarray(t))[0], ref_dx)
  # Flax's reduce_window pooling agrees (values and gradient) where no window has a tie.
  y2, vjp2 = jax.vjp(lambda v: flax.linen.max_pool(v, (2, 2), (2, 2)), jnp.asarray(x))
  np.testing.assert_array_equal(y, y2)
  np.testing.assert_array_equal(vjp(jnp.asarray(t))[0], vjp2(jnp.asarray(t))[0])
  # A tie shares the cotangent equally.
  tied = jnp.asarray([[[[1.0], [1.0]], [[0.0], [-2.0]]]])
  np.testing.assert_array_equal(
      jax.grad(lambda v: layers.max_pool2(v).sum())(tied)[0, :, :, 0], [[0.5, 0.5], [0, 0]])

def test_batch_norm_groups_normalise_each_group_separately():
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(0, 1, (2, 3, 3, 4)), rng.normal(5, 2, (2, 3, 3, 4))]).astype(
      np.float32)
  grouped = layers.BatchNorm(group_size=2, affine=False)
  whole = layers.BatchNorm(affine=False)
  v = whole.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
  y_g, st = grouped.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])
  y_w, _ = whole.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats"])

  def norm(a):
    return (a - a.mean(axis=(0, 1, 2))) / np.sqrt(a.var(axis=(0, 1, 2)) + 1e-5)

  np.testing.assert_allclose(np.asarray(y_g), np.concatenate([norm(x[:2]), norm(x[2:])]),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(y_w), norm(x), rtol=1e-4, atol=1e-4)
  # Running mean: the average of the group means.
  group_mean = (x[:2].mean(axis=(0, 1, 2)) + x[2:].mean(axis=(0, 1, 2))) / 2
  np.testing.assert_allclose(st["batch_stats"]["mean"], 0.1 * group_mean, rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_attention_with_padded_queries_equals_einsum(dtype):
  # SAGAN's shapes: queries/keys C/8 wide, values C/2, N/4 keys; unscaled logits.
  rng = np.random.default_rng(3)
  theta, phi, g = (jnp.asarray(rng.standard_normal(s), dtype)
                   for s in ((2, 64, 4), (2, 16, 4), (2, 16, 16)))
  ref = attention.attend(theta, phi, g, "einsum")
  got = attention.attend(theta, phi, g, "xla")
  assert got.shape == ref.shape == (2, 64, 16) and got.dtype == ref.dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                             rtol=tol, atol=tol)


def test_self_attention_fused_path_matches_in_values_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 32))
  mod = layers.SelfAttention(attention_impl="einsum")
  v = mod.init(jax.random.PRNGKey(1), x, update_sn=False)
  params = {**v["params"], "gamma": jnp.float32(0.5)}

  def loss(params, x, impl):
    y = mod.clone(attention_impl=impl).apply({**v, "params": params}, x, update_sn=False)
    return jnp.sum(jnp.sin(y)), y

  (_, y_ref), g_ref = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, "einsum")
  (_, y_got), g_got = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, "xla")
  np.testing.assert_allclose(np.asarray(y_got), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_attention_auto_is_einsum_on_cpu_and_unknown_impl_refused():
  assert attention.resolve("auto", jnp.bfloat16) == "einsum"   # no fused CPU kernel
  assert attention.resolve("xla", jnp.float32) == "xla"
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.attend(jnp.ones((1, 4, 2)), jnp.ones((1, 1, 2)), jnp.ones((1, 1, 4)), "flash")


@pytest.mark.parametrize("backward", attention.BACKWARDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_in_query_chunks_equals_all_at_once_in_values_and_gradients(backward, dtype):
  """Both backward passes of the chunked attention (autodiff of the recomputed chunk, and the
  written one with its rowsum(do * o) identity) against one chunk of plain einsums, whose
  gradients are autodiff's of the softmax as written; in bfloat16 against float32."""
  rng = np.random.default_rng(4)
  theta, phi, g = (jnp.asarray(rng.standard_normal(s) * 1.5, jnp.float32)
                   for s in ((2, 64, 4), (2, 16, 4), (2, 16, 8)))

  def loss(args, rows, backward):
    # 'written' runs a pass nothing differentiates in chunks of its own (here 32 queries)
    o = attention.attend_in_chunks(*args, rows=rows, backward=backward, forward_rows=32)
    return jnp.sum(jnp.sin(o.astype(jnp.float32)))

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))
  ref = grad((theta, phi, g), 64, backward)    # one chunk: the plain einsums
  args = jax.tree.map(lambda a: a.astype(dtype), (theta, phi, g))
  got = grad(args, 16, backward)               # four chunks in a loop
  value = jax.jit(loss, static_argnums=(1, 2))(args, 16, backward)   # no gradient: 2 chunks
  tol = 1e-5 if dtype == jnp.float32 else 0.05
  for a, b in zip(jax.tree.leaves(got) + [value], jax.tree.leaves(ref) + [ref[0]]):
    assert a.dtype == (jnp.float32 if a.ndim == 0 else dtype)
    b = np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol,
                               atol=tol * np.abs(b).max())


def test_written_attention_chunks_a_pass_nothing_differentiates_on_its_own():
  """'written': forward_rows queries per chunk where nothing differentiates the pass (G's
  forward pass in the D update), rows per chunk in the differentiated forward and backward
  passes (the loops' lengths in the traced programs)."""
  t, p, g = jnp.ones((2, 64, 4)), jnp.ones((2, 16, 4)), jnp.ones((2, 16, 8))

  def f(t, p, g):
    return attention.attend_in_chunks(t, p, g, rows=16, backward="written",
                                      forward_rows=32).sum()

  assert re.findall(r"length=\d+", str(jax.make_jaxpr(f)(t, p, g))) == ["length=2"]
  assert re.findall(r"length=\d+", str(jax.make_jaxpr(jax.grad(f))(t, p, g))) == ["length=4"] * 2


def test_attention_chunk_backward_follows_jaxlib(monkeypatch):
  from sagan_jax import xla_flags
  for version, want in (("0.10.2", "written"), ("0.11.2", "autodiff"), ("0.12.1", "autodiff"),
                        (None, "autodiff")):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda v=version: v)
    assert attention.chunk_backward() == want
  with pytest.raises(ValueError, match="unknown backward"):
    attention.attend_in_chunks(jnp.ones((1, 4, 2)), jnp.ones((1, 4, 2)), jnp.ones((1, 4, 2)),
                               backward="flash")


def test_loops_unrolled_gives_the_same_values_and_counts_every_piece():
  """models/loops.py: `map` is lax.map, or a Python loop inside `unrolled()` (same values);
  XLA's cost analysis counts a lax.map body once, the unrolled trace every iteration,
  which is what describe.counted_flops reports."""
  from sagan_jax import describe
  from sagan_jax.models import loops
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((4, 32, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((16, 24)), jnp.float32)

  def fresh():   # a new function each time: a traced one keeps the loops it was traced with
    return jax.jit(lambda x, w: loops.map(lambda r: r @ w, x))

  looped = fresh()(x, w)
  with loops.unrolled():
    unrolled = fresh()(x, w)
  np.testing.assert_allclose(np.asarray(unrolled), np.asarray(looped), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(looped), np.einsum("nij,jk->nik", x, w), atol=1e-5)
  one_matmul = 2 * 32 * 16 * 24
  counted = describe.counted_flops(lambda: fresh().lower(x, w))
  assert counted == pytest.approx(4 * one_matmul, rel=0.01)
  cost = fresh().lower(x, w).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] < 2 * one_matmul   # the looped program: one body's worth


def test_loops_map_takes_and_returns_pytrees_both_ways():
  from sagan_jax.models import loops
  xs = (jnp.arange(12.0).reshape(3, 4), jnp.arange(3.0))

  def f(args):
    row, k = args
    return row * k, jnp.sum(row)

  def fresh():
    return jax.jit(lambda xs: loops.map(f, xs))

  looped = fresh()(xs)
  with loops.unrolled():
    unrolled = fresh()(xs)
  want = (np.arange(12.0).reshape(3, 4) * np.arange(3.0)[:, None],
          np.arange(12.0).reshape(3, 4).sum(1))
  for got in (looped, unrolled):
    for a, b in zip(got, want):
      np.testing.assert_allclose(np.asarray(a), b)


def test_counted_flops_falls_back_to_the_compiled_program():
  """Where the backend has no cost analysis before compiling (jax 0.11's GPU backend returns
  None), counted_flops asks the compiled program: the one given, else lower()'s compile."""
  from sagan_jax import describe
  x = jnp.ones((8, 16), jnp.float32)
  w = jnp.ones((16, 24), jnp.float32)
  lowered = jax.jit(lambda x, w: x @ w).lower(x, w)

  class NoPreCompileAnalysis:   # a Lowered as the GPU backend gives it
    def __init__(self):
      self.compiles = 0

    def cost_analysis(self):
      return None

    def compile(self):
      self.compiles += 1
      return lowered.compile()

  fake = NoPreCompileAnalysis()
  assert describe.counted_flops(lambda: fake) == pytest.approx(2 * 8 * 16 * 24, rel=0.01)
  assert fake.compiles == 1
  given = describe.counted_flops(lambda: fake, lowered.compile())
  assert given == pytest.approx(2 * 8 * 16 * 24, rel=0.01) and fake.compiles == 1


def test_counted_flops_of_a_sharded_program_is_the_whole_program():
  """Over a mesh, XLA's count before compiling is the global program's and the compiled
  program's one device's share: counted_flops gives the global count either way (the
  benchmark used to multiply the first by the device count as well, doubling the 32px
  step's GFLOP/s on a 2-device CPU split)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from sagan_jax import describe
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  x = jax.device_put(jnp.ones((64, 16), jnp.float32), NamedSharding(mesh, P("data")))
  w = jax.device_put(jnp.ones((16, 24), jnp.float32), NamedSharding(mesh, P()))
  whole = 2 * 64 * 16 * 24

  def lower():
    return jax.jit(lambda x, w: x @ w).lower(x, w)

  assert describe.counted_flops(lower, devices=2) == pytest.approx(whole, rel=0.01)

  class NoPreCompileAnalysis:   # as the GPU backend gives it: only the compiled count
    def cost_analysis(self):
      return None

    def compile(self):
      return lower().compile()

  share = NoPreCompileAnalysis().compile().cost_analysis()
  share = share[0] if isinstance(share, (list, tuple)) else share
  assert share["flops"] == pytest.approx(whole / 2, rel=0.01)   # what the fallback reads
  assert describe.counted_flops(NoPreCompileAnalysis, devices=2) == pytest.approx(whole, rel=0.01)
