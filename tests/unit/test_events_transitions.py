"""The per-state sequences and their steps, on a fake /proc and a fake IPVS."""

import dataclasses
import logging

import pytest

from lvs_hooks.config import Config, MasterRoleConfig, PathsConfig, TransitionsConfig
from lvs_hooks.director import Director
from lvs_hooks.errors import KernelError, SnapshotError
from lvs_hooks.events import transitions
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import StepFailed
from lvs_hooks.kernel.netlink import Timeouts


def app_with(tmp_path, **sections):
    cfg = Config(
        paths=PathsConfig(
            state_dir=str(tmp_path / "state"),
            run_dir=str(tmp_path / "run"),
            proc_root=str(tmp_path / "proc"),
        ),
        **sections,
    )
    return Director(cfg)


def ev(state, name="VI_1"):
    return Event("INSTANCE", name, state, 100, "fifo", (1, 1, 1))


# -- plans


@pytest.mark.parametrize(
    "state, steps",
    [
        ("MASTER", ["firewall", "sysctls", "timeouts", "reseed"]),
        ("BACKUP", ["firewall", "sysctls", "timeouts", "sync daemon", "snapshot"]),
        ("FAULT", ["firewall", "sysctls", "timeouts", "snapshot"]),
        ("STOP", ["snapshot"]),
        ("DELETED", []),
    ],
)
def test_plan_per_state(tmp_path, state, steps):
    plan = transitions.plan_transition(ev(state), app_with(tmp_path))
    assert [s.name for s in plan.steps] == steps
    assert not plan.ignore
    if not steps:
        assert "nothing to do" in plan.note


def test_unwatched_instance_is_ignored(tmp_path):
    app = app_with(tmp_path, transitions=TransitionsConfig(instances=("VG_LVS",)))
    plan = transitions.plan_transition(ev("MASTER", name="VI_OTHER"), app)
    assert plan.ignore and plan.steps == []
    assert "VG_LVS" in plan.note
    assert transitions.plan_transition(ev("MASTER", name="VG_LVS"), app).steps


def test_stop_waits_briefly_for_the_lock():
    settings = TransitionsConfig(lock_timeout=60.0)
    assert transitions.lock_timeout_for(ev("STOP"), settings) < 1.0
    assert transitions.lock_timeout_for(ev("MASTER"), settings) == 60.0


def test_firewall_placeholder():
    summary, figures = transitions.firewall_step("master", Config())
    assert summary == "no firewall rules configured"


# -- the backup sync daemon


class DaemonIPVS:
    """The netlink seam: the daemons the kernel runs, and the starts asked of it."""

    running = []
    started = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def daemons(self):
        return list(DaemonIPVS.running)

    def start_daemon(self, state, ifname, syncid, **optional):
        DaemonIPVS.started.append((state, ifname, syncid, optional))


@pytest.fixture
def daemon_ipvs(monkeypatch):
    DaemonIPVS.running, DaemonIPVS.started = [], []
    monkeypatch.setattr(transitions, "IPVS", DaemonIPVS)
    return DaemonIPVS


def test_a_backup_without_a_backup_daemon_starts_one(daemon_ipvs, caplog):
    """keepalived's own start is refused while an injection runs its temporary daemon, which
    the injection then stops: the BACKUP transition, under the lock after it, starts one."""
    from lvs_hooks.config import SyncConfig
    from lvs_hooks.kernel.netlink import SyncDaemon

    cfg = Config(sync=SyncConfig(interface="sync0", syncid=51, port=8849))
    with caplog.at_level(logging.WARNING):
        summary, figures = transitions.backup_daemon_step(cfg)
    assert daemon_ipvs.started == [("backup", "sync0", 51, {"port": 8849})]
    assert figures["started"] and "none ran" in summary and "started one on sync0" in caplog.text
    daemon_ipvs.started.clear()
    daemon_ipvs.running = [SyncDaemon("backup", "sync0", 51)]
    assert transitions.backup_daemon_step(cfg) == ("a backup sync daemon runs", {"started": False})
    daemon_ipvs.running = []
    assert not transitions.backup_daemon_step(Config())[1]["started"]  # no interface to use
    assert daemon_ipvs.started == []


# -- sysctls


