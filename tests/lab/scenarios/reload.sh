#!/bin/bash
# lab-timeout: 480
# keepalived reloads (SIGHUP) must not stop the keeper. Two directors, keepalived with the FIFO
# form (vrrp_notify_fifo + vrrp_notify_fifo_script running `lvs-hooks fifo`; LVS_HOOKS=1 always),
# one persistent NAT UDP service to two real servers, 20 clients each sending once a second.
#
#   start   one UDP flow per client through dir1 (master); every flow synced to dir2
#   r1      keepalived reloaded twice on dir1 (SIGHUP to its parent; each reload starts a new
#           `lvs-hooks fifo` and stops the old one); probe the flows
#   takeover  hard failure of dir1 (no goodbye advert); dir2 takes over and runs its MASTER
#           transition; probe the flows
#   r2      keepalived reloaded twice on dir2, the new master; probe the flows
#   expired the flows go on for 1.5 x persistence_timeout after the last reload: every template
#           dir2 had from the sync is gone unless the keeper renews it; probe the flows, then a
#           NEW flow per client (new source port): its real server is the template's, or a fresh
#           schedule (about half of them elsewhere) if the template expired
#
# Pass = 20 of 20 clients on the real server they had at start, at every step, and no
# traceback in any log. Before the keeper survived reloads: the new reader starts with no role,
# never runs the keeper, and about half of the new flows move.
#
# Lab settings (each can be overridden with `-e KEY=VAL`):
#  - persistence_timeout LAB_PERSIST=60 and the UDP timeout LAB_UDP_TIMEOUT=40 (shorter, as on a
#    real director);
#  - sync_threshold "3 10" (kernel default "3 50"): a UDP connection is re-synced every 10th
#    packet, so dir2's synced copy of every flow outlives the gaps (at one packet a second the
#    default re-syncs every 50 s, longer than the UDP timeout: flows whose copy lapsed would be
#    scheduled afresh at the takeover, linked to the synced template and kept by the kernel
#    itself, hiding what the keeper does);
#  - keeper.refresh_below LAB_KEEPER_REFRESH=50 in lvs-hooks' config: under emulation a new
#    `lvs-hooks fifo` needs 10-15 s to start, so two reloads leave a director without a keeper
#    for about 30 s; templates are renewed early enough to outlive that (a real director starts
#    its reader in well under a second, where the default 12 s is enough).
#
# Results ($LAB_OUT, written on every exit path by a trap): result.json (figures, the client's
# record), traffic.txt (retention table), per director lvs-hooks-DIR.log (its lvs-hooks
# processes' syslog lines), keepalived-DIR.log, keepalived-DIR.conf, lvs-hooks-DIR.yaml,
# events-DIR.jsonl and history-DIR.json (`lvs-hooks history --json`); syslog.log (all of it).
set -u
LAB_PERSIST=${LAB_PERSIST:-60}
LAB_UDP_TIMEOUT=${LAB_UDP_TIMEOUT:-40}
LAB_KEEPER_REFRESH=${LAB_KEEPER_REFRESH:-50}
LAB_SYNC_THRESHOLD=${LAB_SYNC_THRESHOLD:-"3 10"}
export LVS_HOOKS=1 LVS_HOOKS_MODE=fifo
. "$LAB_DIR/lib.sh"
LAB_PROTOS=UDP
SYSLOG="$LAB_TMP/syslog.log"

# lvs-hooks' config as lib.sh writes it, plus the keeper's refresh threshold (see above)
eval "_reload_hooks_config_base() $(declare -f lab_hooks_config | tail -n +2)"
lab_hooks_config() {
    local f
    f=$(_reload_hooks_config_base "$1")
    printf 'keeper:\n  refresh_below: %s\n' "$LAB_KEEPER_REFRESH" >> "$f"
    echo "$f"
}

declare -A same=() waited=() mark=() readers=() tpl_dir2=() resumed=()
steps=()
completed=false
failures=()

# --------------------------------------------------------------------- helpers

# _fifo_pids DIR: PIDs of DIR's `lvs-hooks fifo` readers (python processes), into REPLY
_fifo_pids() {
    local cfg="$LAB_TMP/$1/lvs-hooks.yaml" p comm args
    REPLY=""
    for p in /proc/[0-9]*; do
        read -r comm < "$p/comm" 2>/dev/null || continue
        [[ $comm == python* ]] || continue
        mapfile -d '' -t args < "$p/cmdline" 2>/dev/null || continue
        [[ " ${args[*]} " == *" --config $cfg fifo "* ]] && REPLY+="${p#/proc/} "
    done
    REPLY=${REPLY% }
}
# _has_logged PID: PID has written at least one line to syslog (its start-up is over)
_has_logged() { grep -q "lvs-hooks\[$1\]:" "$SYSLOG" 2>/dev/null; }

