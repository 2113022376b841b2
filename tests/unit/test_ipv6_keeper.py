"""The keeper over IPv6 and mixed-family tables decides as over the IPv4 table (issue 17): the
same templates and connections, addresses mapped, the per-client counts read from the table as
the director reads them (tests/unit/ipv6_tables.py)."""

from hypothesis import given, settings
from ipv6_tables import ordered, render, worlds_and_families

from lvs_hooks.director.keeper import clients_in_use, plan_renewals


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_keeper_decides_as_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    want = plan_renewals(v4.templates, v4.conn_counts, v4.services, refresh_below=100)
    got = plan_renewals(mixed.templates, mixed.conn_counts, mixed.services, refresh_below=100)
    assert ordered(got.renew) == ordered(mixed.map4(p) for p in want.renew)
    assert got.figures() == want.figures()


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_clients_in_use_map_with_their_service(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    used4 = clients_in_use(v4.conn_counts, v4.services)
    used = clients_in_use(mixed.conn_counts, mixed.services)
    assert used == {(mixed.client(k, c), mixed.service_key(k)) for c, k in used4}
