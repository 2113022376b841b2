"""`status --check` and the health report from real states: the files a real sequencer, warm-up
gate, agent and snapshot store leave in temporary run and state directories. The agent probe
and the IPVS reader are what the callers hand in (the seam); the CLI tests run the real probe
against a socket nobody listens on, as a killed agent leaves it."""

import json
import os
import socket
import time

from click.testing import CliRunner

from lvs_hooks import health
from lvs_hooks.cli import cli
from lvs_hooks.commands.templates import probe_agent
from lvs_hooks.config import parse_config
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import Plan, Sequencer, Step, StepFailed
from lvs_hooks.health import CRITICAL, OK, UNKNOWN, WARNING, gather, judge
from lvs_hooks.kernel.netlink import SyncDaemon
from lvs_hooks.snapshot import Snapshot, SnapshotStore
from lvs_hooks.warmup import WarmupStore

UP = {"running": True, "detail": "answers"}
DOWN = {"running": False, "detail": "nobody listens"}


def make_cfg(tmp_path, extra="", proc_root="/proc"):
    run, state = tmp_path / "run", tmp_path / "state"
    for d in (run, state):
        d.mkdir(mode=0o700, exist_ok=True)
    text = (f"paths: {{run_dir: {run}, state_dir: {state}, proc_root: {proc_root}}}\n"
            "control: {key_file: /etc/lvs-hooks/control.key}\n" + extra)
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text(text)
    return parse_config(text, str(path)), str(path)


def transition(cfg, state, fail=None, order=1):
    """A real transition through the sequencer: role.json and the journal as keepalived's
    event leaves them."""
    seq = Sequencer(cfg.paths.run_dir, Journal(cfg.paths.state_dir, 100))

    def step_ok():
        return "fine", {}

    def step_bad():
        raise StepFailed("2 of 10 templates planned, 8 verified, 2 missing", {"latency_ms": 80})

    def planner(event):
        return Plan([Step("sysctls", step_ok), Step("reseed", step_bad if fail else step_ok)])

    seq.handle(Event("INSTANCE", "VI_1", state, 100, "notify", (order, os.getpid(), 0)),
               planner, 5)


def snapshot(cfg):
    SnapshotStore(cfg.paths.state_dir, 5).save(Snapshot("lb1", time.time(), [], []))


def daemons(*states):
    return lambda: ([], [], [SyncDaemon(s, "eth1", 51) for s in states])


def healthy_backup(cfg):
    transition(cfg, "BACKUP")
    store = WarmupStore(cfg.paths.run_dir)
    store.start()
    store.mark_warm("full push p1 from d1", {})
    health.record_push(cfg.paths.run_dir, "received",
                       {"complete": True, "missing": 0, "templates": 10, "source": "d1"}, True)
    snapshot(cfg)


def check(cfg, agent, ipvs=None):
    return judge(gather(cfg, agent=agent, ipvs=ipvs), cfg)


