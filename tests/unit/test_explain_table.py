"""explain from the agent's table in memory: the agent's answer (explain.table_answer) read back
by the command (TableInput) and explained by the same explain() as a read of /proc, against that
read on the same director. A real /proc file in a temporary tree and real sync datagrams feed a
real LiveTable; the netlink count of the kernel's entries is the one seam replaced."""

import json

import pytest
from test_conntable import H, kline
from test_live_table import Clock, cfg_for, proc_table
from test_table import conn, tpl_conn

from lvs_hooks.director.live import LiveTable
from lvs_hooks.door import Streamed
from lvs_hooks.errors import AgentError
from lvs_hooks.explain import explain, render_explanation
from lvs_hooks.explain_table import TableInput, table_answer
from lvs_hooks.kernel.conntable import parse_conn_table
from lvs_hooks.kernel.model import Destination, Service
from lvs_hooks.kernel.netlink import SyncDaemon
from lvs_hooks.kernel.syncproto import encode_datagrams

SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
              destinations=(Destination("10.1.0.11", 5000),))
TIMEOUTS = {"tcp": 900, "tcpfin": 120, "udp": 300}
MASTER = [SyncDaemon("master", "eth1", 51)]
BACKUP = [SyncDaemon("backup", "eth1", 51)]
LINES = (
    # a template whose client's connection outlives it: re-armed
    kline("UDP", "10.0.0.1", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 40),
    kline("UDP", "10.0.0.1", 40001, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 250),
    # one whose connection ends first: removed at its timer
    kline("UDP", "10.0.0.2", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 300),
    kline("UDP", "10.0.0.2", 40002, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 20),
    # one without a connection
    kline("UDP", "10.0.0.3", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 100),
)


def reconciled(tmp_path, kernel_entries=1000):
    """A master's table in memory, reconciled with the /proc file LINES (over its budget of
    100 entries unless `kernel_entries` says otherwise)."""
    proc_table(tmp_path, *LINES)
    live = LiveTable(cfg_for(tmp_path), clock=Clock(), counts=lambda: kernel_entries)
    live.tick(services=[SVC])
    live.reconcile("test")
    assert live.ready
    return live


def wire(answer):
    """The report as the asker reads it from the agent's answer line (events.inbox)."""
    if isinstance(answer, Streamed):
        return json.loads(b"".join(answer.answer_pieces()))["report"]
    return json.loads(json.dumps({"ok": True, "report": answer}))["report"]


def from_table(answer, daemons, client=None):
    """What the command does with the agent's answer (build_explanation without the kernel)."""
    answer = wire(answer)
    table = TableInput.from_answer(answer)
    assert table is not None
    return explain(table.templates, [SVC], TIMEOUTS, answer["at"], daemons=daemons,
                   client=client, held=table.held)


