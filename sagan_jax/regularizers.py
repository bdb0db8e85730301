"""Terms of D's loss beyond the adversarial loss of its logits: regularisers of D.

A regulariser sees `DInputs` (D's logits on the real and fake images, the
images and labels D saw, and a function giving D's logits for other
parameters or inputs, which a gradient penalty needs) and its own state in
`TrainState.extra[name]` (a pytree; {} if it keeps none). It returns its
weighted term and its new state. `active(config)` lists the ones a config
switches on; the D update phase (`sagan_jax.step`) adds their terms to the
loss it differentiates, and `init_states(config)` gives their first states.

  lecam  LeCam (Tseng et al. 2021), `config.optim.lecam_weight` (0 = off):
         lambda * (E[(D(x) - a_F)^2] + E[(D(G(z)) - a_R)^2]), where a_R and
         a_F are moving averages (decay `config.optim.lecam_decay`, starting
         at 0) of D's mean output on real and on fake images, updated with
         this D step's means before the term is taken; no gradient flows
         through the averages.

A new regulariser is a function with `lecam`'s signature, listed in
`_REGISTRY` with the config field that weighs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sagan_jax.errors import check_field

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DInputs:
  """What D's loss terms may use (the arrays of one D update)."""
  d_real: jax.Array            # D's logits on the real images [B]
  d_fake: jax.Array            # D's logits on the fake images [B]
  x: jax.Array                 # the images D saw, concat(real, fake) after any transform
  y: jax.Array | None          # their labels (None: unconditional)
  apply_d: Callable            # (params, x, y) -> logits, SN state read only
  params: PyTree               # D's parameters being differentiated


def lecam_init(config) -> dict[str, jax.Array]:
  del config
  return {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)}


def lecam(config, inputs: DInputs, state: dict) -> tuple[jax.Array, dict]:
  """LeCam's weighted term and the updated moving averages (see module doc)."""
  decay = config.optim.lecam_decay
  mean = lambda v: jax.lax.stop_gradient(jnp.mean(v.astype(jnp.float32)))  # noqa: E731
  new = {"real": decay * state["real"] + (1.0 - decay) * mean(inputs.d_real),
         "fake": decay * state["fake"] + (1.0 - decay) * mean(inputs.d_fake)}
  term = (jnp.mean(jnp.square(inputs.d_real - new["fake"])) +
          jnp.mean(jnp.square(inputs.d_fake - new["real"])))
  return config.optim.lecam_weight * term, new


# name -> (term, first state, the config.optim field that weighs it: > 0 switches it on)
_REGISTRY: dict[str, tuple[Callable, Callable, str]] = {
    "lecam": (lecam, lecam_init, "lecam_weight"),
}


def check_config(c) -> None:
  """ConfigError naming the first regulariser field that cannot work (preflight.check_config)."""
  o = c.optim
  check_field(o.lecam_weight >= 0, "optim.lecam_weight", o.lecam_weight, "must be >= 0 (0 = off)")
  check_field(0 <= o.lecam_decay < 1, "optim.lecam_decay", o.lecam_decay, "must be in [0, 1)")




def active(config) -> tuple[str, ...]:
  """The regularisers `config` switches on, in a fixed order."""
  return tuple(n for n, (_, _, f) in _REGISTRY.items() if config.optim[f] > 0)


def init_states(config) -> dict[str, PyTree]:
  """{name: first state} of the active regularisers."""
  return {n: _REGISTRY[n][1](config) for n in active(config)}


def d_terms(config, inputs: DInputs, states: dict) -> tuple[jax.Array | None, dict, dict]:
  """(sum of the active terms or None when none is on, their new states, {name: term})."""
  total, new_states, values = None, {}, {}
  for name in active(config):
    term, new_states[name] = _REGISTRY[name][0](config, inputs, states[name])
    values[name] = term
    total = term if total is None else total + term
  return total, new_states, values
