#!/bin/bash
# lab-timeout: 200
# Exercises the helper library beyond seed000: three directors on a sync bridge, TCP long-lived
# connections through keepalived, a manual VIP move, the bulk template generator. A regression
# check for lib.sh, not a product check. Result: $LAB_OUT/result.json
set -u
. "$LAB_DIR/lib.sh"
LAB_CLIENTS=5

lab_step "three directors; keepalived on all, dir1 master"
lab_topology 3
lab_keepalived_first dir1 150 MASTER
lab_keepalived_start dir2 100 BACKUP
lab_keepalived_start dir3 50 BACKUP
lab_client_start
lab_wait 60 "dir1 is master" lab_master_is dir1 || lab_die "no master"

lab_step "TCP: one long-lived connection per client; templates reach dir2 AND dir3 (sync bridge)"
lab_client open tcp1 tcp || lab_die "tcp open"
[ "$(lab_json_field answered)" = 5 ] || lab_die "not all TCP clients answered"
lab_wait 30 "dir2 has the 5 templates" lab_tpl_at_least dir2 5 || lab_die "dir2 sync"
lab_wait 30 "dir3 has the 5 templates" lab_tpl_at_least dir3 5 || lab_die "dir3 sync"
lab_templates dir3
lab_client probe tcp1-again tcp1 || lab_die "tcp probe"
[ "$(lab_json_field same_as_ref)" = 5 ] || lab_die "TCP connections moved without a failover"

lab_step "UDP flows, then keepalived stopped on all and the VIPs moved by hand to dir3"
lab_client open udp1 || lab_die "udp open"
for d in dir1 dir2 dir3; do kill "$(< "$LAB_TMP/$d/keepalived.pid")"; done
lab_wait 30 "keepalived gone on all directors" lab_no_vip_anywhere || lab_die "keepalived stop"
lab_move_vips dir1 dir3
lab_wait 10 "dir3 holds the VIP" lab_master_is dir3 || lab_die "VIP move"
ip -n dir3 addr show dev eth0 | grep -q "$LAB_VIP" || lab_die "no VIP on dir3"
nsx dir3 sh -c "ipvsadm -A -u $LAB_VIP:$LAB_VPORT -s rr -p 20 &&
                ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r 10.1.0.11:$LAB_VPORT -m &&
                ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r 10.1.0.12:$LAB_VPORT -m"
lab_client probe udp1-on-dir3 udp1 || lab_die "udp probe"
[ "$(lab_json_field answered)" = 5 ] || lab_die "flows not answered through dir3"

lab_step "bulk: 300 templates on dir3 from spoofed sources"
lab_bulk_templates 300 || lab_die "bulk"
lab_wait 30 "300 bulk templates on dir3" lab_tpl_at_least dir3 305 || lab_die "bulk templates"
lab_entry_count dir3 > /dev/null
lab_log "dir3: $LAB_NTPL templates, $LAB_NCONN connections"
lab_client report "$LAB_OUT/traffic.json"
lab_result_json result.json "directors=3" "tcp_same=5" "dir3_templates=$LAB_NTPL"
lab_log "HELPERS PASS"
