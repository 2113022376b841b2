#!/bin/bash
# lab-timeout: 480
# Issue 6: the push's cost and a planned handover, two directors with lvs-hooks (FIFO hooks,
# the agent, the warm-up gate).
#  1. dir1 (master) holds LAB_PUSH_N (10,000) templates from spoofed sources plus the flows of
#     LAB_CLIENTS clients, while dir2 is down: its kernel got none of them by sync.
#     Five of them are put on dir2 beforehand with the other real server (stale templates).
#  2. dir2 starts, cold: its agent asks for a push, dir1's agent pushes the whole table at
#     push.rate (default 20,000/s); dir2's agent checks its table: the templates its kernel
#     lost on the way are counted (the loss at the default rate) and put back locally; the
#     stale ones are re-pointed (no connection uses them).
#  3. `lvs-hooks push` on dir1, timed: templates/s, datagrams, bytes on the wire.
#  4. `lvs-hooks handover` on dir1 during steady traffic: dir2 confirms the push, dir1 lowers
#     its priority through the gate, dir2 preempts. Clients probed (existing flows) and a new
#     flow each: none may move.
# Results: $LAB_OUT/result.json, traffic.txt
set -u
. "$LAB_DIR/lib.sh"
export LVS_HOOKS=1 LVS_HOOKS_AGENT=1
LAB_PROTOS=UDP
LAB_PERSIST=600
LAB_PUSH_INTERVAL=0   # pushes on request only: each one here is one we asked for
N=${LAB_PUSH_N:-10000}
json() { "$LAB_PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])' "$1" "$2"; }

lab_step "dir1 alone: keepalived + lvs-hooks, $N bulk templates, $LAB_CLIENTS client flows"
lab_topology 2
lab_keepalived_start dir1 150 BACKUP
lab_client_start
lab_wait 90 "dir1 is master" lab_master_is dir1 || lab_die "no master"
lab_wait 90 "dir1 warm (master)" lab_warm dir1 || lab_die "dir1 never warm"
lab_bulk_templates "$N" || lab_die "bulk"
lab_client keepalive 1
lab_client open start || lab_die "clients could not open their flows"
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
lab_wait 60 "$N + $LAB_CLIENTS templates on dir1" lab_tpl_at_least dir1 $((N + LAB_CLIENTS)) \
    || lab_die "bulk templates missing on dir1"
on_dir1=$(lab_tpl_count dir1)

lab_step "stale templates on dir2: a backup that kept what the master has since changed"
# five bulk clients, each put on dir2 with the OTHER real server than dir1's (by the lab's own
# injector, through a backup daemon started for it): the push must re-point them (none of them
# has a connection on dir2)
nsx dir2 ipvsadm --start-daemon backup --mcast-interface "$LAB_SYNC_IF" --syncid "$LAB_SYNCID" \
    || lab_die "backup daemon on dir2"
# (awk on the raw table: a bash loop over 10,000 lines takes half a minute under TCG)
stale=() stale_clients=()
while read -r hc hr; do
    _lab_hex_ip "$hc"; c=$REPLY
    [ "$hr" = 0A01000B ] && other=10.1.0.12 || other=10.1.0.11
    stale+=("$c,$LAB_VIP:$LAB_VPORT,$other:$LAB_VPORT"); stale_clients+=("$hc")
done < <(lab_conn dir1 | awk '$3 == "0000" && $2 ~ /^0A02/ {print $2, $6}' | head -n 5)
[ ${#stale[@]} = 5 ] || lab_die "no bulk clients on dir1"
lab_inject dir2 --timeout 600 "${stale[@]}" || lab_die "inject"
lab_wait 20 "5 stale templates on dir2" lab_tpl_at_least dir2 5 || lab_die "stale templates"
nsx dir2 ipvsadm --stop-daemon backup || lab_die "stop the backup daemon on dir2"
same_rs() {  # clients (hex, as /proc shows them) whose template names the same real server
    local want=" $* "         # and port on dir1 and on dir2
    pick() { lab_conn "$1" | awk -v w="$want" '$3 == "0000" && index(w, " " $2 " ") {print $2, $6, $7}' | sort; }
    comm -12 <(pick dir1) <(pick dir2) | wc -l
}
stale_same_before=$(same_rs "${stale_clients[@]}")
lab_log "stale clients on dir2 with dir1's real server before the push: $stale_same_before/5"

lab_step "dir2 starts cold: its agent asks, dir1's pushes the whole table"
lab_keepalived_start dir2 100 BACKUP
t=$EPOCHREALTIME
lab_wait 180 "dir2 warm (full push checked in its table)" lab_warm dir2 || lab_die "dir2 never warm"
warm_s=$(lab_elapsed "$t")
sed 's/^/    /' "$LAB_TMP/dir2/run/warmup.json"
received=$("$LAB_PYTHON" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["figures"]))' \
    "$LAB_TMP/dir2/run/warmup.json")
on_dir2=$(lab_tpl_count dir2)
stale_same_after=$(same_rs "${stale_clients[@]}")
lab_log "dir2 warm after $warm_s s; templates: dir1 $on_dir1, dir2 $on_dir2; stale clients" \
    "re-pointed to dir1's real server: $stale_same_after/5 (before the push: $stale_same_before/5)"

lab_step "the cost of a push of the whole table (lvs-hooks push on dir1)"
push=$(nsx dir1 lvs-hooks --config "$LAB_TMP/dir1/lvs-hooks.yaml" push --json) \
    || lab_die "push failed"
echo "$push"
lab_log "push: $(json "$push" planned) templates, $(json "$push" datagrams) datagrams," \
    "$(json "$push" bytes) bytes, $(json "$push" ms) ms on the wire ($(json "$push" rate)/s)"

lab_step "handover during steady traffic"
lab_client probe before-handover
before_same=$(lab_json_field same_as_ref)
t=$EPOCHREALTIME
handover=$(nsx dir1 lvs-hooks --config "$LAB_TMP/dir1/lvs-hooks.yaml" handover --json --timeout 120) \
    || { lab_syslog 'lvs-hooks' | tail -n 30; lab_die "handover failed"; }
handover_s=$(lab_elapsed "$t")
echo "$handover"
lab_wait 30 "dir2 holds the VIP" lab_has_vip dir2 || lab_die "dir2 has no VIP"
lab_wait 30 "dir2's MASTER transition journalled" lab_hooks_state dir2 MASTER \
    || lab_log "no MASTER record on dir2 yet"
lab_client probe after-handover
after_same=$(lab_json_field same_as_ref); after_moved=$(lab_json_field moved)
lab_client open new-after-handover
new_same=$(lab_json_field same_as_ref); new_moved=$(lab_json_field moved)
lab_log "handover in $handover_s s: clients on their real server: existing flows $after_same/" \
    "$LAB_CLIENTS (moved $after_moved), new flows $new_same/$LAB_CLIENTS (moved $new_moved)"

lab_step "results"
lab_client report "$LAB_OUT/traffic.json" || lab_die "no report"
cat "$LAB_OUT/traffic.txt"
lab_syslog 'lvs-hooks' | grep -E 'push|warm|handover|MASTER|error|ERROR|refused' | tail -n 40
lab_syslog 'lvs-hooks' > "$LAB_OUT/lvs-hooks.log"
for d in dir1 dir2; do cp "$LAB_TMP/$d/agent.log" "$LAB_OUT/agent-$d.log" 2>/dev/null; done
lab_result_json result.json "scenario=\"handover\"" "clients=$LAB_CLIENTS" "bulk=$N" \
    "templates_dir1=$on_dir1" "templates_dir2_when_warm=$on_dir2" "warm_s=$warm_s" \
    "received=$received" "stale_same_before=$stale_same_before" \
    "stale_same_after=$stale_same_after" "push=$push" "handover=$handover" "handover_s=$handover_s" \
    "before_same=$before_same" "after_same=$after_same" "after_moved=$after_moved" \
    "new_same=$new_same" "new_moved=$new_moved"
lab_log "handover done: figures in $LAB_OUT/result.json"
