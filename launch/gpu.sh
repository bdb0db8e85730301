#!/usr/bin/env bash
# Single-node, multi-GPU launcher for sagan_jax: one process drives every GPU
# of the machine (batch sharded over them; no jax.distributed needed).
# For several nodes use launch/slurm.sbatch. `--dry-run` prints the commands.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [COMMAND] [options] [-- extra sagan_jax.main flags]

Commands:
  install   make a venv (--venv), pip install -r requirements.txt and
            -U "jax[cuda12]" (CUDA and cuDNN come as pip wheels; the
            NVIDIA driver must be installed on the machine)
  run       run `python -m sagan_jax.main` in the foreground (default), or
            detached with --log FILE
  all       install, then run

Options:
  --config PATH          config file, relative to the repo [configs/imagenet128.py]
                         (the run starts in the repo root)
  --workdir DIR          run directory (local path or gs://); a relaunch with
                         the same --workdir resumes from its latest checkpoint
  --tfds-data-dir DIR    TFDS_DATA_DIR for the run [TFDS_DATA_DIR]
  --gpus LIST            CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 [all GPUs]
  --venv DIR             virtual environment [REPO/.venv]
  --python PYTHON        interpreter that makes the venv, >= 3.11 [python3]
  --jax-extra EXTRA      pip extra of jax to install [cuda12]
  --log FILE             run detached (nohup) with output appended to FILE;
                         its pid goes to FILE.pid (`kill -TERM` it to stop:
                         sagan_jax saves a checkpoint and exits)
  --dry-run              print the commands instead of running them
  -h, --help             this text

Example:
  launch/gpu.sh all --workdir runs/imagenet128 --tfds-data-dir /data/tfds
EOF
}

COMMAND=run
CONFIG=configs/imagenet128.py
WORKDIR=""
TFDS_DIR=${TFDS_DATA_DIR:-}
GPUS=""
VENV=$REPO_ROOT/.venv
PYTHON=python3
JAX_EXTRA=cuda12
LOG=""
EXTRA_ARGS=()
command_given=0

while (($#)); do
  next_opt "$1"
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --config) take "$@"; CONFIG=$value ;;
    --workdir) take "$@"; WORKDIR=$value ;;
    --tfds-data-dir) take "$@"; TFDS_DIR=$value ;;
    --gpus) take "$@"; GPUS=$value ;;
    --venv) take "$@"; VENV=$value ;;
    --python) take "$@"; PYTHON=$value ;;
    --jax-extra) take "$@"; JAX_EXTRA=$value ;;
    --log) take "$@"; LOG=$value ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    -*) die "unknown option $arg (see --help)" ;;
    install | run | all)
      ((command_given == 0)) || die "one command at a time"
      COMMAND=$arg
      command_given=1
      ;;
    *) die "unknown command '$arg' (see --help)" ;;
  esac
  shift "$shift_by"
done

# Paths given relative to where the script was called from (it runs in the
# repo root); gs:// and absolute paths are left alone.
absolute() {
  case $1 in
    "" | /* | *://*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}
WORKDIR=$(absolute "$WORKDIR")
LOG=$(absolute "$LOG")
VENV=$(absolute "$VENV")

cmd_install() {
  need "$PYTHON" "Pass --python with a Python >= 3.11 (or install one, e.g. with uv)."
  if [[ $DRY_RUN != 1 ]]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
      die "$PYTHON is older than 3.11 (JAX needs >= 3.11); pass --python python3.11 or newer"
  fi
  run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/pip" install --upgrade pip
  run "$VENV/bin/pip" install -r "$REPO_ROOT/requirements.txt"
  run "$VENV/bin/pip" install -U "jax[$JAX_EXTRA]"
  run "$VENV/bin/python" -c 'import jax; print(jax.__version__, jax.devices())'
}

cmd_run() {
  [[ -n $WORKDIR ]] || die "run needs --workdir DIR"
  local envs=()
  [[ -n $GPUS ]] && envs+=("CUDA_VISIBLE_DEVICES=$GPUS")
  [[ -n $TFDS_DIR ]] && envs+=("TFDS_DATA_DIR=$TFDS_DIR")
  local cmd=(env "${envs[@]}" "$VENV/bin/python" -m sagan_jax.main
    --config "$CONFIG" --workdir "$WORKDIR" "${EXTRA_ARGS[@]}")
  if [[ $DRY_RUN != 1 ]]; then
    [[ -x $VENV/bin/python ]] || die "no venv at $VENV; run \`$0 install\` first (or pass --venv)"
  fi
  run cd "$REPO_ROOT"
  if [[ -z $LOG ]]; then
    run "${cmd[@]}"
  elif [[ $DRY_RUN == 1 ]]; then
    printf '%s >> %s 2>&1 < /dev/null & echo $! > %s\n' \
      "$(quote nohup "${cmd[@]}")" "$(quote "$LOG")" "$(quote "$LOG.pid")"
  else
    nohup "${cmd[@]}" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$LOG.pid"
    note "started pid $!; log $LOG; stop with: kill -TERM \$(cat $LOG.pid)"
  fi
}

case $COMMAND in
  install) cmd_install ;;
  run) cmd_run ;;
  all)
    [[ -n $WORKDIR ]] || die "all needs --workdir DIR"
    cmd_install
    cmd_run
    ;;
esac
