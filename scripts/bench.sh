#!/usr/bin/env bash
# The throughput benchmark of issue 4: the grid side by side with the naive
# ZeroMQ Guide pipeline (examples/naive_pipeline.rs) and a RabbitMQ work queue.
#
#   scripts/bench.sh [--quick] [--runs R] [--no-rabbitmq] [--only-http] [--only-latency]
#                    [--only-throughput]
#
# Builds in release, runs every scenario R times (default 3; --quick: fewer
# orders and 1 run), prints the table (median orders/s with min and max, the
# ratio to the naive pipeline, peak RSS of each role) and writes
# docs/bench/results.md and docs/bench/throughput.svg (BENCH_DOCS overrides
# the folder). Raw data, logs and the state folders go to bench-out/ (ignored
# by git; BENCH_OUT overrides it),
# which is on the same disk as the repo, so the sink's journal fsyncs for real.
#
# orders/s = orders / wall-clock seconds, from the start of the ventilator to
# the end of the run: for the grid, the ventilator's exit, which comes once
# the sink has tallied every order, synced its journal and written the report
# (the sink exits once its workers said goodbye; that exit is recorded too,
# as "to sink exit", and the whole run, first process started to last
# exited). For the naive pipeline and the broker, whose ventilator/publisher
# first builds its orders in memory (not timed), from its start signal to
# the last result tallied.
#
# The machine may be shared: before each run the script waits (up to
# BENCH_QUIET_WAIT seconds, default 120) for the other processes to use less
# than a quarter of the CPU, and it records the CPU others used during the run.
# BENCH_NICE=-10 (as root) runs every benchmarked process, the broker too, at
# that niceness so that other work on a shared machine disturbs it less.
#
# The HTTP gateway (issue 13): workers pay through ordergrid-paysim (a fresh
# one per run, on a free loopback port): 1 worker x 64 in flight at 0 ms
# (payments/s), 2 workers x 64 at 5 ms (vs the 2 x 64 / 5 ms = 25,600/s
# bound), and the peer, a Python asyncio + aiohttp client with the same
# concurrency against the same kind of paysim (aiohttp installed with pip
# into bench-out/venv if missing). Workers retry with --gateway-backoff-ms 5,
# the simulated gateway's back-off, so the flaky tokens' scripted 503s cost
# what they cost there. --only-http runs only these rows.
#
# Latency under a steady stream (issue 11): scripts/bench/stream_feeder.py
# feeds `--input -` at 10,000 and 100,000 lines/s (2 workers, no gateway
# latency) and reads the ventilator's histogram of the time from a line read
# to its order acknowledged (durable at the sink): p50 and p99, interpolated
# within the histogram's buckets (1, 2, 4 … ms) as Prometheus'
# histogram_quantile does. --only-latency runs only these rows.
#
# --only-throughput runs the naive pipeline, the grid with --generate and
# the grid from the 2M-line file, run by run in turn (so the three see the
# same machine): the rows the throughput goals are measured on.
#
# Needs: cargo, python3 (with venv), GNU time (installed with apt-get if
# missing), rabbitmq-server (installed with apt-get if missing; --no-rabbitmq
# skips the broker).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
RUNS=""
RABBIT=1
ONLY_HTTP=0
ONLY_LATENCY=0
ONLY_THROUGHPUT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=$2; shift ;;
        --no-rabbitmq) RABBIT=0 ;;
        --only-http) ONLY_HTTP=1; RABBIT=0 ;;
        --only-latency) ONLY_LATENCY=1; RABBIT=0 ;;
        --only-throughput) ONLY_THROUGHPUT=1; RABBIT=0 ;;
        -h|--help) sed -n '2,49p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    N=200000; N_RSS=1000000; N_GATEWAY=20000; N_RABBIT=20000; N_HTTP=30000; RUNS=${RUNS:-1}
    N_SLOW=4000; N_MANY=30000; STREAM_SECONDS=2; N_CUT=30000; CUT="1 3"
else
    N=2000000; N_RSS=10000000; N_GATEWAY=100000; N_RABBIT=200000; N_HTTP=200000; RUNS=${RUNS:-3}
    N_SLOW=20000; N_MANY=100000; STREAM_SECONDS=6; N_CUT=200000; CUT="2 15"
fi
SCALING="1 2 4"
QUIET_WAIT=${BENCH_QUIET_WAIT:-120}
NICE=${BENCH_NICE:-0}

