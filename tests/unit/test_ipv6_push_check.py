"""A backup's check of a received push over IPv6 and mixed-family tables decides as over the
IPv4 table (issue 17): the same pushed keys, table and connections, addresses mapped
(tests/unit/ipv6_tables.py). Before the fix every check of a table with an IPv6 service raised
on its persistence netmask ("checking the table failed")."""

from hypothesis import given, settings
from ipv6_tables import keys, ordered, render, worlds_and_families

from lvs_hooks.director.push_check import check_push


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_push_check_decides_as_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    # pushed: the other set of templates, as the collector decodes them (keys)
    want = check_push(keys(v4.other), v4.templates, v4.conn_counts, v4.services)
    got = check_push(keys(mixed.other), mixed.templates, mixed.conn_counts, mixed.services)
    assert ordered(got.missing) == ordered(mixed.map4(p) for p in want.missing)
    assert ordered(got.repoint) == ordered(mixed.map4(p) for p in want.repoint)
    assert got.figures() == want.figures()
