#!/usr/bin/env bash
# The grid across real hosts: three Linux network namespaces on this machine,
# each with its own address on a private /24, joined by veth pairs to a bridge
# that lives in a fourth namespace (nothing is added to the root namespace and
# no traffic leaves these namespaces). scripts/cluster.sh starts the roles
# with ORDERGRID_LAUNCH='ip netns exec {host}':
#
#   og-a-PID   10.231.77.1   sink + ventilator (bound on 0.0.0.0)
#   og-b-PID   10.231.77.2   2 workers          link degraded during the run
#   og-c-PID   10.231.77.3   2 workers          cut off (link down) mid-run
#
# While the run goes on, og-b's link is throttled (tc tbf, both directions;
# plus netem delay and loss where the kernel has netem, and random drops with
# nftables where nft works), then og-c's link goes down while its workers
# hold orders, and stays down. The run must complete with a report whose
# orders, rejected, payments and stock sections equal tests/oracle.py's.
# Every namespace (and so every veth, the bridge and every process in them)
# is removed on the way out, also on failure.
#
#   sudo tests/multihost.sh
#
# Needs root, ip and tc (iproute2), python3, and cargo unless ORDERGRID_BIN
# names a folder of built binaries. Environment:
#   ORDERGRID_BIN        binaries to use (default: cargo build, then target/debug)
#   MULTIHOST_ORDERS     orders in the input (default 20000)
#   MULTIHOST_TIMEOUT    seconds for the whole run after the build (default 240)
#   MULTIHOST_SECURITY   auto (default) | key | insecure | none: how the roles
#                        are allowed on non-loopback addresses. auto: a key
#                        from ordergrid-keygen if the binaries take --key-file,
#                        else ORDERGRID_INSECURE=1 if they take --insecure,
#                        else nothing
#   MULTIHOST_KEEP=1     keep the work folder (logs, state) even on success
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=$ROOT/scripts/cluster.sh
ORDERS=${MULTIHOST_ORDERS:-20000}
TIMEOUT=${MULTIHOST_TIMEOUT:-240}
SECURITY=${MULTIHOST_SECURITY:-auto}
SUBNET=10.231.77
SUF=$$
NS_A=og-a-$SUF
NS_B=og-b-$SUF
NS_C=og-c-$SUF
NS_SW=og-sw-$SUF
NAMESPACES=("$NS_A" "$NS_B" "$NS_C" "$NS_SW")

