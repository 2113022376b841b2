"""director.push_check.check_push: a received push against the local table (pure)."""

from lvs_hooks.director.push_check import check_push
from lvs_hooks.kernel.conntable import count_connections_by_client
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.reseed.planner import PlannedTemplate

UDP = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=20,
              destinations=(Destination("10.1.0.11", 5000, "masq"),
                            Destination("10.1.0.12", 5000, "masq")))
NET = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=300,
              netmask="255.255.255.0", destinations=(Destination("10.1.0.11", 80, "droute"),
                                                      Destination("10.1.0.12", 80, "droute")))
FWM = Service(4, None, None, 0, fwmark=20, persistent=True, timeout=600,
              destinations=(Destination("10.1.0.21", 8080, "tunnel"),
                            Destination("10.1.0.22", 8080, "tunnel")))
SERVICES = [UDP, NET, FWM]


def key(caddr, daddr="10.1.0.11", proto="UDP", vaddr="10.0.0.100", vport=5000, dport=5000):
    return (proto, caddr, vaddr, vport, daddr, dport)


def fkey(caddr, daddr="10.1.0.21", dport=8080):
    return ("IP", caddr, "0.0.0.20", 0, daddr, dport)


def live(k, expires=15):
    proto, caddr, vaddr, vport, daddr, dport = k
    return ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, "ASSURED", expires)


def test_present_template_is_only_counted():
    k = key("10.0.0.20")
    c = check_push([k], [live(k)], {}, SERVICES)
    assert (c.pushed, c.present, c.missing, c.repoint, c.stale_in_use, c.unknown) == (
        1, 1, [], [], 0, 0)


def test_missing_template_is_put_back_with_the_service_timeout():
    c = check_push([key("10.0.0.20", daddr="10.1.0.12")], [], {}, SERVICES)
    assert c.missing == [
        PlannedTemplate(protocol="UDP", caddr="10.0.0.20", vaddr="10.0.0.100", vport=5000,
                        daddr="10.1.0.12", dport=5000, fwmark=0, fwd_method="masq", timeout=20)
    ]
    assert c.present == 0 and c.repoint == []


def test_missing_fwmark_template_gets_the_real_servers_port_and_method():
    # as the kernel's own master keys it: port 0
    c = check_push([fkey("10.0.0.30", daddr="10.1.0.22", dport=0)], [], {}, SERVICES)
    (p,) = c.missing
    assert (p.protocol, p.vaddr, p.vport, p.daddr, p.dport, p.fwmark, p.fwd_method,
            p.timeout, p.replace) == ("IP", "0.0.0.20", 0, "10.1.0.22", 8080, 20, "tunnel",
                                      600, False)
    assert p.table_key() == fkey("10.0.0.30", daddr="10.1.0.22")


def test_an_invalidated_local_template_does_not_count_as_present():
    k = key("10.0.0.20")
    dead = live(k)._replace(vport=0xFFFF, dport=0xFFFF)
    c = check_push([k], [dead], {}, SERVICES)
    assert c.present == 0 and [p.caddr for p in c.missing] == ["10.0.0.20"]


def test_stale_template_without_connection_is_repointed_with_replace():
    k = key("10.0.0.20", daddr="10.1.0.12")
    local = live(key("10.0.0.20", daddr="10.1.0.11"))
    # the client has a connection, but to another service: not this template's
    counts = {("10.0.0.20", ("TCP", "10.0.0.100", 80)): 1,
              ("10.0.0.20", ("UDP", "10.0.0.100", 5000)): 0}
    c = check_push([k], [local], counts, SERVICES)
    assert c.repoint == [
        PlannedTemplate(protocol="UDP", caddr="10.0.0.20", vaddr="10.0.0.100", vport=5000,
                        daddr="10.1.0.12", dport=5000, fwmark=0, fwd_method="masq", timeout=20,
                        replace=True)
    ]
    assert (c.present, c.missing, c.stale_in_use) == (0, [], 0)


def test_stale_template_of_a_connected_client_is_left_alone():
    k = key("10.0.0.20", daddr="10.1.0.12")
    local = live(key("10.0.0.20", daddr="10.1.0.11"))
    counts = {("10.0.0.20", ("UDP", "10.0.0.100", 5000)): 2}
    c = check_push([k], [local], counts, SERVICES)
    assert (c.stale_in_use, c.repoint, c.missing, c.present) == (1, [], [], 0)


def test_connections_counted_from_the_table_keep_netmask_and_fwmark_templates():
    # Two connections as /proc shows them: a client of the netmask service (its template
    # holds the masked address) and a marked flow (it shows the VIP it went to, not the mark).
    table = (
        b"Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
        b"TCP C0A80721 D431 0A000064 0050 0A01000B 0050 ESTABLISHED     899\n"
        b"TCP 0A00001E C001 0A000066 01BB 0A010015 1F90 ESTABLISHED     899\n"
    )
    counts = count_connections_by_client(table)
    assert counts == {("192.168.7.33", ("TCP", "10.0.0.100", 80)): 1,
                      ("10.0.0.30", ("TCP", "10.0.0.102", 443)): 1}
    net_key = key("192.168.7.0", daddr="10.1.0.12", proto="TCP", vport=80, dport=80)
    net_local = live(key("192.168.7.0", daddr="10.1.0.11", proto="TCP", vport=80, dport=80))
    f_key = fkey("10.0.0.30", daddr="10.1.0.22")
    f_local = live(fkey("10.0.0.30", daddr="10.1.0.21"))
    idle_key = fkey("10.0.0.31", daddr="10.1.0.22")
    idle_local = live(fkey("10.0.0.31", daddr="10.1.0.21"))
    c = check_push([net_key, f_key, idle_key], [net_local, f_local, idle_local], counts,
                   SERVICES)
    assert c.stale_in_use == 2
    assert [(p.caddr, p.daddr, p.dport, p.replace) for p in c.repoint] == [
        ("10.0.0.31", "10.1.0.22", 8080, True)
    ]


def test_unknown_service_or_real_server_cannot_be_put_in():
    keys = [
        key("10.0.0.20", vaddr="10.0.0.99"),  # no such service
        key("10.0.0.21", daddr="10.1.0.99"),  # no such real server
        fkey("10.0.0.22", daddr="10.1.0.99"),  # fwmark: no real server with that address
        ("IP", "10.0.0.23", "0.0.0.21", 0, "10.1.0.21", 8080),  # no fwmark 21
    ]
    stale_local = live(key("10.0.0.21", daddr="10.1.0.11"))
    c = check_push(keys, [stale_local], {}, SERVICES)
    assert (c.unknown, c.missing, c.repoint, c.present) == (4, [], [], 0)


def test_figures_count_every_kind():
    present = key("10.0.0.1")
    stale_used = key("10.0.0.2", daddr="10.1.0.12")
    stale_idle = key("10.0.0.3", daddr="10.1.0.12")
    keys = [present, key("10.0.0.4"), key("10.0.0.5"), stale_used, stale_idle,
            key("10.0.0.6", vaddr="10.0.0.99")]
    table = [live(present), live(key("10.0.0.2")), live(key("10.0.0.3"))]
    counts = {("10.0.0.2", ("UDP", "10.0.0.100", 5000)): 1}
    c = check_push(iter(keys), iter(table), counts, SERVICES)
    assert c.figures() == {"pushed": 6, "present": 1, "missing": 2, "repoint": 1,
                           "stale_in_use": 1, "unknown": 1}
