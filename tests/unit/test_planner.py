from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.reseed import planner as P

RS1 = Destination("10.1.0.11", 5000, "masq")
RS2 = Destination("10.1.0.12", 5000, "masq")
UDP_SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
                  destinations=(RS1, RS2))
FWM_SVC = Service(4, None, None, 0, fwmark=7, persistent=True, timeout=300,
                  destinations=(Destination("10.1.0.21", 8080, "droute"),))
V6_SVC = Service(6, "TCP", "fd00::100", 443, persistent=True, timeout=600,
                 destinations=(Destination("fd00:1::11", 443, "droute"),))
PLAIN_SVC = Service(4, "TCP", "10.0.0.101", 80, persistent=False, destinations=(RS1,))


def tpl(caddr, daddr="10.1.0.11", dport=5000, expires=300, proto="UDP",
        vaddr="10.0.0.100", vport=5000):
    return ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, "ASSURED", expires)


def plan(templates, elapsed=0, services=(UDP_SVC, FWM_SVC, V6_SVC, PLAIN_SVC), live=(),
         floor=30):
    return P.plan_reseed(templates, elapsed, list(services), list(live), floor)


def test_timeout_is_remaining_life_minus_elapsed():
    p = plan([tpl("10.0.0.20", expires=300)], elapsed=100)
    assert [t.timeout for t in p.planned] == [200]
    assert p.planned[0].fwd_method == "masq"


def test_floor_applies_and_expired_are_dropped():
    p = plan([tpl("10.0.0.20", expires=40), tpl("10.0.0.21", expires=10)], elapsed=20)
    assert [(t.caddr, t.timeout) for t in p.planned] == [("10.0.0.20", 30)]
    assert p.skipped == {P.SKIP_EXPIRED: 1}
    assert "10.0.0.21" in p.examples[P.SKIP_EXPIRED][0]


def test_missing_service_and_missing_real_server_are_reported():
    p = plan([
        tpl("10.0.0.20", vaddr="10.0.0.99"),
        tpl("10.0.0.21", daddr="10.1.0.13"),
        tpl("10.0.0.22", proto="TCP", vaddr="10.0.0.101", vport=80, daddr="10.1.0.11"),
    ])
    assert not p.planned
    assert p.skipped == {P.SKIP_NO_SERVICE: 1, P.SKIP_NO_DEST: 1, P.SKIP_NOT_PERSISTENT: 1}


def test_fwmark_template_takes_the_real_servers_configured_port():
    # What the kernel's own sync delivers: protocol IP, vaddr = mark, dport 0.
    t = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "NONE", 200)
    p = plan([t])
    (pt,) = p.planned
    assert (pt.protocol, pt.fwmark, pt.dport, pt.fwd_method) == ("IP", 7, 8080, "droute")
    assert pt.table_key() == ("IP", "10.0.0.30", "0.0.0.7", 0, "10.1.0.21", 8080)


def test_ipv6_template():
    t = ConnEntry("TCP", "fd00::20", 0, "fd00::100", 443, "fd00:1::11", 443, "NONE", 500)
    (pt,) = plan([t], elapsed=50).planned
    assert (pt.caddr, pt.daddr, pt.timeout, pt.fwd_method) == ("fd00::20", "fd00:1::11", 450,
                                                               "droute")


def test_present_templates_are_not_resent_and_never_repointed():
    live = [tpl("10.0.0.20", daddr="10.1.0.11"), tpl("10.0.0.21", daddr="10.1.0.12")]
    p = plan([tpl("10.0.0.20", daddr="10.1.0.11"), tpl("10.0.0.21", daddr="10.1.0.11"),
              tpl("10.0.0.22")], live=live)
    assert [t.caddr for t in p.planned] == ["10.0.0.22"]
    assert p.skipped == {P.SKIP_PRESENT: 1, P.SKIP_PRESENT_OTHER: 1}


def test_connections_and_duplicates_are_ignored():
    conn = ConnEntry("UDP", "10.0.0.20", 40000, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 300)
    p = plan([conn, tpl("10.0.0.23"), tpl("10.0.0.23")])
    assert [t.caddr for t in p.planned] == ["10.0.0.23"]
    assert sum(p.skipped.values()) == 0


def test_fwmark_template_synced_with_port_zero_is_replaced():
    # On the backup the kernel's sync left <IP, client, 0.0.0.7, 0, rs, 0>: it never binds.
    synced = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "NONE", 50)
    snap = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "NONE", 200)
    (pt,) = plan([snap], live=[synced]).planned
    assert pt.replace and pt.dport == 8080
    bound = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 8080, "NONE", 50)
    assert plan([snap], live=[bound]).skipped == {P.SKIP_PRESENT: 1}


def test_templates_the_kernel_invalidated_are_skipped_and_not_present():
    # ip_vs_check_template rehashes an unusable template with ports 0xffff until it expires
    dead = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0xFFFF, "10.1.0.21", 0xFFFF, "NONE", 50)
    snap = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "NONE", 200)
    p = plan([dead, snap], live=[dead])
    assert p.skipped == {P.SKIP_INVALIDATED: 1}
    assert [(t.caddr, t.replace) for t in p.planned] == [("10.0.0.30", False)]
