"""sagan_jax: Self-Attention GAN (Zhang et al. 2019) in JAX/Flax.

`sagan_jax.load(workdir, step=None)` returns a run to generate, discriminate
and sample from (see `sagan_jax.api`); it is imported on first use, so
`import sagan_jax` stays light.
"""

from importlib import metadata as _metadata

from sagan_jax import xla_flags as _xla_flags

_xla_flags.apply()  # before JAX reads XLA_FLAGS: a bfloat16 workaround for XLA:CPU (see the module)

try:
  __version__ = _metadata.version("sagan-jax")   # pyproject.toml's, once installed
except _metadata.PackageNotFoundError:           # a checkout used without `pip install`
  __version__ = "0+unknown"


def __getattr__(name):
  if name == "load":
    from sagan_jax.api import load
    return load
  raise AttributeError(f"module 'sagan_jax' has no attribute {name!r}")
