from lvs_hooks.director.keeper import clients_in_use, plan_renewals
from lvs_hooks.kernel.model import ConnEntry, Destination, Service

RS = (Destination("10.1.0.11", 5000, "masq"), Destination("10.1.0.12", 5000, "masq"))
UDP = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=20, destinations=RS)
NET = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=300, netmask="255.255.255.0",
              destinations=(Destination("10.1.0.11", 80, "droute"),))
FWM = Service(4, None, None, 0, fwmark=1, persistent=True, timeout=600, destinations=RS)
SERVICES = [UDP, NET, FWM]


def tpl(caddr, expires, proto="UDP", vaddr="10.0.0.100", vport=5000, daddr="10.1.0.11", dport=5000):
    return ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, "ASSURED", expires)


def test_expiring_template_of_a_connected_client_is_renewed_to_persistence_timeout():
    counts = {("10.0.0.20", ("UDP", "10.0.0.100", 5000)): 1}
    p = plan_renewals([tpl("10.0.0.20", 5), tpl("10.0.0.21", 5), tpl("10.0.0.22", 18)],
                      counts, SERVICES, refresh_below=12)
    assert [(t.caddr, t.timeout, t.daddr) for t in p.renew] == [("10.0.0.20", 20, "10.1.0.11")]
    assert p.figures() == {"templates": 3, "expiring": 2, "renewed": 1, "idle": 1,
                           "no_service": 0}


def test_renewal_never_below_the_threshold():
    short = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=5, destinations=RS)
    counts = {("10.0.0.20", ("UDP", "10.0.0.100", 5000)): 1}
    (t,) = plan_renewals([tpl("10.0.0.20", 2)], counts, [short], refresh_below=12).renew
    assert t.timeout == 13


def test_persistence_netmask_maps_clients_to_their_template():
    counts = {("192.168.7.33", ("TCP", "10.0.0.100", 80)): 2}
    assert ("192.168.7.0", NET.key()) in clients_in_use(counts, SERVICES)
    t = tpl("192.168.7.0", 3, proto="TCP", vport=80, dport=80)
    (r,) = plan_renewals([t], counts, SERVICES, refresh_below=12).renew
    assert (r.caddr, r.fwd_method, r.timeout) == ("192.168.7.0", "droute", 300)


def test_fwmark_templates_are_kept_by_connections_of_no_address_service():
    # the connection of a marked flow shows the VIP it went to, not the mark
    counts = {("10.0.0.30", ("UDP", "10.0.0.102", 5000)): 1}
    t = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.1", 0, "10.1.0.12", 5000, "ASSURED", 4)
    (r,) = plan_renewals([t], counts, SERVICES, refresh_below=12).renew
    assert (r.protocol, r.fwmark, r.dport, r.timeout) == ("IP", 1, 5000, 600)


def test_templates_of_gone_services_are_left_alone():
    counts = {("10.0.0.20", ("UDP", "10.0.0.99", 5000)): 1}
    p = plan_renewals([tpl("10.0.0.20", 1, vaddr="10.0.0.99")], counts, [UDP], refresh_below=12)
    assert not p.renew and p.no_service == 1


def test_invalidated_templates_are_not_renewed():
    counts = {("10.0.0.20", ("UDP", "10.0.0.100", 5000)): 1}
    dead = tpl("10.0.0.20", 3)._replace(vport=0xFFFF, dport=0xFFFF)
    assert plan_renewals([dead], counts, SERVICES, refresh_below=12).templates == 0


def test_a_port_zero_services_connections_keep_its_templates():
    # a port-zero service forwards every port; its template has port 0, its connections the
    # packet's port (issue 17's property tests found the keeper counting them for no service)
    any_port = Service(4, "UDP", "10.0.0.101", 0, persistent=True, timeout=60,
                       destinations=(Destination("10.1.0.11", 0, "masq"),))
    counts = {("10.0.0.20", ("UDP", "10.0.0.101", 5353)): 1}
    t = tpl("10.0.0.20", 5, vaddr="10.0.0.101", vport=0, dport=0)
    assert clients_in_use(counts, [any_port]) == {("10.0.0.20", any_port.key())}
    (r,) = plan_renewals([t], counts, [any_port], refresh_below=12).renew
    assert (r.vport, r.dport, r.timeout) == (0, 0, 60)
