"""Tests for launch/: syntax, shellcheck, --dry-run output, remote scripts, cost table."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from sagan_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) +
                 glob.glob(os.path.join(LAUNCH, "*.sbatch")))
BASH = shutil.which("bash") or "/bin/bash"
CONFIG = "configs/imagenet128.py"
WORKDIR = "gs://bucket/run"


def test_scripts_exist():
  names = {os.path.basename(s) for s in SCRIPTS}
  assert {"tpu.sh", "gpu.sh", "slurm.sbatch", "_lib.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  r = subprocess.run([BASH, "-n", script], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (apt-get install -y shellcheck)")
def test_shellcheck():
  # launch/.shellcheckrc lets it follow `source _lib.sh`.
  r = subprocess.run(["shellcheck", "--severity=style", *SCRIPTS], capture_output=True,
                     text=True, cwd=REPO)
  assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------- dry runs


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory):
  """A PATH with the few tools the scripts need and no gcloud/srun/python."""
  d = tmp_path_factory.mktemp("bin")
  for tool in ("dirname", "cat", "env"):
    os.symlink(shutil.which(tool), d / tool)
  assert shutil.which("gcloud", path=str(d)) is None
  return str(d)


def dry(script, *args, path, extra_env=None, check=True):
  env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}
  env.update(extra_env or {})
  r = subprocess.run([BASH, os.path.join(LAUNCH, script), *args], capture_output=True,
                     text=True, env=env, cwd=REPO, timeout=60)
  if check:
    assert r.returncode == 0, r.stdout + r.stderr
  return r


def lines_with(out, *needles):
  return [l for l in out.splitlines() if all(n in l for n in needles)]


@pytest.mark.parametrize("script", ["tpu.sh", "gpu.sh", "slurm.sbatch"])
def test_help(script, bare_path):
  r = dry(script, "--help", path=bare_path)
  assert "Usage:" in r.stdout and "--dry-run" in r.stdout


@pytest.mark.parametrize("script,args", [
    ("tpu.sh", ["run", "--bogus"]), ("tpu.sh", ["frobnicate"]),
    ("tpu.sh", ["run", "--dry-run"]),  # no --workdir
    ("gpu.sh", ["run", "--dry-run"]), ("slurm.sbatch", ["--dry-run"]),
    ("slurm.sbatch", ["--workdir", "/x"]),  # not inside SLURM, not a dry run
])
def test_bad_usage_fails_clearly(script, args, bare_path):
  r = dry(script, *args, path=bare_path, check=False)
  assert r.returncode != 0 and "error" in r.stderr


def test_tpu_launch_dry_run(bare_path):
  r = dry("tpu.sh", "launch", "--dry-run", "--name", "sg", "--zone", "us-central2-b",
          "--project", "proj", "--accelerator", "v4-32", "--spot",
          "--workdir", WORKDIR, "--tfds-data-dir", "gs://bucket/tfds",
          "--config", CONFIG, "--", "--config.batch_size=512", path=bare_path)
  out = r.stdout
  [create] = lines_with(out, "gcloud compute tpus queued-resources create sg")
  for flag in ("--zone=us-central2-b", "--project=proj", "--node-id=sg",
               "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot"):
    assert flag in create.split(), (flag, create)
  assert lines_with(out, "gcloud compute tpus queued-resources describe sg", "state")
  [scp] = lines_with(out, "gcloud compute tpus tpu-vm scp", "sg:sagan_jax.tgz", "--worker=all")
  assert "git -C" in out and "ls-files" in out  # the tree is packed from git's list
  [install] = lines_with(out, "tpu-vm ssh sg", "--worker=all", "requirements.txt")
  assert 'pip install --quiet -U "jax[tpu]"' in install
  [start] = lines_with(out, "tpu-vm ssh sg", "--worker=all", "sagan_jax.main")
  assert (f"python -m sagan_jax.main --config {CONFIG} --workdir {WORKDIR} "
          "--config.batch_size=512") in start
  assert "export TFDS_DATA_DIR=gs://bucket/tfds" in start and "nohup" in start
  # Order: create, wait, copy, install, run.
  idx = [out.index(s) for s in (create, scp, install, start)]
  assert idx == sorted(idx)
  assert r.stderr == ""  # nothing to warn about


def test_tpu_v5e_runtime_and_name(bare_path):
  out = dry("tpu.sh", "create", "--dry-run", "--accelerator=v5e-16", "--zone=us-west4-a",
            path=bare_path).stdout
  [create] = lines_with(out, "queued-resources create")
  assert "--accelerator-type=v5litepod-16" in create
  assert "--runtime-version=v2-alpha-tpuv5-lite" in create
  assert "--spot" not in create


@pytest.mark.parametrize("command,needles", [
    ("status", ["queued-resources describe sagan"]),
    ("logs", ["tpu-vm ssh sagan", "--worker=2", "tail -n 100 -F ~/sagan_jax.log"]),
    ("stop", ["tpu-vm ssh sagan", "--worker=all", "kill -TERM"]),
    ("delete", ["queued-resources delete sagan", "--force", "--quiet"]),
])
def test_tpu_other_commands_dry_run(command, needles, bare_path):
  out = dry("tpu.sh", command, "--dry-run", "--worker", "2", "--follow", path=bare_path).stdout
  assert lines_with(out, *needles), out


def test_tpu_install_from_git_repo(bare_path):
  out = dry("tpu.sh", "install", "--dry-run", "--repo", "https://github.com/me/sagan_jax",
            "--ref", "v1", path=bare_path).stdout
  assert "tpu-vm scp" not in out
  assert lines_with(out, "--worker=all",
                    "git clone --depth 1 --branch v1 https://github.com/me/sagan_jax ~/sagan_jax")


def _alive(pid):
  """Running and not a zombie (an orphan may wait a while to be reaped)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return not re.search(r"^State:\s*Z", f.read(), re.M)
  except FileNotFoundError:
    return False


