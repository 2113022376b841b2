#!/bin/bash
# lab-timeout: 300
# Issue 17: a persistent UDP service on an IPv6 VIP through takeover, template expiry and the
# failback of a rebooted master, with lvs-hooks in keepalived's FIFO (LVS_HOOKS=1 always) and,
# with LVS_HOOKS_AGENT=1 (scenario ipv6-agent), the agent and the warm-up gate.
#
# Topology: lib.sh's with LAB_IPV6=1: VIP fd00::100, real servers fd00:1::11 and fd00:1::12
# (NAT, their default route the gateway VIP fd00:1::254), 20 clients fd00::20 ... fd00::39, the
# kernel's sync daemon on the IPv4 sync link. The IPv4 UDP service stays beside it (a table of
# both families), without traffic.
#
#   start     one UDP flow per client through dir1 (master), sending every second; synced to dir2
#   1         hard failure of dir1; dir2 takes over: probe the existing flows
#   2         the flows go on for 1.5 x persistence_timeout after dir2's MASTER transition (the
#             synced templates expire unless the keeper renews them); probe, then a NEW flow per
#             client (its real server is the template's, or a fresh schedule if it expired)
#   3         dir1 comes back rebooted (empty table) and takes the VIP back (at once with the
#             FIFO; once warm from a push with the agent); probe the flows, then new flows
#
# Pass: 20 of 20 clients on the real server they had at start at every step, and no traceback
# in any log of the run (lvs-hooks' syslog lines, the agents' output, keepalived, the client and
# the real servers) and no failed periodic duty. Before issue 17's fix every keeper period and
# every push check failed on the IPv6 service's netmask (8-12 of 20 after the expiry).
#
# Results ($LAB_OUT, on every exit path): result.json (same_rs per step, tracebacks per file,
# periodic failures, templates on dir2, waits, the client's record), traffic.txt, syslog.log,
# agent-DIR.log, keepalived-DIR.log/.conf, lvs-hooks-DIR.yaml, events-DIR.jsonl.
set -u
export LVS_HOOKS=1 LVS_HOOKS_MODE=fifo LAB_IPV6=1
. "$LAB_DIR/lib.sh"
LAB_PROTOS=UDP
LAB_PROTOS6=UDP
SYSLOG="$LAB_TMP/syslog.log"
agent=$([ "$LVS_HOOKS_AGENT" = 1 ] && echo true || echo false)

declare -A same=() waited=() tpl_dir2=()
steps=()
completed=false
failures=()

step() {  # step LABEL open|probe: a client step; its same_as_ref into same[LABEL]
    local label=$1 kind=$2
    lab_client "$kind" "$label" || lab_die "client: $kind $label"
    same[$label]=$(lab_json_field same_as_ref)
    steps+=("$label")
    [ "${same[$label]}" = "$LAB_CLIENTS" ] \
        || lab_log "step $label: ${same[$label]} of $LAB_CLIENTS clients on their real server"
}
templates6() {  # IPv6 templates of DIR, raw /proc lines
    lab_conn "$1" | awk '$3 == "0000" && $2 ~ /:/'
}
count_tpl() {  # count_tpl LABEL: dir2's IPv6 templates
    tpl_dir2[$1]=$(templates6 dir2 | wc -l)
    lab_log "dir2: ${tpl_dir2[$1]} IPv6 templates ($1)"
}
json_map() {  # json_map NAME: an associative array of numbers as a JSON object
    local -n m=$1
    local k s="{" sep=""
    for k in "${!m[@]}"; do s+="$sep\"$k\": ${m[$k]:-null}"; sep=", "; done
    echo "$s}"
}
count_in() { awk -v w="$1" '{ n += gsub(w, "") } END { print n + 0 }' "$2" 2>/dev/null || echo 0; }

