"""The package's shape: no import circles, small files, data modules free of TensorFlow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from sagan_jax import preflight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "sagan_jax")
MAX_LINES = 400
# The Inception-v3 network definition (a table of ~100 convolutions) may be longer.
LONG_FILES_ALLOWED = {"sagan_jax/evaluation/inception.py"}


def package_modules() -> dict[str, str]:
  """{dotted module name: file path} for every module of sagan_jax."""
  out = {}
  for dirpath, _, files in os.walk(PACKAGE_DIR):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join(rel)] = os.path.join(dirpath, f)
  return out


MODULES = package_modules()


def imported_modules(name: str) -> set[str]:
  """The sagan_jax modules `name` imports anywhere (also inside functions)."""
  with open(MODULES[name]) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in MODULES)
    elif isinstance(node, ast.ImportFrom) and node.module in MODULES:
      subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
      # `from pkg import submodule` imports the submodule; any other name, the module itself.
      out.update(subs)
      if len(subs) < len(node.names):
        out.add(node.module)
  out.discard(name)
  return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of module names in `graph` (depth-first search), or None."""
  state: dict[str, int] = {}   # 1: on the current path, 2: done
  path: list[str] = []

  def visit(m):
    state[m] = 1
    path.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == 1:
        return path[path.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    path.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_find_cycle_sees_a_circle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_read_from_the_sources():
  graph = {m: imported_modules(m) for m in MODULES}
  assert graph["sagan_jax.data.pipeline"] >= {"sagan_jax.data.source",
                                              "sagan_jax.data.reader"}
  assert "sagan_jax.state" in graph["sagan_jax.train"]


def test_no_import_circles_in_the_package():
  graph = {m: imported_modules(m) for m in MODULES}
  assert find_cycle(graph) is None, find_cycle(graph)


def test_no_module_over_the_line_limit():
  long = {}
  for path in MODULES.values():
    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
    with open(path) as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES and rel not in LONG_FILES_ALLOWED:
      long[rel] = n
  assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


DATA_MODULES = sorted(m for m in MODULES if m.startswith("sagan_jax.data"))


@pytest.mark.parametrize("name", DATA_MODULES)
def test_each_data_module_imports_alone_without_tensorflow(name):
  code = (f"import sys, {name}; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_data_source_is_one_registered_module():
  """config.data.source's choices are data/source.SOURCES: each names a module that makes
  its own Source or is a tf.data reader; validate's message lists exactly those."""
  from sagan_jax import config_base, errors
  from sagan_jax.data import source
  for name in source.SOURCES:
    module = source.source_module(name)
    assert hasattr(module, "make_source") or (
        hasattr(module, "train_reader") and hasattr(module, "eval_reader")), name
  c = config_base.load("tiny")
  c.data.source = "imagenet"
  with pytest.raises(errors.ConfigError, match=str(sorted(source.SOURCES)).replace("[", r"\[")):
    preflight.check_config(c)


def test_config_base_sits_below_the_code_it_describes():
  """config_base checks fields on their own; the modules owning a field's choices check it
  (preflight.CHECKERS), so config_base imports none of them."""
  assert imported_modules("sagan_jax.config_base") <= {"sagan_jax.errors"}
  for module in preflight.CHECKERS:
    assert callable(module.check_config), module.__name__
