#!/usr/bin/env bash
# The one-script accelerator check: a fresh virtual environment with the jax wheel for this
# host's GPU or TPU, the devices, then benchmarks/accelerator_check.py (numerics against the
# plain path and the CPU, train_speed.py with MFU, the digits quick start), one JSON file.
# Aimed at under 10 minutes on one GPU after the install.
#
# Usage: benchmarks/accelerator_check.sh [--cuda | --tpu | --cpu] [--out FILE] [--venv DIR]
#            [--python PY] [--no-install] [-n] [-- ARGS...]
#
#   --cuda / --tpu   which jax wheel (jax[cuda12], or jax[cuda13] where nvidia-smi reports a
#                    CUDA 13 driver / jax[tpu]); default: nvidia-smi finds a GPU -> cuda,
#                    a TPU device file or $TPU_NAME -> tpu, else --cpu
#   --cpu            the CPU rehearsal: nothing installed, accelerator_check.py --dry-run
#                    with PY (default python3) at tiny sizes
#   --out FILE       the JSON report (default accelerator_check.json)
#   --venv DIR       where the environment goes (default ${TMPDIR:-/tmp}/sagan_jax_accel_venv)
#   --python PY      the interpreter that creates the venv (or, with --no-install, runs)
#   --no-install     use PY as it is (it must have jax for the accelerator already); also
#                    what happens, with a note, when the install fails but PY's jax sees
#                    the accelerator (a machine without a package index)
#   -n               print the commands, run nothing
#   ARGS             passed to accelerator_check.py (e.g. --parts conv attention)
#
# $JAX_VERSION pins the wheel (e.g. JAX_VERSION=0.10.2); default: the newest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind=auto
out=accelerator_check.json
venv="${TMPDIR:-/tmp}/sagan_jax_accel_venv"
python=python3
install=1
show=0
extra=()

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --cuda) kind=cuda ;;
    --tpu) kind=tpu ;;
    --cpu|--dry-run) kind=cpu ;;
    --out) out="$2"; shift ;;
    --venv) venv="$2"; shift ;;
    --python) python="$2"; shift ;;
    --no-install) install=0 ;;
    -n) show=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

detect() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo cuda
  elif [[ -n "${TPU_NAME:-}" || -e /dev/accel0 || -e /dev/vfio/0 ]]; then
    echo tpu
  else
    echo cpu
  fi
}

cuda_major() {  # the CUDA version the driver supports (nvidia-smi's header), major only
  nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1
}

has_accelerator() {  # has_accelerator PY: PY's jax has a GPU/TPU backend
  "$1" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' >/dev/null 2>&1
}

run() {
  echo "+ $*"
  if [[ $show -eq 0 ]]; then "$@"; fi
}

[[ $kind == auto ]] && kind="$(detect)"
echo "accelerator check: $kind"
not_done=()
py="$python"
if [[ $kind == cpu ]]; then
  extra=(--dry-run "${extra[@]}")
elif [[ $install -eq 1 ]]; then
  wheel="jax[cuda12]"
  if [[ $kind == tpu ]]; then
    wheel="jax[tpu]"
  elif [[ "$(cuda_major)" -ge 13 ]] 2>/dev/null; then
    wheel="jax[cuda13]"
  fi
  wheel="$wheel${JAX_VERSION:+==$JAX_VERSION}"
  reqs="$venv.requirements.txt"
  run "$python" -m venv "$venv"
  # The model, optimiser and checkpoint libraries only: no TensorFlow, TFDS or test tools.
  if [[ $show -eq 0 ]]; then
    grep -vE '^(tensorflow|tensorboard|scikit-learn|pytest)' "$root/requirements.txt" >"$reqs"
  fi
  if run "$venv/bin/pip" install -q -r "$reqs" "$wheel"; then
    py="$venv/bin/python"
  elif [[ $show -eq 0 ]] && has_accelerator "$python"; then
    not_done+=("installing $wheel into $venv failed (no network?): ran with $python's own jax")
  else
    echo "not done: installing $wheel into $venv failed (no network?); rerun with" \
         "--no-install --python PY, PY an interpreter that has it" >&2
    exit 1
  fi
fi

if ! run "$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'; then
  not_done+=("jax could not list devices with $py")
fi
status=0
run "$py" "$root/benchmarks/accelerator_check.py" --out "$out" "${extra[@]}" || status=$?
for line in "${not_done[@]}"; do
  echo "not done: $line"
done
exit "$status"
