"""Splitting a CPU into several XLA devices so that a data-parallel step keeps every core busy.

XLA:CPU runs one program per device, and a program of many small ops (the
digits model) keeps only part of the cores busy. Split into two devices, the
mesh shards the batch over both and each half runs on its own core: measured
on a 2-core AMD EPYC (jax 0.10, digits default, batch 64) ~1.3 -> ~2 cores
busy. Results are those of one device within float32 rounding: batch norm
reduces over the global batch either way, and the gradients are all-reduced.

`configure(batch_size)` asks for `plan(...)` CPU devices before the backend
starts (`jax_num_cpu_devices`, the same as
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, without the user
setting anything). It leaves the count alone when:

* the backend has already started (too late to change it),
* the user chose already (`XLA_FLAGS` with that flag, `jax_num_cpu_devices`,
  or `$SAGAN_JAX_CPU_DEVICES`, which sets the count: 1 turns splitting off),
* the run has several processes (each process's devices are its own hosts'),
* `config.mesh.num_devices` is set (the user picked the mesh size).

On GPU/TPU hosts the extra CPU devices exist but are unused.
"""

from __future__ import annotations

import functools
import os
import platform

import jax
from absl import logging

ENV = "SAGAN_JAX_CPU_DEVICES"
MIN_PER_DEVICE = 16  # images per device below which splitting stops paying (small matmuls)
MAX_DEVICES = 8      # measured up to 2 (2-core machines); more cores: at most this many


def cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
  """The CPU's model name as `lscpu` shows it ('AMD EPYC', 'Intel(R) Xeon(R) ...')."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def plan(batch_size: int, n_cores: int, min_per_device: int = MIN_PER_DEVICE,
         max_devices: int = MAX_DEVICES) -> int:
  """Largest device count <= cores (and max_devices) that divides the batch into
  shares of at least `min_per_device` images; 1 when none does."""
  for n in range(min(n_cores, max_devices), 1, -1):
    if batch_size % n == 0 and batch_size // n >= min_per_device:
      return n
  return 1


def _backend_started() -> bool:
  from jax._src import xla_bridge  # no public API says whether backends exist yet
  return xla_bridge.backends_are_initialized()


def _user_chose() -> bool:
  return ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
          or jax.config.jax_num_cpu_devices not in (None, -1))


def configure(batch_size: int, mesh_devices: int = 0, multi_process: bool = False) -> int:
  """Sets the CPU device count for a run with this global batch, if nothing else decides it.

  Returns the device count asked for (1: no split), or 0 when the count was
  left alone. Call it before any JAX computation or device query (after
  `distributed.initialize`).
  """
  explicit = os.environ.get(ENV, "").strip()
  if _backend_started():
    logging.info("CPU devices left alone: the JAX backend has already started")
    return 0
  if explicit:
    try:
      n = int(explicit)
    except ValueError:
      from sagan_jax.errors import ConfigError
      raise ConfigError(f"${ENV}={explicit!r} is not an integer (CPU devices, 1 = no split)")
    n = max(n, 1)
  elif _user_chose() or multi_process or mesh_devices:
    return 0
  else:
    n = plan(batch_size, cores())
  if n > 1:
    jax.config.update("jax_num_cpu_devices", n)
    logging.info("CPU split into %d devices (global batch %d, %d cores)", n, batch_size, cores())
  return n
