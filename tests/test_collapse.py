"""Collapse detection: the pure detectors on synthetic series, the config checks, a real run."""

from __future__ import annotations

import numpy as np
import pytest

from sagan_jax import collapse, errors, preflight
from tests.conftest import load_config


def test_d_saturated_while_g_rises():
  w = 5
  d = [0.9, 0.8, 0.01, 0.0, 0.02, 0.0, 0.01]
  g_up = [1, 1, 2.0, 2.5, 3.1, 3.0, 4.2]
  assert collapse.d_saturated_g_rising(d, g_up, w, 0.05)
  assert not collapse.d_saturated_g_rising(d, g_up[::-1], w, 0.05)     # G's loss falls
  assert not collapse.d_saturated_g_rising(d, g_up, w + 3, 0.05)       # window reaches 0.8
  assert not collapse.d_saturated_g_rising(d[:4], g_up[:4], w, 0.05)   # too short
  d_one_miss = d[:4] + [0.3] + d[5:]
  assert not collapse.d_saturated_g_rising(d_one_miss, g_up, w, 0.05)
  # The slope is a least-squares fit, computed here independently.
  g = [3.0, 1.0, 1.2, 1.4, 1.6]   # first point high, the rest rising: slope < 0
  x = np.arange(5.0)
  slope = ((x - x.mean()) * (np.array(g) - np.mean(g))).sum() / ((x - x.mean()) ** 2).sum()
  assert slope < 0 and not collapse.d_saturated_g_rising([0.0] * 5, g, 5, 0.05)


def test_losses_frozen():
  assert collapse.losses_frozen([2.0] * 4 + [2.0 + 1e-9], [0.8162] * 5, 5)
  assert not collapse.losses_frozen([2.0] * 4 + [2.001], [0.8162] * 5, 5)
  assert not collapse.losses_frozen([2.0] * 5, [0.8162] * 4 + [0.9], 5)
  assert not collapse.losses_frozen([2.0] * 4, [0.8162] * 4, 5)


def test_sigma_exploding():
  assert collapse.sigma_exploding([1.0, 1.2, 3.0, 11.0], 4, 10.0)
  assert not collapse.sigma_exploding([1.0, 1.2, 3.0, 9.9], 4, 10.0)
  assert not collapse.sigma_exploding([1.0, 20.0], 4, 10.0)           # window not full
  assert collapse.sigma_exploding([50.0, 1.0, 1.2, 3.0, 11.0], 4, 10.0)   # the window only


@pytest.mark.parametrize("mode,values,expect", [
    ("max", [0.5, 0.9, 0.6, 0.6, 0.6], True),     # best 0.9; 0.6 < 0.9 * 0.75
    ("max", [0.5, 0.9, 0.6, 0.65, 0.6], True),   # 0.65 < 0.675
    ("max", [0.5, 0.9, 0.6, 0.8, 0.6], False),    # 0.8 is within 25% of 0.9
    ("max", [0.9, 0.6, 0.6], False),              # only 2 after the best
    ("min", [30.0, 10.0, 13.0, 14.0, 20.0], True),   # FID: best 10, > 12.5 thrice
    ("min", [30.0, 10.0, 13.0, 12.0, 20.0], False),
    ("min", [30.0, 40.0, 50.0, 60.0], True),      # worse than the first, thrice
])
def test_eval_worse(mode, values, expect):
  assert collapse.eval_worse(values, mode, 0.25, 3) is expect


def test_watch_reports_once_per_window():
  c = load_config("tiny", collapse_window=3, collapse_d_loss=0.05)
  watch = collapse.Watch(c)
  got = [watch.log({"d_loss": 0.0, "g_loss": float(i), "d_sigma_max": 1.0}) for i in range(6)]
  assert [bool(r) for r in got] == [False, False, True, False, False, True]
  assert "D's loss <= 0.05 for the last 3 log steps" in got[2] and watch.signal == "d_wins"
  watch = collapse.Watch(c, mode="max")
  reasons = [watch.evaluation(v, "digits accuracy") for v in (0.8, 0.5, 0.5, 0.5, 0.5)]
  assert [bool(r) for r in reasons] == [False, False, False, True, False]
  assert "digits accuracy (0.5, 0.5, 0.5)" in reasons[3] and "best, 0.8" in reasons[3]
  assert watch.signal == "eval"


