"""XLA:CPU flags sagan_jax sets before JAX starts: a workaround for wrong bfloat16 results.

jaxlib 0.11 and 0.12's XLA:CPU hands some reductions, with the convolutions, matmuls and
element-wise ops feeding them, to YNNPACK as one fused subgraph ("YNN reduce
fusion"). With bfloat16 compute that subgraph returns NaN or ~1e36 in some
rows: the jitted discriminator of `configs/tiny.py` with `model.dtype=bfloat16`
gave 3-8 bad logits of 8, a different count in each process, while the same
call un-jitted, in float32, or with this fusion off was right to bfloat16
rounding. jaxlib 0.10.2 fuses the same way, accepts the flag and showed no
NaNs; there the flag would only move float32 results in their last bits (the
digits default would no longer reproduce its published figures), so it is
left alone. `tests/test_precision.py` jits that forward pass and fails on
jaxlib 0.11.2 and 0.12.0.1 without this module.

So unless the user names the flag in `XLA_FLAGS` themselves, importing
`sagan_jax` appends `--xla_cpu_experimental_ynn_fusion_type=-reduce` (remove
"reduce" from XLA's default list of YNNPACK fusions; the others stay on) for
jaxlib >= MIN_JAXLIB (an older one may not know the flag, and an unknown XLA
flag aborts the process). It takes effect only if JAX's backend has not started
yet: every command, the tests, and a notebook that imports sagan_jax before
its first JAX computation. It changes nothing on GPUs and TPUs. To keep XLA's
default, set the flag yourself, e.g.
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+reduce`.

No JAX import here: it must run before JAX reads the flags.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_WORKAROUND = YNN_FLAG + "=-reduce"
MIN_JAXLIB = (0, 11, 0)  # 0.11.2 and 0.12.0.1 gave the NaNs; 0.10.2 did not (it knows the flag too)


def _version_tuple(version: str) -> tuple[int, ...]:
  parts = []
  for piece in version.split(".")[:3]:
    m = re.match(r"\d+", piece)
    if not m:
      break
    parts.append(int(m.group()))
  return tuple(parts)


def ynn_flags(xla_flags: str, jaxlib_version: str | None) -> str:
  """XLA_FLAGS with the YNN workaround appended, or unchanged when the user set
  the flag already or this jaxlib is not known to accept it (None: not installed)."""
  if YNN_FLAG in xla_flags or jaxlib_version is None:
    return xla_flags
  if _version_tuple(jaxlib_version) < MIN_JAXLIB:
    return xla_flags
  return f"{xla_flags} {YNN_WORKAROUND}".strip()


def _jaxlib_version() -> str | None:
  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return None


def apply(environ=os.environ) -> None:
  """Sets the workaround in `environ['XLA_FLAGS']` (see the module docstring)."""
  flags = environ.get("XLA_FLAGS", "")
  new = ynn_flags(flags, _jaxlib_version())
  if new != flags:
    environ["XLA_FLAGS"] = new
