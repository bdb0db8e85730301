"""The checks a training run makes before it reads data, compiles or writes anything.

`main` runs them before it waits for the other hosts of a multi-process job
(`jax.distributed.initialize` can wait minutes), and `train_and_evaluate` runs
them again for callers that use the library directly; both get the same
one-line errors. The checks themselves live with what they check:
`config_base.validate` (every config field, asking the modules that own the
model tables, the evaluators, augmentation, regularisers and data subsets)
and `integrity.check_workdir` (the run directory).
"""

from __future__ import annotations

import ml_collections

from sagan_jax import config_base, integrity


def preflight(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Raises a `UserError` naming the first problem; returns `workdir` resolved (absolute,
  `~` expanded; gs:// as given)."""
  workdir = integrity.resolve_workdir(workdir)
  config_base.validate(config)
  integrity.check_workdir(workdir)
  return workdir
