"""The train state and what builds it: G, D, their optimisers, a fresh or abstract state.

    TrainState
      step   int32 scalar: iterations done
      g      G's Flax variables   {params, batch_stats, spectral}
      ema    the EMA generator's  {params, batch_stats, spectral}
      d      D's Flax variables   {params, spectral}
      opt    {g: G's Adam state, d: D's Adam state}
      extra  state of what the config switches on, {} by default: 'ada' {p, acc}
             (`sagan_jax.augment`), 'lecam' {real, fake} (`sagan_jax.regularizers`)

`g`, `ema` and `d` are exactly what `Generator.apply` / `Discriminator.apply`
take, so no caller rebuilds a variable dict by hand. The noise of step k is
`fold_in(PRNGKey(config.seed), k)`: the state holds no key of its own.
`abstract_state(config, mesh)` is the one shape-only state that the train
loop, `sample`, `describe` and the checkpoint converter restore into.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sagan_jax import augment, parallel, regularizers
from sagan_jax.models import sagan

PyTree = Any
G_COLLECTIONS = ("params", "batch_stats", "spectral")
D_COLLECTIONS = ("params", "spectral")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  g: dict[str, PyTree]
  ema: dict[str, PyTree]
  d: dict[str, PyTree]
  opt: dict[str, PyTree]
  extra: dict[str, PyTree] = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class Models:
  """G, D and their optimisers: the static (hashable) parts of the step."""
  generator: sagan.Generator = flax.struct.field(pytree_node=False)
  discriminator: sagan.Discriminator = flax.struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_schedule(lr: float, total: int, o: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning-rate schedule over `total` optimiser updates (config.optim)."""
  warm = o.warmup_steps
  decay_steps = max(total - warm, 1)
  if o.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif o.schedule == "linear":
    main = optax.linear_schedule(lr, 0.0, decay_steps)
  else:
    main = optax.cosine_decay_schedule(lr, decay_steps)
  if not warm:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_models(config: ml_collections.ConfigDict) -> Models:
  """G and D from config.model; two Adams (TTUR) from config.optim."""
  o = config.optim

  def adam(lr: float, total: int) -> optax.GradientTransformation:
    return optax.adam(make_schedule(lr, total, o), b1=o.beta1, b2=o.beta2, eps=o.eps)

  return Models(
      generator=sagan.generator_from_config(config.model),
      discriminator=sagan.discriminator_from_config(config.model),
      g_tx=adam(o.g_lr, config.total_steps),
      d_tx=adam(o.d_lr, config.total_steps * o.n_critic))


def extra_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys of `TrainState.extra` for `config` (a resumed run's must match)."""
  return tuple(sorted(regularizers.active(config) +
                      (("ada",) if augment.ada_enabled(config) else ())))


def init_extra(config: ml_collections.ConfigDict) -> dict[str, PyTree]:
  """`TrainState.extra` of a fresh run: ADA's and the active D regularisers' first states."""
  extra = regularizers.init_states(config)
  if augment.ada_enabled(config):
    extra["ada"] = augment.ada_init(config)
  return extra


def init_state(models: Models, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Fresh state: G, D (with warmed-up SN vectors), optimisers, EMA = G."""
  m = config.model
  g_key, d_key = jax.random.split(jax.random.fold_in(rng, 1))
  z = jnp.zeros((2, m.z_dim), jnp.float32)
  y = jnp.zeros((2,), jnp.int32)   # G and D ignore labels when unconditional
  x = jnp.zeros((2, m.resolution, m.resolution, 3), jnp.float32)
  g_vars = models.generator.init({"params": g_key}, z, y, train=False)
  d_vars = models.discriminator.init({"params": d_key}, x, y, update_sn=False)
  g = {k: g_vars.get(k, {}) for k in G_COLLECTIONS}
  d = {k: d_vars.get(k, {}) for k in D_COLLECTIONS}
  return TrainState(
      step=jnp.zeros((), jnp.int32), g=g, d=d,
      # Real copies: the EMA must never alias G's (donated) buffers.
      ema=jax.tree.map(jnp.copy, g),
      opt={"g": models.g_tx.init(g["params"]), "d": models.d_tx.init(d["params"])},
      extra=init_extra(config))


def create_state(models: Models, config: ml_collections.ConfigDict, mesh) -> TrainState:
  """Initialised state (seeded by config.seed), placed replicated on the mesh."""
  rng = jax.random.PRNGKey(config.seed)
  return jax.jit(functools.partial(init_state, models, config),
                 out_shardings=parallel.replicated(mesh))(rng)


def abstract_state(config: ml_collections.ConfigDict, mesh=None) -> tuple[Models, TrainState]:
  """(models, the state's shapes and dtypes) without computing anything.

  With a mesh, every leaf carries the replicated sharding the train step uses,
  so an Orbax restore into it places the arrays directly on that mesh.
  """
  models = make_models(config)
  shapes = jax.eval_shape(functools.partial(init_state, models, config), jax.random.PRNGKey(0))
  if mesh is not None:
    rep = parallel.replicated(mesh)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                          shapes)
  return models, shapes


def generator_variables(state: TrainState, use_ema: bool = True) -> dict[str, PyTree]:
  """G's variables of a state: the EMA copy (default) or the raw generator."""
  return state.ema if use_ema else state.g
