#!/usr/bin/env python3
"""Compare a director's templates now with a lvs-hooks snapshot (lab check for reseeds).

Reads /proc/net/ip_vs_conn from PROC (a process's /proc/PID view of the director's netns) and
the snapshot file; prints JSON: how many of the snapshot's templates are present, on the same
real server, and how far each timeout is from what the snapshot predicts now
(expires at capture - time since capture, floored like the planner: --floor).

Usage: tplcheck.py --proc /proc/PID --snapshot FILE [--floor 30] [--fwmark-port MARK=PORT ...]
"""

import argparse
import ipaddress
import json
import sys
import time


def addr(hexa: str) -> str:
    if ":" in hexa:
        return str(ipaddress.ip_address(hexa))
    return str(ipaddress.ip_address(int(hexa, 16)))


def read_templates(proc: str) -> dict:
    with open(f"{proc}/net/ip_vs_conn", "rb") as f:
        data = f.read()
    out = {}
    for line in data.decode().splitlines()[1:]:
        p = line.split()
        if len(p) < 9 or p[2] != "0000":
            continue
        key = (p[0], addr(p[1]), addr(p[3]), int(p[4], 16))
        out[key] = (addr(p[5]), int(p[6], 16), int(p[8]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proc", required=True)
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--floor", type=int, default=30)
    ap.add_argument("--tolerance", type=float, default=2.0)
    a = ap.parse_args()
    with open(a.snapshot, "rb") as f:
        header = json.loads(f.readline())
        body = json.loads(f.read())
    now = time.time()
    live = read_templates(a.proc)
    elapsed = now - header["captured_at"]
    seen = present = same_rs = 0
    off = []
    moved = []
    for t in _snapshot_templates(body):
        seen += 1
        key = (t["protocol"], t["caddr"], t["vaddr"], t["vport"])
        got = live.get(key)
        if got is None:
            continue
        present += 1
        if got[0] == t["daddr"] and (got[1] == t["dport"] or t["protocol"] == "IP"):
            same_rs += 1
        else:
            moved.append(f"{key} was {t['daddr']}:{t['dport']} now {got[0]}:{got[1]}")
        want = max(t["expires"] - elapsed, a.floor)
        off.append(got[2] - want)
    worst = max((abs(x) for x in off), default=0.0)
    res = {
        "snapshot_templates": seen,
        "present": present,
        "same_real_server": same_rs,
        "moved_examples": moved[:5],
        "timeout_worst_off_s": round(worst, 2),
        "timeout_within_tolerance": worst <= a.tolerance + 1,  # /proc shows whole seconds
        "live_templates": len(live),
    }
    json.dump(res, sys.stdout)
    print()
    ok = present == seen and same_rs == seen and res["timeout_within_tolerance"]
    return 0 if ok else 1


def _snapshot_templates(body: dict):
    """The snapshot body's templates as dicts, whatever compact form the file uses."""
    for row in body["templates"]:
        yield dict(zip(body["columns"], row))


if __name__ == "__main__":
    sys.exit(main())
