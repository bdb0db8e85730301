"""The SAGAN paper's experiments as config variants (Zhang et al. 2019, arXiv 1805.08318).

A config file's `get_config(variant)` calls `apply(config, variant, single_lr)`
to turn its default (the paper's recipe: SN on G and D, TTUR, 1:1 updates,
attention where the file puts it) into one of the paper's settings:

  baseline    SN on D only, one learning rate for G and D, 1:1 updates
              (Sec. 5.1, Figure 3 left)
  sn_gd       SN on G and D, the same single rate, 1:1 (Figure 3 middle)
  sn_gd_ttur  SN on G and D with TTUR: the file's default (Figure 3 right)
  sngan       SN on D only, the single rate, 5 D updates per G update: the
              SN-GAN recipe (Miyato et al. 2018) the paper improves on
  noattn      no self-attention (Table 1, "no attention")
  featK       self-attention only at the K x K feature maps of G and D
              (Table 1's feat8 ... feat64)
  residualK   no attention; instead an extra residual block that keeps size
              and width at K x K in G and D (Table 1's "residual" rows)

K runs over the feature-map sizes that G and D both have (`sizes`).
`single_lr` is the one rate of baseline / sn_gd / sngan: the paper's G rate,
1e-4, at the paper's scale; a config that scales the paper's rates passes
them scaled alike (configs/digits.py: 2x).

The train loop appends every in-training evaluation to WORKDIR/eval.jsonl
(`record_eval`), which the sweep runner (`sagan_jax.sweep`) reads back.
"""

from __future__ import annotations

import json

import ml_collections

from sagan_jax.errors import ConfigError

FIXED = ("baseline", "sn_gd", "sn_gd_ttur", "sngan", "noattn")


def sizes(resolution: int) -> tuple[int, ...]:
  """Feature-map sizes where both G and D have a block output (featK / residualK's K)."""
  from sagan_jax.models import sagan  # local: config files import this module
  g_res, d_res = sagan.block_resolutions(resolution)
  return tuple(sorted(set(g_res) & set(d_res)))


def names(resolution: int) -> tuple[str, ...]:
  """Every paper variant a model of this resolution has, in the paper's order."""
  ks = sizes(resolution)
  return FIXED + tuple(f"feat{k}" for k in ks) + tuple(f"residual{k}" for k in ks)


def apply(c: ml_collections.ConfigDict, variant: str, single_lr: float,
          where: str = "config") -> ml_collections.ConfigDict:
  """`c` (a file's default config) changed in place into paper variant `variant`.

  where: the config file's name, for the error on an unknown variant.
  """
  known = names(c.model.resolution)
  if variant not in known:
    raise ConfigError(f"{where}:{variant}: unknown variant; use one of {list(known)} "
                      "or none (the default)")
  m, o = c.model, c.optim
  if variant in ("baseline", "sn_gd", "sngan"):
    o.g_lr = o.d_lr = single_lr
    m.g_sn = variant == "sn_gd"
  if variant == "sngan":
    o.n_critic = 5
  if variant == "noattn":
    m.g_attention = m.d_attention = ()
  if variant.startswith("feat"):
    k = int(variant[len("feat"):])
    m.g_attention = m.d_attention = (k,)
  if variant.startswith("residual"):
    k = int(variant[len("residual"):])
    m.g_attention = m.d_attention = ()
    m.g_residual = m.d_residual = (k,)
  return c


# Every in-training evaluation of a run, one JSON object a line: {"step": N, metric: value}.
EVAL_LOG = "eval.jsonl"


def record_eval(workdir: str, step: int, results: dict[str, float]) -> None:
  """Appends one evaluation to WORKDIR/eval.jsonl (what `sagan_jax.sweep` reads back)."""
  from etils import epath
  path = epath.Path(workdir) / EVAL_LOG
  path.parent.mkdir(parents=True, exist_ok=True)
  line = json.dumps({"step": int(step), **{k: float(v) for k, v in results.items()}})
  old = path.read_text() if path.exists() else ""   # (gs:// has no append)
  path.write_text(old + line + "\n")


def read_evals(workdir: str) -> list[dict[str, float]]:
  """A run's evaluations by step (the rows of one step merged; a step evaluated twice, by a
  resumed run, keeps the last values)."""
  from etils import epath
  path = epath.Path(workdir) / EVAL_LOG
  by_step = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        row = json.loads(line)
      except ValueError:   # a line cut short by a kill
        continue
      if isinstance(row, dict) and "step" in row:
        by_step.setdefault(int(row["step"]), {}).update(row)   # several evaluators, one step
  return [by_step[s] for s in sorted(by_step)]
