#!/usr/bin/env python3
"""Benchmark of the two pure cores: the connection table parser and the sync encoder.

Generates a /proc/net/ip_vs_conn of a busy director (1,000,000 lines, 10% templates: IPv4
mostly, some IPv6, fwmark templates, a few SIP templates with PE data) under a temporary
proc root, then times, best of 3:

  - `grep -c ' 0000 '` over the same file: the yardstick for reading it once;
  - read_conn_table() in full mode and in templates_only mode (file read included);
  - count_connections_by_client() on the same bytes;
  - encode_datagrams() of 100,000 IPv4 templates.

Targets: parsing within 4x the grep time; encoding under 0.1 s. Run: python3 bench/bench_core.py
"""

import argparse
import gc
import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lvs_hooks.kernel import syncproto  # noqa: E402
from lvs_hooks.kernel.conntable import (  # noqa: E402
    CONN_HEADER,
    count_connections_by_client,
    read_conn_table,
    read_proc_file,
)

PARSE_TARGET_RATIO = 4.0
ENCODE_TARGET_S = 0.1


def _hex6(value: int) -> str:
    """An IPv6 address as the kernel's %pI6 prints it: eight groups of four hex digits."""
    h = f"{value:032x}"
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


def generate_table(lines: int, seed: int) -> bytes:
    """A connection table in the kernel's format; one template per client, 10% of the lines."""
    rnd = random.Random(seed)
    vips4 = [f"{0x0A000064 + i:08X}" for i in range(8)]
    rips4 = [f"{0x0A010000 + i:08X}" for i in range(1, 41)]
    vip6 = _hex6((0xFD00 << 112) | 0x100)
    rips6 = [_hex6((0xFD00 << 112) | 0x200 | i) for i in range(16)]
    # Protocol, state and the kernel's %-3s / %-11s widths.
    out = []
    n_templates = lines // 10
    clients = []
    for i in range(n_templates):
        v6 = rnd.random() < 0.05
        caddr = _hex6((0xFD00 << 112) | (0xB << 24) | i) if v6 else f"{0x0B000000 + i:08X}"
        kind = rnd.random()
        expires = rnd.randrange(1, 3600)
        if v6:
            rip = rnd.choice(rips6)
            out.append(f"TCP {caddr} 0000 {vip6} 01BB {rip} 01BB {'ASSURED':<11} {expires:7d}\n")
            clients.append(("TCP", caddr, vip6, "01BB", rip))
        elif kind < 0.1:  # fwmark service: protocol IP, the mark as ToIP, DPrt 0
            rip = rnd.choice(rips4)
            out.append(f"IP  {caddr} 0000 00000001 0000 {rip} 0000 {'ASSURED':<11} {expires:7d}\n")
            clients.append(("TCP", caddr, rnd.choice(vips4), "01BB", rip))
        elif kind < 0.12:  # SIP persistence: PE name and Call-ID
            rip = rnd.choice(rips4)
            vip = vips4[0]
            out.append(
                f"UDP {caddr} 0000 {vip} 13C4 {rip} 13C4 {'ASSURED':<11} {expires:7d}"
                f" sip {rnd.getrandbits(64):016x}@client{i}\n"
            )
            clients.append(("UDP", caddr, vip, "13C4", rip))
        else:
            proto = "TCP" if kind < 0.8 else "UDP"
            vip, rip = rnd.choice(vips4), rnd.choice(rips4)
            out.append(f"{proto} {caddr} 0000 {vip} 0050 {rip} 0050 {'ASSURED':<11} {expires:7d}\n")
            clients.append((proto, caddr, vip, "0050", rip))
    for _ in range(lines - n_templates):
        proto, caddr, vip, vport, rip = rnd.choice(clients)
        state = "ESTABLISHED" if proto == "TCP" else "UDP"
        cport = rnd.randrange(1024, 65536)
        out.append(
            f"{proto:<3} {caddr} {cport:04X} {vip} {vport} {rip} {vport} {state:<11} "
            f"{rnd.randrange(1, 900):7d}\n"
        )
    rnd.shuffle(out)  # hash order, not insertion order
    return CONN_HEADER + b"\n" + "".join(out).encode()


def best_of(n, fn):
    best, result = float("inf"), None
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--templates", type=int, default=100_000, help="templates to encode")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="lvs-hooks-bench-")
    try:
        os.mkdir(os.path.join(root, "net"))
        path = os.path.join(root, "net", "ip_vs_conn")
        t0 = time.perf_counter()
        data = generate_table(args.lines, args.seed)
        with open(path, "wb") as f:
            f.write(data)
        print(
            f"table: {args.lines:,} lines, {len(data) / 1e6:.1f} MB, {path}"
            f" (generated in {time.perf_counter() - t0:.1f} s)"
        )
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )

        grep = shutil.which("grep")
        t_grep, out = best_of(
            args.runs,
            lambda: subprocess.run([grep, "-c", " 0000 ", path], capture_output=True, check=True),
        )
        matched = out.stdout.decode().strip()
        print(f"grep -c ' 0000 '          {t_grep * 1000:8.1f} ms  ({matched} lines)")

        results = []
        for label, kw in (("templates_only", {"templates_only": True}), ("full", {})):
            t, table = best_of(args.runs, lambda kw=kw: read_conn_table(root, **kw))
            ratio = t / t_grep
            ok = ratio <= PARSE_TARGET_RATIO
            results.append(ok)
            print(
                f"read_conn_table {label:<10}{t * 1000:8.1f} ms  {ratio:5.1f}x grep  "
                f"{'PASS' if ok else 'MISS'} (<= {PARSE_TARGET_RATIO:g}x)  "
                f"[{len(table.templates):,} templates, {table.total_lines:,} lines,"
                f" {table.malformed} malformed]"
            )

        raw = read_proc_file(path)
        t, counts = best_of(args.runs, lambda: count_connections_by_client(raw))
        print(
            f"count_connections_by_client {t * 1000:6.1f} ms  {t / t_grep:5.1f}x grep  (info)"
            f"  [{len(counts):,} client/service keys, {sum(counts.values()):,} connections]"
        )

        rnd = random.Random(args.seed)
        t0 = time.perf_counter()
        conns = [
            syncproto.template_conn(
                protocol="TCP",
                caddr=str(ipaddress.IPv4Address(0x0B000000 + i)),
                vaddr=f"10.0.0.{100 + i % 8}",
                vport=80,
                daddr=f"10.1.0.{rnd.randrange(1, 41)}",
                dport=80,
                fwd_method="droute",
                timeout=rnd.randrange(60, 3600),
            )
            for i in range(args.templates)
        ]
        t_build = time.perf_counter() - t0
        t, dgrams = best_of(args.runs, lambda: syncproto.encode_datagrams(conns, syncid=51))
        ok = t < ENCODE_TARGET_S
        results.append(ok)
        print(
            f"encode_datagrams {args.templates:,}   {t * 1000:8.1f} ms  "
            f"{'PASS' if ok else 'MISS'} (< {ENCODE_TARGET_S * 1000:g} ms)  "
            f"[{len(dgrams):,} datagrams of <= {max(map(len, dgrams))} bytes;"
            f" template_conn x{args.templates:,}: {t_build * 1000:.0f} ms, info]"
        )
        return 0 if all(results) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
