"""train_and_evaluate across two real CPU processes equals a one-process run.

Two local processes (one CPU device each, gloo collectives) train the tiny
config for 3 steps in one shared workdir. The digits source hands each
process its contiguous half of every global batch, so the job sees the same
global batches as a single process with a 2-device mesh, which is the
reference (run in this process while the two children run). Also checked:
only process 0 prints progress and writes the PNG grid and the event file,
the Orbax checkpoint of the last step is complete and restores in a single
process, and the multi-process preemption poll (a stop request seen by one
process stops both) works.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from sagan_jax import checkpointing, parallel, train
from sagan_jax import state as state_lib
from tests.conftest import free_port, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
TIMEOUT_S = 240  # per subprocess pair; nothing may hang the test run
OVERRIDES = dict(total_steps=STEPS, checkpoint_every=STEPS, sample_every=0, log_every=1)

# Runs in each child: argv = port, process id, workdir, output npz, overrides (JSON).
WORKER = textwrap.dedent("""
    import json, sys, time
    t0 = time.time()
    port, pid, workdir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    overrides = json.loads(sys.argv[5])
    import jax
    from sagan_jax import distributed
    plan = distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    assert plan.init, plan
    t_init = time.time()

    import numpy as np
    from flax import traverse_util
    from sagan_jax import images, stopping, train
    from tests.conftest import load_config  # also shares the compile cache

    # Record what the loop does without changing it.
    history, saved_pngs = [], []
    real_make_train_step, real_save_png = train.make_train_step, images.save_png

    def recording_make_train_step(*args, **kwargs):
      fn = real_make_train_step(*args, **kwargs)
      def step(state, batch, rng):
        state, metrics = fn(state, batch, rng)
        history.append(metrics)
        return state, metrics
      return step

    def recording_save_png(path, *args, **kwargs):
      saved_pngs.append(path)
      return real_save_png(path, *args, **kwargs)

    train.make_train_step = recording_make_train_step
    images.save_png = recording_save_png

    config = load_config("tiny", **overrides)
    t_train = time.time()
    state = train.train_and_evaluate(config, workdir)
    t_done = time.time()
    host = jax.device_get(state)
    arrays = {}
    for name in ("g", "d"):
      for k, v in traverse_util.flatten_dict(getattr(host, name)["params"], sep="/").items():
        arrays[f"{name}/{k}"] = np.asarray(v)
    np.savez(out, **arrays)
    # The multi-process preemption poll (allgather of the SIGTERM flags): a
    # request seen by process 1 alone stops both.
    with stopping.Preemption() as preempt:
      polled = preempt.should_stop(10)
      preempt.requested = pid == 1
      agreed = preempt.should_stop(20)
    print("RESULT " + json.dumps({
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "step": int(host.step),
        "metrics": [{k: float(v) for k, v in jax.device_get(m).items()} for m in history],
        "saved_pngs": saved_pngs,
        "polled_stop": bool(polled),
        "agreed_stop": bool(agreed),
        "seconds": {"initialize": t_init - t0, "imports": t_train - t_init,
                    "train_and_evaluate": t_done - t_train, "total": time.time() - t0},
    }), flush=True)
    jax.distributed.shutdown()
