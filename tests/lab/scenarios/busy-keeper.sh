#!/bin/bash
# lab-timeout: 1200
# How long a MASTER transition waits behind the keeper's read of a large table. dir2 is master
# with LAB_BUSY_N (50,000) templates: its keeper reads the whole /proc/net/ip_vs_conn every
# keeper.interval, and at this size one read takes seconds (the kernel walks its table once per
# read() call: quadratic). Then a flap, started right after one keeper read ended so that it
# falls inside the next one: dir1 preempts (priority raised, keepalived reloaded), dir2 hears
# BACKUP, dir1 leaves at once (keepalived stopped: its goodbye advert), dir2 hears MASTER.
# The figure: from the moment dir2's lvs-hooks read keepalived's MASTER line (the event's
# order[0]) to the start of its MASTER transition (start_ns), both CLOCK_BOOTTIME ns, from
# dir2's journal, with what it waited behind: a transition of the flap that was running when the
# line came (the BACKUP one, its steps and their times), else the periodic duties (the log has
# their whole reads). The same flap first with an empty table (the control), then
# LAB_BUSY_FLAPS (3) times with the large one.
#
# LVS_HOOKS=1 always; with -e LVS_HOOKS_AGENT=1 the agent runs the keeper (keepalived's events
# reach it through the doors). Figures: $LAB_OUT/result.json; logs kept on every exit path
# (syslog.log, keepalived-DIR.log, events-DIR.jsonl, history-DIR.json).
set -u
LAB_PERSIST=${LAB_PERSIST:-1800}          # the bulk templates must outlive the scenario
N=${LAB_BUSY_N:-50000}
FLAPS=${LAB_BUSY_FLAPS:-3}
PREEMPT_PRIO=${LAB_BUSY_PREEMPT_PRIO:-250} # above dir2's 150 even with the warm-up gate's -60
export LVS_HOOKS=1
export LVS_HOOKS_MODE=${LVS_HOOKS_MODE:-fifo}
. "$LAB_DIR/lib.sh"
LAB_PROTOS=UDP
LAB_CLIENTS=0
SYSLOG="$LAB_TMP/syslog.log"
JOURNAL="$LAB_TMP/dir2/state/events.jsonl"

declare -A mark=() jmark=() waited=()
flaps=()
completed=false

lines_of() { local n=0; [ -e "$1" ] && n=$(wc -l < "$1"); echo "$n"; }
# _logged_since FILE LINE PATTERN: PATTERN (grep -E) in FILE after line LINE
_logged_since() { tail -n "+$(($2 + 1))" "$1" 2>/dev/null | grep -qE -- "$3"; }
persist_count() {
    nsx dir2 ipvsadm -Ln --persistent-conn \
        | awk '$1 == "->" && $3 ~ /^[0-9]+$/ {n += $4} END {print n + 0}'
}

# flap LABEL: dir1 preempts dir2 and leaves again; waits for dir2's MASTER transition
flap() {
    local label=$1 klog="$LAB_TMP/dir2/keepalived.log" k0 t
    mark[${label}]=$(lines_of "$SYSLOG")
    jmark[${label}]=$(lines_of "$JOURNAL")
    k0=$(lines_of "$klog")
    t=$EPOCHREALTIME
    lab_keepalived_conf dir1 "$PREEMPT_PRIO" BACKUP > "$LAB_TMP/dir1/keepalived.conf"
    kill -HUP "$(< "$LAB_TMP/dir1/keepalived.pid")" || lab_die "SIGHUP to dir1's keepalived"
    lab_log "$label: dir1 reloaded with priority $PREEMPT_PRIO"
    lab_wait 60 "$label: dir2's keepalived: BACKUP" _logged_since "$klog" "$k0" \
        'VI_1\) Entering BACKUP STATE' || lab_die "$label: dir1 did not preempt"
    waited[${label}_backup]=$(lab_elapsed "$t")
    kill -TERM "$(< "$LAB_TMP/dir1/keepalived.pid")" || lab_die "SIGTERM to dir1's keepalived"
    lab_wait 60 "$label: dir2's keepalived: MASTER" _logged_since "$klog" "$k0" \
        'VI_1\) Entering MASTER STATE' || lab_die "$label: dir2 did not become master again"
    waited[${label}_master]=$(lab_elapsed "$t")
    lab_wait 600 "$label: dir2's MASTER transition journalled" _master_after "${jmark[$label]}" \
        || lab_die "$label: no MASTER transition on dir2"
    waited[${label}_transition]=$(lab_elapsed "$t")
    mark[${label}_end]=$(lines_of "$SYSLOG")
    lab_wait 30 "$label: dir1's keepalived gone" _dir1_down || lab_die "dir1's keepalived runs on"
    flaps+=("$label")
}
# _master_after LINE: dir2's journal has a finished MASTER record after line LINE
_master_after() {
    tail -n "+$(($1 + 1))" "$JOURNAL" 2>/dev/null \
        | grep -qE '"state": ?"MASTER".*"outcome": ?"(done|failed)"|"outcome": ?"(done|failed)".*"state": ?"MASTER"'
}
_dir1_down() { ! { kill -0 "$(< "$LAB_TMP/dir1/keepalived.pid")"; } 2>/dev/null; }

