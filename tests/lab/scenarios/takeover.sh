#!/bin/bash
# lab-timeout: 300
# Issue 4, a takeover with the two cases the kernel's own sync gets wrong (LVS_HOOKS=1 wires
# lvs-hooks into keepalived; takeover-hooks.sh runs this with it, so one VM gives before/after):
#  - TCP: each client keeps ONE long-lived TCP connection with data flowing every second. The
#    directors sync templates only (sync_persist_mode=1), so the connection itself never reaches
#    the backup: after the takeover its next segment is not a SYN. It continues only if the new
#    master accepts it (sloppy_tcp, which lvs-hooks sets from its config) and sends it to the
#    real server its template names.
#  - fwmark: UDP to the VIP is marked (fwmark service 1, real servers on port 5000). The kernel's
#    sync delivers fwmark templates with port 0, which never bind to a real server: new flows
#    after the takeover are scheduled afresh unless lvs-hooks replaces those templates.
# Results: $LAB_OUT/result.json
set -u
. "$LAB_DIR/lib.sh"
LAB_PROTOS=TCP
LAB_FWMARK=1
mode=baseline
[ "$LVS_HOOKS" = 1 ] && mode="lvs-hooks ($LVS_HOOKS_MODE)"
field() { "$LAB_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$LAB_REPLY" "$1"; }

lab_step "topology, templates-only sync, fwmark rules, keepalived (mode: $mode)"
lab_topology 2
for d in dir1 dir2; do
    nsx "$d" sysctl -qw net.ipv4.vs.sync_persist_mode=1 2>/dev/null \
        || { nsx "$d" modprobe ip_vs; nsx "$d" sysctl -qw net.ipv4.vs.sync_persist_mode=1; } \
        || lab_die "sync_persist_mode on $d"
    lab_fwmark_rules "$d"
done
lab_keepalived_first dir1 150 MASTER
lab_keepalived_start dir2 100 BACKUP
lab_client_start
lab_wait 60 "dir1 is master" lab_master_is dir1 || lab_die "no master"
if [ "$LVS_HOOKS" = 1 ]; then
    # lvs-hooks starts slowly under emulation (seconds of imports): the case under test is a
    # takeover between two directors whose hooks run, so wait for both transitions
    lab_wait 60 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
        || lab_die "no MASTER transition on dir1"
    lab_wait 60 "dir2's BACKUP transition journalled" lab_hooks_state dir2 BACKUP \
        || lab_die "no BACKUP transition on dir2"
fi

lab_step "start: a UDP flow (fwmark service) and a TCP connection per client, both kept busy"
lab_client open udp-start udp || lab_die "udp flows"
[ "$(field answered)" = "$LAB_CLIENTS" ] || lab_die "not every UDP flow answered"
lab_client open tcp-start tcp || lab_die "tcp connections"
[ "$(field answered)" = "$LAB_CLIENTS" ] || lab_die "not every TCP connection answered"
lab_client keepalive 1
lab_wait 60 "dir2 has both kinds of templates by sync" lab_tpl_at_least dir2 $((2 * LAB_CLIENTS)) \
    || lab_die "templates did not reach dir2"
echo "--- dir2 templates before the takeover (fwmark ones with port 0):"; lab_templates dir2 | sort | head -n 6

lab_step "hard failure of dir1"
lab_fail_hard dir1
lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
if [ "$LVS_HOOKS" = 1 ]; then
    # the MASTER transition (reseed) is done when its journal says so
    lab_wait 30 "dir2's MASTER transition journalled" lab_hooks_state dir2 MASTER \
        || lab_log "no MASTER record yet"
fi

lab_step "after: the same TCP connections, new UDP flows (fwmark)"
lab_client ref tcp-start
lab_client probe tcp-after tcp-start || lab_die "probe"
tcp_same=$(field same_as_ref); tcp_reset=$(field no_answer)
lab_client ref udp-start
lab_client open udp-new udp || lab_die "udp flows after"
fwm_same=$(field same_as_ref)
echo "--- dir2 templates after:"; lab_templates dir2 | sort | head -n 6
echo "--- dir2 raw entries of protocol IP or port FFFF:"; lab_conn dir2 | grep -E '^IP |FFFF' | head
lab_log "RESULT ($mode): TCP connections continuing on their real server: $tcp_same/$LAB_CLIENTS" \
        "(reset/no answer: $tcp_reset); fwmark clients on their real server: $fwm_same/$LAB_CLIENTS"
lab_client report "$LAB_OUT/traffic.json" > /dev/null
cp "$LAB_TMP/dir2/keepalived.log" "$LAB_OUT/keepalived-dir2.log" 2>/dev/null || true
[ "$LVS_HOOKS" = 1 ] && lab_syslog 'lvs-hooks' > "$LAB_OUT/lvs-hooks.log"
if [ "$LVS_HOOKS" = 1 ]; then
    lab_syslog 'lvs-hooks' | grep -E 'MASTER|reseed|keeper|replace|fwmark|error|Traceback' | tail -n 40
    nsx dir2 lvs-hooks --config "$LAB_TMP/dir2/lvs-hooks.yaml" history --json -n 0 \
        > "$LAB_OUT/history-dir2.json"
fi
lab_result_json result.json "scenario=\"takeover\"" "mode=\"$mode\"" \
    "hooks=$([ "$LVS_HOOKS" = 1 ] && echo true || echo false)" "clients=$LAB_CLIENTS" \
    "tcp_same=$tcp_same" "tcp_no_answer=$tcp_reset" "fwmark_same=$fwm_same"