# _one_reader DIR: DIR has exactly one fifo reader and it has started (NEWPID)
_one_reader() {
    _fifo_pids "$1"
    [ -n "$REPLY" ] && [[ $REPLY != *" "* ]] && _has_logged "$REPLY" && NEWPID=$REPLY
}
# _new_reader DIR OLDPID: the old reader is gone, one new one runs and has started (NEWPID)
_new_reader() {
    _fifo_pids "$1"
    [ -n "$REPLY" ] && [[ $REPLY != *" "* ]] && [ "$REPLY" != "$2" ] || return 1
    [ -d "/proc/$2" ] && return 1
    _has_logged "$REPLY" && NEWPID=$REPLY
}

# reload DIR N: SIGHUP to DIR's keepalived parent; waits for its new lvs-hooks reader
reload() {
    local d=$1 n=$2 old t
    _one_reader "$d" || lab_die "$d: not exactly one lvs-hooks fifo reader before reload $n ($REPLY)"
    old=$NEWPID
    t=$EPOCHREALTIME
    kill -HUP "$(< "$LAB_TMP/$d/keepalived.pid")" || lab_die "$d: SIGHUP to keepalived"
    lab_log "$d: reload $n (SIGHUP to keepalived $(< "$LAB_TMP/$d/keepalived.pid"); reader was $old)"
    lab_wait 90 "$d: reload $n: reader $old gone, a new one started" _new_reader "$d" "$old" \
        || lab_die "$d: no new lvs-hooks fifo reader after reload $n (readers: ${REPLY:-none})"
    waited[${d}_reload$n]=$(lab_elapsed "$t")
    readers[$d]+=" $NEWPID"
    lab_log "$d: reload $n: new reader $NEWPID"
}

# set_mark NAME: the syslog's current line count (keeper lines are counted between marks)
set_mark() {
    local n=0
    [ -e "$SYSLOG" ] && n=$(wc -l < "$SYSLOG")
    mark[$1]=$n
}

# step LABEL open|probe: a client step; its same_as_ref into same[LABEL]
step() {
    local label=$1 kind=$2
    if [ "$kind" = open ]; then
        lab_client open "$label" || lab_die "client: open $label"
    else
        lab_client probe "$label" || lab_die "client: probe $label"
    fi
    same[$label]=$(lab_json_field same_as_ref)
    steps+=("$label")
    [ "${same[$label]}" = "$LAB_CLIENTS" ] \
        || lab_log "step $label: ${same[$label]} of $LAB_CLIENTS clients on their real server"
}