OUT=${BENCH_OUT:-$ROOT/bench-out}
DOCS=${BENCH_DOCS:-$ROOT/docs/bench}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
NAIVE=$BIN/examples/naive_pipeline
RESULTS=$OUT/results.jsonl
SOCK=$(mktemp -d /tmp/ordergrid-bench.XXXXXX) # ipc paths must be short
mkdir -p "$OUT" "$DOCS"
: > "$RESULTS"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- leave nothing behind -----------------------------------------------------
PIDS=()          # the /usr/bin/time wrappers of every role started
RABBIT_STARTED=0
EPMD_BEFORE=$(pgrep -x epmd || true)

kill_tree() { # pid...: TERM each process and its descendants, then KILL
    local p
    for p in "$@"; do
        kill -0 "$p" 2>/dev/null || continue
        # shellcheck disable=SC2046
        kill_tree $(pgrep -P "$p" || true)
        kill -TERM "$p" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then
        kill_tree "${PIDS[@]}"
        sleep 0.5
        for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    fi
    if [ "$RABBIT_STARTED" = 1 ]; then
        log "stopping RabbitMQ"
        rabbitmqctl stop >/dev/null 2>&1 || true
        if [ -z "$EPMD_BEFORE" ]; then epmd -kill >/dev/null 2>&1 || true; fi
    fi
    rm -rf "$SOCK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools --------------------------------------------------------------------
if [ ! -x /usr/bin/time ]; then
    log "installing GNU time"
    apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi

# What is measured: the tree as built now (others may commit during the run).
{
    echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src bin Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
    echo "started=$(date -u '+%Y-%m-%d %H:%M UTC')"
} >"$OUT/build.txt"
log "building (release) into $TARGET"
(cd "$ROOT" && cargo build --release --bins --example naive_pipeline)

# --- measuring ----------------------------------------------------------------
cpu_busy() { # busy and total jiffies of the whole machine
    awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
}

wait_quiet() { # wait until others use < 25% of the CPU (1 s samples)
    local waited=0 a b
    while :; do
        read -r a at < <(cpu_busy); sleep 1; read -r b bt < <(cpu_busy)
        BUSY_BEFORE=$(( 100 * (b - a) / (bt - at > 0 ? bt - at : 1) ))
        [ "$BUSY_BEFORE" -lt 25 ] && return
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            log "the machine is still ${BUSY_BEFORE}% busy after ${waited}s: measuring anyway"
            return
        fi
        [ "$waited" = 0 ] && log "the machine is ${BUSY_BEFORE}% busy with other work: waiting"
        waited=$((waited + 1))
    done
}

now_ns() { date +%s%N; }

start_role() { # name dir cmd...: start in the background under GNU time; sets STARTED
    local name=$1 dir=$2; shift 2
    nice -n "$NICE" /usr/bin/time -f '%M %e %U %S' -o "$dir/$name.time" \
        timeout -k 5 "$TMO" "$@" <"${ROLE_STDIN:-/dev/null}" >"$dir/$name.out" 2>"$dir/$name.err" &
    STARTED=$!
    PIDS+=("$STARTED")
}

wait_rc() { # pid: sets RC to its exit code (no subshell: wait needs this shell)
    RC=0
    wait "$1" || RC=$?
}

snap() { # machine busy jiffies, broker jiffies, now: for the CPU others used
    local broker=0
    if [ -n "${BROKER_PID:-}" ] && [ -r "/proc/$BROKER_PID/stat" ]; then
        broker=$(awk '{print $14+$15}' "/proc/$BROKER_PID/stat")
    fi
    echo "$(cpu_busy | cut -d' ' -f1),$broker,$(now_ns)"
}

record() { # name workers run dir start_ns end_ns end2_ns ok note extra-json
    python3 "$ROOT/scripts/bench/collect.py" "$@" >>"$RESULTS"
}

# One run of the grid. mode: generate|file; input: N or the file.
grid_run() { # scenario orders workers run input-args... -- worker-args...
    local scenario=$1 orders=$2 workers=$3 run=$4; shift 4
    local vent_args=() worker_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vent_args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    worker_args=("$@")
    local dir=$OUT/runs/$scenario/w$workers-r$run
    rm -rf "$dir"; mkdir -p "$dir"
    local ep=ipc://$SOCK/$scenario-$workers-$run
    export RUST_LOG=${RUST_LOG:-info}
    wait_quiet
    local snap0; snap0=$(snap)
    # Whole-run wall time: the first process started to the last one exited.
    local wall0; wall0=$(now_ns)
    start_role sink "$dir" "$BIN/ordergrid-sink" --results "$ep-res" --acks "$ep-acks" \
        --control "$ep-ctl" --state "$dir/state" --progress-ms 1000
    local sink=$STARTED ws=() i
    for i in $(seq "$workers"); do
        start_role "worker$i" "$dir" "$BIN/ordergrid-worker" --jobs "$ep-jobs" \
            --results "$ep-res" --control "$ep-ctl" "${worker_args[@]}"
        ws+=("$STARTED")
    done
    sleep 0.3
    local t0 t1 t2 vrc src wrc=0
    t0=$(now_ns)
    start_role vent "$dir" "$BIN/ordergrid-ventilator" "${vent_args[@]}" --jobs "$ep-jobs" \
        --acks "$ep-acks" --dead-letter "$dir/dead-letter.jsonl"
    local vent=$STARTED freezer=""
    if [ -n "${FREEZE_SINK:-}" ]; then
        freeze_sink "$dir" "$ep" $FREEZE_SINK &
        freezer=$!
    fi
    wait_rc "$vent"; vrc=$RC; t1=$(now_ns)
    [ -z "$freezer" ] || wait "$freezer" || true
    wait_rc "$sink"; src=$RC; t2=$(now_ns)
    for i in "${ws[@]}"; do wait_rc "$i"; [ "$RC" = 0 ] || wrc=$RC; done
    local wall1; wall1=$(now_ns)
    local snap1; snap1=$(snap)
    local ok=1 note=""
    [ "$vrc" = 0 ] || { ok=0; note+="ventilator exit $vrc; "; }
    [ "$src" = 0 ] || { ok=0; note+="sink exit $src; "; }
    [ "$wrc" = 0 ] || { ok=0; note+="a worker exited $wrc; "; }
    record --scenario "$scenario" --system grid --orders "$orders" --workers "$workers" \
        --run "$run" --dir "$dir" --start-ns "$t0" --end-ns "$t1" --end2-ns "$t2" \
        --wall-start-ns "$wall0" --wall-end-ns "$wall1" \
        --ok "$ok" --note "$note" --busy-before "$BUSY_BEFORE" --snap0 "$snap0" --snap1 "$snap1" \
        --report "$dir/state/report.json" --freeze "$dir/freeze.json"
    [ "$ok" = 1 ] || log "FAILED: $scenario w=$workers run $run: $note(logs in $dir)"
}

# The sink cut off mid-run (FREEZE_SINK="AT FOR" in grid_run): AT seconds
# after the ventilator's start, SIGSTOP for FOR seconds, then SIGCONT. Writes
# the ventilator's orders in flight at that moment (its --metrics) to
# $dir/freeze.json.
freeze_sink() { # dir endpoint at for
    local dir=$1 ep=$2 at=$3 for=$4 pid
    sleep "$at"
    pid=$(pgrep -f "^$BIN/ordergrid-sink --results $ep-res" | head -n 1)
    [ -n "$pid" ] || { log "freeze: no sink for $ep"; return 0; }
    local in_flight
    in_flight=$(python3 "$ROOT/scripts/bench/vent_metrics.py" "$dir/vent.err" ordergrid_orders_in_flight || true)
    echo "{\"in_flight\": ${in_flight:-null}, \"frozen_seconds\": $for}" >"$dir/freeze.json"
    kill -STOP "$pid"
    sleep "$for"
    kill -CONT "$pid"
}

naive_run() { # scenario orders workers run
    local scenario=$1 orders=$2 workers=$3 run=$4
    local dir=$OUT/runs/$scenario/w$workers-r$run
    rm -rf "$dir"; mkdir -p "$dir"
    local ep=ipc://$SOCK/$scenario-$workers-$run
    wait_quiet
    local snap0; snap0=$(snap)
    start_role sink "$dir" "$NAIVE" sink --results "$ep-res" --control "$ep-ctl" --count "$orders"
    local sink=$STARTED ws=() i
    for i in $(seq "$workers"); do
        start_role "worker$i" "$dir" "$NAIVE" worker --jobs "$ep-jobs" --results "$ep-res" --control "$ep-ctl"
        ws+=("$STARTED")
    done
    start_role vent "$dir" "$NAIVE" vent --count "$orders" --workers "$workers" \
        --jobs "$ep-jobs" --sink "$ep-res" --control "$ep-ctl"
    local vent=$STARTED
    # The timed part starts at the start signal, once the orders are built.
    local vrc src wrc=0 t0 t2
    wait_rc "$sink"; src=$RC; t2=$(now_ns)
    wait_rc "$vent"; vrc=$RC
    for i in "${ws[@]}"; do wait_rc "$i"; [ "$RC" = 0 ] || wrc=$RC; done
    local snap1; snap1=$(snap)
    t0=$(sed -n 's/^vent: start_unix_ns=//p' "$dir/vent.out")
    local t1; t1=$(sed -n 's/^sink: done_unix_ns=\([0-9]*\).*/\1/p' "$dir/sink.out")
    local ok=1 note=""
    [ "$vrc" = 0 ] || { ok=0; note+="vent exit $vrc; "; }
    [ "$src" = 0 ] || { ok=0; note+="sink exit $src; "; }
    [ "$wrc" = 0 ] || { ok=0; note+="a worker exited $wrc; "; }
    if [ -z "$t0" ] || [ -z "$t1" ]; then ok=0; note+="no timestamps; "; t0=${t0:-0}; t1=${t1:-0}; fi
    record --scenario "$scenario" --system naive --orders "$orders" --workers "$workers" \
        --run "$run" --dir "$dir" --start-ns "$t0" --end-ns "$t1" --end2-ns "$t2" \
        --ok "$ok" --note "$note" --busy-before "$BUSY_BEFORE" --snap0 "$snap0" --snap1 "$snap1"
    [ "$ok" = 1 ] || log "FAILED: $scenario run $run: $note(logs in $dir)"
}

rabbit_run() { # scenario orders workers run input
    local scenario=$1 orders=$2 workers=$3 run=$4 input=$5
    local dir=$OUT/runs/$scenario/w$workers-r$run
    rm -rf "$dir"; mkdir -p "$dir"
    local py=(env PYTHONUNBUFFERED=1 "$OUT/venv/bin/python" "$ROOT/scripts/bench/rabbitmq_peer.py")
    "${py[@]}" setup
    wait_quiet
    local snap0; snap0=$(snap)
    start_role sink "$dir" "${py[@]}" tally --count "$orders"
    local sink=$STARTED ws=() i
    for i in $(seq "$workers"); do
        start_role "worker$i" "$dir" "${py[@]}" work
        ws+=("$STARTED")
    done
    sleep 1
    start_role vent "$dir" "${py[@]}" publish --input "$input" --count "$orders"
    local vent=$STARTED vrc src wrc=0 t0 t2
    wait_rc "$sink"; src=$RC; t2=$(now_ns)
    wait_rc "$vent"; vrc=$RC
    # The consumers serve until told to stop.
    for i in "${ws[@]}"; do pkill -TERM -P "$i" || true; done # timeout passes it on
    for i in "${ws[@]}"; do wait_rc "$i"; [ "$RC" = 0 ] || [ "$RC" = 143 ] || wrc=$RC; done
    local snap1; snap1=$(snap)
    t0=$(sed -n 's/^publish: start_unix_ns=//p' "$dir/vent.out")
    local t1; t1=$(sed -n 's/^tally: done_unix_ns=\([0-9]*\).*/\1/p' "$dir/sink.out")
    local ok=1 note=""
    [ "$vrc" = 0 ] || { ok=0; note+="publisher exit $vrc; "; }
    [ "$src" = 0 ] || { ok=0; note+="tally exit $src; "; }
    [ "$wrc" = 0 ] || { ok=0; note+="a consumer exited $wrc; "; }
    if [ -z "$t0" ] || [ -z "$t1" ]; then ok=0; note+="no timestamps; "; t0=${t0:-0}; t1=${t1:-0}; fi
    record --scenario "$scenario" --system rabbitmq --orders "$orders" --workers "$workers" \
        --run "$run" --dir "$dir" --start-ns "$t0" --end-ns "$t1" --end2-ns "$t2" \
        --ok "$ok" --note "$note" --busy-before "$BUSY_BEFORE" --snap0 "$snap0" --snap1 "$snap1" \
        --broker-pid "$BROKER_PID"
    [ "$ok" = 1 ] || log "FAILED: $scenario run $run: $note(logs in $dir)"
}

# A fresh paysim (a run's order ids must not be replays of the last run's):
# sets PAYSIM (pid) and PAYSIM_ADDR.
start_paysim() { # dir latency_ms
    local dir=$1 latency=$2
    : >"$dir/paysim.out"
    nice -n "$NICE" "$BIN/ordergrid-paysim" --listen 127.0.0.1:0 --latency-ms "$latency" \
        >"$dir/paysim.out" 2>"$dir/paysim.err" &
    PAYSIM=$!
    PIDS+=("$PAYSIM")
    PAYSIM_ADDR=
    for _ in $(seq 100); do
        PAYSIM_ADDR=$(sed -n 's/^listening on //p' "$dir/paysim.out")
        [ -n "$PAYSIM_ADDR" ] && return
        sleep 0.05
    done
    log "paysim did not start (see $dir/paysim.err)"
    return 1
}

stop_paysim() {
    kill -TERM "$PAYSIM" 2>/dev/null || true
    wait "$PAYSIM" 2>/dev/null || true
}

# The grid paying through a fresh paysim at latency_ms.
http_run() { # scenario orders workers run latency_ms
    local scenario=$1 orders=$2 workers=$3 run=$4 latency=$5
    local pdir=$OUT/runs/$scenario/paysim-w$workers-r$run
    rm -rf "$pdir"; mkdir -p "$pdir"
    start_paysim "$pdir" "$latency"
    grid_run "$scenario" "$orders" "$workers" "$run" --generate "$orders" -- \
        --gateway "http://$PAYSIM_ADDR" --concurrency 64 --gateway-backoff-ms 5
    stop_paysim
}

# The peer: a Python asyncio + aiohttp client paying the same orders.
aiohttp_run() { # scenario orders concurrency run latency_ms input
    local scenario=$1 orders=$2 conc=$3 run=$4 latency=$5 input=$6
    local dir=$OUT/runs/$scenario/c$conc-r$run
    rm -rf "$dir"; mkdir -p "$dir"
    start_paysim "$dir" "$latency"
    wait_quiet
    local snap0; snap0=$(snap)
    local rc=0
    nice -n "$NICE" /usr/bin/time -f '%M %e %U %S' -o "$dir/peer.time" \
        timeout -k 5 "$TMO" "$OUT/venv/bin/python" "$ROOT/scripts/bench/aiohttp_peer.py" \
        --url "http://$PAYSIM_ADDR" --input "$input" --count "$orders" --concurrency "$conc" \
        >"$dir/peer.out" 2>"$dir/peer.err" || rc=$?
    local snap1; snap1=$(snap)
    stop_paysim
    local payments secs ok=1 note=""
    payments=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["payments"])' "$dir/peer.out" 2>/dev/null || echo 0)
    secs=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["seconds"] * 1e9))' "$dir/peer.out" 2>/dev/null || echo 0)
    [ "$rc" = 0 ] || { ok=0; note+="peer exit $rc; "; }
    # orders/s here is payments/s: the peer times its payments only.
    record --scenario "$scenario" --system aiohttp --orders "$payments" --workers "$((conc / 64))" \
        --run "$run" --dir "$dir" --start-ns 0 --end-ns "$secs" --end2-ns "$secs" \
        --ok "$ok" --note "$note" --busy-before "$BUSY_BEFORE" --snap0 "$snap0" --snap1 "$snap1"
    [ "$ok" = 1 ] || log "FAILED: $scenario run $run: $note(logs in $dir)"
}