def _remote_script(dry_line):
  argv = shlex.split(dry_line)
  return argv[argv.index("--command") + 1]


def test_tpu_remote_run_and_stop_scripts_execute(tmp_path, bare_path):
  """Runs the scripts tpu.sh sends to the workers, here, against a fake venv."""
  odd = "--config.name=it's a \"test\" $HOME"
  out = dry("tpu.sh", "run", "--dry-run", "--workdir", WORKDIR, "--tfds-data-dir",
            "gs://b/tfds", "--env", "XLA_FLAGS=--a=1 --b", "--", odd, path=bare_path).stdout
  run_script = _remote_script(lines_with(out, "sagan_jax.main")[0])
  out = dry("tpu.sh", "stop", "--dry-run", "--grace", "5", path=bare_path).stdout
  stop_script = _remote_script(lines_with(out, "kill -TERM")[0])
  for s in (run_script, stop_script):
    assert subprocess.run([BASH, "-n", "-c", s]).returncode == 0

  home = tmp_path / "home"
  (home / "sagan_jax").mkdir(parents=True)
  (home / "sagan_venv" / "bin").mkdir(parents=True)
  record = tmp_path / "argv.json"
  fake_python = home / "sagan_venv" / "bin" / "python"
  fake_python.write_text(
      "#!" + sys.executable + "\n"
      "import json, os, sys, time\n"
      f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(),"
      f" 'tfds': os.environ.get('TFDS_DATA_DIR'), 'xla': os.environ.get('XLA_FLAGS')}},"
      f" open({str(record)!r}, 'w'))\n"
      "time.sleep(60)\n")
  fake_python.chmod(0o755)
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  try:
    _run_and_stop(run_script, stop_script, env, home, record, odd)
  finally:  # never leave the fake trainer behind
    pid_file = home / "sagan_jax.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
      os.kill(int(pid_file.read_text()), 9)


