#!/usr/bin/env bash
# Cloud TPU VM / pod-slice launcher for sagan_jax (queued resources, all workers).
# Run `launch/tpu.sh --help` for the commands; `--dry-run` prints every command
# without running anything (gcloud is not needed for that).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh COMMAND [options] [-- extra sagan_jax.main flags]

Commands:
  create    request the TPU through a queued resource and wait until ACTIVE
  install   copy this tree (or --repo) to every worker; make a Python venv;
            pip install -r requirements.txt and -U "jax[tpu]"
  run       start `python -m sagan_jax.main` on every worker (nohup, detached;
            log ~/sagan_jax.log, pid ~/sagan_jax.pid on each worker)
  launch    create + install + run
  status    queued-resource state, and running/stopped + last log line per worker
  logs      tail the log of one worker (--worker N, --lines N, --follow)
  stop      SIGTERM on every worker (sagan_jax saves a checkpoint and exits),
            SIGKILL after --grace seconds
  delete    delete the queued resource and its TPU VM(s)

Options (environment defaults in brackets):
  --name NAME             queued resource and TPU node name [SAGAN_TPU_NAME, sagan]
  --zone ZONE             e.g. us-central2-b (v4), us-west4-a (v5e) [SAGAN_TPU_ZONE;
                          else gcloud's compute/zone]
  --project PROJECT       [SAGAN_TPU_PROJECT; else gcloud's core/project]
  --accelerator TYPE      v4-8, v4-32, v5litepod-16 (v5e-16 accepted), v5p-8,
                          v6e-8, ... [SAGAN_TPU_ACCELERATOR, v4-8]
  --runtime VERSION       TPU VM image; default chosen from --accelerator
  --spot                  Spot capacity (cheaper, preemptible: see launch/README.md)
  --service-account SA    service account of the VMs (needs access to the buckets)
  --create-arg ARG        extra flag for `queued-resources create` (repeatable),
                          e.g. --create-arg=--reserved
  --wait-timeout SEC      give up waiting for ACTIVE after SEC seconds [0: never]
  --config PATH           config file, relative to the repo [configs/imagenet128.py]
  --workdir URL           run directory, gs://BUCKET/PATH (shared by all workers;
                          a relaunch with the same --workdir resumes)
  --tfds-data-dir URL     TFDS_DATA_DIR on the workers, e.g. gs://BUCKET/tfds
                          [TFDS_DATA_DIR]
  --env KEY=VALUE         extra environment variable for the run (repeatable)
  --repo URL [--ref REF]  install from `git clone URL` at REF on the workers
                          instead of copying this working tree
  --python VERSION        Python for the workers' venv (made with uv) [3.11]
  --worker N              worker for `logs` [0]
  --lines N               lines for `logs` [100]
  --follow                `logs`: keep following (tail -F)
  --grace SEC             `stop`: seconds between SIGTERM and SIGKILL [300]
  --dry-run               print the commands instead of running them
  -h, --help              this text

Examples:
  launch/tpu.sh launch --accelerator v4-32 --zone us-central2-b \
      --workdir gs://my-bucket/sagan/run1 --tfds-data-dir gs://my-bucket/tfds
  launch/tpu.sh logs --worker 0 --follow
  launch/tpu.sh launch --spot ... -- --config.total_steps=500000
EOF
}

COMMAND=""
NAME=${SAGAN_TPU_NAME:-sagan}
ZONE=${SAGAN_TPU_ZONE:-}
PROJECT=${SAGAN_TPU_PROJECT:-}
ACCELERATOR=${SAGAN_TPU_ACCELERATOR:-v4-8}
RUNTIME=""
SPOT=0
SERVICE_ACCOUNT=""
CREATE_ARGS=()
WAIT_TIMEOUT=0
CONFIG=configs/imagenet128.py
WORKDIR=""
TFDS_DIR=${TFDS_DATA_DIR:-}
RUN_ENV=()
REPO_URL=""
REF=main
PYTHON_VERSION=3.11
WORKER=0
LINES=100
FOLLOW=0
GRACE=300
EXTRA_ARGS=()

# Option values may be given as `--opt value` or `--opt=value`.
while (($#)); do
  next_opt "$1"
  case $arg in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --follow) FOLLOW=1 ;;
    --name) take "$@"; NAME=$value ;;
    --zone) take "$@"; ZONE=$value ;;
    --project) take "$@"; PROJECT=$value ;;
    --accelerator) take "$@"; ACCELERATOR=$value ;;
    --runtime) take "$@"; RUNTIME=$value ;;
    --service-account) take "$@"; SERVICE_ACCOUNT=$value ;;
    --create-arg) take "$@"; CREATE_ARGS+=("$value") ;;
    --wait-timeout) take "$@"; WAIT_TIMEOUT=$value ;;
    --config) take "$@"; CONFIG=$value ;;
    --workdir) take "$@"; WORKDIR=$value ;;
    --tfds-data-dir) take "$@"; TFDS_DIR=$value ;;
    --env) take "$@"; RUN_ENV+=("$value") ;;
    --repo) take "$@"; REPO_URL=$value ;;
    --ref) take "$@"; REF=$value ;;
    --python) take "$@"; PYTHON_VERSION=$value ;;
    --worker) take "$@"; WORKER=$value ;;
    --lines) take "$@"; LINES=$value ;;
    --grace) take "$@"; GRACE=$value ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    -*) die "unknown option $arg (see --help)" ;;
    *)
      [[ -z $COMMAND ]] || die "one command at a time ('$COMMAND' and '$arg')"
      COMMAND=$arg
      ;;
  esac
  shift "$shift_by"