http_scenarios() {
    log "grid over HTTP: 1 worker x 64 in flight, paysim 0 ms, $N_HTTP orders, $RUNS run(s)"
    for r in $(seq "$RUNS"); do http_run grid-http-0ms "$N_HTTP" 1 "$r" 0; done
    log "grid over HTTP: 2 workers x 64 in flight, paysim 5 ms, $N_GATEWAY orders, $RUNS run(s)"
    for r in $(seq "$RUNS"); do http_run grid-http-5ms "$N_GATEWAY" 2 "$r" 5; done
    if [ ! -x "$OUT/venv/bin/python" ] || ! "$OUT/venv/bin/python" -c 'import aiohttp' 2>/dev/null; then
        log "installing aiohttp into $OUT/venv"
        [ -x "$OUT/venv/bin/python" ] || python3 -m venv "$OUT/venv"
        "$OUT/venv/bin/pip" install -q aiohttp
    fi
    local hfile=$OUT/orders-http-$N_HTTP.jsonl
    [ -s "$hfile" ] || "$BIN/ordergrid-gen" --count "$N_HTTP" >"$hfile"
    log "Python asyncio + aiohttp peer: 64 in flight at 0 ms, 128 at 5 ms, $RUNS run(s)"
    for r in $(seq "$RUNS"); do aiohttp_run aiohttp-0ms "$N_HTTP" 64 "$r" 0 "$hfile"; done
    for r in $(seq "$RUNS"); do aiohttp_run aiohttp-5ms "$N_GATEWAY" 128 "$r" 5 "$hfile"; done
}

