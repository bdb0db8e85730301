"""The train step in named phases: the D update, the G update, the EMA update, the diagnostics.

One iteration = `n_critic` D updates (each on concat(real, fake), so D's SN
vectors advance once per D update), then one G update through D (D's SN
state read, not changed), then the EMA of G's weights and BN statistics
(with the EMA's SN vectors re-iterated on the EMA weights), then the
metrics. `train_step(state, batch, rng)` is their composition, a pure
function that `train.make_train_step` jits.

Two places take what later methods add:
- `d_view(images, key, p)`: the one place where real and fake images are
  transformed before D sees them, in the D and the G update alike (the
  augmentation policy of `sagan_jax.augment`; identity when it is empty);
- D's loss = the adversarial loss of its logits + `regularizers.d_terms`
  (terms that need D, its inputs and their own state in `state.extra`).

Keys: step k's key is fold_in(rng, k); D update i draws its noise from
fold_in(key, i), the G update from fold_in(key, n_critic), and the
augmentation from the same numbers folded into fold_in(key, _AUG_SALT).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sagan_jax import augment, images, losses, regularizers
from sagan_jax.models import layers, sagan
from sagan_jax.state import Models, TrainState

PyTree = Any
_AUG_SALT = 2**31 - 2   # folded into the step key for the augmentation draws


def named_leaves(tree: PyTree, leaf_name: str) -> dict[str, jax.Array]:
  """{'a/b': value} for every leaf called `leaf_name` (e.g. attention gammas)."""
  out = {}
  for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-1] == leaf_name:
      out["/".join(keys[:-1])] = v
  return out


def _sigmas(spectral: PyTree) -> jax.Array:
  return jnp.stack(list(named_leaves(spectral, "sigma").values()))


def frozen_d_modules(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of D's top-level modules that `config.freeze_d_blocks` keeps fixed (FreezeD).

  D's first K blocks (block1 .. blockK) and a self-attention layer that sits
  after one of them.
  """
  k = config.freeze_d_blocks
  if not k:
    return ()
  m = config.model
  arch = sagan.architecture(m.resolution, m.d_ch or m.ch)
  names, attended = [], set()
  for i, spec in enumerate(arch.d_blocks):
    attn = spec.out_res in tuple(m.d_attention) and spec.out_res not in attended
    attended.add(spec.out_res) if attn else None
    if i < k:
      names.append(f"block{i + 1}")
      if attn:
        names.append(f"attention{spec.out_res}")
  return tuple(names)


def d_view(config, x: jax.Array, key: jax.Array, p) -> jax.Array:
  """The images as D sees them: the augmentation policy, or x itself when it is empty."""
  policy = augment.parse_policy(config.augment.policy)
  return augment.augment(x, key, policy, p) if policy else x


def _noise(key, b: int, config, z_sharding):
  kz, ky = jax.random.split(key)
  z = jax.random.normal(kz, (b, config.model.z_dim), jnp.float32)
  y = jax.random.randint(ky, (b,), 0, max(config.model.num_classes, 1), jnp.int32)
  if z_sharding is not None:
    z = jax.lax.with_sharding_constraint(z, z_sharding)
    y = jax.lax.with_sharding_constraint(y, z_sharding)
  return z, y


