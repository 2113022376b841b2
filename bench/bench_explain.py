#!/usr/bin/env python3
"""Benchmark: `explain` without a client over tables of 100,000 and 1,000,000 lines.

Explaining every template pairs each with the connections it controls. Done by scanning every
connection for every template it is quadratic (16,000 lines took 26 s, 32,000 lines 127 s);
in one pass over the connections, each finding its templates by masked client, it is linear.
The figure: the time for 1,000,000 lines over the time for 100,000, beside the same ratio of a
plain parse of the same bytes (the yardstick: a linear pass measured in the same run). Target:
explain's ratio at most 12 (10 is linear), for the report and for the report with its text
written out a line at a time, as `lvs-hooks explain` writes it (to /dev/null here): each
controlled connection's dict is made as the report is read, so the report alone would leave
that work out. explain runs `frozen`, as the command does. Each figure is the least of --repeat
runs.

Tables from bench_core.generate_table (10% templates, IPv4, IPv6, fwmark, SIP). CPU time.

Also, for information, explain from the agent's table in memory at the same numbers of
templates (10,000 and 100,000, each client with a connection heard of: bench_table's master
feed): the agent's answer (explain.table_answer, its answer line made as the inbox sends it),
and the command's part (the line read back, TableInput, explain and its text).

Run: python3 bench/bench_explain.py
"""

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_core import generate_table  # noqa: E402

from lvs_hooks.explain import explain, explanation_lines  # noqa: E402
from lvs_hooks.kernel.conntable import parse_conn_table  # noqa: E402
from lvs_hooks.kernel.model import Destination, Service  # noqa: E402

TARGET_RATIO = 12.0


def services() -> list:
    """The services generate_table's entries belong to (so every template finds its own)."""
    rips4 = tuple(Destination(f"10.1.{i >> 8}.{i & 255}", 80) for i in range(1, 41))
    out = [Service(4, proto, f"10.0.0.{100 + i}", 80, persistent=True, timeout=360,
                   destinations=rips4) for i in range(8) for proto in ("TCP", "UDP")]
    out.append(Service(6, "TCP", "fd00::100", 443, persistent=True, timeout=360, netmask="128"))
    out.append(Service(4, None, None, 0, fwmark=1, persistent=True, timeout=300,
                       destinations=rips4))
    return out


def cpu() -> float:
    # this process's CPU time to the nanosecond: os.times counts in clock ticks (10 ms here),
    # 7% of the 100,000-line figure
    return time.process_time()


def measure(lines: int, seed: int, repeat: int) -> dict:
    """The least CPU time of `repeat` runs of each (what else runs on the machine only ever
    adds time: the least is the figure closest to the work itself)."""
    data = generate_table(lines, seed)
    parse_s = explain_s = written_s = float("inf")
    for _ in range(repeat):
        t0 = cpu()
        table = parse_conn_table(data)
        t1 = cpu()
        # frozen, as the explain command runs it (explain's docstring)
        report = explain(table.entries, services(), {"tcp": 900, "tcpfin": 120, "udp": 300},
                         time.time(), frozen=True)
        t2 = cpu()
        with open(os.devnull, "w") as out:  # as the command writes it: a line at a time
            for line in explanation_lines(report):
                out.write(line)
                out.write("\n")
        t3 = cpu()
        gc.unfreeze()  # the next run starts as this one did
        parse_s, explain_s = min(parse_s, t1 - t0), min(explain_s, t2 - t1)
        written_s = min(written_s, t3 - t1)
        del table, report
    table = parse_conn_table(data)
    return {"lines": lines, "parse_s": parse_s, "explain_s": explain_s, "written_s": written_s,
            "templates": len(table.templates),
            "connections": len(table.entries) - len(table.templates)}


def measure_table(templates: int, seed: int, repeat: int) -> dict:
    """The table path (see the docstring), the least CPU time of `repeat` runs of each part."""
    from bench_table import T0, datagrams, fill
    from bench_table import services as table_services

    from lvs_hooks.config import Config
    from lvs_hooks.director.live import LiveTable
    from lvs_hooks.door import Streamed
    from lvs_hooks.explain_table import TableInput, table_answer
    from lvs_hooks.table import TemplateTable

    svcs = table_services()
    table = fill(TemplateTable(syncid=51), datagrams(templates, seed, connections=True), T0)
    # the kernel counted over table.read_budget, so that the agent answers from its table
    live = LiveTable(Config(), table=table, clock=lambda: T0, counts=lambda: 10**7)
    live.tick(services=svcs)
    live.ready = True
    agent_s = command_s = float("inf")
    for _ in range(repeat):
        t0 = cpu()
        # the answer line as the inbox writes it, a piece at a time
        answer_made = table_answer(live, svcs, None)
        assert isinstance(answer_made, Streamed)
        wire = b"".join(answer_made.answer_pieces())
        t1 = cpu()
        answer = json.loads(wire)["report"]
        given = TableInput.from_answer(answer)
        assert given is not None and len(given.templates) == templates
        report = explain(given.templates, svcs, {"tcp": 900, "tcpfin": 120, "udp": 300},
                         answer["at"], held=given.held, frozen=True)
        with open(os.devnull, "w") as out:
            for line in explanation_lines(report):
                out.write(line)
                out.write("\n")
        t2 = cpu()
        gc.unfreeze()
        agent_s, command_s = min(agent_s, t1 - t0), min(command_s, t2 - t1)
        del answer_made, wire, answer, given, report
    return {"templates": templates, "agent_s": agent_s, "command_s": command_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the least counts")
    args = ap.parse_args()
    small = measure(args.small, args.seed, args.repeat)
    large = measure(args.large, args.seed, args.repeat)
    for m in (small, large):
        print(f"{m['lines']:>9} lines ({m['templates']} templates, {m['connections']} "
              f"connections): explain {m['explain_s']:6.2f} s CPU, with its text "
              f"{m['written_s']:6.2f} s, parse (yardstick) {m['parse_s']:5.2f} s")
    yard = large["parse_s"] / small["parse_s"]
    size = args.large / args.small
    ok = True
    for name, key in (("explain", "explain_s"), ("explain and its text", "written_s")):
        ratio = large[key] / small[key]
        ok = ok and ratio <= TARGET_RATIO
        print(f"{name}: {size:.0f}x the lines, {ratio:.1f}x the time (parse: {yard:.1f}x); "
              f"target at most {TARGET_RATIO:g}x: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    small_t = measure_table(small["templates"], args.seed, args.repeat)
    large_t = measure_table(large["templates"], args.seed, args.repeat)
    for m in (small_t, large_t):
        print(f"from the table, {m['templates']:>7} templates: the agent's answer "
              f"{m['agent_s']:5.2f} s CPU, the command's part {m['command_s']:5.2f} s")
    for name, key in (("the agent's answer", "agent_s"), ("the command's part", "command_s")):
        print(f"from the table, {name}: {size:.0f}x the templates, "
              f"{large_t[key] / small_t[key]:.1f}x the time (information)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
