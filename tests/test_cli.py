"""The commands as a user runs them: main (train, resume, SIGTERM), sample, describe."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["XLA_FLAGS"] = ""  # one CPU device, as a user's laptop
  env["JAX_COMPILATION_CACHE_DIR"] = jax_cache()
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return env


def jax_cache():
  import jax
  return jax.config.jax_compilation_cache_dir


def run(*args, timeout=600, check=True):
  p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=timeout)
  if check and p.returncode != 0:
    raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
  return p


def test_train_then_sample_and_npz(tmp_path):
  wd = str(tmp_path / "run")
  p = run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", wd,
          "--config.total_steps=10", "--config.log_every=5")
  out = p.stdout
  assert "step 5/10" in out and "step 10/10" in out and "img/s" in out and "ETA" in out
  assert os.path.isdir(os.path.join(wd, "checkpoints", "10"))
  assert os.path.exists(os.path.join(wd, "samples", "step_0000010.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd))

  grid = str(tmp_path / "grid.png")
  run("sagan_jax.sample", "--workdir", wd, "--out", grid, "--classes=3,5", "--per_class=4",
      "--scale=1")
  img = np.asarray(Image.open(grid))
  # 2 rows x 4 columns of 16 px tiles with 2 px padding.
  assert img.shape == (2 * 18 + 2, 4 * 18 + 2, 3)

  npz = str(tmp_path / "s.npz")
  p = run("sagan_jax.sample", "--workdir", wd, "--npz", npz, "--num_samples", "25", "--batch_size", "10",
          "--standing_stats", "2")
  assert "standing statistics: G's BN statistics from 2 passes of 10" in p.stdout
  with np.load(npz) as d:
    assert d["images"].shape == (25, 16, 16, 3) and d["images"].dtype == np.uint8
    np.testing.assert_array_equal(d["labels"], np.arange(25) % 10)
    assert d["images"].std() > 0  # not a blank output

  attn, interp = str(tmp_path / "attn.png"), str(tmp_path / "interp.png")
  p = run("sagan_jax.sample", "--workdir", wd, "--attention", attn, "--queries=2:2,12:12",
          "--attention_samples=3", "--interpolate", interp, "--steps=5", "--classes=1,2",
          "--scale=1")
  assert "layer attention8" in p.stdout
  assert np.asarray(Image.open(attn)).shape == (3 * 18 + 2, 3 * 18 + 2, 3)  # 3 x (1 + 2 queries)
  assert np.asarray(Image.open(interp)).shape == (2 * 18 + 2, 5 * 18 + 2, 3)


@pytest.mark.slow   # default suite: the SIGTERM test below relaunches and resumes
def test_rerun_resumes_and_finishes(tmp_path):
  wd = str(tmp_path / "run")
  run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", wd, "--config.total_steps=5",
      "--config.checkpoint_every=5")
  p = run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", wd,
          "--config.total_steps=8", "--config.log_every=1")
  assert "resuming from" in p.stdout and "step 6/8" in p.stdout and "step 1/8" not in p.stdout
  assert os.path.isdir(os.path.join(wd, "checkpoints", "8"))


def test_sigterm_saves_and_relaunch_resumes(tmp_path):
  wd = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "sagan_jax.main", "--config", "configs/tiny.py", "--workdir", wd,
         "--config.total_steps=100000", "--config.checkpoint_every=100000",
         "--config.log_every=1"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.time() + 300
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("step 3/"):
        proc.send_signal(signal.SIGTERM)
        break
      assert time.time() < deadline, "training did not start"
    rest, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  out = "".join(lines) + rest
  assert proc.returncode == 0, out
  assert "Stopped at step" in out
  stopped = int(out.split("Stopped at step ")[1].split(" ")[0])
  assert 3 <= stopped < 100000
  assert os.path.isdir(os.path.join(wd, "checkpoints", str(stopped)))
  p = run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", wd,
          f"--config.total_steps={stopped + 2}", "--config.log_every=1")
  assert f"step {stopped + 1}/{stopped + 2}" in p.stdout


def test_bad_config_value_fails_fast_naming_field(tmp_path):
  p = run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
          "--config.model.g_attention=(5,)", check=False)
  assert p.returncode != 0
  assert "config.model.g_attention" in p.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_config_field_is_rejected(tmp_path):
  p = run("sagan_jax.main", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
          "--config.model.chanels=8", check=False)
  assert p.returncode != 0 and "chanels" in p.stderr


def test_sample_without_checkpoint_says_so(tmp_path):
  p = run("sagan_jax.sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "g.png"),
          check=False)
  assert p.returncode == 2 and "no checkpoints" in p.stderr


@pytest.mark.parametrize("config,g,d", [
    ("imagenet128.py", 42_017_412, 39_448_258),
    ("imagenet128.py:official", 42_078_852, 39_463_618),
])
def test_describe_prints_paper_parameter_counts(config, g, d):
  p = run("sagan_jax.describe", "--config", f"configs/{config}", "--nocompile")
  info = json.loads(p.stdout.strip().splitlines()[-1])
  assert info["generator_params"] == g and info["discriminator_params"] == d
  assert "G/attention64" in p.stdout if config == "imagenet128.py" else "G/attention32" in p.stdout


def test_describe_reports_flops_and_memory():
  """The step's FLOPs are the whole batch's whatever the device split (the same global
  batch on 1 or 2 devices is the same arithmetic); memory is per device."""
  info = {}
  for mesh in (1, 2):
    p = run("sagan_jax.describe", "--config", "configs/tiny.py", "--mesh", str(mesh))
    info[mesh] = json.loads(p.stdout.strip().splitlines()[-1])
    assert info[mesh]["devices"] == mesh
    assert info[mesh]["train_gflops_per_image"] > 3 * info[mesh]["g_forward_gflops_per_image"] > 0
    assert info[mesh]["per_device_memory_gib"] > 0
  assert info[2]["train_gflops_per_iteration"] == pytest.approx(
      info[1]["train_gflops_per_iteration"], rel=0.01)
