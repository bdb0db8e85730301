"""Real damage to real runs: kill -9, damaged checkpoints, divergence, a failing disk.

The kill campaign runs the training command in a separate process, kills it
with SIGKILL at many moments (starting up, mid-training, right after a save
started, i.e. while Orbax writes in the background) and relaunches it until
it finishes; the final parameters must equal, bit for bit, those of an
uninterrupted run. A handful of kills run by default, 24 with `pytest -m slow`.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import checkpointing, errors, integrity, parallel, train
from tests.conftest import ROOT, load_config
from tests.test_cli import _env as _cli_env

# Checkpoints every 2 steps, keep 2: saves (and keep-N deletions) are frequent enough to hit.
OVERRIDES = dict(checkpoint_every=2, keep_checkpoints=2, log_every=1, sample_every=0,
                 ema__start_step=3)


def _cli_overrides(total_steps: int) -> list[str]:
  flat = {**OVERRIDES, "total_steps": total_steps, "mesh__num_devices": 1}
  return [f"--config.{k.replace('__', '.')}={v}" for k, v in flat.items()]


def _env():
  """The test process's device count: XLA's CPU code (so its float results) depends on
  how many CPU devices the process has, even for a one-device mesh."""
  return {**_cli_env(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def _state(workdir: str, step: int | None = None):
  return jax.device_get(checkpointing.load(str(workdir), step).state)


def _assert_bit_identical(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """reference(total): the workdir of an uninterrupted in-process run of `total` steps
  that keeps every checkpoint."""
  runs = {}

  def get(total_steps: int) -> str:
    if total_steps not in runs:
      wd = str(tmp_path_factory.mktemp(f"reference{total_steps}"))
      config = load_config("tiny", total_steps=total_steps,
                           **{**OVERRIDES, "keep_checkpoints": total_steps})
      train.train_and_evaluate(config, wd, mesh=parallel.make_mesh(1))
      runs[total_steps] = wd
    return runs[total_steps]

  return get


# ----------------------------------------------------------------------------
# kill -9

class _Launch:
  """One run of the training command, killed by `trigger` (or left to finish)."""

  def __init__(self, workdir: str, total_steps: int):
    cmd = [sys.executable, "-m", "sagan_jax.main", "--config", "configs/tiny.py",
           "--workdir", workdir, *_cli_overrides(total_steps)]
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self.watchdog = threading.Timer(600, self.proc.kill)
    self.watchdog.start()

  def run(self, trigger) -> bool:
    """Reads output until trigger(line) says kill (True) or the process ends (False)."""
    if isinstance(trigger, float):   # a time after launch
      timer = threading.Timer(trigger, self.proc.send_signal, (signal.SIGKILL,))
      timer.start()
    for line in self.proc.stdout:
      self.lines.append(line)
      if callable(trigger) and trigger(line):
        self.proc.send_signal(signal.SIGKILL)
        break
    self.proc.wait()
    self.watchdog.cancel()
    if isinstance(trigger, float):
      timer.cancel()
    killed = self.proc.returncode == -signal.SIGKILL
    self.proc.stdout.close()
    return killed

  @property
  def output(self) -> str:
    return "".join(self.lines)


def _kill_plan(kinds: list[str], rng: random.Random) -> list[tuple[str, object]]:
  """(kind, trigger) per kill: at a time after launch ('startup'), right after the
  restore ('resume'), a few steps in ('step'), right after this launch's second or
  third save started, i.e. while Orbax writes it ('save')."""
  triggers = {
      "startup": lambda: rng.uniform(0.5, 6.0),
      "resume": lambda: _after_lines(("resuming from", "Training "), 1, rng.uniform(0, 2.0)),
      "step": lambda: _after_lines(("step ",), rng.randint(3, 6), 0.0),
      "save": lambda: _after_lines(("saving checkpoint",), rng.choice((2, 3)),
                                   rng.choice((0.0, 0.0, 0.05, 0.2))),
  }
  return [(kind, triggers[kind]()) for kind in kinds]


def _after_lines(prefixes: tuple[str, ...], count: int, delay: float):
  seen = []

  def trigger(line: str) -> bool:
    if line.startswith(prefixes):
      seen.append(line)
    if len(seen) >= count:
      time.sleep(delay)
      return True
    return False

  return trigger


def _complete_steps(workdir: str) -> tuple[int, ...]:
  """Step directories that exist (renamed by Orbax, i.e. complete), read independently."""
  d = os.path.join(workdir, "checkpoints")
  return tuple(sorted(int(n) for n in os.listdir(d) if n.isdigit())) if os.path.isdir(d) else ()


def _kill_campaign(workdir: str, total_steps: int, kinds: list[str], seed: int) -> dict:
  """Kills and relaunches until the run ends; returns how the kills went."""
  rng = random.Random(seed)
  tally: dict[str, int] = {"kills": 0, "inside_save": 0, "resumed_from_checkpoint": 0}
  plan = _kill_plan(kinds, rng)
  for kind, trigger in plan + [("finish", None)]:
    expected = _complete_steps(workdir)
    started = time.time()
    launch = _Launch(workdir, total_steps)
    killed = launch.run(trigger)
    out = launch.output
    if "Training " in out:   # got past the restore: it must have said where it resumed
      if expected:
        assert f"resuming from step {expected[-1]} " in out, (expected, out)
        tally["resumed_from_checkpoint"] += 1
      else:
        assert "resuming from" not in out, out
    assert "Traceback" not in out, out
    if kind == "finish" or not killed:
      assert launch.proc.returncode == 0, out
      assert f"step {total_steps}/{total_steps}" in out, out
      tally["finished_early"] = int(kind != "finish")
      break
    tally["kills"] += 1
    tally[kind] = tally.get(kind, 0) + 1
    cdir = checkpointing.checkpoint_dir(workdir)
    listing = integrity.list_dir(cdir)
    # A temporary directory this launch wrote to: the kill landed inside a save.
    tally["inside_save"] += any(os.path.getmtime(cdir / name) >= started
                                for name in listing.unfinished)
  return tally


def test_kill9_a_handful_of_times_then_bit_identical(tmp_path, reference):
  total = 8   # (the reference run of 8 steps is shared with other tests)
  tally = _kill_campaign(str(tmp_path), total, ["startup", "save", "resume"], seed=1)
  print("kill -9 campaign (default):", tally)
  assert tally["kills"] == 3 and tally["resumed_from_checkpoint"] >= 1
  _assert_bit_identical(_state(tmp_path, total), _state(reference(total), total))


@pytest.mark.slow
def test_kill9_campaign_of_24_kills_then_bit_identical(tmp_path, reference):
  total = 80
  kinds = ["save", "step", "startup", "save", "resume", "step"] * 4
  tally = _kill_campaign(str(tmp_path), total, kinds, seed=2)
  print("kill -9 campaign (slow):", tally)
  assert tally["kills"] == 24
  assert tally["inside_save"] >= 1      # some kills landed while a save was being written
  assert tally["resumed_from_checkpoint"] >= 12
  _assert_bit_identical(_state(tmp_path, total), _state(reference(total), total))


# ----------------------------------------------------------------------------
# Damaged checkpoints

@pytest.fixture(scope="module")
def two_checkpoints(reference, tmp_path_factory):
  """A run with checkpoints at steps 2 and 4 (the first half of the reference run), and
  a config of its architecture."""
  wd = str(tmp_path_factory.mktemp("two_checkpoints") / "run")
  shutil.copytree(reference(8), wd, ignore=shutil.ignore_patterns("6", "8"))
  assert _complete_steps(wd) == (2, 4)
  return wd, load_config("tiny", total_steps=4, **OVERRIDES)


def _copy(run, tmp_path) -> str:
  wd = str(tmp_path / "run")
  shutil.copytree(run, wd)
  return wd


def _biggest_state_file(step_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _biggest_state_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete(step_dir):
  os.remove(_biggest_state_file(step_dir))


def _garbage(step_dir):
  path = _biggest_state_file(step_dir)
  with open(path, "r+b") as f:   # same size, different bytes in the middle
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(random.Random(0).getrandbits(8) for _ in range(64)))


def _garbage_manifest(step_dir):
  with open(os.path.join(step_dir, integrity.MANIFEST), "w") as f:
    f.write("{not json")


def _garbage_config(step_dir):
  path = os.path.join(step_dir, "config", "metadata")
  with open(path, "r+b") as f:   # valid-looking JSON start, same size
    f.write(b'{"model": 7, ')


DAMAGE = {
    "truncated file": (_truncate, "is truncated"),
    "deleted file": (_delete, "is missing"),
    "garbage in a file": (_garbage, "is corrupt"),
    "garbage manifest": (_garbage_manifest, f"{integrity.MANIFEST} is unreadable"),
    "garbage config": (_garbage_config, "config/metadata is corrupt"),
}


def _template(config):
  from sagan_jax import state as state_lib
  template = state_lib.abstract_state(config, parallel.make_mesh(1))[1]
  return lambda saved: template


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_previous(two_checkpoints, tmp_path, capsys,
                                                          damage):
  run, config = two_checkpoints
  wd = _copy(run, tmp_path)
  harm, problem = DAMAGE[damage]
  harm(os.path.join(wd, "checkpoints", "4"))
  restored = checkpointing.find(wd, _template(config), config=config)
  assert restored.step == 2
  err = capsys.readouterr().err
  assert "checkpoint step 4" in err and problem in err and "trying the previous one" in err
  _assert_bit_identical(restored.state, _state(run, 2))
  # The step asked for explicitly is an error, not a fallback.
  with pytest.raises(errors.CheckpointError, match=f"checkpoint step 4 .*{problem}"):
    checkpointing.load(wd, step=4)


@pytest.mark.slow
def test_resume_past_a_damaged_checkpoint_is_bit_identical(two_checkpoints, tmp_path, capsys,
                                                           reference):
  run, _ = two_checkpoints
  wd = _copy(run, tmp_path)
  _truncate(os.path.join(wd, "checkpoints", "4"))
  config = load_config("tiny", total_steps=6, **OVERRIDES)
  train.train_and_evaluate(config, wd, mesh=parallel.make_mesh(1))
  out = capsys.readouterr()
  assert "resuming from step 2 " in out.out and "moved the damaged checkpoint step 4" in out.err
  listing = integrity.list_dir(checkpointing.checkpoint_dir(wd))
  assert listing.steps == (4, 6) and listing.aside == ("4.damaged",)  # kept, not deleted
  _assert_bit_identical(_state(wd, 6), _state(reference(8), 6))   # the kill test's reference


def test_no_intact_checkpoint_is_one_clear_error(two_checkpoints, tmp_path):
  run, config = two_checkpoints
  wd = _copy(run, tmp_path)
  _garbage(os.path.join(wd, "checkpoints", "4"))
  _delete(os.path.join(wd, "checkpoints", "2"))
  with pytest.raises(errors.CheckpointError,
                     match=r"no intact checkpoint .*step 4: .*corrupt.*step 2: .*missing"):
    train.train_and_evaluate(config, wd, mesh=parallel.make_mesh(1))
  assert _complete_steps(wd) == (2, 4)   # nothing deleted


def test_stray_temporary_directory_is_reported_and_never_restored(two_checkpoints, tmp_path,
                                                                  capsys):
  run, config = two_checkpoints
  wd = _copy(run, tmp_path)
  # As a kill during the save of step 6 leaves it: a complete-looking copy, never renamed.
  shutil.copytree(os.path.join(wd, "checkpoints", "4"),
                  os.path.join(wd, "checkpoints", "6" + integrity.TMP_MARK))
  restored = checkpointing.find(wd, _template(config), config=config)
  assert restored.step == 4
  assert f"ignoring {wd}/checkpoints/6{integrity.TMP_MARK}: an interrupted save" in (
      capsys.readouterr().err)


def test_checkpoint_holding_nan_is_skipped(two_checkpoints, tmp_path, capsys):
  run, config = two_checkpoints
  wd = _copy(run, tmp_path)
  state = _state(run, 4)
  bad = state.replace(g={**state.g, "params": jax.tree.map(lambda x: x * np.nan,
                                                           state.g["params"])})
  ckpt = checkpointing.Checkpointer(wd, config)
  ckpt.save(6, bad)     # saved behind the train loop's back: its manifest is valid
  ckpt.finish()
  assert checkpointing.find(wd, _template(config), config=config).step == 4
  assert "checkpoint step 6" in capsys.readouterr().err


def test_checkpoint_without_manifest_is_restored_unverified(two_checkpoints, tmp_path, capsys):
  run, config = two_checkpoints
  wd = _copy(run, tmp_path)
  os.remove(os.path.join(wd, "checkpoints", "4", integrity.MANIFEST))   # an older sagan_jax's
  restored = checkpointing.find(wd, _template(config), config=config)
  assert restored.step == 4
  assert "has no sagan_manifest.json" in capsys.readouterr().err
  _assert_bit_identical(restored.state, _state(run, 4))


# ----------------------------------------------------------------------------
# Determinism (the kill tests compare a separate process's run with an in-process one)

@pytest.mark.slow
def test_same_config_and_seed_twice_is_bit_identical(two_checkpoints, tmp_path):
  run, config = two_checkpoints
  train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  _assert_bit_identical(_state(tmp_path, 4), _state(run, 4))


# ----------------------------------------------------------------------------
# Divergence

def _poison(monkeypatch, *, first_noise_only: bool):
  """Makes train_step put NaN into G's weights from step 3 on (first_noise_only: while
  the noise key is the run's first, PRNGKey(seed) = [0, seed]; also into the D loss)."""
  real_step = train.train_step

  def poisoned(state, batch, rng, **kw):
    new_state, metrics = real_step(state, batch, rng, **kw)
    if first_noise_only:
      bad = (state.step >= 3) & (rng[0] == 0)
    else:
      bad = state.step >= 2
    nan = jnp.where(bad, jnp.nan, 0.0)
    g = {**new_state.g, "params": jax.tree.map(lambda x: x + nan, new_state.g["params"])}
    if first_noise_only:   # (losses are computed before the update: finite otherwise)
      metrics = {**metrics, "d_loss": metrics["d_loss"] + nan}
    return new_state.replace(g=g), metrics

  monkeypatch.setattr(train, "train_step", poisoned)


