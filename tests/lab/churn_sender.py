#!/usr/bin/env python3
"""The churn scenario's arrivals, paced by one long-lived process (runs in the client netns).

Round k starts at k x ROUND_MS: a batch of BATCH sources, one datagram each, from the range
10.3.(r + 4 x generation).0 with r = k mod 4, so a range comes round again every four rounds
and its sources return while their connections live. A range whose return would come later than
RETURN_MAX_MS is renewed instead (its generation goes up: new sources, the old templates left to
expire): near the UDP timeout no reader of the sync stream can tell a new connection from a live
one (churn.sh).

Why a process of its own: a round used to start a new Python sender (bulk_templates.py). Under
emulation and a CPU hog that start took seconds, the rounds fell behind (40 of 120 in 180 s) and
most ranges came back too late to count as returns. One process pays its start once.

Writes HALF_FILE once half the duration has passed (the scenario starts its handover then) and
its figures as JSON to OUT at the end.

Usage: churn_sender.py --vip V --port P --duration S --round-ms MS --batch N --rate PPS
                       --return-max-ms MS --half-file F --out F
"""

import argparse
import json
import os
import socket
import sys
import time

from bulk_templates import packet, raw_socket, send_one, sources


def send(s: socket.socket, pkts: list, vip: str, rate: float) -> None:
    t0 = time.monotonic()
    for sent, pkt in enumerate(pkts, 1):
        send_one(s, pkt, vip)
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--sport", type=int, default=40000)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--round-ms", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--return-max-ms", type=int, required=True)
    p.add_argument("--half-file", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    s = raw_socket()
    dst = socket.inet_aton(a.vip)
    t0 = time.monotonic()

    def now_ms() -> int:
        return int((time.monotonic() - t0) * 1000)

    last_at = {}  # range -> ms of its last round (a late round delays its range's return)
    gen = {}  # range -> its generation
    rounds = late = returns = renewed = max_return_ms = sent = 0
    half = False
    while now_ms() < a.duration * 1000:
        due, at = rounds * a.round_ms, now_ms()
        if at < due:
            time.sleep((due - at) / 1000)
            at = now_ms()
        elif at - due > a.round_ms:
            late += 1
        r = rounds % 4
        if r in last_at:
            away = at - last_at[r]
            if away > a.return_max_ms:
                gen[r] = gen.get(r, 0) + 1
                renewed += 1
                print(f"churn: range {r} came back after {away} ms: renewed (generation {gen[r]})",
                      flush=True)
            else:
                returns += 1
                max_return_ms = max(max_return_ms, away)
        last_at[r] = at
        base = f"10.3.{r + 4 * gen.get(r, 0)}.0"
        send(s, [packet(src, dst, a.sport, a.port, b"bulk", i)
                 for i, src in enumerate(sources(base, a.batch))], a.vip, a.rate)
        sent += a.batch
        rounds += 1
        if not half and now_ms() >= a.duration * 500:
            half = True
            with open(a.half_file, "w") as f:
                f.write(f"{rounds}\n")
    figures = {"rounds": rounds, "late_rounds": late, "returns": returns, "renewed": renewed,
               "max_return_ms": max_return_ms, "datagrams": sent, "elapsed_ms": now_ms()}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(figures, f)
    os.replace(tmp, a.out)
    print(f"churn: {json.dumps(figures)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
