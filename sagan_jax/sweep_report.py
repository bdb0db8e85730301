"""What a sweep (`sagan_jax.sweep`) writes: results.json, results.md and curves.png.

`collect` reads every member's run directory (its eval.jsonl, newest
checkpoint step and sweep.json) and reduces each variant over its seeds:
for every in-training metric the best value of each seed's run (max, or min
for distances) and its final value, then their mean and spread (sample
standard deviation; 0 for one seed) over the seeds that have evaluations.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from sagan_jax import curves, experiments

# Metrics where lower is better (the others: higher); '*_std' spreads get no 'best'.
LOWER_IS_BETTER = ("frechet", "fid", "kid_mean", "intra_fid")
MEMBER_STATE = "sweep.json"   # per member: wall time over all launches, last status


def steps_done(rundir: str) -> int:
  """The newest checkpoint's step in a run directory (0: none)."""
  from sagan_jax import checkpointing, integrity
  steps = integrity.list_dir(checkpointing.checkpoint_dir(rundir)).steps
  return max(steps) if steps else 0


def read_state(rundir: str) -> dict:
  """A member's sweep.json: wall time over all its launches, launches, last status."""
  from etils import epath
  path = epath.Path(rundir) / MEMBER_STATE
  try:
    return json.loads(path.read_text()) if path.exists() else {}
  except ValueError:
    return {}


def write_state(rundir: str, state: dict) -> None:
  from etils import epath
  path = epath.Path(rundir)
  path.mkdir(parents=True, exist_ok=True)
  (path / MEMBER_STATE).write_text(json.dumps(state, indent=1))


def better(metric: str) -> str | None:
  """'min' or 'max' for a quality metric; None for spreads (*_std) that have no best."""
  if metric.endswith("_std"):
    return None
  return "min" if metric in LOWER_IS_BETTER else "max"


def _spread(values: list[float]) -> dict:
  a = np.asarray(values, np.float64)
  return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
          "n": len(a)}


def collect(workdir: str, spec: str, members, configs: dict, overrides: dict) -> dict:
  """The sweep's results: per member and, reduced over seeds, per variant."""
  rows = []
  for m in members:
    rundir = os.path.join(workdir, m.name)
    state = read_state(rundir)
    rows.append({"variant": m.variant, "seed": m.seed, "dir": m.name,
                 "total_steps": configs[m.variant].total_steps,
                 "steps": steps_done(rundir), "status": state.get("status", "not run"),
                 "wall_s": state.get("wall_s"), "evals": experiments.read_evals(rundir)})
  variants = {}
  for v in configs:
    mine = [r for r in rows if r["variant"] == v]
    variants[v] = _reduce(mine)
  return {"config": spec, "overrides": {k: _jsonable(x) for k, x in overrides.items()},
          "members": rows, "variants": variants}


def _jsonable(x):
  return list(x) if isinstance(x, tuple) else x


def _reduce(rows: list[dict]) -> dict:
  metrics = sorted({k for r in rows for e in r["evals"] for k in e if k != "step"})
  out = {"seeds": len(rows), "finished": sum(r["steps"] >= r["total_steps"] for r in rows),
         "steps": [r["steps"] for r in rows],
         "wall_s": _spread([r["wall_s"] for r in rows]) if all(
             r["wall_s"] is not None for r in rows) and rows else None,
         "metrics": {}}
  for k in metrics:
    series = [[e[k] for e in r["evals"] if k in e] for r in rows]
    series = [s for s in series if s]
    entry = {"final": _spread([s[-1] for s in series])}
    mode = better(k)
    if mode:
      pick = min if mode == "min" else max
      entry["best"] = _spread([pick(s) for s in series])
      entry["better"] = mode
    out["metrics"][k] = entry
  return out


def _fmt(entry: dict | None, digits: int = 3) -> str:
  if not entry:
    return "-"
  mean, std = entry["mean"], entry["std"]
  if not math.isfinite(mean):
    return str(mean)
  return f"{mean:.{digits}g} ± {std:.2g}" if entry["n"] > 1 else f"{mean:.{digits}g}"


def markdown(results: dict) -> str:
  """The table: a row per variant; best and final of each metric, steps, wall time."""
  metrics = sorted({k for v in results["variants"].values() for k in v["metrics"]})
  head = ["variant", "seeds (finished)", "steps"]
  for k in metrics:
    mode = next((v["metrics"][k].get("better") for v in results["variants"].values()
                 if k in v["metrics"]), None)
    if mode:
      head.append(f"{k} best ({mode})")
    head.append(f"{k} final")
  head.append("wall (min)")
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for name, v in results["variants"].items():
    steps = sorted(set(v["steps"]))
    cells = [name or "default", f"{v['seeds']} ({v['finished']})",
             "/".join(str(s) for s in steps)]
    for k in metrics:
      e = v["metrics"].get(k, {})
      if e.get("better") or (not e and better(k)):
        cells.append(_fmt(e.get("best")))
      cells.append(_fmt(e.get("final")))
    wall = v["wall_s"]
    cells.append(_fmt({**wall, "mean": wall["mean"] / 60, "std": wall["std"] / 60}, 2)
                 if wall else "-")
    lines.append("| " + " | ".join(cells) + " |")
  overrides = ", ".join(f"{k}={x}" for k, x in results["overrides"].items()) or "none"
  notes = [f"Config `{results['config']}`, overrides: {overrides}. Mean ± sample std over "
           "the seeds that have evaluations; best = each run's best evaluation "
           "(max, or min for distances), final = its last one."]
  failed = [f"{r['dir']}: {r['status']}" for r in results["members"]
            if r["status"].startswith("failed")]
  if failed:
    notes.append("Failed members: " + "; ".join(failed) + ".")
  return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def curve_data(results: dict) -> dict:
  """{metric: {variant: [(step, value of each seed evaluated at that step), ...]}}."""
  out: dict = {}
  for name, v in results["variants"].items():
    for k in v["metrics"]:
      by_step: dict[int, list[float]] = {}
      for r in results["members"]:
        if r["variant"] == name:
          for e in r["evals"]:
            if k in e:
              by_step.setdefault(e["step"], []).append(e[k])
      out.setdefault(k, {})[name or "default"] = [(s, *by_step[s]) for s in sorted(by_step)]
  return out


def write(workdir: str, results: dict) -> None:
  """WORKDIR/results.json, results.md and curves.png."""
  from etils import epath
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  (root / "results.json").write_text(json.dumps(results, indent=1))
  (root / "results.md").write_text(markdown(results))
  data = {k: v for k, v in curve_data(results).items() if better(k)}
  local = str(root / "curves.png") if "://" not in workdir else "/tmp/sagan_jax_curves.png"
  curves.plot(data, local, title=f"{results['config']}: in-training evaluations")
  if local != str(root / "curves.png"):
    (root / "curves.png").write_bytes(epath.Path(local).read_bytes())
