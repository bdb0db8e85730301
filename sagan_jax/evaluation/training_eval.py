"""Evaluation during training: a metric every `config.eval_every` steps.

`make(config)` returns an `InTrainingEval` or None (eval off). The metric:
  'digits'  the digits classifier score (accuracy of the conditioned class,
            Frechet distance in its feature space, within-class diversity):
            cheap, for the embedded demo;
  'fid'     FID (and IS when the weights have the classifier) of the Inception
            network against `config.eval.ref_stats`;
  'auto'    'digits' for the digits source, else 'fid'.
The loop logs every returned number under `eval/` and keeps the checkpoint
with the best primary value in WORKDIR/checkpoints_best.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass
class InTrainingEval:
  name: str                      # 'digits' or 'fid'
  primary: str                   # key of the number that picks the best checkpoint
  mode: str                      # 'max' or 'min'
  score: Callable[[np.ndarray, np.ndarray], dict]  # (uint8 images, labels) -> numbers
  num_samples: int


def metric_name(config) -> str:
  name = config.eval.metric
  if name == "auto":
    return "digits" if config.data.source == "digits" else "fid"
  return name


def make(config) -> InTrainingEval | None:
  if not config.eval_every:
    return None
  name = metric_name(config)
  if name == "digits":
    from sagan_jax.evaluation import digits_score

    def score(images, labels):
      r = digits_score.digits_score(images, labels)
      return {k: r[k] for k in ("accuracy", "frechet", "diversity") if r[k] is not None}

    return InTrainingEval("digits", "accuracy", "max", score, config.eval.num_samples)
  from sagan_jax.evaluation import metrics
  if not config.eval.ref_stats:
    raise ValueError("config.eval.ref_stats is empty: FID during training needs reference "
                     "statistics; make them with `python -m sagan_jax.evaluate "
                     "--compute-ref-stats OUT.npz ...`, or set --config.eval_every=0.")
  ev = metrics.Evaluator.create(config.eval.ref_stats,
                                weights=config.eval.inception_weights or None)

  def fid(images, labels):
    del labels
    return {k: v for k, v in ev.evaluate(images).items() if v is not None and k != "num_samples"}

  return InTrainingEval("fid", "fid", "min", fid, config.eval.num_samples)
