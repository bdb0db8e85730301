"""bfloat16 compute vs float32: same answers to bf16 accuracy, fp32 state.

bf16 activations/matmuls with float32 parameters and optimiser state; the
SN power iteration and the attention softmax stay in float32
(docs/architecture.md, "Precision"). With the same seed the two modes start from identical states, so
their forward passes and first train step differ only by rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import images, parallel, train
from sagan_jax import state as state_lib
from tests.conftest import load_config, step_batch


def _config(dtype: str):
  return load_config("tiny", model__dtype=dtype)


@pytest.fixture(scope="module")
def setup():
  """Initial states, one train step and forward passes in both modes."""
  mesh = parallel.make_mesh(1)
  out = {}
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype)
    models = state_lib.make_models(config)
    state = state_lib.create_state(models, config, mesh)
    init = jax.device_get(state)
    m = config.model
    z = jax.random.normal(jax.random.PRNGKey(3), (16, m.z_dim), jnp.float32)
    y = jnp.arange(16, dtype=jnp.int32) % m.num_classes
    # jitted, as training runs them (and one compile each: op-by-op dispatch of the whole
    # model is slower on CPU). jaxlib 0.12's CPU backend gave NaN logits here in bfloat16
    # until sagan_jax/xla_flags.py turned its YNN reduce fusion off.
    fake = jax.jit(functools.partial(models.generator.apply, train=False))(state.g, z, y)
    batch = step_batch(config)
    real = images.normalize(jnp.asarray(batch["image"][0]))
    d_out = jax.jit(functools.partial(models.discriminator.apply, update_sn=False))(
        state.d, real, jnp.asarray(batch["label"][0]))
    step_fn = train.make_train_step(models, config, mesh)
    rng = jax.device_put(np.asarray(jax.random.PRNGKey(7)), parallel.replicated(mesh))
    state1, metrics = step_fn(state, parallel.global_batch(batch, mesh, 1), rng)
    out[dtype] = {"init": init, "fake": np.asarray(fake), "d_out": np.asarray(d_out),
                  "state1": jax.device_get(state1), "metrics": jax.device_get(metrics)}
  return out


def test_same_seed_gives_identical_initial_state(setup):
  a, b = setup["float32"]["init"], setup["bfloat16"]["init"]
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def test_generator_outputs_agree_to_bf16_accuracy(setup):
  f32, b16 = setup["float32"]["fake"], setup["bfloat16"]["fake"]
  assert f32.dtype == b16.dtype == np.float32  # G's tanh output is float32 either way
  assert np.all(np.isfinite(b16)) and np.abs(b16).max() <= 1.0
  diff = np.abs(f32 - b16)
  assert diff.max() < 0.05, diff.max()
  assert diff.mean() < 0.01, diff.mean()
  assert not np.array_equal(f32, b16)  # bf16 really ran


def test_discriminator_outputs_agree_relatively(setup):
  f32, b16 = setup["float32"]["d_out"], setup["bfloat16"]["d_out"]
  assert f32.dtype == b16.dtype == np.float32  # D's logits are float32 either way
  rel = np.linalg.norm(b16 - f32) / np.linalg.norm(f32)
  assert rel < 2e-2, rel
  np.testing.assert_allclose(b16, f32, rtol=5e-2, atol=2e-2 * np.abs(f32).max())
  assert not np.array_equal(f32, b16)


def test_one_train_step_losses_agree(setup):
  m32, m16 = setup["float32"]["metrics"], setup["bfloat16"]["metrics"]
  for k in ("d_loss", "g_loss", "d_real", "d_fake"):
    assert np.isfinite(m16[k]), k
  for k in ("d_loss", "g_loss"):
    np.testing.assert_allclose(m16[k], m32[k], rtol=2e-2, atol=1e-3, err_msg=k)
  for k in ("d_real", "d_fake"):
    np.testing.assert_allclose(m16[k], m32[k], rtol=2e-2,
                               atol=2e-2 * max(abs(m32["d_real"]), abs(m32["d_fake"])),
                               err_msg=k)
  # sigma is computed in float32 from the same float32 weights.
  for k in ("d_sigma_mean", "d_sigma_max", "g_sigma_mean"):
    np.testing.assert_allclose(m16[k], m32[k], rtol=1e-4, err_msg=k)


def _float_leaves(tree):
  return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if jnp.issubdtype(np.asarray(v).dtype, jnp.floating)]


@pytest.mark.parametrize("when", ["init", "state1"])
def test_bf16_state_stays_float32(setup, when):
  state = setup["bfloat16"][when]
  floats = _float_leaves(state)
  assert floats
  bad = [(name, v.dtype) for name, v in floats if v.dtype != np.float32]
  assert not bad, bad
  # Optimiser moments (mu, nu) and the EMA copy are float32 and shaped like the params.
  for opt, params in ((state.opt["g"], state.g["params"]), (state.opt["d"], state.d["params"])):
    n_params = len(jax.tree.leaves(params))
    opt_floats = _float_leaves(opt)
    assert len(opt_floats) == 2 * n_params  # Adam: mu and nu per parameter
    assert all(v.dtype == np.float32 for _, v in opt_floats)
  assert all(v.dtype == np.float32 for _, v in _float_leaves(state.ema["params"]))
  # Spectral-norm state: u vectors and sigmas, float32, in G, D and the EMA copy.
  for spectral in (state.g["spectral"], state.d["spectral"], state.ema["spectral"]):
    leaves = jax.tree_util.tree_flatten_with_path(spectral)[0]
    names = {getattr(p[-1], "key", None) for p, _ in leaves}
    assert names == {"u", "sigma"}, names
    for p, v in leaves:
      assert v.dtype == np.float32, (jax.tree_util.keystr(p), v.dtype)
      assert np.all(np.isfinite(v))


def test_bf16_step_advances_the_state(setup):
  before, after = setup["bfloat16"]["init"], setup["bfloat16"]["state1"]
  assert int(after.step) == 1
  for net, coll in (("g", "params"), ("d", "params"), ("d", "spectral"), ("g", "spectral")):
    a, b = getattr(before, net)[coll], getattr(after, net)[coll]
    assert any(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b))), (net, coll)
