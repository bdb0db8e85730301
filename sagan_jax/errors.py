"""The mistakes a user can fix, as exception types.

Every command catches `UserError` at its top (`command.cli_main`), prints the
message once on stderr as `error: ...` and exits with status 2: no
traceback, because the message already says what is wrong and what to do.
Anything else that escapes is a bug in sagan_jax and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """Base class: the message names the problem and how to go on."""


class ConfigError(UserError, ValueError):
  """A config field (or command-line flag) has a value sagan_jax cannot use."""


class DataError(UserError, RuntimeError):
  """The data cannot be used as configured (dataset not prepared, empty folder,
  class count mismatch, too many undecodable files, ...)."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint or run directory cannot be used."""


class WorkdirBusyError(CheckpointError):
  """Another training job holds the workdir's lock (`runlock`); nothing was written."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training produced NaN/Inf; nothing of the bad state was saved."""


class CollapseError(UserError, RuntimeError):
  """Training collapsed (`config.on_collapse='stop'`, or no rollbacks left)."""


class WeightsNotFoundError(UserError, FileNotFoundError):
  """No usable Inception weight file; the message says which file to get."""


def check_field(ok: bool, field: str, value, want: str) -> None:
  """Raises ConfigError `config.field=value is invalid: want.` unless `ok` (every config check:
  config_base.validate and the modules' check_config that preflight.check_config runs)."""
  if not ok:
    raise ConfigError(f"config.{field}={value!r} is invalid: {want}.")


def check_flag(ok: bool, name: str, value, want: str) -> None:
  """Raises ConfigError `--name=value is invalid: want.` unless `ok` (every command's flags).

  The same wording as the config checks (`config.field=value is invalid: ...`), so a
  mistake in a flag reads like one in a config field.
  """
  if not ok:
    raise ConfigError(f"--{name}={value!r} is invalid: {want}.")
