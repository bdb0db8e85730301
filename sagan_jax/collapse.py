"""Signs that a GAN run collapsed, from numbers the loop already has (`config.on_collapse`).

A GAN fails more often by collapsing than by overflowing: D wins outright,
G's gradients vanish and its samples degrade, while every number stays
finite. Three cheap signals, each a pure function of a series:

- `d_saturated_g_rising`: over the last `collapse_window` log steps D's loss
  stays at or below `collapse_d_loss` (hinge: D(x) >= 1 and D(G(z)) <= -1,
  both margins saturated) while G's loss climbs (positive least-squares slope);
- `losses_frozen`: both losses constant over that window (a dead D or G:
  nothing learns any more);
- `sigma_exploding`: the largest spectral-norm sigma of D (`d_sigma_max`,
  the raw weights' largest singular value) grew more than
  `collapse_sigma_growth` times within that window;
- `eval_worse`: the in-training evaluator's primary metric worse than the
  best so far by more than `collapse_eval_margin` (a fraction of the best)
  for `collapse_eval_patience` evaluations running.

`Watch` feeds them from the loop and says why (or '') at each log step and
evaluation; after it reports, its series start over, so one collapse is
reported once per window. `ADVICE` is what to change for each signal (the
message a stopped run ends with).
"""

from __future__ import annotations

import numpy as np

from sagan_jax.errors import check_field

_AUGMENT = ("on a small dataset, augment what D sees (--config.augment.policy="
            "color,translation,cutout; docs/own_data.md)")
ADVICE = {   # Watch.signal -> what to change
    "d_wins": ("D outpaces G: lower D's learning rate (--config.optim.d_lr) or raise G's "
               f"(--config.optim.g_lr); {_AUGMENT}"),
    "frozen": ("nothing learns: check that the learning rates (--config.optim.g_lr, "
               "--config.optim.d_lr) are not tiny and that the images differ"),
    "sigma": ("D's weights grow without bound: lower both learning rates "
              "(--config.optim.g_lr, --config.optim.d_lr)"),
    "eval": ("the samples got worse after the best evaluation, which is kept "
             f"(sample/evaluate --best): train for fewer steps, or {_AUGMENT}"),
}


def d_saturated_g_rising(d_losses, g_losses, window: int, d_floor: float) -> bool:
  """D's loss <= d_floor at each of the last `window` points while G's loss rises."""
  if window < 2 or len(d_losses) < window or len(g_losses) < window:
    return False
  d = np.asarray(d_losses[-window:], np.float64)
  g = np.asarray(g_losses[-window:], np.float64)
  slope = np.polyfit(np.arange(window), g, 1)[0]
  return bool(np.all(d <= d_floor) and slope > 0)


def losses_frozen(d_losses, g_losses, window: int, tol: float = 1e-6) -> bool:
  """Both losses the same (within tol, relative) at each of the last `window` points:
  a dead network (e.g. every ReLU of D off after a far too large step)."""
  if window < 2 or len(d_losses) < window or len(g_losses) < window:
    return False
  for series in (d_losses, g_losses):
    s = np.asarray(series[-window:], np.float64)
    if s.max() - s.min() > tol * (1.0 + abs(s.mean())):
      return False
  return True


def sigma_exploding(sigmas, window: int, growth: float) -> bool:
  """The last of the last `window` sigmas is more than `growth` times the first."""
  if window < 2 or len(sigmas) < window:
    return False
  s = np.asarray(sigmas[-window:], np.float64)
  return bool(s[-1] > growth * max(s[0], 1e-12))


def _worse(value: float, best: float, mode: str, margin: float) -> bool:
  slack = margin * abs(best)
  return value < best - slack if mode == "max" else value > best + slack


