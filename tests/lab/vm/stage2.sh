#!/bin/bash
# PID 1 of the lab guest (after switch_root; root = overlay of the host's / read-only + tmpfs).
# The runner copies this file into the per-run directory, which the guest sees as /lab:
#   /lab/manifest.sh         written by the runner: paths, env, scenario list, time limits
#   /lab/scenarios/NAME.sh   copies of the scenario files
#   /lab/results/NAME/       $LAB_OUT of scenario NAME (results files land here, on the host)
#   /lab/status              one line per finished scenario: NAME RC WALL
# Console protocol read by the runner (lines start with "LAB: "):
#   LAB: guest ready ...   LAB: scenario NAME start   LAB: scenario NAME rc=N wall=S.SSs   LAB: all done
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/netns /sys/fs/cgroup
mount -t devpts devpts /dev/pts
# devtmpfs has no /dev/fd: bash process substitution <(...) needs it
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname lvslab

poweroff_now() {
    sync
    # Asynchronous power-off; QEMU exits. PID 1 must not exit first (kernel panic): busy-wait in a
    # builtin.
    echo o > /proc/sysrq-trigger
    while :; do :; done
}

# shellcheck source=/dev/null
. /lab/manifest.sh || { echo "LAB: manifest missing"; poweroff_now; }

