#!/bin/bash
# lab-timeout: 400
# How fast can /proc/net/ip_vs_conn be read? Each read() of it makes the kernel walk its table
# from the start to the read position, so the cost is the kernel's; this compares `cat` with the
# product's reader (lvs_hooks.kernel.conntable.read_proc_file) on the same table, alternating,
# twice each. N = LAB_BENCH_N templates (plus as many connections).
set -u
. "$LAB_DIR/lib.sh"
N=${LAB_BENCH_N:-20000}
LAB_CLIENTS=0 lab_topology 1
nsx dir1 sh -ec "ip addr add $LAB_VIP/24 dev eth0
  ipvsadm -A -u $LAB_VIP:$LAB_VPORT -s rr -p 1800
  ipvsadm -a -u $LAB_VIP:$LAB_VPORT -r 10.1.0.11:$LAB_VPORT -m" || lab_die services
nsx client "$LAB_PYTHON" "$LAB_DIR/bulk_templates.py" --vip "$LAB_VIP" --port "$LAB_VPORT" "$N" \
    || lab_die traffic
lab_wait 120 "$N templates" lab_tpl_at_least dir1 "$N" || lab_die "templates"
export PYTHONPATH=$LAB_PROJECT
nsx dir1 "$LAB_PYTHON" - <<'PY' | tee "$LAB_OUT/bench_read.txt"
import os, subprocess, time
from lvs_hooks.kernel.conntable import read_proc_file, parse_conn_table
P = "/proc/net/ip_vs_conn"
def t_cat():
    t = time.monotonic(); subprocess.run(["cat", P], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - t
def t_lvs():
    t = time.monotonic(); data = read_proc_file(P); r = time.monotonic() - t
    return r, data
def t_chunk(n):
    t = time.monotonic(); fd = os.open(P, os.O_RDONLY); reads = 0
    while os.read(fd, n): reads += 1
    os.close(fd); return time.monotonic() - t, reads
for i in range(2):
    c = t_cat(); l, data = t_lvs()
    t = time.monotonic(); tab = parse_conn_table(data, templates_only=True); p = time.monotonic() - t
    print(f"round {i}: cat {c*1000:.0f} ms, lvs-hooks read {l*1000:.0f} ms "
          f"({len(data)} bytes, {len(tab.templates)} templates, parse {p*1000:.0f} ms)")
for n in (4096, 65536, 1 << 20):
    d, reads = t_chunk(n)
    print(f"os.read({n}): {d*1000:.0f} ms in {reads} reads")
PY
