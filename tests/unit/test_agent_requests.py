"""Requests a command run by hand makes of the agent (`lvs-hooks snapshot`): over the agent's
real inbox socket, answered from a thread of its own while the inbox keeps taking events; the
CLI takes the agent's report, or does the work itself when no agent answers. The request's
handler is the one seam replaced (the snapshot itself has its own tests)."""

import json
import os
import shutil
import tempfile
import threading

import pytest
from click.testing import CliRunner

from lvs_hooks.cli import cli
from lvs_hooks.door import (
    MAX_MESSAGE,
    SOCKET_NAME,
    AgentConnection,
    Streamed,
    event_message,
    request_message,
)
from lvs_hooks.errors import SnapshotError
from lvs_hooks.events.inbox import Inbox
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import Plan, Sequencer


@pytest.fixture
def base():
    d = tempfile.mkdtemp(prefix="lvsr-")  # a socket path must fit in 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def agent(base, requests):
    config = os.path.join(base, "agent.yaml")
    run_dir = os.path.join(base, "run")
    with open(config, "w") as f:
        f.write(f"paths:\n  run_dir: {run_dir}\n  state_dir: {base}/state\n")
    seq = Sequencer(run_dir, Journal(os.path.join(base, "state"), 100))
    inbox = Inbox(run_dir, config, seq, lambda e: Plan(), lambda e: 10.0, requests=requests)
    inbox.start()
    return inbox, config, os.path.join(run_dir, SOCKET_NAME)


def test_a_request_is_answered_while_events_keep_coming(base):
    release, started = threading.Event(), threading.Event()

    def slow():
        started.set()
        assert release.wait(10)
        return {"templates": 3}

    inbox, config, path = agent(base, {"snapshot": lambda args: slow()})
    try:
        asker = AgentConnection(path, timeout=10)
        result = {}
        t = threading.Thread(
            target=lambda: result.update(asker.exchange(request_message(config, "snapshot")))
        )
        t.start()
        assert started.wait(10)
        # the request runs; an event handed over meanwhile is taken at once
        door = AgentConnection(path, timeout=5)
        ev = Event("INSTANCE", "VI_1", "MASTER", 100, "notify", (1, 1, 1))
        assert door.ask(event_message(config, ev)) == {"ok": True}
        door.close()
        # a second request while the first runs is refused, not queued behind it
        other = AgentConnection(path, timeout=5)
        busy = other.exchange(request_message(config, "snapshot"))
        assert busy["ok"] is False and "another request" in busy["reason"]
        other.close()
        release.set()
        t.join(10)
        assert result == {"ok": True, "report": {"templates": 3}}
        asker.close()
    finally:
        release.set()
        inbox.stop()


def test_an_answer_far_longer_than_an_event_line_comes_whole(base):
    """A status of a few hundred real servers, a table-check of many mismatches: answers of
    megabytes come through (capped at MAX_MESSAGE, the size of an event's line, they made the
    asking command fall back to a whole read of the kernel's table)."""
    rows = [{"real_server": f"10.1.{i >> 8}.{i & 255}:80", "templates": i} for i in range(20000)]
    inbox, config, path = agent(base, {"status": lambda args: {"real_servers": rows}})
    try:
        c = AgentConnection(path, timeout=10)
        reply = c.exchange(request_message(config, "status"))
        c.close()
        assert reply["ok"] is True and reply["report"]["real_servers"] == rows
        assert len(json.dumps(reply)) > 100 * MAX_MESSAGE
    finally:
        inbox.stop()


def test_a_streamed_report_is_sent_as_it_is_made_and_read_as_one_answer(base):
    """door.Streamed: the lists of a report too big to build whole, made a piece at a time
    while they are sent; the asker reads one answer line, as from any other request."""
    made = []

    def pieces():
        for i in range(0, 30000, 1000):
            made.append(i)
            yield ",".join(str(n) for n in range(i, i + 1000))

    inbox, config, path = agent(base, {"explain": lambda args: Streamed(
        {"at": 1.5, "asked": args}, {"templates": pieces, "held": lambda: iter(())})})
    try:
        c = AgentConnection(path, timeout=10)
        reply = c.exchange(request_message(config, "explain", args={"client": "10.0.0.7"}))
        c.close()
        assert reply == {"ok": True, "report": {"at": 1.5, "asked": {"client": "10.0.0.7"},
                                                "templates": list(range(30000)), "held": []}}
        assert len(made) == 30
    finally:
        inbox.stop()


def test_unknown_requests_and_failures_are_answered_in_one_line(base):
    def fails():
        raise SnapshotError("cannot save snapshot /x: no space left on device")

    inbox, config, path = agent(base, {"snapshot": lambda args: fails()})
    try:
        c = AgentConnection(path, timeout=10)
        assert c.exchange(request_message(config, "explain"))["reason"] == (
            "no such request: 'explain'"
        )
        c.close()
        c = AgentConnection(path, timeout=10)
        r = c.exchange(request_message(config, "snapshot"))
        assert r["ok"] is False and r["exit_code"] == 3 and "no space left" in r["reason"]
        c.close()
    finally:
        inbox.stop()


