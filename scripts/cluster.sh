#!/usr/bin/env bash
# shellcheck disable=SC2016 # many lines are sh scripts to run on a host, expanded there
# Starts, inspects, stops and gathers the logs of an ordergrid grid spread
# over several hosts, each role started on its host through ssh (or any
# command set by ORDERGRID_LAUNCH).
#
#   scripts/cluster.sh up|serve|status|down|logs HOSTFILE
#   scripts/cluster.sh submit HOSTFILE INPUT [VENTILATOR FLAGS...]
#
#   up      pre-flight checks on every host (reachable, binaries present and
#           runnable, bound TCP ports free, nothing of this cluster running),
#           then starts the sink, the workers and the ventilator, in that
#           order; waits until the sink has written its report, then prints
#           the sink's summary table and where the report (JSON) is.
#           If anything fails to start, stops what it started and exits 1.
#   serve   a standing grid: the same pre-flight checks, then starts the sink
#           and the workers with --serve (they stay up run after run) and
#           returns; no ventilator is started (a ventilator line is optional)
#   submit  runs one ventilator for INPUT (a path on the ventilator line's
#           host, relative to the run directory there; - is not allowed) on
#           that host, or on this machine when the host file has no
#           ventilator line, with the line's flags and VENTILATOR FLAGS;
#           waits while the sink queues it behind other runs, then prints
#           the run's summary table; the run's report (JSON) is kept in
#           RUN_DIR/reports/ on the ventilator's host. Exits with the
#           ventilator's status. Any number of submits may run at once.
#   status  what runs where: each role's host, pid and state, the sink's last
#           progress line
#   down    stops every process this cluster started (SIGTERM, then SIGKILL
#           after ORDERGRID_GRACE seconds): the workers first, then the
#           ventilator, the sink last. Only processes recorded in its pid files whose command
#           line is still the ordergrid binary are signalled.
#   logs    copies every role's logs from its host into
#           ${ORDERGRID_LOGS_DIR:-./ordergrid-logs/CLUSTER}/HOST/ and shows the
#           last lines of each
#
# The host file, one entry per line (blank lines and comments ignored: a #
# at the start of a line or after a blank begins one):
#
#   set NAME=VALUE            an environment variable given to every role
#                             (the rest of the line is the value), e.g.
#                             set ORDERGRID_RESULTS=tcp://10.77.0.1:5558
#   sink HOST [FLAGS...]      exactly one
#   ventilator HOST [FLAGS...]  exactly one for up; at most one otherwise
#   worker HOST [COUNT] [FLAGS...]  COUNT workers on HOST (default 1); any
#                             number of worker lines
#
# FLAGS are the role's own flags (see its --help), split on blanks (no
# quoting: give values with blanks through `set`). A flag on a line wins over
# a `set` variable. Roles run in the run directory, so relative paths (the
# sink's --state, the ventilator's --input) are relative to it. ORDERGRID_*
# variables of the shell running cluster.sh are not passed on to the roles
# (over ssh they could not be); only the host file's `set` lines are.
#
# Example (sink and ventilator on host-a, 4 workers on host-b, 2 on host-c):
#
#   set ORDERGRID_RESULTS=tcp://10.77.0.1:5558
#   set ORDERGRID_ACKS=tcp://10.77.0.1:5559
#   set ORDERGRID_CONTROL=tcp://10.77.0.1:5560
#   set ORDERGRID_JOBS=tcp://10.77.0.1:5557
#   sink host-a --state /var/lib/ordergrid
#   ventilator host-a --input /data/orders.jsonl
#   worker host-b 4 --concurrency 64
#   worker host-c 2
#
# Settings (environment of cluster.sh, else a `set` line of the host file,
# else the default; these are not passed on to the roles):
#   ORDERGRID_LAUNCH      how to reach a host, {host} replaced by the host's
#                         name (default: ssh -o BatchMode=yes -o ConnectTimeout=10 {host});
#                         e.g. 'ip netns exec {host}' for network namespaces,
#                         or 'env' to run every "host" on this machine. The
#                         launcher is given `sh -s` and a script on stdin.
#   ORDERGRID_BIN         folder of the binaries on every host
#                         (default: this repository's target/release)
#   ORDERGRID_CLUSTER     the cluster's name (default: the host file's name
#                         without its extension)
#   ORDERGRID_RUN_DIR     run directory on every host, holding ROLE-N.log
#                         (stderr), ROLE-N.out (stdout), ROLE-N.pid and
#                         ROLE-N.rc (exit status) (default:
#                         /tmp/ordergrid-cluster/CLUSTER)
#   ORDERGRID_UP_TIMEOUT  seconds `up` waits for the report (default 600)
#   ORDERGRID_GRACE       seconds between SIGTERM and SIGKILL (default 10)
#   ORDERGRID_LOGS_DIR    where `logs` copies the logs (default ./ordergrid-logs/CLUSTER)
#
# Exit status: 0 done; 1 a check or a role failed, a host was unreachable or
# the report did not come in time; 2 bad command line or host file.
set -euo pipefail

PROG=$(basename "$0")
exec 3>&2 # the debug output (ORDERGRID_DEBUG=1), past any redirection of stderr
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '3,/^set -euo pipefail$/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
die() {
    echo "$PROG: $*" >&2
    exit 1
}
bad_usage() {
    echo "$PROG: $*" >&2
    echo "usage: $PROG up|serve|status|down|logs HOSTFILE" >&2
    echo "       $PROG submit HOSTFILE INPUT [VENTILATOR FLAGS...]   ($PROG --help for more)" >&2
    exit 2
}
say() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$PROG" "$*" >&2; }

# Single-quotes a word for sh.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# ---------------------------------------------------------------- arguments
case ${1:-} in
-h | --help)
    usage
    exit 0
    ;;
