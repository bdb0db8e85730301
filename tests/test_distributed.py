"""Tests for sagan_jax.distributed: the decision table and a real 2-process job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from sagan_jax import distributed
from tests.conftest import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SLURM_STEP = {  # what srun sets for task 3 of 4, two tasks per node
    "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[007-008]",
    "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
}


def plan(env, *args, **kwargs):
  return distributed.should_initialize(env, *args, **kwargs)


# ---------------------------------------------------------------- decisions


def test_plain_host_is_skipped():
  p = plan({"HOME": "/root", "PATH": "/usr/bin"})
  assert not p.init and p.kwargs == {}


def test_explicit_arguments_win():
  p = plan({}, "10.0.0.1:1234", 4, 2)
  assert p.init
  assert p.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                      "process_id": 2, "cluster_detection_method": "deactivate"}
  # Explicit values beat the environment.
  p = plan(SLURM_STEP, "10.0.0.1:1234", 8, 5)
  assert p.kwargs["num_processes"] == 8 and p.kwargs["process_id"] == 5


def test_explicit_single_process_is_skipped_even_under_slurm():
  assert not plan(SLURM_STEP, None, 1, None).init
  assert not plan({}, "127.0.0.1:1", 1, 0).init


def test_explicit_partial_is_filled_from_environment_or_left_to_jax():
  # Two tasks per node: JAX's SLURM detection fills count, id and the GPU.
  p = plan(SLURM_STEP, "head:5555")
  assert p.init and p.kwargs == {"coordinator_address": "head:5555"}
  # One task per node: filled here, all local devices visible.
  one_per_node = {**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}
  p = plan(one_per_node, "head:5555")
  assert p.kwargs == {"coordinator_address": "head:5555", "num_processes": 4,
                      "process_id": 3, "cluster_detection_method": "deactivate"}
  p = plan({}, None, 2, 1)  # coordinator unknown: JAX detection (or its error)
  assert p.init and p.kwargs == {"num_processes": 2, "process_id": 1}
  # Explicit flags inside a one-task SLURM job are not overridden by SLURM.
  p = plan({**SLURM_STEP, "SLURM_NTASKS": "1"}, "h:1", 2, 0)
  assert p.init and p.kwargs["num_processes"] == 2


def test_explicit_arguments_are_validated():
  with pytest.raises(ValueError, match="process_id"):
    plan({}, "h:1", 2, 2)
  with pytest.raises(ValueError, match="num_processes"):
    plan({}, "h:1", 0, 0)


def test_override_env():
  assert not plan({**SLURM_STEP, "SAGAN_JAX_DISTRIBUTED": "off"}).init
  p = plan({"SAGAN_JAX_DISTRIBUTED": "on"})
  assert p.init and p.kwargs == {}
  with pytest.raises(ValueError, match="SAGAN_JAX_DISTRIBUTED"):
    plan({"SAGAN_JAX_DISTRIBUTED": "maybe"})


def test_jax_coordinator_address_env():
  env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}
  p = plan(env)
  assert p.init and p.kwargs["coordinator_address"] == "h0:1234"
  assert (p.kwargs["num_processes"], p.kwargs["process_id"]) == (2, 1)
  assert not plan({**env, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}).init
  # Open MPI 5 / MPICH give no coordinator JAX can parse, but the ranks.
  p = plan({"JAX_COORDINATOR_ADDRESS": "h0:1", "PMI_SIZE": "8", "PMI_RANK": "7"})
  assert (p.kwargs["num_processes"], p.kwargs["process_id"]) == (8, 7)
  # Address only: JAX detects the rest (or raises, saying what is missing).
  p = plan({"JAX_COORDINATOR_ADDRESS": "h0:1"})
  assert p.init and p.kwargs == {"coordinator_address": "h0:1"}
  # What launch/slurm.sbatch exports: address from scontrol, ranks from srun.
  p = plan({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
            "JAX_COORDINATOR_ADDRESS": "gpu007:6000"})
  assert p.kwargs == {"coordinator_address": "gpu007:6000", "num_processes": 4,
                      "process_id": 3, "cluster_detection_method": "deactivate"}


def test_slurm_several_tasks_per_node_uses_jax_detection():
  p = plan(SLURM_STEP)
  assert p.init and p.kwargs == {}


def test_slurm_one_task_per_node_sees_all_local_devices():
  env = {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
         "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
         "SLURM_STEP_NODELIST": "rack1-n[07-08,11]-ib,login"}
  p = plan(env)
  assert p.init
  assert p.kwargs["coordinator_address"] == f"rack1-n07-ib:{65535 - 4095 + 123456 % 4096}"
  assert p.kwargs["num_processes"] == 2 and p.kwargs["process_id"] == 1
  assert p.kwargs["cluster_detection_method"] == "deactivate"
  p = plan({**env, "JAX_COORDINATOR_PORT": "7777"})
  assert p.kwargs["coordinator_address"] == "rack1-n07-ib:7777"


def test_slurm_single_task_or_outside_srun_is_skipped(caplog):
  assert not plan({**SLURM_STEP, "SLURM_NTASKS": "1"}).init
  batch = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
  with caplog.at_level("WARNING"):
    assert not plan(batch).init  # python run directly in the sbatch script
  assert "not inside `srun` (no SLURM_STEP_NODELIST)" in caplog.text


@pytest.mark.parametrize("nodelist,first", [
    ("node001", "node001"), ("node001,node002", "node001"),
    ("node[001-015],host2", "node001"), ("node[003,007-015]", "node003"),
    ("a-[9-10]-b,c[1-2]", "a-9-b"), ("n[0012]", "n0012"),
])
def test_first_slurm_host(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first


def test_open_mpi():
  env = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
         "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
         "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
  assert plan(env).init and plan(env).kwargs == {}
  assert not plan({**env, "OMPI_COMM_WORLD_SIZE": "1"}).init
  # One rank per host with a given address: all local devices.
  p = plan({**env, "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
            "JAX_COORDINATOR_ADDRESS": "h0:9"})
  assert p.kwargs == {"coordinator_address": "h0:9", "num_processes": 4,
                      "process_id": 2, "cluster_detection_method": "deactivate"}


def test_cloud_tpu_environment_variables():
  assert plan({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3", "TPU_WORKER_ID": "2"}).init
  assert plan({"MEGASCALE_NUM_SLICES": "2"}).init
  assert plan({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}).init
  # A one-host worker list says there is one process, even on a TPU VM.
  assert not plan({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"},
                  on_tpu_vm=True).init


def test_cloud_tpu_vm_leaves_the_host_count_to_jax():
  # No worker list (a gcloud ssh --worker=all launch): JAX reads the metadata
  # server, for a pod slice and a single host alike.
  p = plan({}, on_tpu_vm=True)
  assert p.init and p.kwargs == {}
  assert not plan({"SAGAN_JAX_DISTRIBUTED": "off"}, on_tpu_vm=True).init
  assert not plan({}, on_tpu_vm=False).init
  # Flags and launchers still come first.
  assert not plan({}, None, 1, None, on_tpu_vm=True).init
  p = plan({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}, on_tpu_vm=True)
  assert p.kwargs["cluster_detection_method"] == "deactivate"


# ------------------------------------------------- in-process, single host


def test_initialize_on_single_host_is_a_noop(monkeypatch):
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "PMI_", "MEGASCALE_", "TPU_WORKER",
                       "TPU_PROCESS", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                       "SAGAN_JAX")):
      monkeypatch.delenv(key)
  distributed._reset_for_tests()
  try:
    p1 = distributed.initialize()
    p2 = distributed.initialize("127.0.0.1:1", 2, 0)  # second call: no-op
    assert not p1.init and p2 is p1
    import jax
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1
    desc = distributed.describe()
    assert desc.startswith("1 process, ") and "(cpu" in desc
  finally:
    distributed._reset_for_tests()


def test_define_flags_twice():
  from absl import flags
  fv = flags.FlagValues()
  distributed.define_flags(fv)
  distributed.define_flags(fv)  # no DuplicateFlagError
  fv(["prog", "--coordinator=h:1", "--num_processes=2", "--process_id=1"])
  assert (fv.coordinator, fv.num_processes, fv.process_id) == ("h:1", 2, 1)


# ------------------------------------------------------ two real processes

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    # As in JAX versions without a default: initialize() must pick gloo, or
    # every cross-process computation on CPU fails.
    jax.config.update("jax_cpu_collectives_implementation", None)
    from sagan_jax import distributed
    port, pid = sys.argv[1], int(sys.argv[2])
    plan = distributed.initialize(f"127.0.0.1:{port}", 2, pid,
                                  initialization_timeout=30)
    again = distributed.initialize(f"127.0.0.1:{port}", 2, pid)  # idempotent
    assert again is plan and plan.init, plan

    import numpy as np
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    # Process p holds rows [4p, 4p + 4) of arange(8): its local batch shard.
    local = np.arange(4, dtype=np.float32) + 4 * jax.process_index()
    x = jax.make_array_from_process_local_data(sharding, local, (8,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)

    def per_shard(v):
      return jax.lax.psum(jnp.sum(v, keepdims=True), "data")
    psummed = jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=P("data"),
                                    out_specs=P()))(x)
    print("RESULT " + json.dumps({
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "global_shape": list(x.shape),
        "sum": float(total.addressable_data(0)),
        "psum": float(psummed.addressable_data(0)[0]),
        "describe": distributed.describe(),
        "collectives": jax.config.jax_cpu_collectives_implementation,
    }), flush=True)
    jax.distributed.shutdown()
""")


def test_two_processes_on_cpu():
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_", "MEGASCALE_",
                              "TPU_WORKER", "SAGAN_JAX"))}
  # The workers set 2 CPU devices each; drop conftest's device-count flag.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  port = free_port()
  start = time.time()
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=max(1.0, 90 - (time.time() - start)))
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  results = []
  for out in outs:
    lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
    assert lines, out[-3000:]
    results.append(json.loads(lines[-1][len("RESULT "):]))
  assert sorted(r["process_index"] for r in results) == [0, 1]
  for r in results:
    assert r["process_count"] == 2
    assert r["local_device_count"] == 2 and r["device_count"] == 4
    assert r["global_shape"] == [8] and r["collectives"] == "gloo"
    assert r["sum"] == sum(range(8)) == r["psum"]
    assert r["describe"].startswith(f"process {r['process_index']} of 2, 2 local devices, 4 in total")