# Latency under a steady stream: sink, 2 workers, a ventilator reading
# `--input -` from a fifo that stream_feeder.py feeds at `rate` lines/s.
stream_run() { # scenario rate run
    local scenario=$1 rate=$2 run=$3
    local lines=$((rate * STREAM_SECONDS))
    local dir=$OUT/runs/$scenario/r$run
    rm -rf "$dir"; mkdir -p "$dir"
    local ep=ipc://$SOCK/$scenario-$run
    wait_quiet
    local snap0; snap0=$(snap)
    local wall0; wall0=$(now_ns)
    start_role sink "$dir" "$BIN/ordergrid-sink" --results "$ep-res" --acks "$ep-acks" \
        --control "$ep-ctl" --state "$dir/state" --progress-ms 1000
    local sink=$STARTED ws=() i
    for i in 1 2; do
        start_role "worker$i" "$dir" "$BIN/ordergrid-worker" --jobs "$ep-jobs" \
            --results "$ep-res" --control "$ep-ctl"
        ws+=("$STARTED")
    done
    mkfifo "$dir/stdin"
    python3 "$ROOT/scripts/bench/stream_feeder.py" --input "$STREAM_FILE" --fifo "$dir/stdin" \
        --rate "$rate" --count "$lines" --vent-log "$dir/vent.err" --out "$dir/latency.json" \
        2>"$dir/feeder.err" &
    local feeder=$!
    local t0 t1 t2 vrc src wrc=0 frc
    t0=$(now_ns)
    ROLE_STDIN=$dir/stdin start_role vent "$dir" "$BIN/ordergrid-ventilator" --input - \
        --run-id "$scenario-$run-$(date +%s%N)" --metrics 127.0.0.1:0 \
        --jobs "$ep-jobs" --acks "$ep-acks" --dead-letter "$dir/dead-letter.jsonl"
    wait_rc "$feeder"; frc=$RC
    wait_rc "$STARTED"; vrc=$RC; t1=$(now_ns)
    wait_rc "$sink"; src=$RC; t2=$(now_ns)
    for i in "${ws[@]}"; do wait_rc "$i"; [ "$RC" = 0 ] || wrc=$RC; done
    local wall1; wall1=$(now_ns)
    local snap1; snap1=$(snap)
    local ok=1 note=""
    [ "$frc" = 0 ] || { ok=0; note+="feeder exit $frc; "; }
    [ "$vrc" = 0 ] || { ok=0; note+="ventilator exit $vrc; "; }
    [ "$src" = 0 ] || { ok=0; note+="sink exit $src; "; }
    [ "$wrc" = 0 ] || { ok=0; note+="a worker exited $wrc; "; }
    record --scenario "$scenario" --system grid --orders "$lines" --workers 2 \
        --run "$run" --dir "$dir" --start-ns "$t0" --end-ns "$t1" --end2-ns "$t2" \
        --wall-start-ns "$wall0" --wall-end-ns "$wall1" \
        --ok "$ok" --note "$note" --busy-before "$BUSY_BEFORE" --snap0 "$snap0" --snap1 "$snap1" \
        --report "$dir/state/report.json" --latency "$dir/latency.json"
    [ "$ok" = 1 ] || log "FAILED: $scenario run $run: $note(logs in $dir)"
}

