#!/bin/bash
# lab-timeout: 420
# Issue 6: three directors with lvs-hooks (FIFO hooks, the agent, the warm-up gate in
# keepalived.conf). Twice: the master (dir1, priority 150) dies hard, dir2 (100) takes over,
# dir1 comes back rebooted with an empty table. Cold, the gate keeps its priority below dir2's
# (150 - 60 = 90), so it does not preempt; its agent asks for a push, dir2's agent pushes the
# whole table, dir1's checks its kernel holds every template, and only then is dir1 eligible
# again and preempts. dir3 (50) stays backup throughout.
# Clients: LAB_CLIENTS UDP flows kept busy (1/s), probed after each takeover and failback, and
# a new flow per client after each failback (the template decides its real server).
# Results: $LAB_OUT/result.json (figures, the gate's timings), traffic.txt (table).
set -u
. "$LAB_DIR/lib.sh"
export LVS_HOOKS=1 LVS_HOOKS_AGENT=1
LAB_PROTOS=UDP
LAB_PERSIST=${LAB_PERSIST_FAILBACK:-60}
declare -A waited=()

lab_step "topology: 3 directors, keepalived + lvs-hooks (fifo, agent, warm-up gate)"
lab_topology 3
lab_keepalived_start dir1 150 BACKUP
lab_keepalived_start dir2 100 BACKUP
lab_keepalived_start dir3 50 BACKUP
lab_client_start
lab_wait 90 "dir1 is master" lab_master_is dir1 || lab_die "no master"
for d in dir1 dir2 dir3; do
    lab_wait 90 "$d warm (agent up; pushed to, or master)" lab_warm "$d" || lab_die "$d never warm"
done

lab_step "start: $LAB_CLIENTS clients, one UDP flow each, kept busy"
lab_client keepalive 1
lab_client open start || lab_die "clients could not open their flows"
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
lab_wait 60 "dir2 has the synced templates" lab_tpl_at_least dir2 "$LAB_CLIENTS" \
    || lab_die "templates did not reach dir2"

for round in 1 2; do
    lab_step "round $round: hard failure of dir1"
    lab_fail_hard dir1
    t=$EPOCHREALTIME
    lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
    waited[takeover$round]=$(lab_elapsed "$t")
    lab_client probe "r$round-takeover"

    lab_step "round $round: dir1 comes back rebooted (empty table), cold"
    lab_reboot dir1
    lab_keepalived_start dir1 150 BACKUP
    t=$EPOCHREALTIME
    lab_wait 120 "dir1 warm (a full push from dir2, checked in its table)" lab_warm dir1 \
        || lab_die "dir1 never warm"
    waited[warm$round]=$(lab_elapsed "$t")
    preempted_cold=0
    lab_has_vip dir1 && preempted_cold=1  # it must not have taken the VIP while cold
    lab_log "dir1 warm after ${waited[warm$round]} s; it held the VIP while cold: $preempted_cold"
    [ "$preempted_cold" = 0 ] || lab_die "dir1 preempted while cold"
    sed 's/^/    /' "$LAB_TMP/dir1/run/warmup.json"
    lab_wait 60 "dir1 preempts once warm" lab_master_is dir1 || lab_die "dir1 did not preempt"
    waited[failback$round]=$(lab_elapsed "$t")
    lab_wait 30 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
        || lab_log "no MASTER record on dir1 yet"
    lab_client probe "r$round-failback"
    lab_client open "r$round-new"
done

lab_step "retention"
lab_client report "$LAB_OUT/traffic.json" || lab_die "no report"
cat "$LAB_OUT/traffic.txt"
echo "--- lvs-hooks (agents, transitions):"
lab_syslog 'lvs-hooks' | grep -E 'push|warm|MASTER|reseed|error|ERROR|refused' | tail -n 60
for d in dir1 dir2 dir3; do cp "$LAB_TMP/$d/agent.log" "$LAB_OUT/agent-$d.log" 2>/dev/null; done
lab_syslog 'lvs-hooks' > "$LAB_OUT/lvs-hooks.log"
cp "$LAB_TMP/dir1/keepalived.conf" "$LAB_OUT/keepalived-dir1.conf"
w="{"; sep=""
for k in "${!waited[@]}"; do w+="$sep\"$k\": ${waited[$k]}"; sep=", "; done
lab_result_json result.json "scenario=\"failback3\"" "clients=$LAB_CLIENTS" \
    "persistence_timeout=$LAB_PERSIST" "waited_s=$w}" "traffic=$(< "$LAB_OUT/traffic.json")"
lab_log "failback3 done: figures in $LAB_OUT/result.json"
