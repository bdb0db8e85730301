"""Evaluators that run during training, selected by name from the config.

Every evaluator has one interface:

    ev = evaluators.make(config, models, mesh)     # None when config.eval_every == 0
    ev.due(step)        -> whether to run after this step (its own schedule)
    ev.run(state)       -> {'accuracy': ..., ...}  (plain floats)
    ev.primary, ev.mode -> which number picks the best checkpoint, 'max' or 'min'

Each one samples `config.eval.num_samples` images from the EMA generator itself
(classes balanced, noise seeded by config.seed + 1, so successive evaluations
compare the same z) and scores them. Registered names (`config.eval.metric`):

  digits  the digits classifier score (accuracy of the conditioned class,
          Frechet distance in the classifier's feature space, within-class
          diversity): cheap, for the embedded demo;
  fid     FID (and IS when the weights have the classifier) of the Inception
          network against `config.eval.ref_stats`, features extracted on the
          training mesh;
  auto    'digits' for the digits source, else 'fid'.

A new evaluator is a subclass of `SampleEvaluator` with `score(images,
labels)`, decorated with `@register('name')`.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from sagan_jax import errors, sampling

_REGISTRY: dict[str, type[SampleEvaluator]] = {}


def register(name: str) -> Callable[[type], type]:
  def deco(cls):
    _REGISTRY[name] = cls
    cls.name = name
    return cls
  return deco


def names() -> tuple[str, ...]:
  """Registered evaluator names (plus 'auto')."""
  return ("auto",) + tuple(sorted(_REGISTRY))


def resolve_name(config) -> str:
  """config.eval.metric with 'auto' resolved for the data source."""
  name = config.eval.metric
  if name == "auto":
    return "digits" if config.data.source == "digits" else "fid"
  return name


class SampleEvaluator:
  """Samples the EMA generator, then scores the images (subclasses give `score`)."""

  name = "base"
  primary = ""   # key of run()'s result that picks the best checkpoint
  mode = "max"   # 'max' or 'min': which direction of `primary` is better

  @classmethod
  def check_config(cls, config) -> None:
    """Raises ConfigError if this evaluator cannot run with `config` (before any compile)."""

  def __init__(self, config, models, mesh):
    self.config = config
    self.models = models
    self.mesh = mesh
    self.every = config.eval_every
    self.num_samples = config.eval.num_samples
    self.labels = sampling.balanced_labels(self.num_samples, config.model.num_classes)

  def due(self, step: int, last_step: int) -> bool:
    """Whether to evaluate after `step` (every `every` steps and at the end)."""
    return step % self.every == 0 or step == last_step

  def run(self, state) -> dict[str, float]:
    imgs = sampling.generate_from_state(self.config, self.models, state, self.labels,
                                        seed=self.config.seed + 1,
                                        batch_size=min(100, len(self.labels)))
    return self.score(imgs, self.labels)

  def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    raise NotImplementedError


@register("digits")
class DigitsEvaluator(SampleEvaluator):
  primary, mode = "accuracy", "max"

  @classmethod
  def check_config(cls, config):
    classes = tuple(config.data.classes)
    want = len(classes) if classes else 10
    if config.model.num_classes != want or any(k >= 10 for k in classes):
      raise errors.ConfigError(
          f"config.eval.metric={config.eval.metric!r} is invalid: the digits score needs a "
          f"class-conditional digits model with one class per digit of data.classes (10 "
          f"when it is empty; config.model.num_classes={config.model.num_classes}, "
          f"data.classes={classes}); use --config.eval.metric=fid or --config.eval_every=0.")

  def score(self, images, labels):
    """Model label k is digit data.classes[k]: scored against the real digits of those."""
    from sagan_jax.evaluation import digits_score
    classes = tuple(self.config.data.classes) or None
    if classes:
      labels = np.asarray(classes)[labels]
    r = digits_score.digits_score(images, labels, classes=classes)
    return {k: r[k] for k in ("accuracy", "frechet", "diversity") if r[k] is not None}


@register("fid")
class FidEvaluator(SampleEvaluator):
  primary, mode = "fid", "min"

  @classmethod
  def check_config(cls, config):
    if not config.eval.ref_stats:
      raise errors.ConfigError(
          "config.eval.ref_stats is empty: FID during training needs reference statistics; "
          "make them with `python -m sagan_jax.evaluate --compute_ref_stats OUT.npz ...`, "
          "or set --config.eval_every=0.")

  def __init__(self, config, models, mesh):
    super().__init__(config, models, mesh)
    from sagan_jax.evaluation import metrics
    # The feature extractor shards batches over the training mesh (one process only:
    # every process then scores the same samples).
    mesh = mesh if jax.process_count() == 1 else None
    self._metrics = metrics.Evaluator.create(
        config.eval.ref_stats, weights=config.eval.inception_weights or None, mesh=mesh)

  def score(self, images, labels):
    del labels
    out = self._metrics.evaluate(images)
    return {k: v for k, v in out.items() if v is not None and k != "num_samples"}


def _lookup(config) -> type[SampleEvaluator]:
  name = resolve_name(config)
  if name not in _REGISTRY:
    raise errors.ConfigError(f"config.eval.metric={config.eval.metric!r} is invalid: use one "
                             f"of {names()}.")
  return _REGISTRY[name]


def check_config(config) -> None:
  """ConfigError unless config.eval names an evaluator that can run (config_base.validate)."""
  cls = _lookup(config)
  if config.eval_every:
    cls.check_config(config)


def make(config, models, mesh) -> SampleEvaluator | None:
  """The evaluator config.eval.metric names, or None when config.eval_every == 0."""
  if not config.eval_every:
    return None
  cls = _lookup(config)
  cls.check_config(config)
  return cls(config, models, mesh)