latency_scenarios() {
    STREAM_FILE=$OUT/orders-stream.jsonl
    local need=$((100000 * STREAM_SECONDS))
    if [ ! -s "$STREAM_FILE" ] || [ "$(wc -l <"$STREAM_FILE")" -lt "$need" ]; then
        "$BIN/ordergrid-gen" --count "$need" --seed 11 >"$STREAM_FILE"
    fi
    local rate
    for rate in 10000 100000; do
        log "latency: --input - fed at $rate lines/s for ${STREAM_SECONDS}s, 2 workers, $RUNS run(s)"
        for r in $(seq "$RUNS"); do stream_run "stream-$((rate / 1000))k" "$rate" "$r"; done
    done
}

# --- the scenarios --------------------------------------------------------------
# The table, docs/bench/results.md and the chart, from the runs recorded.
write_report() {
    local quick=()
    [ "$QUICK" = 1 ] && quick=(--quick)
    python3 "$ROOT/scripts/bench/report.py" --results "$RESULTS" --docs "$DOCS" \
        --runs "$RUNS" --nice "$NICE" "${quick[@]}"
}

TMO=600 # seconds any one process may take before it is stopped (a hang)

if [ "$ONLY_LATENCY" = 1 ]; then
    latency_scenarios
    write_report
    exit 0
