"""The backup's fwmark repair over IPv6 and mixed-family tables decides as over the IPv4 table
(issue 17): two periods, the same templates with addresses mapped (tests/unit/ipv6_tables.py)."""

from hypothesis import given, settings
from ipv6_tables import ordered, render, worlds_and_families

from lvs_hooks.director.fwmark_repair import RepairState, plan_repairs, take_pending
from lvs_hooks.kernel.model import template_id


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_fwmark_repair_decides_as_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    s4, sm = RepairState(), RepairState()
    # a period, then one 2 s later over another read (what expired, what came meanwhile)
    for now, t4, tm in ((100.0, v4.templates, mixed.templates), (102.0, v4.other, mixed.other)):
        want = plan_repairs(t4, v4.services, s4, now)
        got = plan_repairs(tm, mixed.services, sm, now)
        assert ordered(got.expire) == ordered(mixed.map4(p) for p in want.expire)
        assert ordered(got.restore) == ordered(mixed.map4(p) for p in want.restore)
        assert got.figures() == want.figures()
        assert sorted(sm.pending) == sorted(template_id(mixed.map4(p.target))
                                            for p in s4.pending.values())
    assert ordered(take_pending(sm, 103.0)) == ordered(
        mixed.map4(t) for t in take_pending(s4, 103.0))
