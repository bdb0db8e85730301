"""The paper's ablation switches (model.g_sn/d_sn, g_residual/d_residual) and config variants."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import checkpointing, config_base, experiments, parallel, preflight, train
from sagan_jax import state as state_lib
from sagan_jax.models import layers
from tests.conftest import ROOT, load_config


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


@pytest.mark.parametrize("who", ["g", "d"])
def test_sn_off_leaves_no_spectral_entries_and_the_same_params(who):
  default = state_lib.abstract_state(load_config("tiny"))[1]
  off = state_lib.abstract_state(load_config("tiny", **{f"model__{who}_sn": False}))[1]
  other = "d" if who == "g" else "g"
  assert getattr(off, who)["spectral"] == {}
  if who == "g":
    assert off.ema["spectral"] == {}
  assert _count(getattr(off, other)["spectral"]) > 0      # the other network keeps SN
  assert _count(getattr(default, who)["spectral"]) > 0
  # Only the spectral collection differs: the trainable parameters are the same.
  assert _shapes(getattr(off, who)["params"]) == _shapes(getattr(default, who)["params"])


def test_plain_layers_compute_the_plain_maps():
  rng = np.random.RandomState(0)
  x = rng.randn(3, 5).astype(np.float32)
  dense = layers.SNDense(4, use_sn=False)
  v = dense.init(jax.random.PRNGKey(0), jnp.asarray(x), True)
  assert "spectral" not in v
  w, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
  np.testing.assert_allclose(np.asarray(dense.apply(v, jnp.asarray(x), True)), x @ w + b,
                             rtol=1e-5, atol=1e-6)
  embed = layers.SNEmbed(6, 4, use_sn=False)
  labels = np.array([0, 5, 2])
  v = embed.init(jax.random.PRNGKey(1), jnp.asarray(labels), True)
  assert "spectral" not in v
  np.testing.assert_allclose(np.asarray(embed.apply(v, jnp.asarray(labels), True)),
                             np.asarray(v["params"]["embedding"])[labels], rtol=1e-6)
  # With SN (the default) the same kernel is divided by its spectral norm.
  sn = layers.SNDense(4, sn_init_iters=50)
  v = sn.init(jax.random.PRNGKey(0), jnp.asarray(x), True)
  w = np.asarray(v["params"]["kernel"])
  got = np.asarray(sn.apply(v, jnp.asarray(x), False))
  np.testing.assert_allclose(got, x @ (w / np.linalg.svd(w, compute_uv=False)[0]),
                             rtol=1e-3, atol=1e-5)


def _size_keeping_block_params(c: int, classes: int, generator: bool) -> int:
  """Two 3x3 convs c -> c with biases, identity shortcut; G's two CBNs per-class gain/bias."""
  convs = 2 * (3 * 3 * c * c + c)
  return convs + (2 * 2 * classes * c if generator else 0)


def test_residual_control_adds_one_size_keeping_block():
  base = load_config("tiny")
  res = load_config("tiny", model__g_residual=(8,), model__d_residual=(8,))
  s0, s1 = state_lib.abstract_state(base)[1], state_lib.abstract_state(res)[1]
  width, classes = 4 * base.model.ch, base.model.num_classes   # 16x16 tables: blocks 4*ch wide
  for who, gen in (("g", True), ("d", False)):
    p0, p1 = getattr(s0, who)["params"], getattr(s1, who)["params"]
    assert set(p1) - set(p0) == {"residual8"}
    want = _size_keeping_block_params(width, classes, gen)
    assert _count(p1["residual8"]) == want
    assert _count(p1) - _count(p0) == want
    assert "conv_sc" not in p1["residual8"]


def test_residual_control_keeps_forward_shapes():
  config = load_config("tiny", model__g_residual=(8,), model__d_residual=(8,))
  models = state_lib.make_models(config)
  state = state_lib.init_state(models, config, jax.random.PRNGKey(0))
  z = jnp.zeros((2, config.model.z_dim))
  y = jnp.array([1, 2])
  x = models.generator.apply(state.g, z, y, train=False)
  assert x.shape == (2, 16, 16, 3)
  assert models.discriminator.apply(state.d, x, y, update_sn=False).shape == (2,)


def test_default_trees_have_no_control_modules_and_sn_everywhere():
  s = state_lib.abstract_state(load_config("tiny"))[1]
  for tree in (s.g, s.d):
    assert not any(k.startswith("residual") for k in tree["params"])
    kernels = {"/".join(str(getattr(k, "key", k)) for k in p[:-1])
               for p, _ in jax.tree_util.tree_flatten_with_path(tree["params"])[0]
               if getattr(p[-1], "key", None) in ("kernel", "embedding")}
    sns = {"/".join(str(getattr(k, "key", k)) for k in p[:-2])
           for p, _ in jax.tree_util.tree_flatten_with_path(tree["spectral"])[0]
           if getattr(p[-1], "key", None) == "u"}
    assert kernels == sns and kernels


