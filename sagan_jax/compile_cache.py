"""JAX's persistent compilation cache for the commands: a relaunch skips XLA compilation.

`enable()`, called by every command before its first compile, points JAX's
persistent compilation cache at

    ~/.cache/sagan_jax/jax_cache/<machine>/

(`$SAGAN_JAX_CACHE_DIR` moves the sagan_jax cache root, as for the conv
tuner's file; `$XDG_CACHE_HOME` moves `~/.cache`). A resumed run, `sample`,
`evaluate` and `describe` then load the compiled train step, generator and
evaluator programs from disk instead of compiling them again (JAX keys each
entry by the program, the XLA flags, the compile options, the devices and the
jax version, so a change to any of them compiles afresh). `<machine>` is a
short hash of this host's CPU model and instruction set: XLA:CPU programs are
built for the CPU they were compiled on, so hosts that share a home directory
keep apart entries that the other could not load.

It is left alone when:

* `$SAGAN_JAX_COMPILE_CACHE` is `0` (or `false`, `no`, `off`): no cache;
* `$SAGAN_JAX_CACHE_DIR` is set to '' (no sagan_jax cache files at all);
* the user chose already: `$JAX_COMPILATION_CACHE_DIR`, `jax_compilation_cache_dir`
  set in code (the test suite's own cache), or the cache turned off with
  `jax_enable_compilation_cache`;
* the directory cannot be created or written (a read-only home): one line
  in the absl log, and the command runs as without a cache;
* a non-local path (`gs://...`) without `etils.epath` to reach it.

JAX writes only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s) to compile, and only from
process 0 of a multi-process run. The directory may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile

from absl import logging

ENV_SWITCH = "SAGAN_JAX_COMPILE_CACHE"
ENV_ROOT = "SAGAN_JAX_CACHE_DIR"
SUBDIR = "jax_cache"
_OFF = ("0", "false", "no", "off")


def machine_tag() -> str:
  """'cpu-<12 hex>': a hash of this host's architecture, CPU model and CPU flags."""
  from sagan_jax import cpu_devices
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          flags = " ".join(sorted(line.split(":", 1)[1].split()))
          break
  except OSError:
    pass
  text = f"{platform.machine()}|{cpu_devices.cpu_model()}|{flags}"
  return "cpu-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def default_dir(environ=None) -> str | None:
  """Where `enable` puts the cache; None when `$SAGAN_JAX_COMPILE_CACHE` or an empty
  `$SAGAN_JAX_CACHE_DIR` turns it off."""
  env = os.environ if environ is None else environ
  if env.get(ENV_SWITCH, "").strip().lower() in _OFF:
    return None
  root = env.get(ENV_ROOT)
  if root is None:
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "sagan_jax")
  if not root:
    return None
  return os.path.join(root, SUBDIR, machine_tag())


def _writable(path: str) -> str | None:
  """None if `path` is (or can be made) a writable directory, else why not."""
  if "://" in path:
    try:
      import etils.epath  # noqa: F401  (what JAX reaches gs:// and other remote paths with)
    except ImportError:
      return "a non-local path needs the etils[epath] package"
    return None  # not probed: JAX turns remote-file errors into warnings
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e}"
  return None


def enable() -> str | None:
  """Turns on JAX's persistent compilation cache at `default_dir()` unless the user chose
  otherwise (module docstring). Returns the cache directory in effect (also one the user
  set), or None when there is none. Call it before the first compile; it starts no backend."""
  import jax
  if not jax.config.jax_enable_compilation_cache:
    logging.info("compilation cache: off (jax_enable_compilation_cache is False)")
    return None
  chosen = jax.config.jax_compilation_cache_dir
  if chosen:
    logging.info("compilation cache: %s (set by the user)", chosen)
    return chosen
  path = default_dir()
  if path is None:
    logging.info("compilation cache: off ($%s / $%s)", ENV_SWITCH, ENV_ROOT)
    return None
  problem = _writable(path)
  if problem:
    logging.info("compilation cache: off, %s is not usable (%s)", path, problem)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  logging.info("compilation cache: %s", path)
  return path
