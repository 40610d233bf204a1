#!/usr/bin/env bash
# Submit a jaxlm run to SLURM on multi-GPU hosts (launch/slurm.sbatch does the work on the nodes).
#
#   launch/slurm.sh [options] -- --config configs/X.yaml [key.path=value ...]
#
# Options:
#   --nodes N            hosts (default 1)
#   --gpus-per-node G    GPUs per host, one process each (default 8)
#   --partition P        SLURM partition (default: the cluster's)
#   --account A          SLURM account (default: yours)
#   --time T             wall-clock limit (default 24:00:00)
#   --dry-run            print the sbatch command and what each task would run, submit nothing
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODES=1
GPUS=8
TIME="24:00:00"
EXTRA=()
DRY_RUN=0

die() {
  echo "error: $*" >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --partition) EXTRA+=(--partition="${2:?--partition needs a value}"); shift 2 ;;
    --account) EXTRA+=(--account="${2:?--account needs a value}"); shift 2 ;;
    --time) TIME="${2:?--time needs a value}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (see launch/slurm.sh --help)" ;;
  esac
done
[[ $# -gt 0 ]] || die "give the trainer's arguments after --, e.g. -- --config configs/demo.yaml"
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--nodes and --gpus-per-node must be positive integers"

# Words as a shell reads them back: plain when safe, else in single quotes.
quote() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "${out[*]}"
}

cmd=(sbatch --nodes="$NODES" --ntasks-per-node="$GPUS" --gpus-per-node="$GPUS" --time="$TIME"
     "${EXTRA[@]}" "$HERE/slurm.sbatch" "$@")
if [[ $DRY_RUN -eq 1 ]]; then
  quote "${cmd[@]}"
  echo "# each of the $((NODES * GPUS)) tasks then runs:"
  bash "$HERE/slurm.sbatch" --dry-run "$@" | sed 's/^/#   /'
  exit 0
fi
exec "${cmd[@]}"