def test_ok_a_warm_backup_with_its_agent_a_complete_push_and_a_fresh_snapshot(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    state, reasons, notes = check(cfg, UP, daemons("backup"))
    assert (state, reasons) == (OK, [])
    line = health.check_line(state, reasons, notes)
    assert line.startswith("LVS-HOOKS OK - ") and "BACKUP" in line and "warm" in line
    assert "\n" not in line


def test_critical_the_agent_killed(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)  # warmup.json: the agent ran since boot
    state, reasons, _ = check(cfg, DOWN, daemons("backup"))
    assert state == CRITICAL
    assert reasons[0].startswith("agent not running (nobody listens; it ran since boot)")


def test_critical_the_last_transition_failed_and_ok_again_after_one_that_did_not(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    transition(cfg, "MASTER", fail=True, order=2)
    state, reasons, _ = check(cfg, UP, daemons("master", "backup"))
    assert state == CRITICAL
    assert reasons[0].startswith("last transition MASTER failed (reseed)")
    h = gather(cfg, agent=UP)
    assert h["last_transition"]["latency_ms"] == 80
    transition(cfg, "MASTER", order=3)
    assert check(cfg, UP, daemons("master", "backup"))[0] == OK


def test_warning_cold_past_max_wait_and_incomplete_push(tmp_path):
    cfg, _ = make_cfg(tmp_path, "warmup: {max_wait: 1}\n")
    transition(cfg, "BACKUP")
    WarmupStore(cfg.paths.run_dir).start(now=time.time() - 5)
    health.record_push(cfg.paths.run_dir, "received",
                       {"complete": False, "reason": "3 datagrams missing", "templates": 10},
                       False)
    snapshot(cfg)
    state, reasons, _ = check(cfg, UP, daemons("backup"))
    assert state == WARNING
    assert any(r.startswith("not warm after 5 s (warmup.max_wait 1 s)") for r in reasons)
    assert any("incomplete: 3 datagrams missing" in r for r in reasons)


def test_warning_a_duty_failing_now_and_an_old_snapshot(tmp_path):
    cfg, _ = make_cfg(tmp_path, "metrics: {snapshot_max_age: 60}\n")
    healthy_backup(cfg)
    # what director.duties writes for the process that runs the duties (this one: alive)
    data = {"pid": os.getpid(), "at": time.time(),
            "tasks": {"fwmark-repair": {"failures": 4, "in_a_row": 2, "last_error": "boom"}}}
    (tmp_path / "run" / "duties.json").write_text(json.dumps(data))
    later = time.time() + 120
    h = gather(cfg, agent=UP, ipvs=daemons("backup"), now=later)
    state, reasons, _ = judge(h, cfg)
    assert state == WARNING
    assert "periodic fwmark-repair failing (2 in a row): boom" in reasons
    assert any(r.startswith("newest snapshot 120 s old") for r in reasons)


def test_warning_no_backup_sync_daemon(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    state, reasons, _ = check(cfg, UP, daemons())
    assert state == WARNING
    assert reasons == ["no backup sync daemon: the master's templates do not reach this director"]


def test_unknown_when_ipvs_or_the_run_directory_cannot_be_read(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)

    def no_ipvs():
        from lvs_hooks.errors import KernelError

        raise KernelError("IPVS is not available: the ip_vs module is not loaded")

    state, reasons, _ = check(cfg, UP, no_ipvs)
    assert state == UNKNOWN
    assert reasons == ["cannot read IPVS: IPVS is not available: the ip_vs module is not loaded"]
    os.unlink(tmp_path / "run" / "push.json")
    (tmp_path / "run" / "push.json").mkdir()  # not a regular file: safeio refuses it
    state, reasons, _ = check(cfg, UP, daemons("backup"))
    assert state == UNKNOWN and reasons[0].startswith("cannot read last push")


def test_a_corrupt_warmup_state_is_critical(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    (tmp_path / "run" / "warmup.json").write_text("{not json")
    state, reasons, _ = check(cfg, UP, daemons("backup"))
    assert state == CRITICAL and "corrupt" in reasons[0]


# -- through the command line: the exit codes a monitoring system sees


def run_check(config_path):
    return CliRunner().invoke(cli, ["--config", config_path, "status", "--check"])


def test_cli_check_critical_for_a_killed_agent_whose_socket_is_left(tmp_path):
    cfg, path = make_cfg(tmp_path)
    healthy_backup(cfg)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(cfg.paths.run_dir, "agent.sock"))  # bound, never listening: refused
    try:
        assert probe_agent(path, cfg.paths.run_dir)["running"] is False
        result = run_check(path)
    finally:
        sock.close()
    assert result.exit_code == CRITICAL, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("LVS-HOOKS CRITICAL - agent not running (nobody listens")


def test_an_agent_that_listens_and_does_not_say_hello_is_busy_a_warning(tmp_path,
                                                                         monkeypatch):
    """Busy (or hung), not gone: the socket takes the connection and no hello comes. Lab, a
    1-CPU director under load: a 2-s probe called such an agent "not running"."""
    from lvs_hooks.commands import templates

    cfg, path = make_cfg(tmp_path)
    healthy_backup(cfg)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(cfg.paths.run_dir, "agent.sock"))
    sock.listen(4)  # listens, never accepts: the connection waits in the backlog
    monkeypatch.setattr(templates, "PROBE_TIMEOUT", 0.2)
    try:
        probe = probe_agent(path, cfg.paths.run_dir)
    finally:
        sock.close()
    assert (probe["running"], probe["busy"]) == (True, True), probe
    assert "no acknowledgement within 0.2 s" in probe["detail"]
    state, reasons, _ = check(cfg, probe, daemons("backup"))
    assert state == WARNING, reasons
    assert reasons[0].startswith("agent busy (") and "no acknowledgement" in reasons[0]
    assert any(line.startswith("agent: running, busy (")
               for line in health.render_health(gather(cfg, agent=probe)))


def test_cli_check_unknown_for_a_config_it_cannot_read_not_the_clis_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sync: {port: nope}\n")
    result = run_check(str(bad))
    assert result.exit_code == UNKNOWN
    assert result.output.startswith("LVS-HOOKS UNKNOWN - config ")


def test_status_without_ipvs_reports_the_rest_and_exits_0(tmp_path):
    cfg, path = make_cfg(tmp_path, proc_root=str(tmp_path / "noproc"))
    healthy_backup(cfg)
    result = CliRunner().invoke(cli, ["--config", path, "status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    h = report["health"]
    assert h["role"]["state"] == "BACKUP"
    assert h["warmup"]["state"] == "warm"
    assert h["push"]["received"]["complete"] is True
    assert h["agent"]["running"] is False
    # Without ip_vs here netlink says so; with it, the fake /proc has no connection table.
    assert report["unreadable"] and report["source"] == {"table": "none"}


def test_the_report_for_people_names_each_part(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    health.record_push(cfg.paths.run_dir, "received",
                       {"complete": True, "missing": 0, "templates": 12, "source": "d1"}, True)
    text = "\n".join(health.render_health(gather(cfg, agent=DOWN)))
    assert "role: BACKUP (VI_1) for " in text
    assert "last transition: BACKUP VI_1 " in text and ": done" in text
    assert "agent: NOT running (nobody listens); expected: it ran since boot" in text
    assert "warm-up gate: eligible: warm since " in text
    assert "last push received: " in text and "from d1, 12 templates, complete" in text
    assert "periodic duties: no failure" in text
    counts = json.loads((tmp_path / "run" / "push.json").read_text())["counts"]
    assert counts == {"received_ok": 2}


def test_the_check_line_stays_one_bounded_line():
    line = health.check_line(WARNING, ["a\nb"] * 400, [])
    assert "\n" not in line and len(line) <= len("LVS-HOOKS WARNING - ") + health.MAX_LINE


def test_foreign_sync_datagrams_and_refused_control_messages_in_status_check_and_metrics(
        tmp_path):
    from lvs_hooks.metrics import render

    cfg, _ = make_cfg(tmp_path)
    healthy_backup(cfg)
    assert check(cfg, UP)[0] == OK
    now = time.time()
    health.record_wire(cfg.paths.run_dir, {
        "sync_foreign": 3, "sync_other_port": 1, "sync_foreign_last": "10.9.0.66:8848",
        "sync_foreign_at": now - 30, "control_refused": {"forged": 20000, "replayed": 1}})
    h = gather(cfg, agent=UP, now=now)
    state, reasons, _ = judge(h, cfg)
    assert state == WARNING
    assert reasons == ["3 sync datagrams from sources other than the pusher during pushes since "
                       "the agent started, the last 30 s ago from 10.9.0.66:8848: someone else "
                       "sends on the sync group (the kernel took them in)"]
    lines = health.render_health(h)
    assert ("sync group during pushes: 3 datagrams from other sources, the last 30 s ago from "
            "10.9.0.66:8848; 1 from the pusher's address, another port (not counted in the "
            "push)") in lines
    assert "control messages refused: 20000 forged, 1 replayed" in lines
    text = render(h, cfg)
    assert "lvs_hooks_sync_foreign_datagrams_total 3" in text
    assert "lvs_hooks_sync_other_port_datagrams_total 1" in text
    assert 'lvs_hooks_control_refused_total{category="forged"} 20000' in text
    # long after: still shown and counted, no longer a warning
    later = judge(gather(cfg, agent=UP, now=now + 3600), cfg)[1]
    assert not any("sync datagrams" in r for r in later)
