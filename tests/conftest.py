"""Test set-up: 4 virtual CPU devices, a shared compilation cache, fast configs."""

from __future__ import annotations

import os
import sys
import tempfile

# Before JAX starts its CPU backend: 4 virtual devices for the sharding tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Identical programs compile once per session (tiny runs are mostly compile time).
# Each pytest-xdist worker (and the commands its tests launch) has a folder of its own: no
# two processes of different workers write and read one cache entry at the same time.
_CACHE = os.path.join(os.environ.get("SAGAN_TEST_COMPILE_CACHE") or os.path.join(
    tempfile.gettempdir(), "sagan_jax_test_compile_cache"),
    os.environ.get("PYTEST_XDIST_WORKER", "main"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_config(name: str, **overrides):
  """configs/<name>.py[:variant]'s config; keyword overrides use '__' for '.' (model__ch=8)."""
  from sagan_jax import config_base
  return config_base.load(os.path.join(ROOT, "configs", name.replace(":", ".py:", 1)
                                       if ":" in name else f"{name}.py"),
                          {k.replace("__", "."): v for k, v in overrides.items()})


def data_config(source, *, resolution, num_classes, batch_size=4, **data):
  """base_config() for a data source, with `data.<field>` overrides as keywords."""
  from sagan_jax import config_base
  c = config_base.base_config()
  c.data.source = source
  c.model.resolution = resolution
  c.model.num_classes = num_classes
  c.batch_size = batch_size
  for k, v in data.items():
    c.data[k] = v
  return c


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now (for jax.distributed tests)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def image_ids(images):
  """Image number of each solid test image (checks each image is one constant value)."""
  flat = images.reshape(len(images), -1).astype(int)
  assert (flat == flat[:, :1]).all(), "images are not solid"
  return ((flat[:, 0] - 4) // 8).tolist()


def take(source, n):
  """The next n batches of a source."""
  return [next(source) for _ in range(n)]


@pytest.fixture
def tiny_config():
  return load_config("tiny")


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core, at most 4 (each worker's XLA uses every core, and a
  worker holds up to ~3 GB); 0 (no workers, the tests run in this process) on one core."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  n = min(cores or 1, 4)
  return 0 if n == 1 else n


def step_batch(config) -> dict:
  """One train step's host batch: the first config.optim.n_critic source batches stacked."""
  import numpy as np

  from sagan_jax import data
  src = data.make_source(config)
  parts = [next(src) for _ in range(config.optim.n_critic)]
  return {k: np.stack([p[k] for p in parts]) for k in ("image", "label")}
