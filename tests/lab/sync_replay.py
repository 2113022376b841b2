#!/usr/bin/env python3
"""Lab diagnostics: replay a director's sync trace (tests/lab/sync_trace.py) into the table in
memory and compare it, second by second, with what that director's kernel held.

    sync_replay.py TRACE[.gz] [--udp 20] [--prefix 10.3.] [--show 5]

For each client whose template the table and the kernel disagreed about at two samples
running (or at the end, with --end), it prints the first such sample and the messages about
that client up to then: when each came, from where (L: sent by this director, S: heard), its
kind and timeout. The same judgement as table/compare.py (the one `lvs-hooks table-check`
makes), client by client and over time, which compare's counts and few examples do not give.
"""

import argparse
import gzip
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from lvs_hooks.kernel.syncproto import IP_VS_CONN_F_TEMPLATE  # noqa: E402
from lvs_hooks.table import TemplateTable, feed  # noqa: E402


def _ip(v: int) -> str:
    return ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))


def records(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "L":
                if len(p) == 3:  # a trace without sources
                    yield "L", float(p[1]), bytes.fromhex(p[2]), None
                else:
                    yield "L", float(p[1]), bytes.fromhex(p[3]), p[2]
            elif p[0] == "S":
                yield "S", float(p[1]), bytes.fromhex(p[3]), p[2]
            elif p[0] == "K":
                n = int(p[2])
                rows = {}
                for _ in range(n):
                    line = next(f, None)
                    if line is None:
                        return  # the tracer was stopped while writing its last read
                    q = line.split()
                    caddr = _ip(int(q[1], 16))
                    rows[(q[0], caddr)] = (_ip(int(q[3].split(":")[0], 16)), int(q[4]))
                yield "K", float(p[1]), rows, None


def differ(a, b, tolerance: float):
    """How a template differs between the table (`a`) and the kernel (`b`), each (real server,
    seconds left) or None; None if it does not."""
    if a is None:
        # /proc shows 0 while a due timer waits for the wheel: gone already, as in the table
        return f"only in the kernel ({b[0]}, {b[1]} s)" if b[1] > 0 else None
    if b is None:
        return f"only in the table ({a[0]}, {a[1]} s)"
    if a[0] != b[0]:
        return f"real server: table {a[0]} ({a[1]} s), kernel {b[0]} ({b[1]} s)"
    if abs(a[1] - b[1]) > tolerance:
        return f"end: table {a[1]} s, kernel {b[1]} s"
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--udp", type=int, default=20)
    ap.add_argument("--port", type=int, default=8848, help="the sync port")
    ap.add_argument("--prefix", default="10.3.")
    ap.add_argument("--show", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=2.2)
    ap.add_argument("--after", type=float, default=0.0,
                    help="show only partings this many seconds after the first sample or later")
    ap.add_argument("--end", action="store_true", help="show the clients that differ at the end")
    ap.add_argument("--kind", default="", help="show only partings of this kind (end, real...)")
    ap.add_argument("--skip", type=float, default=40.0,
                    help="seconds after the first sample not looked at (the tracer starting)")
    args = ap.parse_args()
    t = TemplateTable()
    t.use_timeouts(udp=args.udp)
    # client -> [(time, L or S, T(emplate) or C(onnection), timeout, real server, bytes)]
    history = defaultdict(list)
    parted = {}  # caddr -> (t, what)
    last = None
    samples = 0
    first = None
    per_sample = []
    bad_before = {}
    for kind, ts, data, src in records(args.trace):
        if kind in ("L", "S"):
            if kind == "L" and src is not None and src.endswith(f":{args.port}"):
                continue  # a push of lvs-hooks: the agent's capture skips it
            t.ingest(data, ts, "LOCAL" if kind == "L" else "SYNC")
            dec = feed.decode(data)
            for row in dec.rows:
                if type(row) is not tuple:
                    continue
                caddr = _ip(row[10])
                if caddr.startswith(args.prefix):
                    tpl = "T" if row[3] & IP_VS_CONN_F_TEMPLATE else "C"
                    history[caddr].append((ts, kind, tpl, row[9], _ip(row[12]), len(data)))
            continue
        t.expire(ts)
        samples += 1
        if first is None:
            first = ts
        if ts < first + args.skip:
            continue
        mine = {}
        for e in t.templates(ts):
            if e.caddr.startswith(args.prefix):
                mine[(e.protocol, e.caddr)] = (e.daddr, e.expires)
        kern = {k: v for k, v in data.items() if k[1].startswith(args.prefix)}
        n_bad = 0
        bad_now = {}
        for k in set(mine) | set(kern):
            what = differ(mine.get(k), kern.get(k), args.tolerance)
            if what:
                n_bad += 1
                bad_now[k[1]] = what
            # a parting counts when it holds at two samples running: a message the kernel
            # took just before a read and the tracer stamped just after is no parting
            if what and k[1] in bad_before and k[1] not in parted:
                parted[k[1]] = bad_before[k[1]]
        bad_before = {c: (ts, w) for c, w in bad_now.items()}
        per_sample.append((ts, n_bad))
        last = (ts, mine, kern)
    ts, mine, kern = last
    end_bad = {k[1]: (ts, f"at the end: {w}") for k in set(mine) | set(kern)
               for w in [differ(mine.get(k), kern.get(k), args.tolerance)] if w}
    print(f"{samples} samples; at the end {len(mine)} in the table, {len(kern)} in the kernel, "
          f"{len(end_bad)} differ; {len(parted)} clients parted at some sample")
    kinds = defaultdict(int)
    for _c, (_, what) in parted.items():
        kinds[what.split(":")[0].split(" (")[0]] += 1
    print("first parting by kind:", dict(kinds))
    print("differing per sample (every 10th):",
          " ".join(f"{ts - first:.0f}:{n}" for ts, n in per_sample[::10]))
    if args.end:
        parted = end_bad
    shown = 0
    for c, (tp, what) in sorted(parted.items(), key=lambda kv: kv[1][0]):
        if args.kind and not what.startswith(args.kind):
            continue
        if tp - first < args.after:
            continue
        if shown >= args.show:
            break
        shown += 1
        print(f"\n{c}: parted at {tp - first:.1f}: {what}")
        for h in history[c]:
            if h[0] > tp + 1:
                break
            print(f"   {h[0] - first:.2f} {h[1]} {h[2]} timeout {h[3]} -> {h[4]} (datagram {h[5]} B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
