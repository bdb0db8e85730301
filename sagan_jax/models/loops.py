"""The CPU path's memory-saving loops, and the switch that unrolls them to count FLOPs.

`attention.attend_in_chunks` and the 'shift' convolution's weight gradient
(`conv._dw_shift`) run a loop (`jax.lax.map`) so that XLA keeps one piece of
their work in memory at a time; the 'blocked' weight gradient (`conv._dw_blocked`)
sums its blocks in a `fori_loop`. XLA's cost analysis counts a loop's body
once, so a program with loops reports fewer FLOPs than it does. Traced inside
`unrolled()`, `map` is a Python loop instead, and the blocked sum one block:
the same arithmetic with every piece visible, which is what `describe` and
`benchmarks/train_speed.py` count.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

_unrolled = False


@contextlib.contextmanager
def unrolled():
  """Within: `map` traces as a Python loop (for counting FLOPs). Trace a fresh jitted
  function inside it: a function traced before keeps the loops it was traced with."""
  global _unrolled
  before, _unrolled = _unrolled, True
  try:
    yield
  finally:
    _unrolled = before


def is_unrolled() -> bool:
  """Whether tracing is inside `unrolled()`: a loop written without `map` (the 'blocked'
  weight gradient's running sum) then traces its work as one piece, the same products."""
  return _unrolled


def map(f, xs):  # noqa: A001 (jax.lax.map's name)
  """jax.lax.map(f, xs) (xs and f's result: arrays or pytrees of them); a Python loop over
  the leading axis inside `unrolled()`."""
  if _unrolled:
    n = jax.tree.leaves(xs)[0].shape[0]
    outs = [f(jax.tree.map(lambda a, i=i: a[i], xs)) for i in range(n)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)
  return jax.lax.map(f, xs)
