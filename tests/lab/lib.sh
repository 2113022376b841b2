# shellcheck shell=bash
# tests/lab/lib.sh: helpers for lab scenarios (sourced; bash; runs as root inside the lab VM).
#
#   . "$LAB_DIR/lib.sh"
#
# The runner (tests/lab/run) sets LAB_DIR (this directory), LAB_OUT (results directory, read by
# pytest on the host after the run), LAB_PYTHON (interpreter), LAB_PROJECT (checkout), LAB_NAME.
# Everything a scenario makes (netns, links, processes, /tmp) is removed after it by the guest.
#
# Costs under TCG (the reason for the shape of these helpers): `ip` ~0.2 s, python3 1-1.5 s,
# keepalived ~1 s per start. So: `ip -b` batches; one long-lived python per role (rs_server.py,
# client.py driven through FIFOs); /proc/PID/net/* of a process inside a netns read with bash
# builtins instead of `ip netns exec ... cat`; sleeps are `read -t` on a FIFO, not /bin/sleep.
#
# Never wait with a fixed sleep: `lab_wait SECS DESC CMD...` polls CMD until it succeeds and
# prints how long it took, or fails the check at the deadline.
#
# TOPOLOGY (lab_topology [NDIRECTORS]; default 2, 3 works):
#   br-ext  10.0.0.0/24   client eth0 .10 + client addresses .20 ... (LAB_CLIENTS of them),
#                         dirN eth0 .N, VIP 10.0.0.100 (LAB_VIP) on the master; another /24:
#                         LAB_EXT_NET (e.g. 192.0.2), LAB_CLIENT_HOST (the client's .10)
#                         LAB_ONE_NET=1: the real servers are here too, dirN has 10.1.0.N on
#                         eth0 and no leg on br-int (then the sync link may be eth1)
#   br-int  10.1.0.0/24   dirN eth1 .N, rs1 .11, rs2 .12 (LAB_RS), gateway VIP .254 (LAB_GW_VIP)
#                         on the master (NAT: real servers route back through the director)
#   br-sync 172.16.0.0/24 dirN sync0 .N: the IPVS sync link (a bridge, so 2 or 3 directors alike)
#   Real servers answer UDP and TCP on LAB_VPORT (5000) with their name (rs_server.py).
#   Netns names: client, rs1, rs2, dir1 .. dirN. Scratch: $LAB_TMP/<name>/ (/tmp/lab).
#   LAB_IPV6=1 (set before lab_topology) adds IPv6 beside it, without DAD: br-ext fd00::/64
#   (client fd00::10 and fd00::20 ... as client addresses, dirN fd00::N, VIP fd00::100 =
#   LAB_VIP6), br-int fd00:1::/64 (dirN fd00:1::N, rsN fd00:1::(10+N), gateway VIP
#   fd00:1::254 = LAB_GW_VIP6); keepalived holds the IPv6 VIPs in the same instance
#   (virtual_ipaddress_excluded), a virtual_server per protocol in LAB_PROTOS6 on the IPv6 VIP,
#   and the traffic client's flows are IPv6. The sync link stays IPv4.
#
# FUNCTIONS (details above each one):
#   lab_log MSG / lab_step TITLE / lab_die MSG / lab_nap SECS / lab_wait SECS DESC CMD...
#   nsx NS CMD...                       run a command in a netns
#   lab_topology [N]                    netns, bridges, addresses, real servers (+ anchors)
#   lab_director_create DIR             one director netns plugged into the bridges
#   lab_rs_start                        the real servers
#   lab_view DIR / lab_in DIR CMD...    DIR as a machine of its own: its own /etc/lvs-hooks,
#                                       /etc/keepalived, /run, /var/lib/lvs-hooks, hostname
#   lab_keepalived_start DIR PRIO [STATE]  render keepalived.conf from the template, start it
#   lab_keepalived_first DIR PRIO [STATE]  the same, then wait for DIR to hold the VIP alone
#   lab_keepalived_conf DIR PRIO STATE  (the template; prints the config)
#   lab_hooks_config DIR                (lvs-hooks config of one director; prints the path)
#   lab_hooks_state DIR STATE           DIR's newest journal record: a finished STATE transition
#   lab_agent_start DIR / lab_warm DIR  the agent (LVS_HOOKS_AGENT=1); its warm-up state
#   lab_has_vip DIR / lab_master_is DIR wait predicates
#   lab_has_vip6 DIR                    the IPv6 VIP is usable on DIR (LAB_IPV6=1)
#   lab_fail_hard DIR                   node death: SIGKILL all its processes, links down
#   lab_reboot DIR                      fresh netns (empty IPVS table), re-plugged, no keepalived
#   lab_move_vips FROM TO               move the VIPs by hand (without keepalived)
#   lab_conn DIR                        /proc/net/ip_vs_conn of DIR (raw)
#   lab_templates DIR                   templates of DIR, decoded: "UDP 10.0.0.20 10.0.0.100:5000
#                                       10.1.0.11:5000 ASSURED 19"
#   lab_tpl_count DIR                   number of templates (FPrt 0000)
#   lab_client_start / lab_client CMD   the traffic client (client.py): open/probe/keepalive/report
#   lab_inject DIR ENTRY... [-- OPTS]   sync_inject.py in DIR (lab-only sync message injector)
#   lab_bulk_templates N [BASE]         N templates on the master from spoofed sources
#   lab_result_json FILE KEY=JSON...    write a result file into $LAB_OUT

set -u