@pytest.mark.parametrize("d,g,sigma,signal,advice", [
    ([0.0] * 3, [1.0, 2.0, 3.0], [1.0] * 3, "d_wins", "raise G's (--config.optim.g_lr)"),
    ([1.5] * 3, [0.7] * 3, [1.0] * 3, "frozen", "are not tiny"),
    ([1.5, 1.0, 0.5], [0.7, 0.9, 0.6], [1.0, 5.0, 20.0], "sigma", "lower both learning rates"),
])
def test_each_signal_has_its_own_advice(d, g, sigma, signal, advice):
  """A stopped run's message says what to change for the signal that fired, not one tip."""
  from sagan_jax import loop
  c = load_config("tiny", collapse_window=3, collapse_d_loss=0.05, collapse_sigma_growth=10.0)
  watch = collapse.Watch(c)
  reasons = [watch.log({"d_loss": a, "g_loss": b, "d_sigma_max": s})
             for a, b, s in zip(d, g, sigma)]
  assert reasons[-1] and watch.signal == signal, reasons
  msg = loop.collapse_message(f"collapse ({reasons[-1]})", 30, 20, "runs/x", 2, None,
                              collapse.ADVICE[watch.signal])
  assert advice in msg and msg.endswith("or try another --config.seed."), msg
  assert set(collapse.ADVICE) == {"d_wins", "frozen", "sigma", "eval"}


@pytest.mark.parametrize("field,value", [
    ("on_collapse", "ignore"), ("collapse_window", 1), ("collapse_d_loss", -0.1),
    ("collapse_sigma_growth", 1.0), ("collapse_eval_margin", -1.0),
    ("collapse_eval_patience", 0), ("heartbeat_timeout_s", 5)])
def test_collapse_fields_are_validated(field, value):
  c = load_config("tiny")
  c[field] = value
  with pytest.raises(errors.ConfigError, match=rf"config\.{field}="):
    preflight.check_config(c)


def _forced(tmp_path, **overrides):
  """The tiny config driven into collapse: D's learning rate 50x the default (0.02)."""
  from sagan_jax import parallel, train
  config = load_config("tiny", optim__d_lr=0.02, log_every=2, checkpoint_every=10,
                       sample_every=0, collapse_window=5, **overrides)
  return lambda: train.train_and_evaluate(config, str(tmp_path), mesh=parallel.make_mesh(1))


def test_forced_collapse_warns_then_stops_with_one_message(tmp_path, capsys):
  with pytest.raises(errors.CollapseError,
                     match=r"training stopped: collapse \(D's loss <= 0.05 for the last 5 log "
                           r"steps .*\) at step 14; the last checkpoint is step 10 .*"
                           r"--config.on_collapse=rollback"):
    _forced(tmp_path, total_steps=20, on_collapse="stop")()
  assert "step 14/20" in capsys.readouterr().out


@pytest.mark.slow
def test_forced_collapse_rolls_back_with_new_noise(tmp_path, capsys):
  from sagan_jax import checkpointing
  run = _forced(tmp_path, total_steps=40, on_collapse="rollback", max_rollbacks=1)
  try:
    run()
    stopped = None
  except errors.CollapseError as e:
    stopped = str(e)
  out = capsys.readouterr().out
  assert "rollback 1 of at most 1: collapse (D's loss <= 0.05" in out
  assert "back to step 10 with new noise" in out
  if stopped is None:
    assert "step 40/40" in out and checkpointing.load(str(tmp_path)).rollbacks == 1
  else:
    assert "after 1 rollbacks (config.max_rollbacks)" in stopped