up | serve | status | down | logs) (($# == 2)) || bad_usage "expected a command and a host file" ;;
submit) (($# >= 3)) || bad_usage "expected: submit HOSTFILE INPUT [VENTILATOR FLAGS...]" ;;
'') bad_usage "missing command" ;;
*) bad_usage "unknown command: $1" ;;
esac
CMD=$1
HOSTFILE=$2
shift 2
SUBMIT_INPUT=
SUBMIT_FLAGS=()
if [[ $CMD == submit ]]; then
    SUBMIT_INPUT=$1
    shift
    SUBMIT_FLAGS=("$@")
    [[ -n $SUBMIT_INPUT && $SUBMIT_INPUT != - && $SUBMIT_INPUT != -* ]] ||
        bad_usage "submit needs an input file before the flags (a stream cannot be submitted)"
fi
[[ -f $HOSTFILE && -r $HOSTFILE ]] || bad_usage "cannot read the host file $HOSTFILE"

# ---------------------------------------------------------------- host file
# Cluster-wide settings of this script: never passed on to the roles.
OWN_SETTINGS=" ORDERGRID_LAUNCH ORDERGRID_BIN ORDERGRID_CLUSTER ORDERGRID_RUN_DIR ORDERGRID_UP_TIMEOUT ORDERGRID_GRACE ORDERGRID_LOGS_DIR "
SET_NAMES=()
SET_VALUES=()
I_NAME=()  # sink-1, worker-3, ...
I_ROLE=()  # sink | ventilator | worker
I_HOST=()  # as written in the host file
I_FLAGS=() # the line's flags, separated by \x1f
HOSTS=()   # distinct, in order of appearance
declare -A ROLE_COUNT=([sink]=0 [ventilator]=0 [worker]=0)

file_error() {
    echo "$PROG: $HOSTFILE:$1: $2" >&2
    exit 2
}
add_host() {
    local h
    for h in "${HOSTS[@]}"; do [[ $h == "$1" ]] && return 0; done
    HOSTS+=("$1")
}

lineno=0
while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
    read -ra words <<<"$line"
    # A word starting with # begins a comment.
    for k in "${!words[@]}"; do
        if [[ ${words[k]} == '#'* ]]; then
            words=("${words[@]:0:k}")
            break
        fi
    done
    case ${words[0]} in
    set)
        rest=${line#*set}
        rest=${rest#"${rest%%[![:space:]]*}"}
        [[ $rest =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || file_error "$lineno" "expected: set NAME=VALUE"
        value=${BASH_REMATCH[2]}
        value=${value%%[[:space:]]#*} # a # after a blank begins a comment
        value=${value%"${value##*[![:space:]]}"}
        SET_NAMES+=("${BASH_REMATCH[1]}")
        SET_VALUES+=("$value")
        ;;
    sink | ventilator | worker)
        role=${words[0]}
        ((${#words[@]} >= 2)) || file_error "$lineno" "expected: $role HOST ..."
        host=${words[1]}
        [[ $host != -* ]] || file_error "$lineno" "expected a host before the flags: $role HOST ..."
        count=1
        flags=("${words[@]:2}")
        if [[ $role == worker && ${#flags[@]} -gt 0 && ${flags[0]} =~ ^[0-9]+$ ]]; then
            count=$((10#${flags[0]}))
            ((count >= 1 && count <= 1024)) || file_error "$lineno" "worker COUNT must be from 1 to 1024"
            flags=("${flags[@]:1}")
        fi
        [[ ${#flags[@]} -eq 0 || ${flags[0]} == -* ]] ||
            file_error "$lineno" "unexpected '${flags[0]}': expected $role HOST$([[ $role == worker ]] && echo ' [COUNT]') [FLAGS...]"
        joined=
        ((${#flags[@]} == 0)) || joined=$(printf '%s\x1f' "${flags[@]}")
        for ((k = 0; k < count; k++)); do
            ROLE_COUNT[$role]=$((ROLE_COUNT[$role] + 1))
            I_NAME+=("$role-${ROLE_COUNT[$role]}")
            I_ROLE+=("$role")
            I_HOST+=("$host")
            I_FLAGS+=("$joined")
        done
        add_host "$host"
        ;;
    *) file_error "$lineno" "unknown entry '${words[0]}' (expected set, sink, ventilator or worker)" ;;
    esac
done <"$HOSTFILE"

hostfile_error() {
    echo "$PROG: $HOSTFILE: $1" >&2
    exit 2
}
((ROLE_COUNT[sink] == 1)) || hostfile_error "expected exactly one sink line, found ${ROLE_COUNT[sink]}"
if [[ $CMD == up ]]; then
    ((ROLE_COUNT[ventilator] == 1)) || hostfile_error "expected exactly one ventilator, found ${ROLE_COUNT[ventilator]}"
else
    ((ROLE_COUNT[ventilator] <= 1)) || hostfile_error "expected at most one ventilator, found ${ROLE_COUNT[ventilator]}"
fi
((ROLE_COUNT[worker] >= 1)) || hostfile_error "expected at least one worker"

# The last `set NAME=` of the host file, or nothing (status 1).
set_value() {
    local k
    for ((k = ${#SET_NAMES[@]} - 1; k >= 0; k--)); do
        if [[ ${SET_NAMES[k]} == "$1" ]]; then
            printf '%s' "${SET_VALUES[k]}"
            return 0
        fi
    done
    return 1
}
# A setting of this script: environment, else host file, else the default.
setting() {
    local v
    if [[ -n ${!1:-} ]]; then
        printf '%s' "${!1}"
    elif v=$(set_value "$1") && [[ -n $v ]]; then
        printf '%s' "$v"
    else
        printf '%s' "$2"
    fi
}

CLUSTER_DEFAULT=$(basename "$HOSTFILE")
CLUSTER_DEFAULT=${CLUSTER_DEFAULT%.*}
CLUSTER=$(setting ORDERGRID_CLUSTER "$CLUSTER_DEFAULT")
[[ $CLUSTER =~ ^[A-Za-z0-9._-]+$ ]] || die "cluster name '$CLUSTER' must be letters, digits, '.', '_' or '-' (set ORDERGRID_CLUSTER)"
LAUNCH=$(setting ORDERGRID_LAUNCH 'ssh -o BatchMode=yes -o ConnectTimeout=10 {host}')
BIN=$(setting ORDERGRID_BIN "$ROOT/target/release")
RUN_DIR=$(setting ORDERGRID_RUN_DIR "/tmp/ordergrid-cluster/$CLUSTER")
UP_TIMEOUT=$(setting ORDERGRID_UP_TIMEOUT 600)
GRACE=$(setting ORDERGRID_GRACE 10)
LOGS_DIR=$(setting ORDERGRID_LOGS_DIR "./ordergrid-logs/$CLUSTER")
[[ $UP_TIMEOUT =~ ^[0-9]+$ ]] || die "ORDERGRID_UP_TIMEOUT must be a number of seconds, not '$UP_TIMEOUT'"
[[ $GRACE =~ ^[0-9]+$ ]] || die "ORDERGRID_GRACE must be a number of seconds, not '$GRACE'"
[[ $RUN_DIR == /* ]] || die "ORDERGRID_RUN_DIR must be an absolute path, not '$RUN_DIR'"
[[ $BIN == /* ]] || die "ORDERGRID_BIN must be an absolute path, not '$BIN'"

# The value of a role's setting: its line's --FLAG, else the host file's
# `set ENV=`, else the binary's default.
effective() { # instance flag env default
    local -a f
    local k
    IFS=$'\x1f' read -ra f <<<"${I_FLAGS[$1]}"
    for ((k = ${#f[@]} - 1; k >= 0; k--)); do
        if [[ ${f[k]} == "--$2="* ]]; then
            printf '%s' "${f[k]#--"$2"=}"
            return
        elif [[ ${f[k]} == "--$2" ]] && ((k + 1 < ${#f[@]})); then
            printf '%s' "${f[k + 1]}"
            return
        fi
    done
    set_value "$3" || printf '%s' "$4"
}
# effective() for the ventilator line; without one, `set` or the default.
vent_effective() { # flag env default
    if [[ -n $VENT ]]; then
        effective "$VENT" "$@"
    else
        set_value "$2" || printf '%s' "$3"
    fi
}
instance_of() { # role -> index of its first instance
    local k
    for k in "${!I_ROLE[@]}"; do [[ ${I_ROLE[k]} == "$1" ]] && echo "$k" && return; done
}
SINK=$(instance_of sink)
VENT=$(instance_of ventilator)
SINK_HOST=${I_HOST[SINK]}
VENT_HOST=
[[ -z $VENT ]] || VENT_HOST=${I_HOST[VENT]}
# serve: the sink and the workers stay up run after run.
SERVE=0
[[ $CMD == serve ]] && SERVE=1

# Endpoints' defaults as in each binary's --help.
endpoint_host() { # tcp://HOST:PORT -> HOST ('' when not tcp)
    local e=${1#tcp://}
    [[ $1 == tcp://* ]] || return 0
    e=${e%:*}
    e=${e#[}
    printf '%s' "${e%]}"
}
endpoint_port() { # tcp://HOST:PORT -> PORT ('' when not tcp or not a number)
    local p=${1##*:}
    [[ $1 == tcp://* && $p =~ ^[0-9]+$ ]] && printf '%s' "$p"
    return 0
}
is_local_only() { # loopback or wildcard: reaches only the host it runs on
    case $1 in
    127.* | localhost | ::1 | 0.0.0.0 | '*' | :: | ip6-localhost) return 0 ;;
    esac
    return 1
}

# ---------------------------------------------------------------- launching
TIMEOUT=()
command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout --kill-after=5)
# Runs the sh script $3 on host $1 through the launcher, at most $2 seconds.
remote() {
    local -a words
    read -ra words <<<"${LAUNCH//\{host\}/$1}"
    if [[ -n ${ORDERGRID_DEBUG:-} ]]; then
        printf '%s: on %s through %s:\n%s\n' "$PROG" "$1" "${words[*]} sh -s" "$3" >&3
    fi
    if ((${#TIMEOUT[@]})); then
        "${TIMEOUT[@]}" "$2" "${words[@]}" sh -s <<<"$3"
    else
        "${words[@]}" sh -s <<<"$3"
    fi
}
launch_shown() { printf '%s' "${LAUNCH//\{host\}/$1}"; }

# Common head of every script run on a host: settings and helpers.
prelude() {
    cat <<EOF
og_dir=$(q "$RUN_DIR")
og_bin=$(q "$BIN")
EOF
    cat <<'EOF'
# Prints the pid of instance $1 (binary $2) if it runs and is still ours.
og_alive() {
    [ -f "$og_dir/$1.pid" ] || return 1
    og_p=$(cat "$og_dir/$1.pid" 2>/dev/null) || return 1
    case $og_p in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$og_p" 2>/dev/null || return 1
    if [ -r "/proc/$og_p/cmdline" ]; then
        og_c=$(tr '\000' ' ' <"/proc/$og_p/cmdline")
    else
        og_c=$(ps -o args= -p "$og_p" 2>/dev/null) || return 1
    fi
    case $og_c in *"/$2 "* | *"/$2") echo "$og_p" ;; *) return 1 ;; esac
}
# Succeeds when something listens on TCP port $1 on this host.
og_listening() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -ltn "sport = :$1" 2>/dev/null | tail -n +2)" ]
    else
        og_h=$(printf '%04X' "$1")
        for og_f in /proc/net/tcp /proc/net/tcp6; do
            [ -r "$og_f" ] || continue
            awk -v h="$og_h" '$4 == "0A" { n = split($2, a, ":"); if (toupper(a[n]) == h) f = 1 } END { exit !f }' "$og_f" && return 0
        done
        return 1
    fi
}
# Says what is wrong with binary $1, if anything.
og_check_binary() {
    if [ ! -x "$og_bin/$1" ]; then
        echo "ERR $og_bin/$1: missing or not executable (build with cargo build --release, or set ORDERGRID_BIN)"
    elif ! "$og_bin/$1" --version >/dev/null 2>&1; then
        echo "ERR $og_bin/$1 does not run: $("$og_bin/$1" --version 2>&1 | tail -n 1)"
    fi
}
# The state of instance $1 (binary $2): running PID | exited RC | died | not-started
og_state() {
    if og_p=$(og_alive "$1" "$2"); then
        echo "running $og_p"
    elif [ -s "$og_dir/$1.rc" ]; then
        echo "exited $(cat "$og_dir/$1.rc")"
    elif [ -f "$og_dir/$1.pid" ]; then
        echo "died"
    else
        echo "not-started"
    fi
}
EOF
}

# The environment of the roles: nothing inherited, the host file's `set` lines.
role_env() {
    local k
    printf '%s\n' 'for og_v in $(env | sed -n "s/^\(ORDERGRID_[A-Za-z0-9_]*\)=.*/\1/p"); do unset "$og_v"; done'
    for k in "${!SET_NAMES[@]}"; do
        [[ $OWN_SETTINGS == *" ${SET_NAMES[k]} "* ]] && continue
        printf 'export %s=%s\n' "${SET_NAMES[k]}" "$(q "${SET_VALUES[k]}")"
    done
}

# The start of instance $1: a wrapper records the binary's pid, waits for it
# and records its exit status; setsid + nohup so that it outlives the launcher.
start_line() {
    local k=$1 f
    local -a flags
    IFS=$'\x1f' read -ra flags <<<"${I_FLAGS[k]}"
    printf 'og_start %s %s' "${I_NAME[k]}" "ordergrid-${I_ROLE[k]}"
    for f in "${flags[@]}"; do printf ' %s' "$(q "$f")"; done
    ((SERVE)) && [[ ${I_ROLE[k]} != ventilator ]] && printf ' --serve'
    printf '\n'
}
starter() {
    cat <<'EOF'
og_setsid=
command -v setsid >/dev/null 2>&1 && og_setsid=setsid
og_start() {
    og_n=$1 og_b=$2
    shift 2
    rm -f "$og_n.pid" "$og_n.rc"
    $og_setsid nohup sh -c 'n=$1; shift; "$@" & p=$!; echo "$p" >"$n.pid"; wait "$p"; echo "$?" >"$n.rc"' \
        og-run "$og_n" "$og_bin/$og_b" "$@" </dev/null >"$og_n.out" 2>"$og_n.log" &
    og_i=0
    until [ -s "$og_n.pid" ]; do
        og_i=$((og_i + 1))
        if [ "$og_i" -gt 100 ]; then
            echo "FAIL $og_n: no pid after 10 s"
            return 1
        fi
        sleep 0.1
    done
    echo "STARTED $og_n $(cat "$og_n.pid")"
}
# Waits up to 10 s for instance $1 (binary $2) to listen on the ports $3...
og_wait_listening() {
    og_n=$1 og_b=$2
    shift 2
    og_i=0
    for og_port in "$@"; do
        until og_listening "$og_port"; do
            if ! og_alive "$og_n" "$og_b" >/dev/null; then
                sleep 0.2
                # A run already complete: the role prints its report and exits 0.
                [ "$(og_state "$og_n" "$og_b")" = "exited 0" ] && return 0
                echo "FAIL $og_n exited ($(og_state "$og_n" "$og_b")) before listening on port $og_port"
                return 1
            fi
            og_i=$((og_i + 1))
            if [ "$og_i" -gt 100 ]; then
                echo "FAIL $og_n does not listen on port $og_port after 10 s"
                return 1
            fi
            sleep 0.1
        done
    done
}
EOF
}

# ---------------------------------------------------------------- checks
check_endpoints() {
    local errors=0 k role host e eh
    local sink_results sink_acks sink_control vent_jobs
    sink_results=$(effective "$SINK" results ORDERGRID_RESULTS tcp://127.0.0.1:5558)
    sink_acks=$(effective "$SINK" acks ORDERGRID_ACKS tcp://127.0.0.1:5559)
    sink_control=$(effective "$SINK" control ORDERGRID_CONTROL tcp://127.0.0.1:5560)
    vent_jobs=$(vent_effective jobs ORDERGRID_JOBS tcp://127.0.0.1:5557)
    complain() {
        echo "$PROG: $*" >&2
        errors=$((errors + 1))
    }
    # A connecting role on another host than the binding one cannot reach a
    # loopback or wildcard address, nor a binding role bound to loopback.
    cross() { # name host endpoint what peer-host peer-bound
        local eh bh
        [[ $2 == "$5" ]] && return 0
        eh=$(endpoint_host "$3")
        bh=$(endpoint_host "$6")
        if [[ -n $eh ]] && is_local_only "$eh"; then
            complain "$1 on $2 would connect to $3 ($4), which only reaches $2 itself: set it to an address of $5"
        elif [[ -n $bh && $bh != 0.0.0.0 && $bh != '*' && $bh != :: ]] && is_local_only "$bh"; then
            complain "$4 is bound to $6 on $5, which $1 on $2 cannot reach: bind it to 0.0.0.0 or an address of $5"
        fi
    }
    for k in "${!I_NAME[@]}"; do
        role=${I_ROLE[k]}
        host=${I_HOST[k]}
        case $role in
        worker)
            cross "${I_NAME[k]}" "$host" "$(effective "$k" results ORDERGRID_RESULTS tcp://127.0.0.1:5558)" "the sink's results" "$SINK_HOST" "$sink_results"
            cross "${I_NAME[k]}" "$host" "$(effective "$k" control ORDERGRID_CONTROL tcp://127.0.0.1:5560)" "the sink's control" "$SINK_HOST" "$sink_control"
            # A standing worker learns each run's jobs endpoint from the sink.
            ((SERVE)) || cross "${I_NAME[k]}" "$host" "$(effective "$k" jobs ORDERGRID_JOBS tcp://127.0.0.1:5557)" "the ventilator's jobs" "$VENT_HOST" "$vent_jobs"
            ;;
        ventilator)
            cross "${I_NAME[k]}" "$host" "$(effective "$k" acks ORDERGRID_ACKS tcp://127.0.0.1:5559)" "the sink's acks" "$SINK_HOST" "$sink_acks"
            ;;
        esac
    done
    # Ports bound on one host must differ.
    if [[ $SINK_HOST == "$VENT_HOST" ]]; then
        for e in "$sink_results" "$sink_acks" "$sink_control"; do
            eh=$(endpoint_port "$e")
            [[ -n $eh && $eh == "$(endpoint_port "$vent_jobs")" ]] &&
                complain "the sink ($e) and the ventilator ($vent_jobs) would bind the same port on $SINK_HOST"
        done
    fi
    ((errors == 0)) || exit 1
}

# The TCP ports that the sink binds, and the ventilator (space-separated).
sink_ports() {
    local p ports=()
    for p in "$(endpoint_port "$(effective "$SINK" results ORDERGRID_RESULTS tcp://127.0.0.1:5558)")" \
        "$(endpoint_port "$(effective "$SINK" acks ORDERGRID_ACKS tcp://127.0.0.1:5559)")" \
        "$(endpoint_port "$(effective "$SINK" control ORDERGRID_CONTROL tcp://127.0.0.1:5560)")"; do
        [[ -z $p ]] || ports+=("$p")
    done
    echo "${ports[*]}"
}
vent_ports() { endpoint_port "$(vent_effective jobs ORDERGRID_JOBS tcp://127.0.0.1:5557)"; }
# The TCP ports that the roles of host $1 bind, one a line.
bound_ports() {
    local p
    if [[ $1 == "$SINK_HOST" ]]; then
        for p in $(sink_ports); do echo "$p"; done
    fi
    if [[ $1 == "$VENT_HOST" ]] && ((!SERVE)); then
        p=$(vent_ports)
        [[ -z $p ]] || echo "$p"
    fi
}

# Pre-flight on every host; prints one line per problem and exits 1 if any.
preflight() {
    local host out errors=0 k port script
    local -a seen
    for host in "${HOSTS[@]}"; do
        if ! out=$(remote "$host" 30 'echo og-reachable' 2>&1) || [[ $out != *og-reachable* ]]; then
            echo "$PROG: $host: unreachable through '$(launch_shown "$host")': $(tail -n 1 <<<"$out")" >&2
            errors=$((errors + 1))
            continue
        fi
        seen=()
        script="$(prelude)"$'\n'
        script+="mkdir -p \"\$og_dir\" 2>/dev/null && [ -w \"\$og_dir\" ] || echo \"ERR cannot create or write the run directory \$og_dir\""$'\n'
        for k in "${!I_NAME[@]}"; do
            [[ ${I_HOST[k]} == "$host" ]] || continue
            ((SERVE)) && [[ ${I_ROLE[k]} == ventilator ]] && continue
            if [[ " ${seen[*]} " != *" ${I_ROLE[k]} "* ]]; then
                seen+=("${I_ROLE[k]}")
                script+="og_check_binary ordergrid-${I_ROLE[k]}"$'\n'
            fi
            script+="p=\$(og_alive ${I_NAME[k]} ordergrid-${I_ROLE[k]}) && echo \"ERR ${I_NAME[k]} of cluster $CLUSTER already runs (pid \$p): run '$PROG down' first\""$'\n'
        done
        while read -r port; do
            [[ -n $port ]] || continue
            script+="og_listening $port && echo \"ERR TCP port $port is already in use\""$'\n'
        done < <(bound_ports "$host")
        if [[ $host == "$VENT_HOST" ]] && ((!SERVE)); then
            local input
            input=$(effective "$VENT" input ORDERGRID_INPUT '')
            if [[ -n $input && $input != - ]]; then
                [[ $input == /* ]] || input=$RUN_DIR/${input#./}
                script+="[ -r $(q "$input") ] || echo \"ERR the ventilator's --input $input is not a readable file\""$'\n'
            fi
        fi
        script+="echo og-done"$'\n'
        if ! out=$(remote "$host" 60 "$script" 2>&1) || [[ $out != *og-done* ]]; then
            echo "$PROG: $host: the checks did not run: $(tail -n 1 <<<"$out")" >&2
            errors=$((errors + 1))
            continue
        fi
        while IFS= read -r line; do
            if [[ $line == ERR\ * ]]; then
                echo "$PROG: $host: ${line#ERR }" >&2
                errors=$((errors + 1))
            fi
        done <<<"$out"
    done
    ((errors == 0)) || die "$errors pre-flight check(s) failed: nothing started"
    say "pre-flight checks passed on ${#HOSTS[@]} host(s): ${HOSTS[*]}"
}

# ---------------------------------------------------------------- up
# Starts the instances of role $2 on host $1; then waits until they listen
# on their ports (sink, ventilator) or, after a moment, are still alive.
start_on() {
    local host=$1 role=$2 k out line script bound='' failed=0
    script="$(prelude)"$'\n'"$(starter)"$'\n'"$(role_env)"$'\n'
    script+='cd "$og_dir" || { echo "FAIL cannot enter $og_dir"; exit 1; }'$'\n'
    script+='og_rc=0'$'\n'
    for k in "${!I_NAME[@]}"; do
        [[ ${I_HOST[k]} == "$host" && ${I_ROLE[k]} == "$role" ]] || continue
        script+="$(start_line "$k") || og_rc=1"$'\n'
    done
    case $role in
    sink) bound=$(sink_ports) ;;
    ventilator) bound=$(vent_ports) ;;
    esac
    if [[ $role == worker ]]; then
        script+='sleep 1'$'\n'
    fi
    for k in "${!I_NAME[@]}"; do
        [[ ${I_HOST[k]} == "$host" && ${I_ROLE[k]} == "$role" ]] || continue
        if [[ $role == worker ]]; then
            script+="og_alive ${I_NAME[k]} ordergrid-$role >/dev/null || { echo \"FAIL ${I_NAME[k]} exited at once (\$(og_state ${I_NAME[k]} ordergrid-$role))\"; og_rc=1; }"$'\n'
        else
            script+="og_wait_listening ${I_NAME[k]} ordergrid-$role $bound || og_rc=1"$'\n'
        fi
    done
    script+='echo "og-done $og_rc"'$'\n'
    out=$(remote "$host" 60 "$script" 2>&1) || failed=1
    while IFS= read -r line; do
        case $line in
        STARTED\ *)
            read -r _ name pid <<<"$line"
            say "started $name on $host (pid $pid)"
            ;;
        FAIL\ *)
            echo "$PROG: $host: ${line#FAIL }" >&2
            failed=1
            ;;
        "og-done 0") ;;
        og-done\ *) failed=1 ;;
        esac
    done <<<"$out"
    [[ $out == *og-done* ]] || {
        echo "$PROG: $host: starting the ${role}s did not finish: $(tail -n 1 <<<"$out")" >&2
        failed=1
    }
    if ((failed)); then
        show_failed_logs "$host" "$role"
        return 1
    fi
}

# The last lines of the logs of the role $2 instances on host $1.
show_failed_logs() {
    local k script
    script="$(prelude)"$'\n'
    for k in "${!I_NAME[@]}"; do
        [[ ${I_HOST[k]} == "$1" && ${I_ROLE[k]} == "$2" ]] || continue
        script+="echo \"--- ${I_NAME[k]} on $1: \$og_dir/${I_NAME[k]}.log (last lines)\"; tail -n 8 \"\$og_dir/${I_NAME[k]}.log\" 2>/dev/null"$'\n'
    done
    remote "$1" 30 "$script" >&2 2>&1 || true
}

# The report's path on the sink's host.
report_path() {
    local state report
    state=$(effective "$SINK" state ORDERGRID_STATE ./ordergrid-state)
    report=$(effective "$SINK" report ORDERGRID_REPORT '')
    [[ -n $report ]] || report=$state/report.json
    [[ $report == /* ]] || report=$RUN_DIR/${report#./}
    printf '%s' "$report"
}

cmd_up() {
    local host k failure=0
    check_endpoints
    preflight
    start_failed() {
        say "stopping what was started"
        cmd_down >&2 || true
        die "up failed: see the lines above (logs stay in $RUN_DIR on each host)"
    }
    trap 'echo; say "interrupted: what was started keeps running ($PROG status|down $HOSTFILE)"; exit 130' INT
    start_on "$SINK_HOST" sink || start_failed
    for host in "${HOSTS[@]}"; do
        for k in "${!I_NAME[@]}"; do
            if [[ ${I_HOST[k]} == "$host" && ${I_ROLE[k]} == worker ]]; then
                start_on "$host" worker || start_failed
                break
            fi
        done
    done
    start_on "$VENT_HOST" ventilator || start_failed
    say "all roles started; waiting up to ${UP_TIMEOUT}s for the sink's report"
    wait_report || failure=1
    trap - INT
    return "$failure"
}

# Polls the sink until it has exited; prints its table and report.
wait_report() {
    local report deadline out state progress last_progress='' polls=0 vstate misses=0
    report=$(report_path)
    deadline=$((SECONDS + UP_TIMEOUT))
    local script
    script="$(prelude)"$'\n'
    script+="echo \"STATE \$(og_state ${I_NAME[SINK]} ordergrid-sink)\""$'\n'
    script+="echo \"PROGRESS \$(grep -a ' progress' \"\$og_dir/${I_NAME[SINK]}.log\" 2>/dev/null | tail -n 1)\""$'\n'
    while :; do
        if ((SECONDS >= deadline)); then
            say "no report after ${UP_TIMEOUT}s; the grid keeps running ($PROG status|logs|down $HOSTFILE)"
            return 1
        fi
        sleep 1
        polls=$((polls + 1))
        out=$(remote "$SINK_HOST" 30 "$script" 2>/dev/null) || {
            ((misses++ % 30)) || say "cannot reach the sink's host $SINK_HOST through '$(launch_shown "$SINK_HOST")' (retrying)"
            continue
        }
        misses=0
        state=$(sed -n 's/^STATE //p' <<<"$out")
        progress=$(sed -n 's/^PROGRESS //p' <<<"$out")
        if [[ -n $progress && $progress != "$last_progress" && $((polls % 5)) -eq 0 ]]; then
            say "sink: ${progress#*progress }"
            last_progress=$progress
        fi
        case $state in
        running\ *) ;;
        "exited 0") break ;;
        *)
            echo "$PROG: the sink on $SINK_HOST stopped without completing the run ($state)" >&2
            show_failed_logs "$SINK_HOST" sink
            return 1
            ;;
        esac
        if ((polls % 5 == 0)); then
            vstate=$(remote "$VENT_HOST" 30 "$(prelude)"$'\n'"og_state ${I_NAME[VENT]} ordergrid-ventilator" 2>/dev/null) || continue
            case $vstate in
            running\ * | "exited 0") ;;
            *)
                echo "$PROG: the ventilator on $VENT_HOST stopped before the run was complete ($vstate)" >&2
                show_failed_logs "$VENT_HOST" ventilator
                return 1
                ;;
            esac
        fi
    done
    # The sink's table (its stdout), and the report's path.
    out=$(remote "$SINK_HOST" 30 "$(prelude)"$'\n'"cat \"\$og_dir/${I_NAME[SINK]}.out\"; [ -s $(q "$report") ] && echo og-report") ||
        die "the sink exited 0 but its output on $SINK_HOST cannot be read"
    [[ $out == *og-report* ]] || die "the sink exited 0 but wrote no report at $SINK_HOST:$report"
    sed '/^og-report$/d' <<<"$out"
    say "the run is complete; report: $SINK_HOST:$report"
}

# ---------------------------------------------------------------- serve
cmd_serve() {
    local host k
    check_endpoints
    preflight
    start_failed() {
        say "stopping what was started"
        cmd_down >&2 || true
        die "serve failed: see the lines above (logs stay in $RUN_DIR on each host)"
    }
    trap 'echo; say "interrupted: what was started keeps running ($PROG status|down $HOSTFILE)"; exit 130' INT
    start_on "$SINK_HOST" sink || start_failed
    for host in "${HOSTS[@]}"; do
        for k in "${!I_NAME[@]}"; do
            if [[ ${I_HOST[k]} == "$host" && ${I_ROLE[k]} == worker ]]; then
                start_on "$host" worker || start_failed
                break
            fi
        done
    done
    trap - INT
    say "the standing grid is up: the sink on $SINK_HOST, ${ROLE_COUNT[worker]} worker(s); submit runs with: $PROG submit $HOSTFILE INPUT"
}

# ---------------------------------------------------------------- submit
# The ventilator line's flags without any --input (the submit names it).
submit_line_flags() {
    local -a f
    local k skip=0
    [[ -n $VENT ]] || return 0
    IFS=$'\x1f' read -ra f <<<"${I_FLAGS[VENT]}"
    for k in "${!f[@]}"; do
        if ((skip)); then
            skip=0
        elif [[ ${f[k]} == --input ]]; then
            skip=1
        elif [[ ${f[k]} != --input=* ]]; then
            printf '%s\n' "${f[k]}"
        fi
    done
}
cmd_submit() {
    local name script f where words
    local -a launcher
    name=submit-$(date +%Y%m%d-%H%M%S)-$$
    script="$(prelude)"$'\n'"$(role_env)"$'\n'
    script+='mkdir -p "$og_dir/reports" && cd "$og_dir" || { echo "cannot use the run directory $og_dir" >&2; exit 1; }'$'\n'
    script+='"$og_bin/ordergrid-ventilator"'
    while IFS= read -r f; do script+=" $(q "$f")"; done < <(submit_line_flags)
    script+=" --input $(q "$SUBMIT_INPUT")"
    for f in "${SUBMIT_FLAGS[@]}"; do script+=" $(q "$f")"; done
    script+=" --report $(q "reports/$name.json") >$(q "reports/$name.out")"$'\n'
    script+='og_rc=$?; cat '"$(q "reports/$name.out")"'; exit $og_rc'$'\n'
    if [[ -n $VENT_HOST ]]; then
        where=$VENT_HOST
        read -ra launcher <<<"${LAUNCH//\{host\}/$VENT_HOST}"
    else
        where="this machine"
        launcher=(env)
    fi
    say "submitting $SUBMIT_INPUT from $where to the sink on $SINK_HOST"
    # No time-out and no process group of its own: Ctrl-C reaches the
    # ventilator, which leaves the sink's queue.
    local rc=0
    "${launcher[@]}" sh -s <<<"$script" || rc=$?
    if ((rc == 0)); then
        say "run complete; its report: $where:$RUN_DIR/reports/$name.json"
    else
        say "the ventilator exited $rc (its messages above)"
    fi
    return "$rc"
}

# ---------------------------------------------------------------- status
cmd_status() {
    local host k out line name rest unreachable=0
    printf '%-14s %-24s %-8s %s\n' ROLE HOST PID STATE
    for host in "${HOSTS[@]}"; do
        local script
        script="$(prelude)"$'\n'
        for k in "${!I_NAME[@]}"; do
            [[ ${I_HOST[k]} == "$host" ]] || continue
            script+="echo \"${I_NAME[k]} \$(og_state ${I_NAME[k]} ordergrid-${I_ROLE[k]})\""$'\n'
        done
        if [[ $host == "$SINK_HOST" ]]; then
            script+="echo \"og-progress \$(grep -a ' progress' \"\$og_dir/${I_NAME[SINK]}.log\" 2>/dev/null | tail -n 1)\""$'\n'
            script+="[ -s $(q "$(report_path)") ] && echo \"og-report $(report_path)\""$'\n'
        fi
        script+="echo og-done"$'\n'
        if ! out=$(remote "$host" 30 "$script" 2>&1) || [[ $out != *og-done* ]]; then
            for k in "${!I_NAME[@]}"; do
                [[ ${I_HOST[k]} == "$host" ]] && printf '%-14s %-24s %-8s %s\n' "${I_NAME[k]}" "$host" - "unreachable"
            done
            echo "$PROG: $host: unreachable through '$(launch_shown "$host")': $(tail -n 1 <<<"$out")" >&2
            unreachable=1
            continue
        fi
        while IFS= read -r line; do
            read -r name rest <<<"$line"
            case $name in
            og-done) ;;
            og-progress) [[ -n $rest ]] && SINK_PROGRESS=$rest ;;
            og-report) SINK_REPORT=$rest ;;
            *)
                case $rest in
                running\ *) printf '%-14s %-24s %-8s %s\n' "$name" "$host" "${rest#running }" running ;;
                *) printf '%-14s %-24s %-8s %s\n' "$name" "$host" - "$rest" ;;
                esac
                ;;
            esac
        done <<<"$out"
    done
    [[ -z ${SINK_PROGRESS:-} ]] || echo "sink's last progress: ${SINK_PROGRESS#*progress }"
    [[ -z ${SINK_REPORT:-} ]] || echo "report: $SINK_HOST:$SINK_REPORT"
    echo "run directory: $RUN_DIR on each host"
    return "$unreachable"
}

# ---------------------------------------------------------------- down
# Stops the instances of the roles "$2" on host $1: SIGTERM, then SIGKILL after the grace.
stop_script() {
    local host=$1 which=$2 k
    prelude
    echo 'og_sent=""'
    for k in "${!I_NAME[@]}"; do
        [[ ${I_HOST[k]} == "$host" && " $which " == *" ${I_ROLE[k]} "* ]] || continue
        echo "if og_p=\$(og_alive ${I_NAME[k]} ordergrid-${I_ROLE[k]}); then kill -TERM \"\$og_p\" && og_sent=\"\$og_sent ${I_NAME[k]}:\$og_p\"; echo \"${I_NAME[k]} SIGTERM (pid \$og_p)\"; fi"
    done
    cat <<EOF
og_i=0
og_left=\$og_sent
while [ -n "\$og_left" ] && [ "\$og_i" -lt $((GRACE * 10)) ]; do
    sleep 0.1
    og_i=\$((og_i + 1))
    og_still=""
    for og_np in \$og_left; do
        kill -0 "\${og_np#*:}" 2>/dev/null && og_still="\$og_still \$og_np"
    done
    og_left=\$og_still
done
for og_np in \$og_left; do
    kill -KILL "\${og_np#*:}" 2>/dev/null && echo "\${og_np%%:*} SIGKILL after ${GRACE}s (pid \${og_np#*:})"
done
sleep 0.2
for og_np in \$og_sent; do
    og_n=\${og_np%%:*}
    echo "\$og_n stopped (exit status \$(cat "\$og_dir/\$og_n.rc" 2>/dev/null || echo unknown))"
done
echo og-done
EOF
}
# Runs the stop script for roles $1 on every host in parallel.
stop_roles() {
    local which=$1 host tmp k i=0 status=0 any
    local -a pids=() hosts=()
    tmp=$(mktemp -d)
    for host in "${HOSTS[@]}"; do
        any=0
        for k in "${!I_NAME[@]}"; do
            [[ ${I_HOST[k]} == "$host" && " $which " == *" ${I_ROLE[k]} "* ]] && any=1
        done
        ((any)) || continue
        remote "$host" $((GRACE + 60)) "$(stop_script "$host" "$which")" >"$tmp/$i" 2>&1 &
        pids+=($!)
        hosts+=("$host")
        i=$((i + 1))
    done
    for i in "${!pids[@]}"; do
        if wait "${pids[i]}" && grep -q '^og-done$' "$tmp/$i"; then
            sed "/^og-done$/d; s/^/${hosts[i]}: /" "$tmp/$i"
        else
            echo "$PROG: ${hosts[i]}: could not stop its roles through '$(launch_shown "${hosts[i]}")': $(tail -n 1 "$tmp/$i")" >&2
            status=1
        fi
    done
    rm -rf "$tmp"
    return "$status"
}
cmd_down() {
    local status=0
    # Workers first (each finishes what it holds and hands it to the sink),
    # then the ventilator, the sink last.
    say "stopping the workers of cluster $CLUSTER"
    stop_roles worker || status=1
    say "stopping the ventilator"
    stop_roles ventilator || status=1
    say "stopping the sink"
    stop_roles "sink" || status=1
    ((status == 0)) && say "cluster $CLUSTER is down"
    return "$status"
}

# ---------------------------------------------------------------- logs
cmd_logs() {
    local host k out status=0 dest rc script
    local -a files
    for host in "${HOSTS[@]}"; do
        dest=$LOGS_DIR/$host
        mkdir -p "$dest"
        files=()
        for k in "${!I_NAME[@]}"; do
            [[ ${I_HOST[k]} == "$host" ]] && files+=("${I_NAME[k]}.log" "${I_NAME[k]}.out" "${I_NAME[k]}.rc" "${I_NAME[k]}.pid")
        done
        script="cd $(q "$RUN_DIR") 2>/dev/null || { echo 'no run directory $RUN_DIR' >&2; exit 3; }"$'\n'
        script+="og_f=; for f in ${files[*]}; do [ -f \"\$f\" ] && og_f=\"\$og_f \$f\"; done"$'\n'
        script+='[ -n "$og_f" ] || { echo "no logs in $PWD" >&2; exit 4; }; tar -cf - $og_f'$'\n'
        rc=0
        remote "$host" 120 "$script" >"$dest/.logs.tar" 2>"$dest/.stderr" || rc=$?
        if ((rc == 0)) && tar -xf "$dest/.logs.tar" -C "$dest" 2>>"$dest/.stderr"; then
            rm -f "$dest/.logs.tar" "$dest/.stderr"
        else
            echo "$PROG: $host: could not gather the logs through '$(launch_shown "$host")': $(tail -n 1 "$dest/.stderr")" >&2
            rm -f "$dest/.logs.tar" "$dest/.stderr"
            status=1
            continue
        fi
        for k in "${!I_NAME[@]}"; do
            [[ ${I_HOST[k]} == "$host" ]] || continue
            out=$dest/${I_NAME[k]}.log
            if [[ -f $out ]]; then
                echo "=== $out ($(wc -l <"$out") lines; exit status: $(cat "$dest/${I_NAME[k]}.rc" 2>/dev/null || echo none yet))"
                tail -n 3 "$out"
            else
                echo "=== ${I_NAME[k]} on $host: no log (not started?)"
            fi
        done
    done
    if ((status == 0)); then
        echo "logs gathered in $LOGS_DIR/HOST/"
    else
        echo "$PROG: logs not gathered from every host (was the cluster started? $PROG up $HOSTFILE)" >&2
    fi
    return "$status"
}

case $CMD in
up) cmd_up ;;
serve) cmd_serve ;;
submit) cmd_submit ;;
status) cmd_status ;;
down) cmd_down ;;
logs) cmd_logs ;;
esac
