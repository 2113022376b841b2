from collections import Counter

from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.push import planner as P
from lvs_hooks.reseed.planner import PlannedTemplate

RS1 = Destination("10.1.0.11", 5000, "masq")
RS2 = Destination("10.1.0.12", 5000, "masq")
UDP_SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
                  destinations=(RS1, RS2))
FWM_SVC = Service(4, None, None, 0, fwmark=7, persistent=True, timeout=300,
                  destinations=(Destination("10.1.0.21", 8080, "droute"),))
FWM_SVC_9 = Service(4, None, None, 0, fwmark=9, persistent=True, timeout=300,
                    destinations=(Destination("10.1.0.31", 8080, "tunnel"),
                                  Destination("10.1.0.21", 8080, "droute")))
V6_SVC = Service(6, "TCP", "fd00::100", 443, persistent=True, timeout=600,
                 destinations=(Destination("fd00:1::11", 443, "droute"),))
PLAIN_SVC = Service(4, "TCP", "10.0.0.101", 80, persistent=False, destinations=(RS1,))
MIXED_SVC = Service(4, "TCP", "10.0.0.102", 80, persistent=True, timeout=60,
                    destinations=(Destination("fd00:1::12", 80, "tunnel"),))
PORT0_SVC = Service(4, "TCP", "10.0.0.103", 0, persistent=True, timeout=60,
                    destinations=(Destination("10.1.0.41", 0, "droute"),))
SERVICES = [UDP_SVC, FWM_SVC, V6_SVC, PLAIN_SVC, MIXED_SVC, PORT0_SVC]


def tpl(caddr, daddr="10.1.0.11", dport=5000, expires=300, proto="UDP",
        vaddr="10.0.0.100", vport=5000, pe_name="", pe_data=""):
    return ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, "ASSURED", expires,
                     pe_name, pe_data)


def conn(caddr, cport=40000, state="ESTABLISHED", proto="TCP", vaddr="10.0.0.101", vport=80,
         daddr="10.1.0.11", dport=5000, expires=100):
    return ConnEntry(proto, caddr, cport, vaddr, vport, daddr, dport, state, expires)


def test_fwmark_template_takes_the_real_servers_configured_port():
    # What the kernel's own sync delivers and what a master may hold: protocol IP, dport 0.
    t = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "ASSURED", 200)
    (pt,) = P.plan_push([t], SERVICES).planned
    assert isinstance(pt, PlannedTemplate)
    assert (pt.protocol, pt.fwmark, pt.dport, pt.fwd_method, pt.replace) == (
        "IP", 7, 8080, "droute", False)
    assert pt.table_key() == ("IP", "10.0.0.30", "0.0.0.7", 0, "10.1.0.21", 8080)


def test_timeout_is_what_is_left_at_least_one_second():
    p = P.plan_push([tpl("10.0.0.20", expires=300), tpl("10.0.0.21", expires=1),
                     tpl("10.0.0.22", expires=0)], SERVICES)
    assert [(t.caddr, t.timeout) for t in p.planned] == [
        ("10.0.0.20", 300), ("10.0.0.21", 1), ("10.0.0.22", 1)]
    assert not p.skipped


def test_skips_are_counted_by_reason_with_examples():
    p = P.plan_push([
        tpl("10.0.0.20", vaddr="10.0.0.99"),                                     # no service
        tpl("10.0.0.21", proto="TCP", vaddr="10.0.0.101", vport=80),             # not persistent
        tpl("10.0.0.22", daddr="10.1.0.13"),                                     # server gone
        tpl("10.0.0.23", daddr="10.1.0.11", dport=5001),                         # server port gone
        ConnEntry("IP", "10.0.0.24", 0, "0.0.0.7", 0xFFFF, "10.1.0.21", 0xFFFF, "NONE", 50),
        tpl("10.0.0.25", proto="TCP", vaddr="10.0.0.102", vport=80, daddr="fd00:1::12",
            dport=80),                                                           # mixed family
        tpl("10.0.0.26", pe_name="sip"),                                         # name, no data
        tpl("10.0.0.27", pe_name="sip", pe_data="x" * 256),                      # data too long
        tpl("10.0.0.28"),
    ], SERVICES)
    assert [t.caddr for t in p.planned] == ["10.0.0.28"]
    assert p.skipped == Counter({
        P.SKIP_NO_SERVICE: 1,
        P.SKIP_NOT_PERSISTENT: 1,
        P.SKIP_NO_DEST: 2,
        P.SKIP_INVALIDATED: 1,
        P.SKIP_OTHER_FAMILY: 1,
        P.SKIP_UNENCODABLE: 2,
    })
    assert P.SKIP_NO_SERVICE == "virtual service missing"  # the reseed planner's strings
    assert "10.0.0.22" in p.examples[P.SKIP_NO_DEST][0]
    s = p.summary()
    assert s["planned"] == 1 and s["skipped"][P.SKIP_NO_DEST] == 2
    assert "connections" not in s


def test_duplicates_keep_the_first_and_connections_in_templates_are_ignored():
    p = P.plan_push([
        tpl("10.0.0.20", daddr="10.1.0.11"),
        tpl("10.0.0.20", daddr="10.1.0.12"),
        conn("10.0.0.20", proto="UDP", state="UDP", vaddr="10.0.0.100", vport=5000),
    ], SERVICES)
    assert [(t.caddr, t.daddr) for t in p.planned] == [("10.0.0.20", "10.1.0.11")]
    assert p.skipped == Counter({P.SKIP_DUPLICATE: 1})
    assert not p.connections