fi

if [ "$ONLY_HTTP" = 1 ]; then
    http_scenarios
    write_report
    exit 0
fi

FILE=$OUT/orders-$N.jsonl
write_file() {
    if [ ! -s "$FILE" ]; then
        log "writing $FILE with ordergrid-gen (not timed)"
        "$BIN/ordergrid-gen" --count "$N" >"$FILE.tmp" && mv "$FILE.tmp" "$FILE"
    fi
    cat "$FILE" >/dev/null # in the page cache, as the generator's output would be
}

if [ "$ONLY_THROUGHPUT" = 1 ]; then
    write_file
    log "naive, grid --generate $N and grid --input ($N lines), 2 workers, in turn, $RUNS run(s)"
    for r in $(seq "$RUNS"); do
        naive_run naive "$N" 2 "$r"
        grid_run grid-generate "$N" 2 "$r" --generate "$N"
        grid_run grid-file "$N" 2 "$r" --input "$FILE"
    done
    write_report
    exit 0
fi

log "naive Guide pipeline: $N orders, 2 workers, $RUNS run(s)"
for r in $(seq "$RUNS"); do naive_run naive "$N" 2 "$r"; done

log "grid --generate $N, 2 workers, $RUNS run(s)"
for r in $(seq "$RUNS"); do grid_run grid-generate "$N" 2 "$r" --generate "$N"; done