def test_validate_names_bad_switches():
  with pytest.raises(config_base.ConfigError, match="model.g_residual"):
    preflight.check_config(load_config("tiny", model__g_residual=(32,)))
  with pytest.raises(config_base.ConfigError, match="model.d_residual"):
    preflight.check_config(load_config("tiny", model__d_residual=(16,)))


@pytest.mark.parametrize("name,resolution", [("digits", 16), ("imagenet128", 128),
                                             ("tiny", 16)])
def test_every_variant_loads_and_validates(name, resolution):
  for v in experiments.names(resolution):
    c = load_config(f"{name}:{v}")
    preflight.check_config(c)
  default = load_config(name)
  ttur = load_config(f"{name}:sn_gd_ttur")
  assert ttur.to_dict() == default.to_dict()
  base, sn_gd = load_config(f"{name}:baseline"), load_config(f"{name}:sn_gd")
  assert base.optim.g_lr == base.optim.d_lr == sn_gd.optim.g_lr == sn_gd.optim.d_lr
  assert (base.model.g_sn, base.model.d_sn, sn_gd.model.g_sn) == (False, True, True)
  assert load_config(f"{name}:sngan").optim.n_critic == 5


def test_variant_learning_rates_follow_each_files_scaling():
  assert load_config("imagenet128:baseline").optim.g_lr == 1e-4
  digits = load_config("digits")
  # digits doubles the paper's TTUR rates (1e-4 / 4e-4), so its single rate doubles 1e-4.
  assert digits.optim.g_lr / 1e-4 == pytest.approx(2)
  assert load_config("digits:baseline").optim.d_lr == pytest.approx(2e-4)
  assert experiments.names(16) == ("baseline", "sn_gd", "sn_gd_ttur", "sngan", "noattn",
                                   "feat8", "residual8")
  assert experiments.sizes(128) == (8, 16, 32, 64)


def test_unknown_variant_is_a_config_error():
  with pytest.raises(config_base.ConfigError, match="residual8"):
    config_base.load(os.path.join(ROOT, "configs", "digits.py:feat64"))


def _tiny_variant(v):
  return load_config(f"tiny:{v}", total_steps=2, checkpoint_every=1, log_every=1,
                     sample_every=0, batch_size=4)


def _train_two_steps_and_resume(v, workdir):
  config = _tiny_variant(v)
  mesh = parallel.make_mesh(1)
  part = train.train_and_evaluate(config, workdir, mesh=mesh, stop_after=1)
  assert int(part.step) == 1
  done = jax.device_get(train.train_and_evaluate(config, workdir, mesh=mesh))
  assert int(done.step) == 2
  assert checkpointing.all_finite(done)
  return config, done


@pytest.mark.parametrize("v", ["baseline", pytest.param("residual8", marks=pytest.mark.slow)])
def test_variant_trains_two_steps_and_resumes(v, tmp_path):
  config, state = _train_two_steps_and_resume(v, str(tmp_path))
  if not config.model.g_sn:
    assert state.g["spectral"] == {} and state.ema["spectral"] == {}
    # A checkpoint without G's SN refuses a config with it.
    with pytest.raises(checkpointing.CheckpointError, match="model.g_sn"):
      train.train_and_evaluate(load_config("tiny", total_steps=3), str(tmp_path),
                               mesh=parallel.make_mesh(1))


@pytest.mark.slow
@pytest.mark.parametrize("v", [v for v in experiments.names(16)
                               if v not in ("baseline", "residual8")])
def test_other_variants_train_two_steps_and_resume(v, tmp_path):
  _train_two_steps_and_resume(v, str(tmp_path))


def test_train_step_without_any_sn_reports_no_sigmas():
  config = load_config("tiny", model__g_sn=False, model__d_sn=False, batch_size=4)
  models = state_lib.make_models(config)
  state = state_lib.init_state(models, config, jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  batch = {"image": jnp.asarray(rng.randint(0, 255, (1, 4, 16, 16, 3), np.uint8)),
           "label": jnp.asarray(rng.randint(0, 10, (1, 4)).astype(np.int32))}
  new, metrics = jax.jit(lambda s, b: train.train_step(s, b, jax.random.PRNGKey(1),
                                                       models=models, config=config))(state, batch)
  assert not any("sigma" in k for k in metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert new.d["spectral"] == {} and new.g["spectral"] == {} and new.ema["spectral"] == {}
