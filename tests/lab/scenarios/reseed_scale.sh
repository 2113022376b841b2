#!/bin/bash
# lab-timeout: 600
# Issue 3 at scale: 50,000 live templates (LAB_SCALE_N) on dir1 from real traffic; the time
# `lvs-hooks snapshot` spends reading the table beside `cat /proc/net/ip_vs_conn` in the same VM;
# dir1 reboots (empty table), services come back, `lvs-hooks reseed --latest`: 100% verified,
# templates/s printed. Results: $LAB_OUT/reseed_scale.json
set -u
. "$LAB_DIR/lib.sh"

N=${LAB_SCALE_N:-50000}
CFG=$(lab_hooks_config dir1)
hooks() { nsx dir1 lvs-hooks --config "$CFG" "$@"; }
services_up() {
    nsx dir1 sh -ec "
      ip addr add $LAB_VIP/24 dev eth0; ip addr add $LAB_GW_VIP/24 dev eth1
      ipvsadm -A -u $LAB_VIP:$LAB_VPORT -s rr -p 1800
      ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r 10.1.0.11:$LAB_VPORT -m
      ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r 10.1.0.12:$LAB_VPORT -m" || lab_die "services"
}
# Templates bound to real servers, from the real servers' PersistConn counters (netlink: cheap;
# reading /proc/net/ip_vs_conn costs tens of seconds at this size)
persist_count() {
    nsx dir1 ipvsadm -Ln --persistent-conn | awk '$1 == "->" && $3 ~ /^[0-9]+$/ {n += $4} END {print n + 0}'
}
ms_since() { local now=$EPOCHREALTIME; echo $(( (${now/./} - ${1/./}) / 1000 )); }

lab_step "topology (1 director), service, $N templates from real traffic"
LAB_CLIENTS=0 lab_topology 1
services_up
t0=$EPOCHREALTIME
nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$LAB_VIP" --port "$LAB_VPORT" \
    --base 10.2.0.0 "$N" || lab_die "traffic"
lab_log "traffic sent in $(ms_since "$t0") ms"
nsx dir1 ipvsadm -Ln --persistent-conn
have_all() { have=$(persist_count); [ "$have" -ge "$N" ]; }
lab_wait 120 "$N templates on dir1" have_all || lab_die "only $have of $N templates"

lab_step "reading the table: cat vs lvs-hooks snapshot"
t0=$EPOCHREALTIME
lines=$(nsx dir1 cat /proc/net/ip_vs_conn | wc -l)
cat_ms=$(ms_since "$t0")
lab_log "cat /proc/net/ip_vs_conn: $lines lines in $cat_ms ms (with process start)"
snap=$(hooks snapshot --json) || lab_die "snapshot failed: $snap"
echo "$snap"

lab_step "dir1 reboots; services come back; reseed --latest"
lab_reboot dir1
services_up
reseed=$(hooks reseed --latest --json) ; rc=$?
echo "$reseed"
count_after=$(persist_count)
lab_log "templates on dir1 after the reseed: $count_after"
cat > "$LAB_OUT/reseed_scale.json" <<EOF
{"templates_made": $N, "table_lines": $lines, "cat_ms": $cat_ms,
 "snapshot": $snap, "reseed": $reseed, "reseed_rc": $rc, "templates_after": $count_after}
EOF
[ "$rc" = 0 ] && [ "$count_after" -ge "$N" ] || lab_die "reseed incomplete (rc $rc)"
lab_log "RESEED SCALE PASS"
