#!/usr/bin/env bash
# Runs the whole grid on this host: a sink, WORKERS workers and a ventilator
# streaming N synthetic orders (--generate N), waits for the run to complete
# and prints the report.
#
#   scripts/run-local.sh [N] [WORKERS] [--supervise] [--stock[=FILE]] [--gateway sim|http]
#
#   N            orders to generate (default 1000000)
#   WORKERS      worker processes (default 2)
#   --supervise  restart any worker that dies (non-zero exit or killed by a
#                signal) until the sink has exited, and log each restart
#   --stock      allocate stock in line order (a flash sale): a stock file for
#                the generated orders is written first (ordergrid-gen
#                --stock-out; ORDERGRID_STOCK_RATIO, default 0.9, is units on
#                hand relative to demand); --stock=FILE uses FILE instead
#   --gateway http
#                start ordergrid-paysim (a PSP simulator on a free loopback
#                port, its journal in the work folder) and have the workers
#                pay through it over HTTP; the ledger it kept is printed with
#                the report. Default: sim (the built-in simulated gateway).
#
# Environment:
#   ORDERGRID_WORKDIR   work folder (default: a fresh mktemp -d). It holds the
#                       sink's state, the logs, the dead-letter file and the
#                       ipc sockets. Run again with the same folder and N to
#                       resume an interrupted run.
#   ORDERGRID_JOBS, ORDERGRID_RESULTS, ORDERGRID_ACKS, ORDERGRID_CONTROL
#                       endpoints (default: ipc sockets in the work folder, so
#                       that several runs can coexist on one host)
#   ORDERGRID_REPORT    where the sink writes report.json (default: STATE/report.json)
#   ORDERGRID_PAYSIM_LATENCY_MS, ORDERGRID_PAYSIM_FAIL_RATE, ORDERGRID_PAYSIM_LATE_RATE
#                       paysim's faults with --gateway http (default: none)
#   Any other ORDERGRID_* variable (ORDERGRID_GATEWAY_LATENCY_MS, ORDERGRID_SEED,
#   ORDERGRID_POISON, ORDERGRID_CONCURRENCY, ...) reaches the binaries as is.
#
# Exit status: 0 when the run completed, 1 when the sink or the ventilator
# failed (or no worker is left), 2 on a bad command line, 130 on Ctrl-C.
# Every process it started is stopped on the way out (SIGTERM, then SIGKILL).
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GRACE_S=3 # SIGTERM -> SIGKILL grace when cleaning up

usage() {
    echo "usage: $PROG [N] [WORKERS] [--supervise] [--stock[=FILE]] [--gateway sim|http]   (N >= 1, default 1000000; 1 <= WORKERS <= 256, default 2)"
}
usage_error() {
    echo "$PROG: $1" >&2
    usage >&2
    exit 2
}
# Messages go to the script's stderr (fd 3): while the grid runs, the shell's
# own stderr goes to a log, as bash reports there every background process a
# signal ended ("Aborted", "Killed"), which this script reports itself.
exec 3>&2
say() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$PROG" "$*" >&3; }