done

[[ -n $COMMAND ]] || { usage >&2; exit 2; }
[[ $WAIT_TIMEOUT =~ ^[0-9]+$ ]] || die "--wait-timeout must be a number of seconds"
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number"
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker number"
for kv in "${RUN_ENV[@]}"; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$kv'"
done

# gcloud calls v5e slices v5litepod-N.
if [[ $ACCELERATOR == v5e-* ]]; then
  ACCELERATOR=v5litepod-${ACCELERATOR#v5e-}
fi
if [[ -z $RUNTIME ]]; then
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    v5litepod-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) die "no default runtime for --accelerator $ACCELERATOR; pass --runtime" ;;
  esac
fi

GFLAGS=()
[[ -n $ZONE ]] && GFLAGS+=("--zone=$ZONE")
[[ -n $PROJECT ]] && GFLAGS+=("--project=$PROJECT")

# Paths on the workers (`~` is expanded there, not here).
# shellcheck disable=SC2088
{
  R_TREE='~/sagan_jax'
  R_VENV='~/sagan_venv'
  R_LOG='~/sagan_jax.log'
  R_PID='~/sagan_jax.pid'
}
# Remote shell function: is process $1 running (and not a zombie)?
# shellcheck disable=SC2016  # expanded on the workers
ALIVE='alive() { kill -0 "$1" 2>/dev/null && ! grep -qs "^State:[[:space:]]*Z" "/proc/$1/status"; }'

ssh_workers() {  # ssh_workers WORKER SCRIPT
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GFLAGS[@]}" "--worker=$1" --command "$2"
}

qr_state() {
  gcloud compute tpus queued-resources describe "$NAME" "${GFLAGS[@]}" \
    --format='value(state.state)' 2>/dev/null || true
}

cmd_create() {
  local args=(gcloud compute tpus queued-resources create "$NAME" "${GFLAGS[@]}"
    "--node-id=$NAME" "--accelerator-type=$ACCELERATOR" "--runtime-version=$RUNTIME")
  ((SPOT)) && args+=(--spot)
  [[ -n $SERVICE_ACCOUNT ]] && args+=("--service-account=$SERVICE_ACCOUNT")
  args+=("${CREATE_ARGS[@]}")
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  if [[ $DRY_RUN != 1 && -n $(qr_state) ]]; then
    note "queued resource $NAME exists already (state $(qr_state)); not creating it again"
  else
    run "${args[@]}"
  fi
  comment "wait until the queued resource is ACTIVE, polling every 30 s:"
  if [[ $DRY_RUN == 1 ]]; then
    quote gcloud compute tpus queued-resources describe "$NAME" "${GFLAGS[@]}" \
      '--format=value(state.state)'
    return 0
  fi
  local state="" last="" start=$SECONDS
  while :; do
    state=$(qr_state)
    [[ $state != "$last" ]] && note "$(date +%H:%M:%S) $NAME: ${state:-unknown}"
    last=$state
    case $state in
      ACTIVE) break ;;
      FAILED | SUSPENDED | SUSPENDING)
        die "queued resource $NAME is $state; see \`gcloud compute tpus queued-resources describe $NAME\`, then \`$0 delete\` and create it again" ;;
    esac
    if ((WAIT_TIMEOUT > 0 && SECONDS - start > WAIT_TIMEOUT)); then
      die "still ${state:-unknown} after $WAIT_TIMEOUT s (the request stays queued; \`$0 delete\` cancels it)"
    fi
    sleep 30
  done
}

