#!/usr/bin/env bash
# Memory of a standing grid over many runs: one `--serve` sink and
# WORKERS `--serve` workers, RUNS runs of ORDERS generated orders submitted
# one after another; prints the resident memory (VmRSS) of the sink and of
# each worker after runs 1, 10, 50 and 100 (and the last), and the ratio of
# the last to the first. Flat memory: ratios near 1.
#
#   scripts/soak.sh [RUNS=100] [ORDERS=20000] [WORKERS=2]
#
# ORDERGRID_BIN: the binaries' folder (default: target/release, built first).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-100}
ORDERS=${2:-20000}
WORKERS=${3:-2}
BIN=${ORDERGRID_BIN:-target/release}
[[ -n ${ORDERGRID_BIN:-} ]] || cargo build --release --quiet
DIR=$(mktemp -d /tmp/ordergrid-soak.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
EP="ipc://$DIR"
"$BIN/ordergrid-sink" --serve --state "$DIR/state" --results "$EP/results" --acks "$EP/acks" \
    --control "$EP/control" >"$DIR/sink.out" 2>"$DIR/sink.log" &
SINK=$!
PIDS=()
for _ in $(seq "$WORKERS"); do
    "$BIN/ordergrid-worker" --serve --jobs "$EP/jobs" --results "$EP/results" \
        --control "$EP/control" 2>>"$DIR/workers.log" &
    PIDS+=("$!")
done

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A FIRST
printf '%6s %12s' run sink_kib
for i in "${!PIDS[@]}"; do printf ' %12s' "worker${i}_kib"; done
echo
show() {
    local n=$1
    printf '%6s %12s' "$n" "$(rss "$SINK")"
    for p in "${PIDS[@]}"; do printf ' %12s' "$(rss "$p")"; done
    echo
}
for n in $(seq "$RUNS"); do
    if ! "$BIN/ordergrid-ventilator" --generate "$ORDERS" --seed "$n" --jobs "$EP/jobs" \
        --acks "$EP/acks" --dead-letter "$DIR/dead.jsonl" >/dev/null 2>"$DIR/ventilator.log"; then
        echo "soak.sh: run $n failed:" >&2
        tail -5 "$DIR/ventilator.log" >&2
        exit 1
    fi
    if [[ $n -eq 1 ]]; then
        FIRST[sink]=$(rss "$SINK")
        for p in "${PIDS[@]}"; do FIRST[$p]=$(rss "$p"); done
    fi
    case $n in 1 | 10 | 50 | 100 | "$RUNS") show "$n" ;; esac
done
printf '%6s %12s' last/1 "$(awk -v a="$(rss "$SINK")" -v b="${FIRST[sink]}" 'BEGIN {printf "%.2f", a / b}')"
for p in "${PIDS[@]}"; do
    printf ' %12s' "$(awk -v a="$(rss "$p")" -v b="${FIRST[$p]}" 'BEGIN {printf "%.2f", a / b}')"
done
echo
