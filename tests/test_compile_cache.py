"""compile_cache: where JAX's persistent compilation cache goes, when it is off, and that a
second process loads what the first compiled."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sagan_jax import compile_cache
from tests.conftest import ROOT

# One process: enable(), count the persistent-cache hits, compile one program.
_PROBE = """
import json, jax, jax.numpy as jnp
from sagan_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compile_cache.enable()
x = jnp.arange(64.0).reshape(8, 8)
y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(x)
print(json.dumps({"dir": path, "y": float(y),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "lookups": events.count("/jax/compilation_cache/compile_requests_use_cache")}))
"""


def _probe(env_extra: dict) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "SAGAN_JAX_"))}
  env.update(env_extra, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(path) -> dict:
  return {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)
          if f.endswith("-cache")}


def test_second_process_loads_what_the_first_compiled(tmp_path):
  first = _probe({compile_cache.ENV_ROOT: str(tmp_path)})
  want = os.path.join(str(tmp_path), compile_cache.SUBDIR, compile_cache.machine_tag())
  assert first["dir"] == want
  assert first["lookups"] >= 1 and first["hits"] == 0
  written = _entries(want)
  assert any(f.startswith("jit__lambda") for f in written)
  second = _probe({compile_cache.ENV_ROOT: str(tmp_path)})
  assert second["y"] == first["y"]
  assert second["hits"] == second["lookups"] >= 1   # every program came from the cache
  assert _entries(want) == written                  # nothing compiled and written again


def test_environment_variable_turns_it_off(tmp_path):
  got = _probe({compile_cache.ENV_ROOT: str(tmp_path), compile_cache.ENV_SWITCH: "0"})
  assert got["dir"] is None and got["hits"] == 0
  assert os.listdir(tmp_path) == []   # nothing created, nothing written


def test_unwritable_location_runs_without_a_cache(tmp_path):
  # A path below a plain file cannot be created, whoever runs the test (also root).
  blocker = tmp_path / "file"
  blocker.write_text("")
  got = _probe({compile_cache.ENV_ROOT: str(blocker / "cache")})
  assert got["dir"] is None and got["hits"] == 0
  x = np.arange(64.0).reshape(8, 8)
  assert got["y"] == pytest.approx(float(np.tanh(x @ x.T).sum()), rel=1e-6)


def test_users_jax_cache_dir_wins(tmp_path):
  got = _probe({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine"),
                compile_cache.ENV_ROOT: str(tmp_path / "ours")})
  assert got["dir"] == str(tmp_path / "mine")
  assert not (tmp_path / "ours").exists() and _entries(tmp_path / "mine")


def test_leaves_the_test_suites_cache_alone():
  before = jax.config.jax_compilation_cache_dir   # set by conftest
  assert before and compile_cache.enable() == before
  assert jax.config.jax_compilation_cache_dir == before


def test_default_location(monkeypatch):
  tag = compile_cache.machine_tag()
  monkeypatch.setattr(os.path, "expanduser", lambda p: p.replace("~", "/home/u"))
  assert compile_cache.default_dir({}) == f"/home/u/.cache/sagan_jax/jax_cache/{tag}"
  assert (compile_cache.default_dir({"XDG_CACHE_HOME": "/x"})
          == f"/x/sagan_jax/jax_cache/{tag}")
  assert (compile_cache.default_dir({"SAGAN_JAX_CACHE_DIR": "gs://b/c", "XDG_CACHE_HOME": "/x"})
          == f"gs://b/c/jax_cache/{tag}")
  assert compile_cache.default_dir({"SAGAN_JAX_CACHE_DIR": ""}) is None
  assert compile_cache.default_dir({"SAGAN_JAX_COMPILE_CACHE": "False"}) is None
  assert compile_cache.default_dir({"SAGAN_JAX_COMPILE_CACHE": " off"}) is None
  assert compile_cache.default_dir({"SAGAN_JAX_COMPILE_CACHE": "1"}) is not None


def test_remote_path_is_not_probed(tmp_path):
  # gs:// is handed to JAX (which warns, never raises, on remote-file errors): nothing local.
  assert compile_cache._writable("gs://no-such-bucket/x") is None
  assert compile_cache._writable(str(tmp_path / "new" / "dir")) is None
  assert (tmp_path / "new" / "dir").is_dir()
  assert compile_cache.machine_tag().startswith("cpu-") and len(compile_cache.machine_tag()) == 16


def test_every_command_enables_the_cache(monkeypatch):
  # main, sample, evaluate, describe and convert all run their `main` through command.cli_main.
  from sagan_jax import command
  calls = []
  monkeypatch.setattr(compile_cache, "enable", lambda: calls.append("enable"))
  assert command.cli_main(lambda argv: calls.append("main") or 0)(["cmd"]) == 0
  assert calls == ["enable", "main"]