@pytest.fixture
def vs_dir(tmp_path):
    d = tmp_path / "proc" / "sys" / "net" / "ipv4" / "vs"
    d.mkdir(parents=True)
    (d / "sloppy_tcp").write_text("0\n")
    (d / "expire_nodest_conn").write_text("1\n")
    (d / "sync_threshold").write_text("3\t50\n")
    return d


def test_sysctls_set_what_differs(tmp_path, vs_dir):
    summary, figures = transitions.sysctl_step(
        ("sloppy_tcp=1", "expire_nodest_conn=1", "sync_threshold=3 50"), str(tmp_path / "proc")
    )
    assert (vs_dir / "sloppy_tcp").read_text() == "1\n"
    assert figures["changed"] == ["sloppy_tcp 0->1"]
    assert figures["unchanged"] == ["expire_nodest_conn", "sync_threshold"]
    assert summary == "sloppy_tcp 0->1; 2 already set"
    # Idempotent: a second run changes nothing.
    summary, figures = transitions.sysctl_step(("sloppy_tcp=1",), str(tmp_path / "proc"))
    assert figures["changed"] == [] and summary == "nothing changed; 1 already set"


def test_sysctls_all_tried_failures_named(tmp_path, vs_dir):
    with pytest.raises(StepFailed) as info:
        transitions.sysctl_step(("no_such=1", "sloppy_tcp=1"), str(tmp_path / "proc"))
    assert "net.ipv4.vs.no_such: no such sysctl (is ip_vs loaded here?)" in str(info.value)
    assert "(sloppy_tcp 0->1)" in str(info.value)
    assert (vs_dir / "sloppy_tcp").read_text() == "1\n"
    assert info.value.figures["changed"] == ["sloppy_tcp 0->1"]


def test_sysctls_none_configured(tmp_path):
    assert transitions.sysctl_step((), str(tmp_path))[0] == "no sysctls configured"


# -- timeouts


class FakeIPVS:
    instances = []

    def __init__(self):
        self.current = Timeouts(900, 120, 300)
        self.set_calls = []
        FakeIPVS.instances.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def timeouts(self):
        return self.current

    ignores = False  # a kernel that accepts the request and keeps its values

    def set_timeouts(self, tcp=0, tcpfin=0, udp=0):
        self.set_calls.append((tcp, tcpfin, udp))
        if not self.ignores:
            c = self.current
            self.current = Timeouts(tcp or c.tcp, tcpfin or c.tcpfin, udp or c.udp)


@pytest.fixture
def fake_ipvs(monkeypatch):
    FakeIPVS.instances = []
    monkeypatch.setattr(transitions, "IPVS", FakeIPVS)
    return FakeIPVS


def test_timeouts_set_only_what_differs(fake_ipvs):
    role = MasterRoleConfig(tcp=7200, tcpfin=120, udp=0)
    summary, figures = transitions.timeouts_step(role, keepalived_lvs_timeouts=False)
    assert fake_ipvs.instances[0].set_calls == [(7200, 0, 0)]
    assert summary == "set tcp 900->7200"
    assert figures["applied"] is True


def test_timeouts_read_back_and_a_value_that_did_not_hold_fails(fake_ipvs, monkeypatch):
    monkeypatch.setattr(FakeIPVS, "ignores", True)
    with pytest.raises(KernelError, match=r"the kernel shows tcp 900 \(wanted 7200\)"):
        transitions.timeouts_step(MasterRoleConfig(tcp=7200), keepalived_lvs_timeouts=False)


def test_timeouts_already_right(fake_ipvs):
    role = MasterRoleConfig(tcp=900, tcpfin=120, udp=300)
    summary, _ = transitions.timeouts_step(role, keepalived_lvs_timeouts=False)
    assert fake_ipvs.instances[0].set_calls == []
    assert summary == "already tcp 900 tcpfin 120 udp 300"


def test_timeouts_none_configured_touch_nothing(fake_ipvs):
    summary, _ = transitions.timeouts_step(MasterRoleConfig(), keepalived_lvs_timeouts=False)
    assert summary == "no timeouts configured"
    assert fake_ipvs.instances == []


