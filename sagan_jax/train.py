"""Training: the pure train step and the loop around it.

One iteration = `n_critic` discriminator updates (each on concat(real, fake)
so D's SN vectors advance once per D update) followed by one generator
update, with separate Adam optimisers (TTUR: G 1e-4, D 4e-4) and an EMA of
G. `train_step(state, batch, rng)` is a pure function; `train_and_evaluate`
jits it once over a data-parallel mesh and runs the loop: logging, sample
grids, evaluation, Orbax checkpoints, resume and preemption. The state and
the models it is built from live in `sagan_jax.state`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sagan_jax import images, loop, losses, parallel
from sagan_jax.models import layers
from sagan_jax.state import Models, TrainState, class_labels

PyTree = Any


def _named_leaves(tree: PyTree, leaf_name: str) -> dict[str, jax.Array]:
  """{'a/b': value} for every leaf called `leaf_name` (e.g. attention gammas)."""
  out = {}
  for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-1] == leaf_name:
      out["/".join(keys[:-1])] = v
  return out


def _sigmas(spectral: PyTree) -> jax.Array:
  return jnp.stack(list(_named_leaves(spectral, "sigma").values()))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               models: Models, config: ml_collections.ConfigDict,
               z_sharding=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SAGAN iteration: n_critic D updates, one G update, EMA update.

  batch: {'image': uint8 [n_critic, B, H, W, 3], 'label': int32 [n_critic, B]}.
  rng: base key; this step's noise comes from fold_in(rng, state.step).
  """
  m, o = config.model, config.optim
  G, D = models.generator, models.discriminator
  d_loss_fn_, g_loss_fn_ = losses.LOSSES[config.loss]
  n_classes = m.num_classes
  b = batch["image"].shape[1]
  key = jax.random.fold_in(rng, state.step)

  def sample_zy(k):
    kz, ky = jax.random.split(k)
    z = jax.random.normal(kz, (b, m.z_dim), jnp.float32)
    y = jax.random.randint(ky, (b,), 0, max(n_classes, 1), jnp.int32)
    if z_sharding is not None:
      z = jax.lax.with_sharding_constraint(z, z_sharding)
      y = jax.lax.with_sharding_constraint(y, z_sharding)
    return z, y

  d_params, d_opt, d_spectral = state.d["params"], state.opt["d"], state.d["spectral"]
  for i in range(o.n_critic):
    z, y_fake = sample_zy(jax.random.fold_in(key, i))
    # G in train mode (batch statistics); its state updates are kept only in the G step.
    fake, _ = G.apply(state.g, z, class_labels(n_classes, y_fake), train=True,
                      mutable=["batch_stats", "spectral"])
    fake = jax.lax.stop_gradient(fake)
    real = images.normalize(batch["image"][i])
    x = jnp.concatenate([real, fake], axis=0)
    y = jnp.concatenate([batch["label"][i], y_fake], axis=0)

    def d_loss_fn(params):
      out, new = D.apply({"params": params, "spectral": d_spectral}, x,
                         class_labels(n_classes, y), update_sn=True, mutable=["spectral"])
      d_real, d_fake = out[:b], out[b:]
      return d_loss_fn_(d_real, d_fake), (new.get("spectral", {}), d_real, d_fake)

    (d_loss, (d_spectral, d_real, d_fake)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(d_params)
    updates, d_opt = models.d_tx.update(d_grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, updates)

  z, y_fake = sample_zy(jax.random.fold_in(key, o.n_critic))
  d_vars = {"params": d_params, "spectral": d_spectral}

  def g_loss_fn(params):
    fake, new = G.apply({**state.g, "params": params}, z, class_labels(n_classes, y_fake),
                        train=True, mutable=["batch_stats", "spectral"])
    out = D.apply(d_vars, fake, class_labels(n_classes, y_fake), update_sn=False)
    return g_loss_fn_(out), new

  (g_loss, g_new), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g["params"])
  updates, g_opt = models.g_tx.update(g_grads, state.opt["g"], state.g["params"])
  g = {"params": optax.apply_updates(state.g["params"], updates),
       "batch_stats": g_new.get("batch_stats", {}), "spectral": g_new.get("spectral", {})}

  # EMA: before start_step the copy tracks G exactly (decay 0).
  decay = jnp.where(state.step >= config.ema.start_step, config.ema.decay, 0.0)
  ema_update = lambda e, p: optax.incremental_update(p, e, 1.0 - decay)  # noqa: E731
  ema_params = jax.tree.map(ema_update, state.ema["params"], g["params"])
  ema = {"params": ema_params,
         "batch_stats": jax.tree.map(ema_update, state.ema["batch_stats"], g["batch_stats"]),
         "spectral": layers.refresh_spectral(ema_params, state.ema["spectral"], 1, m.sn_eps)}

  new_state = state.replace(step=state.step + 1, g=g, ema=ema, d=d_vars,
                            opt={"g": g_opt, "d": d_opt})
  metrics = {"d_loss": d_loss, "g_loss": g_loss,
             "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
  if m.g_sn:  # without SN (model.g_sn / d_sn False) there are no sigmas to report
    metrics["g_sigma_mean"] = jnp.mean(_sigmas(g["spectral"]))
  if m.d_sn:
    metrics.update(d_sigma_mean=jnp.mean(_sigmas(d_spectral)),
                   d_sigma_max=jnp.max(_sigmas(d_spectral)))
  for who, params in (("G", g["params"]), ("D", d_params)):
    for name, v in _named_leaves(params, "gamma").items():
      if "attention" in name:
        metrics[f"gamma/{who}/{name}"] = v
  return new_state, metrics


def make_train_step(models: Models, config, mesh) -> Callable:
  """jit(train_step) with the state replicated and the batch sharded on 'data'."""
  rep = parallel.replicated(mesh)
  step = functools.partial(train_step, models=models, config=config,
                           z_sharding=parallel.batch_sharding(mesh))
  return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


# The noise key of every step (moved with the loop; kept here for callers of train.step_rng).
step_rng = loop.step_rng


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, stop_after: int | None = None) -> TrainState:
  """Trains (or resumes) in `workdir` until config.total_steps.

  stop_after: stop (with a checkpoint) once this step is reached, as if
  preempted; used by tests of resumption. The loop itself is `sagan_jax.loop`.
  """
  return loop.run(config, workdir, mesh=mesh, stop_after=stop_after,
                  make_step=lambda *args: make_train_step(*args))   # (looked up at each run)
