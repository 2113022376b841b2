#!/usr/bin/env python3
"""Retention tables from the traffic client's report (tests/lab/client.py `report FILE`).

A report holds, per step (an `open` of new flows or a `probe` of existing ones), which real server
answered each client address. Retention of a step = how many clients reach the real server they
had at the reference step (the first `open`, normally labelled `start`).

Usage:
  retention.py REPORT.json                     one table
  retention.py --compare A.json B.json ...     side by side (e.g. baseline vs with lvs-hooks)
  A file may be a scenario's result.json holding the report under "traffic".
"""

import json
import sys
from typing import Dict, List, Optional


def load(path: str) -> Dict:
    with open(path) as f:
        data = json.load(f)
    return data.get("traffic", data)


def step_row(step: Dict) -> str:
    if step["kind"] == "probe":
        what = f"existing flows ({step['flows']})"
    else:
        what = f"new {step.get('proto', 'udp')} flows"
    return what


def render(report: Dict, title: Optional[str] = None) -> str:
    n = len(report["clients"])
    lines = [title or f"Retention: clients (of {n}) still on the real server they had at "
                      f"'{report['reference']}'"]
    head = f"  {'step':<26} {'traffic':<26} {'same':>5} {'moved':>6} {'no answer':>10}"
    lines.append(head)
    lines.append("  " + "-" * (len(head) - 2))
    for st in report["steps"]:
        lines.append(f"  {st['label']:<26} {step_row(st):<26} {st['same_as_ref']:>3}/{n:<2}"
                     f"{st['moved']:>6} {st['no_answer']:>10}")
    return "\n".join(lines)


def compare(reports: List[Dict], names: List[str]) -> str:
    n = len(reports[0]["clients"])
    lines = [f"Retention: clients (of {n}) still on their real server of "
             f"'{reports[0]['reference']}'"]
    head = f"  {'step':<26} {'traffic':<26}" + "".join(f" {nm:>14}" for nm in names)
    lines.append(head)
    lines.append("  " + "-" * (len(head) - 2))
    labels = [st["label"] for st in reports[0]["steps"]]
    for label in labels:
        cells, what = [], ""
        for rep in reports:
            st = next((s for s in rep["steps"] if s["label"] == label), None)
            if st is None:
                cells.append(f" {'-':>14}")
                continue
            what = step_row(st)
            cells.append(f" {str(st['same_as_ref']) + '/' + str(len(rep['clients'])):>14}")
        lines.append(f"  {label:<26} {what:<26}" + "".join(cells))
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if argv and argv[0] == "--compare":
        paths = argv[1:]
        names = []
        for p in paths:
            name, _, path = p.rpartition("=")
            names.append(name or path)
        print(compare([load(p.rpartition("=")[2]) for p in paths], names))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(load(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