def test_timeouts_left_to_keepalived_and_said(fake_ipvs, caplog):
    caplog.set_level(logging.WARNING)
    role = MasterRoleConfig(tcp=7200)
    summary, figures = transitions.timeouts_step(role, keepalived_lvs_timeouts=True)
    assert summary == "left to keepalived's lvs_timeouts"
    assert fake_ipvs.instances == []
    assert "not applied: keepalived's lvs_timeouts is in use" in caplog.text


def test_timeouts_kernel_error_propagates(monkeypatch):
    def no_ipvs():
        raise KernelError("IPVS is not available: the ip_vs module is not loaded")

    monkeypatch.setattr(transitions, "IPVS", no_ipvs)
    with pytest.raises(KernelError):
        transitions.timeouts_step(MasterRoleConfig(tcp=1), keepalived_lvs_timeouts=False)


# -- reseed and snapshot (the core steps are faked: they have their own tests)


def test_reseed_step_reports_figures_and_latency(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(
        transitions,
        "reseed",
        lambda director, **kw: {
            "snapshot": "/s",
            "snapshot_age_s": 3.0,
            "seen": 20,
            "planned": 20,
            "sent": 20,
            "verified": 20,
            "missing": 0,
            "ms": 40.0,
        },
    )
    event = Event(
        "INSTANCE", "VI_1", "MASTER", 100, "fifo", (transitions.now_ns() - 250_000_000, 1, 1)
    )
    summary, figures = transitions.reseed_step(app_with(tmp_path), event)
    assert figures["verified"] == 20
    assert 250 <= figures["latency_ms"] < 5000
    assert summary.startswith("20 of 20 templates planned, 20 verified, 0 missing, 40 ms; ")
    assert "reseed ended" in caplog.text and "after keepalived announced MASTER" in caplog.text


def test_reseed_step_missing_templates_fail_with_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(
        transitions,
        "reseed",
        lambda director, **kw: {
            "seen": 20,
            "planned": 20,
            "sent": 20,
            "verified": 17,
            "missing": 3,
            "ms": 40.0,
        },
    )
    with pytest.raises(StepFailed) as info:
        transitions.reseed_step(app_with(tmp_path), ev("MASTER"))
    assert info.value.figures["missing"] == 3
    assert "latency_ms" in info.value.figures


def test_reseed_step_error_keeps_the_latency(tmp_path, monkeypatch):
    def no_snapshot(director, **kw):
        raise SnapshotError("no usable snapshot in /var/lib/lvs-hooks: no snapshot files")

    monkeypatch.setattr(transitions, "reseed", no_snapshot)
    with pytest.raises(StepFailed) as info:
        transitions.reseed_step(app_with(tmp_path), ev("MASTER"))
    assert str(info.value).startswith("no usable snapshot")
    assert "latency_ms" in info.value.figures


def test_snapshot_step(tmp_path, monkeypatch):
    monkeypatch.setattr(
        transitions,
        "take_snapshot",
        lambda cfg, reason="", live=None: {
            "path": "/var/lib/lvs-hooks/snapshot-x.json",
            "templates": 5,
            "services": 2,
            "ms": 3.2,
        },
    )
    summary, figures = transitions.snapshot_step(app_with(tmp_path))
    assert summary == "5 templates of 2 services to /var/lib/lvs-hooks/snapshot-x.json in 3 ms"
    assert figures["templates"] == 5


def test_config_sections_are_what_the_steps_read():
    # The steps read cfg.master / cfg.backup / cfg.transitions: keep the names in step.
    names = {f.name for f in dataclasses.fields(Config)}
    assert {"transitions", "master", "backup"} <= names


def test_backup_leaves_its_snapshot_to_the_duties_beside_the_events(tmp_path, monkeypatch):
    taken = []
    monkeypatch.setattr(transitions, "take_snapshot",
                        lambda cfg, reason="", live=None: taken.append(reason) or {
                            "path": "/x", "templates": 0, "services": 0, "ms": 1.0})
    director = app_with(tmp_path)
    # no thread runs the duties (a notify process): the step takes it
    assert transitions.snapshot_step(director, may_defer=True)[1]["templates"] == 0
    director.duties_beside = True
    summary, figures = transitions.snapshot_step(director, may_defer=True)
    assert figures == {"deferred": True} and director.snapshot_wanted
    # STOP never defers: keepalived kills its script a second later
    transitions.snapshot_step(director)
    assert taken == ["transition snapshot", "transition snapshot"]
