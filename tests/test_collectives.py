"""No cross-device collective inside a loop of the partitioned train step.

jaxlib 0.12's XLA:CPU may run an all-reduce inside a while loop in a different
order on two devices than an all-reduce outside it; each device then waits for
the other's share of a different reduction until XLA aborts the process
("Termination timeout for `all reduce ...`"). The digits default did, split
over 2 CPU devices on a loaded 2-core machine. These tests read the compiled
program's HLO: every collective must sit outside loop bodies.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.conftest import load_config
from sagan_jax import describe, parallel, state as state_lib
from sagan_jax.models import conv

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
                "all-to-all")
_CALLS = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)")


def _computations(hlo: str) -> dict[str, list[str]]:
  """HLO module text -> {computation name: its instruction lines}."""
  comps, lines = {}, None
  for line in hlo.splitlines():
    m = re.match(r"(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if m and not line.startswith(" "):
      lines = comps[m.group(1)] = []
    elif lines is not None:
      lines.append(line)
  return comps


def collectives_in_loops(hlo: str) -> list[str]:
  """The collective instructions of `hlo` inside a while loop (its body, condition, or any
  computation they call)."""
  comps = _computations(hlo)
  todo = [b for lines in comps.values() for line in lines
          for b in re.findall(r"\b(?:body|condition)=%?([\w.\-]+)", line)]
  inside = set()
  while todo:
    name = todo.pop()
    if name in inside or name not in comps:
      continue
    inside.add(name)
    todo += [c for line in comps[name] for c in _CALLS.findall(line)]
  return [line.strip() for name in sorted(inside) for line in comps[name]
          if re.search(r"= \S+ (?:%s)(?:-start)?\(" % "|".join(_COLLECTIVES), line)]


def _sharded(mesh, *arrays):
  return [jax.device_put(a, NamedSharding(mesh, P(parallel.DATA))) for a in arrays]


def _conv_inputs(batch=8):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, 6, 6, 8)).astype(np.float32)
  dy = rng.standard_normal((batch, 6, 6, 16)).astype(np.float32)
  return x, dy


def test_the_check_finds_an_all_reduce_in_a_loop():
  """The formulation the shift weight gradient had: the batch summed inside the loop."""
  mesh = parallel.make_mesh()
  assert mesh.devices.size > 1, "conftest gives the tests several CPU devices"
  x, dy = _sharded(mesh, *_conv_inputs())
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

  def dw(xp, dy):
    def tap(t):
      view = jax.lax.dynamic_slice(xp, (0, t // 3, t % 3, 0), dy.shape[:3] + (xp.shape[-1],))
      return view.reshape(-1, xp.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
    return jax.lax.map(tap, jnp.arange(9))

  found = collectives_in_loops(jax.jit(dw).lower(xp, dy).compile().as_text())
  assert found and all("all-reduce" in f for f in found), found


@pytest.mark.parametrize("impl", ["shift", "blocked"])
def test_looped_weight_gradients_sum_over_devices_after_their_loop(impl, monkeypatch):
  monkeypatch.setattr(conv, "block_rows", lambda *_: 16)   # 'blocked': several blocks
  mesh = parallel.make_mesh()
  x, dy = _conv_inputs()
  assert conv.batch_groups(len(x)) == mesh.devices.size
  xs, dys = _sharded(mesh, x, dy)
  fn = jax.jit(lambda x, dy: conv.weight_grad(x, dy, (3, 3, 8, 16), impl))
  compiled = fn.lower(xs, dys).compile()
  assert collectives_in_loops(compiled.as_text()) == []
  assert "all-reduce" in compiled.as_text()   # the sum over devices is still there
  ref = conv.weight_grad(x, dy, (3, 3, 8, 16), "xla")
  np.testing.assert_allclose(np.asarray(compiled(xs, dys)), np.asarray(ref),
                             rtol=1e-5, atol=1e-4)


def test_batch_groups_is_one_when_the_devices_do_not_divide_the_batch():
  n = jax.device_count()
  assert conv.batch_groups(n * 3) == n
  assert conv.batch_groups(n + 1) == 1


def test_train_step_keeps_collectives_out_of_loops():
  """The whole step over every device, its 16x16 convs with the 'shift' weight gradient."""
  config = load_config("tiny", batch_size=64)
  mesh = parallel.make_mesh()
  models, state = state_lib.abstract_state(config, mesh)
  hlo = describe.compile_step(config, models, state, mesh, config.batch_size).as_text()
  assert " while(" in hlo and "all-reduce" in hlo   # loops and reductions both present
  assert collectives_in_loops(hlo) == []