def _saved_states_are_finite(wd: str):
  for s in _complete_steps(wd):
    assert checkpointing.all_finite(_state(wd, s)), s


def test_nonfinite_parameters_are_never_saved(tmp_path, monkeypatch):
  # The losses stay finite: only the check of the state before a save sees it.
  config = load_config("tiny", total_steps=6, **{**OVERRIDES, "checkpoint_every": 1,
                                                 "log_every": 100})
  _poison(monkeypatch, first_noise_only=False)
  with pytest.raises(errors.NonFiniteLossError,
                     match=r"non-finite parameters or optimizer state at step 3\..*\(step 2\)"):
    train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  assert _complete_steps(str(tmp_path))[-1] == 2
  _saved_states_are_finite(str(tmp_path))


@pytest.mark.slow
def test_rollback_gives_up_after_max_rollbacks(tmp_path, monkeypatch, capsys):
  config = load_config("tiny", total_steps=6, on_nan="rollback", max_rollbacks=1,
                       **{**OVERRIDES, "checkpoint_every": 1, "log_every": 100})
  _poison(monkeypatch, first_noise_only=False)   # diverges whatever the noise
  with pytest.raises(errors.NonFiniteLossError, match=r"at step 3 after 1 rollbacks"):
    train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  assert "rollback 1 of at most 1" in capsys.readouterr().out
  _saved_states_are_finite(str(tmp_path))


