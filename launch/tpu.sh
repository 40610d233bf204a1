#!/usr/bin/env bash
# Cloud TPU: create a TPU VM (or a queued resource), install jaxlm on every worker, run the same
# training command on all of them, follow it through preemptions, and delete the TPU only when
# asked and only once the run has succeeded. Needs the gcloud CLI.
#
#   launch/tpu.sh [options] COMMAND [-- TRAINER ARGUMENTS]
#
# Commands:
#   create    a TPU VM (--queued: a queued resource, waiting until it is ACTIVE)
#   install   copy this checkout (committed files: git archive HEAD) and --data to every worker,
#             pip install jaxlm[tpu] there
#   run       start `python3 -m jaxlm.main TRAINER ARGUMENTS workdir=WORKDIR` on every worker (detached:
#             it outlives this ssh session) and follow it as `all` does
#   logs      stream the log of --worker (default 0; only process 0 writes metrics)
#   delete    delete the TPU VM (or the queued resource); refused until the run's success marker
#             exists on worker 0, unless --force
#   all       create, install, run; then follow the run until it succeeds: a dropped ssh session
#             re-attaches, a preempted slice is re-created and the run resumes from its checkpoints
#
# Options:
#   --name NAME         TPU name (default: jaxlm-$USER)
#   --zone ZONE         (default: $TPU_ZONE, else us-central2-b)
#   --type TYPE         accelerator type: v4-32, v5litepod-16, v5p-64, v6e-8, ... (default: v4-8)
#   --version VERSION   TPU software version (default: tpu-ubuntu2204-base)
#   --project PROJECT   (default: gcloud's configured project)
#   --queued            ask for capacity through a queued resource
#   --spot              spot (preemptible) capacity; jaxlm resumes from its checkpoints
#   --data DIR          a prepared dataset folder, copied to the same path under ~/jaxlm on every worker
#   --bucket BUCKET     a Cloud Storage bucket (default: $JAXLM_BUCKET): the workdir defaults to
#                       gs://BUCKET/runs/NAME
#   --workdir DIR       the run's workdir; on a multi-host slice it must be storage every host sees
#                       (gs://BUCKET/PATH, or a shared filesystem declared with --shared-fs). A gs://
#                       workdir's bucket is checked before anything is created
#   --shared-fs         --workdir is a filesystem mounted on every worker (e.g. Filestore)
#   --delete            all: delete the TPU once the run has succeeded (never before)
#   --force             delete: without the success marker
#   --max-restarts N    all/run: re-create a preempted slice at most N times (default 20)
#   --worker N          the worker `logs` streams (default 0)
#   --dry-run           print every command instead of running it
#
# Example:
#   launch/tpu.sh --type v4-32 --queued --spot --data data/demo --bucket my-bucket \
#     --delete all -- --config configs/demo.yaml mesh=auto        (workdir gs://my-bucket/runs/jaxlm-$USER)
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
BUCKET="${JAXLM_BUCKET:-}"
WORKDIR=""
SHARED_FS=0
DELETE=0
FORCE=0
MAX_RESTARTS=20
WORKER=0
DRY_RUN=0
COMMAND=""
TRAIN_ARGS=()
# Paths on the workers, expanded by their shell. SUCCESS is written only when the trainer exits 0
# (train.steps reached); nothing deletes the TPU before worker 0 has it.
# shellcheck disable=SC2088
LOG='~/jaxlm-run.log' PID='~/jaxlm-run.pid' STATUS='~/jaxlm-run.status' SUCCESS='~/jaxlm-run.succeeded'

usage() {
  sed -n '2,44p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "error: $*" >&2
  exit 2
}

say() {  # progress on stderr; with --dry-run, a comment between the commands
  if [[ $DRY_RUN -eq 1 ]]; then echo "# $*"; else echo "tpu.sh: $*" >&2; fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --type) TYPE="${2:?--type needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --data) DATA="${2:?--data needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --bucket) BUCKET="${2:?--bucket needs a value}"; shift 2 ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --max-restarts) MAX_RESTARTS="${2:?--max-restarts needs a value}"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --shared-fs) SHARED_FS=1; shift ;;
    --delete) DELETE=1; shift ;;
    --force) FORCE=1; shift ;;
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
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, got '$MAX_RESTARTS'"
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$WORKER'"

