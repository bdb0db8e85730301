"""The XLA:CPU workaround flags (sagan_jax/xla_flags.py): set once, never over the user's."""

from __future__ import annotations

import os

from sagan_jax import xla_flags


def test_appends_the_workaround_for_jaxlib_known_to_accept_it():
  assert xla_flags.ynn_flags("", "0.12.0.1") == xla_flags.YNN_WORKAROUND
  assert xla_flags.ynn_flags("", "0.11.2") == xla_flags.YNN_WORKAROUND
  assert xla_flags.ynn_flags("--xla_force_host_platform_device_count=4", "0.12.0") == (
      "--xla_force_host_platform_device_count=4 " + xla_flags.YNN_WORKAROUND)
  assert xla_flags.ynn_flags("", "1.0.0rc1") == xla_flags.YNN_WORKAROUND


def test_leaves_the_users_choice_and_older_jaxlib_alone():
  mine = "--xla_cpu_experimental_ynn_fusion_type=+reduce"
  assert xla_flags.ynn_flags(mine, "0.12.0") == mine
  # older jaxlib (an unknown XLA flag aborts the process; 0.10 showed no NaNs), or none
  assert xla_flags.ynn_flags("", "0.10.2") == ""
  assert xla_flags.ynn_flags("", "0.6.2") == ""
  assert xla_flags.ynn_flags("--a", None) == "--a"


def test_apply_changes_only_the_given_environment_and_is_idempotent(monkeypatch):
  monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.12.0")
  env = {"XLA_FLAGS": "--x"}
  xla_flags.apply(env)
  xla_flags.apply(env)
  assert env == {"XLA_FLAGS": "--x " + xla_flags.YNN_WORKAROUND}
  empty = {}
  xla_flags.apply(empty)
  assert empty == {"XLA_FLAGS": xla_flags.YNN_WORKAROUND}


def test_this_process_runs_with_the_workaround():
  """The suite imports sagan_jax before JAX's first computation, like every command."""
  version = xla_flags._jaxlib_version()
  if xla_flags._version_tuple(version) >= xla_flags.MIN_JAXLIB:
    assert xla_flags.YNN_FLAG in os.environ["XLA_FLAGS"]
