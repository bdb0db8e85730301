# shellcheck shell=bash
# Helpers shared by launch/tpu.sh and launch/gpu.sh. Sourced, not run.
#
# With DRY_RUN=1, `run` prints each command as one copy-pasteable shell line
# on stdout instead of running it; progress notes go to stderr.

DRY_RUN=${DRY_RUN:-0}

die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

note() {
  printf '%s\n' "$*" >&2
}

# quote ARG...: print the arguments as one line that a shell reads back as
# exactly these arguments (plain words stay plain, others get single quotes).
quote() {
  local out=() a
  for a in "$@"; do
    if [[ -n $a && $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# run CMD ARG...: run a command, or print it under --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote "$@"
  else
    note "+ $(quote "$@")"
    "$@"
  fi
}

# comment TEXT: a '# TEXT' line in the dry-run listing, a note otherwise.
comment() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '# %s\n' "$*"
  else
    note "$*"
  fi
}

# need CMD: fail early, with a hint, if CMD is missing (not under --dry-run).
need() {
  [[ $DRY_RUN == 1 ]] && return 0
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH. $2"
}

# Option parsing shared by the scripts' `while (($#))` loops. The variables it
# sets (arg, value, has_value, shift_by) are read by the sourcing script.
# shellcheck disable=SC2034
# next_opt WORD: split WORD into $arg and, for --opt=value, $value (has_value=1);
# the loop then shifts by $shift_by.
next_opt() {
  arg=$1
  value=""
  has_value=0
  shift_by=1
  if [[ $arg == --*=* ]]; then
    value=${arg#*=}
    arg=${arg%%=*}
    has_value=1
  fi
}

# take "$@": the current option's value into $value (consuming one more word
# unless it came as --opt=value).
# shellcheck disable=SC2034
take() {
  ((has_value)) && return 0
  (($# >= 2)) || die "$arg needs a value"
  value=$2
  shift_by=2
}
