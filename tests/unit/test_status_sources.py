"""status.summarize over the two sources it is given: a whole read of the kernel's table
(templates and connections), or the agent's table in memory (templates only) beside the
kernel's per-real-server counters for the connections; and which one build_status takes, with
the netlink counters the one seam replaced and a real /proc file in a temporary tree."""

from test_conntable import H, kline
from test_live_table import OneServiceIPVS

from lvs_hooks.kernel.conntable import parse_conn_table
from lvs_hooks.kernel.model import Destination, Service
from lvs_hooks.status import render_status, summarize

SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
              destinations=(Destination("10.1.0.11", 5000), Destination("10.1.0.12", 5000)))

PROC = H + (
    kline("UDP", "10.0.0.1", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 200)
    + kline("UDP", "10.0.0.2", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 200)
    + kline("UDP", "10.0.0.1", 4000, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 100)
    + kline("UDP", "10.0.0.2", 4000, "10.0.0.100", 5000, "10.1.0.12", 5000, "UDP", 100)
)


def test_templates_only_with_the_kernels_connection_counts_say_the_same():
    full = summarize([SVC], parse_conn_table(PROC).entries, [], None, None)
    templates = parse_conn_table(PROC, templates_only=True).entries
    assert all(e.is_template for e in templates)
    counted = summarize([SVC], templates, [], None, None, connections={SVC.key(): 2})
    assert counted == full
    assert full["connections"] == 2 and full["services"][0]["connections"] == 2
    assert [d["templates"] for d in full["services"][0]["destinations"]] == [1, 1]
    assert "templates: 2" in render_status(counted)


def test_the_tables_counts_say_what_its_entries_say():
    from test_live_table import datagrams

    from lvs_hooks.table import TemplateTable

    t = TemplateTable()
    for d in datagrams("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        t.ingest(d, 1000.0, "SYNC")
    for d in datagrams("10.0.0.4"):
        t.ingest(d, 1000.0, "LOCAL")
    for d in datagrams("10.0.0.9", timeout=5):
        t.ingest(d, 1000.0, None)  # ended by the time of the report: counted by neither
    now = 1010.0
    by_entries = summarize([SVC], list(t.templates(now)), [], None, None, connections={})
    by_counts = summarize([SVC], (), [], None, None, connections={},
                          template_counts=t.counts_by_dest_origin(now))
    assert by_counts == by_entries
    assert by_counts["templates"] == 4
    assert by_counts["templates_by_origin"] == {"SYNC": 3, "LOCAL": 1}


class CountingIPVS(OneServiceIPVS):
    """The netlink seam of lvs_hooks.status: one service, its per-real-server counters."""

    counts = ()

    def services(self):
        return [SVC]  # this module's, with two real servers

    def daemons(self):
        return []

    def timeouts(self):
        return None

    def dest_counts(self):
        return list(self.counts)


def status_of(tmp_path, monkeypatch, kernel_entries, ready, from_kernel=False):
    """build_status as the agent answers it: a table in memory of one template (10.0.0.3,
    origin SYNC), the kernel's counters saying `kernel_entries` entries (two of them
    templates), table.read_budget 10, and the /proc file of PROC (two templates)."""
    from test_live_table import Clock, cfg_for, datagrams, proc_table

    from lvs_hooks import status as status_module
    from lvs_hooks.director.live import LiveTable
    from lvs_hooks.kernel.netlink import DestCounts
    from lvs_hooks.snapshot import SnapshotStore

    proc_table(tmp_path, PROC[len(H):])
    cfg = cfg_for(tmp_path, budget=10)
    live = LiveTable(cfg, clock=Clock(), counts=lambda: kernel_entries)
    live.ready = ready
    for d in datagrams("10.0.0.3"):
        live.ingest(d, "SYNC")
    CountingIPVS.counts = (
        DestCounts(SVC.key(), "10.1.0.11", 5000, 1, kernel_entries - 4, 1),
        DestCounts(SVC.key(), "10.1.0.12", 5000, 1, 0, 1),
    )
    monkeypatch.setattr(status_module, "IPVS", CountingIPVS)
    reads = []
    real = status_module.read_conn_table
    monkeypatch.setattr(status_module, "read_conn_table",
                        lambda *a, **k: reads.append(k["reason"]) or real(*a, **k))
    report = status_module.build_status(cfg, SnapshotStore(str(tmp_path / "state")), live=live,
                                        from_kernel=from_kernel)
    return report, reads


def test_status_reads_the_kernels_table_within_the_budget(tmp_path, monkeypatch):
    report, reads = status_of(tmp_path, monkeypatch, kernel_entries=6, ready=True)
    assert reads == ["status"] and report["source"] == {"table": "kernel"}
    assert report["templates"] == 2 and report["connections"] == 2


def test_over_the_budget_status_answers_from_the_table_in_memory(tmp_path, monkeypatch):
    report, reads = status_of(tmp_path, monkeypatch, kernel_entries=100, ready=True)
    assert reads == [] and report["source"]["table"] == "in memory"
    assert report["templates"] == 1 and report["templates_by_origin"] == {"SYNC": 1}
    assert report["connections"] == 98  # the counters' connections, not the table's


def test_before_the_table_is_ready_status_over_the_budget_reads_only_the_counters(
        tmp_path, monkeypatch):
    """A backup whose table fills from the sync stream, its kernel's table too large to read
    (lab, under load: status read it for 220 s): the counters, said as such."""
    report, reads = status_of(tmp_path, monkeypatch, kernel_entries=100, ready=False)
    assert reads == []
    assert report["source"] == {"table": "counters", "kernel_entries": 100,
                                "kernel_templates": 2}
    assert report["templates"] == 2 and report["templates_by_origin"] == {"?": 2}
    assert [d["templates"] for d in report["services"][0]["destinations"]] == [1, 1]
    text = render_status(report)
    assert "templates by the kernel's per-real-server counters" in text
    assert "100 entries is over table.read_budget" in text


def test_before_the_table_is_ready_status_within_the_budget_reads_the_kernel(
        tmp_path, monkeypatch):
    report, reads = status_of(tmp_path, monkeypatch, kernel_entries=6, ready=False)
    assert reads == ["status"] and report["source"] == {"table": "kernel"}


def test_status_from_kernel_reads_the_kernels_table_whatever_its_size(tmp_path, monkeypatch):
    for ready in (True, False):
        report, reads = status_of(tmp_path, monkeypatch, kernel_entries=100, ready=ready,
                                  from_kernel=True)
        assert reads == ["status"] and report["source"] == {"table": "kernel"}
        assert report["templates"] == 2
