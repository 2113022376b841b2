#!/bin/bash
# lab-timeout: 300
# Seed 000 (the user's story): persistent UDP clients through a keepalived pair with the kernel
# sync daemon lose their real server across failover and failback. Plain keepalived by default;
# LVS_HOOKS=1 (tests/lab/run --hooks) wires lvs-hooks into keepalived on both directors, so the
# same table shows before/after.
#
#   start  LAB_CLIENTS (20) clients, one UDP flow each, through dir1 (master, priority 150);
#          the flows keep sending (1/s) for the whole run
#   1      hard failure of dir1 -> dir2 takes over; probe the existing flows
#   2      flows go on past the template lifetime (persistence_timeout LAB_PERSIST=20 s): wait
#          until the synced templates have expired on dir2, probe the existing flows, then a NEW
#          flow from each client
#   3      dir1 comes back rebooted (empty table) and preempts; probe the flows, open new flows
#
# Retention = clients (of 20) still answered by the real server they had at "start". The client
# sends in a random order (seed in the report; LAB_SEED=N repeats a run): with round-robin, the
# figures vary from run to run around half of the clients moved where a step reschedules them.
# Results: $LAB_OUT/result.json (figures + the traffic client's full record), traffic.txt (table).
set -u
. "$LAB_DIR/lib.sh"

mode=baseline
[ "$LVS_HOOKS" = 1 ] && mode="lvs-hooks ($LVS_HOOKS_MODE)"
declare -A tpl_dir2=() waited=()
count_dir2() { tpl_dir2[$1]=$(lab_tpl_count dir2); lab_log "templates on dir2 at $1: ${tpl_dir2[$1]}"; }

lab_step "topology + keepalived on dir1 (MASTER, 150) and dir2 (BACKUP, 100); mode: $mode"
lab_topology 2
lab_keepalived_first dir1 150 MASTER
lab_keepalived_start dir2 100 BACKUP
lab_client_start          # its python start overlaps keepalived's election
t=$EPOCHREALTIME
lab_wait 60 "dir1 is master" lab_master_is dir1 || lab_die "no master"
waited[dir1_master]=$(lab_elapsed "$t")

lab_step "start: $LAB_CLIENTS clients open one UDP flow each; flows keep sending every second"
lab_client keepalive 1
lab_client open start || lab_die "clients could not open their flows"
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
t=$EPOCHREALTIME
# templates AND connections: a connection reaches the backup only at its 3rd packet
lab_wait 60 "dir2 has the synced templates and connections" lab_synced dir2 "$LAB_CLIENTS" \
    || lab_die "templates/connections did not reach dir2"
waited[sync]=$(lab_elapsed "$t")
echo "--- dir1 templates:"; lab_templates dir1
echo "--- dir2 templates:"; lab_templates dir2
count_dir2 start

lab_step "1: hard failure of dir1 (master)"
lab_fail_hard dir1
t=$EPOCHREALTIME
lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
waited[takeover]=$(lab_elapsed "$t")
lab_client probe 1-takeover
count_dir2 1-takeover

lab_step "2: flows go on past the template lifetime ($LAB_PERSIST s) on dir2"
t=$EPOCHREALTIME
# The step ends when the synced templates have expired, or (when something keeps them, as
# lvs-hooks does) once twice their lifetime has passed since the takeover.
outlived() { local now=$EPOCHREALTIME; (( ${now/./} - ${t/./} >= 2 * LAB_PERSIST * 1000000 )); }
expired_or_outlived() { lab_tpl_none dir2 || outlived; }
lab_wait 150 "synced templates expired on dir2 (or outlived twice)" expired_or_outlived \
    || lab_die "templates on dir2 did not expire"
waited[expiry]=$(lab_elapsed "$t")
lab_client probe 2-expired
lab_client open 2-new
count_dir2 2-new
echo "--- dir2 templates:"; lab_templates dir2

lab_step "3: dir1 comes back rebooted (empty table) and preempts"
lab_reboot dir1
lab_keepalived_start dir1 150 MASTER
t=$EPOCHREALTIME
lab_wait 60 "dir1 is master again" lab_master_is dir1 || lab_die "dir1 did not preempt"
waited[failback]=$(lab_elapsed "$t")
tpl_dir1_failback=$(lab_tpl_count dir1)
# what dir1 learnt by sync while it was backup: a kernel master re-sends a template with every
# packet of a connection it controls (only connections go by sync_threshold), so dir1 gets the
# templates dir2 made in step 2, not those of the flows that started on dir1 (gone on dir2).
lab_log "templates on dir1 when it is master again: $tpl_dir1_failback (by sync from dir2)"
lab_client probe 3-failback
lab_client open 3-new
echo "--- dir1 templates:"; lab_templates dir1

lab_step "retention ($mode)"
lab_client report "$LAB_OUT/traffic.json" || lab_die "no report"
cat "$LAB_OUT/traffic.txt"
w="{"; sep=""
for k in "${!waited[@]}"; do w+="$sep\"$k\": ${waited[$k]}"; sep=", "; done
c="{"; sep=""
for k in "${!tpl_dir2[@]}"; do c+="$sep\"$k\": ${tpl_dir2[$k]}"; sep=", "; done
lab_result_json result.json "scenario=\"seed000\"" "mode=\"$mode\"" \
    "hooks=$([ "$LVS_HOOKS" = 1 ] && echo true || echo false)" \
    "clients=$LAB_CLIENTS" "persistence_timeout=$LAB_PERSIST" \
    "waited_s=$w}" "templates_dir2=$c}" "templates_dir1_at_failback=$tpl_dir1_failback" "traffic=$(< "$LAB_OUT/traffic.json")"
# the configs as rendered (the lvs-hooks wiring is visible there)
cp "$LAB_TMP/dir1/keepalived.conf" "$LAB_OUT/keepalived-dir1.conf"
[ -e "$LAB_TMP/dir1/lvs-hooks.yaml" ] && cp "$LAB_TMP/dir1/lvs-hooks.yaml" "$LAB_OUT/lvs-hooks-dir1.yaml"
if [ "$LVS_HOOKS" = 1 ]; then
    echo "--- lvs-hooks, from syslog: transitions, reseeds, keeper"
    lab_syslog 'lvs-hooks' | grep -E 'MASTER|BACKUP|reseed|keeper|snapshot|error|ERROR' | tail -n 40
    for d in dir1 dir2; do
        echo "--- lvs-hooks history on $d"
        nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" history -n 10
        nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" history --json -n 0 \
            > "$LAB_OUT/history-$d.json"
    done
fi
echo "--- keepalived dir1 (tail):"; tail -n 15 "$LAB_TMP/dir1/keepalived.log"
echo "--- keepalived dir2 (tail):"; tail -n 15 "$LAB_TMP/dir2/keepalived.log"
lab_log "seed000 done ($mode): figures in $LAB_OUT/result.json"
