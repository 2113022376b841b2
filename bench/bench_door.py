#!/usr/bin/env python3
"""Benchmark of a door's cold start: `lvs-hooks notify ...` as a whole process.

keepalived starts one process per event; the time from its fork to the event in the agent's
hands is what a transition waits before it can begin. Measured, each as whole processes from
this process (wall time from spawn to exit, and the child's CPU time), `--runs` times after
one warm-up, in turns so that a drift of the machine's speed touches all alike:

  - the yardstick: `python -c pass` with the same interpreter (its start-up is the floor);
  - (a) `lvs-hooks --config C notify INSTANCE VI_1 MASTER 100` handed to a running agent
    inbox (events.inbox, started in this process on a throwaway run directory; its planner
    returns an empty plan, so no kernel work is done): judged, median under 100 ms;
  - (b) the same door with no agent: it falls back to the full command line, which runs the
    transition itself; the config watches only another instance (`transitions.instances:
    [other]`), so the fallback does nothing to this host (information).

Prints median, min and max of each, and the ratio of the medians to the yardstick's. Exit
status 1 when (a) misses its target. The console script must be installed (`pip install -e .`
puts it beside the interpreter).
Run: python3 bench/bench_door.py [--runs 20]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lvs_hooks.events.inbox import Inbox  # noqa: E402
from lvs_hooks.events.journal import Journal  # noqa: E402
from lvs_hooks.events.sequencer import Plan, Sequencer  # noqa: E402

TARGET_MS = 100.0


class Runs:
    """Wall and CPU milliseconds of whole-process runs of one command."""

    def __init__(self, label: str, argv: list):
        self.label = label
        self.argv = argv
        self.wall: list = []
        self.cpu: list = []
        self.codes: set = set()

    def once(self, counted: bool = True) -> None:
        before = _children_cpu()
        t0 = time.perf_counter()
        code = subprocess.call(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - before
        self.codes.add(code)
        if counted:
            self.wall.append(wall * 1000)
            self.cpu.append(cpu * 1000)

    def median(self) -> float:
        return statistics.median(self.wall)

    def row(self, yardstick: "Runs") -> str:
        ratio = "" if self is yardstick else f"  {self.median() / yardstick.median():5.1f}x"
        cpu = statistics.median(self.cpu)
        return (
            f"{self.label:<46} wall {self.median():7.1f} ms median"
            f" ({min(self.wall):6.1f}-{max(self.wall):6.1f}), cpu {cpu:6.1f} ms{ratio}"
        )


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _door_script() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "lvs-hooks")
    found = here if os.access(here, os.X_OK) else shutil.which("lvs-hooks")
    if not found:
        sys.exit("no lvs-hooks console script beside this interpreter or on PATH: pip install -e .")
    return found


def _interleaved(runs: int, *commands: Runs) -> None:
    for c in commands:
        c.once(counted=False)  # warm-up: page cache, bytecode
    for _ in range(runs):
        for c in commands:
            c.once()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    script = _door_script()
    # A short path: the socket's must fit in 107 bytes.
    base = tempfile.mkdtemp(prefix="lvsh-bench-")
    try:
        run_dir, state_dir = os.path.join(base, "run"), os.path.join(base, "state")
        config = os.path.join(base, "lvs-hooks.yaml")
        with open(config, "w") as f:
            f.write(
                f"paths:\n  state_dir: {state_dir}\n  run_dir: {run_dir}\n"
                f"  proc_root: {base}/proc\ntransitions:\n  instances: [other]\n"
            )
        door = [script, "--config", config, "notify", "INSTANCE", "VI_1", "MASTER", "100"]
        yardstick = Runs(f"{os.path.basename(sys.executable)} -c pass (yardstick)",
                         [sys.executable, "-c", "pass"])
        with_agent = Runs("(a) lvs-hooks notify ..., agent running", door)
        without = Runs("(b) lvs-hooks notify ..., no agent (full CLI)", door)
        print(f"door: {script}")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f}, {args.runs} runs each after one warm-up"
        )

        seq = Sequencer(run_dir, Journal(state_dir, 50))
        inbox = Inbox(run_dir, config, seq, lambda event: Plan(), lambda event: 10.0)
        inbox.start()
        try:
            _interleaved(args.runs, yardstick, with_agent)
            taken = inbox.counts["events"]
        finally:
            inbox.stop()
        _interleaved(args.runs, yardstick, without)

        for r in (yardstick, with_agent, without):
            print(r.row(yardstick))
        problems = []
        if taken != args.runs + 1:
            problems.append(f"the agent took {taken} events, not {args.runs + 1}")
        for r in (yardstick, with_agent, without):
            if r.codes != {0}:
                problems.append(f"{r.label}: exit codes {sorted(r.codes)}")
        ok = with_agent.median() < TARGET_MS
        print(
            f"(a) median {with_agent.median():.1f} ms: {'PASS' if ok else 'MISS'} "
            f"(< {TARGET_MS:g} ms)"
        )
        for p in problems:
            print(f"ERROR: {p}")
        return 0 if ok and not problems else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
