#!/bin/bash
# lab-timeout: 480
# Issue 14's last acceptance point: two directors set up by following README.md's quick start
# verbatim, then seed000's story on them, then `lvs-hooks status --check` on each.
#
# The README is read at run time: the install line, the keepalived.conf of "The keepalived
# lines", the `init` line, the control key's lines and YAML, `doctor`, the units' lines. Its
# example names the lab's topology (checked, not assumed): the VIP and its port, the real
# servers (the lab's rs1 10.1.0.11 and rs2 10.1.0.12), the real servers' gateway VIP, the sync
# interface, the persistence. If someone edits the quick start, this tests the edit.
#
#   install   `apt install ./lvs-hooks_VERSION-1_all.deb` in the guest, from $LAB_DEB (built on
#             the host by packaging/build-deb; -e LAB_DEB=FILE, a path the guest sees)
#   machines  lib.sh's topology with the README's names: one network (eth0) for the clients,
#             the VIP and the real servers, eth1 the directors' sync link; each director a
#             machine of its own (lab_view: its own /etc/lvs-hooks, /etc/keepalived,
#             /etc/systemd/system, /var/lib/lvs-hooks, /run, hostname), the package installed
#             once in the guest, which both share otherwise
#   setup     on the backup director (dir2, `priority 100`) first, then on the master (dir1):
#             the keepalived.conf, `init`, the control key (made on dir2, copied to dir1), its
#             YAML, `doctor` (must exit 0: nothing found), the units' lines
#   story     seed000's: 20 UDP clients through dir1; hard failure of dir1, dir2 takes over;
#             the flows go on for 1.5 x the persistence, then a new flow each; dir1 comes back
#             rebooted (its enabled units start as at boot), warms from dir2's push and takes
#             the VIP back. 20 of 20 on their real server at every step
#   check     `lvs-hooks status --check` on both: OK (exit 0, one line); then dir2's agent (the
#             process of the unit's ExecStart) killed: CRITICAL (exit 2)
#
# No systemd in the guest: `systemctl` in the README's lines is done here as systemd would
# (qs_systemctl): the command line of the installed unit's ExecStartPre/ExecStart with its
# Environment/EnvironmentFile and the PATH systemd gives services, a timer's service at
# OnBootSec and every OnUnitActiveSec, `enable` as a symlink in the director's
# /etc/systemd/system/TARGET.wants/. Not done: the units' sandboxing (ProtectSystem,
# PrivateTmp, ReadWritePaths, capabilities) and Restart= (a killed agent stays dead here).
#
# The package stays installed in the guest's root for the VM's later scenarios (its files only:
# nothing of it is enabled or runs there; they run `lvs-hooks` of the checkout, first on PATH).
#
# Results ($LAB_OUT, on every exit path): result.json (per step same_rs, doctor exit codes,
# status lines and exit codes, waits, wall time, tracebacks), traffic.txt, the README's pieces
# as run (readme-*.txt), each director's keepalived.conf, lvs-hooks.yaml, doctor and command
# output, logs.
set -u
. "$LAB_DIR/lib.sh"
README="$LAB_PROJECT/README.md"
SERVICE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin   # systemd's for services
FIRST=dir2   # the backup director, `priority 100`: the README's steps start with it
SECOND=dir1

declare -A same=() waited=() cmd_rc=() doctor_rc=() doctor_errors=() doctor_warnings=()
declare -A check_rc=() check_line=() UNIT_PID=() BOOT_T=() CHECK_PID=()
steps=()
failures=()
completed=false
install_rc=null
install_cmd=""
killed=""

# ------------------------------------------------------------------ the README's quick start

