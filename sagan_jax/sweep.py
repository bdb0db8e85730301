r"""The paper's ablations as one command: config variants x seeds, one table, one figure.

  python -m sagan_jax.sweep --config configs/digits.py \
      --variants baseline,sn_gd,sn_gd_ttur,noattn --seeds 0,1 --workdir runs/ablation
  python -m sagan_jax.sweep ... --only noattn:1    # one member (a SLURM array task, a TPU VM)
  python -m sagan_jax.sweep ... --summarise        # only the tables, from what has finished

Each (variant, seed) is an ordinary run directory, WORKDIR/<variant>-s<seed>,
trained by `python -m sagan_jax.main --config FILE:<variant>
--config.seed=<seed>` in a subprocess (`--in_process`: in this process);
extra `--config.<field>=<value>` flags go to every member. Rerunning skips
finished members (newest checkpoint at config.total_steps) and resumes the
others; a member that fails (e.g. NaN) is recorded and the sweep goes on.
Without --only the sweep then writes, from each member's in-training
evaluations (WORKDIR/<member>/eval.jsonl):

  results.json  every member's evaluations, steps, wall time and status,
                and per variant the mean and spread over seeds
  results.md    the table (as the paper's Table 1): per variant and metric
                the best and the final value, mean +- std over seeds
  curves.png    metric against step per variant (as the paper's Figure 3)
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

from absl import app, flags

from sagan_jax import command, errors, sweep_report, utils
from sagan_jax.sweep_report import read_state, steps_done, write_state

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Member:
  variant: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.variant or 'default'}-s{self.seed}"


def parse_list(text: str, flag: str) -> list[str]:
  items = [t.strip() for t in (text or "").split(",")]
  errors.check_flag(bool(text) and all(items), flag, text,
                    "give a comma-separated list without empty entries")
  errors.check_flag(len(set(items)) == len(items), flag, text, "an entry is repeated")
  return items


def parse_seeds(text: str) -> list[int]:
  items = parse_list(text, "seeds")
  errors.check_flag(all(t.isdigit() for t in items), "seeds", text,
                    "give seeds as integers >= 0, e.g. 0,1")
  return [int(t) for t in items]


def parse_only(text: str, members: list[Member]) -> Member:
  variant, _, seed = text.rpartition(":")
  names = {f"{m.variant}:{m.seed}": m for m in members}
  errors.check_flag(text in names, "only", text,
                    f"give VARIANT:SEED of this sweep, one of {sorted(names)}")
  return names[text]


def member_config(spec: str, member: Member, overrides: dict):
  """The member's config: the file's variant, the sweep's overrides, the member's seed."""
  from sagan_jax import config_base
  config = config_base.load(f"{spec}:{member.variant}" if member.variant else spec, overrides)
  config.seed = member.seed
  return config


def check_variants(spec: str, variants: list[str], overrides: dict) -> dict:
  """{variant: its config (seed 0)}; an unknown variant or a bad override is a flag error."""
  from sagan_jax import preflight
  out = {}
  for v in variants:
    try:
      out[v] = member_config(spec, Member(v, 0), overrides)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"--variants: {spec} cannot make variant {v!r}: {e}") from None
    preflight.check_config(out[v])
  return out


def _flag_value(v) -> str:
  return "(" + "".join(f"{x}," for x in v) + ")" if isinstance(v, tuple) else str(v)


def run_member(spec: str, member: Member, config, overrides: dict, workdir: str,
               in_process: bool) -> str:
  """Trains (or resumes) one member; its status: 'finished', 'skipped' or 'failed (...)'."""
  rundir = os.path.join(workdir, member.name)
  if steps_done(rundir) >= config.total_steps:
    utils.say("sweep: %s is finished (step %d); skipped", member.name, config.total_steps)
    return "skipped"
  utils.say("sweep: training %s in %s", member.name, rundir)
  state = read_state(rundir)
  t0 = time.time()
  if in_process:
    from sagan_jax import train
    try:
      train.train_and_evaluate(config, rundir)
      status = "finished"
    except errors.UserError as e:
      status = f"failed ({type(e).__name__}: {e})"
  else:
    cmd = [sys.executable, "-m", "sagan_jax.main", "--config",
           f"{spec}:{member.variant}" if member.variant else spec, "--workdir", rundir,
           f"--config.seed={member.seed}"]
    cmd += [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
    status = _run_logged(cmd, rundir)
  state = {"wall_s": state.get("wall_s", 0.0) + time.time() - t0,
           "launches": state.get("launches", 0) + 1, "status": status}
  write_state(rundir, state)
  if status != "finished":
    utils.say("sweep: %s %s", member.name, status)
  return status


def _run_logged(cmd: list[str], rundir: str) -> str:
  """Runs `cmd`, its output appended to RUNDIR/train.log (local) or passed through (remote)."""
  if "://" in rundir:
    rc = subprocess.call(cmd)
  else:
    os.makedirs(rundir, exist_ok=True)
    with open(os.path.join(rundir, "train.log"), "ab") as log:
      rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc:
      with open(os.path.join(rundir, "train.log"), "rb") as log:
        tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
      utils.say("sweep: the last lines of %s/train.log:\n  %s", rundir, "\n  ".join(tail))
  return "finished" if rc == 0 else f"failed (exit status {rc})"


def sweep(spec: str, variants: list[str], seeds: list[int], workdir: str,
          overrides: dict | None = None, only: str = "", summarise_only: bool = False,
          in_process: bool = False) -> dict | None:
  """Runs the sweep (or its --only member) and, unless --only, writes its three outputs.

  Every flag is checked before anything is written or trained. Returns the
  results (None with `only`).
  """
  overrides = dict(overrides or {})
  errors.check_flag(bool(workdir), "workdir", workdir, "give the sweep's directory")
  errors.check_flag("seed" not in overrides, "config.seed", overrides.get("seed"),
                    "the sweep sets each member's seed: use --seeds")
  errors.check_flag(":" not in os.path.basename(spec), "config", spec,
                    "give the config without a variant; --variants chooses them")
  if "://" not in workdir:
    workdir = os.path.abspath(os.path.expanduser(workdir))   # Orbax needs absolute paths
  members = [Member(v, s) for s in seeds for v in variants]   # every variant once, first
  chosen = parse_only(only, members) if only else None
  configs = check_variants(spec, variants, overrides)
  from sagan_jax import integrity
  integrity.check_workdir(workdir)
  if not summarise_only:
    for m in [chosen] if chosen else members:
      run_member(spec, m, member_config(spec, m, overrides), overrides, workdir, in_process)
  if chosen:
    return None
  results = sweep_report.collect(workdir, spec, members, configs, overrides)
  sweep_report.write(workdir, results)
  utils.say("sweep: wrote %s/results.json, results.md and curves.png", workdir)
  return results


def _overrides(argv: list[str]) -> dict:
  """{field: value} of the --config.<field> flags, typed as the parsed --config holds them."""
  from sagan_jax import config_base
  _, names = command.config_args(argv)
  out = {}
  for name in names:
    node, leaf = config_base.field(FLAGS.config, name)
    out[name] = node[leaf]
  return out


@command.cli_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  spec = command.config_args(sys.argv)[0]
  sweep(spec, parse_list(FLAGS.variants, "variants"), parse_seeds(FLAGS.seeds),
        FLAGS.workdir, _overrides(sys.argv), FLAGS.only or "", FLAGS.summarise,
        FLAGS.in_process)


def define_flags():
  command.define_config_flag("Config, a built-in name or a file (configs/*.py), without a "
                           "variant; --config.<field>=<value> goes to every member.")
  flags.DEFINE_string("variants", None, "Comma-separated variants of the config file, e.g. "
                      "baseline,sn_gd,sn_gd_ttur,noattn (sagan_jax/experiments.py).")
  flags.DEFINE_string("seeds", "0", "Comma-separated seeds, e.g. 0,1.")
  flags.DEFINE_string("workdir", None, "The sweep's directory: one run directory per member.")
  flags.DEFINE_string("only", None, "Run only VARIANT:SEED (one SLURM array task); no tables.")
  flags.DEFINE_bool("summarise", False, "Train nothing: write the tables and the figure from "
                    "what has finished.")
  flags.DEFINE_bool("in_process", False, "Train the members in this process, one after "
                    "another, instead of one `sagan_jax.main` subprocess each.")
  flags.mark_flags_as_required(["config", "variants", "workdir"])


if __name__ == "__main__":
  command.run(main, define_flags)
