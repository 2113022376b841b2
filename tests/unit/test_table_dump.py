"""table/dumpfile.encode_dump writes the bytes snapshot.encode writes for the table's dump(), and
SnapshotStore reads them back."""

import random

import pytest
from test_table import conn, ingest, tpl_conn

from lvs_hooks.kernel.model import Destination, Service
from lvs_hooks.kernel.syncproto import SyncConn
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.snapshot import SnapshotStore, decode, encode
from lvs_hooks.table import TemplateTable
from lvs_hooks.table.dumpfile import encode_dump

NOW = 1000.0
SERVICES = [
    Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=300,
            destinations=(Destination("10.1.0.11", 5000), Destination("10.1.0.12", 5000))),
    Service(6, None, None, 0, fwmark=9, persistent=True, timeout=60, netmask="64", pe_name="",
            destinations=(Destination("fd00:1::21", 8080, "tunnel"),)),
]


def mixed_table(seed: int) -> TemplateTable:
    rnd = random.Random(seed)
    t = TemplateTable()
    conns = []
    for i in range(3000):
        kind = rnd.randrange(6)
        timeout = rnd.randrange(1, 600)
        if kind == 0:
            c = tpl_conn(f"fd00:2::{i:x}", proto="TCP", vaddr="fd00::100", vport=443,
                         daddr="fd00:1::11", dport=443, timeout=timeout)
        elif kind == 1:
            c = tpl_conn(f"10.3.{i // 256}.{i % 256}", proto="IP", vaddr=None, vport=0,
                         daddr="10.1.0.21", dport=rnd.choice((0, 8080)), fwmark=7, timeout=timeout)
        elif kind == 2:  # PE data is free text: quotes, backslashes, latin-1
            c = tpl_conn(f"10.4.{i // 256}.{i % 256}", vport=5060, dport=5060, pe_name="sip",
                         pe_data=rnd.choice(('a"b', "c\\d", "\xe9t\xe9", "x\ty")) + str(i),
                         timeout=timeout)
        elif kind == 3:  # state NONE, and one the kernel prints as ERR!
            c = SyncConn(**{**tpl_conn(f"10.5.{i // 256}.{i % 256}", timeout=timeout).__dict__,
                            "state": rnd.choice((0, 2))})
        else:
            c = tpl_conn(f"10.2.{i // 256}.{i % 256}", daddr=rnd.choice(("10.1.0.11", "10.1.0.12")),
                         timeout=timeout)
        conns.append(c)
        if rnd.random() < 0.3:
            conns.append(conn(c.caddr, vaddr=c.vaddr, vport=c.vport or 80, daddr=c.daddr))
    half = len(conns) // 2
    ingest(t, conns[:half], origin="SYNC")
    ingest(t, conns[half:])
    t.note_injected([PlannedTemplate("UDP", "10.9.0.1", "10.0.0.100", 5000, "10.1.0.11", 5000, 0,
                                     "masq", 100)], NOW)
    return t


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("later", (0, 0.5, 250))  # some templates have ended by then
def test_the_same_bytes_as_snapshot_encode(seed, later):
    t = mixed_table(seed)
    args = (SERVICES, NOW + later, "lb1", 1795318200.123456)
    snap = t.dump(*args)
    assert snap.templates and any(e.pe_data for e in snap.templates)
    assert encode_dump(t, *args) == encode(snap)


def test_a_copy_taken_under_the_lock_renders_what_the_table_held_then():
    t = mixed_table(0)
    args = (SERVICES, NOW, "lb1", 1795318200.5)
    want = encode_dump(t, *args)
    copy = t.entries()
    # the feeds go on while the copy is rendered: new clients, a new real server
    t.note_injected([PlannedTemplate("UDP", "10.9.9.9", "10.0.0.100", 5000, "10.1.0.99", 5000, 0,
                                     "masq", 100)], NOW)
    assert encode_dump(t, *args, entries=copy) == want != encode_dump(t, *args)


def test_an_empty_table_and_no_services():
    t = TemplateTable()
    assert encode_dump(t, [], NOW, "lb1", 5.0) == encode(t.dump([], NOW, "lb1", 5.0))


def test_the_store_reads_it_back(tmp_path):
    t = mixed_table(9)
    data = encode_dump(t, SERVICES, NOW, "lb1", 1795318200.5)
    back = decode(data, "dump")
    assert back == t.dump(SERVICES, NOW, "lb1", 1795318200.5)
    # and a dump saved by the store today (encode inside) is the same file
    path = SnapshotStore(tmp_path).save(back)
    assert path.read_bytes() == data
