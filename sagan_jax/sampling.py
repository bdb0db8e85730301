"""Generating images from a train state: EMA or raw G, eval mode, fixed batch shapes.

Used by the train loop (progress grids, evaluators), `sample`, `evaluate` and
`describe`; one jitted generator per model is cached, so evaluations during
training do not recompile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import exploration, images, xla_flags
from sagan_jax.models import sagan
from sagan_jax.state import generator_variables


def generate(generator: sagan.Generator, variables: dict, z: jax.Array,
             labels: jax.Array | None) -> jax.Array:
  """G(z, y) in eval mode (running BN stats, stored SN vectors), [-1, 1]."""
  return generator.apply(variables, z, labels, train=False)


@functools.lru_cache(maxsize=8)
def jitted_generate(generator: sagan.Generator):
  """jit(generate) for one generator, cached (float32 on CPU: xla_flags.compiler_options)."""
  return jax.jit(functools.partial(generate, generator),
                 compiler_options=xla_flags.compiler_options(generator.dtype))


def generate_from_state(config, models, state, labels: np.ndarray, seed: int = 0,
                        batch_size: int = 100, use_ema: bool = True,
                        truncation: float | None = None, z: np.ndarray | None = None
                        ) -> np.ndarray:
  """uint8 [N, H, W, 3] images for the given labels (noise from `seed`, or `z`)."""
  gen = jitted_generate(models.generator)
  var = generator_variables(state, use_ema)
  m = config.model
  out = []
  key = jax.random.PRNGKey(seed)
  for i in range(0, len(labels), batch_size):
    y = labels[i:i + batch_size]
    n = len(y)
    pad = batch_size - n  # fixed batch shape: compile once
    if z is None:
      zb = exploration.truncated_z(jax.random.fold_in(key, i), batch_size, m.z_dim, truncation)
    else:
      zb = jnp.asarray(z[i:i + batch_size])
      zb = jnp.concatenate([zb, jnp.zeros((pad, m.z_dim), zb.dtype)]) if pad else zb
    y_full = np.concatenate([y, np.zeros(pad, np.int32)]) if pad else y
    out.append(images.to_uint8(gen(var, zb, jnp.asarray(y_full, jnp.int32)))[:n])
  return np.concatenate(out) if out else np.zeros((0, m.resolution, m.resolution, 3), np.uint8)


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., K-1, 0, 1, ... (equal counts per class)."""
  return (np.arange(num) % max(num_classes, 1)).astype(np.int32)


def grid_inputs(config, n_per_class: int = 10, max_classes: int = 10
                ) -> tuple[jax.Array, np.ndarray, int]:
  """Fixed (z, labels, columns) for the progress grids: a row per class."""
  m = config.model
  rows = min(m.num_classes, max_classes) if m.num_classes else max_classes
  labels = np.repeat(np.arange(rows), n_per_class).astype(np.int32)
  z = jax.random.normal(jax.random.PRNGKey(config.seed + 12345), (labels.size, m.z_dim))
  return z, labels, n_per_class
