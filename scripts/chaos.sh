#!/usr/bin/env bash
# Shows the grid's promise: every distinct order is tallied exactly once,
# whatever dies.
#
#   scripts/chaos.sh [N]        (N orders, default 500000; at least 1000)
#
# 1. Builds in release and writes N orders (3 of them poison) with ordergrid-gen.
# 2. Reference run of that file: a sink, 2 supervised workers, a ventilator.
#    (Poison orders abort workers even here: the supervisor restarts them.)
# 3. Chaos run of the same file with fresh state: 3 supervised workers with a
#    1 ms gateway latency. Driven by the sink's progress lines (--progress-ms
#    200, "done=N"), it kill -9s a random worker at 10, 25, 40, 60 and 80% of
#    N, the sink at 50% (restarted with the same --state, after 1 s down) and
#    the ventilator at 70% (restarted with the same input): each at the first
#    progress reading at or past its point, one kill per reading. A run that
#    completes before every kill happened fails: it would prove nothing.
# 4. Compares the chaos report's orders, rejected, payments and stock with
#    the reference's (exact equality), checks orders.failed == 3 and
#    paid+declined+rejected+failed+duplicate+malformed == lines, and, when
#    tests/oracle.py is there, compares both with that independent tally.
#    Prints PASS, or the differences and exits 1.
# 5. Stops every process it started, also on failure or Ctrl-C. The work
#    folder is kept (and its path printed) on failure, removed on success
#    unless ORDERGRID_KEEP=1.
#
# Environment:
#   ORDERGRID_WORKDIR          work folder (must be empty or absent; default mktemp -d)
#   ORDERGRID_KEEP=1           keep the work folder after a pass
#   ORDERGRID_CHAOS_TIMEOUT    seconds each run may take (default 900)
#   ORDERGRID_CHAOS_RANDOM     seed of the choice of workers to kill (default: random, printed)
# Every other ORDERGRID_* variable is ignored: the runs are self-contained and
# use ipc endpoints inside the work folder, so nothing else on the host collides.
set -euo pipefail

PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEED=20251126      # the input's seed: fixed, so every run of this script checks the same orders
POISON=3           # poison orders in the input: each must end up failed, exactly once
LATENCY_MS=1       # chaos workers' gateway latency: makes the run last long enough to kill things
PROGRESS_MS=200    # the sink's progress lines, which drive the kills
GRACE_S=3          # SIGTERM -> SIGKILL grace when cleaning up
TIMEOUT_S=${ORDERGRID_CHAOS_TIMEOUT:-900}
# What dies, and when (percent of N tallied).
PLAN=(10:worker 25:worker 40:worker 50:sink 60:worker 70:ventilator 80:worker)

usage() { echo "usage: $PROG [N]   (N >= 1000 orders, default 500000)"; }
usage_error() {
    echo "$PROG: $1" >&2
    usage >&2
    exit 2
}
ts() { date +%H:%M:%S.%3N; }
say() { printf '%s %s\n' "$(ts)" "$*"; }

