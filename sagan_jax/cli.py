"""The `sagan-jax` command: one entry point, a subcommand per job.

  sagan-jax train --config digits --workdir runs/digits
  sagan-jax sample --workdir runs/digits --out grid.png
  sagan-jax evaluate --workdir runs/digits --num_samples 1000 --digits_score --noinception
  sagan-jax describe --config imagenet128
  sagan-jax convert --from studiogan --weights DIR --config cifar10 --workdir runs/converted

Each subcommand is the module of the same job run as a program (`sagan-jax
train ...` is `python -m sagan_jax.main ...`), so both spellings take the same
flags; `sagan-jax COMMAND --help` lists them. `--config` takes a built-in
config's name (`digits`, `tiny`, `imagenet128`, `imagenet128:official`,
`cifar10`, `folder`) from any directory, or a config file's path.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

# subcommand -> (module run as __main__, one line for the help)
COMMANDS = {
    "train": ("sagan_jax.main", "train, or resume from the workdir's newest intact checkpoint"),
    "sample": ("sagan_jax.sample", "sample grids, attention maps, interpolations, .npz exports"),
    "evaluate": ("sagan_jax.evaluate", "FID / IS / the digits score as one JSON line"),
    "describe": ("sagan_jax.describe", "parameter counts, FLOPs and memory of a config"),
    "convert": ("sagan_jax.convert", "a BigGAN-PyTorch or StudioGAN checkpoint as a sagan_jax run"),
    "sweep": ("sagan_jax.sweep", "the paper's ablations: several variants and seeds, one table"),
}


def available() -> dict[str, tuple[str, str]]:
  """The subcommands whose module this installation has."""
  return {name: entry for name, entry in COMMANDS.items()
          if importlib.util.find_spec(entry[0]) is not None}


def usage() -> str:
  from sagan_jax import __version__
  width = max(map(len, COMMANDS))
  rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in available().items())
  return (f"sagan-jax {__version__}: SAGAN in JAX/Flax.\n\n"
          f"usage: sagan-jax COMMAND [flags]   (sagan-jax COMMAND --help lists its flags)\n\n"
          f"commands:\n{rows}\n\n"
          "--config takes a built-in config name (digits, tiny, imagenet128, "
          "imagenet128:official, cifar10, folder) or a config file's path.")


def main(argv: list[str] | None = None) -> None:
  """Runs `sagan-jax COMMAND ...`; exits as that command does (2 for a usage mistake)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if argv else 2)
  if argv[0] == "--version":
    from sagan_jax import __version__
    print(f"sagan-jax {__version__}")
    sys.exit(0)
  commands = available()
  if argv[0] not in commands:
    print(f"error: unknown command {argv[0]!r}; one of: {', '.join(commands)} "
          "(sagan-jax --help).", file=sys.stderr)
    sys.exit(2)
  module = commands[argv[0]][0]
  sys.argv = [f"sagan-jax {argv[0]}", *argv[1:]]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
