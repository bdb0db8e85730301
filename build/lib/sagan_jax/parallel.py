"""Device mesh and shardings: one data-parallel axis over every device.

The batch is sharded over the 'data' axis, the train state is replicated,
and XLA inserts the gradient all-reduces. BatchNorm under this jit sees the
global batch, i.e. cross-replica BN for free.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from sagan_jax.errors import ConfigError

DATA = "data"


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all, all hosts)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"config.mesh.num_devices={num_devices} but only "
                       f"{len(devices)} devices are visible.")
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, leading_axes: int = 0) -> NamedSharding:
  """Shards axis `leading_axes` of an array over 'data' (earlier axes replicated)."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA))


def check_batch_size(batch_size: int, mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"config.batch_size={batch_size} is not divisible by the "
                     f"{n} devices of the mesh; use a multiple of {n}.")


def global_batch(local: dict[str, np.ndarray], mesh, leading_axes: int = 0) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over 'data'.

  Axis `leading_axes` is the batch axis; every process passes its own part.
  """
  sharding = batch_sharding(mesh, leading_axes)
  out = {}
  for k, v in local.items():
    shape = list(v.shape)
    shape[leading_axes] *= jax.process_count()
    out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(shape))
  return out
