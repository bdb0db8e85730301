"""Multi-process set-up: call `jax.distributed.initialize` only when needed.

Each process of a multi-host job (TPU pod hosts, SLURM nodes, MPI ranks) must
call it before touching a device; on a plain host it raises. JAX detects most
clusters itself; `initialize` adds what its detection lacks, in this order:

1. `SAGAN_JAX_DISTRIBUTED=off`: never initialise; `=on`: always, leaving the
   cluster to JAX's detection when nothing below matches.
2. Coordinator, process count and id from the flags `--coordinator`,
   `--num_processes`, `--process_id`, else `JAX_COORDINATOR_ADDRESS`,
   `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, else `srun` with one task per node
   (`SLURM_NTASKS`, `SLURM_PROCID`, first host of `SLURM_STEP_NODELIST`), else
   MPI ranks with a given address (`OMPI_COMM_WORLD_*` one rank per host,
   `PMI_*`). One process in total: skip. All three known: JAX's detection is
   turned off, because its SLURM/MPI rules would give each process only the
   GPU numbered by its local rank, while one task per node drives all of them
   (`JAX_LOCAL_DEVICE_IDS` still restricts). Partly known: JAX fills the rest.
3. `srun` with several tasks per node, or `mpirun` with several ranks: JAX's
   detection (one device each). `SLURM_NTASKS` > 1 outside an `srun` step
   (python run in the batch script itself): one process, with a warning.
4. Cloud TPU multislice (`MEGASCALE_*`) or a worker list of several hosts
   (`TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES`, GKE): JAX's detection.
5. A Cloud TPU VM without such a list (a plain `gcloud compute tpus tpu-vm ssh
   --worker=all` launch, as by `launch/tpu.sh`): always initialise with no
   arguments. JAX's GCE TPU detection reads this worker's number, the worker
   list and the slice count from the VM's metadata server (with `requests`,
   part of `jax[tpu]`). On a one-host TPU that makes a one-process job with
   this host as coordinator: harmless, it only binds port 8482
   (`JAX_COORDINATOR_PORT` moves it, e.g. for a second job on the VM). If the
   metadata server cannot be reached JAX's call fails; `=off` then runs one
   process. "TPU VM" is the flag JAX sets on import when it finds libtpu and
   TPU chips, the one its TPU detection checks first; no public API gives it
   without starting the backend, after which initialising is refused.
6. Otherwise: one process.

`should_initialize` is the pure decision; `initialize` acts on it once, with
gloo for CPU collectives if the installed JAX has no default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from absl import logging
import jax

# Environment variable that overrides the detection: "off", "on" or "auto".
OVERRIDE_ENV = "SAGAN_JAX_DISTRIBUTED"

_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID", "SLURM_STEP_NODELIST")

_state: dict[str, Any] = {"done": False, "plan": None}


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` does: `init` or not, with `kwargs` (`{}`: JAX detects
  everything); `reason` says which rule decided, for the log."""
  init: bool
  kwargs: dict[str, Any]
  reason: str


def _int(env: Mapping[str, str], key: str) -> int | None:
  value = env.get(key)
  if not (value or "").strip():
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {key}={value!r} is not an integer")


def _host_list_len(value: str | None) -> int:
  return len([h for h in (value or "").split(",") if h.strip()])


