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

**Float32 programs get the fusion back, one program at a time.** The workaround
cost float32 a third of its speed: with YNN's reduce fusion off, XLA hands the
convolutions to YNNPACK one by one, and those run slower than in the fused
subgraphs (jaxlib 0.12.1, 2-core Intel Xeon with AMX, float32 train step:
3.19 s against 1.93 s at 32x32, 9.18 s against 5.90 s at 128x128). A float32
program is right with the fusion on, so `compiler_options` gives float32 programs
per-program XLA options that set the YNN fusion list to reductions only (the
fastest list measured: XLA's own default list, with `+reduce`, gave 2.08 s at
32x32), where the process-wide flag keeps bfloat16 programs safe. They go to the
train step (`train.make_train_step`), G in eval mode (`sampling`), the API's D
scoring and standing statistics (`api`) and the Inception extractor: at
128x128, sampling ran 1.5x and Inception 1.2-1.3x faster with them (same CPU and
jaxlib, `benchmarks/eval_speed.py`); G's eval pass at 16x16 and 32x32 ran 6-17%
slower, a few milliseconds per batch.

jaxlib 0.10.2 gets the same options, although it runs without the workaround: its
default list hands every convolution to YNNPACK in fusions of its own, and
reductions-only was faster there too (same Intel Xeon, float32 train step, one
process, compiled both ways and alternated: 128x128 7.13 -> 5.89 s, 32x32 2.77 ->
2.33 s, the digits default 0.11 -> 0.10 s). A jaxlib that does not know the option
compiles without it (`_options_accepted`). Not on GPUs/TPUs, and not when the user
named the flag in `XLA_FLAGS`. `tests/test_xla_flags.py` checks that each program
compiled both ways agrees.

No JAX import here: it must run before JAX reads the flags.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import metadata

from absl import logging

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_WORKAROUND = YNN_FLAG + "=-reduce"
# The same field as a per-program compile option (a list of XLA's LibraryFusionType names).
FLOAT32_OPTIONS = {YNN_FLAG.lstrip("-"): "LIBRARY_FUSION_TYPE_REDUCE"}
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


def jaxlib_before(version: tuple[int, ...]) -> bool:
  """Whether the installed jaxlib is older than `version` (False when none is installed)."""
  installed = _jaxlib_version()
  return installed is not None and _version_tuple(installed) < version


def apply(environ=os.environ) -> None:
  """Sets the workaround in `environ['XLA_FLAGS']` (see the module docstring)."""
  flags = environ.get("XLA_FLAGS", "")
  new = ynn_flags(flags, _jaxlib_version())
  if new != flags:
    environ["XLA_FLAGS"] = new


def compiler_options(dtype, platform: str | None = None, environ=os.environ) -> dict | None:
  """Per-program XLA options (`jax.jit(..., compiler_options=...)`) for a program
  computing in `dtype` (a name, numpy or JAX dtype) on `platform` (default: JAX's
  default backend): for float32 on CPU, YNNPACK's fusions set to reductions only
  (module docstring), unless the user set that flag; else None."""
  if platform is None:
    import jax  # here, not at the top: the module runs before JAX reads XLA_FLAGS
    platform = jax.default_backend()
  if platform != "cpu" or _dtype_name(dtype) != "float32":
    return None
  if users_own_flag(environ.get("XLA_FLAGS", "")):
    return None  # the user chose YNNPACK's fusions: theirs holds for every program
  return dict(FLOAT32_OPTIONS) if _options_accepted() else None


def users_own_flag(xla_flags: str) -> bool:
  """Whether XLA_FLAGS names YNN_FLAG other than as the workaround `apply` appends."""
  return any(f.startswith(YNN_FLAG) and f != YNN_WORKAROUND for f in xla_flags.split())


def _dtype_name(dtype) -> str:
  import numpy as np
  try:
    return np.dtype(dtype).name
  except TypeError:  # e.g. "bfloat16" before ml_dtypes is imported
    return str(dtype)


@functools.cache
def _options_accepted() -> bool:
  """Whether this jaxlib compiles with FLOAT32_OPTIONS (an older one may not know the
  option, a later one may rename the fusion types: then float32 programs compile
  without them, and this says so once)."""
  import jax  # here, not at the top: the module runs before JAX reads XLA_FLAGS
  try:
    jax.jit(lambda x: x + 1, compiler_options=FLOAT32_OPTIONS).lower(1.0).compile()
    return True
  except Exception as e:  # noqa: BLE001 (XLA's error type varies across jaxlib versions)
    # Under the workaround, float32 then runs without YNN's reduce fusion (slower): warn.
    # On a jaxlib before it, float32 keeps that jaxlib's defaults: worth a line, no more.
    log = logging.warning if YNN_WORKAROUND in os.environ.get("XLA_FLAGS", "") else logging.info
    log("sagan_jax: float32 programs compile with XLA's default YNNPACK fusions; this "
        "jaxlib refused %s: %s", FLOAT32_OPTIONS, e)
    return False
