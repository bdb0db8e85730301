"""Adversarial losses. Inputs are D's raw outputs (logits), float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hinge_d(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """SAGAN's D loss: E[relu(1 - D(x, y))] + E[relu(1 + D(G(z, y'), y'))]."""
  return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))


def hinge_g(d_fake: jax.Array) -> jax.Array:
  """SAGAN's G loss: -E[D(G(z, y'), y')]."""
  return -jnp.mean(d_fake)


def nonsaturating_d(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """Goodfellow et al.'s D loss: softplus(-D(x)) + softplus(D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))


def nonsaturating_g(d_fake: jax.Array) -> jax.Array:
  """Non-saturating G loss: softplus(-D(G(z)))."""
  return jnp.mean(jax.nn.softplus(-d_fake))


LOSSES = {
    "hinge": (hinge_d, hinge_g),
    "nonsaturating": (nonsaturating_d, nonsaturating_g),
}


def check_config(c) -> None:
  """ConfigError unless `config.loss` names one of LOSSES (preflight.check_config)."""
  from sagan_jax.errors import check_field
  check_field(c.loss in LOSSES, "loss", c.loss, f"use one of {sorted(LOSSES)}")
