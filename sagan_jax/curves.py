"""Metric-against-step figures (the sweep's curves.png, like the paper's Figure 3).

`plot(curves, path)`: one panel per metric, one line per variant (the mean
over seeds at each evaluated step), each seed's own curve faint behind it.
Drawn with matplotlib when it is installed; otherwise a plain line chart with
Pillow (already a requirement), so a sweep always writes its figure.

curves: {metric: {variant: [(step, value per seed...), ...]}}
"""

from __future__ import annotations

import numpy as np

# Distinguishable line colours (RGB), one per variant in order.
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def mean_curve(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
  """(steps, mean over the seeds evaluated at each step) of [(step, v1, v2, ...), ...]."""
  steps = np.asarray([r[0] for r in rows], np.float64)
  means = np.asarray([np.mean(r[1:]) for r in rows], np.float64)
  return steps, means


PANELS_PER_ROW = 4   # matplotlib: more metrics wrap onto further rows


def plot(curves: dict, path: str, title: str = "") -> str:
  """Writes the figure to `path`; returns which library drew it."""
  try:
    import matplotlib
  except ImportError:
    _plot_pillow(curves, path, title)
    return "pillow"
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  metrics = sorted(curves)
  cols = min(max(len(metrics), 1), PANELS_PER_ROW)
  rows_n = -(-max(len(metrics), 1) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.6 * rows_n), squeeze=False)
  for ax in axes.flat[len(metrics):]:
    ax.axis("off")
  for ax, metric in zip(axes.flat, metrics):
    for k, (variant, rows) in enumerate(curves[metric].items()):
      colour = np.asarray(COLOURS[k % len(COLOURS)]) / 255
      for s in range(1, max(len(r) for r in rows)):
        pts = [(r[0], r[s]) for r in rows if len(r) > s]
        ax.plot(*zip(*pts), color=colour, alpha=0.25, linewidth=1)
      ax.plot(*mean_curve(rows), color=colour, label=variant, linewidth=2, marker="o",
              markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
  if metrics:
    axes[0][0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return "matplotlib"


def _plot_pillow(curves: dict, path: str, title: str, w: int = 420, h: int = 300) -> None:
  """The same panels side by side with Pillow's default font (no matplotlib)."""
  from PIL import Image, ImageDraw
  metrics = sorted(curves) or ["(no evaluations)"]
  img = Image.new("RGB", (w * len(metrics), h + 24), "white")
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((8, 4), title, fill="black")
  for i, metric in enumerate(metrics):
    _panel(draw, curves.get(metric, {}), metric, (i * w, 24, w, h))
  img.save(path)


def _panel(draw, lines: dict, metric: str, box: tuple[int, int, int, int]) -> None:
  x0, y0, w, h = box
  left, right, top, bottom = x0 + 56, x0 + w - 12, y0 + 18, y0 + h - 40
  draw.rectangle((left, top, right, bottom), outline="black")
  draw.text((x0 + 8, y0 + 2), metric, fill="black")
  pts = [(r[0], v) for rows in lines.values() for r in rows for v in r[1:]]
  if not pts:
    return
  xs, ys = np.asarray(pts, np.float64).T
  xlo, xhi = xs.min(), max(xs.max(), xs.min() + 1)
  ylo, yhi = ys.min(), ys.max()
  pad = (yhi - ylo) * 0.05 or max(abs(yhi), 1.0) * 0.05
  ylo, yhi = ylo - pad, yhi + pad

  def xy(step, value):
    return (left + (step - xlo) / (xhi - xlo) * (right - left),
            bottom - (value - ylo) / (yhi - ylo) * (bottom - top))

  for v in (ylo, yhi):
    draw.text((x0 + 4, xy(xlo, v)[1] - 6), f"{v:.3g}", fill="black")
  for s in (xlo, xhi):
    draw.text((xy(s, ylo)[0] - 10, bottom + 4), f"{s:.0f}", fill="black")
  draw.text(((left + right) // 2 - 12, bottom + 16), "step", fill="black")
  for k, (variant, rows) in enumerate(lines.items()):
    colour = COLOURS[k % len(COLOURS)]
    steps, means = mean_curve(rows)
    line = [xy(s, v) for s, v in zip(steps, means)]
    if len(line) > 1:
      draw.line(line, fill=colour, width=2)
    for p in line:
      draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    draw.text((left + 6, top + 4 + 12 * k), variant, fill=colour)
