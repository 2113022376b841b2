#!/bin/bash
# lab-timeout: 120
# Smoke: the lab's kernel has IPVS and the sync path works. One director netns with a virtual
# service + real server and a *backup* sync daemon; one persistence template is injected by a
# multicast sync message (sync_inject.py) and must show up in /proc/net/ip_vs_conn, as a template
# (FPrt 0000), ASSURED, pointing at the real server, with origin SYNC.
# Result: $LAB_OUT/result.json {"template_seen": bool, "line": "...", "wait_s": ...}
set -u
. "$LAB_DIR/lib.sh"

lab_step "netns dir1 + a peer on the other end of its sync link"
ip -b - <<'B' || lab_die "netns"
netns add dir1
netns add peer
link add sync0 netns dir1 type veth peer name sync0 netns peer
B
printf 'link set lo up\naddr add 172.16.0.1/24 dev sync0\nlink set sync0 up\n' | ip -n dir1 -b -
ip -n peer link set sync0 up
lab_anchor dir1

lab_step "virtual service (UDP 10.0.0.100:5000, persistent) + real server + backup sync daemon"
# one netns entry, three ipvsadm calls (the lab may use ipvsadm; the product does not)
nsx dir1 sh -ec '
  ipvsadm -A -u 10.0.0.100:5000 -s wrr -p 360
  ipvsadm -a -u 10.0.0.100:5000 -r 10.1.0.11:5000 -m -w 1
  ipvsadm --start-daemon backup --mcast-interface sync0 --syncid 51
  ipvsadm -Ln; ipvsadm -L --daemon' || lab_die "ipvsadm"

lab_step "inject one template by a sync message (multicast, loop, TTL 0)"
lab_inject dir1 --timeout 300 10.0.0.77,10.0.0.100:5000,10.1.0.11:5000 || lab_die "inject"
t0=$EPOCHREALTIME
want='UDP 10.0.0.77 10.0.0.100:5000 10.1.0.11:5000 ASSURED'
has_template() { [[ $(lab_templates dir1) == *"$want"* ]]; }
seen=false
lab_wait 10 "template in dir1's /proc/net/ip_vs_conn" has_template && seen=true
wait_s=$(lab_elapsed "$t0")

lab_step "check"
echo "--- /proc/net/ip_vs_conn_sync of dir1:"
cat "/proc/${LAB_ANCHOR[dir1]}/net/ip_vs_conn_sync"
raw=$(grep '^UDP 0A00004D 0000 0A000064 1388 0A01000B 1388 ASSURED' \
      "/proc/${LAB_ANCHOR[dir1]}/net/ip_vs_conn")
origin=$(grep '^UDP 0A00004D 0000' "/proc/${LAB_ANCHOR[dir1]}/net/ip_vs_conn_sync")
echo "raw line: $raw"
lab_result_json result.json "template_seen=$seen" "line=\"$raw\"" "wait_s=$wait_s"
[ "$seen" = true ] && [ -n "$raw" ] || lab_die "template not in /proc/net/ip_vs_conn"
[[ $origin == *SYNC* ]] || lab_die "template origin is not SYNC: $origin"
lab_log "SMOKE PASS"
