"""Small helpers the commands and the train loop share.

Output convention (every command): human progress goes to the console once
(`say`: stdout, chief process only); a mistake the user can fix is raised as
`errors.UserError` and printed once as `error: ...` on stderr with exit
status 2 (`cli_main`); details for debugging go to the absl log (shown with
`-v 0` or `--alsologtostderr`).
"""

from __future__ import annotations

import functools
import signal
import sys
from typing import Any, Callable

import numpy as np
from absl import app, flags, logging

from sagan_jax import errors

# Flags this module defines for a command (define_config_flag) belong to that command's
# module, so they show in its --help.
flags.disclaim_key_flags()


def say(msg: str, *args, err: bool = False) -> None:
  """One line of human-readable progress (chief process only); stderr with err=True."""
  import jax  # here: the flag parsing below runs before JAX is imported
  if jax.process_index() == 0:
    print(msg % args if args else msg, file=sys.stderr if err else sys.stdout, flush=True)


def fail(message) -> None:
  """Prints `error: message` once on stderr and exits with status 2 (a mistake to fix)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def cli_main(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps an absl `main`: a UserError or UsageError prints `error: ...` once, exit 2."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as e:
      logging.debug("stopping: %s: %s", type(e).__name__, e)
      fail(e)

  return wrapped


def run(main: Callable[[list[str]], Any], define_flags: Callable[[], None] | None = None):
  """`app.run(main)` for a command (its `main` wrapped in `cli_main`), with `parse_flags`.

  define_flags: defines more flags after the --config file was checked (so a
  mistake there is reported before the imports it needs).
  """
  app.run(main, flags_parser=functools.partial(parse_flags, define_flags=define_flags))


_HELP_ARGS = ("--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def parse_flags(argv: list[str], define_flags: Callable[[], None] | None = None) -> list[str]:
  """absl's flag parsing, where a mistake prints one `error: ...` line and exits 2.

  `--config NAME` (a built-in config such as `digits` or `imagenet128:official`)
  becomes that file's path. The --config file and the fields its
  `--config.<field>` overrides name are checked first (config_base.load:
  missing file, syntax error, no get_config, unknown field), so that
  ml_collections' config flags, which parse them again, never raise their
  tracebacks; a flag value of the wrong type is absl's flags.Error. Runs
  before the command imports anything heavy. `--help` (or `-h`) prints the
  command's flags and exits 0. Sets absl's verbosity to WARNING unless -v is given.
  """
  from sagan_jax import config_base
  argv = ["--help" if a == "-h" else a for a in argv]
  asks_help = any(a in _HELP_ARGS for a in argv[1:])
  try:
    argv = _with_config_path(argv)
    checked = _check_config_args(argv, config_base)
    if define_flags is not None:
      define_flags()
    if not checked:
      _check_config_args(argv, config_base)
    try:
      argv = flags.FLAGS(argv)
    except SystemExit as e:   # absl's --help exits 1
      if asks_help and e.code in (0, 1):
        sys.exit(0)
      raise
  except (errors.UserError, flags.Error) as e:
    fail(e)
  if not flags.FLAGS["verbosity"].present:
    # One message per event on the console; library INFO chatter (Orbax, clu) with -v 0.
    logging.set_verbosity(logging.WARNING)
  return argv


def _with_config_path(argv: list[str]) -> list[str]:
  """`argv` with the --config value as a file path (a built-in config name resolved)."""
  from sagan_jax import config_base
  out = list(argv)
  for i, arg in enumerate(out[1:], start=1):
    if arg == "--":
      break
    if arg in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = config_base.resolve_spec(out[i + 1])
      break
    if arg.startswith(("--config=", "-config=")):
      flag, _, spec = arg.partition("=")
      out[i] = f"{flag}={config_base.resolve_spec(spec)}"
      break
  return out


def _check_config_args(argv: list[str], config_base) -> bool:
  """Loads the --config file and checks its override field names, if the command has --config.

  Returns whether the check ran (False: no --config flag defined yet, or none given).
  """
  spec, fields = config_args(argv)
  if spec is None or "config" not in flags.FLAGS:
    return False
  config = config_base.load(spec)
  for name in fields:
    config_base.field(config, name)
  return True


def define_config_flag(help_text: str, lock_config: bool = True) -> None:
  """The `--config` flag of a command: a config file path or a built-in config name.

  (absl would print its missing default as `(default: 'None')`; the help says what it takes.)
  """
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, help_text, lock_config=lock_config)
  flags.FLAGS["config"].default_as_str = None


def config_args(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the --config value, the field names of its --config.<field> overrides) in `argv`."""
  spec, fields = None, []
  args = argv[1:]
  for i, arg in enumerate(args):
    if arg == "--":
      break
    name, eq, value = arg.lstrip("-").partition("=") if arg.startswith("-") else ("", "", "")
    if name == "config":
      spec = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    elif name.startswith(("config.", "noconfig.")):
      fields.append(name.split(".", 1)[1])
  return spec, fields


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


def nonfinite(metrics: dict[str, float]) -> dict[str, float]:
  """The metrics that are NaN or Inf."""
  return {k: v for k, v in metrics.items() if not np.isfinite(v)}


def nonfinite_message(what: str, step: int, last_ckpt: int | None, workdir: str,
                      rollbacks: int | None = None) -> str:
  """Why training stopped at `step` and where a rerun resumes from.

  rollbacks: how many rollbacks (on_nan='rollback') were already spent.
  """
  where = (f"the last good checkpoint (step {last_ckpt}) in {workdir}/checkpoints is intact "
           "and a rerun with the same --workdir resumes from it"
           if last_ckpt is not None else "no checkpoint was written yet")
  spent = "" if rollbacks is None else f" after {rollbacks} rollbacks (config.max_rollbacks)"
  return (f"{what} at step {step}{spent}. Training stopped without saving this state; "
          f"{where}. Try lower learning rates (--config.optim.d_lr / g_lr), float32 "
          "(--config.model.dtype=float32), a different --config.seed" +
          (" or --config.on_nan=rollback." if rollbacks is None else "."))


class Preemption:
  """Turns SIGTERM (TPU maintenance, scheduler kill) into a flag the loop polls."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    # Only a flag: printing inside a signal handler can re-enter a half-done write.
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int, poll_every: int = 10) -> bool:
    """Whether to stop after `step`. Multi-process runs agree every `poll_every` steps."""
    import jax
    if jax.process_count() > 1:
      if step % poll_every:
        return False
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # noqa: BLE001 - the preemption service is not enabled
        pass
      # Agree across processes: any process's SIGTERM stops all of them.
      flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
      return bool(np.any(flags))
    return self.requested