step() { printf '\n==> %s multihost: %s\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '    %s\n' "$*"; }
fail() {
    printf '\nmultihost: FAIL: %s\n' "$*" >&2
    exit 1
}
# Prerequisites: printed, and a non-zero exit (CI runs as root: it must run).
cannot_run() {
    printf 'multihost: cannot run: %s\n' "$*" >&2
    exit 1
}

((EUID == 0)) || cannot_run "needs root (it creates network namespaces, veth pairs and qdiscs); run it with sudo"
for c in ip tc python3 setsid timeout ss; do
    command -v "$c" >/dev/null 2>&1 || cannot_run "needs '$c' on PATH"
done
if ! [[ $ORDERS =~ ^[0-9]+$ ]] || ((ORDERS < 2000)); then
    cannot_run "MULTIHOST_ORDERS must be a number >= 2000"
fi

WORK=$(mktemp -d /tmp/og-multihost.XXXXXX)
HOSTFILE=$WORK/multihost.hosts
RUN=$WORK/run
UP_PID=
STARTED=0
PASSED=0

# ---------------------------------------------------------------- cleanup
cleanup() {
    local rc=$? ns pids
    trap - EXIT INT TERM
    set +e
    if ((!PASSED)); then
        echo
        echo "---- diagnostics (work folder $WORK)"
        [[ -f $WORK/up.out ]] && {
            echo "---- cluster.sh up:"
            tail -n 30 "$WORK/up.out"
        }
        for f in "$RUN"/*.log; do
            [[ -f $f ]] || continue
            echo "---- $f (last 15 lines)"
            tail -n 15 "$f"
        done
    fi
    if [[ -n $UP_PID ]] && kill -0 "$UP_PID" 2>/dev/null; then
        kill "$UP_PID" 2>/dev/null
        wait "$UP_PID" 2>/dev/null
    fi
    if ((STARTED)); then
        echo "---- cleanup: stopping the grid (cluster.sh down)"
        ORDERGRID_GRACE=3 ORDERGRID_LAUNCH='ip netns exec {host}' timeout 60 "$CLUSTER" down "$HOSTFILE" 2>&1 | sed 's/^/    /'
    fi
    # Anything still running inside the namespaces this test made is its own.
    for ns in "${NAMESPACES[@]}"; do
        ip netns list 2>/dev/null | grep -qw "^$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null)
        if [[ -n $pids ]]; then
            echo "---- cleanup: killing what is left in $ns: $pids"
            # shellcheck disable=SC2086 # a list of pids
            kill -KILL $pids 2>/dev/null
        fi
    done
    for ns in "${NAMESPACES[@]}"; do
        if ip netns list 2>/dev/null | grep -qw "^$ns"; then
            ip netns del "$ns" 2>/dev/null || echo "multihost: could not delete namespace $ns" >&2
        fi
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns list 2>/dev/null | grep -qw "^$ns" && echo "multihost: namespace $ns is still there" >&2 && rc=1
    done
    echo "---- cleanup: namespaces ${NAMESPACES[*]} removed"
    if ((PASSED)) && [[ -z ${MULTIHOST_KEEP:-} ]]; then
        rm -rf "$WORK"
    else
        echo "---- work folder kept: $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
if [[ -n ${ORDERGRID_BIN:-} ]]; then
    BIN=$ORDERGRID_BIN
    step "using the binaries in $BIN"
else
    command -v cargo >/dev/null 2>&1 || cannot_run "needs cargo, or ORDERGRID_BIN set to a folder of built binaries"
    step "building the binaries (cargo build --bins)"
    (cd "$ROOT" && cargo build --bins --quiet)
    TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    BIN=$TARGET_DIR/debug
fi
for b in sink worker ventilator gen; do
    [[ -x $BIN/ordergrid-$b ]] || fail "$BIN/ordergrid-$b is missing"
done
START=$SECONDS
left() { echo $((TIMEOUT - (SECONDS - START))); }

# ---------------------------------------------------------------- hosts
# Namespaces left by an earlier run of this test that was killed outright
# (named og-a|b|c|sw-PID, PID no longer running).
while read -r ns _; do
    if [[ $ns =~ ^og-(a|b|c|sw)-([0-9]+)$ ]] && ! kill -0 "${BASH_REMATCH[2]}" 2>/dev/null; then
        info "removing $ns, left by an earlier run (pid ${BASH_REMATCH[2]} is gone)"
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" || true
    fi
done < <(ip netns list 2>/dev/null)

step "creating the hosts: namespaces $NS_A, $NS_B, $NS_C on a bridge in $NS_SW ($SUBNET.0/24)"
ip netns add "$NS_SW" 2>"$WORK/err" || cannot_run "the kernel refuses network namespaces: $(cat "$WORK/err")"
ip -n "$NS_SW" link set lo up
ip -n "$NS_SW" link add br0 type bridge 2>"$WORK/err" || cannot_run "no bridge support: $(cat "$WORK/err")"
ip -n "$NS_SW" link set br0 up
n=0
for ns in "$NS_A" "$NS_B" "$NS_C"; do
    n=$((n + 1))
    port=v${ns:3:1} # va, vb, vc: this host's port on the bridge
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "$port" netns "$NS_SW" 2>"$WORK/err" ||
        cannot_run "no veth support: $(cat "$WORK/err")"
    ip -n "$NS_SW" link set "$port" master br0
    ip -n "$NS_SW" link set "$port" up
    ip -n "$ns" addr add "$SUBNET.$n/24" dev eth0
    ip -n "$ns" link set eth0 up
    info "$ns: $SUBNET.$n on eth0, bridge port $port"
done

step "checking that the hosts reach each other"
python3 - "$NS_A" "$NS_B" "$NS_C" "$SUBNET" <<'EOF'
import socket, subprocess, sys, time
a, b, c, subnet = sys.argv[1:]
srv = subprocess.Popen(["ip", "netns", "exec", a, "python3", "-c", """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5999)); s.listen(); s.settimeout(20)
print("listening", flush=True)
for _ in range(2):
    conn, peer = s.accept(); conn.sendall(b"hello " + peer[0].encode()); conn.close()
"""], stdout=subprocess.PIPE, text=True)
assert srv.stdout.readline().strip() == "listening"
for ns in (b, c):
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", f"""
import socket
s = socket.create_connection(("{subnet}.1", 5999), timeout=5); print(s.recv(100).decode())
"""], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        sys.exit(f"{ns} cannot reach {subnet}.1: {out.stderr.strip()}")
    print("    " + ns + ": " + out.stdout.strip())
srv.wait(timeout=10)
EOF

# ---------------------------------------------------------------- input
step "generating $ORDERS orders (ordergrid-gen --count $ORDERS --seed 11) and the oracle's tallies"
"$BIN/ordergrid-gen" --count "$ORDERS" --seed 11 >"$WORK/orders.jsonl"
python3 "$ROOT/tests/oracle.py" "$WORK/orders.jsonl" >"$WORK/oracle.json"
info "$(wc -l <"$WORK/orders.jsonl") lines; oracle: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["orders"])' "$WORK/oracle.json")"

# ---------------------------------------------------------------- security
help_has() { "$BIN/ordergrid-$1" --help 2>/dev/null | grep -q -- "$2"; }
all_have() {
    local r
    for r in sink worker ventilator; do help_has "$r" "$1" || return 1; done
}
SECURITY_LINES=()
case $SECURITY in
auto)
    if [[ -x $BIN/ordergrid-keygen ]] && all_have --key-file; then
        SECURITY=key
    elif all_have --insecure; then
        SECURITY=insecure
    else
        SECURITY=none
    fi
    ;;
key | insecure | none) ;;
*) cannot_run "MULTIHOST_SECURITY must be auto, key, insecure or none" ;;
esac
case $SECURITY in
key)
    "$BIN/ordergrid-keygen" "$WORK/grid.key"
    SECURITY_LINES=("set ORDERGRID_KEY_FILE=$WORK/grid.key")
    step "security: every role seals its frames with the pre-shared key $WORK/grid.key"
    ;;
insecure)
    SECURITY_LINES=("set ORDERGRID_INSECURE=1")
    step "security: the binaries take --insecure and no key is used: ORDERGRID_INSECURE=1"
    ;;
none) step "security: the binaries take neither --key-file nor --insecure: nothing to set" ;;
esac

# ---------------------------------------------------------------- the grid
cat >"$HOSTFILE" <<EOF
# Written by tests/multihost.sh: sink and ventilator on $NS_A, workers on $NS_B and $NS_C.
set ORDERGRID_RESULTS=tcp://$SUBNET.1:5558
set ORDERGRID_ACKS=tcp://$SUBNET.1:5559
set ORDERGRID_CONTROL=tcp://$SUBNET.1:5560
set ORDERGRID_JOBS=tcp://$SUBNET.1:5557
set ORDERGRID_BIN=$BIN
set ORDERGRID_RUN_DIR=$RUN
set RUST_LOG=info
$(printf '%s\n' "${SECURITY_LINES[@]}")
sink $NS_A --results tcp://0.0.0.0:5558 --acks tcp://0.0.0.0:5559 --control tcp://0.0.0.0:5560 --state $WORK/state --progress-ms 250
worker $NS_B 2 --concurrency 8 --gateway-latency-ms 20
worker $NS_C 2 --concurrency 8 --gateway-latency-ms 20
ventilator $NS_A --jobs tcp://0.0.0.0:5557 --input $WORK/orders.jsonl --dead-letter $WORK/dead-letter.jsonl
EOF
step "host file $HOSTFILE:"
sed 's/^/    /' "$HOSTFILE"

export ORDERGRID_LAUNCH='ip netns exec {host}'
step "starting the grid: cluster.sh up (ORDERGRID_LAUNCH='$ORDERGRID_LAUNCH')"
STARTED=1
ORDERGRID_UP_TIMEOUT=$(left) "$CLUSTER" up "$HOSTFILE" >"$WORK/up.out" 2>&1 &
UP_PID=$!

# The sink's last progress (orders tallied), 0 before the first.
sink_done() {
    local d
    d=$(grep -ao ' progress .*done=[0-9]*' "$RUN/sink-1.log" 2>/dev/null | tail -n 1 | sed 's/.*done=//')
    echo "${d:-0}"
}
# Waits until the sink has tallied at least $1 orders; fails if the run ends first.
wait_done() {
    while :; do
        (($(sink_done) >= $1)) && return 0
        if ! kill -0 "$UP_PID" 2>/dev/null; then
            wait "$UP_PID" && fail "the run completed before the sink had tallied $1 orders while still under way: make it longer (MULTIHOST_ORDERS)"
            fail "cluster.sh up failed before the sink had tallied $1 orders"
        fi
        (($(left) > 0)) || fail "the sink had not tallied $1 orders after ${TIMEOUT}s"
        sleep 0.2
    done
}

wait_done 1
grep -a 'started' "$WORK/up.out" | sed 's/^/    /'
info "the sink has tallied $(sink_done) orders"

# ---------------------------------------------------------------- degrade og-b
step "degrading $NS_B's link while the run goes on"
TBF=(tbf rate 1mbit burst 32kbit latency 400ms)
# netem (delay, loss) with tbf under it where the kernel has netem; tbf alone otherwise.
degrade() { # namespace device
    if tc -n "$1" qdisc add dev "$2" root handle 1: netem delay 40ms 10ms loss 1% 2>/dev/null; then
        tc -n "$1" qdisc add dev "$2" parent 1:1 handle 10: "${TBF[@]}" 2>"$WORK/err" && return 0
        info "tbf under netem refused ($(cat "$WORK/err")): netem alone on $2"
        return 0
    fi
    tc -n "$1" qdisc add dev "$2" root "${TBF[@]}"
}
degrade "$NS_SW" vb
degrade "$NS_B" eth0
if tc -n "$NS_B" qdisc show dev eth0 | grep -q netem; then
    info "netem delay 40ms ±10ms, loss 1%, and tbf rate 1mbit, both directions"
else
    info "tbf rate 1mbit burst 32kbit latency 400ms, both directions (this kernel has no netem: no delay or loss)"
fi
tc -n "$NS_SW" qdisc show dev vb | sed 's/^/    vb (towards og-b): /'
tc -n "$NS_B" qdisc show dev eth0 | sed 's/^/    eth0 in og-b:      /'
if command -v nft >/dev/null 2>&1 &&
    ip netns exec "$NS_B" nft -f - 2>"$WORK/err" <<'EOF'; then
table inet og_degrade {
    chain in {
        type filter hook input priority 0; policy accept;
        meta l4proto tcp numgen random mod 100 < 2 counter drop
    }
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto tcp numgen random mod 100 < 2 counter drop
    }
}
EOF
    NFT=1
    info "nftables: 2% of $NS_B's TCP packets dropped at random, each way"
else
    NFT=0
    info "nftables not usable here ($(head -c 200 "$WORK/err" 2>/dev/null || true)): no random drops"
fi

# ---------------------------------------------------------------- cut og-c off
CUT_AT=$((ORDERS / 4))
step "waiting until the sink has tallied $CUT_AT of $ORDERS orders, then cutting $NS_C off"
wait_done "$CUT_AT"
# Every worker must still run: one that died on a healthy link is a bug.
check_workers_running() {
    local n
    for n in 1 2 3 4; do
        if ! { [[ -s $RUN/worker-$n.pid ]] && kill -0 "$(cat "$RUN/worker-$n.pid")" 2>/dev/null; }; then
            sleep 0.5
            fail "worker-$n died before the cut (exit status $(cat "$RUN/worker-$n.rc" 2>/dev/null || echo unknown)): $(tail -n 2 "$RUN/worker-$n.log" | paste -sd'|')"
        fi
    done
}
check_workers_running
ip -n "$NS_SW" link set vc down
ip -n "$NS_C" link set eth0 down
DONE_AT_CUT=$(sink_done)
info "$NS_C is cut off (its bridge port and its eth0 are down) with $DONE_AT_CUT of $ORDERS orders tallied; it stays down"
((DONE_AT_CUT < ORDERS)) || fail "the run was complete before the cut"

# ---------------------------------------------------------------- completion
step "waiting for the run to complete on $NS_B's workers alone (at most $(left)s)"
last=-1
while kill -0 "$UP_PID" 2>/dev/null; do
    if (($(left) <= 0)); then
        fail "the run did not complete within ${TIMEOUT}s (the sink tallied $(sink_done) of $ORDERS)"
    fi
    d=$(sink_done)
    if ((d != last && SECONDS % 5 == 0)); then
        info "tallied $d of $ORDERS"
        last=$d
    fi
    sleep 0.5
done
UP_RC=0
wait "$UP_PID" || UP_RC=$?
UP_PID=
sed 's/^/    | /' "$WORK/up.out"
((UP_RC == 0)) || fail "cluster.sh up exited $UP_RC"
# og-b's workers (degraded, never cut) end with the run: exit status 0.
for n in 1 2; do
    for _ in $(seq 50); do [[ -s $RUN/worker-$n.rc ]] && break; sleep 0.2; done
    rc=$(cat "$RUN/worker-$n.rc" 2>/dev/null || echo "none (still running)")
    [[ $rc == 0 ]] || fail "worker-$n on $NS_B ended with exit status $rc, not 0: $(tail -n 2 "$RUN/worker-$n.log" | paste -sd'|')"
done
info "$NS_B's workers exited 0 when the sink said the run was over"
info "completed in $((SECONDS - START))s after the build"

step "comparing the report with the oracle"
REPORT=$WORK/state/report.json
[[ -s $REPORT ]] || fail "no report at $REPORT"
python3 - "$REPORT" "$WORK/oracle.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
oracle = json.load(open(sys.argv[2]))
bad = False
for key in ("orders", "rejected", "payments", "stock"):
    if report.get(key) == oracle.get(key):
        print(f"    {key}: equal ({len(oracle[key])} entries)")
    else:
        bad = True
        print(f"    {key}: DIFFERS\n      got:  {json.dumps(report.get(key))[:1500]}\n      want: {json.dumps(oracle.get(key))[:1500]}")
run, stats = report["run"], report["stats"]
print(f"    run: workers_seen={run['workers_seen']} elapsed={run['elapsed_seconds']:.1f}s; "
      f"stats: results_received={stats['results_received']} duplicate_results={stats['duplicate_results']}")
if run["workers_seen"] != 4:
    print(f"    expected all 4 workers (og-b's and og-c's) to have reported results, got {run['workers_seen']}")
    bad = True
sys.exit(1 if bad else 0)
EOF
info "$(grep -a 'the sink reports the run complete' "$RUN/ventilator-1.log" | tail -n 1 | sed 's/.*complete //')"
((NFT == 0)) || info "nftables drops on $NS_B: $(ip netns exec "$NS_B" nft list table inet og_degrade 2>/dev/null | grep -o 'packets [0-9]*' | paste -sd' ')"

# ---------------------------------------------------------------- status, down, logs
step "cluster.sh status"
"$CLUSTER" status "$HOSTFILE" | sed 's/^/    /' || true
step "cluster.sh down (og-c's workers are still running, cut off)"
ORDERGRID_GRACE=5 "$CLUSTER" down "$HOSTFILE" 2>&1 | sed 's/^/    /'
STARTED=0
for n in 3 4; do
    info "worker-$n on $NS_C: $(tail -n 2 "$RUN/worker-$n.log" | sed 's/^[0-9TZ:.-]* *//' | paste -sd'|')"
done
step "cluster.sh logs"
ORDERGRID_LOGS_DIR=$WORK/logs "$CLUSTER" logs "$HOSTFILE" >"$WORK/logs.out" 2>&1 || fail "cluster.sh logs failed: $(tail -n 3 "$WORK/logs.out")"
for n in 1 2 3 4; do
    ls "$WORK"/logs/*/worker-$n.log >/dev/null 2>&1 || fail "cluster.sh logs did not gather worker-$n.log"
done
info "gathered: $(cd "$WORK/logs" && find . -name '*.log' | sort | paste -sd' ')"

# ---------------------------------------------------------------- standing grid
step "a standing grid: cluster.sh serve on $NS_A and $NS_B (link healed), then two runs submitted at once"
tc -n "$NS_SW" qdisc del dev vb root 2>/dev/null || true
tc -n "$NS_B" qdisc del dev eth0 root 2>/dev/null || true
((NFT == 0)) || ip netns exec "$NS_B" nft delete table inet og_degrade 2>/dev/null || true
SERVE_HOSTS=$WORK/serve.hosts
SERVE_RUN=$WORK/serve-run
mkdir -p "$SERVE_RUN"
cat >"$SERVE_HOSTS" <<EOF
# Written by tests/multihost.sh: a standing sink on $NS_A, standing workers on $NS_B, runs submitted from $NS_A.
set ORDERGRID_RESULTS=tcp://$SUBNET.1:5558
set ORDERGRID_ACKS=tcp://$SUBNET.1:5559
set ORDERGRID_CONTROL=tcp://$SUBNET.1:5560
set ORDERGRID_BIN=$BIN
set ORDERGRID_RUN_DIR=$SERVE_RUN
set RUST_LOG=info
$(printf '%s\n' "${SECURITY_LINES[@]}")
sink $NS_A --results tcp://0.0.0.0:5558 --acks tcp://0.0.0.0:5559 --control tcp://0.0.0.0:5560 --state $WORK/serve-state
worker $NS_B 2 --concurrency 16 --gateway-latency-ms 2
ventilator $NS_A --jobs tcp://0.0.0.0:5557 --advertise tcp://$SUBNET.1:5557
EOF
RUN=$SERVE_RUN # the diagnostics show these logs from now on
HOSTFILE=$SERVE_HOSTS
STARTED=1
"$CLUSTER" serve "$SERVE_HOSTS" >"$WORK/serve.out" 2>&1 || fail "cluster.sh serve failed: $(tail -n 5 "$WORK/serve.out")"
sed 's/^/    | /' "$WORK/serve.out"
for seed in 12 13; do
    "$BIN/ordergrid-gen" --count 5000 --seed "$seed" >"$SERVE_RUN/orders-$seed.jsonl"
    python3 "$ROOT/tests/oracle.py" "$SERVE_RUN/orders-$seed.jsonl" >"$WORK/oracle-$seed.json"
done
SUBMITS=()
for seed in 12 13; do
    timeout "$(left)" "$CLUSTER" submit "$SERVE_HOSTS" "orders-$seed.jsonl" >"$WORK/submit-$seed.out" 2>&1 &
    SUBMITS+=($!)
    sleep 0.5
done
for k in 0 1; do
    seed=$((12 + k))
    wait "${SUBMITS[k]}" || fail "cluster.sh submit orders-$seed.jsonl failed: $(tail -n 8 "$WORK/submit-$seed.out")"
    report=$(sed -n 's/.*its report: [^:]*:\(.*\)$/\1/p' "$WORK/submit-$seed.out" | tail -n 1)
    [[ -n $report && -s $report ]] || fail "submit orders-$seed.jsonl named no report: $(tail -n 5 "$WORK/submit-$seed.out")"
    python3 - "$report" "$WORK/oracle-$seed.json" <<'EOF' || fail "the report of orders-$seed.jsonl differs from the oracle's"
import json, sys
report, oracle = (json.load(open(p)) for p in sys.argv[1:])
bad = [k for k in ("orders", "rejected", "payments", "stock") if report.get(k) != oracle.get(k)]
for k in bad:
    print(f"    {k}: DIFFERS\n      got:  {json.dumps(report.get(k))[:800]}\n      want: {json.dumps(oracle.get(k))[:800]}")
sys.exit(1 if bad else 0)
EOF
    info "orders-$seed.jsonl: report equal to the oracle's ($report)"
done
grep -ah "queued behind" "$WORK"/submit-1[23].out | head -n 1 | sed 's/^/    | /' || true
step "cluster.sh status and down of the standing grid"
"$CLUSTER" status "$SERVE_HOSTS" | sed 's/^/    /' || true
for n in 1 2; do
    [[ ! -s $SERVE_RUN/worker-$n.rc ]] || fail "standing worker-$n exited between runs: $(tail -n 2 "$SERVE_RUN/worker-$n.log" | paste -sd'|')"
done
ORDERGRID_GRACE=5 "$CLUSTER" down "$SERVE_HOSTS" 2>&1 | sed 's/^/    /'
STARTED=0

PASSED=1
step "PASS: the run completed with the exact report across 3 hosts, one degraded and one cut off; a standing grid served two runs submitted at once"
echo "multihost: 2 passed, 0 failed"

