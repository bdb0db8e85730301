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
  assert set(report["parts"]) == {"conv", "attention", "train_step", "benchmark"}
  assert report["failed"] == [], report["failed"]
  assert report["parts"]["train_step"]["highest"]["update_rel_err"] < 1e-4
  bench = report["parts"]["benchmark"]
  assert bench["config"] == "tiny.py" and bench["sec_per_iteration"] > 0
  assert "wrote" in r.stdout