def _rollback_config():
  return load_config("tiny", total_steps=8, on_nan="rollback", max_rollbacks=2, **OVERRIDES)


def test_rollback_reseeds_the_noise_and_finishes(tmp_path, monkeypatch, capsys):
  _poison(monkeypatch, first_noise_only=True)
  train.train_and_evaluate(_rollback_config(), str(tmp_path), mesh=parallel.make_mesh(1))
  out = capsys.readouterr().out
  assert ("rollback 1 of at most 2: non-finite values {'d_loss': nan} at step 4; back to "
          "step 2 with new noise") in out
  assert "rollback 2" not in out and "step 8/8" in out
  assert checkpointing.load(str(tmp_path)).rollbacks == 1
  _saved_states_are_finite(str(tmp_path))


@pytest.mark.slow
def test_resumed_after_a_rollback_is_bit_identical(tmp_path, monkeypatch):
  _poison(monkeypatch, first_noise_only=True)
  config, mesh = _rollback_config(), parallel.make_mesh(1)
  train.train_and_evaluate(config, str(tmp_path / "a"), mesh=mesh)
  # Stopped after the rollback and resumed: the same bits (the count is in the checkpoint).
  train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh, stop_after=6)
  train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh)
  _assert_bit_identical(_state(tmp_path / "b", 8), _state(tmp_path / "a", 8))