# QS_TITLE[i], QS_LANG[i], QS_TEXT[i]: the fenced blocks of README.md's "## Quick start", with the
# title of their "### N. ..." section
QS_TITLE=() QS_LANG=() QS_TEXT=()
readme_blocks() {
    local line in_qs=0 in_block=0 title="" lang="" text=""
    while IFS= read -r line; do
        if [ "$in_block" = 1 ]; then
            if [[ $line == '```'* ]]; then
                QS_TITLE+=("$title") QS_LANG+=("$lang") QS_TEXT+=("$text")
                in_block=0
            else
                text+=$line$'\n'
            fi
            continue
        fi
        case $line in
        '## Quick start'*) in_qs=1 ;;
        '## '*) [ "$in_qs" = 1 ] && break ;;
        '### '*) title=${line#'### '} ;;
        '```'*) [ "$in_qs" = 1 ] && { in_block=1 lang=${line#'```'} text=""; } ;;
        esac
    done < "$README"
}
# qs_block TITLE_GLOB LANG TEXT: into REPLY, the first block of a section whose title matches
# TITLE_GLOB, fenced as LANG, that holds TEXT
qs_block() {
    local i
    for i in "${!QS_TEXT[@]}"; do
        # shellcheck disable=SC2053
        if [[ ${QS_TITLE[$i]} == $1 && ${QS_LANG[$i]} == "$2" && ${QS_TEXT[$i]} == *"$3"* ]]; then
            REPLY=${QS_TEXT[$i]}
            return 0
        fi
    done
    lab_die "README.md's quick start has no '$2' block holding '$3' in a section '$1'"
}
# conf_value TEXT REGEX: the first match's group 1 of REGEX in TEXT (one line at a time)
conf_value() {
    local line
    while IFS= read -r line; do
        [[ $line =~ $2 ]] && { REPLY=${BASH_REMATCH[1]}; return 0; }
    done <<< "$1"
    lab_die "no '$2' in README.md's keepalived.conf"
}

# qs_run DIR LABEL BLOCK: the README's shell lines of BLOCK on DIR, one by one, as root in its
# view; `systemctl` lines through qs_systemctl. A line marked "on one director; copy it" runs on
# the first director only; on the other its file is copied from the first (the operator's scp).
qs_run() {
    local d=$1 label=$2 line rc target words n=0
    while IFS= read -r line; do
        [ -n "${line// /}" ] || continue
        n=$((n + 1))
        echo "### $d \$ $line" >> "$LAB_OUT/commands-$d.txt"
        if [[ $line == *"on one director; copy it"* && $d != "$FIRST" ]]; then
            target=${line##*> }; target=${target%%[[:space:]]*}
            cp -p "$LAB_TMP/$FIRST/view$target" "$LAB_TMP/$d/view$target"
            rc=$?
        elif [[ $line == systemctl\ * ]]; then
            words=${line#systemctl }
            # shellcheck disable=SC2086
            qs_systemctl "$d" ${words%%#*} >> "$LAB_OUT/commands-$d.txt" 2>&1
            rc=$?
        else
            lab_in "$d" bash -c "$line" >> "$LAB_OUT/commands-$d.txt" 2>&1
            rc=$?
        fi
        echo "### rc=$rc" >> "$LAB_OUT/commands-$d.txt"
        cmd_rc[$d/$label.$n]=$rc
        lab_log "$d: $line  -> rc $rc"
        [ "$rc" = 0 ] || return "$rc"
    done <<< "$3"
}

# ------------------------------------------------------------------ units, as systemd would

# unit_get UNIT KEY: the values of KEY= in the installed UNIT's file (continuations joined)
unit_get() {
    local f="" p line full=""
    for p in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
        [ -f "$p/$1" ] && { f=$p/$1; break; }
    done
    [ -n "$f" ] || return 1
    while IFS= read -r line; do
        if [[ $line == *\\ ]]; then full+="${line%\\} "; continue; fi
        full+=$line
        [[ $full == "$2="* ]] && echo "${full#"$2="}"
        full=""
    done < "$f"
}
# unit_command UNIT LINE: LINE (an Exec*= value) as systemd runs it, into UNIT_CMD: `env -i`,
# systemd's PATH, the unit's Environment= and EnvironmentFile= (a leading "-": optional), $VAR
# split into words, ${VAR} one word, Nice= through nice. Returns 1 when LINE ignores failure
# ("-" prefix) so the caller may go on.
unit_command() {
    local u=$1 line=$2 kv w f v nice
    local -A env=()
    local envs=("PATH=$SERVICE_PATH")
    while IFS= read -r kv; do
        for w in $kv; do env[${w%%=*}]=${w#*=}; envs+=("$w"); done
    done < <(unit_get "$u" Environment)
    while IFS= read -r f; do
        [ -r "${f#-}" ] || { [[ $f == -* ]] && continue; lab_die "$u: EnvironmentFile $f missing"; }
        while IFS= read -r kv; do
            [[ $kv =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
            v=${BASH_REMATCH[2]}; v=${v#\"}; v=${v%\"}
            env[${BASH_REMATCH[1]}]=$v
            envs+=("${BASH_REMATCH[1]}=$v")
        done < "${f#-}"
    done < <(unit_get "$u" EnvironmentFile)
    UNIT_CMD=(env -i "${envs[@]}")
    nice=$(unit_get "$u" Nice)
    [ -n "$nice" ] && UNIT_CMD+=(nice -n "$nice")
    UNIT_IGNORE_FAIL=0
    [[ $line == -* ]] && UNIT_IGNORE_FAIL=1
    line=${line#[-@+!:]}
    for w in $line; do
        if [[ $w =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
            # shellcheck disable=SC2206
            UNIT_CMD+=(${env[${BASH_REMATCH[1]}]:-})
        elif [[ $w =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
            UNIT_CMD+=("${env[${BASH_REMATCH[1]}]:-}")
        else
            UNIT_CMD+=("$w")
        fi
    done
}
unit_log() { local n=${2%.*}; n=${n#lvs-hooks-}; echo "$LAB_TMP/$1/$n.log"; }

# unit_start DIR UNIT: start UNIT in DIR: each ExecStartPre, then ExecStart (Type=oneshot: to its
# end; otherwise in the background, its pid in UNIT_PID[DIR/UNIT]); a timer: timer_start
unit_start() {
    local d=$1 u=$2 log line
    case $u in *.timer) timer_start "$d" "$u"; return ;; esac
    local cond
    cond=$(unit_get "$u" ConditionFileNotEmpty)
    if [ -n "$cond" ] && [ ! -s "$(lab_view_path "$d" "$cond")" ]; then
        lab_log "$d: $u not started: ConditionFileNotEmpty=$cond"
        return 0
    fi
    log=$(unit_log "$d" "$u")
    while IFS= read -r line; do
        unit_command "$u" "$line"
        lab_in "$d" "${UNIT_CMD[@]}" >> "$log" 2>&1 || [ "$UNIT_IGNORE_FAIL" = 1 ] \
            || { lab_log "$d: $u: ExecStartPre failed"; return 1; }
    done < <(unit_get "$u" ExecStartPre)
    line=$(unit_get "$u" ExecStart)
    unit_command "$u" "$line"
    echo "$(lab_elapsed) $u: ${UNIT_CMD[*]}" >> "$LAB_OUT/units-$d.txt"
    if [ "$(unit_get "$u" Type)" = oneshot ]; then
        lab_in "$d" "${UNIT_CMD[@]}" >> "$log" 2>&1
        return
    fi
    lab_in_cmd "$d"
    "${LAB_IN[@]}" "${UNIT_CMD[@]}" >> "$log" 2>&1 &
    UNIT_PID[$d/$u]=$!   # nsenter, env and the wrapper exec the command: this is its pid
    disown
}
# unit_stop DIR UNIT: SIGTERM to its process, wait until it is gone (systemd's default stop). A
# timer's loop leads its own process group (timer_start): the whole group, so that the service
# run it is in the middle of stops too, as the package's prerm stops the timer and its service
unit_stop() {
    local pid=${UNIT_PID[$1/$2]:-} target
    [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null || return 0
    target=$pid
    [[ $2 == *.timer ]] && target=-$pid
    kill -TERM -- "$target"
    lab_wait 30 "$1: $2 stopped" _gone "$target" || kill -KILL -- "$target"
}
_gone() { ! kill -0 -- "$1" 2> /dev/null; }

# seconds of a systemd time span: 1min, 30s, 2min 30s, 90
secs() {
    local t=0 w
    for w in $1; do
        case $w in
        *min) t=$((t + ${w%min} * 60)) ;; *s) t=$((t + ${w%s})) ;; *h) t=$((t + ${w%h} * 3600)) ;;
        *) t=$((t + w)) ;;
        esac
    done
    echo "$t"
}
# timer_start DIR TIMER: TIMER's service at OnBootSec after DIR's boot, then every
# OnUnitActiveSec; the loop runs in DIR's netns (it dies with the director), waits with `read
# -t` on a FIFO nobody writes to, and leads a process group of its own (setsid: a background
# job is no group leader, so setsid execs in place and the pid is the group's) for unit_stop
timer_start() {
    local d=$1 t=$2 svc=${2%.timer}.service boot period now first
    boot=$(secs "$(unit_get "$t" OnBootSec)") period=$(secs "$(unit_get "$t" OnUnitActiveSec)")
    now=$EPOCHREALTIME
    first=$(( boot - (${now/./} - ${BOOT_T[$d]/./}) / 1000000 ))
    (( first < 0 )) && first=0
    unit_command "$svc" "$(unit_get "$svc" ExecStart)"
    echo "$(lab_elapsed) $t: in ${first}s, then every ${period}s: ${UNIT_CMD[*]}" \
        >> "$LAB_OUT/units-$d.txt"
    lab_in_cmd "$d"
    # shellcheck disable=SC2016
    setsid "${LAB_IN[@]}" bash -c 'exec 3<> "$1"; read -r -t "$2" -u 3; p=$3; shift 3
        while :; do "$@"; echo "rc=$?"; read -r -t "$p" -u 3; done' timer "$LAB_TMP/.nap" \
        "$first" "$period" "${UNIT_CMD[@]}" >> "$(unit_log "$d" "$svc")" 2>&1 &
    UNIT_PID[$d/$t]=$!
    disown
}
# lab_view_path DIR PATH: where DIR's view keeps PATH (for the few paths the scenario reads)
lab_view_path() {
    case $2 in
    /run/lvs-hooks/*) echo "$LAB_TMP/$1/run/${2#/run/lvs-hooks/}" ;;
    /var/lib/lvs-hooks/*) echo "$LAB_TMP/$1/state/${2#/var/lib/lvs-hooks/}" ;;
    /etc/lvs-hooks/* | /etc/keepalived/* | /etc/systemd/system/* | /run/*) echo "$LAB_TMP/$1/view$2" ;;
    *) echo "$2" ;;
    esac
}

# qs_systemctl DIR VERB [--now] UNIT...: systemctl of the README's lines, in DIR
qs_systemctl() {
    local d=$1 verb=$2 now=0 u wb
    shift 2
    [ "${1:-}" = --now ] && { now=1; shift; }
    for u in "$@"; do
        case $u in *.*) ;; *) u=$u.service ;; esac
        case $verb in
        enable)
            for wb in $(unit_get "$u" WantedBy) $(unit_get "$u" RequiredBy); do
                mkdir -p "$LAB_TMP/$d/view/etc/systemd/system/$wb.wants"
                ln -sfn "/usr/lib/systemd/system/$u" "$LAB_TMP/$d/view/etc/systemd/system/$wb.wants/$u"
                echo "Created symlink /etc/systemd/system/$wb.wants/$u -> /usr/lib/systemd/system/$u."
            done
            [ "$now" = 1 ] && { unit_stop "$d" "$u"; unit_start "$d" "$u"; }
            ;;
        start) unit_start "$d" "$u" ;;
        stop) unit_stop "$d" "$u" ;;
        restart) unit_stop "$d" "$u"; unit_start "$d" "$u" ;;
        *) lab_die "qs_systemctl: $verb is not done here" ;;
        esac
    done
    return 0
}
# unit_enabled DIR UNIT: a symlink to UNIT in one of DIR's /etc/systemd/system/*.wants
unit_enabled() { compgen -G "$LAB_TMP/$1/view/etc/systemd/system/*.wants/$2" > /dev/null; }

# director_boot DIR: what DIR's boot does for lvs-hooks and keepalived: its tmpfiles.d (as
# systemd-tmpfiles-setup and the package's postinst), then its enabled units in their order
# (the agent Before=keepalived, the snapshot timer After=)
director_boot() {
    local d=$1 u
    BOOT_T[$d]=$EPOCHREALTIME
    lab_in "$d" systemd-tmpfiles --create /usr/lib/tmpfiles.d/lvs-hooks.conf \
        || lab_die "$d: systemd-tmpfiles"
    for u in lvs-hooks-rules.service lvs-hooks-agent.service keepalived.service \
             lvs-hooks-snapshot.timer; do
        unit_enabled "$d" "$u" && unit_start "$d" "$u"
    done
    return 0
}

# ------------------------------------------------------------------ the story and the figures

step() {  # step LABEL open|probe: a client step; its same_as_ref into same[LABEL]
    local label=$1 kind=$2
    lab_client "$kind" "$label" || lab_die "client: $kind $label"
    same[$label]=$(lab_json_field same_as_ref)
    steps+=("$label")
    [ "${same[$label]}" = "$LAB_CLIENTS" ] \
        || lab_log "step $label: ${same[$label]} of $LAB_CLIENTS clients on their real server"
}
json_map() {  # json_map NAME [STRING]: an associative array as a JSON object (numbers or strings)
    local -n m=$1
    local k s="{" sep="" v
    for k in "${!m[@]}"; do
        v=${m[$k]}
        [ "${2:-}" = string ] && v=$(json_str "$v")
        s+="$sep\"$k\": ${v:-null}"; sep=", "
    done
    echo "$s}"
}
count_in() { awk -v w="$1" '{ n += gsub(w, "") } END { print n + 0 }' "$2" 2>/dev/null || echo 0; }
# status_check_start DIR KEY: `lvs-hooks status --check` in DIR, in the background;
# status_check_end KEY: its exit code and output into check_rc[KEY], check_line[KEY]
status_check_start() {
    ( lab_in "$1" lvs-hooks status --check > "$LAB_TMP/check-$2.out" 2>&1
      echo $? > "$LAB_TMP/check-$2.rc" ) &
    CHECK_PID[$2]=$!
}
status_check_end() {
    wait "${CHECK_PID[$1]}"
    check_rc[$1]=$(< "$LAB_TMP/check-$1.rc")
    check_line[$1]=$(< "$LAB_TMP/check-$1.out")
    lab_log "${1%-killed}: lvs-hooks status --check -> rc ${check_rc[$1]}: ${check_line[$1]}"
}
_agent_busy() { [[ ${check_line[$1]} == "LVS-HOOKS WARNING - agent busy ("* ]]; }
# _check_not_busy DIR: check DIR again; true once the line is anything but "agent busy"
_check_not_busy() { status_check_start "$1" "$1"; status_check_end "$1"; ! _agent_busy "$1"; }

collect() {  # the logs and figures on every exit path
    local rc=$1 d f n tb="{" sep="" tb_total=0
    trap - EXIT
    set +u
    cp "$LAB_TMP/syslog.log" "$LAB_OUT/syslog.log" 2>/dev/null
    for d in dir1 dir2; do
        for f in agent keepalived snapshot; do
            cp "$LAB_TMP/$d/$f.log" "$LAB_OUT/$f-$d.log" 2>/dev/null
        done
        cp "$LAB_TMP/$d/view/etc/keepalived/keepalived.conf" "$LAB_OUT/keepalived-$d.conf" 2>/dev/null
        cp "$LAB_TMP/$d/view/etc/lvs-hooks/lvs-hooks.yaml" "$LAB_OUT/lvs-hooks-$d.yaml" 2>/dev/null
    done
    cp "$LAB_TMP/client.log" "$LAB_OUT/client.log" 2>/dev/null
    for f in "$LAB_OUT"/syslog.log "$LAB_OUT"/agent-*.log "$LAB_OUT"/keepalived-*.log \
             "$LAB_OUT"/snapshot-*.log "$LAB_OUT"/commands-*.txt "$LAB_OUT"/client.log; do
        [ -e "$f" ] || continue
        n=$(count_in Traceback "$f")
        tb+="$sep\"${f##*/}\": $n"; sep=", "
        tb_total=$((tb_total + n))
    done
    tb+="}"
    [ "$tb_total" -gt 0 ] && failures+=("$tb_total tracebacks in the logs")
    [ -n "${LAB_CIN:-}" ] && lab_client report "$LAB_OUT/traffic.json" > /dev/null
    local s="{" ssep="" l traffic=null fl="[" fsep=""
    for l in "${steps[@]}"; do s+="$ssep\"$l\": ${same[$l]:-null}"; ssep=", "; done
    s+="}"
    [ -s "$LAB_OUT/traffic.json" ] && traffic=$(< "$LAB_OUT/traffic.json")
    for l in "${failures[@]}"; do l=${l//\"/\\\"}; fl+="$fsep\"$l\""; fsep=", "; done
    fl+="]"
    [ "$rc" = 0 ] && [ ${#failures[@]} -gt 0 ] && rc=1
    local kill_json=null
    [ -n "$killed" ] && kill_json="{\"director\": \"$killed\", \"rc\": ${check_rc[$killed-killed]:-null}, \"line\": $(json_str "${check_line[$killed-killed]:-}")}"
    unset "check_rc[$killed-killed]" "check_line[$killed-killed]"
    lab_result_json result.json "scenario=\"quickstart\"" "completed=$completed" "rc=$rc" \
        "pass=$([ "$rc" = 0 ] && echo true || echo false)" "failures=$fl" \
        "readme=$(json_str "$README")" "deb=$(json_str "${LAB_DEB:-}")" \
        "install=$(json_str "$install_cmd")" "install_rc=$install_rc" \
        "clients=$LAB_CLIENTS" "vip=\"$LAB_VIP\"" "port=$LAB_VPORT" \
        "persistence_timeout=$LAB_PERSIST" "same_rs=$s" \
        "doctor_rc=$(json_map doctor_rc)" "doctor_errors=$(json_map doctor_errors)" \
        "doctor_warnings=$(json_map doctor_warnings)" "commands_rc=$(json_map cmd_rc)" \
        "status_check_rc=$(json_map check_rc)" "status_check_line=$(json_map check_line string)" \
        "after_kill=$kill_json" "tracebacks=$tb" "tracebacks_total=$tb_total" \
        "waited_s=$(json_map waited)" "wall_s=$(lab_elapsed)" "traffic=$traffic"
    echo "LAB: quickstart same-rs (of $LAB_CLIENTS):" \
        "$(for l in "${steps[@]}"; do printf '%s=%s ' "$l" "${same[$l]:-?}"; done)"
    echo "LAB: quickstart doctor: $(json_map doctor_rc); status --check: $(json_map check_rc)" \
        "after killing $killed's agent: ${kill_json}"
    echo "LAB: quickstart $([ "$rc" = 0 ] && echo PASS || echo "FAIL (rc $rc): ${failures[*]:-see the log}") wall $(lab_elapsed)s"
    [ -e "$LAB_OUT/traffic.txt" ] && cat "$LAB_OUT/traffic.txt"
    exit "$rc"
}
json_str() { local v=${1//\\/\\\\}; v=${v//\"/\\\"}; v=${v//$'\n'/\\n}; echo "\"$v\""; }
trap 'collect $?' EXIT
trap "trap '' TERM; exit 124" TERM

# ------------------------------------------------------------------ 1. install

lab_step "the README's quick start, read from $README"
readme_blocks
qs_block "*Install*" sh "apt install"
install_line=$(grep -m 1 '^apt install ' <<< "$REPLY")
qs_block "*keepalived lines*" "" "vrrp_notify_fifo_script"; KA_CONF=$REPLY
qs_block "*configuration from keepalived.conf*" sh "lvs-hooks init"; QS_INIT=$REPLY
qs_block "*configuration from keepalived.conf*" sh "control.key"; QS_KEY=$REPLY
qs_block "*configuration from keepalived.conf*" yaml "key_file"; QS_KEY_YAML=$REPLY
qs_block "*doctor*" sh "lvs-hooks doctor"; QS_DOCTOR=$REPLY
qs_block "*units*" sh "systemctl"; QS_UNITS=$REPLY
for v in install_line KA_CONF QS_INIT QS_KEY QS_KEY_YAML QS_DOCTOR QS_UNITS; do
    printf '%s\n' "${!v}" > "$LAB_OUT/readme-$v.txt"
done
grep -q 'priority 150' <<< "$KA_CONF" || lab_die "the README's keepalived.conf has no 'priority 150'"
grep -q '`priority 100` on the second' "$README" || lab_die "the README no longer says '\`priority 100\` on the second'"

# The example's names, from its keepalived.conf: the lab builds them (or says why it cannot)
conf_value "$KA_CONF" '^virtual_server ([0-9.]+) ([0-9]+)'; LAB_VIP=$REPLY
conf_value "$KA_CONF" '^virtual_server [0-9.]+ ([0-9]+)'; LAB_VPORT=$REPLY
conf_value "$KA_CONF" '^ +persistence_timeout ([0-9]+)'; LAB_PERSIST=$REPLY
conf_value "$KA_CONF" '^ +protocol ([A-Z]+)'; proto=$REPLY
conf_value "$KA_CONF" '^ +lvs_sync_daemon ([a-z0-9]+)'; LAB_SYNC_IF=$REPLY
conf_value "$KA_CONF" '^ +interface ([a-z0-9]+)'; vrrp_if=$REPLY
conf_value "$KA_CONF" '^ +(10\.1\.0\.[0-9]+)/24$'; LAB_GW_VIP=$REPLY
rs=$(grep -oE '^ +real_server [0-9.]+ [0-9]+' <<< "$KA_CONF" | awk '{print $2":"$3}' | xargs)
[ "$rs" = "10.1.0.11:$LAB_VPORT 10.1.0.12:$LAB_VPORT" ] \
    || lab_die "the README's real servers ($rs) are not the lab's (10.1.0.11 and 10.1.0.12 on the VIP's port)"
[ "$proto" = UDP ] || lab_die "the README's service is $proto: seed000's story here sends UDP"
[ "$vrrp_if" = eth0 ] && [ "$LAB_SYNC_IF" = eth1 ] \
    || lab_die "the README's interfaces (instance $vrrp_if, sync $LAB_SYNC_IF) are not the lab's eth0/eth1"
LAB_EXT_NET=${LAB_VIP%.*} LAB_CLIENT_HOST=250 LAB_ONE_NET=1
lab_log "README's example: VIP $LAB_VIP:$LAB_VPORT/$proto, real servers $rs, gateway" \
    "$LAB_GW_VIP, sync on $LAB_SYNC_IF, persistence_timeout $LAB_PERSIST"

lab_step "1. install: $install_line (in the guest, from $(basename "${LAB_DEB:-?}"))"
[ -n "${LAB_DEB:-}" ] || lab_die "set LAB_DEB to the .deb (-e LAB_DEB=FILE; packaging/build-deb)"
[ -r "$LAB_DEB" ] || lab_die "$LAB_DEB cannot be read in the guest (the guest sees the host's /," \
    "read-only, but not its /tmp beyond what the runner mounts): build it elsewhere"
deb=$(basename "$LAB_DEB")
# the README's file name with its VERSION: the one given
pattern=$(grep -oE '\./lvs-hooks_VERSION[^ ]*\.deb' <<< "$install_line") \
    || lab_die "no ./lvs-hooks_VERSION...deb in '$install_line'"
version=${deb#lvs-hooks_}; version=${version%%-*}
[ "${pattern//VERSION/$version}" = "./$deb" ] || lab_die "$deb is not the README's $pattern"
install_cmd=${install_line//VERSION/$version}
install_cmd=${install_cmd%%#*}
install_cmd=${install_cmd%"${install_cmd##*[! ]}"}
# Debian's switch for man-db's index update at each install (its trigger costs half a minute
# under emulation here); nothing of lvs-hooks' installation depends on it
rm -f /var/lib/man-db/auto-update
t=$EPOCHREALTIME
(cd "$(dirname "$LAB_DEB")" && eval "$install_cmd") > "$LAB_OUT/install.txt" 2>&1
install_rc=$?
waited[install]=$(lab_elapsed "$t")
tail -n 5 "$LAB_OUT/install.txt"
[ "$install_rc" = 0 ] || lab_die "'$install_cmd' failed (rc $install_rc): $(tail -n 3 "$LAB_OUT/install.txt")"
dpkg-query -W -f '${Package} ${Version} ${Status}\n' lvs-hooks
[ -x /usr/sbin/lvs-hooks ] && [ -x /usr/libexec/keepalived/lvs-hooks ] || lab_die "not installed"

lab_step "the machines: two directors with the README's names, each its own files"
lab_topology 2
for d in dir1 dir2; do
    lab_view "$d"
    BOOT_T[$d]=$EPOCHREALTIME
    # what the package's postinst did on that machine: /run/lvs-hooks
    lab_in "$d" systemd-tmpfiles --create /usr/lib/tmpfiles.d/lvs-hooks.conf || lab_die "$d: tmpfiles"
done
lab_in dir1 sh -c 'echo "$(hostname): $(ls /usr/local/bin | wc -l) in /usr/local/bin, $(command -v lvs-hooks)"'

# ------------------------------------------------------------------ 2.-5. on each director

lab_step "2. the keepalived lines: ${FIRST} (priority 100) first, then ${SECOND} (priority 150)"
for d in "$FIRST" "$SECOND"; do
    conf=$KA_CONF
    [ "$d" = "$FIRST" ] && conf=${conf//priority 150/priority 100}
    printf '%s' "$conf" > "$LAB_TMP/$d/view/etc/keepalived/keepalived.conf"
done

lab_step "3. a configuration from keepalived.conf, the control key"
for d in "$FIRST" "$SECOND"; do
    qs_run "$d" init "$QS_INIT" || lab_die "$d: init failed"
    qs_run "$d" key "$QS_KEY" || lab_die "$d: the control key"
    printf '%s' "$QS_KEY_YAML" >> "$LAB_TMP/$d/view/etc/lvs-hooks/lvs-hooks.yaml"
    echo "### $d: the YAML block appended to /etc/lvs-hooks/lvs-hooks.yaml" >> "$LAB_OUT/commands-$d.txt"
done

lab_step "4. lvs-hooks doctor"
for d in "$FIRST" "$SECOND"; do
    lab_in "$d" bash -c "$QS_DOCTOR" > "$LAB_OUT/doctor-$d.txt" 2>&1
    doctor_rc[$d]=$?
    doctor_errors[$d]=$(grep -c '^ERROR' "$LAB_OUT/doctor-$d.txt")
    doctor_warnings[$d]=$(grep -c '^WARNING' "$LAB_OUT/doctor-$d.txt")
    lab_log "$d: doctor rc ${doctor_rc[$d]}: $(head -n 1 "$LAB_OUT/doctor-$d.txt")"
    [ "${doctor_rc[$d]}" = 0 ] || { cat "$LAB_OUT/doctor-$d.txt"; lab_die "$d: doctor is not clean"; }
done

lab_step "5. the units, backup director first"
t=$EPOCHREALTIME
for d in "$FIRST" "$SECOND"; do
    qs_run "$d" units "$QS_UNITS" || lab_die "$d: the units' lines"
done
waited[units]=$(lab_elapsed "$t")
t=$EPOCHREALTIME
lab_wait 120 "dir1 warm" lab_warm dir1 || lab_die "dir1 never warm"
lab_wait 120 "dir1 is master" lab_master_is dir1 || lab_die "dir1 did not take the VIP"
lab_wait 90 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
    || lab_die "no MASTER transition on dir1"
lab_wait 90 "dir2's BACKUP transition journalled" lab_hooks_state dir2 BACKUP \
    || lab_die "no BACKUP transition on dir2"
lab_wait 120 "dir2 warm" lab_warm dir2 || lab_die "dir2 never warm"
waited[ready]=$(lab_elapsed "$t")

# ------------------------------------------------------------------ seed000's story

lab_step "start: $LAB_CLIENTS clients open one UDP flow each; flows keep sending every second"
lab_client_start
lab_client keepalive 1
step start open
[ "$(lab_json_field answered)" = "$LAB_CLIENTS" ] || lab_die "not every client got an answer"
t=$EPOCHREALTIME
lab_wait 60 "dir2 has the synced templates and connections" lab_synced dir2 "$LAB_CLIENTS" \
    || lab_die "templates/connections did not reach dir2"
waited[sync]=$(lab_elapsed "$t")

lab_step "1: hard failure of dir1 (master)"
lab_fail_hard dir1
t=$EPOCHREALTIME
lab_wait 60 "dir2 takes over" lab_has_vip dir2 || lab_die "dir2 did not take over"
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
waited[expiry]=$(lab_elapsed "$t")
lab_log "dir2: $(lab_tpl_count dir2) templates"
step 2-expired probe
step 2-new open

lab_step "3: dir1 comes back rebooted (empty table, its enabled units at boot) and takes the VIP back"
lab_reboot dir1
lab_view dir1
director_boot dir1
t=$EPOCHREALTIME
lab_wait 120 "dir1 warm (a push from dir2, checked in its table)" lab_warm dir1 \
    || lab_die "dir1 never warm"
waited[warm]=$(lab_elapsed "$t")
lab_wait 120 "dir1 is master again" lab_master_is dir1 || lab_die "dir1 did not take the VIP back"
waited[failback]=$(lab_elapsed "$t")
lab_wait 90 "dir1's MASTER transition journalled" lab_hooks_state dir1 MASTER \
    || lab_die "no MASTER transition on dir1"
lab_wait 90 "dir2's BACKUP transition journalled" lab_hooks_state dir2 BACKUP \
    || lab_die "no BACKUP transition on dir2"
waited[failback_transition]=$(lab_elapsed "$t")
step 3-failback probe
step 3-new open
for l in "${steps[@]}"; do
    [ "${same[$l]}" = "$LAB_CLIENTS" ] \
        || failures+=("$l: ${same[$l]} of $LAB_CLIENTS on their real server")
done

# ------------------------------------------------------------------ status --check

lab_step "lvs-hooks status --check on both directors"
t=$EPOCHREALTIME
for d in dir1 dir2; do status_check_start "$d" "$d"; done
for d in dir1 dir2; do status_check_end "$d"; done
for d in dir1 dir2; do
    # A monitoring system checks a soft state again before it alerts; so does this step, for
    # "agent busy" alone (lab, 6.12 under a CPU hog: an agent silent for up to 8 s between
    # answers). Any other line counts at once.
    if _agent_busy "$d"; then
        lab_wait 60 "$d's status --check without 'agent busy'" _check_not_busy "$d" || true
    fi
done
waited[status_check]=$(lab_elapsed "$t")
for d in dir1 dir2; do
    [ "${check_rc[$d]}" = 0 ] && [[ ${check_line[$d]} == "LVS-HOOKS OK - "* ]] \
        && [[ ${check_line[$d]} != *$'\n'* ]] \
        || failures+=("$d: status --check rc ${check_rc[$d]}: ${check_line[$d]}")
done

lab_step "dir2's agent killed: status --check must say CRITICAL"
killed=dir2
pid=${UNIT_PID[dir2/lvs-hooks-agent.service]:-}
[ -n "$pid" ] || lab_die "no agent pid for dir2"
cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline")
lab_log "dir2's agent (lvs-hooks-agent.service's ExecStart): pid $pid: $cmdline"
[[ $cmdline == *lvs?hooks*agent* ]] || lab_die "pid $pid is not the agent: $cmdline"
kill -KILL "$pid"
lab_wait 10 "dir2's agent gone" _gone "$pid" || lab_die "the agent did not die"
status_check_start dir2 dir2-killed
status_check_end dir2-killed
[ "${check_rc[dir2-killed]}" = 2 ] && [[ ${check_line[dir2-killed]} == "LVS-HOOKS CRITICAL - "* ]] \
    || failures+=("dir2 with its agent killed: status --check rc ${check_rc[dir2-killed]}: ${check_line[dir2-killed]}")

lab_step "removal as the README says (apt purge; -y for a script): the VM's later scenarios find no package"
# On a host with systemd the package's prerm stops the agent, the snapshot timer and its service
# before dpkg removes a file; no systemd runs here, so the scenario stops what it started, as
# prerm would (a snapshot the timer started during the removal died importing a removed module)
for d in dir1 dir2; do
    for u in lvs-hooks-snapshot.timer lvs-hooks-agent.service; do unit_stop "$d" "$u"; done
done
t=$EPOCHREALTIME
grep -q '`apt purge lvs-hooks`' "$README" || failures+=("the README no longer says \`apt purge lvs-hooks\`")
apt purge -y lvs-hooks < /dev/null > "$LAB_OUT/purge.txt" 2>&1 \
    || failures+=("apt purge lvs-hooks failed: $(tail -n 2 "$LAB_OUT/purge.txt")")
waited[purge]=$(lab_elapsed "$t")
left=$(ls -d /usr/sbin/lvs-hooks /usr/libexec/keepalived/lvs-hooks /usr/lib/lvs-hooks \
       /etc/lvs-hooks /var/lib/lvs-hooks 2>/dev/null | xargs)
[ -z "$left" ] || failures+=("left after apt purge: $left")
lab_log "apt purge lvs-hooks: left of the package's paths: ${left:-nothing}"
completed=true
exit 0