# Hosts in the slice: v4/v5p count TensorCores (2 per chip, 4 chips per host); v5e/v6e count chips
# (one host up to 8 chips, then 4 per host).
hosts_of() {
  local gen="${1%-*}" count="${1##*-}"
  [[ "$count" =~ ^[0-9]+$ ]] || { echo 0; return; }
  case "$gen" in
    v4|v5p) echo $(( count <= 8 ? 1 : count / 8 )) ;;
    v5litepod|v5e|v6e) echo $(( count <= 8 ? 1 : count / 4 )) ;;
    *) echo 0 ;;
  esac
}
HOSTS="$(hosts_of "$TYPE")"
[[ "$HOSTS" -gt 0 ]] || die "--type $TYPE is not an accelerator type like v4-32, v5p-64, v5litepod-16 or v6e-8"

if [[ "$COMMAND" == run || "$COMMAND" == all ]]; then
  [[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "give the trainer's arguments after --, e.g. -- --config configs/demo.yaml"
  for arg in "${TRAIN_ARGS[@]}"; do
    [[ "$arg" != workdir=* ]] || die "give the workdir as --workdir (the launcher checks it), not as $arg"
  done
  BUCKET="${BUCKET#gs://}"; BUCKET="${BUCKET%/}"
  [[ -z "$BUCKET" || "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] \
    || die "--bucket '$BUCKET' is not a bucket name (lowercase letters, digits, . _ -)"
  if [[ -z "$WORKDIR" && -n "$BUCKET" ]]; then
    WORKDIR="gs://$BUCKET/runs/$NAME"  # shared storage by default: every host sees it, and it outlives the TPU
  fi
  if [[ $HOSTS -gt 1 && "$WORKDIR" != gs://* && $SHARED_FS -eq 0 ]]; then
    die "$TYPE has $HOSTS hosts: its checkpoints must be written where every host sees them, or a resumed" \
        "run starts over. Give --bucket BUCKET (the workdir is then gs://BUCKET/runs/$NAME) or --workdir" \
        "gs://BUCKET/PATH (or --workdir on a filesystem mounted on every worker, with --shared-fs)"
  fi
  [[ -z "$WORKDIR" ]] || TRAIN_ARGS+=("workdir=$WORKDIR")
fi
if [[ -n "$DATA" ]]; then
  [[ "$DATA" != /* && "$DATA" != *..* ]] || die "--data must be a path inside the checkout, like data/demo"
  [[ "$DATA" =~ ^[A-Za-z0-9_./-]+$ ]] || die "--data '$DATA': use a path of letters, digits and . _ - / only"
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

check_bucket() {  # a gs:// workdir's bucket exists and these credentials see it, before any TPU is made
  [[ "$WORKDIR" == gs://* ]] || return 0
  local bucket="${WORKDIR#gs://}"
  bucket="${bucket%%/*}"
  local describe=(gcloud storage buckets describe "gs://$bucket" --format='value(name)')
  if [[ $DRY_RUN -eq 1 ]]; then
    say "first, the workdir's bucket must exist (else: stop, before any TPU is created):"
    run "${describe[@]}"
    return 0
  fi
  "${describe[@]}" >/dev/null \
    || die "bucket gs://$bucket (of the workdir $WORKDIR) does not exist or these credentials cannot read it;" \
           "create it (gcloud storage buckets create gs://$bucket --location=REGION, the TPU's region) or name another"
}

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
      say "then, every 60 s until it prints ACTIVE:"
      run gcloud compute tpus queued-resources describe "$NAME" "${common[@]}" --format='value(state.state)'
    else
      local state=""
      while [[ "$state" != ACTIVE ]]; do
        state="$(tpu_state)"
        case "$state" in
          FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
          ACTIVE) ;;
          *) say "queued resource $NAME: $state; waiting"; sleep 60 ;;
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
  tpu_ssh all "mkdir -p ~/jaxlm && tar -xzf ~/jaxlm.tar.gz -C ~/jaxlm && python3 -m pip install -q -U -e ~/jaxlm'[tpu]'"
  if [[ -n "$DATA" ]]; then
    local parent
    parent="$(dirname "$DATA")"
    tpu_ssh all "mkdir -p ~/jaxlm/$(quote "$parent")"
    run gcloud compute tpus tpu-vm scp --recurse "$REPO/$DATA" "$NAME:jaxlm/$parent/" --worker=all "${common[@]}"
  fi
}

start() {
  local job
  job="python3 -m jaxlm.main $(quote "${TRAIN_ARGS[@]}"); s=\$?; echo \$s > $STATUS; [ \$s -ne 0 ] || touch $SUCCESS"
  # Detached (setsid nohup): the run outlives this ssh session; its exit status lands in a file.
  tpu_ssh all "cd ~/jaxlm && rm -f $STATUS $SUCCESS && setsid nohup bash -c ${job@Q} > $LOG 2>&1 < /dev/null & echo \$! > $PID"
}

logs() {  # follows the log until the run ends, then exits with the run's status
  tpu_ssh "$1" "tail -n +1 --pid=\$(cat $PID) -f $LOG; exit \$(cat $STATUS 2>/dev/null || echo 1)"
}

succeeded() {  # the run's success marker is on worker 0
  tpu_ssh 0 "test -f $SUCCESS"
}

still_running() {
  tpu_ssh 0 "kill -0 \$(cat $PID)"
}

tpu_state() {  # ACTIVE/READY while usable; SUSPENDED, FAILED, PREEMPTED, ... when capacity was taken
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources describe "$NAME" "${common[@]}" --format='value(state.state)'
  else
    run gcloud compute tpus tpu-vm describe "$NAME" "${common[@]}" --format='value(state)'
  fi
}

remove() {
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${common[@]}" --quiet
  fi
}

delete() {  # only when asked, and only after the run succeeded (or with --force)
  if [[ $FORCE -eq 0 ]]; then
    say "deleting only if the run's success marker is on worker 0:"
    succeeded || die "no success marker ($SUCCESS on worker 0): the run has not finished, so $NAME is kept." \
                     "Look with: launch/tpu.sh --name $NAME logs; delete anyway with: launch/tpu.sh --name $NAME --force delete"
  fi
  remove
}

# Follows the run until its success marker exists. A dropped ssh session re-attaches; a slice whose
# capacity was taken (spot/queued preemption) is deleted, created again, and the run started again:
# it resumes from the checkpoints in its workdir. A run that failed on a healthy slice stops here,
# the TPU kept for inspection.
follow() {
  local restarts=0 state
  if [[ $DRY_RUN -eq 1 ]]; then
    logs 0
    say "then: finished when the success marker is on worker 0:"
    succeeded
    say "if not, and the run is still going (the ssh session dropped), follow it again:"
    still_running
    say "if not, and the slice was preempted (this prints SUSPENDED, FAILED, PREEMPTED or TERMINATED):"
    tpu_state
    say "re-create it and resume the run from its checkpoints (at most $MAX_RESTARTS times):"
    remove; create; install; start
    return 0
  fi
  while true; do
    logs 0 || true
    if succeeded; then
      say "the run succeeded (success marker on worker 0)"
      return 0
    fi
    state="$(tpu_state 2>/dev/null || echo UNKNOWN)"
    case "$state" in
      ACTIVE|READY)
        if still_running; then
          say "the log stream ended but the run goes on; following it again"
          continue
        fi
        die "the run on $NAME ended without success (see launch/tpu.sh --name $NAME logs); the TPU is kept" ;;
      SUSPENDED|SUSPENDING|FAILED|PREEMPTED|TERMINATED)
        restarts=$((restarts + 1))
        [[ $restarts -le $MAX_RESTARTS ]] || die "$NAME was preempted $MAX_RESTARTS times; giving up (the TPU is not deleted)"
        say "$NAME is $state: re-creating it ($restarts of at most $MAX_RESTARTS), the run resumes from its checkpoints"
        remove; create; install; start ;;
      *)  # CREATING, REPAIRING, or no answer: never delete on a guess; look again in a minute
        say "$NAME is ${state:-not answering}; looking again in 60 s"
        sleep 60 ;;
    esac
  done
}

case "$COMMAND" in
  create) create ;;
  install) install ;;
  run) check_bucket; start; follow ;;
  logs) logs "$WORKER" ;;
  delete) delete ;;
  all)
    check_bucket
    create
    install
    start
    follow
    if [[ $DELETE -eq 1 ]]; then
      delete
    else
      say "$NAME is kept (pass --delete to delete it once a run succeeds; or: launch/tpu.sh --name $NAME delete)"
    fi
    ;;
esac
