"""`pip install .` gives a package that works from any directory, with relative workdirs.

The package is installed (no dependencies: they are this environment's) into
a fresh folder, and every command then runs from another, empty directory
with `sagan-jax` and `import sagan_jax` coming from that installed copy, never
from the checkout: train with a built-in config name and a relative workdir,
resume it, sample, evaluate, convert, `sagan_jax.load`, and the fallback past a
damaged newest checkpoint, all with relative paths (Orbax itself refuses
them, so this is what proves they are resolved).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT
from tests.test_cli import _env
from tests.test_docs import fresh_checkout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(site folder with the installed package, its bin folder, an empty working directory)."""
  site = str(tmp_path_factory.mktemp("site"))
  # Built from a copy (a clean clone's files), so the build leaves nothing in the checkout.
  source = fresh_checkout(str(tmp_path_factory.mktemp("source")))
  isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
  p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                      "--target", site, source], capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout + p.stderr
  return site, os.path.join(site, "bin"), str(tmp_path_factory.mktemp("elsewhere"))


def _run(installed, *argv, check=True):
  site, bin_dir, cwd = installed
  env = {**_env(), "PYTHONPATH": site, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
  exe = [os.path.join(bin_dir, argv[0])] if argv[0] == "sagan-jax" else [sys.executable]
  p = subprocess.run(exe + list(argv[1:]), cwd=cwd, env=env, capture_output=True, text=True,
                     timeout=600)
  if check:
    assert p.returncode == 0, f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
  return p


def test_installed_package_is_the_copy_with_the_metadata_version(installed):
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    version = tomllib.load(f)["project"]["version"]
  p = _run(installed, "python", "-c", "import sagan_jax, sagan_jax.configs; "
           "print(sagan_jax.__file__); print(sagan_jax.__version__)")
  where, got = p.stdout.split()
  assert where.startswith(installed[0]) and got == version


def test_help_of_every_command_exits_0(installed):
  p = _run(installed, "sagan-jax", "--help")
  for command in ("train", "sample", "evaluate", "describe", "convert"):
    assert command in p.stdout
    sub = _run(installed, "sagan-jax", command, "--help")
    assert "--" in sub.stdout and "(default: 'None')" not in sub.stdout + sub.stderr, command
  bad = _run(installed, "sagan-jax", "trian", check=False)
  assert bad.returncode == 2 and bad.stderr.startswith("error: unknown command 'trian'")


@pytest.mark.slow   # default suite: test_docs runs README's relative-path train, sample,
                   # evaluate and load from a fresh copy; test_cli's SIGTERM test resumes
def test_train_resume_sample_evaluate_load_with_relative_paths(installed):
  cwd = installed[2]
  p = _run(installed, "sagan-jax", "train", "--config", "tiny", "--workdir", "w")
  assert "saving checkpoint: " + os.path.join(cwd, "w", "checkpoints", "20") in p.stdout
  p = _run(installed, "sagan-jax", "train", "--config", "tiny", "--workdir", "w")
  assert "nothing to do" in p.stdout and "--config.total_steps" in p.stdout
  p = _run(installed, "sagan-jax", "train", "--config", "tiny", "--workdir", "w",
           "--config.total_steps=24", "--config.log_every=2")
  assert "resuming from step 20" in p.stdout and "step 22/24" in p.stdout
  _run(installed, "sagan-jax", "sample", "--workdir", "w", "--out", "g.png")
  assert os.path.getsize(os.path.join(cwd, "g.png")) > 0
  p = _run(installed, "python", "-c", "import sagan_jax; print(sagan_jax.load('w').step)")
  assert p.stdout.split()[-1] == "24"
  p = _run(installed, "sagan-jax", "evaluate", "--workdir", "w", "--num_samples", "20",
           "--digits_score", "--noinception")
  assert json.loads(p.stdout.splitlines()[-1])["num_samples"] == 20

  # A damaged newest checkpoint: skipped with a warning naming it, the previous one is used.
  ckpts = os.path.join(cwd, "w", "checkpoints")
  victim = max((os.path.join(root, f) for root, _, files in
                os.walk(os.path.join(ckpts, "24", "state")) for f in files), key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  p = _run(installed, "sagan-jax", "sample", "--workdir", "w", "--out", "g2.png")
  assert "checkpoint step 24" in p.stderr and "damaged" in p.stderr and "step 20" in p.stdout
  p = _run(installed, "python", "-c", "import sagan_jax; print(sagan_jax.load('w').step)")
  assert p.stdout.split()[-1] == "20"
  p = _run(installed, "sagan-jax", "train", "--config", "tiny", "--workdir", "w",
           "--config.total_steps=22")
  assert "resuming from step 20" in p.stdout


def test_convert_into_a_relative_workdir(installed):
  fixture = os.path.join(ROOT, "tests", "fixtures", "convert", "studiogan")
  p = _run(installed, "sagan-jax", "convert", "--from", "studiogan", "--weights", fixture,
           "--config", "cifar10", "--workdir", "conv", "--config.model.ch=8",
           "--config.model.d_ch=8", "--config.model.z_dim=8", "--config.model.num_classes=3")
  assert "wrote " + os.path.join(installed[2], "conv", "checkpoints") in p.stdout
  _run(installed, "sagan-jax", "sample", "--workdir", "conv", "--out", "c.png")


def test_pyproject_lists_every_subpackage_and_reads_requirements():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  listed = set(project["tool"]["setuptools"]["packages"])
  found = {os.path.relpath(root, ROOT).replace(os.sep, ".")
           for root, _, files in os.walk(os.path.join(ROOT, "sagan_jax"))
           if "__init__.py" in files}
  assert listed == found | {"sagan_jax.configs"}
  assert project["tool"]["setuptools"]["package-dir"] == {"sagan_jax.configs": "configs"}
  assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
  assert project["project"]["requires-python"] == ">=3.11"