# ---------------------------------------------------------------- arguments
N=1000000
WORKERS=2
SUPERVISE=0
STOCK=
GATEWAY=sim
positional=()
while (($#)); do
    arg=$1
    shift
    case $arg in
    --supervise) SUPERVISE=1 ;;
    --stock) STOCK=generate ;;
    --stock=?*) STOCK=$(cd "$(dirname "${arg#--stock=}")" && pwd)/$(basename "${arg#--stock=}") ||
        usage_error "no such folder for ${arg#--stock=}" ;;
    --gateway)
        (($#)) || usage_error "--gateway needs sim or http"
        GATEWAY=$1
        shift
        [[ $GATEWAY == sim || $GATEWAY == http ]] || usage_error "--gateway must be sim or http, not '$GATEWAY'"
        ;;
    --gateway=*)
        GATEWAY=${arg#--gateway=}
        [[ $GATEWAY == sim || $GATEWAY == http ]] || usage_error "--gateway must be sim or http, not '$GATEWAY'"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) usage_error "unknown option: $arg" ;;
    *) positional+=("$arg") ;;
    esac
done
((${#positional[@]} <= 2)) || usage_error "too many arguments: ${positional[*]}"
is_count() { [[ $1 =~ ^[0-9]{1,15}$ ]] && ((10#$1 >= 1)); }
if ((${#positional[@]} >= 1)); then
    is_count "${positional[0]}" || usage_error "N must be a whole number >= 1, not '${positional[0]}'"
    N=$((10#${positional[0]}))
fi
if ((${#positional[@]} >= 2)); then
    if ! is_count "${positional[1]}" || ((10#${positional[1]} > 256)); then
        usage_error "WORKERS must be a whole number from 1 to 256, not '${positional[1]}'"
    fi
    WORKERS=$((10#${positional[1]}))
fi

# ---------------------------------------------------------------- build
say "building (cargo build --release) in $ROOT"
if ! (cd "$ROOT" && cargo build --release); then
    echo "$PROG: the release build failed" >&2
    exit 1
fi
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-$ROOT/target}/release
for b in sink worker ventilator gen paysim; do
    [[ -x $BIN/ordergrid-$b ]] || {
        echo "$PROG: $BIN/ordergrid-$b not found after the build" >&2
        exit 1
    }
done

# ---------------------------------------------------------------- work folder
if [[ -n ${ORDERGRID_WORKDIR:-} ]]; then
    mkdir -p "$ORDERGRID_WORKDIR"
    WORK=$(cd "$ORDERGRID_WORKDIR" && pwd)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ordergrid-run.XXXXXX")
fi
LOGS=$WORK/logs
STATE=$WORK/state
DEAD_LETTER=$WORK/dead-letter.jsonl
REPORT=${ORDERGRID_REPORT:-$STATE/report.json}
mkdir -p "$LOGS"

JOBS=${ORDERGRID_JOBS:-ipc://$WORK/jobs.ipc}
RESULTS=${ORDERGRID_RESULTS:-ipc://$WORK/results.ipc}
ACKS=${ORDERGRID_ACKS:-ipc://$WORK/acks.ipc}
CONTROL=${ORDERGRID_CONTROL:-ipc://$WORK/control.ipc}
for ep in "$JOBS" "$RESULTS" "$ACKS" "$CONTROL"; do
    # A Unix socket path holds at most 107 bytes.
    if [[ $ep == ipc://* ]] && ((${#ep} - 6 > 100)); then
        usage_error "ipc path too long for a Unix socket ($ep): use a shorter ORDERGRID_WORKDIR"
    fi
done
# The ventilator is given --generate: an input file from the environment would conflict.
# The gateway is this script's --gateway.
unset ORDERGRID_GATEWAY
unset ORDERGRID_INPUT ORDERGRID_GENERATE ORDERGRID_STOCK
if [[ $STOCK == generate ]]; then
    STOCK=$WORK/stock.jsonl
    # The same orders as --generate N (ORDERGRID_SEED, ORDERGRID_POISON reach gen too).
    "$BIN/ordergrid-gen" --count "$N" --stock-out "$STOCK" >/dev/null ||
        { echo "$PROG: cannot write the stock file $STOCK" >&2; exit 1; }
fi
if [[ -n $STOCK ]]; then
    [[ -r $STOCK ]] || usage_error "cannot read the stock file $STOCK"
    STOCK_ARGS=(--stock "$STOCK")
else
    STOCK_ARGS=()
fi

# ---------------------------------------------------------------- processes
# start, reap, stop_all, ...: see lib.sh.
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if ((rc != 0)); then
        # Errors of this script itself, if any, are among the shell's job notices.
        if [[ -s $LOGS/shell.log ]] && grep -qvE "$JOB_NOTICE" "$LOGS/shell.log"; then
            echo "---- $LOGS/shell.log (other than job notices)" >&3
            grep -vE "$JOB_NOTICE" "$LOGS/shell.log" | tail -n 20 >&3
        fi
        say "failed (status $rc); work folder kept: $WORK (logs in $LOGS)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

fail() {
    say "FAILED: $*"
    local f
    for f in "$LOGS"/*.log; do
        [[ -s $f && $f != "$LOGS/shell.log" ]] || continue
        echo "---- tail of $f" >&3
        tail -n 8 "$f" >&3
    done
    exit 1
}

# ---------------------------------------------------------------- the grid
say "work folder $WORK; logs in $LOGS/ (sink.log, worker-K.log, ventilator.log)"
say "N=$N workers=$WORKERS supervise=$([[ $SUPERVISE == 1 ]] && echo yes || echo no) stock=${STOCK:-none} jobs=$JOBS"
T0=$SECONDS

GATEWAY_ARGS=()
if [[ $GATEWAY == http ]]; then
    : >"$LOGS/paysim.out"
    start paysim "$LOGS/paysim.out" "$LOGS/paysim.log" \
        "$BIN/ordergrid-paysim" --listen 127.0.0.1:0 --journal "$WORK/paysim-journal.jsonl"
    PAYSIM=$STARTED
    PAYSIM_ADDR=
    for _ in {1..100}; do
        PAYSIM_ADDR=$(sed -n 's/^listening on //p' "$LOGS/paysim.out")
        [[ -n $PAYSIM_ADDR ]] && break
        running "$PAYSIM" || break
        sleep 0.1
    done
    [[ -n $PAYSIM_ADDR ]] || fail "ordergrid-paysim did not start (see $LOGS/paysim.log)"
    GATEWAY_ARGS=(--gateway "http://$PAYSIM_ADDR")
    say "paysim listening on $PAYSIM_ADDR; workers pay through it over HTTP"
fi

: >"$LOGS/sink.out" # the table of this run only
start sink "$LOGS/sink.out" "$LOGS/sink.log" \
    "$BIN/ordergrid-sink" --results "$RESULTS" --acks "$ACKS" --control "$CONTROL" \
    --state "$STATE" --report "$REPORT"
SINK=$STARTED

declare -a WPID=() WBORN=() WNEXT=()
start_worker() {
    local k=$1
    start "worker-$k" "$LOGS/worker-$k.log" "$LOGS/worker-$k.log" \
        "$BIN/ordergrid-worker" --jobs "$JOBS" --results "$RESULTS" --control "$CONTROL" \
        "${GATEWAY_ARGS[@]}"
    WPID[k]=$STARTED
    WBORN[k]=$SECONDS
    WNEXT[k]=
}
for ((k = 1; k <= WORKERS; k++)); do start_worker "$k"; done

start ventilator "$LOGS/ventilator.log" "$LOGS/ventilator.log" \
    "$BIN/ordergrid-ventilator" --generate "$N" --jobs "$JOBS" --acks "$ACKS" \
    --dead-letter "$DEAD_LETTER" "${STOCK_ARGS[@]}"
VENT=$STARTED

SINK_RC=
VENT_RC=
SINK_DONE_AT=
RESTARTS=0
CLEAN_EXITS=0
NO_WORKER_SINCE=
# Waits for the ventilator and the sink, restarting workers with --supervise.
supervise() {
    while :; do
        if [[ -z $VENT_RC ]] && ! running "$VENT"; then
            reap "$VENT"
            VENT_RC=$RC
            ((VENT_RC == 0)) || fail "the ventilator stopped: $(describe_rc "$VENT_RC") (see $LOGS/ventilator.log)"
            say "ventilator done"
        fi
        if [[ -z $SINK_RC ]] && ! running "$SINK"; then
            reap "$SINK"
            SINK_RC=$RC
            ((SINK_RC == 0)) || fail "the sink stopped: $(describe_rc "$SINK_RC") (see $LOGS/sink.log)"
            SINK_DONE_AT=$SECONDS
            say "sink done: run complete"
        fi
        [[ -n $SINK_RC && -n $VENT_RC ]] && break
        if [[ -n $SINK_RC ]] && ((SECONDS - SINK_DONE_AT > 30)); then
            fail "the sink completed the run but the ventilator did not exit within 30s"
        fi

        alive=0
        for ((k = 1; k <= WORKERS; k++)); do
            pid=${WPID[k]}
            if [[ -n $pid ]] && ! running "$pid"; then
                reap "$pid"
                WPID[k]=
                if ((RC == 0)); then
                    CLEAN_EXITS=$((CLEAN_EXITS + 1)) # the run is over, or someone stopped it
                    say "worker $k (pid $pid) exited"
                elif ((SUPERVISE)) && [[ -z $SINK_RC ]]; then
                    # A worker that dies at once is restarted after a short pause.
                    WNEXT[k]=$((SECONDS - WBORN[k] < 1 ? SECONDS + 1 : SECONDS))
                    say "worker $k (pid $pid) died: $(describe_rc "$RC"); restarting it"
                else
                    say "worker $k (pid $pid) died: $(describe_rc "$RC"); not restarted (no --supervise)"
                fi
            fi
            if [[ -z ${WPID[k]} && -n ${WNEXT[k]} && -z $SINK_RC ]] && ((SECONDS >= WNEXT[k])); then
                start_worker "$k"
                RESTARTS=$((RESTARTS + 1))
                say "worker $k restarted as pid ${WPID[k]} (restart #$RESTARTS)"
            fi
            [[ -n ${WPID[k]} || -n ${WNEXT[k]} ]] && alive=$((alive + 1))
        done
        if ((alive == 0)) && [[ -z $SINK_RC ]]; then
            # Workers leave when the sink says the run is over, a moment before the sink exits.
            NO_WORKER_SINCE=${NO_WORKER_SINCE:-$SECONDS}
            if ((CLEAN_EXITS == 0 || SECONDS - NO_WORKER_SINCE > 30)); then
                fail "no worker is left and the run is not complete (poison orders abort workers: use --supervise)"
            fi
        fi
        sleep 0.2
    done
}
supervise 2>>"$LOGS/shell.log"

# Workers hear "run over" from the sink and exit by themselves; cleanup stops stragglers.
for ((k = 1; k <= WORKERS; k++)); do
    pid=${WPID[k]}
    [[ -n $pid ]] || continue
    for _ in {1..20}; do running "$pid" || break; sleep 0.1; done
done

say "run complete in $((SECONDS - T0))s; worker restarts: $RESTARTS"
cat "$LOGS/sink.out"
echo
echo "report:      $REPORT"
if [[ -s $DEAD_LETTER ]]; then
    echo "dead letter: $DEAD_LETTER ($(wc -l <"$DEAD_LETTER") lines)"
fi
if [[ $GATEWAY == http ]]; then
    # The PSP's own account: charges per currency equal the report's payments.
    ledger=$(exec 3<>"/dev/tcp/${PAYSIM_ADDR%:*}/${PAYSIM_ADDR##*:}" &&
        printf 'GET /v1/ledger HTTP/1.1\r\nHost: paysim\r\nConnection: close\r\n\r\n' >&3 &&
        sed '1,/^\r$/d' <&3) || ledger="(unavailable)"
    echo "paysim ledger: $ledger"
fi
echo "logs:        $LOGS"
