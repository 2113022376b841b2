"""The backup's repair of fwmark templates synced with port 0 (issue 4), and the FIFO reader's
periodic task schedule."""


from lvs_hooks.director.fwmark_repair import RepairState, plan_repairs, take_pending
from lvs_hooks.kernel.model import ConnEntry, Destination, Service

FWM = Service(
    4,
    None,
    None,
    0,
    fwmark=1,
    persistent=True,
    timeout=20,
    destinations=(Destination("10.1.0.11", 5000, "masq"), Destination("10.1.0.12", 5000, "masq")),
)
UDP = Service(
    4,
    "UDP",
    "10.0.0.100",
    5000,
    persistent=True,
    timeout=20,
    destinations=(Destination("10.1.0.11", 5000, "masq"),),
)


def fwm_tpl(caddr, daddr="10.1.0.11", dport=0, expires=18):
    return ConnEntry("IP", caddr, 0, "0.0.0.1", 0, daddr, dport, "ASSURED", expires)


def test_unbound_fwmark_template_is_expired_then_put_back_with_the_port():
    state = RepairState()
    p1 = plan_repairs([fwm_tpl("10.0.0.20", expires=18)], [FWM], state, now=100.0)
    (exp,) = p1.expire
    assert (exp.daddr, exp.dport, exp.timeout, exp.fwmark) == ("10.1.0.11", 5000, 1, 1)
    assert not p1.restore
    # one period later it has expired: put back, bound, with what was left of its life
    p2 = plan_repairs([], [FWM], state, now=102.0)
    (back,) = p2.restore
    assert (back.caddr, back.daddr, back.dport, back.timeout) == ("10.0.0.20", "10.1.0.11", 5000, 16)
    assert back.table_key() == ("IP", "10.0.0.20", "0.0.0.1", 0, "10.1.0.11", 5000)
    assert not state.pending
    # and once bound it is left alone
    p3 = plan_repairs([fwm_tpl("10.0.0.20", dport=5000, expires=16)], [FWM], state, now=103.0)
    assert (p3.expire, p3.restore) == ([], [])


def test_busy_client_is_re_expired_each_period_and_counted_repaired_once_bound():
    state = RepairState()
    for now in (1.0, 2.0, 3.0):  # the master refreshes it every packet: still there, unbound
        p = plan_repairs([fwm_tpl("10.0.0.21", daddr="10.1.0.12", expires=20)], [FWM], state, now)
        assert [t.timeout for t in p.expire] == [1] and not p.restore
    p = plan_repairs([fwm_tpl("10.0.0.21", daddr="10.1.0.12", dport=5000)], [FWM], state, 4.0)
    assert p.repaired == 1 and not state.pending


def test_bound_other_services_invalidated_and_orphans_are_not_touched():
    tpls = [
        fwm_tpl("10.0.0.30", dport=5000),  # bound
        ConnEntry("UDP", "10.0.0.31", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 5),
        fwm_tpl("10.0.0.32", daddr="10.1.0.99"),  # real server gone
        ConnEntry("IP", "10.0.0.33", 0, "0.0.0.1", 0xFFFF, "10.1.0.11", 0xFFFF, "ASSURED", 5),
    ]
    state = RepairState()
    p = plan_repairs(tpls, [FWM, UDP], state, 0.0)
    assert (p.expire, p.restore, state.pending) == ([], [], {})


def test_a_template_counting_down_is_not_re_armed_until_the_master_refreshes_it():
    state = RepairState()
    plan_repairs([fwm_tpl("10.0.0.60", expires=19)], [FWM], state, now=0.0)
    # next period: our 1 s timer runs; sending again would re-arm it for ever
    p = plan_repairs([fwm_tpl("10.0.0.60", expires=1)], [FWM], state, now=0.5)
    assert p.expire == [] and p.counting_down == 1
    p = plan_repairs([fwm_tpl("10.0.0.60", expires=0)], [FWM], state, now=1.0)
    assert p.expire == [] and p.counting_down == 1
    # the master refreshed it (its client sent a packet): set it to expire again
    p = plan_repairs([fwm_tpl("10.0.0.60", expires=20)], [FWM], state, now=1.2)
    assert [t.timeout for t in p.expire] == [1]
    # the true time left is the one seen last before the countdown
    (back,) = plan_repairs([], [FWM], state, now=3.2).restore
    assert back.timeout == 18


def test_takeover_takes_the_pending_repairs_with_port_and_time_left():
    state = RepairState()
    plan_repairs([fwm_tpl("10.0.0.70", expires=15), fwm_tpl("10.0.0.71", expires=1)], [FWM],
                 state, now=50.0)
    entries = take_pending(state, now=52.0)
    assert [(e.caddr, e.dport, e.expires, e.cport) for e in entries] == [
        ("10.0.0.70", 5000, 13, 0)
    ]
    assert state.pending == {}


def test_a_template_whose_life_ran_out_is_not_put_back():
    state = RepairState()
    plan_repairs([fwm_tpl("10.0.0.40", expires=3)], [FWM], state, now=10.0)
    p = plan_repairs([], [FWM], state, now=13.5)
    assert p.restore == [] and p.lapsed == 1


def test_non_persistent_fwmark_service_is_ignored():
    svc = Service(4, None, None, 0, fwmark=1, persistent=False, destinations=FWM.destinations)
    assert plan_repairs([fwm_tpl("10.0.0.50")], [svc], RepairState(), 0.0).expire == []
