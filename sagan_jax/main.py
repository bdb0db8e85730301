r"""Train or resume SAGAN.

  python -m sagan_jax.main --config configs/digits.py --workdir runs/digits
  python -m sagan_jax.main --config configs/imagenet128.py --workdir gs://bucket/run \
      --config.batch_size=512

Rerunning with the same --workdir resumes from its latest checkpoint.
Every hyperparameter is a `--config.<field>=<value>` override.
"""

from __future__ import annotations

import os

# TensorFlow (used by clu's writers and the TFDS pipeline) stays quiet and off accelerators.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (or gs:// path) for checkpoints, "
                    "TensorBoard logs and sample grids.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Progress goes to stdout; library INFO chatter (Orbax, clu) only with -v 0.
    logging.set_verbosity(logging.WARNING)
  from sagan_jax import cpu_devices, distributed, utils
  plan = distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
  cpu_devices.configure(FLAGS.config.batch_size, FLAGS.config.mesh.num_devices, plan.init)
  import jax
  from sagan_jax import train
  utils.say("sagan_jax: JAX %s, %s", jax.__version__, distributed.describe())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  from sagan_jax import distributed as _distributed
  from sagan_jax import utils as _utils
  _distributed.define_flags()
  app.run(_utils.cli_main(main))
