"""Multi-process set-up: call `jax.distributed.initialize` only when needed.

One training job may span several processes (hosts): the hosts of a Cloud TPU
pod slice, the nodes of a SLURM allocation, the ranks of `mpirun`, or
processes started by hand. Each must call `jax.distributed.initialize` before
anything touches a JAX device; on a plain single host the same call raises
("coordinator_address should be defined"), so it must be skipped there.

`initialize()` decides which case applies, in this order:

1. `SAGAN_JAX_DISTRIBUTED=off` in the environment: never initialise
   (`=on`: call `jax.distributed.initialize()` even where nothing below
   matches, letting JAX detect the cluster).
2. The coordinator address, process count and process id, each taken from
   the first of: the explicit arguments (flags `--coordinator`,
   `--num_processes`, `--process_id`); the environment (`JAX_COORDINATOR_ADDRESS`,
   which JAX itself reads, and `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`);
   SLURM inside `srun` with one task per node (`SLURM_NTASKS`,
   `SLURM_PROCID`, coordinator = first host of `SLURM_STEP_NODELIST`);
   MPI ranks (`OMPI_COMM_WORLD_*` with one rank per host, `PMI_*`) when an
   address is given. One process in total (e.g. `--num_processes=1`) means
   skip. All three known: initialise with JAX's cluster detection turned
   off, so each process sees every device on its host (JAX's SLURM/MPI
   detection would restrict it to the one GPU numbered by its local rank;
   `JAX_LOCAL_DEVICE_IDS` still restricts it when wanted). Only some known:
   JAX's detection fills in the rest (or says what is missing).
3. SLURM inside `srun` with several tasks per node, or Open MPI's `mpirun`
   (`OMPI_MCA_orte_hnp_uri`) with more than one rank: JAX's detection (one
   device per process). A SLURM allocation with `SLURM_NTASKS` > 1 but no
   `srun` step variables (python started directly in the batch script) runs
   as a single process, with a warning.
4. Cloud TPU environment variables: multislice (`MEGASCALE_NUM_SLICES` > 1
   or `MEGASCALE_COORDINATOR_ADDRESS`) or a worker list with more than one
   host (`TPU_WORKER_HOSTNAMES` / `TPU_PROCESS_ADDRESSES`, as on GKE): JAX's
   detection.
5. A Cloud TPU VM (JAX found TPU chips when imported) whose metadata server
   lists more than one worker (a pod slice created with `gcloud compute tpus
   ...`, e.g. by `launch/tpu.sh`): JAX's detection, which reads the same
   metadata.
6. Otherwise: a single process; nothing to do.

`should_initialize` is the pure decision (environment in, plan out) and is
what the tests exercise; `initialize` gathers the facts, acts on the plan and
is idempotent. On CPU, cross-process collectives use gloo (JAX 0.10's
default; set here if the installed JAX has none).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

import jax

log = logging.getLogger(__name__)

# Environment variable that overrides the detection: "off", "on" or "auto".
OVERRIDE_ENV = "SAGAN_JAX_DISTRIBUTED"

# JAX's own default port for TPU pods; used for SLURM only when neither an
# explicit port nor JAX_COORDINATOR_PORT is given and the job id is unknown.
_DEFAULT_PORT = 8482

_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID", "SLURM_STEP_NODELIST")

_state: dict[str, Any] = {"done": False, "plan": None}


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` will do.

  Attributes:
    init: whether `jax.distributed.initialize` is called.
    kwargs: its keyword arguments; `{}` lets JAX detect everything.
    reason: one line for the log saying which rule decided.
  """
  init: bool
  kwargs: dict[str, Any]
  reason: str


def _int(env: Mapping[str, str], key: str) -> int | None:
  value = env.get(key)
  if value is None or value.strip() == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {key}={value!r} is not an integer")


def _host_list_len(value: str | None) -> int:
  if not value:
    return 0
  return len([h for h in value.split(",") if h.strip()])


def first_slurm_host(nodelist: str) -> str:
  """The first host of a SLURM host list such as 'gpu[003-010,12],login1'.

  Handles a prefix, one bracketed range list and a suffix
  ('rack1-n[01-04]-ib' -> 'rack1-n01-ib'), which is what `scontrol show
  hostnames` would print first.
  """
  nodelist = nodelist.strip()
  depth = 0
  end = len(nodelist)
  for i, ch in enumerate(nodelist):  # first top-level comma ends the first entry
    if ch == "[":
      depth += 1
    elif ch == "]":
      depth -= 1
    elif ch == "," and depth == 0:
      end = i
      break
  entry = nodelist[:end]
  match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", entry)
  if match is None:
    return entry
  prefix, ranges, suffix = match.groups()
  first = re.split(r"[,-]", ranges, maxsplit=1)[0]
  return f"{prefix}{first}{suffix}"


