"""What every command's `main` shares: absl flag parsing with one-line errors, the
`--config` flag, and the wrapper that turns a user's mistake into `error: ...` (exit 2).

A command module defines its flags, decorates `main` with `cli_main` and runs
`command.run(main)`; `sagan_jax.cli` dispatches `sagan-jax NAME` to those modules.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from absl import app, flags, logging

from sagan_jax import errors
from sagan_jax.utils import fail

# Flags this module defines for a command (define_config_flag) belong to that command's
# module, so they show in its --help.
flags.disclaim_key_flags()


def cli_main(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps an absl `main`: a UserError or UsageError prints `error: ...` once, exit 2."""

  @functools.wraps(main)
  def wrapped(argv):
    from sagan_jax import compile_cache
    compile_cache.enable()   # a relaunch, a resume, sample and evaluate skip XLA compilation
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