write_file
# Inventory (issue 12): the same file with a stock file, run by run in turn
# with the plain file so both see the same machine; a flash sale (one hot
# SKU in most orders, far fewer units than demand); and the ventilator's
# peak RSS with a stock file of 1,000,000 distinct SKUs.
STOCK=$OUT/stock-$N.jsonl
FLASH=$OUT/orders-flash-$N.jsonl
FLASH_STOCK=$OUT/stock-flash-$N.jsonl
BIG_STOCK=$OUT/stock-1M-skus.jsonl
if [ ! -s "$STOCK" ] || [ ! -s "$FLASH" ] || [ ! -s "$BIG_STOCK" ]; then
    log "writing the stock files and the flash-sale input (not timed)"
    "$BIN/ordergrid-gen" --count "$N" --stock-out "$STOCK" --stock-ratio 0.9 >/dev/null
    # Every order's first item becomes the hot SKU.
    sed -E 's/"sku": *"SKU-[0-9]+"/"sku": "SKU-HOT"/' "$FILE" >"$FLASH"
    { cat "$STOCK"; echo "{\"sku\": \"SKU-HOT\", \"on_hand\": $((N / 10))}"; } >"$FLASH_STOCK"
    { cat "$STOCK"; seq 1 1000000 | awk '{printf "{\"sku\": \"BULK-%07d\", \"on_hand\": %d}\n", $1, $1 % 100}'; } >"$BIG_STOCK"
fi
cat "$FLASH" "$STOCK" "$FLASH_STOCK" "$BIG_STOCK" >/dev/null
log "grid --input ($N lines), 2 workers, without and with a stock file in turn, $RUNS run(s)"
for r in $(seq "$RUNS"); do
    grid_run grid-file "$N" 2 "$r" --input "$FILE"
    grid_run grid-file-stock "$N" 2 "$r" --input "$FILE" --stock "$STOCK"
done
log "grid flash sale ($N lines, 1 hot SKU in every order), 2 workers, $RUNS run(s)"
for r in $(seq "$RUNS"); do grid_run grid-flash "$N" 2 "$r" --input "$FLASH" --stock "$FLASH_STOCK"; done
log "grid --input ($N lines) with 1,000,000 SKUs in the stock file, once: peak RSS"
grid_run grid-stock-rss "$N" 2 1 --input "$FILE" --stock "$BIG_STOCK"

