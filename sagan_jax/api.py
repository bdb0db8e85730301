"""A trained (or converted) run from Python: load it, generate, discriminate, sample.

  import sagan_jax
  run = sagan_jax.load("runs/digits")            # latest checkpoint (or step=N, best=True)
  images = run.sample(20, seed=0)                # uint8 [20, H, W, 3], classes 0, 1, 2, ...
  x = run.generate(z, labels)                    # float32 NHWC in [-1, 1], eval-mode BN
  logits = run.discriminate(x, labels)           # float32 [N]
  run = run.with_standing_stats(100)             # BigGAN's standing BN statistics

Everything runs on one device in fixed-size batches (the last one padded),
so each function compiles once per batch size. `sample`, `evaluate` and
notebooks all go through here.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sagan_jax import checkpointing, images, sampling, xla_flags
from sagan_jax.errors import ConfigError
from sagan_jax.state import Models, TrainState, generator_variables, make_models


@dataclasses.dataclass(frozen=True)
class Run:
  """One checkpoint of a run: its config, models and state (G, EMA G, D)."""
  config: ml_collections.ConfigDict
  models: Models
  state: TrainState

  @property
  def step(self) -> int:
    return int(self.state.step)

  def _labels(self, labels, n: int) -> np.ndarray:
    if self.config.model.num_classes == 0:
      return np.zeros((n,), np.int32)
    if labels is None:
      raise ValueError("this model is class-conditional: pass labels")
    labels = np.asarray(labels, np.int32).reshape(-1)
    if labels.shape[0] != n:
      raise ValueError(f"{labels.shape[0]} labels for {n} inputs")
    return labels

  def generate(self, z, labels=None, ema: bool = True, batch_size: int = 100) -> np.ndarray:
    """G(z, labels): float32 [N, H, W, 3] in [-1, 1]; eval mode (running BN statistics)."""
    z = np.asarray(z, np.float32)
    fn = functools.partial(sampling.jitted_generate(self.models.generator),
                           generator_variables(self.state, ema))
    return _batched(fn, batch_size, z, self._labels(labels, len(z)),
                    conditional=self.config.model.num_classes > 0)

  def discriminate(self, images_in, labels=None, batch_size: int = 100) -> np.ndarray:
    """D's logits [N] for images (float in [-1, 1] or uint8, NHWC); SN state unchanged."""
    x = np.asarray(images_in)
    x = images.normalize(x) if x.dtype == np.uint8 else x.astype(np.float32)
    fn = functools.partial(_jitted_discriminate(self.models.discriminator), self.state.d)
    return _batched(fn, batch_size, x, self._labels(labels, len(x)),
                    conditional=self.config.model.num_classes > 0)

  def sample(self, num: int, seed: int = 0, labels=None, ema: bool = True,
             batch_size: int | None = None, truncation: float | None = None) -> np.ndarray:
    """uint8 [num, H, W, 3]; labels default to 0, 1, ..., K-1, 0, 1, ... (balanced).

    The noise of batch i comes from fold_in(PRNGKey(seed), i) in batches of
    `batch_size` (default min(100, num)): the same seed and batch size give
    the same images.
    """
    if labels is None:
      labels = sampling.balanced_labels(num, self.config.model.num_classes)
    batch_size = batch_size or min(100, max(num, 1))
    return sampling.generate_from_state(self.config, self.models, self.state,
                                        np.asarray(labels, np.int32), seed, batch_size, ema,
                                        truncation)

  def with_standing_stats(self, num_passes: int, batch_size: int = 100, seed: int = 0,
                          ema: bool = True) -> Run:
    """This run with G's BN statistics recomputed from `num_passes` train-mode passes.

    BigGAN's "standing statistics": the running averages are replaced by the
    mean, over the passes, of each batch's mean and variance, G (the EMA copy
    by default) seeing N(0, I) noise and uniformly drawn classes. Each pass
    runs G as in training (its SN vectors advance for that pass only; nothing
    else of the state changes).
    """
    if num_passes < 1:
      raise ConfigError(f"standing statistics need at least 1 pass (got {num_passes})")
    m = self.config.model
    key = jax.random.PRNGKey(seed)

    def batches():
      for i in range(num_passes):
        kz, ky = jax.random.split(jax.random.fold_in(key, i))
        y = jax.random.randint(ky, (batch_size,), 0, max(m.num_classes, 1))  # 0: ignored
        yield jax.random.normal(kz, (batch_size, m.z_dim)), y

    name = "ema" if ema else "g"
    variables = getattr(self.state, name)
    stats = standing_batch_stats(self.models.generator, variables, batches())
    new = {**variables, "batch_stats": stats}
    return dataclasses.replace(self, state=self.state.replace(**{name: new}))


def load(workdir: str, step: int | None = None, best: bool = False) -> Run:
  """The run in `workdir` at its newest intact (or the given) checkpoint, on one device.

  best: its best-evaluated checkpoint instead (WORKDIR/checkpoints_best, written
  when the run had an in-training evaluation; `step` then picks among those).
  The checkpoint's files are verified first; a damaged newest one is skipped
  with a warning (see `checkpointing.load`).
  """
  restored = checkpointing.load(workdir, step, best=best)
  return Run(restored.config, make_models(restored.config), restored.state)


def standing_batch_stats(generator, variables: dict, batches) -> dict:
  """Every BN layer's batch mean and var, averaged over train-mode passes on `batches`.

  batches: an iterable of (z, labels or None). Nothing of `variables` changes.
  """
  # momentum 0: after a pass the running statistics are exactly that batch's.
  step = _standing_pass(generator.clone(bn_momentum=0.0))
  total, n = None, 0
  for z, y in batches:
    stats = step(variables, z, y)
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    n += 1
  if total is None:
    raise ValueError("standing statistics need at least one batch")
  return jax.tree.map(lambda s: s / n, total)


@functools.lru_cache(maxsize=8)
def _standing_pass(generator):
  @functools.partial(jax.jit, compiler_options=xla_flags.compiler_options(generator.dtype))
  def step(variables, z, y):
    _, updates = generator.apply(variables, z, y, train=True,
                                 mutable=["batch_stats", "spectral"])
    return updates["batch_stats"]
  return step


@functools.lru_cache(maxsize=8)
def _jitted_discriminate(discriminator):
  def apply(variables, x, labels):
    return discriminator.apply(variables, x, labels, update_sn=False)
  return jax.jit(apply, compiler_options=xla_flags.compiler_options(discriminator.dtype))


def _batched(fn, batch_size: int, x: np.ndarray, labels: np.ndarray,
             conditional: bool) -> np.ndarray:
  """fn(x, labels) over fixed-size batches (the last padded), outputs concatenated."""
  n = x.shape[0]
  batch_size = min(batch_size, max(n, 1))
  out = []
  for i in range(0, n, batch_size):
    xb, yb = x[i:i + batch_size], labels[i:i + batch_size]
    pad = batch_size - xb.shape[0]
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
    y = jnp.asarray(yb) if conditional else None
    out.append(np.asarray(fn(jnp.asarray(xb), y), np.float32)[:batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)