cmd_install() {
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  local fetch
  if [[ -n $REPO_URL ]]; then
    fetch="rm -rf $R_TREE && git clone --depth 1 --branch $(quote "$REF") $(quote "$REPO_URL") $R_TREE"
  else
    # This working tree: tracked files plus untracked ones git does not ignore.
    local tarball
    if [[ $DRY_RUN == 1 ]]; then
      tarball=/tmp/sagan_jax.tgz
      printf '%s\n' "$(quote git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard) | $(quote tar -C "$REPO_ROOT" --null -T - --ignore-failed-read -czf "$tarball")"
    else
      need git "git is needed to list the files of this tree (or use --repo URL)"
      tarball=$(mktemp "${TMPDIR:-/tmp}/sagan_jax.XXXXXX")
      # shellcheck disable=SC2064  # expand now: the path is fixed
      trap "rm -f '$tarball'" EXIT
      git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
        tar -C "$REPO_ROOT" --null -T - --ignore-failed-read -czf "$tarball"
      note "packed $(du -h "$tarball" | cut -f1) from $REPO_ROOT"
    fi
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:sagan_jax.tgz" "${GFLAGS[@]}" --worker=all
    fetch="rm -rf $R_TREE && mkdir -p $R_TREE && tar -xzf ~/sagan_jax.tgz -C $R_TREE"
  fi
  # The TPU images ship Python 3.10; JAX needs >= 3.11, so uv provides it.
  local script="set -e; $fetch"
  script+="; python3 -m pip install --user --quiet --upgrade uv"
  script+="; [ -x $R_VENV/bin/python ] || ~/.local/bin/uv venv --seed --python $(quote "$PYTHON_VERSION") $R_VENV"
  script+="; $R_VENV/bin/pip install --quiet -r $R_TREE/requirements.txt"
  script+="; $R_VENV/bin/pip install --quiet -U \"jax[tpu]\""
  script+="; echo \"\$(hostname): jax \$($R_VENV/bin/python -c \"import jax; print(jax.__version__)\") installed\""
  ssh_workers all "$script"
}

cmd_run() {
  [[ -n $WORKDIR ]] || die "run needs --workdir gs://BUCKET/PATH"
  if [[ $WORKDIR != gs://* ]]; then
    note "warning: --workdir $WORKDIR is not on gs://; every worker must see the same directory"
  fi
  [[ -n $TFDS_DIR ]] || note "warning: no --tfds-data-dir; the workers use TFDS's default (~/tensorflow_datasets)"
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  local exports="" kv
  [[ -n $TFDS_DIR ]] && exports+="export $(quote "TFDS_DATA_DIR=$TFDS_DIR"); "
  for kv in "${RUN_ENV[@]}"; do
    exports+="export $(quote "$kv"); "
  done
  local main
  main="$R_VENV/bin/python $(quote -m sagan_jax.main --config "$CONFIG" --workdir "$WORKDIR" "${EXTRA_ARGS[@]}")"
  local script="set -e; $ALIVE; cd $R_TREE"
  script+="; if [ -f $R_PID ] && alive \"\$(cat $R_PID)\"; then echo \"\$(hostname): already running (pid \$(cat $R_PID)); stop it first\" >&2; exit 1; fi"
  script+="; ${exports}setsid nohup $main >> $R_LOG 2>&1 < /dev/null & echo \$! > $R_PID"
  script+="; echo \"\$(hostname): started pid \$(cat $R_PID), log $R_LOG\""
  ssh_workers all "$script"
}

cmd_status() {
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  run gcloud compute tpus queued-resources describe "$NAME" "${GFLAGS[@]}" '--format=value(state.state)'
  if [[ $DRY_RUN != 1 && $(qr_state) != ACTIVE ]]; then
    return 0
  fi
  local script="$ALIVE; if [ -f $R_PID ] && alive \"\$(cat $R_PID)\"; then s=running; else s=stopped; fi"
  script+="; echo \"\$(hostname): \$s | \$(tail -n 1 $R_LOG 2>/dev/null)\""
  ssh_workers all "$script"
}

cmd_logs() {
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  local tail_args="-n $LINES"
  ((FOLLOW)) && tail_args+=" -F"
  ssh_workers "$WORKER" "tail $tail_args $R_LOG"
}

cmd_stop() {
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  local script="$ALIVE; p=\$(cat $R_PID 2>/dev/null || true)"
  script+="; if [ -n \"\$p\" ] && alive \"\$p\"; then kill -TERM \"\$p\"; i=0"
  script+="; while alive \"\$p\" && [ \$i -lt $GRACE ]; do sleep 1; i=\$((i+1)); done"
  script+="; if alive \"\$p\"; then echo \"\$(hostname): still running after $GRACE s; SIGKILL\" >&2; kill -KILL \"\$p\"; else echo \"\$(hostname): stopped\"; fi"
  script+="; else echo \"\$(hostname): not running\"; fi; rm -f $R_PID"
  ssh_workers all "$script"
}

cmd_delete() {
  need gcloud "Install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
  run gcloud compute tpus queued-resources delete "$NAME" "${GFLAGS[@]}" --force --quiet
}

case $COMMAND in
  create) cmd_create ;;
  install) cmd_install ;;
  run) cmd_run ;;
  launch)
    [[ -n $WORKDIR ]] || die "launch needs --workdir gs://BUCKET/PATH"
    cmd_create
    cmd_install
    cmd_run
    ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  *) die "unknown command '$COMMAND' (see --help)" ;;
esac
