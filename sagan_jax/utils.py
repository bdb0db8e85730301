"""Console output and small formatting helpers (no config, no JAX at import).

Output convention (every command): human progress goes to the console once
(`say`: stdout, chief process only); a mistake the user can fix is raised as
`errors.UserError` and printed once as `error: ...` on stderr with exit
status 2 (`fail`, called by `command.cli_main`); details for debugging go to
the absl log (shown with `-v 0` or `--alsologtostderr`).

The commands' flag plumbing is in `command.py`; why and when the train loop
stops (SIGTERM, non-finite losses) in `stopping.py`.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any


def say(msg: str, *args, err: bool = False) -> None:
  """One line of human-readable progress (chief process only); stderr with err=True."""
  import jax  # here: the commands parse their flags before JAX is imported
  if jax.process_index() == 0:
    print(msg % args if args else msg, file=sys.stderr if err else sys.stdout, flush=True)


def fail(message) -> None:
  """Prints `error: message` once on stderr and exits with status 2 (a mistake to fix)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def format_duration(seconds: float) -> str:
  """'1h05m' or '4m07s'."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  mnt, s = divmod(rem, 60)
  return f"{h}h{mnt:02d}m" if h else f"{mnt}m{s:02d}s"


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a.b': scalar} (non-scalars as str), e.g. for TensorBoard hparams."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_dict(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def release_freed_memory() -> bool:
  """Hands the C heap's freed pages back to the OS (glibc's `malloc_trim(0)`); False where the
  C library has none (macOS, musl, Windows), a no-op there.

  glibc keeps memory that XLA freed mapped in its arenas: after the state's init (a program
  of its own) 1.1 GB of a 128px run's resident set, which the train step's temporaries then
  come on top of (benchmarks/README.md, "Memory"). Call it after such a one-off phase, not
  per step (the step reuses what it frees).
  """
  try:
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
  except (OSError, TypeError):   # no C library to open by that name (Windows)
    trim = None
  if trim is None:
    return False
  trim(0)
  return True
