"""The evaluations that run during training, each on its own schedule, chosen by name.

    evals = training_evals.make_all(config, models, mesh)   # [] when none is configured
    ev.due(step, last_step) -> whether to run after this step (its own schedule)
    ev.run(state)           -> {'accuracy': ..., ...}  (plain floats)
    ev.primary, ev.mode     -> which number picks the best checkpoint, 'max' or 'min'
    ev.tag                  -> its TensorBoard prefix ('eval', 'eval_kid', ...)

What runs (big_vision's `config.evals`, kept flat so that it can be set on a
command line and read back from a checkpoint):

* `config.eval.metric` every `config.eval_every` steps (0: not at all) on
  `config.eval.num_samples` samples, logged as `eval/...`;
* each entry of `config.evals`, a string `'metric:every[:num_samples]'`
  (e.g. `('kid:2000', 'prdc:2000:5000')`), logged as `eval_<metric>/...`.

The first of them picks the best checkpoint (`checkpoints_best`). Every
evaluator samples the EMA generator itself (classes balanced, noise seeded by
config.seed + 1, so successive evaluations compare the same z) and scores the
images. The Inception ones share one extractor, `config.eval.ref_stats` and
`config.eval.inception_weights`, through `inception_scorer`: the same code,
reference checks and feature pass as the `evaluate` command. Registered names:

  digits  the digits classifier score (accuracy of the conditioned class,
          Frechet distance and precision/recall/density/coverage in the
          classifier's feature space, within-class diversity): for the demo;
  fid     FID (and IS when the weights have the classifier);
  kid     KID (mean and std over subsets; the reference needs 'features');
  prdc    precision, recall, density, coverage (reference 'features');
          coverage picks the best checkpoint;
  auto    'digits' for the digits source, else 'fid'.

A new in-training metric is a subclass of `TrainingEval` with `score(images,
labels)`, decorated with `@register('name')`, in this file.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from sagan_jax import errors, sampling

_REGISTRY: dict[str, type[TrainingEval]] = {}


def register(name: str) -> Callable[[type], type]:
  def deco(cls):
    _REGISTRY[name] = cls
    cls.name = name
    return cls
  return deco


def names() -> tuple[str, ...]:
  """Registered evaluator names (plus 'auto')."""
  return ("auto",) + tuple(sorted(_REGISTRY))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One configured evaluation: which metric, how often, on how many samples."""
  metric: str
  every: int
  num_samples: int
  field: str     # the config field it came from (for messages)
  tag: str       # TensorBoard prefix


def _resolve(name: str, config) -> str:
  if name == "auto":
    return "digits" if config.data.source == "digits" else "fid"
  return name


def _parse(entry, i: int, config) -> Schedule:
  field = f"evals[{i}]"
  parts = str(entry).split(":")
  ok = len(parts) in (2, 3) and all(p.strip().isdigit() for p in parts[1:])
  if ok:
    every = int(parts[1])
    num = int(parts[2]) if len(parts) == 3 else config.eval.num_samples
    ok = every > 0 and num > 0
  if not ok:
    raise errors.ConfigError(
        f"config.{field}={entry!r} is invalid: use 'metric:every[:num_samples]' with "
        "positive integers, e.g. 'kid:2000' or 'prdc:2000:5000'.")
  metric = parts[0].strip()
  return Schedule(_resolve(metric, config), every, num, field,
                  f"eval_{_resolve(metric, config)}")


def schedules(config) -> list[Schedule]:
  """Every configured evaluation, the best-checkpoint one first; ConfigError if malformed."""
  out = []
  if config.eval_every:
    out.append(Schedule(_resolve(config.eval.metric, config), config.eval_every,
                        config.eval.num_samples, "eval.metric", "eval"))
  out += [_parse(e, i, config) for i, e in enumerate(config.get("evals", ()) or ())]
  tags = [s.tag for s in out]
  dup = sorted({t for t in tags if tags.count(t) > 1 and t != "eval"})
  if dup:
    raise errors.ConfigError(f"config.evals={tuple(config.evals)!r} is invalid: "
                             f"{dup[0][5:]} is listed twice.")
  for s in out:
    if s.metric not in _REGISTRY:
      raise errors.ConfigError(f"config.{s.field}={s.metric!r} is invalid: use one of "
                               f"{names()}.")
  return out


