"""Fine-tuning: init_from, init_class_map, freeze_d_blocks."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sagan_jax import checkpointing, errors, finetune, parallel, preflight, step, train
from sagan_jax import state as state_lib
from tests.conftest import load_config


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def save_run(workdir, config, step_no=3):
  """A verified checkpoint of a freshly initialised state (seeded by config.seed)."""
  mesh = parallel.make_mesh(1)
  models = state_lib.make_models(config)
  state = state_lib.create_state(models, config, mesh)
  ckpt = checkpointing.Checkpointer(str(workdir), config)
  ckpt.save(step_no, state.replace(step=state.step + step_no))
  ckpt.finish()
  ckpt.close()
  return jax.device_get(state)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("old_run")
  return str(d), save_run(d, load_config("tiny", seed=1))


def _fresh(config):
  mesh = parallel.make_mesh(1)
  return state_lib.create_state(state_lib.make_models(config), config, mesh), mesh


def test_init_from_copies_every_tensor_with_fresh_optimisers(old_run):
  run_dir, old = old_run
  config = load_config("tiny", init_from=run_dir + ":3")
  fresh, mesh = _fresh(config)
  new = finetune.init_from(config, fresh, mesh)
  for part in ("g", "ema", "d"):
    a, b = _leaves(getattr(old, part)), _leaves(getattr(new, part))
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{part}{k}")
  assert int(new.step) == 0
  for k, v in _leaves(fresh.opt).items():
    np.testing.assert_array_equal(v, _leaves(new.opt)[k])
  assert not np.array_equal(_leaves(fresh.g)["['params']['linear']['kernel']"],
                            _leaves(new.g)["['params']['linear']['kernel']"])


def test_class_map_moves_the_right_rows(old_run):
  run_dir, old = old_run
  cmap = (5, 6, 7, 8, 9)
  config = load_config("tiny", init_from=run_dir, model__num_classes=5, init_class_map=cmap)
  preflight.check_config(config)
  fresh, mesh = _fresh(config)
  new = finetune.init_from(config, fresh, mesh)
  g_old, g_new = _leaves(old.g), _leaves(new.g)
  for k in ("['params']['block1']['bn1']['gamma']", "['params']['block2']['bn2']['beta']"):
    np.testing.assert_array_equal(g_new[k], g_old[k][list(cmap)])
  d_old, d_new = _leaves(old.d), _leaves(new.d)
  emb = "['params']['embed']['embedding']"
  np.testing.assert_array_equal(d_new[emb], d_old[emb][list(cmap)])
  u = d_old["['spectral']['embed']['sn']['u']"][list(cmap)]
  np.testing.assert_allclose(d_new["['spectral']['embed']['sn']['u']"], u / np.linalg.norm(u),
                             rtol=1e-6)
  k = "['params']['block1']['conv1']['kernel']"
  np.testing.assert_array_equal(d_new[k], d_old[k])
  # without a map, other class counts: the tables stay fresh, the rest is copied
  config = load_config("tiny", init_from=run_dir, model__num_classes=5)
  fresh, mesh = _fresh(config)
  new = finetune.init_from(config, fresh, mesh)
  np.testing.assert_array_equal(_leaves(new.d)[emb], _leaves(fresh.d)[emb])
  np.testing.assert_array_equal(_leaves(new.d)[k], d_old[k])


def test_refusals(old_run, tmp_path):
  run_dir, _ = old_run
  other = load_config("tiny", init_from=run_dir, model__ch=8)
  fresh, mesh = _fresh(other)
  with pytest.raises(errors.CheckpointError,
                     match=r"tensor g/\S+ has shape \(64,\) there but \(32,\)"):
    finetune.init_from(other, fresh, mesh)
  config = load_config("tiny", model__num_classes=2, init_from=run_dir, init_class_map=(3, 10))
  fresh, mesh = _fresh(config)
  with pytest.raises(errors.ConfigError, match="class 10 does not exist"):
    finetune.init_from(config, fresh, mesh)
  for spec, msg in ((str(tmp_path / "nope"), "does not exist"),
                    (str(tmp_path), "no checkpoints in")):
    config = load_config("tiny", init_from=spec)
    with pytest.raises(errors.CheckpointError, match=msg):
      finetune.init_from(config, fresh, mesh)
  for over in ({"init_class_map": (1, 2)}, {"init_from": "x", "init_class_map": (1, 2)},
               {"freeze_d_blocks": 4}):
    with pytest.raises(errors.ConfigError, match=f"config.{next(iter(over))}" if len(over) == 1
                       else "config.init_class_map"):
      preflight.check_config(load_config("tiny", **over))


def test_source_checks_need_no_restore_and_skip_a_resumed_run(old_run, tmp_path, monkeypatch):
  """check_source (loop.run, before data, model or compile) refuses what init_from would,
  reading only the source's config; a workdir with checkpoints is a resume: not checked."""
  run_dir, _ = old_run
  monkeypatch.setattr(finetune.checkpointing, "load", lambda *a, **k: pytest.fail("restored"))
  wd = str(tmp_path / "new")
  cases = [({"init_from": run_dir, "model__ch": 8}, errors.CheckpointError,
            r"model.ch: 16 there, 8 here; the architectures differ"),
           ({"init_from": run_dir, "model__g_attention": ()}, errors.CheckpointError,
            r"model.g_attention: \(8,\) there, \(\) here"),
           ({"init_from": run_dir, "model__num_classes": 2, "init_class_map": (3, 10)},
            errors.ConfigError, "class 10 does not exist"),
           ({"init_from": str(tmp_path / "nope")}, errors.CheckpointError, "does not exist"),
           ({"init_from": str(tmp_path)}, errors.CheckpointError, "no checkpoints in")]
  for over, kind, msg in cases:
    with pytest.raises(kind, match=msg):
      finetune.check_source(load_config("tiny", **over), wd)
  finetune.check_source(load_config("tiny", init_from=run_dir, model__num_classes=5), wd)
  finetune.check_source(load_config("tiny"), wd)           # no init_from: nothing to check
  resumed = tmp_path / "resumed"
  (resumed / "checkpoints" / "4").mkdir(parents=True)
  finetune.check_source(load_config("tiny", init_from=str(tmp_path / "gone")), str(resumed))


def test_parse():
  assert finetune.parse("runs/a") == ("runs/a", None)
  assert finetune.parse("runs/a:1250") == ("runs/a", 1250)
  assert finetune.parse("gs://b/run") == ("gs://b/run", None)


def test_frozen_modules():
  assert step.frozen_d_modules(load_config("tiny", freeze_d_blocks=1)) == ("block1",
                                                                           "attention8")
  assert step.frozen_d_modules(load_config("tiny", freeze_d_blocks=3)) == (
      "block1", "attention8", "block2", "block3")
  assert step.frozen_d_modules(load_config("tiny")) == ()


def test_finetune_run_with_frozen_d_blocks(old_run, tmp_path):
  """A run from init_from with freeze_d_blocks=1: D's block1 and attention bit-equal after
  training steps, the other blocks trained."""
  run_dir, old = old_run
  config = load_config("tiny", init_from=run_dir, freeze_d_blocks=1, total_steps=2,
                       checkpoint_every=2, sample_every=0)
  new = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "ft"),
                                                mesh=parallel.make_mesh(1)))
  assert int(new.step) == 2
  for name in ("block1", "attention8"):
    for a, b in zip(jax.tree.leaves(old.d["params"][name]),
                    jax.tree.leaves(new.d["params"][name])):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(old.d["params"]["block2"]["conv1"]["kernel"],
                            new.d["params"]["block2"]["conv1"]["kernel"])
