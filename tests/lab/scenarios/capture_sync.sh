#!/bin/bash
# lab-timeout: 180
# Captures sync datagrams sent by a real kernel MASTER sync daemon (golden bytes for the codec's
# unit tests): dir1 runs a master daemon and three persistent services (UDP VIP:5000, TCP
# VIP:5000, fwmark 1 whose real servers listen on 5000); three clients send a few packets (the
# kernel syncs a connection, with its template, at its 3rd packet); dir2 records what arrives on
# the sync link. Result: $LAB_OUT/sync_capture.jsonl (one datagram per line, hex).
set -u
. "$LAB_DIR/lib.sh"
lines_at_least() { local n; n=$(wc -l < "$1"); [ "$n" -ge "$2" ]; }

lab_step "topology, services and master daemon on dir1, recorder on dir2"
LAB_CLIENTS=3 lab_topology 2
nsx dir1 sh -ec "
  ip addr add $LAB_VIP/24 dev eth0; ip addr add $LAB_GW_VIP/24 dev eth1
  ip addr add 10.0.0.102/24 dev eth0
  iptables -t mangle -A PREROUTING -d 10.0.0.102 -j MARK --set-mark 1
  ipvsadm -A -u $LAB_VIP:5000 -s rr -p 300
  ipvsadm -A -t $LAB_VIP:5000 -s rr -p 300
  ipvsadm -A -f 1 -s rr -p 300
  for r in 10.1.0.11 10.1.0.12; do
    ipvsadm -a -u $LAB_VIP:5000 -r \$r:5000 -m
    ipvsadm -a -t $LAB_VIP:5000 -r \$r:5000 -m
    ipvsadm -a -f 1 -r \$r:5000 -m
  done
  ipvsadm --start-daemon master --mcast-interface $LAB_SYNC_IF --syncid $LAB_SYNCID" \
  || lab_die "dir1 setup"
OUT="$LAB_OUT/sync_capture.jsonl"
: > "$OUT"
nsx dir2 "$LAB_PYTHON" -u "$LAB_DIR/sync_sniff.py" --iface "$LAB_SYNC_IF" --out "$OUT" \
    --count 1 --seconds 60 > "$LAB_TMP/sniff.log" 2>&1 &
sniffer=$!
lab_wait 20 "recorder ready" _lab_file_has "$LAB_TMP/sniff.log" ready || lab_die "recorder"

lab_step "traffic: UDP :5000 from .20, TCP :5000 from .21, fwmark (10.0.0.102, UDP :5000) from .22"
nsx client "$LAB_PYTHON" - <<PY || lab_die "traffic"
import socket
vip = "$LAB_VIP"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.0.20", 0)); u.settimeout(2)
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); f.bind(("10.0.0.22", 0)); f.settimeout(2)
for i in range(4):
    u.sendto(b"u%d" % i, (vip, 5000)); print(u.recv(100))
    f.sendto(b"f%d" % i, ("10.0.0.102", 5000)); print(f.recv(100))
t = socket.create_connection((vip, 5000), timeout=5, source_address=("10.0.0.21", 0))
for i in range(4):
    t.sendall(b"t%d\n" % i); print(t.recv(100))
t.close()
PY
lab_wait 30 "a sync datagram recorded" lines_at_least "$OUT" 1 || true
kill "$sniffer" 2>/dev/null
wait "$sniffer" 2>/dev/null
cat "$LAB_TMP/sniff.log"
nsx dir1 cat /proc/net/ip_vs_conn
cat "$OUT"
[ -s "$OUT" ] || lab_die "nothing captured"
lab_log "CAPTURE PASS: $(wc -l < "$OUT") datagrams"
