#!/usr/bin/env python3
"""Benchmark of preparing a full-table push: planning, encoding and digest.

Generates the templates of a busy master (IPv4 mostly, 5% IPv6, 10% fwmark templates with
dport 0 as the kernel keeps them, 2% SIP templates with PE data) and its live services, then
times, best of 3, for 10,000 and 50,000 templates:

  - baseline: syncproto.encode_datagrams() of the same entries, already built as SyncConn
    (the floor: what encoding alone costs);
  - plan_push() alone, datagrams_for() alone (to_sync_conn + encode), push_digest() alone
    (information);
  - the push as the sender prepares it: plan_push + datagrams_for + push_digest (judged);
  - the receiver's side: PushCollector.add of every datagram + finish (decodes them all)
    (information).

Every figure is CPU time against the baseline of the same run (the "x" column). The push
line also gives the preparation's share of the time the push then takes on the wire at the
default push.rate (20,000 templates/s): preparation happens before the first datagram, so it
delays the push by that much. No targets: figures only, exit status 0.
Run: python3 bench/bench_push.py [--sizes 10000 50000] [--runs 3]
"""

import argparse
import gc
import ipaddress
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lvs_hooks.kernel import syncproto  # noqa: E402
from lvs_hooks.kernel.model import ConnEntry, Destination, Service  # noqa: E402
from lvs_hooks.push.collector import PushCollector  # noqa: E402
from lvs_hooks.push.planner import plan_push  # noqa: E402
from lvs_hooks.push.sender import datagrams_for, push_digest  # noqa: E402
from lvs_hooks.reseed.runner import to_sync_conn  # noqa: E402

DEFAULT_RATE = 20000  # push.rate's default, templates/s
MAXLEN = 1472


def generate(n: int, seed: int):
    """(templates as /proc shows them, the live services they belong to)."""
    rnd = random.Random(seed)
    vips = [f"10.0.0.{100 + i}" for i in range(8)]
    rips = [f"10.1.0.{i}" for i in range(1, 41)]
    rips6 = [f"fd00:1::{i:x}" for i in range(1, 17)]
    services = [
        Service(4, "TCP", v, 80, persistent=True, timeout=3600,
                destinations=tuple(Destination(r, 80, "droute") for r in rips))
        for v in vips
    ]
    services += [
        Service(4, "UDP", vips[0], 5060, persistent=True, timeout=3600, pe_name="sip",
                destinations=tuple(Destination(r, 5060, "masq") for r in rips)),
        Service(4, None, None, 0, fwmark=1, persistent=True, timeout=3600,
                destinations=tuple(Destination(r, 8443, "masq") for r in rips)),
        Service(6, "TCP", "fd00::100", 443, persistent=True, timeout=3600,
                destinations=tuple(Destination(r, 443, "droute") for r in rips6)),
    ]
    out = []
    for i in range(n):
        kind = rnd.random()
        expires = rnd.randrange(1, 3600)
        if kind < 0.05:
            c = str(ipaddress.IPv6Address((0xFD00 << 112) | (0xB << 24) | i))
            out.append(ConnEntry("TCP", c, 0, "fd00::100", 443, rnd.choice(rips6), 443,
                                 "ASSURED", expires))
            continue
        c = str(ipaddress.IPv4Address(0x0B000000 + i))
        rip = rnd.choice(rips)
        if kind < 0.15:  # fwmark: protocol IP, the mark as ToIP, DPrt 0
            out.append(ConnEntry("IP", c, 0, "0.0.0.1", 0, rip, 0, "ASSURED", expires))
        elif kind < 0.17:
            out.append(ConnEntry("UDP", c, 0, vips[0], 5060, rip, 5060, "ASSURED", expires,
                                 "sip", f"{rnd.getrandbits(64):016x}@client{i}"))
        else:
            out.append(ConnEntry("TCP", c, 0, rnd.choice(vips), 80, rip, 80, "ASSURED",
                                 expires))
    rnd.shuffle(out)
    return out, services


class Timing:
    """Best wall time and best CPU time (user + sys) of n runs."""

    def __init__(self, n: int, fn):
        self.wall = self.cpu = float("inf")
        for _ in range(n):
            gc.collect()
            c0, w0 = _cpu(), time.perf_counter()
            self.result = fn()
            w1, c1 = time.perf_counter(), _cpu()
            self.wall, self.cpu = min(self.wall, w1 - w0), min(self.cpu, c1 - c0)

    def __str__(self) -> str:
        return f"{self.cpu * 1000:8.1f} ms cpu {self.wall * 1000:8.1f} ms wall"


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _rate(n: int, t: Timing) -> str:
    return f"{n / t.cpu:>12,.0f} templates/s" if t.cpu > 0 else f"{'-':>12} templates/s"


def bench(n: int, runs: int, seed: int) -> None:
    templates, services = generate(n, seed)
    plan = plan_push(templates, services)
    conns = [to_sync_conn(p) for p in plan.planned]
    print(f"\n{n:,} templates: {len(plan.planned):,} planned, skipped {dict(plan.skipped)}")

    base = Timing(runs, lambda: syncproto.encode_datagrams(conns, 0, MAXLEN))
    dgrams = base.result
    nbytes = sum(map(len, dgrams))
    print(f"{'baseline encode_datagrams':<34}{base}  {_rate(n, base)}  1.0x"
          f"  [{len(dgrams):,} datagrams, {nbytes:,} bytes]")

    def line(label: str, t: Timing, extra: str = "") -> None:
        print(f"{label:<34}{t}  {_rate(n, t)}  {t.cpu / base.cpu:4.1f}x{extra}")

    line("plan_push", Timing(runs, lambda: plan_push(templates, services)))
    t = Timing(runs, lambda: datagrams_for(plan.planned, 0, MAXLEN))
    assert t.result == dgrams, "datagrams_for differs from the baseline's datagrams"
    line("datagrams_for", t)
    line("push_digest", Timing(runs, lambda: push_digest(dgrams)))

    def prepare():
        p = plan_push(templates, services)
        d = datagrams_for(p.planned, 0, MAXLEN)
        return d, push_digest(d)

    t = Timing(runs, prepare)
    d, digest = t.result
    wire = len(plan.planned) / DEFAULT_RATE
    line(
        "plan + encode + digest",
        t,
        f"  [{len(d):,} datagrams, {sum(map(len, d)):,} bytes; {t.cpu / wire:.1%} of the"
        f" {wire:.2f} s on the wire at {DEFAULT_RATE:,}/s]",
    )

    def receive():
        col = PushCollector("bench", "10.9.0.1", len(plan.planned))
        for x in d:
            col.add(x, "10.9.0.1:40000")
        return col.finish(len(plan.planned), len(d), digest)

    t = Timing(runs, receive)
    assert t.result.complete, t.result.reason
    line("collector add + finish (decode)", t, "  (receiver side)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    for n in args.sizes:
        bench(n, args.runs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
