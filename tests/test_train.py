"""The train step, sharding equality, compile-once, EMA, resume, bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import checkpointing, config_base, data, errors, parallel, preflight, stopping, train
from sagan_jax import state as state_lib
from tests.conftest import load_config


def _batches(config, n, start_batch=0):
  src = data.make_source(config, start_batch=start_batch)
  out = []
  for _ in range(n):
    parts = [next(src) for _ in range(config.optim.n_critic)]
    out.append({k: np.stack([p[k] for p in parts]) for k in ("image", "label")})
  return out


def _run_steps(config, mesh, n):
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  step_fn = train.make_train_step(models, config, mesh)
  rng = jax.device_put(np.asarray(jax.random.PRNGKey(7)), parallel.replicated(mesh))
  history = []
  for b in _batches(config, n):
    state, metrics = step_fn(state, parallel.global_batch(b, mesh, 1), rng)
    history.append(jax.device_get(metrics))
  return state, history, step_fn


def _leaves_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_one_step_updates_everything(tiny_config):
  mesh = parallel.make_mesh(1)
  models = state_lib.make_models(tiny_config)
  state0 = jax.device_get(state_lib.create_state(models, tiny_config, mesh))
  state1, hist, _ = _run_steps(tiny_config, mesh, 1)
  state1 = jax.device_get(state1)
  m = hist[0]
  assert int(state1.step) == 1
  for k in ("d_loss", "g_loss", "d_real", "d_fake"):
    assert np.isfinite(m[k]), k
  assert any(k.startswith("gamma/G/") for k in m) and any(k.startswith("gamma/D/") for k in m)
  changed = lambda a, b: any(not np.array_equal(x, y)  # noqa: E731
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(state0.g["params"], state1.g["params"])
  assert changed(state0.d["params"], state1.d["params"])
  assert changed(state0.d["spectral"], state1.d["spectral"])  # D's u advanced
  assert changed(state0.g["spectral"], state1.g["spectral"])  # G's u advanced in the G step
  assert changed(state0.g["batch_stats"], state1.g["batch_stats"])
  # Before ema.start_step the EMA copy equals G exactly.
  _leaves_close(state1.ema["params"], state1.g["params"], 0, 0)
  # The hinge D loss is bounded below by 0; with D(x) and D(G(z)) it is consistent.
  assert m["d_loss"] >= 0


def test_ema_decays_after_start():
  config = load_config("tiny", ema__start_step=0, ema__decay=0.75)
  mesh = parallel.make_mesh(1)
  models = state_lib.make_models(config)
  state0 = jax.device_get(state_lib.create_state(models, config, mesh))
  state1, _, _ = _run_steps(config, mesh, 1)
  state1 = jax.device_get(state1)
  expect = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, state0.ema["params"], state1.g["params"])
  _leaves_close(state1.ema["params"], expect, 1e-6, 1e-7)
  # The EMA's SN vectors follow the EMA weights, not the live G's.
  sig = [float(v) for p, v in jax.tree_util.tree_flatten_with_path(state1.ema["spectral"])[0]
         if p[-1].key == "sigma"]
  assert all(np.isfinite(sig)) and min(sig) > 0


def test_compiles_once(tiny_config):
  _, _, step_fn = _run_steps(tiny_config, parallel.make_mesh(1), 3)
  assert step_fn._cache_size() == 1


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (virtual) devices")
def test_one_vs_four_devices_same_losses(tiny_config):
  s1, h1, _ = _run_steps(tiny_config, parallel.make_mesh(1), 3)
  s4, h4, _ = _run_steps(tiny_config, parallel.make_mesh(4), 3)
  # Step 1 starts from identical weights: only the reduction order differs.
  for k in ("d_loss", "g_loss", "d_real", "d_fake"):
    np.testing.assert_allclose(h1[0][k], h4[0][k], rtol=1e-5, atol=1e-5)
  # Later steps inherit Adam's sign-sensitivity to near-zero gradients (below).
  for a, b in zip(h1[1:], h4[1:]):
    for k in ("d_loss", "g_loss", "d_real", "d_fake"):
      np.testing.assert_allclose(a[k], b[k], rtol=5e-3, atol=1e-3)
  # Adam moves each weight by at most ~lr per step whatever the gradient's size, so
  # near-zero gradients whose sign depends on reduction order may differ by that much.
  atol = 3 * tiny_config.optim.d_lr
  _leaves_close(jax.device_get(s1.g["params"]), jax.device_get(s4.g["params"]), 1e-3, atol)
  _leaves_close(jax.device_get(s1.d["params"]), jax.device_get(s4.d["params"]), 1e-3, atol)


def test_n_critic_two_runs_two_d_updates():
  config = load_config("tiny", optim__n_critic=2)
  state, hist, _ = _run_steps(config, parallel.make_mesh(1), 1)
  count = jax.tree.leaves(jax.device_get(state.opt["d"]))[0]
  assert int(count) == 2  # Adam's update counter of D
  assert int(jax.tree.leaves(jax.device_get(state.opt["g"]))[0]) == 1


@pytest.mark.slow   # default suite: test_recovery's kill -9 test resumes bit for bit
def test_resume_gives_same_parameters(tmp_path):
  config = load_config("tiny", total_steps=4, checkpoint_every=2, log_every=2, sample_every=0)
  mesh = parallel.make_mesh(1)
  full = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "a"), mesh=mesh))
  part = train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh, stop_after=2)
  assert int(part.step) == 2
  assert checkpointing.Checkpointer(str(tmp_path / "b"), config).latest_step() == 2
  resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh))
  assert int(resumed.step) == 4
  for part in (lambda s: s.g["params"], lambda s: s.d["params"], lambda s: s.ema["params"],
               lambda s: s.g["batch_stats"], lambda s: s.d["spectral"], lambda s: s.opt["g"],
               lambda s: s.opt["d"]):
    _leaves_close(part(full), part(resumed), 1e-6, 1e-7)
  assert os.path.exists(tmp_path / "a" / "samples" / "step_0000004.png")


def test_resume_refuses_other_architecture(tmp_path):
  config = load_config("tiny", total_steps=2, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  other = load_config("tiny", total_steps=4)
  other.model.ch = 8
  with pytest.raises(checkpointing.CheckpointError, match="model.ch"):
    train.train_and_evaluate(other, str(tmp_path), mesh=parallel.make_mesh(1))


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
  config = load_config("tiny", total_steps=2, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "r+b") as fh:  # overwrite every byte: the data is unreadable
        size = os.path.getsize(p)
        fh.write(b"\x00" * size)
  more = load_config("tiny", total_steps=4)
  with pytest.raises(checkpointing.CheckpointError, match="no intact checkpoint.*corrupt"):
    train.train_and_evaluate(more, str(tmp_path), mesh=parallel.make_mesh(1))


def test_nonfinite_metrics_and_the_stop_message():
  assert stopping.nonfinite({"d_loss": float("nan"), "g_loss": 1.0, "x": float("inf")}) == {
      "d_loss": pytest.approx(float("nan"), nan_ok=True), "x": float("inf")}
  assert stopping.nonfinite({"d_loss": 0.5}) == {}
  msg = stopping.nonfinite_message("non-finite values", 7, 5, "/w")
  assert "at step 7" in msg and "last good checkpoint (step 5)" in msg and "on_nan" in msg
  assert "no checkpoint was written yet" in stopping.nonfinite_message("x", 7, None, "/w")
  assert "after 2 rollbacks" in stopping.nonfinite_message("x", 7, 5, "/w", rollbacks=2)


def test_nan_in_training_is_caught(tmp_path, monkeypatch):
  config = load_config("tiny", total_steps=3, log_every=1, checkpoint_every=1)
  real_step = train.train_step

  def poisoned(state, batch, rng, **kw):
    new_state, metrics = real_step(state, batch, rng, **kw)
    bad = jnp.where(state.step >= 1, jnp.nan, 0.0)
    return new_state, {**metrics, "d_loss": metrics["d_loss"] + bad}

  monkeypatch.setattr(train, "train_step", poisoned)
  with pytest.raises(errors.NonFiniteLossError, match="step 2"):
    train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  # The good step-1 checkpoint is kept, the bad state was never saved.
  assert checkpointing.Checkpointer(str(tmp_path), config).latest_step() == 1


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "config.batch_size=0"),
    ("model__resolution", 48, "config.model.resolution=48"),
    ("model__g_attention", (12,), "config.model.g_attention"),
    ("optim__beta2", 1.5, "config.optim.beta2"),
    ("model__dtype", "float16", "config.model.dtype"),
    ("data__source", "imagenet", "config.data.source"),
])
def test_bad_config_names_the_field(field, value, message):
  config = load_config("tiny")
  node, parts = config, field.split("__")
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value
  with pytest.raises(config_base.ConfigError, match=message.replace(".", r"\.")):
    preflight.check_config(config)


def test_batch_not_divisible_by_devices():
  if len(jax.devices()) < 4:
    pytest.skip("needs 4 devices")
  with pytest.raises(errors.ConfigError, match="not divisible by the 4 devices"):
    parallel.check_batch_size(6, parallel.make_mesh(4))


def test_in_training_eval_logs_and_keeps_best(tmp_path):
  from sagan_jax import api, best_checkpoint, integrity
  config = load_config("tiny", total_steps=4, eval_every=2, eval__num_samples=50,
                       checkpoint_every=2, keep_checkpoints=2)
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  best = best_checkpoint.BestCheckpointer(str(tmp_path), config, "accuracy", "max")
  assert best.best_step in (2, 4) and 0.0 <= best.best_value <= 1.0
  assert os.listdir(tmp_path / "checkpoints_best") == [str(best.best_step)]  # only the best
  step_dir = tmp_path / "checkpoints_best" / str(best.best_step)
  assert integrity.check(step_dir).ok and not integrity.check(step_dir).unverified
  run = api.load(str(tmp_path), best=True)                 # a first-class, verified checkpoint
  assert run.step == best.best_step
  regular = checkpointing.load(str(tmp_path), step=best.best_step).state
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), run.state.ema,
                                   regular.ema))
  assert not best.save(9, run.state, best.best_value)      # not better: nothing written


def test_best_checkpoint_missing_says_why(tmp_path):
  from sagan_jax import api
  config = load_config("tiny", total_steps=2)
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  with pytest.raises(errors.CheckpointError, match="no best checkpoint .* in-training"):
    api.load(str(tmp_path), best=True)


def test_fid_eval_without_reference_stats_is_refused():
  from sagan_jax.evaluation import training_evals
  config = load_config("tiny", eval_every=2, eval__metric="fid")
  with pytest.raises(errors.ConfigError, match="eval.ref_stats"):
    training_evals.make_all(config, state_lib.make_models(config), parallel.make_mesh(1))
  with pytest.raises(errors.ConfigError, match="eval.ref_stats"):
    preflight.check_config(config)  # refused before anything is built


def test_progress_line_has_no_speed_or_eta_before_a_step_was_timed(monkeypatch):
  from sagan_jax import loop
  now = [100.0]
  monkeypatch.setattr(loop.time, "time", lambda: now[0])
  clock = loop.Clock(step=1)     # the run's first step (it compiles) is not timed
  scalars = {"d_loss": 1.0, "g_loss": 2.0, "d_real": 0.5, "d_fake": -0.5}
  now[0] += 30.0
  text, sps = clock.line(1, 101, scalars, batch=8)
  assert sps == 0 and "first step (compiling)" in text and text.endswith("ETA --")
  now[0] += 10.0                 # 50 steps in 10 s: 5 steps/s, 50 steps left
  text, sps = clock.line(51, 101, scalars, batch=8)
  assert sps == 5.0 and "5.00 steps/s 40.0 img/s" in text
  assert "elapsed 0m40s ETA 0m10s" in text
