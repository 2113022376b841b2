#!/usr/bin/env python3
"""Benchmark: a burst of flap lines in keepalived's FIFO, ending in FAULT (issue 15).

keepalived writes a line per state change; a flapping instance writes many in a burst. Only the
last state matters (docs/design.md section 5.6: the latest event wins); the others must cost
next to nothing, so that the FAULT transition starts at once. Measured with the real FIFO
reader, sequencer and journal, the journal holding 1,000 records already (its size once cost
each stale event a rewrite), the transitions' plans empty:

  - the yardstick: one FAULT line on a quiet FIFO, from its write to its transition's start;
  - bursts of 10, 100 and 300 lines (MASTER and BACKUP in turn, FAULT last), written at once:
    from the burst's write to the FAULT transition's start. Target: at most 1 s for 300.

Prints each figure beside the yardstick; exit status 1 when the 300-line burst misses.
Run: python3 bench/bench_flap.py
"""

import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lvs_hooks.events.fifo import FifoReader  # noqa: E402
from lvs_hooks.events.journal import Journal  # noqa: E402
from lvs_hooks.events.sequencer import Plan, Sequencer, Step  # noqa: E402

TARGET_S = 1.0
PREFILL = 1000


class Bench:
    def __init__(self, base: str):
        self.base = base
        self.fifo = os.path.join(base, "vrrp.fifo")
        os.mkfifo(self.fifo, 0o600)
        self.started: dict = {}  # state -> monotonic time its latest transition started
        self.changed = threading.Condition()
        seq = Sequencer(os.path.join(base, "run"), Journal(os.path.join(base, "state"), PREFILL))
        self.reader = FifoReader(self.fifo, seq, self.plan, lambda e: 10.0)
        self.wfd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        self.thread = threading.Thread(target=self.reader.run)
        self.thread.start()

    def plan(self, event) -> Plan:
        def mark():
            with self.changed:
                self.started[event.state] = time.monotonic()
                self.changed.notify_all()
            return "marked", {}

        return Plan([Step("mark", mark)])

    def write(self, states) -> float:
        """Write one line per state at once; the time the burst went out."""
        data = "".join(f'INSTANCE "VI_1" {s} 100\n' for s in states).encode()
        with self.changed:
            self.started.pop(states[-1], None)
        t0 = time.monotonic()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.wfd, view):]
            except BlockingIOError:
                time.sleep(0.001)
        return t0

    def until(self, state: str, t0: float, deadline: float = 60.0) -> float:
        """Seconds from t0 to the start of `state`'s transition."""
        with self.changed:
            ok = self.changed.wait_for(lambda: self.started.get(state, 0) >= t0, deadline)
        if not ok:
            raise SystemExit(f"no {state} transition within {deadline:g} s")
        return self.started[state] - t0

    def records(self) -> int:
        try:
            with open(os.path.join(self.base, "state", "events.jsonl"), "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self.reader.request_stop()
        self.thread.join(30)
        os.close(self.wfd)
        self.reader.close()


def main() -> int:
    base = tempfile.mkdtemp(prefix="bench-flap-")
    b = Bench(base)
    try:
        # the journal's 1,000 records, made as keepalived's lines make them
        while b.records() < PREFILL:
            b.until("MASTER", b.write(["BACKUP", "MASTER"] * 50))
        print(f"journal: {b.records()} records before the bursts")
        yard = min(b.until("FAULT", b.write(["FAULT"])) for _ in range(5))
        print(f"yardstick: one FAULT line on a quiet FIFO: {yard * 1000:7.1f} ms to its start")
        worst = 0.0
        for n in (10, 100, 300):
            b.until("MASTER", b.write(["MASTER"]))  # from a known state
            states = (["BACKUP", "MASTER"] * n)[: n - 1] + ["FAULT"]
            took = b.until("FAULT", b.write(states))
            worst = took if n == 300 else worst
            print(f"burst of {n:3d} lines ending in FAULT: {took * 1000:7.1f} ms to FAULT's start"
                  f" ({took / yard:5.1f}x the yardstick)")
        ok = worst <= TARGET_S
        verdict = "PASS" if ok else "FAIL"
        print(f"300 lines: {worst:.3f} s; target at most {TARGET_S:g} s: {verdict}")
        return 0 if ok else 1
    finally:
        b.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