def test_sip_templates_with_the_same_client_but_other_call_ids_are_distinct():
    p = P.plan_push([tpl("10.0.0.20", pe_name="sip", pe_data="a@x"),
                     tpl("10.0.0.20", pe_name="sip", pe_data="b@x")], SERVICES)
    assert [(t.pe_name, t.pe_data) for t in p.planned] == [("sip", "a@x"), ("sip", "b@x")]


def test_ipv6_template():
    t = ConnEntry("TCP", "fd00::20", 0, "fd00::100", 443, "fd00:1::11", 443, "NONE", 500)
    (pt,) = P.plan_push([t], SERVICES).planned
    assert (pt.caddr, pt.daddr, pt.dport, pt.timeout, pt.fwd_method) == (
        "fd00::20", "fd00:1::11", 443, 500, "droute")


def test_templates_encode_as_the_reseed_would_send_them():
    from lvs_hooks.push.sender import datagrams_for

    t = ConnEntry("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "ASSURED", 200)
    (msg,) = [syncproto.decode_datagram(d) for d in
              datagrams_for(P.plan_push([t], SERVICES).planned, 0, 1472)]
    (c,) = msg.conns
    assert (c.protocol, c.vaddr, c.vport, c.dport, c.fwmark, c.timeout, c.state) == (
        0, "0.0.0.7", 0, 8080, 7, 200, syncproto.IP_VS_CTPL_S_ASSURED)
    assert c.flags == syncproto.IP_VS_CONN_F_TEMPLATE | syncproto.IP_VS_CONN_F_DROUTE


# ---------------------------------------------------------------------------- connections


def test_connections_are_planned_only_when_given():
    table = [tpl("10.0.0.20"), conn("10.0.0.20", proto="UDP", state="UDP",
                                    vaddr="10.0.0.100", vport=5000)]
    assert not P.plan_push(table, SERVICES).connections
    p = P.plan_push(table, SERVICES, connections=table)
    assert [t.caddr for t in p.planned] == ["10.0.0.20"]
    (c,) = p.connections
    assert (c.af, c.protocol, c.state, c.flags, c.cport, c.vport, c.dport, c.timeout) == (
        4, 17, 0, syncproto.IP_VS_CONN_F_MASQ, 40000, 5000, 5000, 100)
    assert not c.is_template
    assert p.entries() == [*p.planned, c]
    assert p.summary()["connections"] == 1


def test_connection_state_and_inactive_flag_as_the_kernel_keeps_them():
    svc = [PLAIN_SVC]
    est, tw = P.plan_push([], svc, connections=[
        conn("10.0.0.20"), conn("10.0.0.21", state="TIME_WAIT")]).connections
    assert (est.state, est.flags & syncproto.IP_VS_CONN_F_INACTIVE) == (1, 0)
    assert (tw.state, tw.flags & syncproto.IP_VS_CONN_F_INACTIVE) == (
        5, syncproto.IP_VS_CONN_F_INACTIVE)
    assert P.conn_state_number("SCTP", "ESTABLISHED") == 8
    assert P.conn_state_number("TCP", "SYNACK") == 10
    assert P.conn_state_number("TCP", "BOGUS") is None


def test_connection_of_a_fwmark_service_gets_its_mark_when_unambiguous():
    # /proc shows the packet's protocol, address and port, not the mark.
    c = conn("10.0.0.20", vaddr="10.0.0.200", vport=443, daddr="10.1.0.21", dport=8080)
    (sc,) = P.plan_push([], SERVICES, connections=[c]).connections
    assert (sc.fwmark, sc.flags & syncproto.IP_VS_CONN_F_FWD_MASK) == (
        7, syncproto.IP_VS_CONN_F_DROUTE)
    p = P.plan_push([], SERVICES + [FWM_SVC_9], connections=[c])
    assert not p.connections
    assert p.skipped_connections == Counter({P.SKIP_AMBIGUOUS: 1})


def test_connection_skips_by_reason():
    p = P.plan_push([], SERVICES, connections=[
        conn("10.0.0.20", vaddr="10.0.0.99"),                 # no service
        conn("10.0.0.21", daddr="10.1.0.99"),                 # server gone
        conn("10.0.0.22", state="WEIRD"),                     # unknown state
        conn("10.0.0.23", proto="ICMP", state="ICMP"),        # not synced
        conn("10.0.0.24"),
        conn("10.0.0.24"),                                    # duplicate
        conn("10.0.0.25", vaddr="10.0.0.103", vport=22, daddr="10.1.0.41", dport=22),
    ])
    assert [c.caddr for c in p.connections] == ["10.0.0.24", "10.0.0.25"]
    assert p.connections[1].flags & syncproto.IP_VS_CONN_F_FWD_MASK == 3  # port-0 service
    assert p.skipped_connections == Counter({
        P.SKIP_NO_SERVICE: 1, P.SKIP_NO_DEST: 1, P.SKIP_UNKNOWN_STATE: 1,
        P.SKIP_UNENCODABLE: 1, P.SKIP_DUPLICATE: 1})
    assert not p.skipped
