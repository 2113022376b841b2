"""The metrics file for node_exporter's textfile collector, parsed with Prometheus' own text
format parser (prometheus_client, a test dependency): written after a transition and a push
by the code that runs them, atomically, with the listed families and node_exporter's ipvs
label names."""

import os
import stat
import time

from prometheus_client.parser import text_string_to_metric_families
from test_health import make_cfg, snapshot

from lvs_hooks import health, metrics
from lvs_hooks.agent import note_push
from lvs_hooks.atomicfile import temp_files
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.parts import ReportingSequencer, journal_for
from lvs_hooks.events.sequencer import Plan, Step
from lvs_hooks.kernel.model import Destination, Service
from lvs_hooks.kernel.netlink import DestCounts, SyncDaemon
from lvs_hooks.warmup import WarmupStore

FAMILIES = {
    "lvs_hooks_info", "lvs_hooks_metrics_timestamp_seconds", "lvs_hooks_check_status",
    "lvs_hooks_unreadable", "lvs_hooks_role", "lvs_hooks_role_since_timestamp_seconds",
    "lvs_hooks_last_transition_timestamp_seconds", "lvs_hooks_last_transition_success",
    "lvs_hooks_last_transition_duration_seconds", "lvs_hooks_agent_up", "lvs_hooks_warm",
    "lvs_hooks_warmup_eligible", "lvs_hooks_warmup_handover",
    "lvs_hooks_last_push_timestamp_seconds", "lvs_hooks_last_push_complete",
    "lvs_hooks_last_push_templates", "lvs_hooks_pushes", "lvs_hooks_snapshot_timestamp_seconds",
    "lvs_hooks_snapshot_templates", "lvs_hooks_ipvs_up", "lvs_hooks_transitions",
}


def parse(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam):
    return [(s.name, s.labels, s.value) for s in fam.samples]


def test_written_after_a_transition_and_a_push_and_parsed_by_prometheus(tmp_path):
    out = tmp_path / "textfile"
    out.mkdir()
    prom = out / "lvs_hooks.prom"
    cfg, _ = make_cfg(tmp_path, f"metrics: {{textfile: {prom}}}\n")
    WarmupStore(cfg.paths.run_dir).start()
    snapshot(cfg)
    seq = ReportingSequencer(cfg, journal_for(cfg))
    seq.handle(Event("INSTANCE", "VI_1", "BACKUP", 100, "notify", (1, os.getpid(), 0)),
               lambda e: Plan([Step("sysctls", lambda: ("fine", {}))]), 5)
    first = prom.read_text()
    fams = parse(first)
    assert samples(fams["lvs_hooks_role"]).count(("lvs_hooks_role", {"role": "BACKUP"}, 1.0)) == 1
    assert samples(fams["lvs_hooks_last_transition_success"])[0][2] == 1.0
    assert fams["lvs_hooks_transitions"].type == "counter"
    assert samples(fams["lvs_hooks_transitions"]) == [
        ("lvs_hooks_transitions_total", {"state": "BACKUP", "outcome": "done"}, 1.0)]
    assert "lvs_hooks_last_push_complete" not in fams  # no push yet

    note_push(cfg)("received", {"complete": True, "missing": 0, "templates": 10020,
                                "source": "10.0.0.2:40000"}, True)
    text = prom.read_text()
    fams = parse(text)
    assert set(fams) >= FAMILIES, FAMILIES - set(fams)
    # counters: the family is named without _total, its sample with it
    assert fams["lvs_hooks_pushes"].type == "counter"
    assert samples(fams["lvs_hooks_pushes"]) == [
        ("lvs_hooks_pushes_total", {"direction": "received", "result": "ok"}, 1.0)]
    assert samples(fams["lvs_hooks_last_push_templates"]) == [
        ("lvs_hooks_last_push_templates", {"direction": "received"}, 10020.0)]
    assert abs(fams["lvs_hooks_metrics_timestamp_seconds"].samples[0].value - time.time()) < 60
    assert all(n.startswith("lvs_hooks_") for n in fams)
    assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644
    assert temp_files(out) == []  # replaced by rename, nothing left behind


def test_per_real_server_templates_carry_node_exporters_ipvs_labels(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    tcp = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=300,
                  destinations=(Destination("10.1.0.11", 80),))
    fwm = Service(6, None, None, 0, fwmark=10, persistent=True, timeout=300,
                  destinations=(Destination("2001:db8::11", 443),))
    counts = [DestCounts(tcp.key(), "10.1.0.11", 80, 3, 1, 7),
              DestCounts(fwm.key(), "2001:db8::11", 443, 0, 0, 2)]
    h = health.gather(cfg, agent={"running": True, "detail": ""},
                      ipvs=lambda: ([tcp, fwm], counts, [SyncDaemon("backup", "eth1", 51)]))
    fams = parse(metrics.render(h, cfg, [tcp, fwm], counts))
    assert samples(fams["lvs_hooks_templates"]) == [
        ("lvs_hooks_templates", {"local_address": "10.0.0.100", "local_port": "80",
                                 "local_mark": "", "proto": "TCP",
                                 "remote_address": "10.1.0.11", "remote_port": "80"}, 7.0),
        ("lvs_hooks_templates", {"local_address": "", "local_port": "0",
                                 "local_mark": "0000000A", "proto": "FWM",
                                 "remote_address": "2001:db8::11", "remote_port": "443"}, 2.0),
    ]
    assert ("lvs_hooks_sync_daemon_up", {"state": "backup"}, 1.0) in samples(
        fams["lvs_hooks_sync_daemon_up"])
    assert samples(fams["lvs_hooks_ipvs_up"]) == [("lvs_hooks_ipvs_up", {}, 1.0)]


def test_off_by_default_and_a_missing_directory_fails_nothing(tmp_path):
    cfg, _ = make_cfg(tmp_path)
    assert metrics.write_metrics(cfg, "test") is False
    cfg, _ = make_cfg(tmp_path, f"metrics: {{textfile: {tmp_path / 'nodir' / 'x.prom'}}}\n")
    assert metrics.write_metrics(cfg, "test") is False  # logged, nothing raised
