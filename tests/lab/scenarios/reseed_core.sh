#!/bin/bash
# lab-timeout: 480
# Issue 3, core reseed on a real kernel:
#  A. dir1 holds 1,000 live LOCAL templates (made by real traffic) on three services: UDP VIP:5000,
#     UDP VIP2:5000 and a fwmark service whose real servers listen on port 5000. `lvs-hooks
#     snapshot`; dir1 reboots (empty table); its services come back; `lvs-hooks reseed --latest`:
#     all 1,000 back, each on its real server, timeouts within 2 s of the prediction; dir2, a peer
#     with a backup daemon on the sync link, received nothing (TTL 0).
#  B. dir1 reboots again; now only a master sync daemon runs (what keepalived leaves on a new
#     master). reseed starts a backup daemon, uses it, stops it; the master daemon is untouched.
# Results: $LAB_OUT/reseed_core.json
set -u
. "$LAB_DIR/lib.sh"

VIP2=10.0.0.101
FWM_VIP=10.0.0.102   # marked by iptables: the fwmark service; real servers answer on 5000
N_UDP=400 N_VIP2=300 N_FWM=300
N=$((N_UDP + N_VIP2 + N_FWM))
CFG=$(lab_hooks_config dir1)
cat >> "$CFG" <<EOF
reseed:
  min_timeout: 30
EOF
hooks() { nsx dir1 lvs-hooks --config "$CFG" "$@"; }