class TrainingEval:
  """Samples the EMA generator, then scores the images (subclasses give `score`)."""

  name = "base"
  primary = ""   # key of run()'s result that picks the best checkpoint
  mode = "max"   # 'max' or 'min': which direction of `primary` is better

  @classmethod
  def check_config(cls, config, schedule: Schedule) -> None:
    """Raises ConfigError if this evaluator cannot run with `config` (before any compile)."""

  def __init__(self, config, models, mesh, schedule: Schedule, shared: dict):
    self.config, self.models, self.mesh = config, models, mesh
    self.every, self.num_samples, self.tag = schedule.every, schedule.num_samples, schedule.tag
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
class DigitsEval(TrainingEval):
  primary, mode = "accuracy", "max"

  @classmethod
  def check_config(cls, config, schedule):
    classes = tuple(config.data.classes)
    want = len(classes) if classes else 10
    if config.model.num_classes != want or any(k >= 10 for k in classes):
      raise errors.ConfigError(
          f"config.{schedule.field}={schedule.metric!r} is invalid: the digits score needs a "
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
    keys = ("accuracy", "frechet", "diversity", "precision", "recall", "density", "coverage")
    return {k: r[k] for k in keys if r.get(k) is not None}


class InceptionEval(TrainingEval):
  """Inception metrics (`metrics`) through one shared `inception_scorer.InceptionScorer`."""

  metrics: tuple[str, ...] = ()

  @classmethod
  def check_config(cls, config, schedule):
    if not config.eval.ref_stats:
      raise errors.ConfigError(
          f"config.eval.ref_stats is empty: {schedule.metric} during training needs reference "
          "statistics; make them with `python -m sagan_jax.evaluate --compute_ref_stats "
          "OUT.npz ...`, or " + ("set --config.eval_every=0." if schedule.field == "eval.metric"
                                 else f"remove config.{schedule.field}."))

  def __init__(self, config, models, mesh, schedule, shared):
    super().__init__(config, models, mesh, schedule, shared)
    from absl import logging

    from sagan_jax.evaluation import inception_scorer as isc
    if "reference" not in shared:
      ref, warning = isc.load_reference(config.eval.ref_stats, "bilinear", "config.eval.ref_stats")
      if warning:
        logging.warning("%s", warning)
      shared["reference"] = ref
    if "extractor" not in shared:
      # Batches shard over the training mesh (one process only: every process then scores
      # the same samples).
      shared["extractor"] = isc.make_extractor(
          config.eval.inception_weights or None,
          mesh=mesh if jax.process_count() == 1 else None)
    ex, source, prov = shared["extractor"]
    self.scorer = isc.InceptionScorer(ex, shared["reference"],
                                      isc.MetricOptions(metrics=self.metrics), source, prov)

  def score(self, images, labels):
    out = self.scorer.score(images, labels)
    return {k: v for k, v in out.items() if v is not None}


@register("fid")
class FidEval(InceptionEval):
  primary, mode, metrics = "fid", "min", ("fid", "is")


@register("kid")
class KidEval(InceptionEval):
  primary, mode, metrics = "kid_mean", "min", ("kid",)


@register("prdc")
class PrdcEval(InceptionEval):
  primary, mode, metrics = "coverage", "max", ("prdc",)


def check_config(config) -> None:
  """ConfigError unless every configured evaluation can run (preflight.check_config)."""
  if _resolve(config.eval.metric, config) not in _REGISTRY:
    raise errors.ConfigError(f"config.eval.metric={config.eval.metric!r} is invalid: use one "
                             f"of {names()}.")
  for s in schedules(config):
    _REGISTRY[s.metric].check_config(config, s)


def make_all(config, models, mesh) -> list[TrainingEval]:
  """The configured evaluators, the best-checkpoint one first ([] when none)."""
  shared: dict = {}
  out = []
  for s in schedules(config):
    cls = _REGISTRY[s.metric]
    cls.check_config(config, s)
    out.append(cls(config, models, mesh, s, shared))
  return out
