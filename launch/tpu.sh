#!/usr/bin/env bash
# Cloud TPU: create a TPU VM (or a queued resource), install jaxlm on every worker, run the same
# training command on all of them, stream process 0's log, delete. Needs the gcloud CLI.
#
#   launch/tpu.sh [options] COMMAND [-- TRAINER ARGUMENTS]
#
# Commands:
#   create    a TPU VM (--queued: a queued resource, waiting until it is ACTIVE)
#   install   copy this checkout (committed files: git archive HEAD) and --data to every worker,
#             pip install jax[tpu] and jaxlm there
#   run       start `python3 -m jaxlm.main TRAINER ARGUMENTS` on every worker, then stream the log
#   logs      stream the log of --worker (default 0; only process 0 writes metrics)
#   delete    delete the TPU VM (or the queued resource)
#   all       create, install, run; delete when the run ends, however it ends
#
# Options:
#   --name NAME        TPU name (default: jaxlm-$USER)
#   --zone ZONE        (default: $TPU_ZONE, else us-central2-b)
#   --type TYPE        accelerator type: v4-32, v5litepod-16, v5p-64, ... (default: v4-8)
#   --version VERSION  TPU software version (default: tpu-ubuntu2204-base)
#   --project PROJECT  (default: gcloud's configured project)
#   --queued           ask for capacity through a queued resource
#   --spot             spot (preemptible) capacity; jaxlm resumes from its checkpoints
#   --data DIR         a prepared dataset folder, copied to the same path under ~/jaxlm on every worker
#   --worker N         the worker `logs` streams (default 0)
#   --dry-run          print the commands instead of running them
#
# Example:
#   launch/tpu.sh --type v4-32 --data data/demo all -- --config configs/demo.yaml mesh=auto
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="jaxlm-${USER:-user}"
ZONE="${TPU_ZONE:-us-central2-b}"
TYPE="v4-8"
VERSION="tpu-ubuntu2204-base"
PROJECT=""
QUEUED=0
SPOT=0
DATA=""
WORKER=0
DRY_RUN=0
COMMAND=""
TRAIN_ARGS=()
# Paths on the workers, expanded by their shell.
# shellcheck disable=SC2088
LOG='~/jaxlm-run.log' PID='~/jaxlm-run.pid' STATUS='~/jaxlm-run.status'

usage() {
  sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "error: $*" >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --type) TYPE="${2:?--type needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --data) DATA="${2:?--data needs a value}"; shift 2 ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    create|install|run|logs|delete|all)
      [[ -z "$COMMAND" ]] || die "one command at a time (got $COMMAND and $1)"
      COMMAND="$1"; shift ;;
    *) die "unknown argument '$1' (see launch/tpu.sh --help)" ;;
  esac
done
[[ -n "$COMMAND" ]] || die "name a command: create, install, run, logs, delete or all (see --help)"
if [[ "$COMMAND" == run || "$COMMAND" == all ]] && [[ ${#TRAIN_ARGS[@]} -eq 0 ]]; then
  die "give the trainer's arguments after --, e.g. -- --config configs/demo.yaml"
fi
if [[ -n "$DATA" ]]; then
  [[ "$DATA" != /* && "$DATA" != *..* ]] || die "--data must be a path inside the checkout, like data/demo"
  [[ $DRY_RUN -eq 1 || -f "$REPO/$DATA/manifest.json" ]] || die "--data $DATA has no manifest.json (run data_prep first)"
fi

# Words as a shell reads them back: plain when safe, else in single quotes.
quote() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "${out[*]}"
}

# Runs a command, or prints it with --dry-run.
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

common=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || common+=(--project="$PROJECT")

tpu_ssh() {  # tpu_ssh WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$NAME" --worker="$1" "${common[@]}" --command="$2"
}

create() {
  local spot=()
  [[ $SPOT -eq 0 ]] || spot=(--spot)
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${common[@]}" \
      --accelerator-type="$TYPE" --runtime-version="$VERSION" "${spot[@]}"
    if [[ $DRY_RUN -eq 1 ]]; then
      echo "# then, every 60 s until it prints ACTIVE:"
      run gcloud compute tpus queued-resources describe "$NAME" "${common[@]}" --format='value(state.state)'
    else
      local state=""
      while [[ "$state" != ACTIVE ]]; do
        state="$(gcloud compute tpus queued-resources describe "$NAME" "${common[@]}" --format='value(state.state)')"
        case "$state" in
          FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
          ACTIVE) ;;
          *) echo "queued resource $NAME: $state; waiting" >&2; sleep 60 ;;
        esac
      done
    fi
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${common[@]}" \
      --accelerator-type="$TYPE" --version="$VERSION" "${spot[@]}"
  fi
}

install() {
  local tarball="/tmp/$NAME-jaxlm.tar.gz"
  run git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:jaxlm.tar.gz" --worker=all "${common[@]}"
  tpu_ssh all "mkdir -p ~/jaxlm && tar -xzf ~/jaxlm.tar.gz -C ~/jaxlm && python3 -m pip install -q -U 'jax[tpu]' -e ~/jaxlm"
  if [[ -n "$DATA" ]]; then
    tpu_ssh all "mkdir -p ~/jaxlm/$(dirname "$DATA")"
    run gcloud compute tpus tpu-vm scp --recurse "$REPO/$DATA" "$NAME:jaxlm/$(dirname "$DATA")/" --worker=all "${common[@]}"
  fi
}

start() {
  local job
  job="python3 -m jaxlm.main $(quote "${TRAIN_ARGS[@]}"); echo \$? > $STATUS"
  # Detached (setsid nohup): the run outlives this ssh session; its exit status lands in a file.
  tpu_ssh all "cd ~/jaxlm && rm -f $STATUS && setsid nohup bash -c ${job@Q} > $LOG 2>&1 < /dev/null & echo \$! > $PID"
}

logs() {  # follows the log until the run ends, then exits with the run's status
  tpu_ssh "$1" "tail -n +1 --pid=\$(cat $PID) -f $LOG; exit \$(cat $STATUS 2>/dev/null || echo 1)"
}

delete() {
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${common[@]}" --quiet
  fi
}

case "$COMMAND" in
  create) create ;;
  install) install ;;
  run) start; logs 0 ;;
  logs) logs "$WORKER" ;;
  delete) delete ;;
  all)
    create
    trap delete EXIT  # the TPU goes away whatever happens after it exists
    install
    start
    logs 0
    ;;
esac
