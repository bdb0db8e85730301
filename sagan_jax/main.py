r"""Train or resume SAGAN (`sagan-jax train` is the same command).

  sagan-jax train --config digits --workdir runs/digits
  python -m sagan_jax.main --config configs/digits.py --workdir runs/digits
  python -m sagan_jax.main --config configs/imagenet128.py --workdir gs://bucket/run \
      --config.batch_size=512

Rerunning with the same --workdir resumes from its newest intact checkpoint.
Every hyperparameter is a `--config.<field>=<value>` override. A mistake in
the flags, the config or the workdir stops in the first seconds with one
`error: ...` line (exit status 2), before anything is written.
"""

from __future__ import annotations

import os

# TensorFlow (used by clu's writers and the TFDS pipeline) stays quiet and off accelerators.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from sagan_jax import command, errors, utils

FLAGS = flags.FLAGS
# Defined at import, unlike the other commands' define_flags(): --config must be checked
# before the distributed flags' module imports JAX (command.run's late definitions).
command.define_config_flag("Config: a built-in name (digits, tiny, imagenet128, "
                         "imagenet128:official, cifar10, folder) or a file "
                         "(configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Directory (relative, absolute, ~/..., or gs://) for "
                    "checkpoints, TensorBoard logs and sample grids; rerun with the same one "
                    "to resume.")
flags.mark_flags_as_required(["config", "workdir"])


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from sagan_jax import cpu_devices, distributed, preflight
  n, i = FLAGS.num_processes, FLAGS.process_id
  errors.check_flag(n is None or i is None or i < n, "process_id", i,
                    f"must be below --num_processes={n} (processes count from 0)")
  # Before jax.distributed waits for the other hosts (up to minutes).
  workdir = preflight.preflight(FLAGS.config, FLAGS.workdir)
  plan = distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                                heartbeat_timeout=FLAGS.config.heartbeat_timeout_s)
  cpu_devices.configure(FLAGS.config.batch_size, FLAGS.config.mesh.num_devices, plan.init)
  import jax
  from sagan_jax import train
  utils.say("sagan_jax: JAX %s, %s", jax.__version__, distributed.describe())
  train.train_and_evaluate(FLAGS.config, workdir)


def _define_distributed_flags():
  from sagan_jax import distributed   # imports JAX: after the --config file was checked
  distributed.define_flags()


if __name__ == "__main__":
  command.run(main, _define_distributed_flags)