# _keeper_logged DIR MARK: DIR's current reader has logged a keeper line after syslog line MARK
_keeper_logged() {
    local pid=${readers[$1]##* }
    tail -n "+$(($2 + 1))" "$SYSLOG" | grep -q "lvs-hooks\[$pid\]: keeper:"
}
# keeper_resumes DIR STEP: after DIR's reloads (STEP r1 or r2), how long until its new reader runs the keeper (a
# keeper line: it renewed or saw expiring templates); null if not within 30 s (not fatal: the
# figures at the end say what that cost)
keeper_resumes() {
    local t=$EPOCHREALTIME
    if lab_wait 30 "$1: the new reader runs the keeper" _keeper_logged "$1" "${mark[${2}_done]}"; then
        resumed[$1]=$(lab_elapsed "$t")
    else
        resumed[$1]=null
    fi
}
# count_tpl LABEL: the clients' templates on dir2 (LAB_CLIENTS when all are there)
count_tpl() {
    tpl_dir2[$1]=$(lab_templates dir2 | grep -c "^UDP 10\.0\.0\.")
    lab_log "dir2: ${tpl_dir2[$1]} templates of the clients ($1)"
}

# count of a word in a file (occurrences, not lines); 0 for a missing file
count_in() { awk -v w="$1" '{ n += gsub(w, "") } END { print n + 0 }' "$2" 2>/dev/null || echo 0; }

# split_logs: $LAB_OUT/lvs-hooks-DIR.log per director (lines of its lvs-hooks processes: the
# readers seen by this scenario and every process that names the director's paths), the rest in
# lvs-hooks-other.log; prints "DIR RANGE N": keeper lines of each director while master, before
# its reloads (dir1: from the start, dir2: from its MASTER transition) and after them (dir1: until
# its failure, dir2: until the new flows)
split_logs() {
    local pids="" d p
    for d in "${!readers[@]}"; do for p in ${readers[$d]}; do pids+="$p=$d "; done; done
    awk -v pids="$pids" -v tmp="$LAB_TMP/" -v out="$LAB_OUT" \
        -v r1s="${mark[r1_start]:--1}" -v r1d="${mark[r1_done]:--1}" -v fail="${mark[failure]:--1}" \
        -v tk="${mark[takeover_done]:--1}" -v r2s="${mark[r2_start]:--1}" \
        -v r2d="${mark[r2_done]:--1}" -v end="${mark[end]:-0}" '
        function dirof(line,   i, s) {
            i = index(line, tmp)
            if (!i) return ""
            s = substr(line, i + length(tmp))
            return match(s, /^dir[0-9]+\//) ? substr(s, 1, RLENGTH - 1) : ""
        }
        function tally(d, key) { k[d " " key]++ }
        BEGIN {
            n = split(pids, a, " ")
            for (i = 1; i <= n; i++) { split(a[i], kv, "="); dir[kv[1]] = kv[2] }
            hdr = "^[A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9] "
        }
        FNR == NR {
            if (match($0, /lvs-hooks\[[0-9]+\]: /)) {
                p = substr($0, RSTART + 10, RLENGTH - 13)
                d = dirof($0)
                if (d != "" && !(p in dir)) dir[p] = d
            }
            next
        }
        {
            if ($0 ~ hdr) cur = match($0, /lvs-hooks\[[0-9]+\]: /) ? substr($0, RSTART + 10, RLENGTH - 13) : ""
            if (cur == "") next
            d = (cur in dir) ? dir[cur] : "other"
            print > (out "/lvs-hooks-" d ".log")
            if (d == "other" || $0 !~ /keeper:/) next
            # each director while master: before its reloads, and after them (-1: the step was
            # not reached; a range then ends at the end)
            if (FNR > end) next
            if (d == "dir1" && (r1s < 0 || FNR <= r1s)) tally(d, "before_reloads")
            if (d == "dir1" && r1d >= 0 && FNR > r1d && (fail < 0 || FNR <= fail)) tally(d, "after_reloads")
            if (d == "dir2" && tk >= 0 && FNR > tk && (r2s < 0 || FNR <= r2s)) tally(d, "before_reloads")
            if (d == "dir2" && r2d >= 0 && FNR > r2d) tally(d, "after_reloads")
        }
        END {
            split("dir1 before_reloads|dir1 after_reloads|dir2 before_reloads|dir2 after_reloads",
                  want, "|")
            for (i = 1; i <= 4; i++) print want[i], k[want[i]] + 0
        }' "$SYSLOG" "$SYSLOG"
}

json_map() { # json_map NAME: an associative array of numbers as a JSON object
    local -n m=$1
    local k s="{" sep=""
    for k in "${!m[@]}"; do s+="$sep\"$k\": ${m[$k]:-null}"; sep=", "; done
    echo "$s}"
}

# collect: the logs and figures on every exit path (a failure must be readable afterwards)
_reload_term=0
collect() {
    local rc=$1 d f n tb_total=0 tb="{" sep="" keeper="{" ksep="" line
    trap - EXIT
    trap '' TERM
    set +u
    [ "$_reload_term" = 1 ] && echo "[reload] time limit (SIGTERM): collecting what is cheap"
    [ -n "${mark[end]:-}" ] || set_mark end
    cp "$SYSLOG" "$LAB_OUT/syslog.log" 2>/dev/null
    rm -f "$LAB_OUT"/lvs-hooks-*.log
    while read -r d range n; do
        keeper+="$ksep\"${d}_$range\": $n"; ksep=", "
    done < <(split_logs)
    keeper+="}"
    for d in dir1 dir2; do
        cp "$LAB_TMP/$d/keepalived.log" "$LAB_OUT/keepalived-$d.log" 2>/dev/null
        cp "$LAB_TMP/$d/keepalived.conf" "$LAB_OUT/keepalived-$d.conf" 2>/dev/null
        cp "$LAB_TMP/$d/lvs-hooks.yaml" "$LAB_OUT/lvs-hooks-$d.yaml" 2>/dev/null
        cp "$LAB_TMP/$d/state/events.jsonl" "$LAB_OUT/events-$d.jsonl" 2>/dev/null
    done
    # `lvs-hooks history` costs seconds of start-up each: not when the time limit is up
    if [ "$_reload_term" = 0 ]; then
        for d in dir1 dir2; do
            [ -e "$LAB_TMP/$d/lvs-hooks.yaml" ] || continue
            nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" history --json -n 0 \
                > "$LAB_OUT/history-$d.json" 2> "$LAB_OUT/history-$d.err"
        done
    fi
    [ -n "${LAB_CIN:-}" ] && [ "$_reload_term" = 0 ] \
        && lab_client report "$LAB_OUT/traffic.json" > /dev/null
    for f in "$LAB_OUT"/syslog.log "$LAB_OUT"/lvs-hooks-*.log "$LAB_OUT"/keepalived-*.log \
             "$LAB_OUT"/history-*.err "$LAB_TMP"/client.log "$LAB_TMP"/rs*.log; do
        [ -e "$f" ] || continue
        n=$(count_in Traceback "$f")
        tb+="$sep\"${f##*/}\": $n"; sep=", "
        [ "${f##*/}" = syslog.log ] || tb_total=$((tb_total + n))  # syslog holds the lvs-hooks-* lines
    done
    tb+="}"
    local s="{" ssep="" l
    for l in "${steps[@]}"; do s+="$ssep\"$l\": ${same[$l]:-null}"; ssep=", "; done
    s+="}"
    local rd="{" rsep=""
    for d in "${!readers[@]}"; do
        rd+="$rsep\"$d\": [$(echo ${readers[$d]} | sed 's/ /, /g')]"; rsep=", "
    done
    rd+="}"
    local traffic=null
    [ -s "$LAB_OUT/traffic.json" ] && traffic=$(< "$LAB_OUT/traffic.json")
    local fl="[" fsep=""
    [ "$tb_total" -gt 0 ] && failures+=("$tb_total tracebacks in the logs")
    for l in "${failures[@]}"; do fl+="$fsep\"$l\""; fsep=", "; done
    fl+="]"
    [ "$rc" = 0 ] && [ ${#failures[@]} -gt 0 ] && rc=1
    local cmd
    cmd=$(tail -n 1 /usr/local/bin/lvs-hooks 2>/dev/null)
    lab_result_json result.json "scenario=\"reload\"" "completed=$completed" "rc=$rc" \
        "lvs_hooks=\"${cmd//\"/\\\"}\"" \
        "pass=$([ "$rc" = 0 ] && echo true || echo false)" "failures=$fl" \
        "clients=$LAB_CLIENTS" "persistence_timeout=$LAB_PERSIST" \
        "udp_timeout=$LAB_UDP_TIMEOUT" "keeper_refresh_below=$LAB_KEEPER_REFRESH" \
        "sync_threshold=\"$LAB_SYNC_THRESHOLD\"" "same_rs=$s" "keeper_lines=$keeper" \
        "tracebacks=$tb" "tracebacks_total=$tb_total" "readers=$rd" \
        "templates_dir2=$(json_map tpl_dir2)" "keeper_resumed_s=$(json_map resumed)" \
        "waited_s=$(json_map waited)" \
        "syslog_marks=$(json_map mark)" "traffic=$traffic"
    echo "LAB: reload same-rs (of $LAB_CLIENTS): $(for l in "${steps[@]}"; do printf '%s=%s ' "$l" "${same[$l]:-?}"; done)"
    echo "LAB: reload keeper lines: $keeper"
    echo "LAB: reload tracebacks: $tb_total $tb"
    echo "LAB: reload $([ "$rc" = 0 ] && echo PASS || echo "FAIL (rc $rc): ${failures[*]:-see the log}")"
    [ -e "$LAB_OUT/traffic.txt" ] && cat "$LAB_OUT/traffic.txt"
    exit "$rc"
}
trap 'collect $?' EXIT
# the time limit: `timeout` sends SIGTERM to this shell, then to its process group (a second one)
trap "trap '' TERM; _reload_term=1; exit 124" TERM

# --------------------------------------------------------------------- the story

lab_step "topology; UDP timeout $LAB_UDP_TIMEOUT s, persistence $LAB_PERSIST s, sync_threshold" \
    "$LAB_SYNC_THRESHOLD; keepalived + lvs-hooks (fifo) on dir1 (MASTER) and dir2 (BACKUP)"
lab_topology 2
for d in dir1 dir2; do
    nsx "$d" sh -ec "ipvsadm --set 0 0 $LAB_UDP_TIMEOUT
                     echo '$LAB_SYNC_THRESHOLD' > /proc/sys/net/ipv4/vs/sync_threshold" \
        || lab_die "$d: UDP timeout / sync_threshold"
done
lab_keepalived_first dir1 150 MASTER
lab_keepalived_start dir2 100 BACKUP
lab_client_start
t=$EPOCHREALTIME
lab_wait 60 "dir1 is master" lab_master_is dir1 || lab_die "no master"
# lvs-hooks starts slowly under emulation: the story is about directors whose readers run
lab_wait 90 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
    || lab_die "no MASTER transition on dir1"
lab_wait 90 "dir2's BACKUP transition journalled" lab_hooks_state dir2 BACKUP \
    || lab_die "no BACKUP transition on dir2"
waited[ready]=$(lab_elapsed "$t")
for d in dir1 dir2; do
    lab_wait 30 "$d: one lvs-hooks fifo reader" _one_reader "$d" \
        || lab_die "$d: not one lvs-hooks fifo reader (${REPLY:-none})"
    readers[$d]=$NEWPID
done

lab_step "start: $LAB_CLIENTS clients, one UDP flow each, sending every second"
lab_client keepalive 1
step start open
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
t=$EPOCHREALTIME
lab_wait 60 "dir2 has the synced templates and connections" lab_synced dir2 "$LAB_CLIENTS" \
    || lab_die "templates/connections did not reach dir2"
waited[sync]=$(lab_elapsed "$t")

lab_step "r1: keepalived reloaded twice on dir1 (master) during traffic"
set_mark r1_start
reload dir1 1
reload dir1 2
set_mark r1_done
lab_master_is dir1 || lab_die "dir1 lost the VIP over its reloads"
step r1 probe
keeper_resumes dir1 r1
lab_wait 60 "dir2 still has every flow synced" lab_synced dir2 "$LAB_CLIENTS" \
    || lab_die "dir2 lost synced entries over dir1's reloads"
count_tpl before-failure

lab_step "takeover: hard failure of dir1"
set_mark failure
lab_fail_hard dir1
t=$EPOCHREALTIME
lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
waited[takeover]=$(lab_elapsed "$t")
lab_wait 90 "dir2's MASTER transition journalled" lab_hooks_state dir2 MASTER \
    || lab_die "no MASTER transition on dir2"
waited[master_transition]=$(lab_elapsed "$t")
set_mark takeover_done
step takeover probe
count_tpl takeover
# the new master's keeper at work before anything else happens (the control for what follows)
t=$EPOCHREALTIME
lab_wait 60 "dir2's keeper renews the synced templates" _keeper_logged dir2 "${mark[takeover_done]}" \
    || lab_die "no keeper line from dir2's reader ${readers[dir2]##* } as master"
waited[keeper_as_master]=$(lab_elapsed "$t")

lab_step "r2: keepalived reloaded twice on dir2 (the new master)"
set_mark r2_start
reload dir2 1
reload dir2 2
set_mark r2_done
t=$EPOCHREALTIME
# (not lab_master_is: the dead dir1 still has the VIP on its downed link)
lab_has_vip dir2 || lab_die "dir2 lost the VIP over its reloads"
step r2 probe
count_tpl r2
keeper_resumes dir2 r2

lab_step "expired: flows go on for 1.5 x $LAB_PERSIST s after the last reload, then new flows"
outlived() { local now=$EPOCHREALTIME; (( (${now/./} - ${t/./}) * 2 >= 3 * LAB_PERSIST * 1000000 )); }
lab_wait $((2 * LAB_PERSIST + 60)) "1.5 x persistence_timeout since the last reload" outlived \
    || lab_die "clock"
waited[expiry]=$(lab_elapsed "$t")
count_tpl expired
echo "--- dir2 templates:"; lab_templates dir2
step expired probe
step new open
set_mark end
completed=true

for l in "${steps[@]}"; do
    [ "${same[$l]}" = "$LAB_CLIENTS" ] \
        || failures+=("$l: ${same[$l]} of $LAB_CLIENTS on their real server")
done
exit 0
