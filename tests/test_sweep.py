"""The sweep runner: flag checks, a tiny two-variant sweep, rerun skipping, the table's numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sagan_jax import errors, experiments, sweep, sweep_report
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "configs", "tiny.py")
# The shapes of test_experiments' two-step variant runs (their compilations are cached).
FAST = {"total_steps": 2, "checkpoint_every": 1, "log_every": 1, "sample_every": 0,
        "batch_size": 4, "eval_every": 2, "eval.num_samples": 100, "mesh.num_devices": 1}


@pytest.mark.parametrize("kwargs,match", [
    (dict(variants=["baseline", "nosuch"]), "nosuch"),
    (dict(only="noattn:7"), "--only"),
    (dict(overrides={"seed": 3}), "--seeds"),
    (dict(overrides={"model.ch": 12}), "model.ch"),   # attention needs a multiple of 8
    (dict(spec=TINY + ":noattn"), "without a variant"),
])
def test_bad_flags_stop_before_anything_is_written(tmp_path, kwargs, match):
  args = dict(spec=TINY, variants=["baseline", "noattn"], seeds=[0], workdir=str(tmp_path / "w"))
  args.update(kwargs)
  with pytest.raises(errors.ConfigError, match=match):
    sweep.sweep(**args)
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("text", ["0,,1", "a,1", "0,0", "", "-1"])
def test_bad_seed_lists(text):
  with pytest.raises(errors.ConfigError, match="--seeds"):
    sweep.parse_seeds(text)


@pytest.mark.slow
def test_tiny_sweep_writes_its_outputs_and_skips_finished_runs(tmp_path):
  workdir = str(tmp_path / "ablation")
  results = sweep.sweep(TINY, ["baseline", "residual8"], [0], workdir, FAST, in_process=True)
  for f in ("results.json", "results.md", "curves.png"):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert [m["dir"] for m in saved["members"]] == ["baseline-s0", "residual8-s0"]
  for m in saved["members"]:
    assert m["status"] == "finished" and m["steps"] == 2
    assert [e["step"] for e in m["evals"]] == [2] and "accuracy" in m["evals"][0]
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| baseline |" in table and "| residual8 |" in table and "accuracy best (max)" in table
  stamp = os.path.getmtime(os.path.join(workdir, "baseline-s0", "sweep.json"))
  sweep.sweep(TINY, ["baseline", "residual8"], [0], workdir, FAST, in_process=True)
  state = sweep_report.read_state(os.path.join(workdir, "baseline-s0"))
  assert state["launches"] == 1   # not trained again
  assert os.path.getmtime(os.path.join(workdir, "baseline-s0", "sweep.json")) == stamp


def _fake_member(workdir, name, evals, steps=None):
  rundir = os.path.join(workdir, name)
  for e in evals:
    experiments.record_eval(rundir, e[0], {"accuracy": e[1], "frechet": e[2]})
  os.makedirs(os.path.join(rundir, "checkpoints", str(steps or evals[-1][0])))
  sweep_report.write_state(rundir, {"wall_s": 60.0, "launches": 1, "status": "finished"})


def test_summary_reduces_each_variant_over_its_seeds(tmp_path):
  w = str(tmp_path)
  runs = {"sn_gd-s0": [(10, 0.5, 9.0), (20, 0.9, 4.0), (30, 0.8, 5.0)],
          "sn_gd-s1": [(10, 0.4, 8.0), (20, 0.6, 6.0), (30, 0.7, 3.0)]}
  for name, ev in runs.items():
    _fake_member(w, name, ev)
  # A resumed run evaluates a step twice: the later line counts.
  experiments.record_eval(os.path.join(w, "sn_gd-s1"), 30, {"accuracy": 0.75, "frechet": 3.0})
  results = sweep.sweep(TINY, ["sn_gd"], [0, 1], w, {"total_steps": 30}, summarise_only=True)
  got = results["variants"]["sn_gd"]["metrics"]
  best_acc, final_acc, best_fr = [0.9, 0.75], [0.8, 0.75], [4.0, 3.0]
  np.testing.assert_allclose(got["accuracy"]["best"]["mean"], np.mean(best_acc))
  np.testing.assert_allclose(got["accuracy"]["best"]["std"], np.std(best_acc, ddof=1))
  np.testing.assert_allclose(got["accuracy"]["final"]["mean"], np.mean(final_acc))
  np.testing.assert_allclose(got["frechet"]["best"]["mean"], np.mean(best_fr))  # min
  assert got["frechet"]["better"] == "min" and got["accuracy"]["better"] == "max"
  assert results["variants"]["sn_gd"]["finished"] == 2
  assert "0.825 ± 0.11" in open(os.path.join(w, "results.md")).read()
  assert os.path.getsize(os.path.join(w, "curves.png")) > 0


def test_rerun_skips_finished_members_and_resumes_the_others(tmp_path, monkeypatch):
  from sagan_jax import train
  trained = []
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, rundir: trained.append(rundir))
  _fake_member(str(tmp_path), "noattn-s0", [(2, 0.5, 9.0)])            # at total_steps: done
  _fake_member(str(tmp_path), "baseline-s0", [(1, 0.5, 9.0)])          # interrupted at step 1
  monkeypatch.chdir(tmp_path.parent)   # a relative --workdir reaches the members absolute
  sweep.sweep(TINY, ["baseline", "noattn"], [0], tmp_path.name, {"total_steps": 2},
              in_process=True)
  assert trained == [os.path.join(str(tmp_path), "baseline-s0")]
  assert sweep_report.read_state(os.path.join(str(tmp_path), "noattn-s0"))["launches"] == 1
  assert sweep_report.read_state(os.path.join(str(tmp_path), "baseline-s0"))["launches"] == 2
  for f in ("results.json", "results.md", "curves.png"):
    assert os.path.getsize(tmp_path / f) > 0, f


def test_only_runs_one_member_and_writes_no_tables(tmp_path, monkeypatch):
  ran = []
  monkeypatch.setattr(sweep, "run_member", lambda spec, m, *a: ran.append(m))
  out = sweep.sweep(TINY, ["baseline", "noattn"], [0, 1], str(tmp_path), only="noattn:1")
  assert out is None and ran == [sweep.Member("noattn", 1)]
  assert not os.path.exists(tmp_path / "results.json")


def test_command_line_reports_an_unknown_variant(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "sagan_jax.sweep", "--config", TINY, "--variants", "feat64",
       "--seeds", "0", "--workdir", str(tmp_path / "w")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --variants")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_command_line_member_in_a_subprocess(tmp_path):
  w = str(tmp_path / "w")
  args = [sys.executable, "-m", "sagan_jax.sweep", "--config", TINY, "--variants", "noattn",
          "--seeds", "1", "--workdir", w] + [f"--config.{k}={v}" for k, v in FAST.items()]
  proc = subprocess.run(args + ["--only", "noattn:1"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert sweep_report.steps_done(os.path.join(w, "noattn-s1")) == 2
  assert sweep_report.read_state(os.path.join(w, "noattn-s1"))["status"] == "finished"
  proc = subprocess.run(args + ["--summarise"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| noattn |" in open(os.path.join(w, "results.md")).read()
