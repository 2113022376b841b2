"""The push planner over IPv6 and mixed-family tables decides as over the IPv4 table (issue 17):
the same templates and connections, addresses mapped (tests/unit/ipv6_tables.py); and what it
plans encodes into sync messages of the right family."""

from hypothesis import given, settings
from ipv6_tables import ordered, render, worlds_and_families

from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.model import wire_template_key
from lvs_hooks.push.planner import plan_push
from lvs_hooks.reseed.runner import to_sync_conn


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_push_decides_as_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    entries4, entries = v4.table.entries, mixed.table.entries
    want = plan_push(entries4, v4.services, connections=entries4)
    got = plan_push(entries, mixed.services, connections=entries)
    assert ordered(got.planned) == ordered(mixed.map4(p) for p in want.planned)
    assert ordered(got.connections) == ordered(mixed.map4(c) for c in want.connections)
    assert got.skipped == want.skipped
    assert got.skipped_connections == want.skipped_connections
    # what is planned goes on the wire in its own family, and the receiver's collector reads
    # back the keys its push check compares with its table
    conns = [to_sync_conn(p) for p in got.planned] + got.connections
    assert all(c.af == (6 if ":" in c.caddr else 4) for c in conns)
    decoded = [c for d in syncproto.encode_datagrams(conns, syncid=51)
               for c in syncproto.decode_datagram(d).conns]
    assert [wire_template_key(c) for c in decoded if c.is_template] == [
        p.table_key() for p in got.planned]