def eval_worse(values, mode: str, margin: float, patience: int) -> bool:
  """Each of the last `patience` values worse than the best before it by more than
  `margin` x |best| (mode 'max': higher is better, 'min': lower)."""
  if patience < 1 or len(values) <= patience:
    return False
  v = [float(x) for x in values]
  pick = max if mode == "max" else min
  for i in range(len(v) - patience, len(v)):
    if not _worse(v[i], pick(v[:i]), mode, margin):
      return False
  return True


class Watch:
  """The series of one run since its last report or rollback; `log`/`evaluation` -> reason."""

  def __init__(self, config, mode: str = "max"):
    self.c = config
    self.mode = mode
    self.reset()
    self.evals: list[float] = []
    self.signal = ""    # the ADVICE key of the last reason reported

  def reset(self) -> None:
    """Forgets the loss series (after a report or a rollback); evaluations are kept."""
    self.d, self.g, self.sigma = [], [], []

  def log(self, scalars: dict[str, float]) -> str:
    c = self.c
    self.d.append(scalars["d_loss"])
    self.g.append(scalars["g_loss"])
    if "d_sigma_max" in scalars:
      self.sigma.append(scalars["d_sigma_max"])
    w = c.collapse_window
    reason, signal = "", ""
    if d_saturated_g_rising(self.d, self.g, w, c.collapse_d_loss):
      signal = "d_wins"
      reason = (f"D's loss <= {c.collapse_d_loss:g} for the last {w} log steps while G's loss "
                f"rose to {self.g[-1]:.3g} (D wins outright)")
    elif losses_frozen(self.d, self.g, w):
      signal = "frozen"
      reason = (f"D's and G's losses stayed at {self.d[-1]:.4g} and {self.g[-1]:.4g} for the "
                f"last {w} log steps (nothing learns any more)")
    elif sigma_exploding(self.sigma, w, c.collapse_sigma_growth):
      signal = "sigma"
      reason = (f"D's largest spectral-norm sigma grew from {self.sigma[-w]:.3g} to "
                f"{self.sigma[-1]:.3g} within {w} log steps (more than "
                f"{c.collapse_sigma_growth:g}x)")
    if reason:
      self.reset()
      self.signal = signal
    return reason

  def evaluation(self, value: float, name: str) -> str:
    c = self.c
    self.evals.append(float(value))
    k = c.collapse_eval_patience
    if not eval_worse(self.evals, self.mode, c.collapse_eval_margin, k):
      return ""
    tail = self.evals[-k:]
    best = (max if self.mode == "max" else min)(self.evals[:-k])
    self.evals = [best]   # report once; later evaluations compare with the same best
    self.signal = "eval"
    return (f"the last {k} evaluations' {name} ({', '.join(f'{v:.4g}' for v in tail)}) were "
            f"each worse than the best, {best:.4g}, by more than "
            f"{c.collapse_eval_margin:g} of it")


def check_config(c) -> None:
  """ConfigError naming the first collapse field that cannot work (preflight.check_config)."""
  check_field(c.on_collapse in ("warn", "rollback", "stop"), "on_collapse", c.on_collapse,
              "use 'warn', 'rollback' or 'stop'")
  check_field(isinstance(c.collapse_window, int) and c.collapse_window >= 2, "collapse_window",
              c.collapse_window, "must be an integer >= 2 (log steps)")
  check_field(isinstance(c.collapse_d_loss, (int, float)) and c.collapse_d_loss >= 0,
              "collapse_d_loss", c.collapse_d_loss, "must be >= 0")
  check_field(isinstance(c.collapse_sigma_growth, (int, float)) and c.collapse_sigma_growth > 1,
              "collapse_sigma_growth", c.collapse_sigma_growth, "must be > 1 (a factor)")
  check_field(isinstance(c.collapse_eval_margin, (int, float)) and c.collapse_eval_margin >= 0,
              "collapse_eval_margin", c.collapse_eval_margin, "must be >= 0 (a fraction of the best)")
  check_field(isinstance(c.collapse_eval_patience, int) and c.collapse_eval_patience >= 1,
              "collapse_eval_patience", c.collapse_eval_patience, "must be an integer >= 1")
