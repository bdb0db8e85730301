"""The modules of sagan_jax.data: each imports alone, none loads TensorFlow, no circles."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "sagan_jax", "data")
PACKAGE = "sagan_jax.data"
MODULES = sorted(f[:-3] for f in os.listdir(DATA) if f.endswith(".py"))


def module_name(stem: str) -> str:
  return PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"


def imported_data_modules(stem: str) -> set[str]:
  """The sagan_jax.data modules `stem` imports anywhere (also inside functions)."""
  with open(os.path.join(DATA, stem + ".py")) as f:
    tree = ast.parse(f.read())
  names = {module_name(m) for m in MODULES}
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name in names)
    elif isinstance(node, ast.ImportFrom) and node.module in names:
      subs = {f"{node.module}.{a.name}" for a in node.names} & names
      # `from pkg import submodule` imports the submodule; any other name, the module itself.
      out.update(subs)
      if len(subs) < len(node.names):
        out.add(node.module)
  out.discard(module_name(stem))
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


def test_no_import_circles_in_the_data_package():
  graph = {module_name(m): imported_data_modules(m) for m in MODULES}
  assert graph[f"{PACKAGE}.pipeline"] >= {f"{PACKAGE}.tfds_source", f"{PACKAGE}.folder"}
  assert find_cycle(graph) is None, find_cycle(graph)


@pytest.mark.parametrize("stem", MODULES)
def test_each_module_imports_alone_without_tensorflow(stem):
  code = (f"import sys, {module_name(stem)}; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
