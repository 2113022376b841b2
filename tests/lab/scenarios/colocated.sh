#!/bin/bash
# lab-timeout: 600
# Seed 002, issue 5: two directors that are also the real servers (DR, VIP on lo, persistence),
# keepalived with the virtual server loaded on both, and the ping-pong loop between them.
#
#   baseline   no rules: the master sends a new client to the other director's real server, whose
#              IPVS schedules it again, possibly back: the packet goes round until its TTL runs out
#   fwmark     lvs-hooks rules, fwmark mode (virtual_server fwmark 1; mark unless from the peer)
#   redirect   lvs-hooks rules, redirect mode (virtual_server VIP PORT; REDIRECT on the backup, and
#              on the master for packets from the peer)
#
# LAB_COLOCATED_MODES picks the modes (default "baseline fwmark redirect", run in turn in one
# topology). Each protected mode: the boot unit's step (`rules apply --role backup` on both),
# keepalived with lvs-hooks (fifo), 20 clients with one TCP connection each, data every second;
# then three takeovers with both directors alive (priority drop of dir1 through a keepalived
# track_file, back, and again): the hard case, where the old master still has its virtual server
# and the new one may already forward to it.
#
# Looped packets are counted on each director by a probe table of the scenario's own (nft,
# table inet lab_loop): a packet to the VIP that came from the other director's MAC gets a mark
# bit (priority -300, before anything), and one leaving by eth0 to the VIP with that bit set was
# received from the peer and forwarded again by IPVS: looped.
# LAB_RULES_BACKEND (default auto) is the rules.backend of the protected modes.
# Results: $LAB_OUT/result.json, traffic-MODE.json, history-MODE-dirN.json
set -u
. "$LAB_DIR/lib.sh"
LAB_RS=""                # the directors are the real servers
LAB_PERSIST=${LAB_PERSIST:-120}
MODES=${LAB_COLOCATED_MODES:-"baseline fwmark redirect"}
BACKEND=${LAB_RULES_BACKEND:-auto}
LVS_HOOKS=1

field() { "$LAB_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$LAB_REPLY" "$1"; }

peer_of() { [ "$1" = dir1 ] && echo dir2 || echo dir1; }
# The VIP is on lo of both directors all the time: the master is the one with it on eth0.
vip_on_eth0() { local a; a=$(ip -n "$1" -o -4 addr show dev eth0) && [[ $a == *" $LAB_VIP/"* ]]; }
master_is() { vip_on_eth0 "$1" && ! vip_on_eth0 "$(peer_of "$1")"; }
declare -A MAC RS_PID

# setup_directors: on fresh director netns (lab_topology, lab_reboot): the VIP on lo, ARP
# sysctls of a DR real server, the real server itself, the loop probe (see the header)
setup_directors() {
    local d n link p
    for d in dir1 dir2; do
        link=$(ip -n "$d" -o link show eth0) || lab_die "eth0 of $d"
        [[ $link =~ link/ether\ ([0-9a-f:]+) ]] || lab_die "no MAC for $d: $link"
        MAC[$d]=${BASH_REMATCH[1]}
        ip -n "$d" addr add "$LAB_VIP/32" dev lo || lab_die "VIP on lo of $d"
        # never answer ARP for the VIP on lo (only the master's eth0 copy answers)
        nsx "$d" sh -c 'for k in all eth0; do echo 1 > /proc/sys/net/ipv4/conf/$k/arp_ignore;
                        echo 2 > /proc/sys/net/ipv4/conf/$k/arp_announce; done' || lab_die "arp $d"
        # the real server: TCP and UDP on every address, so that REDIRECTed packets are taken too
        ip netns exec "$d" "$LAB_PYTHON" "$LAB_DIR/rs_server.py" "$d" --port "$LAB_VPORT" \
            > "$LAB_TMP/$d-rs.log" 2>&1 &
        RS_PID[$d]=$!
        disown
    done
    local porthex
    printf -v porthex ':%04X ' "$LAB_VPORT"
    for d in dir1 dir2; do
        lab_wait 30 "$d real server listening" _lab_file_has "/proc/${RS_PID[$d]}/net/tcp" \
            "$porthex" > /dev/null || lab_die "$d real server: $(< "$LAB_TMP/$d-rs.log")"
        p=$(peer_of "$d")
        nsx "$d" nft -f - <<EOF || lab_die "loop probe on $d"
table inet lab_loop {
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        ether saddr ${MAC[$p]} ip daddr $LAB_VIP meta mark set meta mark | 0x100 counter comment "from peer"
    }
    chain post {
        type filter hook postrouting priority 0; policy accept;
        oifname "eth0" ip daddr $LAB_VIP meta mark & 0x100 == 0x100 counter comment "looped"
        oifname "eth0" ip daddr $LAB_VIP counter comment "forwarded"
    }
}
EOF
    done
    lab_log "directors ready: dir1 ${MAC[dir1]}, dir2 ${MAC[dir2]}"
}