# services as keepalived's checker would create them (ipvsadm is fine in the lab)
services_up() {
    nsx dir1 sh -ec "
      ip addr add $LAB_VIP/24 dev eth0; ip addr add $VIP2/24 dev eth0
      ip addr add $LAB_GW_VIP/24 dev eth1
      ip addr add $FWM_VIP/24 dev eth0
      iptables -t mangle -A PREROUTING -d $FWM_VIP -j MARK --set-mark 1
      ipvsadm -A -u $LAB_VIP:$LAB_VPORT -s rr -p 600
      ipvsadm -A -u $VIP2:$LAB_VPORT -s rr -p 600
      ipvsadm -A -f 1 -s rr -p 600
      for r in 10.1.0.11 10.1.0.12; do
        ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r \$r:$LAB_VPORT -m
        ipvsadm -a -u $VIP2:$LAB_VPORT -r \$r:$LAB_VPORT -m
        ipvsadm -a -f 1 -r \$r:$LAB_VPORT -m
      done" || lab_die "services on dir1"
}
sync_rx() { # UDP datagrams that reached dir2 (InDatagrams NoPorts InErrors IgnoredMulti)
    local l h=()
    while read -r l; do
        if [[ $l == Udp:* ]]; then
            if [ ${#h[@]} = 0 ]; then read -r -a h <<< "$l"
            else local v; read -r -a v <<< "$l"; echo $(( v[1] + v[2] + v[3] + v[8] )); return; fi
        fi
    done < "/proc/${LAB_ANCHOR[dir2]}/net/snmp"
}

lab_step "topology, dir1 services, dir2 backup sync daemon (the peer that must hear nothing)"
lab_topology 2
services_up
nsx dir2 ipvsadm --start-daemon backup --mcast-interface "$LAB_SYNC_IF" --syncid "$LAB_SYNCID" \
    || lab_die "dir2 backup daemon"
nsx dir1 ipvsadm -Ln

lab_step "A. $N live templates from real traffic"
nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$LAB_VIP" --port "$LAB_VPORT" \
    --base 10.2.0.0 "$N_UDP" || lab_die "traffic"
nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$VIP2" --port "$LAB_VPORT" \
    --base 10.4.0.0 "$N_VIP2" || lab_die "traffic"
nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$FWM_VIP" --port "$LAB_VPORT" \
    --base 10.3.0.0 "$N_FWM" || lab_die "traffic"
lab_wait 60 "$N templates on dir1" lab_tpl_at_least dir1 "$N" || lab_die "only $(lab_tpl_count dir1)"
lab_templates dir1 | awk '{print $1, $4}' | sort | uniq -c

lab_step "A. lvs-hooks snapshot"
snap=$(hooks snapshot --json) || lab_die "snapshot failed"
echo "$snap"
SNAPFILE=$(echo "$snap" | "$LAB_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["path"])')

lab_step "A. dir1 reboots: empty table; services come back; reseed --latest"
lab_reboot dir1
services_up
[ "$(lab_tpl_count dir1)" = 0 ] || lab_die "table not empty after reboot"
rx0=$(sync_rx)
reseed=$(hooks reseed --latest --json) || lab_die "reseed failed: $reseed"
echo "$reseed"
check=$(nsx dir1 "$LAB_PYTHON" "$LAB_DIR/tplcheck.py" --proc "/proc/${LAB_ANCHOR[dir1]}" \
        --snapshot "$SNAPFILE") ; check_rc=$?
echo "check: $check"
rx1=$(sync_rx)
peer_templates=$(lab_tpl_count dir2)
lab_log "dir2 (peer): UDP datagrams received during the reseed: $((rx1 - rx0)), templates: $peer_templates"
nsx dir1 lvs-hooks --config "$CFG" status | head -20

lab_step "B. dir1 reboots again; only a master sync daemon runs (as keepalived leaves it)"
lab_reboot dir1
services_up
nsx dir1 ipvsadm --start-daemon master --mcast-interface "$LAB_SYNC_IF" --syncid "$LAB_SYNCID" \
    || lab_die "master daemon"
daemons_before=$(nsx dir1 ipvsadm -L --daemon)
echo "$daemons_before"
reseed_b=$(hooks reseed --latest --json) || lab_die "reseed B failed: $reseed_b"
echo "$reseed_b"
daemons_after=$(nsx dir1 ipvsadm -L --daemon)
echo "daemons after: $daemons_after"
check_b=$(nsx dir1 "$LAB_PYTHON" "$LAB_DIR/tplcheck.py" --proc "/proc/${LAB_ANCHOR[dir1]}" \
          --snapshot "$SNAPFILE"); check_b_rc=$?
echo "check B: $check_b"

lab_step "C. lvs-hooks' own netlink: timeouts set/get, a daemon with every attribute, read by ipvsadm"
nsx dir1 env PYTHONPATH="$LAB_PROJECT" "$LAB_PYTHON" - <<'PY' > "$LAB_TMP/netlink.txt" || lab_die "netlink checks"
from lvs_hooks.kernel.netlink import IPVS
with IPVS() as i:
    i.set_timeouts(901, 121, 301)
    print("timeouts", i.timeouts())
    i.stop_daemon("master")
    i.start_daemon("master", "sync0", 77, maxlen=1000, group="224.0.0.82", port=8850, ttl=3)
    print("daemons", i.daemons())
PY
cat "$LAB_TMP/netlink.txt"
ipvsadm_view=$(nsx dir1 sh -c 'ipvsadm -L --timeout; ipvsadm -L --daemon')
echo "$ipvsadm_view"
netlink_ok=false
[[ $ipvsadm_view == *"901 121 301"* && $ipvsadm_view == *"syncid=77, maxlen=1000, group=224.0.0.82, port=8850, ttl=3"* ]] \
    && netlink_ok=true

json_str() { "$LAB_PYTHON" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
cat > "$LAB_OUT/reseed_core.json" <<EOF
{"templates_made": $N,
 "snapshot": $snap,
 "reseed": $reseed,
 "check": $check,
 "peer_udp_datagrams": $((rx1 - rx0)),
 "peer_templates": $peer_templates,
 "b_reseed": $reseed_b,
 "b_check": $check_b,
 "b_daemons_before": $(json_str "$daemons_before"),
 "b_daemons_after": $(json_str "$daemons_after"),
 "netlink_ok": $netlink_ok}
EOF
fail=0
[ "$check_rc" = 0 ] || { lab_log "FAIL A: templates not all back on their real servers"; fail=1; }
[ $((rx1 - rx0)) = 0 ] && [ "$peer_templates" = 0 ] || { lab_log "FAIL A: the peer heard the reseed"; fail=1; }
[ "$check_b_rc" = 0 ] || { lab_log "FAIL B: templates not all back"; fail=1; }
[ "$daemons_before" = "$daemons_after" ] || { lab_log "FAIL B: sync daemons changed"; fail=1; }
[[ $reseed_b == *'"daemon_started": true'* ]] || { lab_log "FAIL B: no temporary backup daemon"; fail=1; }
[ "$netlink_ok" = true ] || { lab_log "FAIL C: netlink timeouts/daemon attributes"; fail=1; }
[ $fail = 0 ] && lab_log "RESEED CORE PASS"
exit $fail
