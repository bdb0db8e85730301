"""Training: the state, the pure train step, and the loop around it.

One iteration = `n_critic` discriminator updates (each on concat(real, fake)
so D's SN vectors advance once per D update) followed by one generator
update, with separate Adam optimisers (TTUR: G 1e-4, D 4e-4) and an EMA of
G. `train_step(state, batch, rng)` is a pure function; `train_and_evaluate`
jits it once over a data-parallel mesh and runs the loop: logging,
sample grids, Orbax checkpoints, resume and preemption.
"""

from __future__ import annotations

import functools
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from sagan_jax import checkpointing, config_base, images, losses, parallel, sampling
from sagan_jax.models import layers, sagan

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: iterations done
  rng: jax.Array             # base PRNG key (uint32[2]); step keys are fold_in(rng, step)
  g_params: PyTree
  g_batch_stats: PyTree
  g_spectral: PyTree
  d_params: PyTree
  d_spectral: PyTree
  g_opt_state: PyTree
  d_opt_state: PyTree
  ema_params: PyTree         # EMA of G's params
  ema_batch_stats: PyTree    # EMA of G's BN running statistics
  ema_spectral: PyTree       # SN vectors power-iterated on the EMA weights


@flax.struct.dataclass
class Models:
  """G, D and their optimisers: static (hashable) parts of the step."""
  generator: sagan.Generator = flax.struct.field(pytree_node=False)
  discriminator: sagan.Discriminator = flax.struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_schedule(lr: float, total: int, o: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning-rate schedule over `total` optimiser updates."""
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
  o = config.optim
  adam = lambda lr, total: optax.adam(make_schedule(lr, total, o), b1=o.beta1,  # noqa: E731
                                      b2=o.beta2, eps=o.eps)
  return Models(
      generator=sagan.generator_from_config(config.model),
      discriminator=sagan.discriminator_from_config(config.model),
      g_tx=adam(o.g_lr, config.total_steps),
      d_tx=adam(o.d_lr, config.total_steps * o.n_critic))


def _labels(num_classes: int, labels: jax.Array) -> jax.Array | None:
  return labels if num_classes > 0 else None


def init_state(models: Models, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """Fresh state: G, D (with warmed-up SN vectors), optimisers, EMA = G."""
  m = config.model
  g_key, d_key = jax.random.split(jax.random.fold_in(rng, 1))
  z = jnp.zeros((2, m.z_dim), jnp.float32)
  y = jnp.zeros((2,), jnp.int32)
  x = jnp.zeros((2, m.resolution, m.resolution, 3), jnp.float32)
  g_vars = models.generator.init({"params": g_key}, z, _labels(m.num_classes, y), train=False)
  d_vars = models.discriminator.init({"params": d_key}, x, _labels(m.num_classes, y),
                                     update_sn=False)
  g_vars = {k: g_vars.get(k, {}) for k in ("params", "batch_stats", "spectral")}
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      g_params=g_vars["params"], g_batch_stats=g_vars["batch_stats"],
      g_spectral=g_vars["spectral"],
      d_params=d_vars["params"], d_spectral=d_vars["spectral"],
      g_opt_state=models.g_tx.init(g_vars["params"]),
      d_opt_state=models.d_tx.init(d_vars["params"]),
      # Real copies: the EMA must never alias G's (donated) buffers.
      ema_params=jax.tree.map(jnp.copy, g_vars["params"]),
      ema_batch_stats=jax.tree.map(jnp.copy, g_vars["batch_stats"]),
      ema_spectral=jax.tree.map(jnp.copy, g_vars["spectral"]))


def normalize_images(x: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1] (on device)."""
  return x.astype(jnp.float32) / 127.5 - 1.0


def _tree_stats(tree: PyTree, leaf_name: str) -> dict[str, jax.Array]:
  """{path: value} for every leaf called `leaf_name` (attention gammas)."""
  out = {}
  for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys[-1] == leaf_name:
      out["/".join(keys[:-1])] = v
  return out


def _sigmas(spectral: PyTree) -> jax.Array:
  leaves = [v for p, v in jax.tree_util.tree_flatten_with_path(spectral)[0]
            if getattr(p[-1], "key", None) == "sigma"]
  return jnp.stack(leaves)


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

  g_vars = {"params": state.g_params, "batch_stats": state.g_batch_stats,
            "spectral": state.g_spectral}

  d_params, d_opt_state, d_spectral = state.d_params, state.d_opt_state, state.d_spectral
  for i in range(o.n_critic):
    z, y_fake = sample_zy(jax.random.fold_in(key, i))
    # G in train mode (batch statistics); its state updates are kept only in the G step.
    fake, _ = G.apply(g_vars, z, _labels(n_classes, y_fake), train=True,
                      mutable=["batch_stats", "spectral"])
    fake = jax.lax.stop_gradient(fake)
    real = normalize_images(batch["image"][i])
    x = jnp.concatenate([real, fake], axis=0)
    y = jnp.concatenate([batch["label"][i], y_fake], axis=0)

    def d_loss_fn(params):
      out, new = D.apply({"params": params, "spectral": d_spectral}, x,
                         _labels(n_classes, y), update_sn=True, mutable=["spectral"])
      d_real, d_fake = out[:b], out[b:]
      return d_loss_fn_(d_real, d_fake), (new["spectral"], d_real, d_fake)

    (d_loss, (d_spectral, d_real, d_fake)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(d_params)
    updates, d_opt_state = models.d_tx.update(d_grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)

  z, y_fake = sample_zy(jax.random.fold_in(key, o.n_critic))

  def g_loss_fn(params):
    fake, new = G.apply({**g_vars, "params": params}, z, _labels(n_classes, y_fake),
                        train=True, mutable=["batch_stats", "spectral"])
    out = D.apply({"params": d_params, "spectral": d_spectral}, fake,
                  _labels(n_classes, y_fake), update_sn=False)
    return g_loss_fn_(out), new

  (g_loss, g_new), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  updates, g_opt_state = models.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  g_batch_stats = g_new.get("batch_stats", {})

  # EMA: before start_step the copy tracks G exactly (decay 0).
  decay = jnp.where(state.step >= config.ema.start_step, config.ema.decay, 0.0)
  ema = lambda e, p: optax.incremental_update(p, e, 1.0 - decay)  # noqa: E731
  ema_params = jax.tree.map(ema, state.ema_params, g_params)
  ema_batch_stats = jax.tree.map(ema, state.ema_batch_stats, g_batch_stats)
  ema_spectral = layers.refresh_spectral(ema_params, state.ema_spectral, 1, m.sn_eps)

  new_state = state.replace(
      step=state.step + 1, g_params=g_params, g_batch_stats=g_batch_stats,
      g_spectral=g_new.get("spectral", {}), d_params=d_params, d_spectral=d_spectral,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema_params,
      ema_batch_stats=ema_batch_stats, ema_spectral=ema_spectral)

  metrics = {"d_loss": d_loss, "g_loss": g_loss,
             "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake),
             "g_sigma_mean": jnp.mean(_sigmas(new_state.g_spectral)),
             "d_sigma_mean": jnp.mean(_sigmas(d_spectral)),
             "d_sigma_max": jnp.max(_sigmas(d_spectral))}
  for name, v in _tree_stats(g_params, "gamma").items():
    if "attention" in name:
      metrics[f"gamma/G/{name}"] = v
  for name, v in _tree_stats(d_params, "gamma").items():
    if "attention" in name:
      metrics[f"gamma/D/{name}"] = v
  return new_state, metrics


def sample_grid_inputs(config, n_per_class: int = 10, max_classes: int = 10):
  """Fixed noise and labels for the progress grids: a row per class."""
  m = config.model
  rows = min(m.num_classes, max_classes) if m.num_classes else max_classes
  labels = np.repeat(np.arange(rows), n_per_class).astype(np.int32)
  z = jax.random.normal(jax.random.PRNGKey(config.seed + 12345), (labels.size, m.z_dim))
  return z, labels, n_per_class


class _Preemption:
  """Turns SIGTERM (TPU maintenance, scheduler kill) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int, poll_every: int = 10) -> bool:
    """Whether to stop after `step`. Multi-process runs agree every `poll_every` steps."""
    if jax.process_count() > 1:
      if step % poll_every:
        return False
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # noqa: BLE001 - preemption service not enabled
        pass
      # Agree across processes: any process's SIGTERM stops all of them.
      flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
      return bool(np.any(flags))
    return self.requested


def say(msg: str, *args) -> None:
  """Human-readable progress on stdout (chief process only)."""
  if jax.process_index() == 0:
    print(msg % args if args else msg, flush=True)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  mnt, s = divmod(rem, 60)
  return f"{h}h{mnt:02d}m" if h else f"{mnt}m{s:02d}s"


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(metrics: dict[str, float], step: int, last_ckpt: int | None, workdir: str):
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    where = (f"the last good checkpoint (step {last_ckpt}) in {workdir}/checkpoints is intact "
             "and a rerun with the same --workdir resumes from it"
             if last_ckpt is not None else "no checkpoint was written yet")
    raise NonFiniteLossError(
        f"non-finite values at step {step}: {bad}. Training stopped without saving "
        f"this state; {where}. Try lower learning rates (--config.optim.d_lr / g_lr), "
        "float32 (--config.model.dtype=float32), or a different --config.seed.")


def make_train_step(models: Models, config, mesh) -> Callable:
  """jit(train_step) with the state replicated and the batch sharded on 'data'."""
  rep = parallel.replicated(mesh)
  step = functools.partial(train_step, models=models, config=config,
                           z_sharding=parallel.batch_sharding(mesh))
  return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh, 1), rep),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def create_state(models: Models, config, mesh) -> TrainState:
  """Initialised state, placed replicated on the mesh."""
  rng = jax.random.PRNGKey(config.seed)
  return jax.jit(functools.partial(init_state, models, config),
                 out_shardings=parallel.replicated(mesh))(rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh=None, stop_after: int | None = None) -> TrainState:
  """Trains (or resumes) in `workdir` until config.total_steps.

  stop_after: stop (with a checkpoint) once this step is reached, as if
  preempted; used by tests of resumption.
  """
  from clu import metric_writers

  from sagan_jax import data as data_lib
  from sagan_jax.data.errors import DataError
  from sagan_jax.evaluation import training_eval

  config_base.validate(config)
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  is_chief = jax.process_index() == 0
  ckpt = checkpointing.Checkpointer(workdir, config)
  n_critic = config.optim.n_critic
  # The data first: a missing dataset fails before anything is compiled.
  planned_start = ckpt.latest_step() or 0
  source = data_lib.make_source(config, process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                start_batch=planned_start * n_critic)
  m = config.model
  if source.resolution != m.resolution:
    raise DataError(f"data source {source.name!r} yields {source.resolution}px images but "
                     f"config.model.resolution={m.resolution}.")
  if m.num_classes and source.num_classes != m.num_classes:
    raise DataError(f"data source {source.name!r} has {source.num_classes} classes but "
                     f"config.model.num_classes={m.num_classes}; set "
                     f"--config.model.num_classes={source.num_classes} (or 0 for unconditional).")
  models = make_models(config)
  state = ckpt.restore_latest(create_state(models, config, mesh))
  start = int(state.step)
  if start != planned_start:
    raise checkpointing.CheckpointError(
        f"restored step {start} but the latest checkpoint is {planned_start}.")

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief,
                                                asynchronous=False)
  if start == 0:
    writer.write_hparams(_flat(config.to_dict()))
  step_fn = make_train_step(models, config, mesh)
  # A separate buffer: state (and its rng field) is donated to each step.
  rng = jax.device_put(np.asarray(jax.device_get(state.rng)), parallel.replicated(mesh))
  grid_z, grid_y, grid_cols = sample_grid_inputs(config)
  gen_fn = sampling.jitted_generate(models.generator)

  def write_samples(step: int):
    labels = _labels(m.num_classes, jnp.asarray(grid_y))
    imgs = images.to_uint8(gen_fn(sampling.ema_variables(state), grid_z, labels))
    grid = images.make_grid(imgs, grid_cols)
    if is_chief:
      images.save_png(f"{workdir}/samples/step_{step:07d}.png", grid,
                      scale=max(1, 128 // m.resolution))
    writer.write_images(step, {"samples_ema": grid[None]})

  evaluator = training_eval.make(config)
  best = checkpointing.BestCheckpointer(workdir, config, evaluator.mode) if evaluator else None
  eval_labels = sampling.balanced_labels(evaluator.num_samples if evaluator else 0,
                                         m.num_classes)

  def evaluate(step: int):
    imgs = sampling.generate_from_state(config, models, state, eval_labels, seed=config.seed + 1,
                                        batch_size=min(100, len(eval_labels)))
    results = evaluator.score(imgs, eval_labels)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    say("eval at step %d (%d EMA samples, %s): %s", step, len(eval_labels), evaluator.name,
        ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    best.save(step, state, results[evaluator.primary])

  def next_batch():
    parts = [next(source) for _ in range(n_critic)]
    local = {k: np.stack([p[k] for p in parts]) for k in ("image", "label")}
    return parallel.global_batch(local, mesh, leading_axes=1)

  end = config.total_steps if stop_after is None else min(stop_after, config.total_steps)
  say("Training %s: steps %d -> %d, global batch %d on %d devices (%d processes).",
      workdir, start, end, config.batch_size, mesh.devices.size, jax.process_count())
  last_ckpt = ckpt.latest_step()
  t_log, step_log = time.time(), start
  t_start = time.time()
  step = start
  try:
    with _Preemption() as preempt:
      while step < end:
        state, metrics = step_fn(state, next_batch(), rng)
        step += 1
        if step == start + 1:  # throughput and ETA exclude the first step's compilation
          jax.block_until_ready(metrics)
          t_log, step_log = time.time(), step
        log_now = step % config.log_every == 0 or step == end
        ckpt_now = step % config.checkpoint_every == 0 or step == end
        stop_now = preempt.should_stop(step)
        if log_now or ckpt_now or stop_now:
          # Never log or save a state whose losses went NaN/Inf.
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          _check_finite(scalars, step, last_ckpt, workdir)
        if log_now:
          now = time.time()
          sps = (step - step_log) / max(now - t_log, 1e-9)
          scalars.update({"steps_per_sec": sps, "images_per_sec": sps * config.batch_size})
          writer.write_scalars(step, scalars)
          say("step %d/%d | d_loss %.4f g_loss %.4f | D(x) %.3f D(G(z)) %.3f | "
              "%.2f steps/s %.1f img/s | elapsed %s ETA %s", step, end, scalars["d_loss"],
              scalars["g_loss"], scalars["d_real"], scalars["d_fake"], sps,
              sps * config.batch_size, _format_duration(now - t_start),
              _format_duration((end - step) / max(sps, 1e-9)))
          t_log, step_log = now, step
        if ckpt_now or stop_now:
          ckpt.save(step, state)
          last_ckpt = step
        if (config.sample_every and step % config.sample_every == 0) or step == end:
          write_samples(step)
        if evaluator and (step % config.eval_every == 0 or step == end):
          evaluate(step)
        if stop_now:
          say("Stopped at step %d on request; rerun with the same --workdir to resume.", step)
          break
  finally:
    ckpt.wait()  # a started save completes (or is discarded), even on error
    if best is not None:
      best.wait()
    writer.flush()
  return state


def _flat(d: dict, prefix: str = "") -> dict:
  """Nested config dict -> {'a.b': scalar} for TensorBoard's hparams."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