def _run_and_stop(run_script, stop_script, env, home, record, odd):
  r = subprocess.run([BASH, "-c", run_script], env=env, capture_output=True, text=True,
                     timeout=30)
  assert r.returncode == 0, r.stderr
  assert "started pid" in r.stdout
  deadline = time.time() + 20
  while not record.exists() or not record.read_text():
    assert time.time() < deadline, "the fake training process never started"
    time.sleep(0.1)
  got = json.loads(record.read_text())
  assert got["argv"] == ["-m", "sagan_jax.main", "--config", CONFIG, "--workdir", WORKDIR, odd]
  assert got["cwd"] == str(home / "sagan_jax")
  assert got["tfds"] == "gs://b/tfds" and got["xla"] == "--a=1 --b"
  pid = int((home / "sagan_jax.pid").read_text())
  assert _alive(pid)

  # A second run refuses while the first is alive.
  r = subprocess.run([BASH, "-c", run_script], env=env, capture_output=True, text=True,
                     timeout=30)
  assert r.returncode != 0 and "already running" in r.stderr

  r = subprocess.run([BASH, "-c", stop_script], env=env, capture_output=True, text=True,
                     timeout=30)
  assert r.returncode == 0, r.stderr
  assert "stopped" in r.stdout
  assert not _alive(pid)
  assert not (home / "sagan_jax.pid").exists()
  r = subprocess.run([BASH, "-c", stop_script], env=env, capture_output=True, text=True,
                     timeout=30)
  assert "not running" in r.stdout


def test_gpu_dry_run(bare_path):
  out = dry("gpu.sh", "all", "--dry-run", "--workdir", WORKDIR, "--gpus", "0,1,2,3",
            "--tfds-data-dir", "/data/tfds", "--", "--config.seed=3", path=bare_path).stdout
  assert lines_with(out, "-m venv")
  assert lines_with(out, "pip install -r", "requirements.txt")
  assert lines_with(out, "pip install -U 'jax[cuda12]'")
  assert f"cd {REPO}" in out.splitlines()
  [main] = lines_with(out, "python -m sagan_jax.main")
  assert "CUDA_VISIBLE_DEVICES=0,1,2,3" in main and "TFDS_DATA_DIR=/data/tfds" in main
  assert f"python -m sagan_jax.main --config {CONFIG} --workdir {WORKDIR} --config.seed=3" in main


def test_gpu_detached_dry_run_and_relative_workdir(bare_path):
  out = dry("gpu.sh", "run", "--dry-run", "--workdir", "runs/x", "--log", "/tmp/l.log",
            path=bare_path).stdout
  [main] = lines_with(out, "sagan_jax.main")
  assert main.startswith("nohup ") and ">> /tmp/l.log" in main and "/tmp/l.log.pid" in main
  assert f"--workdir {REPO}/runs/x" in main  # relative to where it was called


def test_slurm_dry_run(bare_path):
  out = dry("slurm.sbatch", "--dry-run", "--config", CONFIG, "--workdir", "/shared/run",
            "--tfds-data-dir", "/shared/tfds", "--", "--config.seed=1", path=bare_path).stdout
  assert lines_with(out, "export JAX_COORDINATOR_ADDRESS=", "scontrol show hostnames", ":61440")
  assert "export TFDS_DATA_DIR=/shared/tfds" in out.splitlines()
  [srun] = lines_with(out, "srun ")
  assert srun.startswith("srun --ntasks-per-node=1 --kill-on-bad-exit=1 ")
  assert f"--chdir={REPO}" in srun
  assert (f"python3 -m sagan_jax.main --config {CONFIG} --workdir /shared/run "
          "--config.seed=1") in srun