LAB_DIR=${LAB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
LAB_OUT=${LAB_OUT:-/tmp/lab-out}
LAB_PYTHON=${LAB_PYTHON:-python3}
LAB_TMP=${LAB_TMP:-/tmp/lab}
mkdir -p "$LAB_OUT" "$LAB_TMP"

# Topology and service parameters: override before lab_topology / lab_keepalived_start.
LAB_VIP=${LAB_VIP:-10.0.0.100}
LAB_EXT_NET=${LAB_EXT_NET:-10.0.0}      # br-ext's /24 (client, client addresses, dirN eth0 .N)
LAB_CLIENT_HOST=${LAB_CLIENT_HOST:-10}  # the client's own address there
LAB_ONE_NET=${LAB_ONE_NET:-0}           # 1: real servers on br-ext, directors without br-int
LAB_VPORT=${LAB_VPORT:-5000}
LAB_GW_VIP=${LAB_GW_VIP:-10.1.0.254}
LAB_CLIENTS=${LAB_CLIENTS:-20}          # client addresses 10.0.0.20 .. (at most 70)
LAB_CLIENT_FIRST=${LAB_CLIENT_FIRST:-20}
LAB_RS=${LAB_RS:-"rs1 rs2"}             # rsN = 10.1.0.(10+N)
LAB_PERSIST=${LAB_PERSIST:-20}          # persistence_timeout (s): short, so the lab stays fast
LAB_SCHED=${LAB_SCHED:-wrr}
LAB_SYNC_IF=${LAB_SYNC_IF:-sync0}
LAB_SYNCID=${LAB_SYNCID:-51}
LAB_VRID=${LAB_VRID:-51}
LAB_PROTOS=${LAB_PROTOS:-"UDP TCP"}     # one virtual_server per protocol on VIP:VPORT
LAB_FWMARK=${LAB_FWMARK:-}             # N: a `virtual_server fwmark N` too (lab_fwmark_rules)
LVS_HOOKS=${LVS_HOOKS:-0}               # 1: wire lvs-hooks into keepalived (see lab_keepalived_conf)
LVS_HOOKS_MODE=${LVS_HOOKS_MODE:-fifo}  # fifo (vrrp_notify_fifo_script) | notify (older keepalived)
LVS_HOOKS_AGENT=${LVS_HOOKS_AGENT:-0}   # 1 (with LVS_HOOKS=1): `lvs-hooks agent` per director, a
                                        # shared control key, the warm-up gate in keepalived.conf
LAB_GATE_WEIGHT=${LAB_GATE_WEIGHT:--60} # track_file weight: larger than the priority gaps
LAB_PUSH_INTERVAL=${LAB_PUSH_INTERVAL:-30}
LAB_TABLE=${LAB_TABLE:-}                # 1 (with the agent): table.enabled, read_budget LAB_TABLE_BUDGET
LAB_IPV6=${LAB_IPV6:-0}                 # 1: IPv6 beside IPv4 (see TOPOLOGY), IPv6 client flows
LAB_VIP6=${LAB_VIP6:-fd00::100}
LAB_GW_VIP6=${LAB_GW_VIP6:-fd00:1::254}
LAB_PROTOS6=${LAB_PROTOS6:-UDP}         # with LAB_IPV6=1: one virtual_server per protocol on VIP6
LAB_DIRECTORS=0                         # set by lab_topology

declare -A LAB_ANCHOR=()   # netns -> pid of a process living in it (for /proc/PID/net/*)

# ------------------------------------------------------------------------------ time, logs, waits

_lab_t0=$EPOCHREALTIME
# seconds since the scenario started (2 decimals), no process start
lab_elapsed() {
    local now=$EPOCHREALTIME since=${1:-$_lab_t0} d
    d=$(( ${now/./} - ${since/./} ))
    printf -v REPLY '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
    echo "$REPLY"
}
lab_log() { local t; t=$(lab_elapsed); echo "[$t] $*"; }
lab_step() { local t; t=$(lab_elapsed); echo; echo "===== [$t] $*"; }
lab_die() { lab_log "FAIL: $*"; exit 1; }

# a sleep without a process: read with a timeout on a FIFO nobody writes to
mkfifo "$LAB_TMP/.nap" 2>/dev/null
exec {_LAB_NAPFD}<>"$LAB_TMP/.nap"
lab_nap() { read -r -t "$1" -u "$_LAB_NAPFD"; return 0; }

# LAB_SLOW: how much slower than an idle host this guest runs, measured at boot by vm/stage2.sh
# (tests/lab/README.md). lab_wait's deadlines are stretched by it, never shrunk: as a percentage.
_lab_slow_pct=100
if [[ ${LAB_SLOW:-} =~ ^([0-9]+)(\.([0-9]*))?$ ]]; then
    _lab_f=${BASH_REMATCH[3]}00
    _lab_slow_pct=$(( 10#${BASH_REMATCH[1]} * 100 + 10#${_lab_f:0:2} ))
    (( _lab_slow_pct < 100 )) && _lab_slow_pct=100
fi
# lab_stretched SECS: SECS x LAB_SLOW, whole seconds: a duration the scenario's own steps must fit
# in (a persistence that has to outlive them), as lab_wait stretches its deadlines
lab_stretched() { echo $(( $1 * _lab_slow_pct / 100 )); }

# lab_wait SECS DESC CMD... : poll CMD (every 0.2 s) until it succeeds; prints how long it took.
# Returns 1 at the deadline, SECS x LAB_SLOW (the caller decides: `lab_wait ... || lab_die ...`).
lab_wait() {
    local secs=$1 desc=$2 t0=$EPOCHREALTIME
    shift 2
    # seconds x percentage x 10^4 = microseconds x LAB_SLOW
    local deadline=$(( ${t0/./} + ${secs%.*} * 10000 * _lab_slow_pct ))
    while :; do
        if "$@"; then
            lab_log "waited $(lab_elapsed "$t0")s for: $desc"
            return 0
        fi
        local now=$EPOCHREALTIME
        if (( ${now/./} >= deadline )); then
            lab_log "TIMEOUT after $(lab_elapsed "$t0")s (${secs}s x LAB_SLOW ${LAB_SLOW:-1}) waiting for: $desc"
            return 1
        fi
        lab_nap 0.2
    done
}

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ------------------------------------------------------------------------------ topology

# lab_anchor NS [SYSCTL=VAL...]: a long-lived `sleep` in NS (its /proc/PID/net/* is NS's view),
# started after setting the given sysctls in NS: one process start for both. _lab_anchor_spawn
# starts it, _lab_anchor_wait waits until the sysctls are written (several netns in parallel).
lab_anchor() { _lab_anchor_spawn "$@"; _lab_anchor_wait "$1"; }
_lab_anchor_spawn() {
    local ns=$1 kv k cmd=""
    shift
    for kv in "$@"; do k=${kv%%=*}; cmd+="echo ${kv#*=} > /proc/sys/${k//.//}; "; done
    # ip netns exec execs sh, which execs sleep: $! is the anchor itself
    ip netns exec "$ns" sh -c "${cmd}exec sleep infinity" &
    LAB_ANCHOR[$ns]=$!
    disown   # killed on purpose later (lab_fail_hard, lab_reboot): no "Killed" job notices
}
_lab_anchor_wait() {
    lab_wait 10 "netns $1 ready" _lab_is_sleep "${LAB_ANCHOR[$1]}" > /dev/null \
        || lab_die "netns $1: anchor did not start"
}
_lab_is_sleep() { local c; read -r c < "/proc/$1/comm" 2>/dev/null && [ "$c" = sleep ]; }

# _lab_dir_root_batch DIR N: root-namespace `ip -b` lines that create and plug director DIR
_lab_dir_root_batch() {
    local d=$1
    echo "netns add $d"
    echo "link add v-$d-eth0 type veth peer name eth0 netns $d"
    [ "$LAB_ONE_NET" = 1 ] || echo "link add v-$d-eth1 type veth peer name eth1 netns $d"
    echo "link add v-$d-sync type veth peer name $LAB_SYNC_IF netns $d"
    echo "link set v-$d-eth0 master br-ext up"
    [ "$LAB_ONE_NET" = 1 ] || echo "link set v-$d-eth1 master br-int up"
    echo "link set v-$d-sync master br-sync up"
}
_lab_dir_ns_batch() {
    local n=$1
    echo "link set lo up"
    echo "addr add $LAB_EXT_NET.$n/24 dev eth0"
    if [ "$LAB_ONE_NET" = 1 ]; then
        echo "addr add 10.1.0.$n/24 dev eth0"
    else
        echo "addr add 10.1.0.$n/24 dev eth1"
        echo "link set eth1 up"
    fi
    echo "addr add 172.16.0.$n/24 dev $LAB_SYNC_IF"
    if [ "$LAB_IPV6" = 1 ]; then
        echo "addr add fd00::$n/64 dev eth0 nodad"
        echo "addr add fd00:1::$n/64 dev eth1 nodad"
    fi
    echo "link set eth0 up"
    echo "link set $LAB_SYNC_IF up"
}
_lab_dir_sysctls=(net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0
                  net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0)
# with LAB_IPV6=1: forwarding, and no DAD for the VIPs keepalived adds (an address stays
# tentative, unusable, for about a second of DAD otherwise)
_lab_dir_sysctls6=(net.ipv6.conf.all.forwarding=1 net.ipv6.conf.all.accept_dad=0
                   net.ipv6.conf.eth0.accept_dad=0 net.ipv6.conf.eth1.accept_dad=0)
# _lab_dir_sysctl_list: a director's sysctls into _LAB_SYSCTLS
_lab_dir_sysctl_list() {
    _LAB_SYSCTLS=("${_lab_dir_sysctls[@]}")
    [ "$LAB_IPV6" = 1 ] && _LAB_SYSCTLS+=("${_lab_dir_sysctls6[@]}")
    return 0
}

# lab_director_create DIR: director netns DIR (dirN), plugged into br-ext, br-int, br-sync
lab_director_create() {
    local d=$1 n=${1#dir}
    _lab_dir_root_batch "$d" | ip -b - || lab_die "creating $d"
    _lab_dir_ns_batch "$n" | ip -n "$d" -b - || lab_die "addressing $d"
    mkdir -p "$LAB_TMP/$d/run" "$LAB_TMP/$d/state"
    _lab_dir_sysctl_list
    lab_anchor "$d" "${_LAB_SYSCTLS[@]}"
}

# lab_view DIR: DIR as a machine of its own for what keepalived and lvs-hooks keep at their
# default paths: a mount and a UTS namespace (hostname DIR) kept in $LAB_TMP/.views/, where
# /etc/lvs-hooks, /etc/keepalived and /etc/systemd/system are DIR's own ($LAB_TMP/DIR/view/...,
# the guest's copied the first time), /var/lib/lvs-hooks is $LAB_TMP/DIR/state, /run an empty
# directory of DIR's with /run/lvs-hooks on $LAB_TMP/DIR/run (where lab_warm, lab_hooks_state
# and the runner's logs look), /usr/local/bin empty (the runner's lvs-hooks of the checkout is
# not on that machine) and /sys DIR's netns'. Everything else is the guest's. lab_in runs in it.
# After lab_reboot, call it again: /run and /sys afresh; /etc and /var/lib kept.
lab_view() {
    local d=$1 v="$LAB_TMP/$1/view" ns="$LAB_TMP/.views" p
    if ! mountpoint -q "$ns"; then  # persistent namespaces need a private mount to live on
        mkdir -p "$ns"
        { mount --bind "$ns" "$ns" && mount --make-private "$ns"; } || lab_die "no $ns"
    fi
    umount "$ns/$d.mnt" "$ns/$d.uts" 2> /dev/null
    touch "$ns/$d.mnt" "$ns/$d.uts"
    for p in /etc/lvs-hooks /etc/keepalived /etc/systemd/system; do
        [ -d "$v$p" ] && continue
        mkdir -p "$v$p" "$p"
        cp -a "$p/." "$v$p/"
    done
    rm -rf "$v/run"
    mkdir -p "$v/run/lvs-hooks" "$v/empty" "$LAB_TMP/$d/run" "$LAB_TMP/$d/state" /var/lib/lvs-hooks
    # shellcheck disable=SC2016
    unshare --mount="$ns/$d.mnt" --uts="$ns/$d.uts" --propagation private sh -ec '
        d=$1 v=$2 t=$3
        echo "$d" > /proc/sys/kernel/hostname
        nsenter --net="/run/netns/$d" mount -t sysfs sysfs /sys
        for p in /etc/lvs-hooks /etc/keepalived /etc/systemd/system; do mount --bind "$v$p" "$p"; done
        mount --bind "$t/state" /var/lib/lvs-hooks
        mount --bind "$v/run" /run
        mount --bind "$t/run" /run/lvs-hooks
        mount --bind "$v/empty" /usr/local/bin' sh "$d" "$v" "$LAB_TMP/$d" || lab_die "$d: no view"
}
# lab_in DIR CMD...: CMD in DIR's netns and view (lab_view); its working directory is /.
# lab_in_cmd DIR: that prefix into the array LAB_IN (`"${LAB_IN[@]}" CMD &`: $! is CMD's pid)
lab_in_cmd() {
    LAB_IN=(nsenter --net="/run/netns/$1" --mount="$LAB_TMP/.views/$1.mnt"
            --uts="$LAB_TMP/.views/$1.uts" --)
}
lab_in() { local LAB_IN; lab_in_cmd "$1"; shift; "${LAB_IN[@]}" "$@"; }

# lab_topology [NDIRECTORS]: everything but keepalived (see the header for the picture)
lab_topology() {
    local nd=${1:-2} i r a t0=$EPOCHREALTIME rsbr=br-int
    [ "$LAB_ONE_NET" = 1 ] && rsbr=br-ext
    LAB_DIRECTORS=$nd
    lab_syslog_start
    {
        for b in br-ext br-int br-sync; do
            # no STP: ports forward at once; no snooping: multicast (VRRP, sync) is flooded
            echo "link add $b type bridge stp_state 0 mcast_snooping 0"
            echo "link set $b up"
        done
        echo "netns add client"
        echo "link add v-client-eth0 type veth peer name eth0 netns client"
        echo "link set v-client-eth0 master br-ext up"
        for r in $LAB_RS; do
            echo "netns add $r"
            echo "link add v-$r-eth0 type veth peer name eth0 netns $r"
            echo "link set v-$r-eth0 master $rsbr up"
        done
        for ((i = 1; i <= nd; i++)); do _lab_dir_root_batch "dir$i"; done
    } | ip -b - || lab_die "topology (root namespace)"
    {
        echo "link set lo up"
        echo "addr add $LAB_EXT_NET.$LAB_CLIENT_HOST/24 dev eth0"
        for ((i = 0; i < LAB_CLIENTS; i++)); do
            echo "addr add $LAB_EXT_NET.$((LAB_CLIENT_FIRST + i))/24 dev eth0"
        done
        if [ "$LAB_IPV6" = 1 ]; then
            echo "addr add fd00::10/64 dev eth0 nodad"
            for ((i = 0; i < LAB_CLIENTS; i++)); do
                echo "addr add fd00::$((LAB_CLIENT_FIRST + i))/64 dev eth0 nodad"
            done
        fi
        echo "link set eth0 up"
    } | ip -n client -b - || lab_die "topology (client)"
    for r in $LAB_RS; do
        printf 'link set lo up\naddr add 10.1.0.%d/24 dev eth0\nlink set eth0 up\n%s\n' \
            $((10 + ${r#rs})) "route add default via $LAB_GW_VIP" | ip -n "$r" -b - \
            || lab_die "topology ($r)"
        if [ "$LAB_IPV6" = 1 ]; then
            printf 'addr add fd00:1::%d/64 dev eth0 nodad\nroute add default via %s\n' \
                $((10 + ${r#rs})) "$LAB_GW_VIP6" | ip -n "$r" -b - || lab_die "topology ($r, IPv6)"
        fi
    done
    for ((i = 1; i <= nd; i++)); do
        _lab_dir_ns_batch "$i" | ip -n "dir$i" -b - || lab_die "topology (dir$i)"
        mkdir -p "$LAB_TMP/dir$i/run" "$LAB_TMP/dir$i/state"
    done
    # anchors (sysctls + /proc view) for all directors and the client, started in parallel
    _lab_dir_sysctl_list
    for ((i = 1; i <= nd; i++)); do _lab_anchor_spawn "dir$i" "${_LAB_SYSCTLS[@]}"; done
    _lab_anchor_spawn client net.ipv4.ip_nonlocal_bind=1
    for a in "${!LAB_ANCHOR[@]}"; do _lab_anchor_wait "$a"; done
    lab_rs_start
    lab_log "topology: $nd directors, $LAB_CLIENTS clients, real servers $LAB_RS" \
            "($(lab_elapsed "$t0")s)"
}

# lab_syslog_start: a syslog daemon for the VM (busybox syslogd on /dev/log, into
# $LAB_TMP/syslog.log), so that what lvs-hooks logs when keepalived runs it can be read back:
# lab_syslog PATTERN prints the matching lines.
lab_syslog_start() {
    # a socket left by the previous scenario's syslogd (killed at its cleanup) answers nobody
    rm -f /dev/log
    busybox syslogd -n -O "$LAB_TMP/syslog.log" &
    lab_wait 10 "syslog on /dev/log" test -S /dev/log > /dev/null || lab_die "no syslogd"
}
lab_syslog() { grep -a -- "$1" "$LAB_TMP/syslog.log" 2>/dev/null; }

# lab_rs_start: the real servers (one rs_server.py each, UDP+TCP on LAB_VPORT), waits until bound
lab_rs_start() {
    local r bind=0.0.0.0 tcp=tcp
    # LAB_IPV6=1: one dual-stack socket per protocol, listed in tcp6
    [ "$LAB_IPV6" = 1 ] && bind=:: tcp=tcp6
    for r in $LAB_RS; do
        ip netns exec "$r" "$LAB_PYTHON" "$LAB_DIR/rs_server.py" "$r" --port "$LAB_VPORT" \
            --bind "$bind" > "$LAB_TMP/$r.log" 2>&1 &
        LAB_ANCHOR[$r]=$!
        disown
    done
    local port
    printf -v port ':%04X ' "$LAB_VPORT"
    for r in $LAB_RS; do
        lab_wait 30 "$r listening" _lab_file_has "/proc/${LAB_ANCHOR[$r]}/net/$tcp" "$port" \
            > /dev/null || lab_die "$r did not start: $(< "$LAB_TMP/$r.log")"
    done
}
_lab_file_has() { local c; c=$(< "$1") 2>/dev/null && [[ $c == *"$2"* ]]; }

# ------------------------------------------------------------------------------ keepalived

# lab_hooks_config DIR: writes DIR's lvs-hooks config and prints its path. Directors share the
# VM's filesystem, so each one has its own state_dir and run_dir under $LAB_TMP/DIR/.
# lab_hooks_state DIR STATE: DIR's newest lvs-hooks journal record is a finished STATE
# transition (read from the file: an `lvs-hooks history` costs seconds of start-up under TCG)
lab_hooks_state() {
    "$LAB_PYTHON" - "$LAB_TMP/$1/state/events.jsonl" "$2" <<'PYEOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
except (OSError, IndexError, ValueError):
    sys.exit(1)
sys.exit(not (r["event"]["state"] == sys.argv[2] and r.get("outcome") in ("done", "failed")))
PYEOF
}

lab_hooks_config() {
    local d=$1 f="$LAB_TMP/$1/lvs-hooks.yaml"
    mkdir -p "$LAB_TMP/$d/state" "$LAB_TMP/$d/run"
    cat > "$f" <<EOF
# lvs-hooks config of lab director $d (rendered by tests/lab/lib.sh lab_hooks_config)
paths:
  state_dir: $LAB_TMP/$d/state
  run_dir: $LAB_TMP/$d/run
sync:
  interface: $LAB_SYNC_IF
  syncid: $LAB_SYNCID
EOF
    if [ "$LVS_HOOKS_AGENT" = 1 ]; then
        [ -s "$LAB_TMP/control.key" ] || (umask 077; head -c 32 /dev/urandom | base64 \
            > "$LAB_TMP/control.key")
        cat >> "$f" <<EOF
control:
  key_file: $LAB_TMP/control.key
  name: $d
push:
  interval: $LAB_PUSH_INTERVAL
warmup:
  max_wait: 600
EOF
    fi
    if [ -n "${LAB_TABLE:-}" ]; then  # LAB_TABLE=1: the agent's table in memory on
        cat >> "$f" <<EOF
table:
  enabled: true
  read_budget: ${LAB_TABLE_BUDGET:-20000}
  reconcile_interval: ${LAB_TABLE_RECONCILE:-300}
EOF
    fi
    echo "$f"
}

# lab_agent_start DIR: `lvs-hooks agent` in DIR (log: $LAB_TMP/DIR/agent.log); with
# LVS_HOOKS_AGENT=1 lab_keepalived_start calls it. Slow to start under TCG (imports).
lab_agent_start() {
    local d=$1
    nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" agent >> "$LAB_TMP/$d/agent.log" 2>&1 &
    disown
}

# lab_warm DIR: DIR's warm-up state says warm (read from its run_dir, no process)
lab_warm() { grep -q '"warm": *true' "$LAB_TMP/$1/run/warmup.json" 2>/dev/null; }

# lab_keepalived_conf DIR PRIO STATE: prints DIR's keepalived.conf. VRRP instance VI_1 on eth0
# holding the VIP and the real servers' gateway VIP; kernel sync daemon on the sync link; one
# NAT virtual_server with persistence per protocol in LAB_PROTOS. With LVS_HOOKS=1, lvs-hooks gets
# keepalived's events: vrrp_notify_fifo + vrrp_notify_fifo_script (LVS_HOOKS_MODE=fifo), or a
# notify script (LVS_HOOKS_MODE=notify, keepalived older than 1.3.6).
lab_keepalived_conf() {
    local d=$1 prio=$2 state=$3 cfg="" hooks_global="" hooks_instance="" proto r
    if [ "$LVS_HOOKS" = 1 ]; then
        cfg=$(lab_hooks_config "$d")
        if [ "$LVS_HOOKS_MODE" = notify ]; then
            hooks_instance="    notify \"/usr/local/bin/lvs-hooks --config $cfg notify\""
        else
            hooks_global="    vrrp_notify_fifo $LAB_TMP/$d/run/notify.fifo
    vrrp_notify_fifo_script \"/usr/local/bin/lvs-hooks --config $cfg fifo\""
        fi
    fi
    local gate_global="" gate_instance="" vips6=""
    # the IPv6 VIPs ride in the IPv4 instance: one family per instance's adverts, the others
    # "excluded" from them but moved (and announced, unsolicited NA) with it
    [ "$LAB_IPV6" = 1 ] && vips6="    virtual_ipaddress_excluded {
        $LAB_VIP6/64 dev eth0
        $LAB_GW_VIP6/64 dev eth1
    }"
    if [ "$LVS_HOOKS" = 1 ] && [ "$LVS_HOOKS_AGENT" = 1 ]; then
        gate_global="track_file lvs_hooks_warmup {
    file \"$LAB_TMP/$d/run/warmup.track\"
    weight $LAB_GATE_WEIGHT
    init_file 1 overwrite
}"
        gate_instance="    track_file {
        lvs_hooks_warmup
    }"
    fi
    cat <<EOF
$gate_global
global_defs {
    router_id $d
    lvs_sync_daemon $LAB_SYNC_IF VI_1 id $LAB_SYNCID
    script_user root
    vrrp_garp_master_delay 1
$hooks_global
}
vrrp_instance VI_1 {
    state $state
    interface eth0
    virtual_router_id $LAB_VRID
    priority $prio
    advert_int 1
    virtual_ipaddress {
        $LAB_VIP/24 dev eth0
        $LAB_GW_VIP/24 dev eth1
    }
$vips6
$hooks_instance
$gate_instance
}
EOF
    # a fwmark service: packets to the VIP are marked (lab_fwmark_rules) and balanced to
    # real servers that listen on LAB_VPORT
    [ -n "$LAB_FWMARK" ] && _lab_virtual_server "fwmark $LAB_FWMARK"
    for proto in $LAB_PROTOS; do
        _lab_virtual_server "$LAB_VIP $LAB_VPORT" "    protocol $proto"
    done
    if [ "$LAB_IPV6" = 1 ]; then
        for proto in $LAB_PROTOS6; do
            _lab_virtual_server "$LAB_VIP6 $LAB_VPORT" "    protocol $proto" fd00:1::
        done
    fi
    return 0
}

# _lab_virtual_server WHAT [LINE] [RS_PREFIX]: a persistent NAT virtual_server WHAT to every
# real server (rsN at RS_PREFIX(10+N), default 10.1.0.)
_lab_virtual_server() {
    local r
    echo "virtual_server $1 {"
    echo "    delay_loop 10"
    echo "    lb_algo $LAB_SCHED"
    echo "    lb_kind NAT"
    echo "    persistence_timeout $LAB_PERSIST"
    [ -n "${2:-}" ] && echo "$2"
    for r in $LAB_RS; do
        echo "    real_server ${3:-10.1.0.}$((10 + ${r#rs})) $LAB_VPORT {"
        echo "        weight 1"
        echo "    }"
    done
    echo "}"
}

# lab_keepalived_start DIR PRIO [STATE]: render $LAB_TMP/DIR/keepalived.conf, start keepalived
# in DIR (foreground mode, log in $LAB_TMP/DIR/keepalived.log, pid files in $LAB_TMP/DIR/).
lab_keepalived_start() {
    local d=$1 prio=$2 state=${3:-BACKUP} dir="$LAB_TMP/$1"
    mkdir -p "$dir/run"
    lab_keepalived_conf "$d" "$prio" "$state" > "$dir/keepalived.conf"
    ip netns exec "$d" keepalived -n -l -D -f "$dir/keepalived.conf" -p "$dir/keepalived.pid" \
        -r "$dir/vrrp.pid" -c "$dir/checkers.pid" >> "$dir/keepalived.log" 2>&1 &
    disown
    if [ "$LVS_HOOKS" = 1 ] && [ "$LVS_HOOKS_AGENT" = 1 ]; then
        lab_agent_start "$d"
    fi
    lab_log "keepalived started in $d (priority $prio, $state, LVS_HOOKS=$LVS_HOOKS," \
        "agent=$LVS_HOOKS_AGENT)"
}

# lab_keepalived_first DIR PRIO [STATE]: lab_keepalived_start, then wait until DIR holds the VIP,
# before its peers start. Two keepalived started together on a slow guest can both time out into
# MASTER at once; the one that yields stops the master sync daemon it has just started. If the
# kernel stops that thread before it has ever run, the stop request gets no netlink answer (see
# docs/design.md 4.3, "a sync daemon stopped before its thread ran"), and keepalived 2.2.7 waits
# for one forever: it never enters BACKUP, and the lab has two masters.
lab_keepalived_first() {
    lab_keepalived_start "$@"
    lab_wait 60 "$1 holds the VIP before its peers start" lab_has_vip "$1" \
        || lab_die "$1 never took the VIP alone"
}

# lab_fwmark_rules DIR: mark UDP to the VIP with LAB_FWMARK (mangle PREROUTING; TCP stays on
# the address service)
lab_fwmark_rules() {
    nsx "$1" iptables -t mangle -A PREROUTING -d "$LAB_VIP" -p udp -j MARK --set-mark "$LAB_FWMARK" \
        || lab_die "fwmark rule on $1"
}

# lab_has_vip DIR: the VIP is a local address of DIR (read from DIR's fib_trie, no process)
lab_has_vip() {
    local t re
    t=$(< "/proc/${LAB_ANCHOR[$1]:-0}/net/fib_trie") 2>/dev/null || return 1
    re="-- ${LAB_VIP//./\\.}"$'\n'"[ ]+/32 host LOCAL"
    [[ $t =~ $re ]]
}
# lab_has_vip6 DIR: the IPv6 VIP is an address of DIR and not tentative (IFA_F_TENTATIVE 0x40
# in the flags column of DIR's if_inet6)
lab_has_vip6() {
    local t re
    t=$(< "/proc/${LAB_ANCHOR[$1]:-0}/net/if_inet6") 2>/dev/null || return 1
    _lab_ip6_hex "$LAB_VIP6"
    re="$REPLY [0-9a-f]+ [0-9a-f]+ [0-9a-f]+ ([0-9a-f]+) +eth0"
    [[ $t =~ $re ]] && (( (16#${BASH_REMATCH[1]} & 0x40) == 0 ))
}
# _lab_ip6_hex ADDR: an IPv6 address as 32 hex digits (if_inet6's form), into REPLY; no process
_lab_ip6_hex() {
    local a=$1 head tail g out="" n i
    if [[ $a == *::* ]]; then head=${a%%::*} tail=${a#*::}; else head=$a tail=""; fi
    local -a h=() t=()
    [ -n "$head" ] && IFS=: read -r -a h <<< "$head"
    [ -n "$tail" ] && IFS=: read -r -a t <<< "$tail"
    n=$((8 - ${#h[@]} - ${#t[@]}))
    for g in "${h[@]}"; do printf -v g '%04x' "0x$g"; out+=$g; done
    for ((i = 0; i < n; i++)); do out+=0000; done
    for g in "${t[@]}"; do printf -v g '%04x' "0x$g"; out+=$g; done
    REPLY=$out
}
# lab_master_is DIR: DIR holds the VIP and no other director does
lab_master_is() {
    local i
    lab_has_vip "$1" || return 1
    for ((i = 1; i <= LAB_DIRECTORS; i++)); do
        [ "dir$i" = "$1" ] && continue
        [ -n "${LAB_ANCHOR[dir$i]:-}" ] && lab_has_vip "dir$i" && return 1
    done
    return 0
}

# lab_no_vip_anywhere: no director holds the VIP
lab_no_vip_anywhere() {
    local i
    for ((i = 1; i <= LAB_DIRECTORS; i++)); do lab_has_vip "dir$i" && return 1; done
    return 0
}

# ------------------------------------------------------------------------------ failures

# _lab_ns_kill NS [KEEP_PID]: SIGKILL every process in NS (but KEEP_PID)
_lab_ns_kill() {
    local ns=$1 keep=${2:-} p pp stat children=() parents=()
    declare -A in_ns=()
    for p in $(ip netns pids "$ns" 2>/dev/null); do
        [ "$p" = "$keep" ] || in_ns[$p]=1
    done
    # Children first: keepalived's VRRP child gets SIGTERM when its parent dies
    # (PR_SET_PDEATHSIG) and would send a priority-0 goodbye advert, which a dead box never
    # does; with SIGKILL already pending it never runs its handler. (Not SIGSTOP first: a
    # process group with stopped members that becomes orphaned gets SIGHUP, the scenario too.)
    for p in "${!in_ns[@]}"; do
        stat=$(< "/proc/$p/stat") 2>/dev/null || continue
        stat=${stat##*) }; pp=${stat#* }; pp=${pp%% *}
        if [ -n "${in_ns[$pp]:-}" ]; then children+=("$p"); else parents+=("$p"); fi
    done
    [ ${#children[@]} -gt 0 ] && kill -9 "${children[@]}" 2>/dev/null
    [ ${#parents[@]} -gt 0 ] && kill -9 "${parents[@]}" 2>/dev/null
    return 0
}

# lab_fail_hard DIR: node death. SIGKILL keepalived and everything else in DIR (no goodbye
# advert, no notify), then its links go down. The netns and its IPVS table stay (a dead box).
lab_fail_hard() {
    local d=$1
    _lab_ns_kill "$d" "${LAB_ANCHOR[$d]}"
    printf 'link set eth0 down\nlink set eth1 down\nlink set %s down\n' "$LAB_SYNC_IF" \
        | ip -n "$d" -b -
    lab_log "$d: hard failure (processes killed, links down)"
}

# lab_reboot DIR: DIR comes back after a reboot: a new netns (empty IPVS table, no daemons),
# re-plugged with the same addresses. run_dir is emptied (tmpfs on a real box), state_dir kept.
# keepalived is not started: call lab_keepalived_start.
lab_reboot() {
    local d=$1
    _lab_ns_kill "$d"
    unset "LAB_ANCHOR[$d]"
    ip netns del "$d"
    # the veth peers in the root netns go away with the netns, asynchronously
    lab_wait 10 "$d's old links gone" _lab_no_link "v-$d-eth0" "v-$d-eth1" "v-$d-sync" \
        > /dev/null || lab_die "$d links did not go away"
    rm -rf "$LAB_TMP/$d/run"
    lab_director_create "$d"
    lab_log "$d: rebooted (empty table)"
}
_lab_no_link() { local l; for l in "$@"; do [ -e "/sys/class/net/$l" ] && return 1; done; return 0; }

# lab_move_vips FROM TO: move the VIPs by hand (scenarios without keepalived); neighbours flushed.
# FROM may have lost them already (e.g. keepalived stopped): the deletes are then no-ops.
lab_move_vips() {
    printf 'addr del %s/24 dev eth0\naddr del %s/24 dev eth1\n' "$LAB_VIP" "$LAB_GW_VIP" \
        | ip -force -n "$1" -b - 2>/dev/null
    printf 'addr add %s/24 dev eth0\naddr add %s/24 dev eth1\n' "$LAB_VIP" "$LAB_GW_VIP" \
        | ip -n "$2" -b -
    local n
    for n in client $LAB_RS; do ip -n "$n" neigh flush all; done
    lab_log "VIPs moved $1 -> $2"
}

# ------------------------------------------------------------------------------ IPVS table

# lab_conn DIR: DIR's /proc/net/ip_vs_conn (raw lines). Uses the anchor; big tables: cat reads
# in large chunks (each read() walks the kernel table from the start).
lab_conn() {
    local pid=${LAB_ANCHOR[$1]:-}
    if [ -n "$pid" ]; then cat "/proc/$pid/net/ip_vs_conn"; else nsx "$1" cat /proc/net/ip_vs_conn; fi
}

_lab_hex_ip() { # 0A00000A -> 10.0.0.10
    local h=$1
    printf -v REPLY '%d.%d.%d.%d' "0x${h:0:2}" "0x${h:2:2}" "0x${h:4:2}" "0x${h:6:2}"
}
# lab_templates DIR: templates (FPrt 0000) decoded: PROTO CLIENT VIP:VPORT RIP:RPORT STATE EXPIRES
lab_templates() {
    local pro from fprt to tprt dst dprt state exp c v r
    while read -r pro from fprt to tprt dst dprt state exp _; do
        [ "$fprt" = 0000 ] && [ ${#from} = 8 ] || continue
        _lab_hex_ip "$from"; c=$REPLY
        _lab_hex_ip "$to"; v=$REPLY
        _lab_hex_ip "$dst"; r=$REPLY
        echo "$pro $c $v:$((16#$tprt)) $r:$((16#$dprt)) $state $exp"
    done < <(lab_conn "$1")
}
# lab_tpl_count DIR: number of templates (sets REPLY too)
lab_tpl_count() {
    local n=0 pro from fprt
    while read -r pro from fprt _; do
        [ "$fprt" = 0000 ] && n=$((n + 1))
    done < <(lab_conn "$1")
    REPLY=$n
    echo "$n"
}
# lab_entry_count DIR: "TEMPLATES CONNECTIONS" of DIR (connections: every entry with a client
# port); sets LAB_NTPL and LAB_NCONN too (when not called in a subshell)
lab_entry_count() {
    local pro from fprt
    LAB_NTPL=0 LAB_NCONN=0
    while read -r pro from fprt _; do
        [ "$pro" = Pro ] && continue
        if [ "$fprt" = 0000 ]; then LAB_NTPL=$((LAB_NTPL + 1)); else LAB_NCONN=$((LAB_NCONN + 1)); fi
    done < <(lab_conn "$1")
    echo "$LAB_NTPL $LAB_NCONN"
}
# wait predicates: lab_wait 30 "..." lab_tpl_at_least dir2 20 ; lab_wait 90 "..." lab_tpl_none dir2
lab_tpl_at_least() { local n; n=$(lab_tpl_count "$1"); [ "$n" -ge "$2" ]; }
lab_tpl_none() { local n; n=$(lab_tpl_count "$1"); [ "$n" -eq 0 ]; }
# lab_synced DIR N: DIR has at least N templates AND N connections. A kernel master sends a
# template with every packet of a connection it controls, but the connection itself only at its
# sync_threshold-th (3rd) packet: a takeover before that schedules the flow afresh on the new
# master, which links it to the synced template and keeps that alive (lab, 6.1).
lab_synced() { lab_entry_count "$1" > /dev/null; [ "$LAB_NTPL" -ge "$2" ] && [ "$LAB_NCONN" -ge "$2" ]; }

# lab_inject DIR [OPTS...] ENTRY...: inject sync messages into DIR's backup daemon (see
# sync_inject.py --help; ENTRY = CADDR,VIP:VPORT,RIP:RPORT)
lab_inject() {
    local d=$1
    shift
    nsx "$d" "$LAB_PYTHON" "$LAB_DIR/sync_inject.py" --iface "$LAB_SYNC_IF" --syncid "$LAB_SYNCID" "$@"
}

# lab_bulk_templates N [BASE] [RATE]: one UDP datagram to the VIP from each of N spoofed
# sources (BASE 10.2.0.0 up), so the master creates N LOCAL templates. rp_filter is already off on
# the directors (lab_director_create).
lab_bulk_templates() {
    nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$LAB_VIP" --port "$LAB_VPORT" \
        --base "${2:-10.2.0.0}" --rate "${3:-0}" "$1"
}

# ------------------------------------------------------------------------------ client traffic

# lab_client_start: the traffic client in the client netns, one flow per client address. It
# sends in a random order per step (as real clients arrive); LAB_SEED=N makes the order repeatable.
lab_client_start() {
    local last=$((LAB_CLIENT_FIRST + LAB_CLIENTS - 1)) ctl="$LAB_TMP/client"
    local vip=$LAB_VIP range="$LAB_EXT_NET.$LAB_CLIENT_FIRST-$last"
    [ "$LAB_IPV6" = 1 ] && vip=$LAB_VIP6 range="fd00::$LAB_CLIENT_FIRST-$last"
    ip netns exec client "$LAB_PYTHON" "$LAB_DIR/client.py" --ctl "$ctl" --vip "$vip" \
        --port "$LAB_VPORT" ${LAB_SEED:+--seed "$LAB_SEED"} "$range" \
        > "$LAB_TMP/client.log" 2>&1 &
    LAB_CLIENT_PID=$!
    disown
    lab_wait 30 "traffic client ready" test -e "$ctl.ready" > /dev/null \
        || lab_die "client did not start: $(< "$LAB_TMP/client.log")"
    exec {LAB_CIN}<>"$ctl.in" {LAB_COUT}<>"$ctl.out"
}

# lab_client CMD [ARGS]: one command to the traffic client (see client.py); the JSON answer is
# in LAB_REPLY and printed. Returns 1 if the client reports an error or does not answer in 120 s.
#   lab_client open start          new UDP flow per client (the first open is the reference)
#   lab_client open t1 tcp         new TCP connection per client
#   lab_client probe after-failover [FLOWS]   who answers each client's existing flow
#   lab_client keepalive 1         flows keep sending every second
#   lab_client report "$LAB_OUT/traffic.json"
lab_client() {
    echo "$*" >&"$LAB_CIN"
    if ! IFS= read -r -t 120 -u "$LAB_COUT" LAB_REPLY; then
        lab_log "client: no answer to '$*' ($(< "$LAB_TMP/client.log"))"
        return 1
    fi
    lab_log "client $1 ${2:-}: $LAB_REPLY"
    [[ $LAB_REPLY == '{"ok":true'* ]]
}
# lab_flows_sent_at_least LABEL N: every flow opened as LABEL has sent N packets (wait predicate;
# a kernel master syncs a connection at its 3rd packet, then every 50th: sync_threshold 3 50)
lab_flows_sent_at_least() {
    lab_client sent "$1" > /dev/null || return 1
    [ "$(lab_json_field min_sent)" -ge "$2" ]
}
# lab_json_field KEY: a top-level number from LAB_REPLY (e.g. same_as_ref), into REPLY
lab_json_field() {
    local re="\"$1\":([0-9.]+)"
    [[ $LAB_REPLY =~ $re ]] && REPLY=${BASH_REMATCH[1]}
    echo "${REPLY:-}"
}

# lab_result_json FILE KEY=JSONVALUE...: a small JSON object into $LAB_OUT/FILE
lab_result_json() {
    local f=$1 kv sep="" body="{"
    shift
    for kv in "$@"; do body+="$sep\"${kv%%=*}\": ${kv#*=}"; sep=", "; done
    echo "$body}" > "$LAB_OUT/$f"
}
