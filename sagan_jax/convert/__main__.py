r"""Convert a PyTorch SAGAN checkpoint (BigGAN-PyTorch or StudioGAN) into a sagan_jax run.

  python -m sagan_jax.convert --from biggan-pytorch --weights weights/SAGAN_ema \
      --config configs/imagenet128.py --workdir runs/sagan128_from_torch
  python -m sagan_jax.convert --from studiogan --weights checkpoints/SAGAN-train-... \
      --config configs/imagenet128.py --workdir runs/studiogan128 --select best

The workdir then holds an ordinary checkpoint (G, EMA G, D, both Adam states,
the step) and its config: `sample`, `evaluate` and `main` (to continue
training) use it unchanged. No torch is needed. The config fixes the
architecture; the converter checks every tensor against it and sets the
fields the peer's code fixes (SN and BN epsilons, BN momentum, Adam eps and
betas) unless given on the command line (`--config.model.sn_eps=...`).
See docs/pretrained.md.
"""

from __future__ import annotations

import os
import shlex

from absl import app, flags, logging
from ml_collections import config_flags

from sagan_jax import command, utils

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum("from", None, ["biggan-pytorch", "studiogan"], "Which code wrote --weights.")
  flags.DEFINE_string("weights", None, "The peer's checkpoint folder: BigGAN-PyTorch's "
                      "weights/<experiment>/ or StudioGAN's checkpoint directory.")
  flags.DEFINE_string("workdir", None, "New sagan_jax run directory to write.")
  flags.DEFINE_string("select", "", "BigGAN-PyTorch: file suffix (best0 for G_best0.pth, ...); "
                      "StudioGAN: 'best' or 'current' when the folder has both.")
  flags.DEFINE_bool("optimizer", True, "Convert the Adam states when present (--nooptimizer: "
                    "weights only; continued training then starts Adam afresh).")
  command.define_config_flag("sagan_jax config of the same architecture: a built-in name "
                           "(imagenet128, cifar10, ...) or a file (configs/*.py[:variant]).")
  flags.mark_flags_as_required(["from", "weights", "workdir", "config"])


def continue_command(config_spec: str, workdir: str, changes: list[str], overrides: dict) -> str:
  """The `main` command line that trains on with the same settings as the converted run."""
  fields = dict(overrides)
  for change in changes:                 # 'config.model.sn_eps: 1e-12 -> 1e-08'
    name, _, values = change.partition(": ")
    fields[name[len("config."):]] = values.split(" -> ")[-1]
  show = lambda v: (",".join(map(str, v)) or "()") if isinstance(v, tuple) else v  # noqa: E731
  extra = "".join(" " + shlex.quote(f"--config.{k}={show(v)}") for k, v in fields.items())
  return (f"python -m sagan_jax.main --config {shlex.quote(config_spec)} "
          f"--workdir {shlex.quote(workdir)}{extra}")


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not os.path.isdir(FLAGS.weights):
    raise app.UsageError(f"--weights {FLAGS.weights}: not a directory")
  from sagan_jax.convert import build
  build.check_new_workdir(FLAGS.workdir)
  overrides = config_flags.get_override_values(FLAGS["config"])
  result = build.convert(FLAGS["from"].value, FLAGS.weights, FLAGS.config, FLAGS.select,
                         FLAGS.optimizer, frozenset(overrides))
  src = result.source
  files = [sd.name for sd in (src.g, src.ema, src.d) if sd is not None]
  files += [name for _, name in src.optim.values()]
  utils.say(f"read {src.framework} {src.folder}: {', '.join(files)}; "
            f"step {int(result.state.step)}")
  for line in result.changes:
    utils.say(f"set {line} (as {src.framework})")
  for line in result.notes:
    utils.say(f"note: {line}")
  where = build.write_run(FLAGS.workdir, result)
  utils.say(f"wrote {where}")
  spec = config_flags.get_config_filename(FLAGS["config"])
  utils.say(f"sample:   python -m sagan_jax.sample --workdir {FLAGS.workdir} --out grid.png")
  utils.say("continue: " + continue_command(spec, FLAGS.workdir, result.changes, overrides))


if __name__ == "__main__":
  command.run(main, define_flags)
