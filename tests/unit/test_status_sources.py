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