# figures from dir2's journal and the syslog (one python start)
figures() {
    local spec="" l
    for l in "${flaps[@]}"; do
        spec+="$l=${jmark[$l]}=${mark[${l}_trigger]:-${mark[$l]}}=${mark[${l}_end]} "
    done
    "$LAB_PYTHON" - "$JOURNAL" "$SYSLOG" "$spec" <<'PYEOF'
import json, re, sys
journal, syslog, spec = sys.argv[1], sys.argv[2], sys.argv[3].split()
recs = []
for ln in open(journal):
    try:
        recs.append(json.loads(ln))
    except ValueError:
        recs.append(None)
log = open(syslog, errors="replace").read().splitlines()
read_re = re.compile(r"lvs-hooks\[(\d+)\]: whole read of \S+ip_vs_conn for keeper: (\d+) bytes in (\d+) ms")
def describe(rec):
    steps = ", ".join("%s %s ms" % (st.get("step"), st.get("ms")) for st in rec.get("steps", []))
    return "%s transition (%s)" % (rec["event"]["state"], steps)
out = {}
bounds = [(s.split("=")[0], *map(int, s.split("=")[1:])) for s in spec]
for i, (label, jstart, lstart, lend) in enumerate(bounds):
    jend = bounds[i + 1][1] if i + 1 < len(bounds) else len(recs)
    events = []
    mine = [r for r in recs[jstart:jend] if r]
    for r in mine:
        ev = r.get("event", {})
        order0 = (ev.get("order") or [None])[0]
        wait = (r["start_ns"] - order0) / 1e9 if order0 and r.get("start_ns") else None
        # what ran when the line came: a transition of this flap (the journal says), else the
        # duties (what they did is in the log)
        behind = [describe(o) for o in mine
                  if o is not r and order0 and o.get("start_ns", 0) <= order0 < o.get("end_ns", 0)]
        events.append({"state": ev.get("state"), "outcome": r.get("outcome"),
                       "wait_s": None if wait is None else round(wait, 3),
                       "transition_ms": r.get("ms"), "pid": r.get("pid"),
                       "behind": behind[0] if behind else None})
    # the keeper's whole reads from the one that triggered the flap to the end of the flap (a
    # keeper period is that read, then the parse and the plan of what it read)
    reads = [int(m.group(3)) for m in map(read_re.search, log[lstart:lend]) if m]
    masters = [e for e in events if e["state"] == "MASTER" and e["outcome"] in ("done", "failed")]
    out[label] = {"events": events, "master_wait_s": masters[-1]["wait_s"] if masters else None,
                  "keeper_reads_ms": reads}
print(json.dumps(out))
PYEOF
}

