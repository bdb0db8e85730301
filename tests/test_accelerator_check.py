"""benchmarks/accelerator_check.{sh,py}: its CPU dry run, how it scores and reports, the
wheel it picks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import accelerator_check as check  # noqa: E402

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.sh")
BASH = shutil.which("bash") or "/bin/bash"


def test_datasheet_peaks_by_device_kind():
  assert check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
  assert check.peak_tflops("NVIDIA H200") == 989
  assert check.peak_tflops("NVIDIA A100-SXM4-40GB") == 312
  assert check.peak_tflops("TPU v4") == 275
  assert check.peak_tflops("TPU v5 lite") == 197
  assert check.peak_tflops("cpu") is None and check.peak_tflops("NVIDIA T4") is None


def test_relative_error_and_failed_names():
  assert check.rel_err([1.0, 2.0], [1.0, 4.0]) == pytest.approx(0.5)
  assert check.rel_err([0.0], [0.0]) == 0.0
  nested = {"a": {"x": {"ok": True}, "y": {"ok": False}}, "b": {"ok": False}, "s": 1.0}
  assert sorted(check._failed(nested)) == ["a/y", "b"]


def test_a_wrong_implementation_fails_its_check():
  def ref(x):
    return jnp.sin(x)

  def off(x):
    return jnp.sin(x) * (1 + 1e-3)   # 1e-3 relative: float32 rounding would be ~1e-7
  x = jnp.linspace(-1.0, 1.0, 64)
  got = check._compare({"same": (ref, ref, (x,)), "off": (off, ref, (x,))},
                       ("highest", "bfloat16"))
  assert got["same"]["highest"]["ok"] and got["same"]["highest"]["max_rel_err"] == 0
  assert not got["off"]["highest"]["ok"]
  assert got["off"]["highest"]["max_rel_err"] == pytest.approx(1e-3, rel=0.05)
  assert got["off"]["bfloat16"]["ok"]   # within bfloat16's tolerance


def test_dry_run_writes_one_report(tmp_path):
  out = tmp_path / "check.json"
  assert check.main(["--dry-run", "--parts", "attention", "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["dry_run"] and report["devices"]["backend"] == "cpu"
  att = report["parts"]["attention"]
  for impl in ("einsum", "xla"):
    for mode in ("highest", "default", "bfloat16"):
      assert att[impl][mode]["ok"], (impl, mode, att[impl][mode])
  assert att["xla"]["highest"]["max_rel_err"] < 1e-5
  assert report["failed"] == []
  assert any("cudnn" in line for line in report["not_done"])


def _sh(*args, env_extra=None):
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([BASH, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=1200)


@pytest.mark.parametrize("kind,wheel", [("--cuda", "jax[cuda12]"), ("--tpu", "jax[tpu]==0.10.2")])
def test_shell_script_installs_the_matching_wheel(kind, wheel, tmp_path):
  r = _sh(kind, "-n", "--venv", str(tmp_path / "v"), "--out", "x.json", "--", "--parts", "conv",
          env_extra={"JAX_VERSION": "0.10.2"} if "tpu" in kind else None)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert any(line.startswith("+ ") and "pip install" in line and line.endswith(wheel)
             for line in lines), r.stdout
  assert lines[-1].endswith("accelerator_check.py --out x.json --parts conv")
  assert not (tmp_path / "v").exists()   # -n runs nothing


def test_shell_script_cpu_mode_installs_nothing():
  r = _sh("--cpu", "-n", "--python", sys.executable)
  assert r.returncode == 0, r.stderr
  assert "pip" not in r.stdout and r.stdout.rstrip().endswith("--dry-run")
  assert _sh("--bogus").returncode == 2


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (apt-get install -y shellcheck)")
def test_shellcheck():
  r = subprocess.run(["shellcheck", "--severity=style", SCRIPT], capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_full_dry_run_through_the_shell_script(tmp_path):
  out = tmp_path / "check.json"
  r = _sh("--cpu", "--python", sys.executable, "--out", str(out),
          env_extra={"XLA_FLAGS": "", "PYTHONPATH": ROOT})
  assert r.returncode == 0, r.stdout + r.stderr
  report = json.loads(out.read_text())
  assert set(report["parts"]) == {"conv", "attention", "train_step", "benchmark", "train_run"}
  assert report["failed"] == [], report["failed"]
  assert report["parts"]["train_step"]["highest"]["update_rel_err"] < 1e-4
  bench = report["parts"]["benchmark"]
  assert bench["config"] == "tiny.py" and bench["sec_per_iteration"] > 0
  assert "wrote" in r.stdout
  run = report["parts"]["train_run"]
  assert run["train_wall_s"] > 0 and run["evaluate"]["num_samples"] == 500


def test_report_is_written_after_every_part(tmp_path, monkeypatch):
  """A check killed in its second part keeps the first part's figures on disk."""
  out = tmp_path / "check.json"
  monkeypatch.setattr(check, "train_step_checks",
                      lambda small: {"highest": {"loss_rel_err": {"d_loss": 0.0},
                                                 "update_rel_err": 2e-6, "tol": 1e-4,
                                                 "ok": True}})

  def killed(small):
    raise KeyboardInterrupt   # as a time-out's signal would end the process

  monkeypatch.setattr(check, "attention_checks", killed)
  with pytest.raises(KeyboardInterrupt):
    check.main(["--dry-run", "--parts", "train_step", "attention", "--out", str(out)])
  report = json.loads(out.read_text())
  assert list(report["parts"]) == ["train_step"]
  assert report["parts"]["train_step"]["highest"]["update_rel_err"] == 2e-6
  assert not (tmp_path / "check.json.tmp").exists()
  assert check.summary("train_step", report["parts"]["train_step"]) == "highest worst 2e-06"


def test_cuda13_driver_gets_the_cuda13_wheel(tmp_path):
  """nvidia-smi's header names the CUDA version the driver supports: 13 -> jax[cuda13]."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  smi = bin_dir / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   "
                 "CUDA Version: 13.0     |'\n")
  smi.chmod(0o755)
  env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
  r = _sh("--cuda", "-n", "--venv", str(tmp_path / "v"), env_extra=env)
  assert r.returncode == 0, r.stderr
  assert any(line.startswith("+ ") and line.endswith("jax[cuda13]") for line in r.stdout.splitlines())
  smi.write_text("#!/bin/sh\necho '| Driver Version: 535.104.05   CUDA Version: 12.2 |'\n")
  r = _sh("--cuda", "-n", "--venv", str(tmp_path / "v"), env_extra=env)
  assert any(line.startswith("+ ") and line.endswith("jax[cuda12]") for line in r.stdout.splitlines())