def _one_d_update(d_params, d_opt, d_spectral, extra, real, y_real, fake, y_fake, aug_key, p,
                  *, models: Models, config):
  """One D step on concat(real, fake): new params, Adam state, SN state, extra, outputs."""
  D = models.discriminator
  d_loss_fn = losses.LOSSES[config.loss][0]
  b = real.shape[0]
  x = d_view(config, jnp.concatenate([real, fake], axis=0), aug_key, p)
  y = jnp.concatenate([y_real, y_fake], axis=0)

  def loss_fn(params):
    out, new = D.apply({"params": params, "spectral": d_spectral}, x, y, update_sn=True,
                       mutable=["spectral"])
    d_real, d_fake = out[:b], out[b:]
    loss = d_loss_fn(d_real, d_fake)
    inputs = regularizers.DInputs(d_real, d_fake, x, y, params=params, apply_d=lambda q, xx, yy:
                                  D.apply({"params": q, "spectral": d_spectral}, xx, yy,
                                          update_sn=False))
    reg, reg_states, _ = regularizers.d_terms(config, inputs, extra)
    if reg is not None:
      loss = loss + reg
    return loss, (new.get("spectral", {}), d_real, d_fake, reg_states)   # {}: model.d_sn off

  (loss, (d_spectral, d_real, d_fake, reg_states)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(d_params)
  updates, d_opt = models.d_tx.update(grads, d_opt, d_params)
  new_params = optax.apply_updates(d_params, updates)
  frozen = frozen_d_modules(config)
  if frozen:
    new_params = {k: (d_params[k] if k in frozen else v) for k, v in new_params.items()}
  return new_params, d_opt, d_spectral, {**extra, **reg_states}, (loss, d_real, d_fake)


def d_update(state: TrainState, batch, key, p, *, models: Models, config, z_sharding):
  """The n_critic D updates: (D's variables, D's Adam state, state.extra, D's metrics)."""
  G = models.generator
  b = batch["image"].shape[1]
  d_params, d_opt, d_spectral = state.d["params"], state.opt["d"], state.d["spectral"]
  extra, sign_real = dict(state.extra), 0.0
  for i in range(config.optim.n_critic):
    z, y_fake = _noise(jax.random.fold_in(key, i), b, config, z_sharding)
    # G in train mode (batch statistics); its state updates are kept only in the G step.
    fake, _ = G.apply(state.g, z, y_fake, train=True,
                      mutable=["batch_stats", "spectral"])
    aug_key = jax.random.fold_in(jax.random.fold_in(key, _AUG_SALT), i)
    d_params, d_opt, d_spectral, extra, (loss, d_real, d_fake) = _one_d_update(
        d_params, d_opt, d_spectral, extra, images.normalize(batch["image"][i]),
        batch["label"][i], jax.lax.stop_gradient(fake), y_fake, aug_key, p,
        models=models, config=config)
    sign_real = sign_real + jnp.mean(jnp.sign(d_real)) / config.optim.n_critic
  if "ada" in extra:
    extra["ada"] = augment.ada_update(config, extra["ada"], state.step, sign_real)
  metrics = {"d_loss": loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
  if "ada" in extra:
    metrics.update({"ada_p": p, "ada_rt": sign_real})
  return {"params": d_params, "spectral": d_spectral}, d_opt, extra, metrics


def _after(x: jax.Array, arrays) -> jax.Array:
  """x, but computed only once all `arrays` are: x + 0 * their sum (x itself where they are
  finite). No data flows from D's update into G's forward pass, so XLA (on CPU, where it drops
  optimization barriers) may run that pass, keeping its activations for the backward pass,
  while D's backward pass holds its own: 128px batch 8, the two at once were the step's peak."""
  return x + 0.0 * sum(jnp.sum(a.astype(jnp.float32)) for a in arrays)


def g_update(state: TrainState, d_vars, b: int, key, p, *, models: Models, config, z_sharding,
             after=()):
  """One G update of batch b through D (D's SN state read only): (G's variables, Adam, loss).
  after: arrays that G's forward pass waits for (`_after`), D's new weights in `train_step`."""
  G, D = models.generator, models.discriminator
  g_loss_fn = losses.LOSSES[config.loss][1]
  k = config.optim.n_critic
  z, y_fake = _noise(jax.random.fold_in(key, k), b, config, z_sharding)
  z = _after(z, after) if after else z
  aug_key = jax.random.fold_in(jax.random.fold_in(key, _AUG_SALT), k)

  def loss_fn(params):
    fake, new = G.apply({**state.g, "params": params}, z, y_fake,
                        train=True, mutable=["batch_stats", "spectral"])
    out = D.apply(d_vars, d_view(config, fake, aug_key, p), y_fake,
                  update_sn=False)
    return g_loss_fn(out), new

  (g_loss, g_new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g["params"])
  updates, g_opt = models.g_tx.update(grads, state.opt["g"], state.g["params"])
  g = {"params": optax.apply_updates(state.g["params"], updates),
       "batch_stats": g_new.get("batch_stats", {}), "spectral": g_new.get("spectral", {})}
  return g, g_opt, g_loss


def ema_update(state: TrainState, g, *, config) -> dict[str, PyTree]:
  """The EMA generator after this step; before ema.start_step it tracks G exactly (decay 0)."""
  decay = jnp.where(state.step >= config.ema.start_step, config.ema.decay, 0.0)
  ema_update_ = lambda e, p: optax.incremental_update(p, e, 1.0 - decay)  # noqa: E731
  ema_params = jax.tree.map(ema_update_, state.ema["params"], g["params"])
  return {"params": ema_params,
          "batch_stats": jax.tree.map(ema_update_, state.ema["batch_stats"], g["batch_stats"]),
          "spectral": layers.refresh_spectral(ema_params, state.ema["spectral"], 1,
                                              config.model.sn_eps)}


def diagnostics(g, d_vars, d_metrics: dict, g_loss) -> dict[str, jax.Array]:
  """The step's metrics: losses, D's outputs, SN sigmas, attention gammas (and ADA's p, r_t)."""
  metrics = {"d_loss": d_metrics["d_loss"], "g_loss": g_loss,
             "d_real": d_metrics["d_real"], "d_fake": d_metrics["d_fake"]}
  if g["spectral"]:   # without SN (model.g_sn / d_sn False) there are no sigmas to report
    metrics["g_sigma_mean"] = jnp.mean(_sigmas(g["spectral"]))
  if d_vars["spectral"]:
    metrics.update(d_sigma_mean=jnp.mean(_sigmas(d_vars["spectral"])),
                   d_sigma_max=jnp.max(_sigmas(d_vars["spectral"])))
  metrics.update({k: v for k, v in d_metrics.items() if k not in metrics})
  for who, params in (("G", g["params"]), ("D", d_vars["params"])):
    for name, v in named_leaves(params, "gamma").items():
      if "attention" in name:
        metrics[f"gamma/{who}/{name}"] = v
  return metrics


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               models: Models, config: ml_collections.ConfigDict,
               z_sharding=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SAGAN iteration: n_critic D updates, one G update, the EMA, the metrics.

  batch: {'image': uint8 [n_critic, B, H, W, 3], 'label': int32 [n_critic, B]}.
  rng: base key; this step's noise comes from fold_in(rng, state.step).
  """
  key = jax.random.fold_in(rng, state.step)
  p = state.extra["ada"]["p"] if "ada" in state.extra else config.augment.p
  kw = dict(models=models, config=config, z_sharding=z_sharding)
  d_vars, d_opt, extra, d_metrics = d_update(state, batch, key, p, **kw)
  g, g_opt, g_loss = g_update(state, d_vars, batch["image"].shape[1], key, p,
                              after=jax.tree.leaves(d_vars["params"]), **kw)
  ema = ema_update(state, g, config=config)
  new_state = state.replace(step=state.step + 1, g=g, ema=ema, d=d_vars,
                            opt={"g": g_opt, "d": d_opt}, extra=extra)
  return new_state, diagnostics(g, d_vars, d_metrics, g_loss)