# The host's /tmp directories the run needs (the checkout, the interpreter, an --lvs-hooks
# command may be there: CI clones anywhere), mounted back at their paths over the guest's own
# /tmp tmpfs; again after each scenario's fresh /tmp.
mount_host_tmp() {
    local d
    [ ${#LAB_HOST_TMP[@]} -gt 0 ] || return 0
    if ! mountpoint -q /run/hosttmp; then
        mkdir -p /run/hosttmp
        mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hosttmp \
            /run/hosttmp || { echo "LAB: hosttmp mount failed"; return 1; }
    fi
    for d in "${LAB_HOST_TMP[@]}"; do
        mkdir -p "$d" && mount --bind "/run/hosttmp/${d#/tmp/}" "$d" \
            || echo "LAB: cannot mount host $d"
    done
}
mount_host_tmp

# `lvs-hooks` on PATH: the checkout the runner lives in, run by the runner's interpreter, unless
# the runner was given another command (--lvs-hooks, e.g. from an unpacked RPM).
mkdir -p /usr/local/bin
if [ -n "${LAB_LVS_HOOKS_CMD:-}" ]; then
    printf '#!/bin/sh\nexec %s "$@"\n' "$LAB_LVS_HOOKS_CMD" > /usr/local/bin/lvs-hooks
else
    printf '#!/bin/sh\nexport PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}\nexec %s -m lvs_hooks "$@"\n' \
        "$LAB_PROJECT" "$LAB_PYTHON" > /usr/local/bin/lvs-hooks
fi
chmod 755 /usr/local/bin/lvs-hooks

# Modules nearly every scenario needs, loaded once so that scenario wall times compare.
modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh veth bridge 2>&1
# A task blocked this long in the kernel gets its stack in the kernel's log (kept with a failed
# scenario's logs): a stall is then readable after the fact. The kernel's default is 120 s.
echo 30 > /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null

up() { local u; read -r u _ < /proc/uptime; echo "$u"; }
# a sleep without a process start: read with a timeout on a FIFO nobody writes to
mkfifo /run/lab-sleep.fifo
exec {SLEEPFD}<>/run/lab-sleep.fifo
nap() { read -r -t "$1" -u "$SLEEPFD"; }

# The guest's speed (tests/lab/README.md, "Deadlines that scale with the machine"): a fixed CPU
# workload, a loop of bash builtins (no process start, no 9p read: only the share of the host's
# CPU this guest's vCPUs get, and TCG's speed), one per vCPU at once, the slowest of them
# (calib_round), timed three times; the fastest round against
# CALIB_REF_US, the same measure on this 2-core host, idle (342-388 ms over 5 boots, 6.1 and
# 6.12 alike). calib = fastest / reference; LAB_SLOW = calib within [1, 4]: lab_wait (lib.sh)
# stretches every deadline by it and the time limits below are stretched by it, never shrunk
# below the written ones; 4 at most so that a hung scenario cannot hold the VM for much more
# than its limit.
# -e LAB_SLOW=F sets the factor instead of measuring (still within [1, 4]).
CALIB_LOOPS=20000
CALIB_REF_US=350000
calib_once() { # -> CALIB_ONE (microseconds)
    local i t0=$EPOCHREALTIME t1
    for ((i = 0; i < CALIB_LOOPS; i++)); do :; done
    t1=$EPOCHREALTIME
    CALIB_ONE=$(( ${t1/./} - ${t0/./} ))
}
# One loop per guest CPU at once; CALIB_ONE is the slowest. A single loop measures one virtual
# CPU, which a host with one core kept busy by something else still gives a core of its own:
# measured 1.09 while that host ran the scenarios 2-3 times slower (busy-keeper 256 s against
# 87 s idle), since they use every virtual CPU and those then share the one free core.
calib_round() {
    local n=$1 i t max=0 pids=() f=/run/lab-calib
    for ((i = 0; i < n; i++)); do
        ( calib_once; echo "$CALIB_ONE" > "$f.$i" ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    for ((i = 0; i < n; i++)); do
        read -r t < "$f.$i" && (( t > max )) && max=$t
    done
    CALIB_ONE=$max
}
CPUS=$(nproc 2>/dev/null) || CPUS=1
calibrate() {
    local runs=() kv forced=""
    for kv in "${LAB_ENV[@]}"; do
        case $kv in LAB_SLOW=*) forced=${kv#LAB_SLOW=} ;; esac
    done
    if [[ $forced =~ ^([0-9]+)(\.([0-9]*))?$ ]]; then
        local frac=${BASH_REMATCH[3]}00
        CALIB_US=0 CALIB_RUNS=-
        SLOW_PCT=$(( 10#${BASH_REMATCH[1]} * 100 + 10#${frac:0:2} ))
    else
        for kv in 1 2 3; do calib_round "$CPUS"; runs+=("$CALIB_ONE"); done
        local a=${runs[0]} b=${runs[1]} c=${runs[2]}
        # the fastest: the end of the boot still runs beside the first loops (up to +50 %), and a
        # host that is busy all along (another VM) slows every loop alike
        CALIB_US=$(( a < b ? (a < c ? a : c) : (b < c ? b : c) ))
        CALIB_RUNS="$a,$b,$c"
        SLOW_PCT=$(( (CALIB_US * 100 + CALIB_REF_US / 2) / CALIB_REF_US ))
    fi
    CALIB_PCT=$SLOW_PCT
    (( SLOW_PCT < 100 )) && SLOW_PCT=100
    (( SLOW_PCT > 400 )) && SLOW_PCT=400
    printf -v LAB_SLOW '%d.%02d' $((SLOW_PCT / 100)) $((SLOW_PCT % 100))
    printf -v CALIB '%d.%02d' $((CALIB_PCT / 100)) $((CALIB_PCT % 100))
    export LAB_SLOW
}
calibrate
# a limit stretched by LAB_SLOW, rounded up
stretch() { echo $(( ($1 * SLOW_PCT + 99) / 100 )); }
echo "LAB: guest ready uptime=$(up) kernel=$(uname -r) scenarios=${#LAB_SCENARIOS[@]}" \
    "slow=$LAB_SLOW calib=$CALIB cpus=$CPUS" \
    "calib_us=$CALIB_RUNS ref_us=$CALIB_REF_US"

if [ "${LAB_MODE:-run}" = shell ]; then
    export LAB_DIR LAB_PYTHON LAB_PROJECT LAB_OUT=/lab/results/shell
    mkdir -p "$LAB_OUT"
    for kv in "${LAB_ENV[@]}"; do export "${kv?}"; done
    cd /tmp && setsid /bin/bash -l </dev/ttyS0 >/dev/ttyS0 2>&1
    poweroff_now
fi

# Between scenarios: nothing a scenario started or made may leak into the next one.
cleanup() { # cgroup-dir
    local cg=$1 i l t0=$EPOCHREALTIME links=()
    # every process the scenario started is in its cgroup (daemons too: forks inherit it)
    echo 1 > "$cg/cgroup.kill" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        [ -s "$cg/cgroup.procs" ] || break
        nap 0.1
    done
    [ -s "$cg/cgroup.procs" ] && echo "LAB: cleanup: processes still alive: $(tr '\n' ' ' < "$cg/cgroup.procs")"
    rmdir "$cg" 2>/dev/null
    local t_kill=$EPOCHREALTIME
    # netns first (their veths go with them), then what is left in the root namespace, in one
    # `ip -b` (each `ip` costs ~0.2 s under TCG)
    ip -all netns delete 2>/dev/null
    for l in /sys/class/net/*; do
        l=${l##*/}
        [ "$l" = lo ] || links+=("link del $l")
    done
    [ ${#links[@]} -gt 0 ] && printf '%s\n' "${links[@]}" | ip -force -b - 2>/dev/null
    # IPVS in the root namespace (scenarios should use their own netns): only if something is there
    if [ -e /proc/net/ip_vs ] && [ "$(wc -l < /proc/net/ip_vs)" -gt 3 ]; then ipvsadm -C; fi
    if [ -e /proc/net/ip_vs ]; then
        ipvsadm --stop-daemon master 2>/dev/null
        ipvsadm --stop-daemon backup 2>/dev/null
    fi
    # The kernel tears a deleted namespace down later, in its "netns" workqueue, taking the
    # RTNL (a lock global to every namespace) in turns, and stops the IPVS sync threads a
    # killed keepalived left. A scenario that started meanwhile would have its keepalived wait
    # for the same lock while it starts and stops its sync daemon. Suspected once (keepalived
    # stalled for over 70 s right after starting) and ruled out since: by the time this runs the
    # teardown is done or nearly (20-467 ms, median 24 ms, in a whole tier). The wait stays as
    # a guard, bounded, and says how long it took.
    local t_ns=$EPOCHREALTIME busy="" polls
    polls=$(stretch 300)   # 30 s at 0.1 s
    for ((i = 0; ; i++)); do
        netns_teardown_busy || break
        (( i < polls )) || { busy=$REPLY; break; }
        nap 0.1
    done
    local t_gone=$EPOCHREALTIME
    # a fresh /tmp for the next scenario
    umount -l /tmp 2>/dev/null
    mount -t tmpfs tmpfs /tmp
    mount_host_tmp
    local t1=$EPOCHREALTIME
    echo "LAB: cleanup $(( (${t1/./} - ${t0/./}) / 1000 )) ms (processes $(( (${t_kill/./} - ${t0/./}) / 1000 )) ms, ${#links[@]} root links, namespace teardown $(( (${t_gone/./} - ${t_ns/./}) / 1000 )) ms${busy:+, still busy: $busy})"
}

# netns_teardown_busy: true while the kernel is still tearing deleted namespaces down: a kworker
# working for the "netns" workqueue (its comm then ends in "+netns") or an IPVS sync thread
# (ipvs-m:/ipvs-b:) still alive; what was seen in REPLY. No process start: /proc only.
netns_teardown_busy() {
    local c seen=()
    for c in /proc/[0-9]*/comm; do
        read -r c < "$c" 2>/dev/null || continue
        case $c in *+netns|ipvs-[mb]:*) seen+=("$c") ;; esac
    done
    REPLY=${seen[*]}
    [ ${#seen[@]} -gt 0 ]
}

# keep_logs DIR RC: what each director left, whatever the scenario kept itself, so that a failure
# can be read after the VM is gone: lvs-hooks' lines of the syslog, and per director its agent's
# and keepalived's logs and its journal of transitions; after a failure (RC not 0) also its IPVS
# services with their counters and the head of its connection table (the head only: a whole
# read of a large table takes minutes, docs/design.md 2.4).
keep_logs() {
    local dir=$1 rc=$2 cg=${3:-} d ns pid
    mkdir -p "$dir"
    if [ "$rc" != 0 ] && [ -n "$cg" ]; then
        # where each process the scenario left was, in the kernel too (a daemon that stopped
        # answering: keepalived once stalled for over 70 s after a higher-priority advert)
        for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do
            printf '%s %s %s wchan=%s\n' "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null)" \
                "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" \
                "$(cat "/proc/$pid/wchan" 2>/dev/null)"
            sed 's/^/    /' "/proc/$pid/stack" 2>/dev/null
        done > "$dir/processes.txt"
        # every blocked task of the guest, kernel threads too (who holds what the scenario's
        # processes wait for), with the kernel's log since boot
        echo w > /proc/sysrq-trigger 2>/dev/null
        dmesg > "$dir/kernel.log" 2>&1
    fi
    grep -a 'lvs-hooks' /tmp/lab/syslog.log > "$dir/lvs-hooks.log" 2>/dev/null
    for d in /tmp/lab/dir*/; do
        [ -d "$d" ] || continue
        ns=$(basename "$d")
        cp "$d/agent.log" "$dir/agent-$ns.log" 2>/dev/null
        cp "$d/keepalived.log" "$dir/keepalived-$ns.log" 2>/dev/null
        cp "$d/state/events.jsonl" "$dir/events-$ns.jsonl" 2>/dev/null
        if [ "$rc" != 0 ] && ip netns list 2>/dev/null | grep -qw "$ns"; then
            ip netns exec "$ns" ipvsadm -Ln --persistent-conn > "$dir/ipvs-$ns.txt" 2>&1
            ip netns exec "$ns" head -n 2000 /proc/net/ip_vs_conn > "$dir/conn-head-$ns.txt" 2>&1
        fi
    done
    find "$dir" -type f -empty -delete
    return 0
}

: > /lab/status
for idx in "${!LAB_SCENARIOS[@]}"; do
    name=${LAB_SCENARIOS[$idx]}
    limit=$(stretch "${LAB_TIMEOUTS[$idx]}")
    out=/lab/results/$name
    mkdir -p "$out"
    cg=/sys/fs/cgroup/scn-$idx
    mkdir -p "$cg"
    echo "LAB: scenario $name start limit=${limit}s uptime=$(up)"
    t0=$EPOCHREALTIME
    (
        echo "$BASHPID" > "$cg/cgroup.procs"
        for kv in "${LAB_ENV[@]}"; do export "${kv?}"; done
        # after LAB_ENV: the factor the limits were stretched by is the one lab_wait uses
        export LAB_OUT=$out LAB_NAME=$name LAB_DIR LAB_PYTHON LAB_PROJECT LAB_SLOW
        mkdir -p /tmp/lab
        cd /tmp/lab || exit 1
        exec timeout -k 5 "$limit" /bin/bash "/lab/scenarios/$name.sh"
    ) < /dev/null 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    wall=$(( (${t1/./} - ${t0/./}) / 10000 ))   # centiseconds
    wall=$(printf '%d.%02d' $((wall / 100)) $((wall % 100)))
    echo "$name $rc $wall" >> /lab/status
    echo "LAB: scenario $name rc=$rc wall=${wall}s"
    keep_logs "$out/logs" "$rc" "$cg"
    cleanup "$cg"
done
echo "LAB: all done uptime=$(up)"
poweroff_now
