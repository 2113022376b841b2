"""The reseed planner over IPv6 and mixed-family tables decides as over the IPv4 table
(issue 17): the same snapshot and live table, addresses mapped (tests/unit/ipv6_tables.py)."""

from hypothesis import given, settings
from ipv6_tables import ordered, render, worlds_and_families

from lvs_hooks.reseed.planner import plan_reseed


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_reseed_decides_as_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    # the snapshot: the table's templates; the live table: the other set (a rebooted
    # director's synced templates, some present, some pointing elsewhere)
    want = plan_reseed(v4.templates, 3.0, v4.services, v4.other, min_timeout=5)
    got = plan_reseed(mixed.templates, 3.0, mixed.services, mixed.other, min_timeout=5)
    assert ordered(got.planned) == ordered(mixed.map4(p) for p in want.planned)
    assert got.skipped == want.skipped
