"""Generating images from a train state: EMA or raw G, eval mode, fixed batches."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import exploration, images
from sagan_jax.models import sagan


def generate(generator: sagan.Generator, variables: dict, z: jax.Array,
             labels: jax.Array | None) -> jax.Array:
  """G(z, y) in eval mode (running BN stats, stored SN vectors), [-1, 1]."""
  return generator.apply(variables, z, labels, train=False)


@functools.lru_cache(maxsize=8)
def jitted_generate(generator: sagan.Generator):
  """jit(generate) for one generator, cached: evaluations during training reuse it."""
  return jax.jit(functools.partial(generate, generator))


def ema_variables(state) -> dict:
  """The EMA generator's variables of a TrainState."""
  return {"params": state.ema_params, "batch_stats": state.ema_batch_stats,
          "spectral": state.ema_spectral}


def variables(state, use_ema: bool) -> dict:
  """G's variables of a TrainState: the EMA copy, or the raw G."""
  if use_ema:
    return ema_variables(state)
  return {"params": state.g_params, "batch_stats": state.g_batch_stats,
          "spectral": state.g_spectral}


def generate_from_state(config, models, state, labels: np.ndarray, seed: int = 0,
                        batch_size: int = 100, use_ema: bool = True,
                        truncation: float | None = None, z: np.ndarray | None = None
                        ) -> np.ndarray:
  """uint8 [N, H, W, 3] images for the given labels (noise from `seed`, or `z`)."""
  gen = jitted_generate(models.generator)
  var = variables(state, use_ema)
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
    lab = jnp.asarray(y_full, jnp.int32) if m.num_classes else None
    out.append(images.to_uint8(gen(var, zb, lab))[:n])
  return np.concatenate(out) if out else np.zeros((0, m.resolution, m.resolution, 3), np.uint8)


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
  """0, 1, ..., K-1, 0, 1, ... (equal counts per class)."""
  return (np.arange(num) % max(num_classes, 1)).astype(np.int32)