# ----------------------------------------------------------------------------
# Disk

@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "the disk is full"),
    pytest.param(errno.EROFS, "the filesystem is read-only", marks=pytest.mark.slow)])
def test_failed_save_stops_the_run_and_keeps_the_checkpoints(tmp_path, monkeypatch, code,
                                                             reason):
  config = load_config("tiny", total_steps=8, **{**OVERRIDES, "keep_checkpoints": 1})
  real = integrity.write_manifest

  def failing(step_dir):
    if step_dir.name.startswith("4"):
      raise OSError(code, os.strerror(code), str(step_dir))
    real(step_dir)

  monkeypatch.setattr(integrity, "write_manifest", failing)
  with pytest.raises(errors.CheckpointError,
                     match=f"saving checkpoint step 4 .* failed: {reason}.*resumes from step 2"):
    train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))
  listing = integrity.list_dir(checkpointing.checkpoint_dir(str(tmp_path)))
  assert listing.steps == (2,)                        # keep=1, yet step 2 was not deleted
  assert integrity.check(checkpointing.checkpoint_dir(str(tmp_path)) / "2").ok


@pytest.fixture
def small_tmpfs(tmp_path):
  """A 9 MiB tmpfs (one tiny checkpoint is ~5.5 MB); skipped where mount is not allowed."""
  mnt = tmp_path / "small_disk"
  mnt.mkdir()
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mnt)],
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
  yield mnt
  subprocess.run(["umount", "--lazy", str(mnt)], check=True)   # files may still be open


@pytest.mark.slow
def test_full_disk_for_real(small_tmpfs):
  wd = str(small_tmpfs / "run")
  p = subprocess.run([sys.executable, "-m", "sagan_jax.main", "--config", "configs/tiny.py",
                      "--workdir", wd, *_cli_overrides(8), "--config.keep_checkpoints=3"],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 2, p.stderr
  assert p.stderr.startswith("error: saving checkpoint step 4") and p.stderr.count("\n") == 1
  assert "the disk is full" in p.stderr and "resumes from step 2" in p.stderr
  assert integrity.list_dir(checkpointing.checkpoint_dir(wd)).steps == (2,)
  assert integrity.check(checkpointing.checkpoint_dir(wd) / "2").ok