def _slurm_port(env: Mapping[str, str]) -> int:
  """The same port on every node: JAX_COORDINATOR_PORT, else from the job id."""
  port = _int(env, "JAX_COORDINATOR_PORT")
  if port is not None:
    return port
  job = _int(env, "SLURM_JOB_ID")
  if job is None:
    return _DEFAULT_PORT
  # A port in the top 4096 of the ephemeral range, different per job, so two
  # jobs sharing a node rarely collide (the rule JAX's SLURM detection uses).
  return 65535 - 4095 + job % 4096


def _slurm_tasks_per_node(env: Mapping[str, str]) -> int | None:
  """Tasks on this node, if SLURM says; '2(x3)' style lists use the first."""
  for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
              "SLURM_NTASKS_PER_NODE"):
    value = env.get(key)
    if value:
      match = re.match(r"\s*(\d+)", value)
      if match:
        return int(match.group(1))
  ntasks = _int(env, "SLURM_NTASKS")
  nnodes = _int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_NNODES")
  if ntasks and nnodes:
    return max(1, ntasks // nnodes)
  return None


def should_initialize(
    env: Mapping[str, str],
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    on_tpu_vm: bool = False,
    tpu_worker_count: Callable[[], int | None] | int | None = None,
) -> Plan:
  """Decides whether (and how) to call `jax.distributed.initialize`.

  Pure apart from calling `tpu_worker_count` (only on a TPU VM when nothing
  else settles the question).

  Args:
    env: the process environment (`os.environ` or a dict in tests).
    coordinator: explicit 'host:port' of process 0's coordinator service.
    num_processes: explicit total process count.
    process_id: explicit id of this process, 0 <= id < num_processes.
    on_tpu_vm: whether this host has TPU chips (a Cloud TPU VM).
    tpu_worker_count: hosts x slices of the TPU job, or a callable returning
      it (None when unknown); consulted only when `on_tpu_vm`.

  Returns:
    A `Plan`; `kwargs` never holds None values. When the coordinator, the
    count and the id are all known, `kwargs` turns JAX's cluster detection
    off, so every process sees all devices of its host (JAX's SLURM / MPI
    detection would otherwise give each process the one GPU numbered by its
    local rank; `JAX_LOCAL_DEVICE_IDS` still restricts them if wanted).
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
  source = "explicit flags" if explicit else (
      "JAX_COORDINATOR_ADDRESS" if coord else "")
  if count is None and _int(env, "JAX_NUM_PROCESSES") is not None:
    count, source = _int(env, "JAX_NUM_PROCESSES"), source or "JAX_NUM_PROCESSES"
  if pid is None:
    pid = _int(env, "JAX_PROCESS_ID")

  # SLURM (srun).
  slurm_tasks = _int(env, "SLURM_NTASKS") if "SLURM_JOB_ID" in env else None
  if (count is None or pid is None) and slurm_tasks is not None:
    nothing_given = not explicit and coord is None and count is None
    in_step = all(k in env for k in _SLURM_STEP_VARS)
    if nothing_given and slurm_tasks <= 1:
      return Plan(False, {}, "SLURM with one task: single process")
    if nothing_given and not in_step:
      log.warning("SLURM_NTASKS=%d but not inside `srun` (no %s): running as "
                  "a single process.", slurm_tasks,
                  ", ".join(k for k in _SLURM_STEP_VARS if k not in env))
      return Plan(False, {}, "SLURM allocation outside srun: single process")
    if in_step and slurm_tasks > 1:
      if _slurm_tasks_per_node(env) == 1:
        count = slurm_tasks if count is None else count
        pid = _int(env, "SLURM_PROCID") if pid is None else pid
        if coord is None:
          coord = f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{_slurm_port(env)}"
        source = f"SLURM, {slurm_tasks} tasks, one per node"
      else:
        return Plan(True, _known(coord, count, pid),
                    f"SLURM, {slurm_tasks} tasks (JAX detection, one device each)")

  # Open MPI's mpirun (JAX parses its URI), or any MPI with a given address.
  mpi_size = _int(env, "OMPI_COMM_WORLD_SIZE")
  if (count is None or pid is None) and mpi_size is not None:
    if mpi_size <= 1 and not explicit and coord is None and count is None:
      return Plan(False, {}, "MPI with one rank: single process")
    one_per_host = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") == 1
    if coord is not None and one_per_host:
      count = mpi_size if count is None else count
      pid = _int(env, "OMPI_COMM_WORLD_RANK") if pid is None else pid
      source = f"MPI, {mpi_size} ranks, one per host"
    elif "OMPI_MCA_orte_hnp_uri" in env:
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
    # Partly known: JAX's detection fills in the rest, or says what is missing.
    return Plan(True, _known(coord, count, pid),
                f"{source}, the rest from JAX cluster detection")

  # Cloud TPU environment variables (GKE, multislice).
  if (_int(env, "MEGASCALE_NUM_SLICES") or 1) > 1 or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS"):
    return Plan(True, {}, "Cloud TPU multislice (JAX detection)")
  workers = _host_list_len(env.get("TPU_PROCESS_ADDRESSES")
                           or env.get("TPU_WORKER_HOSTNAMES"))
  if workers > 1:
    return Plan(True, {}, f"Cloud TPU, {workers} workers (JAX detection)")

  # A Cloud TPU VM: ask the metadata server how many workers there are.
  if on_tpu_vm and workers == 0:
    n = tpu_worker_count() if callable(tpu_worker_count) else tpu_worker_count
    if n is not None and n > 1:
      return Plan(True, {}, f"Cloud TPU VM, {n} workers (JAX detection)")
    if mode == "on":
      return Plan(True, {}, f"{OVERRIDE_ENV}=on on a Cloud TPU VM")
    return Plan(False, {}, "single-host Cloud TPU VM")

  if mode == "on":
    return Plan(True, {}, f"{OVERRIDE_ENV}=on (JAX detection)")
  return Plan(False, {}, "single process")


def _known(coord: str | None, count: int | None, pid: int | None) -> dict[str, Any]:
  return {k: v for k, v in (("coordinator_address", coord),
                            ("num_processes", count),
                            ("process_id", pid)) if v is not None}


def _on_cloud_tpu_vm() -> bool:
  """Whether this host has TPU chips; JAX works this out when imported."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  except Exception:  # pylint: disable=broad-except
    return False


def _gce_metadata(key: str, timeout: float = 3.0) -> str | None:
  import urllib.request  # pylint: disable=g-import-not-at-top
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  req = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
      return resp.read().decode()
  except Exception:  # pylint: disable=broad-except
    return None


def _tpu_worker_count_from_metadata() -> int | None:
  """Hosts per slice x slices, from the TPU VM's metadata server."""
  endpoints = _gce_metadata("worker-network-endpoints")
  if endpoints is None:
    log.warning("Cloud TPU VM but the metadata server did not answer; assuming "
                "a single host (set %s=on for a pod slice).", OVERRIDE_ENV)
    return None
  slices = 1
  tpu_env = _gce_metadata("tpu-env") or ""
  match = re.search(r"^\s*MEGASCALE_NUM_SLICES\s*:\s*'?(\d+)'?", tpu_env, re.M)
  if match:
    slices = int(match.group(1))
  return _host_list_len(endpoints) * slices


def initialize(coordinator: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               *,
               initialization_timeout: int | None = None) -> Plan:
  """Joins the multi-process job if there is one; a no-op on a single host.

  Call it first thing in `main`, before any JAX computation or device query.
  Calling it again does nothing (and returns the first call's plan).

  Args:
    coordinator: 'host:port' of process 0 (flag `--coordinator`).
    num_processes: total number of processes (flag `--num_processes`).
    process_id: this process's id (flag `--process_id`).
    initialization_timeout: seconds to wait for all processes (JAX: 300).

  Returns:
    The `Plan` that was followed.
  """
  if _state["done"]:
    return _state["plan"]
  if jax.distributed.is_initialized():
    plan = Plan(False, {}, "jax.distributed already initialised by the caller")
    _state.update(done=True, plan=plan)
    return plan

  plan = should_initialize(os.environ, coordinator, num_processes, process_id,
                           on_tpu_vm=_on_cloud_tpu_vm(),
                           tpu_worker_count=_tpu_worker_count_from_metadata)
  if plan.init:
    # Cross-process collectives on CPU need an implementation; JAX 0.10
    # defaults to gloo, older versions to none (every collective then fails).
    # The setting only affects the CPU client, so it is safe on GPU/TPU.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(plan.kwargs)
    if initialization_timeout is not None:
      kwargs["initialization_timeout"] = int(initialization_timeout)
    log.info("jax.distributed.initialize(%s): %s",
             ", ".join(f"{k}={v!r}" for k, v in kwargs.items()), plan.reason)
    jax.distributed.initialize(**kwargs)
  else:
    log.info("Not initialising jax.distributed: %s", plan.reason)
  _state.update(done=True, plan=plan)
  return plan


def describe() -> str:
  """One line such as '1 process, 4 local devices (cpu)'.

  Touches the JAX backend, so call it after `initialize`.
  """
  local = jax.local_device_count()
  platform = jax.devices()[0].platform
  kind = jax.devices()[0].device_kind
  what = platform if kind.lower() == platform else f"{platform}: {kind}"
  n_proc = jax.process_count()
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
        "coordinator", None,
        "host:port of process 0 for multi-process jobs; default: detected "
        "(Cloud TPU, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS).",
        flag_values=fv)
  if "num_processes" not in fv:
    flags.DEFINE_integer(
        "num_processes", None,
        "Total number of processes; default: detected (1 on a plain host).",
        lower_bound=1, flag_values=fv)
  if "process_id" not in fv:
    flags.DEFINE_integer(
        "process_id", None, "This process's id in [0, num_processes); default: detected.",
        lower_bound=0, flag_values=fv)


def initialize_from_flags(flag_values=None) -> Plan:
  """`initialize` with the values of the flags from `define_flags`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  return initialize(fv.coordinator, fv.num_processes, fv.process_id)


def _reset_for_tests() -> None:
  _state.update(done=False, plan=None)
