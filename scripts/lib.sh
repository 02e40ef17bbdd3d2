# Process management shared by run-local.sh and chaos.sh (sourced, not run):
# start the grid's processes in the background, keep track of them, describe
# how they ended, and stop whatever is left (workers first) on the way out.
#
# The sourcing script defines say() (its log line) and GRACE_S (seconds
# between SIGTERM and SIGKILL) and calls stop_all from its EXIT trap.
# shellcheck shell=bash
# shellcheck disable=SC2034 # STARTED, RC, LEFT and JOB_NOTICE are read by the sourcing script

declare -A ALIVE=() # pid -> name, for every process started and not yet reaped

# start NAME STDOUT STDERR CMD...: starts CMD in the background; sets STARTED to its pid.
start() {
    local name=$1 out=$2 err=$3
    shift 3
    "$@" >>"$out" 2>>"$err" &
    STARTED=$!
    ALIVE[$STARTED]=$name
}

running() { kill -0 "$1" 2>/dev/null; }

# reap PID: waits for a child to end; sets RC to its exit status.
reap() {
    RC=0
    wait "$1" 2>/dev/null || RC=$?
    unset "ALIVE[$1]"
}

# "status 134 (SIGABRT)": killed by that signal, or exited with 128+n after it.
describe_rc() {
    local name
    if (($1 > 128)) && name=$(kill -l $(($1 - 128)) 2>/dev/null); then
        echo "status $1 (SIG$name)"
    else
        echo "status $1"
    fi
}

# True if PID is still a child of this shell (guards against a recycled pid).
mine() {
    local stat ppid
    [[ -r /proc/$1/stat ]] || return 1
    read -r stat <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    read -r _ ppid _ <<<"$stat"
    [[ $ppid == "$$" ]]
}

# alive PIDS...: sets LEFT to those still running (and still ours).
alive() {
    local pid
    LEFT=()
    for pid; do
        if running "$pid" && mine "$pid"; then LEFT+=("$pid"); fi
    done
}

# stop_pids PIDS...: SIGTERM, up to GRACE_S seconds to exit, then SIGKILL; reaps them.
stop_pids() {
    local pid deadline=$((SECONDS + GRACE_S))
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    while alive "$@"; ((${#LEFT[@]})); do
        if ((SECONDS >= deadline)); then
            say "SIGKILL to pid ${LEFT[*]}: still running ${GRACE_S}s after SIGTERM"
            kill -KILL "${LEFT[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    for pid; do reap "$pid"; done
}

# Stops every process this script started and has not reaped: the workers
# first, while the sink can still take the results they finish, then the rest.
INTERRUPTED=0
stop_all() {
    local pid workers=() others=()
    if ((INTERRUPTED)); then
        # After a Ctrl-C the children got SIGINT too: let them stop on their own
        # for a moment (a second signal makes them exit at once).
        for _ in {1..10}; do
            alive "${!ALIVE[@]}"
            ((${#LEFT[@]})) || break
            sleep 0.1
        done
    fi
    for pid in "${!ALIVE[@]}"; do
        if ! mine "$pid"; then
            reap "$pid"
        elif [[ ${ALIVE[$pid]} == *worker* ]]; then
            workers+=("$pid")
        else
            others+=("$pid")
        fi
    done
    stop_pids "${workers[@]}"
    stop_pids "${others[@]}"
}

# How bash reports a background process that a signal ended.
# shellcheck disable=SC2016 # a literal $@ and $out
JOB_NOTICE=': line [0-9]+: +[0-9]+ .*"\$@" >> "\$out"'