lab_step "topology: dir1 and dir2 are directors and real servers (DR, VIP on lo)"
lab_topology 2
setup_directors

# counter COMMENT DIR: packets of the probe rule with that comment
counter() {
    local out re
    out=$(nsx "$2" nft list table inet lab_loop) || return 1
    re="counter packets ([0-9]+) bytes [0-9]+ comment \"$1\""
    [[ $out =~ $re ]] && echo "${BASH_REMATCH[1]}"
}
looped_total() { echo $(( $(counter looped dir1) + $(counter looped dir2) )); }

# ------------------------------------------------------------------------------ per mode

hooks_config() { # DIR MODE: lvs-hooks config with the mode's rules section
    local d=$1 mode=$2 f p
    f=$(lab_hooks_config "$d")
    p=$(peer_of "$d")
    case $mode in
        fwmark) cat >> "$f" <<EOF
rules:
  backend: $BACKEND
  peer_macs: ["${MAC[$p]}"]
  services:
    - {vip: $LAB_VIP, port: $LAB_VPORT, protocol: tcp, mode: fwmark, fwmark: 1}
EOF
        ;;
        redirect) cat >> "$f" <<EOF
rules:
  backend: $BACKEND
  peers: [10.0.0.${p#dir}]
  services:
    - {vip: $LAB_VIP, port: $LAB_VPORT, protocol: tcp, mode: redirect}
EOF
        ;;
    esac
    echo "$f"
}

keepalived_conf() { # DIR PRIO STATE MODE CONFIG
    local d=$1 prio=$2 state=$3 mode=$4 cfg=$5 vs
    if [ "$mode" = fwmark ]; then vs="fwmark 1"; else vs="$LAB_VIP $LAB_VPORT"; fi
    cat <<EOF
global_defs {
    router_id $d
    lvs_sync_daemon $LAB_SYNC_IF VI_1 id $LAB_SYNCID
    script_user root
    vrrp_garp_master_delay 1
    vrrp_notify_fifo $LAB_TMP/$d/run/notify.fifo
    vrrp_notify_fifo_script "/usr/local/bin/lvs-hooks --config $cfg fifo"
}
vrrp_track_file prio_drop {
    file "$LAB_TMP/$d/prio_drop"
    weight -1
}
vrrp_instance VI_1 {
    state $state
    interface eth0
    virtual_router_id $LAB_VRID
    priority $prio
    advert_int 1
    virtual_ipaddress {
        $LAB_VIP/24 dev eth0
    }
    track_file {
        prio_drop
    }
}
virtual_server $vs {
    delay_loop 10
    lb_algo rr
    lb_kind DR
    persistence_timeout $LAB_PERSIST
    protocol TCP
    real_server 10.0.0.1 $LAB_VPORT {
        weight 1
    }
    real_server 10.0.0.2 $LAB_VPORT {
        weight 1
    }
}
EOF
}

start_keepalived() { # DIR PRIO STATE MODE
    local d=$1 dir="$LAB_TMP/$1" cfg
    mkdir -p "$dir/run"
    cfg=$(hooks_config "$d" "$4")
    echo 0 > "$dir/prio_drop"
    keepalived_conf "$d" "$2" "$3" "$4" "$cfg" > "$dir/keepalived.conf"
    ip netns exec "$d" keepalived -n -l -D -f "$dir/keepalived.conf" -p "$dir/keepalived.pid" \
        -r "$dir/vrrp.pid" -c "$dir/checkers.pid" >> "$dir/keepalived.log" 2>&1 &
    disown
}

stop_keepalived() {
    local d pid
    for d in dir1 dir2; do
        pid=$(< "$LAB_TMP/$d/keepalived.pid") 2>/dev/null && kill "$pid" 2>/dev/null
    done
    for d in dir1 dir2; do
        lab_wait 20 "$d keepalived gone" _lab_gone "$LAB_TMP/$d/keepalived.pid" > /dev/null \
            || lab_log "keepalived of $d did not stop"
        _lab_ns_kill "$d" "${LAB_ANCHOR[$d]} ${RS_PID[$d]}" # the hooks reader, if still there
    done
}
_lab_gone() { local p; [ -e "$1" ] && p=$(< "$1") || return 0; ! kill -0 "$p" 2>/dev/null; }
# _lab_ns_kill from lib.sh keeps one pid; keep the anchor and the real server
_lab_ns_kill() {
    local ns=$1 keep=" ${2:-} " p
    for p in $(ip netns pids "$ns" 2>/dev/null); do
        [[ $keep == *" $p "* ]] || kill -9 "$p" 2>/dev/null
    done
}

# reboot_director DIR: lab_reboot with more patience: a netns goes away asynchronously, and
# on a loaded host under emulation that took more than lab_reboot's 10 s
reboot_director() {
    local d=$1 l
    _lab_ns_kill "$d"
    unset "LAB_ANCHOR[$d]"
    # The namespace itself may outlive its name for minutes: orphaned TCP sockets of the killed
    # real server keep it while they retransmit their FIN to clients that cannot answer any
    # more. Cut its links from the bridges at once (deleting one end of a veth deletes both).
    for l in "v-$d-eth0" "v-$d-eth1" "v-$d-sync"; do ip link del "$l" 2>/dev/null; done
    ip netns del "$d"
    lab_wait 90 "$d's old links gone" _lab_no_link "v-$d-eth0" "v-$d-eth1" "v-$d-sync" \
        > /dev/null || lab_die "$d links did not go away"
    rm -rf "$LAB_TMP/$d/run"
    lab_director_create "$d"
    lab_log "$d: rebooted (empty IPVS and conntrack tables)"
}

# the newest transition journaled by DIR's lvs-hooks (a JSON line, keys sorted): its STATE
last_transition() {
    local f="$LAB_TMP/$1/state/events.jsonl" line re='"event": \{[^}]*"state": "([A-Z]+)"'
    [ -s "$f" ] || return 1
    line=$(tail -n 1 "$f")
    [[ $line =~ $re ]] || return 1
    echo "${BASH_REMATCH[1]}"
}
journal_count() { local f="$LAB_TMP/$1/state/events.jsonl"; [ -s "$f" ] && wc -l < "$f" || echo 0; }
# transitioned DIR STATE N: DIR journaled more than N transitions and the newest is STATE
transitioned() {
    local t
    [ "$(journal_count "$1")" -gt "$3" ] || return 1
    t=$(last_transition "$1") || return 1
    [ "$t" = "$2" ]
}

# the client goes first, while the directors still carry its connections' last packets
client_stop() {
    [ -n "${LAB_CLIENT_PID:-}" ] || return 0
    kill "$LAB_CLIENT_PID" 2>/dev/null
    lab_wait 10 "client gone" _lab_pid_gone "$LAB_CLIENT_PID" > /dev/null
    LAB_CLIENT_PID=""
    lab_nap 2
}
_lab_pid_gone() { ! kill -0 "$1" 2>/dev/null; }

client_restart() {
    client_stop
    [ -n "${LAB_CIN:-}" ] && exec {LAB_CIN}>&- {LAB_COUT}>&-
    rm -f "$LAB_TMP"/client.*
    lab_client_start
    lab_client set timeout 4 > /dev/null
}

declare -A RESULT

FIRST_MODE=1
run_mode() {
    local mode=$1 t0=$EPOCHREALTIME
    lab_step "mode $mode"
    if [ "$FIRST_MODE" = 0 ]; then
        # fresh directors: an IPVS connection entry of the mode before (the baseline's loops)
        # is matched before any service or mark, and would go on looping here
        reboot_director dir1
        reboot_director dir2
        setup_directors
    fi
    FIRST_MODE=0
    rm -rf "$LAB_TMP/dir1/state" "$LAB_TMP/dir2/state" "$LAB_TMP/dir1/run" "$LAB_TMP/dir2/run"
    if [ "$mode" != baseline ]; then
        # what lvs-hooks-rules.service does at boot: the backup role's rules before keepalived
        local d
        for d in dir1 dir2; do
            nsx "$d" lvs-hooks --config "$(hooks_config "$d" "$mode")" rules apply --role backup \
                | head -n 1 | sed "s/^/$d boot: /" || lab_die "rules apply on $d"
        done
    fi
    start_keepalived dir1 150 MASTER "$mode"
    start_keepalived dir2 100 BACKUP "$mode"
    lab_wait 60 "dir1 is master" master_is dir1 || lab_die "no master"
    lab_wait 60 "dir1 MASTER transition journaled" transitioned dir1 MASTER 0 || lab_die "dir1 hooks"
    lab_wait 60 "dir2 BACKUP transition journaled" transitioned dir2 BACKUP 0 || lab_die "dir2 hooks"
    client_restart
    lab_client open "$mode-start" tcp
    local answered; answered=$(field answered)
    lab_client keepalive 1 > /dev/null
    local looped0 looped1 looped2
    looped0=$(looped_total)
    lab_log "$mode: $answered/$LAB_CLIENTS connections answered; looped packets so far: $looped0"
    if [ "$mode" = baseline ]; then
        # new connections keep coming: each time about one in four loops
        lab_client open "$mode-2" tcp > /dev/null; local a2; a2=$(field answered)
        looped1=$(looped_total)
        lab_client open "$mode-3" tcp > /dev/null; local a3; a3=$(field answered)
        looped2=$(looped_total)
        lab_log "RESULT baseline: looped packets $looped0 -> $looped1 -> $looped2 after each of" \
                "three rounds of $LAB_CLIENTS new connections (answered $answered, $a2, $a3);" \
                "forwarded by dir1 $(counter forwarded dir1), by dir2 $(counter forwarded dir2)"
        RESULT[$mode]="{\"answered\": [$answered, $a2, $a3], \"looped\": [$looped0, $looped1, $looped2]}"
        nsx dir1 ipvsadm -Ln --stats | sed 's/^/dir1 stats: /'
        nsx dir2 ipvsadm -Ln --stats | sed 's/^/dir2 stats: /'
        lab_client report "$LAB_OUT/traffic-$mode.json" > /dev/null
        client_stop
        stop_keepalived
        return
    fi
    # three takeovers, both directors alive
    local i from to drop n_from n_to kept same new_same takes="" looped_after
    for i in 1 2 3; do
        if [ $((i % 2)) = 1 ]; then from=dir1 to=dir2 drop=100; else from=dir2 to=dir1 drop=0; fi
        n_from=$(journal_count "$from") n_to=$(journal_count "$to")
        local tk=$EPOCHREALTIME
        echo "$drop" > "$LAB_TMP/dir1/prio_drop"
        lab_wait 60 "takeover $i: $to holds the VIP" master_is "$to" || lab_die "takeover $i"
        lab_wait 60 "takeover $i: $to MASTER journaled" transitioned "$to" MASTER "$n_to" \
            || lab_die "takeover $i: $to hooks"
        lab_wait 60 "takeover $i: $from BACKUP journaled" transitioned "$from" BACKUP "$n_from" \
            || lab_die "takeover $i: $from hooks"
        local took; took=$(lab_elapsed "$tk")
        lab_client probe "$mode-t$i-old" "$mode-start" > /dev/null
        same=$(field same_as_ref); kept=$(field answered)
        lab_client open "$mode-t$i-new" tcp > /dev/null
        new_same=$(field same_as_ref)
        local lp; lp=$(looped_total)
        lab_log "$mode takeover $i ($from -> $to, ${took}s): connections answered $kept," \
                "on their real server $same; new connections on the same real server $new_same;" \
                "looped packets so far $lp"
        takes+="${takes:+, }{\"takeover\": $i, \"from\": \"$from\", \"to\": \"$to\", \"s\": $took,"
        takes+=" \"answered\": $kept, \"same_rs\": $same, \"new_same_rs\": $new_same, \"looped\": $lp}"
    done
    lab_nap 5
    looped_after=$(looped_total)
    lab_log "RESULT $mode: looped packets during and 5 s after three takeovers: $looped_after" \
            "(dir1 $(counter looped dir1), dir2 $(counter looped dir2)); from peer: dir1" \
            "$(counter 'from peer' dir1), dir2 $(counter 'from peer' dir2); mode took $(lab_elapsed "$t0")s"
    RESULT[$mode]="{\"answered\": $answered, \"takeovers\": [$takes], \"looped_after\": $looped_after}"
    local d
    for d in dir1 dir2; do
        nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" rules show | sed "s/^/$d show: /" \
            | grep -E "show: (backend|kernel pointer|  +[0-9]+ pkts|drift|net.ipv4)" 
        nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" history --json -n 0 \
            > "$LAB_OUT/history-$mode-$d.json" 2>/dev/null
    done
    lab_syslog 'rules ' | tail -n 12
    lab_client report "$LAB_OUT/traffic-$mode.json" > /dev/null
    client_stop
    stop_keepalived
    for d in dir1 dir2; do
        nsx "$d" lvs-hooks --config "$LAB_TMP/$d/lvs-hooks.yaml" rules remove > /dev/null \
            || lab_log "rules remove on $d failed"
        nsx "$d" ipvsadm -C
    done
}

for m in $MODES; do run_mode "$m"; done

body=""
for m in $MODES; do body+="${body:+, }\"$m\": ${RESULT[$m]:-null}"; done
echo "{\"scenario\": \"colocated\", \"clients\": $LAB_CLIENTS, \"backend\": \"$BACKEND\", $body}" \
    > "$LAB_OUT/result.json"
cat "$LAB_OUT/result.json"
fail=0
for m in $MODES; do
    [ "$m" = baseline ] && continue
    [[ ${RESULT[$m]:-} =~ \"looped_after\":\ 0\} ]] || { lab_log "FAIL: $m looped"; fail=1; }
done
exit $fail