def first_slurm_host(nodelist: str) -> str:
  """The first host of a SLURM host list ('rack1-n[01-04]-ib,x' -> 'rack1-n01-ib'),
  what `scontrol show hostnames` would print first."""
  entry, depth = nodelist.strip(), 0
  for i, ch in enumerate(entry):  # the first top-level comma ends the entry
    depth += {"[": 1, "]": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      entry = entry[:i]
      break
  match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", entry)
  if match is None:
    return entry
  prefix, ranges, suffix = match.groups()
  return f"{prefix}{re.split(r'[,-]', ranges, maxsplit=1)[0]}{suffix}"


def _slurm_port(env: Mapping[str, str]) -> int:
  """The same port on every node: JAX_COORDINATOR_PORT, else one in the top
  4096 of the ephemeral range chosen by the job id (JAX's SLURM rule), so two
  jobs sharing a node rarely collide; 8482 (JAX's TPU port) without an id."""
  port = _int(env, "JAX_COORDINATOR_PORT")
  if port is not None:
    return port
  job = _int(env, "SLURM_JOB_ID")
  return 8482 if job is None else 65535 - 4095 + job % 4096


def _slurm_tasks_per_node(env: Mapping[str, str]) -> int | None:
  """Tasks on this node, if SLURM says; '2(x3)' style lists use the first."""
  for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
              "SLURM_NTASKS_PER_NODE"):
    match = re.match(r"\s*(\d+)", env.get(key) or "")
    if match:
      return int(match.group(1))
  ntasks = _int(env, "SLURM_NTASKS")
  nnodes = _int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_NNODES")
  return max(1, ntasks // nnodes) if ntasks and nnodes else None


def _known(coord: str | None, count: int | None, pid: int | None) -> dict[str, Any]:
  return {k: v for k, v in (("coordinator_address", coord), ("num_processes", count),
                            ("process_id", pid)) if v is not None}


def should_initialize(env: Mapping[str, str], coordinator: str | None = None,
                      num_processes: int | None = None, process_id: int | None = None,
                      *, on_tpu_vm: bool = False) -> Plan:
  """Decides whether (and how) to call `jax.distributed.initialize`; pure.

  `env` is the environment (`os.environ` or a dict); `coordinator` ('host:port'
  of process 0), `num_processes` and `process_id` are explicit values (flags);
  `on_tpu_vm` says whether this host is a Cloud TPU VM. The plan's `kwargs`
  never hold None; with all three values known they turn JAX's detection off.
  """
  mode = env.get(OVERRIDE_ENV, "auto").strip().lower() or "auto"
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"{OVERRIDE_ENV}={mode!r}: expected 'auto', 'on' or 'off'")
  if mode == "off":
    return Plan(False, {}, f"{OVERRIDE_ENV}=off")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} must be >= 1")
  if num_processes is not None and process_id is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
  if num_processes == 1:
    return Plan(False, {}, "--num_processes=1: single process")

  explicit = any(v is not None for v in (coordinator, num_processes, process_id))
  coord = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  count, pid = num_processes, process_id
  source = "explicit flags" if explicit else ("JAX_COORDINATOR_ADDRESS" if coord else "")
  if count is None and _int(env, "JAX_NUM_PROCESSES") is not None:
    count, source = _int(env, "JAX_NUM_PROCESSES"), source or "JAX_NUM_PROCESSES"
  if pid is None:
    pid = _int(env, "JAX_PROCESS_ID")

  slurm_tasks = _int(env, "SLURM_NTASKS") if "SLURM_JOB_ID" in env else None
  if (count is None or pid is None) and slurm_tasks is not None:
    in_step = all(k in env for k in _SLURM_STEP_VARS)
    nothing_given = not explicit and coord is None and count is None
    if nothing_given and slurm_tasks <= 1:
      return Plan(False, {}, "SLURM with one task: single process")
    if nothing_given and not in_step:
      logging.warning("SLURM_NTASKS=%d but not inside `srun` (no %s): running as a "
                      "single process.", slurm_tasks,
                      ", ".join(k for k in _SLURM_STEP_VARS if k not in env))
      return Plan(False, {}, "SLURM allocation outside srun: single process")
    if in_step and slurm_tasks > 1:
      if _slurm_tasks_per_node(env) != 1:
        return Plan(True, _known(coord, count, pid),
                    f"SLURM, {slurm_tasks} tasks (JAX detection, one device each)")
      count = slurm_tasks if count is None else count
      pid = _int(env, "SLURM_PROCID") if pid is None else pid
      coord = coord or f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{_slurm_port(env)}"
      source = f"SLURM, {slurm_tasks} tasks, one per node"

  mpi_size = _int(env, "OMPI_COMM_WORLD_SIZE")
  if (count is None or pid is None) and mpi_size is not None:
    if mpi_size <= 1 and not explicit and coord is None and count is None:
      return Plan(False, {}, "MPI with one rank: single process")
    if coord is not None and _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") == 1:
      count = mpi_size if count is None else count
      pid = _int(env, "OMPI_COMM_WORLD_RANK") if pid is None else pid
      source = f"MPI, {mpi_size} ranks, one per host"
    elif "OMPI_MCA_orte_hnp_uri" in env:  # Open MPI's mpirun: JAX parses it
      return Plan(True, _known(coord, count, pid),
                  f"Open MPI, {mpi_size} ranks (JAX detection, one device each)")
  pmi_size = _int(env, "PMI_SIZE")
  if (count is None or pid is None) and pmi_size is not None and coord is not None:
    count = pmi_size if count is None else count
    pid = _int(env, "PMI_RANK") if pid is None else pid
    source = f"MPI (PMI), {pmi_size} ranks"

  if coord is not None and count is not None and pid is not None:
    if count == 1:
      return Plan(False, {}, f"{source}: one process in total")
    return Plan(True, {"coordinator_address": coord, "num_processes": count,
                       "process_id": pid, "cluster_detection_method": "deactivate"},
                source)
  if explicit or coord is not None or count is not None:
    return Plan(True, _known(coord, count, pid),
                f"{source}, the rest from JAX cluster detection")
  return _tpu_or_single(env, on_tpu_vm, mode == "on")