""")


def _child_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_", "MEGASCALE_",
                              "TPU_WORKER", "SAGAN_JAX"))}
  # One CPU device per process: drop conftest's 4-device flag.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=1"])
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def _start_two_processes(workdir: str, outdir: str) -> list[subprocess.Popen]:
  port = free_port()
  # Each process compiles into an empty cache of its own: with the suite's shared cache one
  # process could load a program the other compiled anew, and the two then hung in their
  # first collective (seen on jaxlib 0.12.1, the test's processes killed at the time limit).
  return [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(port), str(i), workdir,
       os.path.join(outdir, f"params_{i}.npz"), json.dumps(OVERRIDES)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**_child_env(), "SAGAN_TEST_COMPILE_CACHE": os.path.join(outdir, f"cache_{i}")})
      for i in range(2)]


def _kill(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.communicate()


def _collect(procs: list[subprocess.Popen], start: float) -> list[dict]:
  outs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(1.0, TIMEOUT_S - (time.time() - start)))
      outs.append(out)
  except subprocess.TimeoutExpired:
    pytest.fail(f"two-process training did not finish in {TIMEOUT_S}s")
  finally:
    _kill(procs)
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-5000:]}"
  results = []
  for i, out in enumerate(outs):
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert lines, f"process {i} printed no result:\n{out[-5000:]}"
    results.append(json.loads(lines[-1][len("RESULT "):]))
    results[-1]["output"] = out
  return results


def _flat_params(state) -> dict[str, np.ndarray]:
  from flax import traverse_util
  host = jax.device_get(state)
  out = {}
  for name in ("g", "d"):
    for k, v in traverse_util.flatten_dict(getattr(host, name)["params"], sep="/").items():
      out[f"{name}/{k}"] = np.asarray(v)
  return out


def _reference(workdir: str, monkeypatch) -> tuple[state_lib.TrainState, list[dict]]:
  """One process, 2 virtual devices: the same global batches and mesh size."""
  history = []
  real = train.make_train_step

  def recording(*args, **kwargs):
    fn = real(*args, **kwargs)

    def step(state, batch, rng):
      state, metrics = fn(state, batch, rng)
      history.append(metrics)
      return state, metrics
    return step

  monkeypatch.setattr(train, "make_train_step", recording)
  config = load_config("tiny", **OVERRIDES)
  state = train.train_and_evaluate(config, workdir, mesh=parallel.make_mesh(2))
  monkeypatch.setattr(train, "make_train_step", real)
  return state, [{k: float(v) for k, v in jax.device_get(m).items()} for m in history]


@pytest.mark.skipif(len(jax.devices()) < 2, reason="the reference needs 2 (virtual) devices")
def test_two_process_training_matches_one_process(tmp_path, monkeypatch):
  shared = tmp_path / "multi"
  start = time.time()
  procs = _start_two_processes(str(shared), str(tmp_path))
  try:  # the reference runs meanwhile
    ref_state, ref_hist = _reference(str(tmp_path / "single"), monkeypatch)
  except BaseException:
    _kill(procs)
    raise
  results = _collect(procs, start)
  config = load_config("tiny", **OVERRIDES)

  assert sorted(r["process_index"] for r in results) == [0, 1]
  for r in results:
    assert r["process_count"] == 2 and r["device_count"] == 2
    assert r["step"] == STEPS and len(r["metrics"]) == STEPS
    assert r["polled_stop"] is False and r["agreed_stop"] is True
  by_pid = {r["process_index"]: r for r in results}

  # Both processes hold the same replicated state, bit for bit, and the same metrics.
  p0, p1 = (dict(np.load(tmp_path / f"params_{i}.npz")) for i in range(2))
  assert p0.keys() == p1.keys() and p0
  for k in p0:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  assert by_pid[0]["metrics"] == by_pid[1]["metrics"]

  # Same global batches as one process: step 1 differs only by reduction order.
  multi_hist = by_pid[0]["metrics"]
  for k in ("d_loss", "g_loss", "d_real", "d_fake"):
    np.testing.assert_allclose(multi_hist[0][k], ref_hist[0][k], rtol=1e-5, atol=1e-5,
                               err_msg=k)
  for a, b in zip(multi_hist[1:], ref_hist[1:]):
    for k in ("d_loss", "g_loss", "d_real", "d_fake"):
      np.testing.assert_allclose(a[k], b[k], rtol=5e-3, atol=1e-3, err_msg=k)
  # Adam moves a weight by up to ~lr per step whatever its gradient's size, so a
  # near-zero gradient whose sign depends on reduction order may differ by that much.
  ref = _flat_params(ref_state)
  assert ref.keys() == p0.keys()
  atol = 3 * config.optim.d_lr
  for k in ref:
    np.testing.assert_allclose(p0[k], ref[k], rtol=1e-3, atol=atol, err_msg=k)

  # Only the chief prints progress and writes the PNG grid and the TensorBoard events.
  assert f"step {STEPS}/{STEPS} |" in by_pid[0]["output"]
  assert "step 1/" not in by_pid[1]["output"]
  assert by_pid[0]["saved_pngs"] == [str(shared / "samples" / f"step_{STEPS:07d}.png")]
  assert by_pid[1]["saved_pngs"] == []
  assert os.listdir(shared / "samples") == [f"step_{STEPS:07d}.png"]
  events = glob.glob(str(shared / "**" / "events.out.tfevents.*"), recursive=True)
  assert len(events) == 1, events
  assert os.path.getsize(events[0]) > 0

  # The checkpoint of the last step is complete (no temporary directories) and
  # restores in one process to exactly the state the processes ended with.
  ckpt_root = shared / "checkpoints"
  assert sorted(os.listdir(ckpt_root)) == [str(STEPS)], os.listdir(ckpt_root)
  assert os.path.isdir(ckpt_root / str(STEPS) / "state")
  assert os.path.isdir(ckpt_root / str(STEPS) / "config")
  ckpt = checkpointing.Checkpointer(str(shared), config)
  assert ckpt.latest_step() == STEPS
  assert checkpointing.read_config(str(shared)).total_steps == STEPS
  mesh = parallel.make_mesh(2)
  _, template = state_lib.abstract_state(config, mesh)
  restored = ckpt.restore(template).state
  assert int(restored.step) == STEPS
  got = _flat_params(restored)
  for k in p0:
    np.testing.assert_array_equal(got[k], p0[k], err_msg=k)