def test_the_snapshot_command_takes_the_agents_report(base):
    report = {"path": "/var/lib/lvs-hooks/snapshot-x.json", "templates": 160000,
              "services": 2, "ms_dump": 410.0, "ms": 455.0, "source": "table in memory"}
    inbox, config, _ = agent(base, {"snapshot": lambda args: report})
    try:
        r = CliRunner().invoke(cli, ["--config", config, "snapshot"])
        assert r.exit_code == 0, r.output
        # (the agent's own log lines share this process's stderr here)
        assert r.output.splitlines()[-1] == (
            "snapshot /var/lib/lvs-hooks/snapshot-x.json: 160000 templates, 2 services "
            "(dumped from the agent's table in memory in 410 ms, total 455 ms)"
        )
        # --from-kernel reads here (this host has no IPVS: IPVS's own error, exit 4)
        r = CliRunner().invoke(cli, ["--config", config, "snapshot", "--from-kernel"])
        assert r.exit_code == 4, r.output
        # a snapshot that was the dump under way for the periodic duty says so
        from lvs_hooks.commands.templates import render_snapshot
        assert render_snapshot(dict(report, joined=True, reason="periodic snapshot")).endswith(
            "(dumped from the agent's table in memory in 410 ms, by the dump under way for the "
            "periodic snapshot, total 455 ms)")
    finally:
        inbox.stop()


def test_the_status_command_takes_the_agents_report(base):
    from lvs_hooks.status import summarize

    report = summarize([], [], [], None, None, connections={})
    report["source"] = {"table": "in memory", "kernel_entries": 320000,
                        "kernel_templates": 160000}
    inbox, config, _ = agent(base, {"status": lambda args: report})
    try:
        r = CliRunner().invoke(cli, ["--config", config, "status"])
        assert r.exit_code == 0, r.output
        assert ("templates from the agent's table in memory (the kernel counts 160000 "
                "templates, 320000 entries; --from-kernel reads its table)") in r.output
        assert "agent: running (answers on " in r.output
        r = CliRunner().invoke(cli, ["--config", config, "status", "--json"])
        assert '"table": "in memory"' in r.output
        # --from-kernel asks the kernel here; without IPVS on this host it says what it could
        # not read and still reports the rest (exit 0)
        r = CliRunner().invoke(cli, ["--config", config, "status", "--from-kernel"])
        assert r.exit_code == 0, r.output
        assert "could not read " in r.output and "templates from the agent's" not in r.output
    finally:
        inbox.stop()


def test_the_table_check_command_shows_the_agents_comparison_and_exits_1_on_differences(base):
    from test_table_compare import line, templates

    from lvs_hooks.table.compare import compare

    same = compare(templates(line("10.0.0.1")), templates(line("10.0.0.1"))).to_dict()
    differs = compare(templates(line("10.0.0.1")), templates(line("10.0.0.2"))).to_dict()
    answers = [dict(same, ready=True, read_ms=3.0), dict(differs, ready=True, read_ms=3.0)]
    inbox, config, _ = agent(base, {"table-check": lambda args: answers.pop(0)})
    try:
        r = CliRunner().invoke(cli, ["--config", config, "table-check"])
        assert r.exit_code == 0, r.output
        assert "table in memory 1 templates, the kernel 1: 1 the same" in r.output
        r = CliRunner().invoke(cli, ["--config", config, "table-check"])
        assert r.exit_code == 1, r.output
        assert "only in the table: UDP 10.0.0.1" in r.output
    finally:
        inbox.stop()
    r = CliRunner().invoke(cli, ["--config", config, "table-check"])  # no agent now
    assert r.exit_code == 1 and "no agent answers" in r.output


def test_the_door_prints_the_agents_answer_without_the_full_command_line(base):
    """`lvs-hooks status|snapshot|table-check [--json]` through the door: the agent's report
    (and its text, rendered by the agent) printed by a process that imported neither click nor
    pyroute2 nor yaml."""
    import subprocess
    import sys

    inbox, config, _ = agent(base, {"status": lambda args: {"templates": 3},
                                    "table-check": lambda args: {"mismatches": 2}})
    inbox.renderers = {"status": lambda r: f"templates: {r['templates']}",
                       "table-check": lambda r: "two differ"}
    code = ("import sys; from lvs_hooks import door; rc = door.main(sys.argv[1:]); "
            "heavy = [m for m in ('click', 'pyroute2', 'yaml') if m in sys.modules]; "
            "print('heavy:', heavy); sys.exit(rc)")

    def door(*args):
        return subprocess.run([sys.executable, "-c", code, "--config", config, *args],
                              capture_output=True, text=True, timeout=60)

    try:
        r = door("status")
        assert (r.returncode, r.stdout) == (0, "templates: 3\nheavy: []\n"), r.stderr
        r = door("status", "--json")
        assert r.returncode == 0 and '"templates": 3' in r.stdout and "heavy: []" in r.stdout
        r = door("table-check")
        assert r.returncode == 1 and r.stdout.startswith("two differ")
        assert "2 templates differ" in r.stderr
    finally:
        inbox.stop()


def test_without_an_agent_the_command_does_it_itself(base):
    config = os.path.join(base, "c.yaml")
    with open(config, "w") as f:
        f.write(f"paths:\n  run_dir: {base}/run\n  state_dir: {base}/state\n")
    r = CliRunner().invoke(cli, ["--config", config, "snapshot"])
    assert r.exit_code == 4, r.output  # it went for the kernel's table: no IPVS on this host
