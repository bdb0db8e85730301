"""Augmentation, ADA and LeCam in the train step; resume; the phases of the step."""

import jax
import numpy as np
import pytest

from sagan_jax import checkpointing, errors, parallel, step, train
from sagan_jax import state as state_lib
from tests.conftest import load_config


def _aug_config(**kw):
  return load_config("tiny", augment__policy="color,translation,cutout",
                     augment__ada_target=0.6, augment__p=0.2, augment__ada_interval=1,
                     augment__ada_kimg=1, optim__lecam_weight=0.1, **kw)


def test_d_sees_augmented_real_and_fake_in_both_updates(monkeypatch):
  """d_view gets concat(real, fake) in each D update and the fakes in the G update."""
  config = _aug_config(optim__n_critic=2)
  seen = []
  real_view = step.d_view

  def spy(cfg, x, key, p):
    seen.append(x.shape[0])
    return real_view(cfg, x, key, p)

  monkeypatch.setattr(step, "d_view", spy)
  mesh = parallel.make_mesh(1)
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  b = config.batch_size
  batch = {"image": np.zeros((2, b, 16, 16, 3), np.uint8), "label": np.zeros((2, b), np.int32)}
  rng = jax.random.PRNGKey(0)
  jax.eval_shape(lambda s, x, r: step.train_step(s, x, r, models=models, config=config),
                 state, batch, rng)
  assert seen == [2 * b, 2 * b, b]


def test_augment_ada_lecam_train_and_resume_bit_identically(tmp_path):
  config = _aug_config(total_steps=4, checkpoint_every=2, log_every=1, sample_every=0)
  mesh = parallel.make_mesh(1)
  full = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "a"), mesh=mesh))
  train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh, stop_after=2)
  resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh))
  assert sorted(full.extra) == ["ada", "lecam"]
  assert float(full.extra["ada"]["p"]) != 0.2   # moved at every step (interval 1)
  assert float(full.extra["lecam"]["real"]) != 0.0
  for a, b in zip(jax.tree_util.tree_flatten_with_path(full)[0],
                  jax.tree_util.tree_flatten_with_path(resumed)[0]):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1], err_msg=jax.tree_util.keystr(a[0]))
  # p and the LeCam averages are in the checkpoint
  saved = checkpointing.load(str(tmp_path / "b"), step=2)
  assert set(saved.state.extra) == {"ada", "lecam"}
  # a run without them cannot resume it (its state differs)
  plain = load_config("tiny", total_steps=6, checkpoint_every=2)
  with pytest.raises(errors.CheckpointError, match="state extras"):
    train.train_and_evaluate(plain, str(tmp_path / "b"), mesh=mesh)


def test_train_step_is_a_short_composition():
  import inspect
  lines = inspect.getsource(step.train_step).splitlines()
  assert len(lines) <= 50
  body = "\n".join(lines)
  for phase in ("d_update(", "g_update(", "ema_update(", "diagnostics("):
    assert phase in body