collect() {  # the logs and figures on every exit path
    local rc=$1 d f n tb="{" sep="" tb_total=0 periodic=0
    trap - EXIT
    set +u
    cp "$SYSLOG" "$LAB_OUT/syslog.log" 2>/dev/null
    for d in dir1 dir2; do
        cp "$LAB_TMP/$d/agent.log" "$LAB_OUT/agent-$d.log" 2>/dev/null
        cp "$LAB_TMP/$d/keepalived.log" "$LAB_OUT/keepalived-$d.log" 2>/dev/null
        cp "$LAB_TMP/$d/keepalived.conf" "$LAB_OUT/keepalived-$d.conf" 2>/dev/null
        cp "$LAB_TMP/$d/lvs-hooks.yaml" "$LAB_OUT/lvs-hooks-$d.yaml" 2>/dev/null
        cp "$LAB_TMP/$d/state/events.jsonl" "$LAB_OUT/events-$d.jsonl" 2>/dev/null
    done
    cp "$LAB_TMP/client.log" "$LAB_OUT/client.log" 2>/dev/null
    for f in "$LAB_OUT"/syslog.log "$LAB_OUT"/agent-*.log "$LAB_OUT"/keepalived-*.log \
             "$LAB_OUT"/client.log "$LAB_TMP"/rs*.log; do
        [ -e "$f" ] || continue
        n=$(count_in Traceback "$f")
        tb+="$sep\"${f##*/}\": $n"; sep=", "
        tb_total=$((tb_total + n))
    done
    tb+="}"
    # a duty that raised: "periodic keeper while MASTER failed (3 so far)", "periodic work ..."
    periodic=$(cat "$LAB_OUT"/syslog.log "$LAB_OUT"/agent-*.log 2>/dev/null \
               | grep -c 'periodic .* failed')
    [ "$tb_total" -gt 0 ] && failures+=("$tb_total tracebacks in the logs")
    [ "$periodic" -gt 0 ] && failures+=("$periodic failed periodic duties in the logs")
    [ -n "${LAB_CIN:-}" ] && lab_client report "$LAB_OUT/traffic.json" > /dev/null
    local s="{" ssep="" l traffic=null fl="[" fsep=""
    for l in "${steps[@]}"; do s+="$ssep\"$l\": ${same[$l]:-null}"; ssep=", "; done
    s+="}"
    [ -s "$LAB_OUT/traffic.json" ] && traffic=$(< "$LAB_OUT/traffic.json")
    for l in "${failures[@]}"; do fl+="$fsep\"$l\""; fsep=", "; done
    fl+="]"
    [ "$rc" = 0 ] && [ ${#failures[@]} -gt 0 ] && rc=1
    lab_result_json result.json "scenario=\"ipv6\"" "agent=$agent" "completed=$completed" \
        "rc=$rc" "pass=$([ "$rc" = 0 ] && echo true || echo false)" "failures=$fl" \
        "clients=$LAB_CLIENTS" "persistence_timeout=$LAB_PERSIST" "vip=\"$LAB_VIP6\"" \
        "same_rs=$s" "tracebacks=$tb" "tracebacks_total=$tb_total" \
        "periodic_failures=$periodic" "templates_dir2=$(json_map tpl_dir2)" \
        "waited_s=$(json_map waited)" "wall_s=$(lab_elapsed)" "traffic=$traffic"
    echo "LAB: ipv6 (agent $agent) same-rs (of $LAB_CLIENTS):" \
        "$(for l in "${steps[@]}"; do printf '%s=%s ' "$l" "${same[$l]:-?}"; done)"
    echo "LAB: ipv6 (agent $agent) tracebacks: $tb_total $tb; periodic failures: $periodic"
    echo "LAB: ipv6 (agent $agent) $([ "$rc" = 0 ] && echo PASS || echo "FAIL (rc $rc): ${failures[*]:-see the log}")"
    [ -e "$LAB_OUT/traffic.txt" ] && cat "$LAB_OUT/traffic.txt"
    exit "$rc"
}
trap 'collect $?' EXIT
trap "trap '' TERM; exit 124" TERM

lab_step "topology (IPv6 VIP $LAB_VIP6); keepalived + lvs-hooks (fifo, agent $agent) on dir1" \
    "(150) and dir2 (100)"
lab_topology 2
first_state=MASTER
[ "$agent" = true ] && first_state=BACKUP  # the gate decides (as in failback3)
if [ "$first_state" = MASTER ]; then
    lab_keepalived_first dir1 150 MASTER
else
    lab_keepalived_start dir1 150 "$first_state"  # the gate holds it: dir2 must run
fi
lab_keepalived_start dir2 100 BACKUP
lab_client_start
t=$EPOCHREALTIME
lab_wait 90 "dir1 is master" lab_master_is dir1 || lab_die "no master"
lab_wait 30 "dir1 has the IPv6 VIP" lab_has_vip6 dir1 || lab_die "no IPv6 VIP on dir1"
# lvs-hooks starts slowly under emulation: the story is about directors whose hooks run
lab_wait 90 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
    || lab_die "no MASTER transition on dir1"
lab_wait 90 "dir2's BACKUP transition journalled" lab_hooks_state dir2 BACKUP \
    || lab_die "no BACKUP transition on dir2"
if [ "$agent" = true ]; then
    for d in dir1 dir2; do
        lab_wait 90 "$d warm" lab_warm "$d" || lab_die "$d never warm"
    done
fi
waited[ready]=$(lab_elapsed "$t")

lab_step "start: $LAB_CLIENTS IPv6 clients open one UDP flow each; flows keep sending every second"
lab_client keepalive 1
step start open
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
t=$EPOCHREALTIME
lab_wait 60 "dir2 has the synced templates and connections" lab_synced dir2 "$LAB_CLIENTS" \
    || lab_die "templates/connections did not reach dir2"
waited[sync]=$(lab_elapsed "$t")
count_tpl start

lab_step "1: hard failure of dir1 (master)"
lab_fail_hard dir1
t=$EPOCHREALTIME
lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
lab_wait 30 "dir2 has the IPv6 VIP" lab_has_vip6 dir2 || lab_die "no IPv6 VIP on dir2"
waited[takeover]=$(lab_elapsed "$t")
lab_wait 90 "dir2's MASTER transition journalled" lab_hooks_state dir2 MASTER \
    || lab_die "no MASTER transition on dir2"
waited[master_transition]=$(lab_elapsed "$t")
step 1-takeover probe

lab_step "2: flows go on for 1.5 x $LAB_PERSIST s on dir2, then new flows"
t=$EPOCHREALTIME
outlived() { local now=$EPOCHREALTIME; (( (${now/./} - ${t/./}) * 2 >= 3 * LAB_PERSIST * 1000000 )); }
lab_wait $((2 * LAB_PERSIST + 30)) "1.5 x persistence_timeout since the MASTER transition" \
    outlived || lab_die "clock"
count_tpl expired
echo "--- dir2 IPv6 templates:"; templates6 dir2
step 2-expired probe
step 2-new open

lab_step "3: dir1 comes back rebooted (empty table) and takes the VIP back"
lab_reboot dir1
lab_keepalived_start dir1 150 "$first_state"
t=$EPOCHREALTIME
if [ "$agent" = true ]; then
    lab_wait 120 "dir1 warm (a push from dir2, checked in its table)" lab_warm dir1 \
        || lab_die "dir1 never warm"
    waited[warm]=$(lab_elapsed "$t")
fi
lab_wait 120 "dir1 is master again" lab_master_is dir1 || lab_die "dir1 did not take the VIP back"
lab_wait 30 "dir1 has the IPv6 VIP" lab_has_vip6 dir1 || lab_die "no IPv6 VIP on dir1"
waited[failback]=$(lab_elapsed "$t")
lab_wait 90 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
    || lab_die "no MASTER transition on dir1"
waited[failback_transition]=$(lab_elapsed "$t")
step 3-failback probe
step 3-new open
completed=true

for l in "${steps[@]}"; do
    [ "${same[$l]}" = "$LAB_CLIENTS" ] \
        || failures+=("$l: ${same[$l]} of $LAB_CLIENTS on their real server")
done
exit 0