def _tpu_or_single(env: Mapping[str, str], on_tpu_vm: bool, forced: bool) -> Plan:
  """Rules 4 to 6 of the module docstring, once no launcher has decided."""
  if (_int(env, "MEGASCALE_NUM_SLICES") or 1) > 1 or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS"):
    return Plan(True, {}, "Cloud TPU multislice (JAX detection)")
  workers = _host_list_len(env.get("TPU_PROCESS_ADDRESSES")
                           or env.get("TPU_WORKER_HOSTNAMES"))
  if workers > 1:
    return Plan(True, {}, f"Cloud TPU, {workers} workers (JAX detection)")
  if on_tpu_vm and workers == 0:
    return Plan(True, {}, "Cloud TPU VM (JAX detection from its metadata server)")
  if forced:
    return Plan(True, {}, f"{OVERRIDE_ENV}=on (JAX detection)")
  return Plan(False, {}, "single process")


def _on_cloud_tpu_vm() -> bool:
  """JAX's own 'Cloud TPU VM' flag (libtpu and TPU chips found on import)."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except Exception:  # pylint: disable=broad-except
    return False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               initialization_timeout: int | None = None,
               heartbeat_timeout: int | None = None) -> Plan:
  """Joins the multi-process job if there is one; a no-op on a single host.

  Call it first in `main`, before any JAX computation or device query; later
  calls return the first call's plan. The arguments are the flags
  `--coordinator`, `--num_processes`, `--process_id`;
  `initialization_timeout` is the seconds to wait for all processes (JAX: 300);
  `heartbeat_timeout` (`config.heartbeat_timeout_s`) the seconds without a heartbeat
  after which the coordination service declares a process lost (JAX: 100), passed
  where the installed JAX takes it.
  """
  if _state["done"]:
    return _state["plan"]
  if jax.distributed.is_initialized():
    plan = Plan(False, {}, "jax.distributed already initialised by the caller")
  else:
    plan = should_initialize(os.environ, coordinator, num_processes, process_id,
                             on_tpu_vm=_on_cloud_tpu_vm())
  if plan.init:
    # CPU collectives need an implementation: JAX 0.10 defaults to gloo, older
    # versions to none (then every collective fails). CPU client only.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(plan.kwargs)
    if initialization_timeout is not None:
      kwargs["initialization_timeout"] = int(initialization_timeout)
    if heartbeat_timeout is not None and _accepts("heartbeat_timeout_seconds"):
      kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout)
    logging.info("jax.distributed.initialize(%s): %s",
                 ", ".join(f"{k}={v!r}" for k, v in kwargs.items()), plan.reason)
    jax.distributed.initialize(**kwargs)
  else:
    logging.info("Not initialising jax.distributed: %s", plan.reason)
  _state.update(done=True, plan=plan)
  return plan


def _accepts(name: str) -> bool:
  """Whether the installed jax.distributed.initialize takes keyword `name`."""
  import inspect
  try:
    return name in inspect.signature(jax.distributed.initialize).parameters
  except (TypeError, ValueError):
    return False


def describe() -> str:
  """One line such as '1 process, 4 local devices (cpu)'; after `initialize`."""
  local, n_proc = jax.local_device_count(), jax.process_count()
  platform, kind = jax.devices()[0].platform, jax.devices()[0].device_kind
  what = platform if kind.lower() == platform else f"{platform}: {kind}"
  s = "" if local == 1 else "s"
  if n_proc == 1:
    return f"1 process, {local} local device{s} ({what})"
  return (f"process {jax.process_index()} of {n_proc}, {local} local device{s}, "
          f"{jax.device_count()} in total ({what})")


def define_flags(flag_values=None) -> None:
  """Defines --coordinator, --num_processes, --process_id (once)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  if "coordinator" not in fv:
    flags.DEFINE_string(
        "coordinator", None, "host:port of process 0 for multi-process jobs; "
        "default: detected (Cloud TPU, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS).",
        flag_values=fv)
  if "num_processes" not in fv:
    flags.DEFINE_integer(
        "num_processes", None, "Total number of processes; default: detected "
        "(1 on a plain host).", lower_bound=1, flag_values=fv)
  if "process_id" not in fv:
    flags.DEFINE_integer(
        "process_id", None, "This process's id in [0, num_processes); default: "
        "detected.", lower_bound=0, flag_values=fv)


def _reset_for_tests() -> None:
  _state.update(done=False, plan=None)