_busy_term=0
collect() {
    local rc=$1 d f n tb=0 figs=null
    trap - EXIT
    trap '' TERM
    set +u
    [ "$_busy_term" = 1 ] && echo "[busy-keeper] time limit (SIGTERM): collecting"
    cp "$SYSLOG" "$LAB_OUT/syslog.log" 2>/dev/null
    for d in dir1 dir2; do
        cp "$LAB_TMP/$d/keepalived.log" "$LAB_OUT/keepalived-$d.log" 2>/dev/null
        cp "$LAB_TMP/$d/state/events.jsonl" "$LAB_OUT/events-$d.jsonl" 2>/dev/null
        cp "$LAB_TMP/$d/agent.log" "$LAB_OUT/agent-$d.log" 2>/dev/null
    done
    [ ${#flaps[@]} -gt 0 ] && figs=$(figures) && [ -n "$figs" ] || figs=null
    if [ "$_busy_term" = 0 ]; then
        for d in dir1 dir2; do
            [ -e "$LAB_TMP/$d/lvs-hooks.yaml" ] || continue
            nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" history --json -n 0 \
                > "$LAB_OUT/history-$d.json" 2> "$LAB_OUT/history-$d.err"
        done
    fi
    for f in "$LAB_OUT"/syslog.log "$LAB_OUT"/keepalived-*.log "$LAB_OUT"/agent-*.log \
             "$LAB_OUT"/history-*.err; do
        [ -e "$f" ] || continue
        n=$(awk '{ n += gsub("Traceback", "") } END { print n + 0 }' "$f")
        tb=$((tb + n))
    done
    local w="{" sep="" k
    for k in "${!waited[@]}"; do w+="$sep\"$k\": ${waited[$k]}"; sep=", "; done
    w+="}"
    lab_result_json result.json "scenario=\"busy-keeper\"" "completed=$completed" "rc=$rc" \
        "agent=$([ "$LVS_HOOKS_AGENT" = 1 ] && echo true || echo false)" \
        "templates=${templates:-null}" "persistence_timeout=$LAB_PERSIST" \
        "flaps=$figs" "tracebacks_total=$tb" "waited_s=$w"
    if [ "$figs" != null ]; then
        "$LAB_PYTHON" - "$figs" <<'PYEOF'
import json, sys
for label, f in json.loads(sys.argv[1]).items():
    reads = f["keeper_reads_ms"]
    print(f"LAB: busy-keeper {label}: MASTER transition started {f['master_wait_s']} s after "
          f"keepalived's MASTER line; events "
          + ", ".join(f"{e['state']} {e['outcome']} wait {e['wait_s']} s"
                      + (f" behind the {e['behind']}" if e["behind"] else "") for e in f["events"])
          + (f"; keeper's reads (from the one before the flap): {reads} ms" if reads else ""))
PYEOF
    fi
    echo "LAB: busy-keeper templates=${templates:-?} tracebacks=$tb rc=$rc"
    exit "$rc"
}
trap 'collect $?' EXIT
trap "trap '' TERM; _busy_term=1; exit 124" TERM

# --------------------------------------------------------------------- the story

lab_step "dir2 master alone, then dir1 as backup (agent: $LVS_HOOKS_AGENT)"
lab_topology 2
lab_keepalived_start dir2 150 MASTER
t=$EPOCHREALTIME
lab_wait 60 "dir2 is master" lab_master_is dir2 || lab_die "no master"
lab_wait 90 "dir2's MASTER transition journalled" lab_hooks_state dir2 MASTER \
    || lab_die "no MASTER transition on dir2"
lab_keepalived_start dir1 100 BACKUP
lab_wait 90 "dir1's BACKUP transition journalled" lab_hooks_state dir1 BACKUP \
    || lab_die "no BACKUP transition on dir1"
waited[ready]=$(lab_elapsed "$t")

lab_step "control: the flap with an empty table"
flap control

lab_step "$N templates on dir2 (dir1 down: none of them synced to it)"
t=$EPOCHREALTIME
lab_bulk_templates "$N" || lab_die "bulk templates"
have_all() { templates=$(persist_count); [ "$templates" -ge "$N" ]; }
lab_wait 300 "$N templates on dir2" have_all || lab_die "only $templates of $N templates"
waited[fill]=$(lab_elapsed "$t")
lab_master_is dir2 || lab_die "dir2 is not master"

for ((i = 1; i <= FLAPS; i++)); do
    lab_step "busy $i/$FLAPS: dir1 back as backup; the flap right after one of dir2's keeper reads ended"
    k0=$(lines_of "$LAB_TMP/dir1/keepalived.log")
    lab_keepalived_start dir1 100 BACKUP
    lab_wait 90 "dir1 back as backup" _logged_since "$LAB_TMP/dir1/keepalived.log" "$k0" \
        'VI_1\) Entering BACKUP STATE' || lab_die "dir1 not backup"
    m=$(lines_of "$SYSLOG")
    t=$EPOCHREALTIME
    # (a keeper that plans from a table kept in memory reads no /proc: then the flap goes ahead)
    lab_wait 90 "a keeper read ended on dir2" _logged_since "$SYSLOG" "$m" \
        'whole read of \S+ip_vs_conn for keeper' \
        || lab_log "no whole read of the table by dir2's keeper in 90 s: the flap without it"
    waited[keeper_read$i]=$(lab_elapsed "$t")
    tail -n "+$((m + 1))" "$SYSLOG" | grep -E 'for keeper' | tail -n 1
    mark[busy${i}_trigger]=$m
    flap "busy$i"
done
completed=true
exit 0