def test_a_masters_table_explains_as_its_proc_does(tmp_path):
    live = reconciled(tmp_path)
    answer = table_answer(live, [SVC], None)
    assert isinstance(answer, Streamed)  # the whole table: made as it is sent
    table = from_table(answer, MASTER)
    at = wire(answer)["at"]
    kernel = explain(parse_conn_table(H + b"".join(LINES)).entries, [SVC], TIMEOUTS, at,
                     daemons=MASTER)
    assert table["source"] == "in memory" and kernel["source"] == "kernel"
    assert [x["client"] for x in table["templates"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for t, k in zip(table["templates"], kernel["templates"]):
        assert (t["client"], t["then"], t["expires_s"]) == (k["client"], k["then"], k["expires_s"])
        assert abs(t["end_if_idle"] - k["end_if_idle"]) <= 2, t["client"]
    by_client = {x["client"]: x for x in table["templates"]}
    assert by_client["10.0.0.1"]["then"] == "re-armed"
    assert "last connection heard of" in by_client["10.0.0.1"]["then_text"]
    assert 249 <= by_client["10.0.0.1"]["client_connection_ends_in_s"] <= 251
    assert by_client["10.0.0.2"]["then"] == "removed"
    assert by_client["10.0.0.3"]["client_connection_ends_in_s"] is None
    assert wire(answer)["templates_total"] == 3 and wire(answer)["connections_total"] == 997


def test_a_backups_synced_connection_does_not_hold_a_synced_template(tmp_path):
    """Synced connections are never linked (ip_vs_proc_conn): on a backup the client's
    connection heard of does not re-arm its synced template; on a master it counts."""
    live = LiveTable(cfg_for(tmp_path), clock=Clock(), counts=lambda: 1000)
    live.tick(services=[SVC])
    live.ready = True
    for d in encode_datagrams([tpl_conn("10.0.0.7", timeout=30),
                               conn("10.0.0.7", proto=17, state=0, timeout=300)], syncid=0):
        live.ingest(d, "SYNC")
    answer = table_answer(live, [SVC], None)
    on_backup = from_table(answer, BACKUP)["templates"][0]
    on_master = from_table(answer, MASTER)["templates"][0]
    assert on_backup["then"] == "removed" and "never linked" in on_backup["then_text"]
    assert on_master["then"] == "re-armed"
    assert on_backup["client_connection_ends_in_s"] == on_master["client_connection_ends_in_s"]


def test_one_clients_templates_and_nothing_else_cross_the_socket(tmp_path):
    live = reconciled(tmp_path)
    answer = table_answer(live, [SVC], "10.0.0.1")
    assert isinstance(answer, dict)  # a few templates: built whole
    assert [r[1] for r in answer["templates"]] == ["10.0.0.1"]
    assert [h[0] for h in answer["held"]] == ["10.0.0.1"]
    assert answer["templates_total"] == 3
    report = from_table(answer, MASTER, client="10.0.0.1")
    assert [x["client"] for x in report["templates"]] == ["10.0.0.1"]
    text = render_explanation(report)
    assert "from the table in memory" in text
    assert "its client's last connection heard of ends in 2" in text  # 250 s less the read
    assert "controls 0 connections" not in text  # the table does not know them one by one


def test_a_client_is_found_as_its_services_netmask_masks_it(tmp_path):
    masked = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
                     netmask="255.255.255.0", destinations=(Destination("10.1.0.11", 5000),))
    live = LiveTable(cfg_for(tmp_path), clock=Clock(), counts=lambda: 1000)
    live.tick(services=[masked])
    live.ready = True
    for d in encode_datagrams([tpl_conn("10.0.5.0"), tpl_conn("10.0.6.0"),
                               conn("10.0.5.9", proto=17, state=0, timeout=300)], syncid=0):
        live.ingest(d, "SYNC")
    answer = table_answer(live, [masked], "10.0.5.9")
    assert [r[1] for r in answer["templates"]] == ["10.0.5.0"]
    assert [h[:2] for h in answer["held"]] == [["10.0.5.0", ["UDP", "10.0.0.100", 5000]]]


def test_the_agent_says_read_the_kernel_when_its_table_is_not_the_word(tmp_path):
    assert "no table" in table_answer(None, [SVC], None)["read_kernel"]
    live = reconciled(tmp_path)
    live.ready = False
    assert "not the table yet" in table_answer(live, [SVC], None)["read_kernel"]
    small = reconciled(tmp_path, kernel_entries=50)
    assert "within table.read_budget" in table_answer(small, [SVC], None)["read_kernel"]
    assert TableInput.from_answer({"read_kernel": "why"}) is None


@pytest.mark.parametrize("answer", [
    {"at": 1.0, "templates": [["UDP", "10.0.0.1"]], "held": [], "templates_total": 1,
     "connections_total": 0},
    {"at": 1.0, "templates": [], "held": [["10.0.0.1", ["UDP"]]], "templates_total": 0,
     "connections_total": 0},
    {"templates": [], "held": [], "templates_total": 0, "connections_total": 0},
    {"at": "soon", "templates": [], "held": [], "templates_total": 0, "connections_total": 0},
])
def test_an_answer_that_is_not_one_is_an_agent_error(answer):
    with pytest.raises(AgentError):
        TableInput.from_answer(answer)