# ---------------------------------------------------------------- arguments
N=500000
case $# in
0) ;;
1)
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    esac
    if ! [[ $1 =~ ^[0-9]{1,12}$ ]] || ((10#$1 < 1000)); then
        usage_error "N must be a whole number >= 1000, not '$1'"
    fi
    N=$((10#$1))
    ;;
*) usage_error "too many arguments: $*" ;;
esac
if ! [[ $TIMEOUT_S =~ ^[0-9]{1,7}$ ]] || ((10#$TIMEOUT_S == 0)); then
    usage_error "ORDERGRID_CHAOS_TIMEOUT must be a number of seconds, not '$TIMEOUT_S'"
fi
TIMEOUT_S=$((10#$TIMEOUT_S))
if [[ -n ${ORDERGRID_CHAOS_RANDOM:-} ]]; then
    [[ $ORDERGRID_CHAOS_RANDOM =~ ^[0-9]{1,9}$ ]] || usage_error "ORDERGRID_CHAOS_RANDOM must be a number"
    RANDOM_SEED=$((10#$ORDERGRID_CHAOS_RANDOM))
else
    RANDOM_SEED=$((RANDOM * 32768 + RANDOM))
fi
RANDOM=$RANDOM_SEED
command -v python3 >/dev/null || {
    echo "$PROG: python3 is needed to compare the reports" >&2
    exit 2
}

# Self-contained: no endpoint, latency, retry or log setting from the caller.
KEEP=${ORDERGRID_KEEP:-0}
WORKDIR=${ORDERGRID_WORKDIR:-}
while read -r var; do
    [[ $var == ORDERGRID_* ]] && unset "$var"
done < <(compgen -e)
export RUST_LOG=info NO_COLOR=1

# ---------------------------------------------------------------- build
say "building (cargo build --release) in $ROOT"
if ! (cd "$ROOT" && cargo build --release --quiet); then
    echo "$PROG: the release build failed" >&2
    exit 1
fi
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN=${TARGET_DIR:-$ROOT/target}/release
for b in gen sink worker ventilator; do
    [[ -x $BIN/ordergrid-$b ]] || {
        echo "$PROG: $BIN/ordergrid-$b not found after the build" >&2
        exit 1
    }
done

# ---------------------------------------------------------------- work folder
if [[ -n $WORKDIR ]]; then
    if [[ -e $WORKDIR ]] && [[ -n $(ls -A "$WORKDIR") ]]; then
        usage_error "ORDERGRID_WORKDIR ($WORKDIR) must be empty or absent: a chaos run needs fresh state"
    fi
    mkdir -p "$WORKDIR"
    WORK=$(cd "$WORKDIR" && pwd)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ordergrid-chaos.XXXXXX")
fi
((${#WORK} + 30 < 100)) || usage_error "work folder path too long for ipc sockets: $WORK"
INPUT=$WORK/orders.jsonl

# ---------------------------------------------------------------- processes
# start, reap, stop_all, ...: see lib.sh.
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
PASSED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if ((rc == 0 && PASSED)); then
        if [[ $KEEP == 1 ]]; then
            say "work folder kept (ORDERGRID_KEEP=1): $WORK"
        else
            rm -rf -- "$WORK"
        fi
    else
        # Errors of this script itself, if any, are among the shell's job notices.
        if [[ -s $WORK/shell.log ]] && grep -qvE "$JOB_NOTICE" "$WORK/shell.log"; then
            echo "---- $WORK/shell.log (other than job notices)"
            grep -vE "$JOB_NOTICE" "$WORK/shell.log" | tail -n 20
        fi
        if ((rc == 130 || rc == 143)); then
            say "stopped (status $rc); work folder kept: $WORK"
        else
            say "FAIL (status $rc); work folder kept: $WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'INTERRUPTED=1; say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# fail MESSAGE: prints it and the tails of the current run's logs, exits 1.
fail() {
    say "FAIL: $*"
    local f
    if [[ -n ${D:-} && -d $D/logs ]]; then
        for f in "$D"/logs/*.log; do
            [[ -s $f ]] || continue
            echo "---- tail of $f"
            tail -n 12 "$f"
        done
    fi
    exit 1
}

# ---------------------------------------------------------------- one run of the grid
# Globals of the run in progress.
D=              # its folder
PHASE=
SINK=           # current sink pid, and how many sinks were started
SINK_N=0
SINK_LOG=
VENT=           # current ventilator pid, and how many were started
VENT_N=0
NW=0            # worker slots
LAT=0
declare -a WPID=() WBORN=() WNEXT=() WCHAOS=()
WORKER_STARTS=0
POISON_DEATHS=0

endpoints() {
    JOBS=ipc://$D/jobs.ipc RESULTS=ipc://$D/results.ipc
    ACKS=ipc://$D/acks.ipc CONTROL=ipc://$D/control.ipc
}

start_sink() {
    SINK_N=$((SINK_N + 1))
    SINK_LOG=$D/logs/sink.$SINK_N.log
    start "$PHASE sink" "$D/logs/sink.$SINK_N.out" "$SINK_LOG" \
        "$BIN/ordergrid-sink" --results "$RESULTS" --acks "$ACKS" --control "$CONTROL" \
        --state "$D/state" --progress-ms "$PROGRESS_MS"
    SINK=$STARTED
}

start_ventilator() {
    VENT_N=$((VENT_N + 1))
    start "$PHASE ventilator" "$D/logs/ventilator.$VENT_N.log" "$D/logs/ventilator.$VENT_N.log" \
        "$BIN/ordergrid-ventilator" --input "$INPUT" --jobs "$JOBS" --acks "$ACKS" \
        --dead-letter "$D/dead-letter.jsonl"
    VENT=$STARTED
}

start_worker() {
    local k=$1 log=$D/logs/worker-$1.log
    echo "==== $(ts) $PROG: starting worker $k" >>"$log"
    start "$PHASE worker $k" "$log" "$log" \
        "$BIN/ordergrid-worker" --jobs "$JOBS" --results "$RESULTS" --control "$CONTROL" \
        --gateway-latency-ms "$LAT"
    WPID[k]=$STARTED
    WBORN[k]=$SECONDS
    WNEXT[k]=
    WCHAOS[k]=0
    WORKER_STARTS=$((WORKER_STARTS + 1))
}

# The last done=N the current sink logged (empty before its first progress line).
current_done() {
    [[ -f $SINK_LOG ]] || return 0
    tail -n 40 "$SINK_LOG" | awk '/ progress / { for (i = 1; i <= NF; i++) if ($i ~ /^done=/) d = substr($i, 6) } END { print d }'
}

pct() { awk -v d="$1" -v n="$N" 'BEGIN { printf "%.1f%%", 100 * d / n }'; }

# One look at every process: restarts dead workers, notices the sink and the
# ventilator finishing (or failing).
supervise() {
    local k pid
    if [[ -z $VENT_RC ]] && ! running "$VENT"; then
        reap "$VENT"
        VENT_RC=$RC
        ((RC == 0)) || fail "$PHASE: the ventilator stopped on its own: $(describe_rc "$RC")"
        say "$PHASE: ventilator exited (run complete)"
    fi
    if [[ -z $SINK_RC ]] && ! running "$SINK"; then
        reap "$SINK"
        SINK_RC=$RC
        ((RC == 0)) || fail "$PHASE: the sink stopped on its own: $(describe_rc "$RC")"
        SINK_DONE_AT=$SECONDS
        say "$PHASE: sink exited (run complete, report written)"
    fi
    for ((k = 1; k <= NW; k++)); do
        pid=${WPID[k]}
        if [[ -n $pid ]] && ! running "$pid"; then
            reap "$pid"
            WPID[k]=
            if ((RC == 0)); then
                continue # the run is over
            fi
            if ((WCHAOS[k])); then
                say "$PHASE: worker $k (pid $pid) killed by $PROG, $(describe_rc "$RC"); restarting it"
            else
                POISON_DEATHS=$((POISON_DEATHS + 1))
                say "$PHASE: worker $k (pid $pid) died: $(describe_rc "$RC") (a poison order?); restarting it"
            fi
            # A worker that dies at once is restarted after a short pause.
            WNEXT[k]=$((SECONDS - WBORN[k] < 1 ? SECONDS + 1 : SECONDS))
        fi
        if [[ -z ${WPID[k]} && -n ${WNEXT[k]} && -z $SINK_RC ]] && ((SECONDS >= WNEXT[k])); then
            start_worker "$k"
        fi
    done
}

# chaos_event KIND DONE: kills what KIND says; returns 1 if it could not (no worker alive).
chaos_event() {
    local kind=$1 cur=$2 k pid alive=()
    case $kind in
    worker)
        for ((k = 1; k <= NW; k++)); do [[ -n ${WPID[k]} ]] && alive+=("$k"); done
        ((${#alive[@]})) || return 1
        k=${alive[RANDOM % ${#alive[@]}]}
        pid=${WPID[k]}
        kill -KILL "$pid"
        WCHAOS[k]=1
        KILLS=$((KILLS + 1))
        say "CHAOS kill -9 worker $k (pid $pid) at done=$cur/$N ($(pct "$cur"))"
        ;;
    sink)
        pid=$SINK
        kill -KILL "$pid"
        reap "$pid"
        KILLS=$((KILLS + 1))
        say "CHAOS kill -9 sink (pid $pid) at done=$cur/$N ($(pct "$cur"))"
        sleep 1 # an outage, not just a blink
        start_sink
        say "      sink restarted with the same --state as pid $SINK (log $SINK_LOG)"
        ;;
    ventilator)
        pid=$VENT
        kill -KILL "$pid"
        reap "$pid"
        KILLS=$((KILLS + 1))
        say "CHAOS kill -9 ventilator (pid $pid) at done=$cur/$N ($(pct "$cur"))"
        start_ventilator
        say "      ventilator restarted with the same input as pid $VENT"
        ;;
    esac
}

# run_grid PHASE WORKERS LATENCY_MS CHAOS(0|1): one whole run; leaves D/state/report.json.
run_grid() {
    PHASE=$1 NW=$2 LAT=$3
    local chaos=$4 deadline next=0 fired_at=-1 cur last_note=$SECONDS entry kind threshold k t0=$SECONDS
    D=$WORK/$PHASE
    mkdir -p "$D/logs"
    endpoints
    SINK_N=0 VENT_N=0 WORKER_STARTS=0 POISON_DEATHS=0 KILLS=0
    VENT_RC='' SINK_RC='' SINK_DONE_AT=''
    WPID=() WBORN=() WNEXT=() WCHAOS=()
    say "$PHASE: sink, $NW supervised workers (gateway latency ${LAT} ms), ventilator; logs in $D/logs"
    start_sink
    for ((k = 1; k <= NW; k++)); do start_worker "$k"; done
    start_ventilator
    deadline=$((SECONDS + TIMEOUT_S))
    while :; do
        supervise
        [[ -n $SINK_RC && -n $VENT_RC ]] && break
        if [[ -n $SINK_RC ]] && ((SECONDS - SINK_DONE_AT > 30)); then
            fail "$PHASE: the sink completed the run but the ventilator did not exit within 30s"
        fi
        if ((SECONDS >= deadline)); then
            fail "$PHASE: not complete after ${TIMEOUT_S}s (done=$(current_done)/$N)"
        fi
        cur=$(current_done)
        if ((chaos)) && [[ -n $cur && -z $SINK_RC ]] && ((next < ${#PLAN[@]})) &&
            ! grep -q 'run complete' "$SINK_LOG"; then
            entry=${PLAN[next]}
            threshold=$((N * ${entry%%:*} / 100))
            kind=${entry#*:}
            # One kill per progress reading, so that each happens at its own point.
            if ((cur >= threshold && cur != fired_at)) && chaos_event "$kind" "$cur"; then
                next=$((next + 1))
                fired_at=$cur
            fi
        fi
        if ((SECONDS - last_note >= 5)) && [[ -n $cur ]]; then
            say "$PHASE: progress done=$cur/$N ($(pct "$cur"))"
            last_note=$SECONDS
        fi
        sleep 0.1
    done
    # The workers heard "run over"; give them a moment, then stop what is left.
    for ((k = 1; k <= NW; k++)); do
        [[ -n ${WPID[k]} ]] || continue
        for _ in {1..20}; do running "${WPID[k]}" || break; sleep 0.1; done
    done
    stop_all
    ELAPSED=$((SECONDS - t0))
    say "$PHASE: complete in ${ELAPSED}s: $SINK_N sink(s), $VENT_N ventilator(s), $WORKER_STARTS worker start(s), $POISON_DEATHS worker death(s) not caused by $PROG"
    if ((chaos && next < ${#PLAN[@]})); then
        fail "$PHASE: the run completed after only $next of the ${#PLAN[@]} planned kills: it did not test what it should"
    fi
    [[ -s $D/state/report.json ]] || fail "$PHASE: no report at $D/state/report.json"
}

# ---------------------------------------------------------------- 1. the input
say "work folder $WORK (N=$N, input seed $SEED, $POISON poison orders, kill choice seed $RANDOM_SEED)"
"$BIN/ordergrid-gen" --count "$N" --seed "$SEED" --poison "$POISON" >"$INPUT"
say "input: $INPUT ($(wc -l <"$INPUT") lines, $(du -h "$INPUT" | cut -f1))"

# ---------------------------------------------------------------- 2. reference run
# The shell's own stderr goes to a log during the runs: bash reports there every
# background process killed by a signal ("Killed", "Aborted"), which is
# expected noise here; this script reports each death itself.
run_grid reference 2 0 0 2>>"$WORK/shell.log"
REF_S=$ELAPSED

# ---------------------------------------------------------------- 3. chaos run
run_grid chaos 3 "$LATENCY_MS" 1 2>>"$WORK/shell.log"
CHAOS_S=$ELAPSED
CHAOS_KILLS=$KILLS

# ---------------------------------------------------------------- 4. compare
D=
ORACLE=$ROOT/tests/oracle.py
ORACLE_OUT=
if [[ -f $ORACLE ]]; then
    say "independent tally of the input with tests/oracle.py"
    ORACLE_OUT=$WORK/oracle.json
    python3 "$ORACLE" "$INPUT" >"$ORACLE_OUT"
fi
say "comparing reports (reference ${REF_S}s, chaos ${CHAOS_S}s with $CHAOS_KILLS kills)"
if python3 - "$WORK/reference/state/report.json" "$WORK/chaos/state/report.json" "$POISON" "$ORACLE_OUT" <<'EOF'; then
import json
import sys

ref_path, chaos_path, poison, oracle_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
SECTIONS = ("orders", "rejected", "payments", "stock")
COUNTS = ("paid", "declined", "rejected", "failed", "duplicate", "malformed")
reports = {}
for name, path in (("reference", ref_path), ("chaos", chaos_path)):
    with open(path) as f:
        reports[name] = json.load(f)
if oracle_path:
    with open(oracle_path) as f:
        reports["oracle"] = json.load(f)
problems = []


def compare(a_name, b_name):
    a, b = reports[a_name], reports[b_name]
    for section in SECTIONS:
        x, y = a.get(section), b.get(section)
        if x == y:
            continue
        if not (isinstance(x, dict) and isinstance(y, dict)):
            problems.append(f"{section}: {a_name}={json.dumps(x)} {b_name}={json.dumps(y)}")
            continue
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        problems.append(f"{section}: {len(keys)} difference(s) between {a_name} and {b_name}")
        for k in keys[:25]:
            problems.append(f"  {section}.{k}: {a_name}={json.dumps(x.get(k, '<absent>'))} "
                            f"{b_name}={json.dumps(y.get(k, '<absent>'))}")
        if len(keys) > 25:
            problems.append(f"  ... and {len(keys) - 25} more")


compare("reference", "chaos")
for name in ("reference", "chaos"):
    o = reports[name]["orders"]
    if o["failed"] != poison:
        problems.append(f"{name}: orders.failed = {o['failed']}, expected {poison} (the poison orders)")
    total = sum(o[k] for k in COUNTS)
    if total != o["lines"]:
        problems.append(f"{name}: paid+declined+rejected+failed+duplicate+malformed = {total} "
                        f"!= lines = {o['lines']}")
if "oracle" in reports:
    compare("oracle", "reference")
    compare("oracle", "chaos")

c = reports["chaos"]
o = c["orders"]
print("chaos report: lines={lines} paid={paid} declined={declined} rejected={rejected} "
      "failed={failed} duplicate={duplicate} malformed={malformed}".format(**o))
s, r = c["stats"], c["run"]
print(f"chaos stats: results_received={s['results_received']} duplicate_results={s['duplicate_results']} "
      f"workers_seen={r['workers_seen']} sink_restarts={r['sink_restarts']}")
if problems:
    print("DIFFERENCES:")
    for p in problems:
        print("  " + p)
    sys.exit(1)
EOF
    PASSED=1
    say "PASS: $N lines, every distinct order tallied exactly once through $CHAOS_KILLS kills" \
        "(reference ${REF_S}s, chaos ${CHAOS_S}s)"
else
    say "the reports differ; the logs:"
    for f in "$WORK"/chaos/logs/sink.*.log "$WORK"/chaos/logs/ventilator.*.log; do
        echo "---- $f (warnings and key events)"
        grep -E 'WARN|ERROR|poison|replayed|resum|accepted|complete' "$f" | tail -n 20 || true
    done
    exit 1
fi