def test_slurm_job_with_fake_srun(tmp_path):
  """Runs slurm.sbatch as SLURM would (fake scontrol/srun); the environment
  srun hands the tasks makes sagan_jax.distributed pick one task per node."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-a07\\ngpu-a08\\n'\n")
  (bin_dir / "srun").write_text(
      "#!/bin/sh\necho \"COORD=$JAX_COORDINATOR_ADDRESS TFDS=$TFDS_DATA_DIR\"\n"
      "for a in \"$@\"; do echo \"ARG=$a\"; done\n")
  for f in ("scontrol", "srun"):
    (bin_dir / f).chmod(0o755)
  repo = tmp_path / "repo"
  (repo / "sagan_jax").mkdir(parents=True)
  (repo / "sagan_jax" / "main.py").write_text("")
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "5000",
         "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_SUBMIT_DIR": str(repo),
         "SLURM_CPUS_PER_TASK": "16", "TFDS_DATA_DIR": "/shared/tfds"}
  r = subprocess.run([BASH, os.path.join(LAUNCH, "slurm.sbatch"), "--workdir", "/shared/run"],
                     env=env, capture_output=True, text=True, timeout=30)
  assert r.returncode == 0, r.stderr
  port = 61440 + 5000 % 4096
  assert f"COORD=gpu-a07:{port} TFDS=/shared/tfds" in r.stdout
  args = [l[4:] for l in r.stdout.splitlines() if l.startswith("ARG=")]
  assert args[:5] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", f"--chdir={repo}",
                      "--cpus-per-task=16", "python3"]
  assert args[5:] == ["-m", "sagan_jax.main", "--config", CONFIG, "--workdir", "/shared/run"]
  # What srun then sets for task 1 of 2 (one per node), plus the exported address:
  task_env = {"SLURM_JOB_ID": "5000", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
              "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "gpu-a[07-08]",
              "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
              "JAX_COORDINATOR_ADDRESS": f"gpu-a07:{port}"}
  plan = distributed.should_initialize(task_env)
  assert plan.kwargs == {"coordinator_address": f"gpu-a07:{port}", "num_processes": 2,
                         "process_id": 1, "cluster_detection_method": "deactivate"}
  # Without the export, sagan_jax.distributed derives the same address.
  del task_env["JAX_COORDINATOR_ADDRESS"]
  assert distributed.should_initialize(task_env).kwargs["coordinator_address"] == \
      f"gpu-a07:{port}"


def test_dry_run_never_calls_the_tools(tmp_path, bare_path):
  """Trap versions of gcloud/srun/... on PATH record any call: there must be none."""
  trap_dir = tmp_path / "trap"
  trap_dir.mkdir()
  calls = tmp_path / "calls"
  for tool in ("gcloud", "srun", "scontrol", "git", "tar", "python3", "pip", "setsid"):
    p = trap_dir / tool
    p.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\nexit 1\n")
    p.chmod(0o755)
  path = f"{trap_dir}:{bare_path}"
  for script, args in (("tpu.sh", ["launch", "--workdir", WORKDIR]),
                       ("tpu.sh", ["status"]), ("tpu.sh", ["stop"]),
                       ("tpu.sh", ["delete"]), ("tpu.sh", ["logs"]),
                       ("gpu.sh", ["all", "--workdir", WORKDIR]),
                       ("slurm.sbatch", ["--workdir", WORKDIR])):
    dry(script, "--dry-run", *args, path=path)
  assert not calls.exists(), calls.read_text()


# ------------------------------------------------------------ cost table


def run_cost_table(*args):
  r = subprocess.run([sys.executable, os.path.join(LAUNCH, "cost_table.py"), *args],
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  return r.stdout


def test_cost_table_numbers():
  out = run_cost_table()
  assert "| slice | chips (hosts) |" in out
  # v4-8: 4 chips x 275 TFLOP/s x 35% = 385 TFLOP/s; 160e9 x 256 / 385e12 = 0.106 s/iter;
  # 1M iterations = 29.6 h; x 4 chips x $3.22 = $381; spot 40% = $152.
  [row] = lines_with(out, "| v4-8 |")
  assert row == "| v4-8 | 4 (1) | 64 | 275 | 0.106 | 30 h | $381 | $152 |"
  [row] = lines_with(out, "| 8x H100 (1 node) |")
  assert "| 0.015 | 4.1 h |" in row
  assert "† fewer than 8 images per chip" in out
  # Halving MFU doubles the time; a price override shows up.
  slow = run_cost_table("--mfu", "0.175", "--price", "v4=1.0")
  [row] = lines_with(slow, "| v4-8 |")
  assert "| 0.213 | 2.5 d | $236 |" in row  # 59.1 h x 4 chips x $1


def test_readme_table_is_the_scripts_output():
  with open(os.path.join(LAUNCH, "README.md")) as f:
    readme = f.read()
  m = re.search(r"<!-- cost_table.py -->\n(.*?)<!-- /cost_table.py -->", readme, re.S)
  assert m, "README.md lacks the <!-- cost_table.py --> block"
  assert m.group(1).strip() == run_cost_table().strip(), (
      "launch/README.md's table is stale: paste `python launch/cost_table.py` into it")
