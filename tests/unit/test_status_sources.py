"""status.summarize over the two sources it is given: a whole read of the kernel's table
(templates and connections), or the agent's table in memory (templates only) beside the
kernel's per-real-server counters for the connections."""

from test_conntable import H, kline

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