for w in $SCALING; do
    [ "$w" = 2 ] && continue # the grid --generate runs above
    log "grid --generate $N, $w worker(s), $RUNS run(s)"
    for r in $(seq "$RUNS"); do grid_run grid-generate "$N" "$w" "$r" --generate "$N"; done
done

# 2 workers: the slow-gateway target; 1 and 4: how workers scale when the
# gateway, not the CPU, is what they wait for.
for w in 2 1 4; do
    log "grid --generate $N_GATEWAY, $w worker(s) x --concurrency 64, --gateway-latency-ms 5, $RUNS run(s)"
    for r in $(seq "$RUNS"); do
        grid_run grid-gateway "$N_GATEWAY" "$w" "$r" --generate "$N_GATEWAY" -- \
            --concurrency 64 --gateway-latency-ms 5
    done
done

# Issue 11's goals: a slow payment provider (200 ms, 3 x 64 in flight: a
# 960 orders/s bound) and many small workers (40 x 8 at 5 ms: 64,000/s),
# with default flags; the report's duplicate results show resent orders.
log "grid --generate $N_SLOW, 3 workers x --concurrency 64, --gateway-latency-ms 200, $RUNS run(s)"
for r in $(seq "$RUNS"); do
    grid_run grid-gateway200 "$N_SLOW" 3 "$r" --generate "$N_SLOW" -- \
        --concurrency 64 --gateway-latency-ms 200
done
log "grid --generate $N_MANY, 40 workers x --concurrency 8, --gateway-latency-ms 5, $RUNS run(s)"
for r in $(seq "$RUNS"); do
    grid_run grid-many "$N_MANY" 40 "$r" --generate "$N_MANY" -- \
        --concurrency 8 --gateway-latency-ms 5
done

# A sink cut off for 15 s mid-run (SIGSTOP, then SIGCONT), 2 x 64 at 5 ms:
# the ventilator must wait for it rather than resend what the workers hold.
log "grid --generate $N_CUT, 2 workers x 64 at 5 ms, the sink frozen (at, for: $CUT s), $RUNS run(s)"
for r in $(seq "$RUNS"); do
    FREEZE_SINK=$CUT grid_run grid-cutoff "$N_CUT" 2 "$r" --generate "$N_CUT" \
        --metrics 127.0.0.1:0 -- --concurrency 64 --gateway-latency-ms 5
done

http_scenarios
latency_scenarios

log "grid --generate $N_RSS, 2 workers, once: peak RSS"
TMO=1800
grid_run grid-rss "$N_RSS" 2 1 --generate "$N_RSS"
TMO=600

if [ "$RABBIT" = 1 ]; then
    if ! command -v rabbitmq-server >/dev/null; then
        log "installing rabbitmq-server"
        apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >/dev/null
    fi
    if [ ! -x "$OUT/venv/bin/python" ] || ! "$OUT/venv/bin/python" -c 'import pika' 2>/dev/null; then
        log "installing pika into $OUT/venv"
        python3 -m venv "$OUT/venv"
        "$OUT/venv/bin/pip" install -q pika
    fi
    if rabbitmqctl status >/dev/null 2>&1; then
        log "a RabbitMQ node is already running: using it (and leaving it running)"
    else
        log "starting RabbitMQ"
        nice -n "$NICE" rabbitmq-server -detached >/dev/null 2>&1
        RABBIT_STARTED=1
        for _ in $(seq 90); do
            rabbitmqctl await_startup >/dev/null 2>&1 && break
            sleep 1
        done
        rabbitmqctl await_startup >/dev/null
    fi
    BROKER_PID=$(rabbitmqctl eval 'os:getpid().' 2>/dev/null | tr -dc '0-9')
    RFILE=$OUT/orders-rabbit-$N_RABBIT.jsonl
    # About 1% of the lines are malformed: some more lines than orders.
    [ -s "$RFILE" ] || "$BIN/ordergrid-gen" --count $((N_RABBIT + N_RABBIT / 10)) >"$RFILE"
    log "RabbitMQ work queue: $N_RABBIT orders, 2 consumers, $RUNS run(s)"
    for r in $(seq "$RUNS"); do rabbit_run rabbitmq "$N_RABBIT" 2 "$r" "$RFILE"; done
fi

write_report
