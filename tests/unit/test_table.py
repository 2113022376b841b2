"""table/store.TemplateTable: the table in memory against what the kernel would show in /proc.

Datagrams are golden captures or made by kernel/syncproto's encoder; what the kernel would show is
written as /proc lines (verbatim, or with test_conntable.kline, the kernel's printf formats) and
parsed by kernel/conntable: the table must give the same ConnEntry fields.
"""

import random

import pytest
from test_conntable import HS, H, kline
from test_syncproto import GOLDEN, load_golden

from lvs_hooks.kernel import syncproto as sp
from lvs_hooks.kernel.conntable import count_connections_by_client, parse_conn_table
from lvs_hooks.kernel.model import template_id
from lvs_hooks.kernel.syncproto import SyncConn, encode_datagrams, template_conn
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.table import TemplateTable

NOW = 1000.0


def golden(name):
    return load_golden(GOLDEN / name)[0]


def ingest(table, conns, now=NOW, **kw):
    for d in encode_datagrams(conns, syncid=1):
        table.ingest(d, now, **kw)
    return table


def tpl_conn(caddr, daddr="10.1.0.11", dport=5000, timeout=300, proto="UDP", vaddr="10.0.0.100",
             vport=5000, fwd="masq", **kw):
    return template_conn(protocol=proto, caddr=caddr, vaddr=vaddr, vport=vport, daddr=daddr,
                         dport=dport, fwd_method=fwd, timeout=timeout, **kw)


def conn(caddr, cport=40000, proto=6, state=1, timeout=900, vaddr="10.0.0.100", vport=5000,
         daddr="10.1.0.11", dport=5000, flags=0, fwmark=0):
    af = 6 if ":" in caddr else 4
    return SyncConn(af=af, protocol=proto, flags=flags, state=state, cport=cport, vport=vport,
                    dport=dport, fwmark=fwmark, timeout=timeout, caddr=caddr, vaddr=vaddr, daddr=daddr)


def by_id(entries):
    return sorted(entries, key=lambda e: (template_id(e), e.pe_data))


# ---------------------------------------------------------------- what the kernel would show

# What /proc/net/ip_vs_conn of a 6.1 backup holds half a second after receiving the lab's
# capture of a kernel master (golden v1_kernel_master_capture_6.1): three templates, each last
# updated to state 1 (ASSURED) with 300 s; the fwmark one as the master keys it (protocol IP,
# the mark as ToIP, port 0); the connections with their last timeouts (TCP: TIME_WAIT, 120 s).
CAPTURE_AS_BACKUP_SHOWS = (
    b"UDP 0A000014 0000 0A000064 1388 0A01000C 1388 ASSURED         299\n"
    b"IP  0A000016 0000 00000001 0000 0A01000C 0000 ASSURED         299\n"
    b"TCP 0A000015 0000 0A000064 1388 0A01000C 1388 ASSURED         299\n"
    b"UDP 0A000014 C2A3 0A000064 1388 0A01000C 1388 UDP             299\n"
    b"UDP 0A000016 8A96 0A000066 1388 0A01000C 1388 UDP             299\n"
    b"TCP 0A000015 C2B5 0A000064 1388 0A01000C 1388 TIME_WAIT       119\n"
)


def test_the_kernel_masters_capture_gives_what_a_backup_shows():
    t = TemplateTable()
    assert t.ingest(golden("v1_kernel_master_capture_6.1.txt"), NOW) == 22
    proc = parse_conn_table(H + CAPTURE_AS_BACKUP_SHOWS)
    assert by_id(t.templates(NOW + 0.5)) == by_id(proc.templates)
    assert t.client_counts(NOW + 0.5) == count_connections_by_client(H + CAPTURE_AS_BACKUP_SHOWS)
    assert len(t) == 3 and t.client_keys == 3
    s = t.stats
    assert (s.templates_new, s.templates_updated, s.connections, s.malformed) == (3, 14, 5, 0)


def test_origin_is_what_ip_vs_conn_sync_would_show():
    t = TemplateTable()
    t.ingest(golden("v1_master_resend_reconstructed.txt"), NOW, origin="SYNC")
    t.ingest(golden("v1_injector_6j_udp_template_assured.txt"), NOW, origin="LOCAL")
    t.ingest(golden("v1_master_resend_reconstructed.txt"), NOW, origin="LOCAL")  # exists: stays SYNC
    lines = (kline("UDP", "10.0.0.10", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 360, origin="SYNC")
             + kline("UDP", "10.0.0.87", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 3000, origin="LOCAL"))
    assert by_id(t.templates(NOW)) == by_id(parse_conn_table(HS + lines).templates)


def ends(t, now):
    return [e.expires for e in t.templates(now)]


def test_a_masters_own_template_restarts_only_for_a_new_connection():
    # What a master captures from its own kernel: the template with every packet, always with
    # its whole timeout; its kernel restarts the timer only for a new connection
    # (ip_vs_sched_persist). UDP connections live 20 s without a packet here.
    t = TemplateTable()
    t.use_timeouts(udp=20)
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")  # new client, new conn
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + 10, origin="LOCAL")  # the same conn
    assert ends(t, NOW + 10) == [20]
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + 25, origin="LOCAL")  # still alive
    assert ends(t, NOW + 25) == [5]
    # heard as a backup, every message restarts it, as the backup's kernel does
    b = TemplateTable()
    for at in (0, 10, 25):
        ingest(b, [tpl_conn("10.0.0.20", timeout=30)], NOW + at, origin="SYNC")
    assert ends(b, NOW + 25) == [30]


def test_a_master_packet_after_its_connection_ended_is_a_new_connection():
    t = TemplateTable()
    t.use_timeouts(udp=20)
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")
    # 21 s without a packet: the connection has ended in the kernel, this one is new
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + 21, origin="LOCAL")
    assert ends(t, NOW + 21) == [30]
    # the kernel's default UDP timeout is 300 s: the same packet would be the old connection's
    d = TemplateTable()
    ingest(d, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")
    ingest(d, [tpl_conn("10.0.0.20", timeout=30)], NOW + 21, origin="LOCAL")
    assert ends(d, NOW + 21) == [9]


def test_a_masters_re_arm_gives_its_template_60_s():
    # ip_vs_conn_expire: a template that still controls connections at its end lives on 60 s
    # and is sent once more with that timeout, up to the sync thread's flush delay late
    t = TemplateTable()
    t.use_timeouts(udp=20)
    for at in (0, 15, 25):  # one connection's packets
        ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + at, origin="LOCAL")
    ingest(t, [tpl_conn("10.0.0.20", timeout=60)], NOW + 28, origin="LOCAL")  # before its end
    assert ends(t, NOW + 28) == [60]
    u = TemplateTable()
    u.use_timeouts(udp=20)
    for at in (0, 15, 25):
        ingest(u, [tpl_conn("10.0.0.20", timeout=30)], NOW + at, origin="LOCAL")
    assert ends(u, NOW + 30) == []  # ended here; the re-arm's message brings it back
    ingest(u, [tpl_conn("10.0.0.20", timeout=60)], NOW + 31, origin="LOCAL")
    assert ends(u, NOW + 31) == [60]
    # 60 s long before its end is not a re-arm: a packet of a connection it had
    ingest(u, [tpl_conn("10.0.0.20", timeout=60)], NOW + 40, origin="LOCAL")
    assert ends(u, NOW + 40) == [51]


def test_a_template_whose_connection_outlives_it_is_re_armed_without_a_message():
    # A director that was master: its kernel re-arms its own templates (60 s, again while the
    # connection lives) and sends nothing once it is backup. Measured in the lab's churn: the
    # table let them go, the next master scheduled the returning client anew, and the table
    # took that real server while the kernel kept its own.
    t = TemplateTable()
    t.use_timeouts(udp=50)
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + 20, origin="LOCAL")  # lives to 70
    assert t.expire(NOW + 30) == (0, 0) and ends(t, NOW + 30) == [60]  # re-armed at 30
    assert t.expire(NOW + 89) == (0, 0) and ends(t, NOW + 89) == [1]  # at 90 it is over
    assert t.expire(NOW + 90) == (1, 0) and t._inbound == {}
    # a long pause: every re-arm due meanwhile at once
    u = TemplateTable()
    u.use_timeouts(udp=200)
    ingest(u, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")
    assert u.expire(NOW + 100) == (0, 0) and ends(u, NOW + 100) == [110]  # 30, 90, 150, 210
    # heard, not captured: no connection of ours behind it, it ends
    b = ingest(TemplateTable(), [tpl_conn("10.0.0.20", timeout=30)], origin="SYNC")
    assert b.expire(NOW + 30) == (1, 0)


def test_a_former_masters_template_lives_on_while_the_next_master_syncs_its_connection():
    # Once backup, the connection behind such a template lives on in its kernel while the next
    # master's messages about it come (ip_vs_proc_conn restarts an existing connection's timer),
    # so its kernel goes on re-arming the template. Lab, churn under a CPU hog: the table let
    # them go at their second re-arm, the next master's template for the returning client came
    # with another real server, and the kernel kept its own.
    t = TemplateTable()
    t.use_timeouts(udp=50)
    ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW, origin="LOCAL")  # connection to 50
    assert t.expire(NOW + 30) == (0, 0) and ends(t, NOW + 30) == [60]  # re-armed to 90
    ingest(t, [conn("10.0.0.20", proto=17, state=0, timeout=50)], NOW + 45)  # heard: to 95
    assert t.expire(NOW + 90) == (0, 0) and ends(t, NOW + 90) == [60]  # re-armed to 150
    ingest(t, [tpl_conn("10.0.0.20", daddr="10.1.0.12", timeout=30)], NOW + 100)
    assert [e.daddr for e in t.templates(NOW + 100)] == ["10.1.0.11"]  # never re-pointed
    # a connection heard for a client whose template was not made here changes nothing
    b = ingest(TemplateTable(), [tpl_conn("10.0.0.20", timeout=30)], origin="SYNC")
    ingest(b, [conn("10.0.0.20", proto=17, state=0, timeout=50)], NOW + 10)
    assert b._inbound == {} and b.expire(NOW + 30) == (1, 0)


def test_a_connection_heard_after_the_former_masters_own_one_ended_re_arms_nothing():
    # ip_vs_proc_conn makes a new connection when its own copy has ended, and attaches it to no
    # template (design.md 2.7): the kernel lets the template go at its next end. Lab, churn: the
    # next master synced each UDP connection every 50 packets, the former master's own copy had
    # ended 20 s after the handover, and the table re-armed 5 to 20 templates 60 s longer.
    t = TemplateTable()
    t.use_timeouts(udp=20)
    for at in (0, 15):  # the last packet while master: its connection lives to 35
        ingest(t, [tpl_conn("10.0.0.20", timeout=30)], NOW + at, origin="LOCAL")
    assert t.expire(NOW + 30) == (0, 0) and ends(t, NOW + 30) == [60]  # re-armed to 90
    ingest(t, [conn("10.0.0.20", proto=17, state=0, timeout=20)], NOW + 75)  # heard: a new one
    assert ends(t, NOW + 89) == [1]
    assert t.expire(NOW + 90) == (1, 0) and t._inbound == {}
    # heard each time while its own still lived (35, then 54, 70, 88): its own lives to 105,
    # re-armed at 90 as before
    u = TemplateTable()
    u.use_timeouts(udp=20)
    for at in (0, 15):
        ingest(u, [tpl_conn("10.0.0.20", timeout=30)], NOW + at, origin="LOCAL")
    for at in (34, 50, 68, 85):
        ingest(u, [conn("10.0.0.20", proto=17, state=0, timeout=20)], NOW + at)
    assert u.expire(NOW + 90) == (0, 0) and ends(u, NOW + 90) == [60]
    # one more after it ended (at 120, it lived to 105) re-arms nothing: gone at 150
    ingest(u, [conn("10.0.0.20", proto=17, state=0, timeout=20)], NOW + 120)
    assert u.expire(NOW + 150).templates == 1 and ends(u, NOW + 150) == []


def test_tcp_connections_live_idle_as_long_as_the_longest_of_their_states():
    t = TemplateTable()
    t.use_timeouts(tcp=60, tcpfin=30)  # TIME_WAIT and others: 120 s, fixed
    ingest(t, [tpl_conn("10.0.0.20", proto="TCP", timeout=300)], NOW, origin="LOCAL")
    ingest(t, [tpl_conn("10.0.0.20", proto="TCP", timeout=300)], NOW + 119, origin="LOCAL")
    assert ends(t, NOW + 119) == [181]
    ingest(t, [tpl_conn("10.0.0.20", proto="TCP", timeout=300)], NOW + 240, origin="LOCAL")
    assert ends(t, NOW + 240) == [300]
    assert t.expire(NOW + 540) == (1, 0) and t._inbound == {}  # let go with its template


def test_ipv4_ipv6_fwmark_and_pe_templates_as_proc_shows_them():
    conns = [
        tpl_conn("10.0.0.20", timeout=300),
        tpl_conn("fd00::20", proto="TCP", vaddr="fd00::100", vport=443, daddr="fd00:1::11", dport=443,
                 fwd="droute", timeout=600),
        # fwmark templates as the kernel master keys them (port 0) and as lvs-hooks sends them
        tpl_conn("10.0.0.30", proto="IP", vaddr=None, vport=0, daddr="10.1.0.21", dport=0, fwmark=7),
        tpl_conn("fd00::30", proto="IP", vaddr=None, vport=0, daddr="fd00:1::21", dport=8080, fwmark=9,
                 timeout=120),
        tpl_conn("10.0.0.40", proto="UDP", vport=5060, dport=5060, pe_name="sip", pe_data="call-1@\xe9x"),
        conn("10.0.0.20", proto=17, state=0, timeout=300),
        conn("fd00::20", vaddr="fd00::100", vport=443, daddr="fd00:1::11", dport=443),
    ]
    t = ingest(TemplateTable(), conns)
    proc = (
        kline("UDP", "10.0.0.20", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 290)
        + kline("TCP", "fd00::20", 0, "fd00::100", 443, "fd00:1::11", 443, "ASSURED", 590)
        + kline("IP", "10.0.0.30", 0, "0.0.0.7", 0, "10.1.0.21", 0, "ASSURED", 290)
        + kline("IP", "fd00::30", 0, "0:9::", 0, "fd00:1::21", 8080, "ASSURED", 110)
        + kline("UDP", "10.0.0.40", 0, "10.0.0.100", 5060, "10.1.0.11", 5060, "ASSURED", 290,
                pe=" sip call-1@\xe9x")
        + kline("UDP", "10.0.0.20", 40000, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 290)
        + kline("TCP", "fd00::20", 40000, "fd00::100", 443, "fd00:1::11", 443, "ESTABLISHED", 890)
    )
    # /proc prints PE data as raw bytes (kline encodes its text as UTF-8)
    data = H + proc.replace("\xe9".encode(), "\xe9".encode("latin-1"))
    parsed = parse_conn_table(data)
    assert parsed.malformed == 0
    assert by_id(t.templates(NOW + 10)) == by_id(parsed.templates)
    assert t.client_counts(NOW + 10) == count_connections_by_client(data)
    assert t.counts_by_dest(NOW) == {
        (("UDP", "10.0.0.100", 5000), "10.1.0.11", 5000): 1,
        (("TCP", "fd00::100", 443), "fd00:1::11", 443): 1,
        (("fwmark", 4, 7), "10.1.0.21", 0): 1,
        (("fwmark", 6, 9), "fd00:1::21", 8080): 1,
        (("UDP", "10.0.0.100", 5060), "10.1.0.11", 5060): 1,
    }


# ---------------------------------------------------------------- updates: never re-pointed


def test_a_message_for_an_existing_template_never_repoints_it():
    t = ingest(TemplateTable(), [tpl_conn("10.0.0.20", daddr="10.1.0.11", timeout=300)])
    # docs/design.md 3.6: another real server, a new timeout, state NONE
    other = tpl_conn("10.0.0.20", daddr="10.1.0.12", timeout=40)
    ingest(t, [SyncConn(**{**other.__dict__, "state": sp.IP_VS_CTPL_S_NONE})], now=NOW + 100)
    (e,) = t.templates(NOW + 100)
    assert (e.daddr, e.expires, e.state) == ("10.1.0.11", 40, "NONE")
    assert t.stats.templates_updated == 1
    # once it has ended (in the kernel as here), the same message makes a new one
    ingest(t, [other], now=NOW + 140)
    (e,) = t.templates(NOW + 140)
    assert (e.daddr, e.expires, e.state) == ("10.1.0.12", 40, "ASSURED")


def test_pe_templates_are_keyed_by_their_call_id_too():
    a = tpl_conn("10.0.0.40", vport=5060, dport=5060, pe_name="sip", pe_data="call-a")
    b = tpl_conn("10.0.0.40", vport=5060, dport=5060, daddr="10.1.0.12", pe_name="sip", pe_data="call-b")
    t = ingest(TemplateTable(), [a, b, tpl_conn("10.0.0.40", vport=5060, dport=5060, daddr="10.1.0.12",
                                                pe_name="sip", pe_data="call-a", timeout=10)])
    assert sorted((e.pe_data, e.daddr, e.expires) for e in t.templates(NOW)) == [
        ("call-a", "10.1.0.11", 10), ("call-b", "10.1.0.12", 300)]


# ---------------------------------------------------------------- lifetime


def test_an_entry_is_gone_at_its_deadline_and_expire_lets_it_go():
    t = ingest(TemplateTable(), [tpl_conn("10.0.0.20", timeout=10), conn("10.0.0.21", timeout=20)])
    assert [e.expires for e in t.templates(NOW + 9.999)] == [0]
    assert list(t.templates(NOW + 10)) == [] and len(t) == 1
    assert t.expire(NOW + 10) == (1, 0) and len(t) == 0
    assert t.client_counts(NOW + 19.5) == {("10.0.0.21", ("TCP", "10.0.0.100", 5000)): 1}
    assert t.client_counts(NOW + 20) == {}
    assert t.expire(NOW + 21) == (0, 1) and t.client_keys == 0


def test_timeouts_a_message_does_not_carry_are_the_kernels_defaults():
    # v1 timeout 0: a template 180 s, a connection its state's (ip_vs_proc_conn)
    t = ingest(TemplateTable(), [
        SyncConn(**{**tpl_conn("10.0.0.20").__dict__, "timeout": 0}),
        conn("10.0.0.21", state=5, timeout=0),  # TIME_WAIT: 120 s
        conn("10.0.0.22", proto=17, state=0, timeout=0, cport=1),  # UDP: 300 s
    ])
    assert [e.expires for e in t.templates(NOW)] == [180]
    assert set(t.client_counts(NOW + 119)) == {("10.0.0.21", ("TCP", "10.0.0.100", 5000)),
                                              ("10.0.0.22", ("UDP", "10.0.0.100", 5000))}
    assert set(t.client_counts(NOW + 120)) == {("10.0.0.22", ("UDP", "10.0.0.100", 5000))}
    # v0 carries no timeout at all: the same defaults
    v0 = TemplateTable()
    v0.ingest(golden("v0_template_and_seq_connection_handmade.txt"), NOW)
    assert [e.expires for e in v0.templates(NOW)] == [180]
    assert v0.client_counts(NOW + 899) == {("10.0.0.10", ("TCP", "10.0.0.100", 21)): 1}  # ESTABLISHED
    assert v0.client_counts(NOW + 900) == {}


def test_a_clients_deadline_only_grows():
    # One connection ESTABLISHED (900 s), then another of the same client closing (10 s): the
    # table does not know they are two, so the longer one holds (docs/design.md 2.7).
    t = ingest(TemplateTable(), [conn("10.0.0.21", cport=1000), conn("10.0.0.21", cport=1001, state=6, timeout=10)])
    assert t.client_counts(NOW + 899) and not t.client_counts(NOW + 900)


def test_connections_of_unknown_protocols_or_states_are_skipped_as_the_kernel_skips_them():
    t = ingest(TemplateTable(), [conn("10.0.0.21", state=11), conn("10.0.0.22", proto=47)])
    assert t.client_keys == 0 and t.stats.skipped == 2
    assert t.footprint()["virtual_keys"] == 0  # what the kernel skips leaves nothing behind


def test_busy_templates_cost_the_wheel_nothing():
    # A master re-sends a busy client's template at every packet (docs/design.md 3.8): a second's
    # re-sends for an hour must not pile up references to the same keys.
    t = TemplateTable()
    datagrams = encode_datagrams([tpl_conn(f"10.0.{i // 256}.{i % 256}", timeout=300)
                                  for i in range(200)], syncid=1)
    for s in range(3600):
        for d in datagrams:
            t.ingest(d, NOW + s)
        if s % 7 == 0:
            t.expire(NOW + s)
    assert len(t) == 200 and t.footprint()["wheel_refs"] <= 2 * 200


@pytest.mark.parametrize("seed", range(4))
def test_random_feeds_against_a_plain_model(seed):
    """Random templates, updates (later, earlier, other real servers), injections, expiry: the
    table's answers against a dict that applies the kernel's rules the obvious way."""
    rnd = random.Random(seed)
    t = TemplateTable()
    model = {}  # caddr -> (daddr, deadline)
    clients = [f"10.0.{i // 256}.{i % 256}" if i % 5 else f"fd00::{i + 1:x}" for i in range(60)]
    now = NOW
    for _step in range(400):
        now += rnd.choice((0, 0.25, 1, 3, 17))
        for c in list(model):
            if model[c][1] <= now:
                del model[c]
        c = rnd.choice(clients)
        v6 = ":" in c
        daddr = rnd.choice(("fd00:1::11", "fd00:1::12") if v6 else ("10.1.0.11", "10.1.0.12"))
        timeout = rnd.choice((1, 2, 5, 30, 300))
        vaddr = "fd00::100" if v6 else "10.0.0.100"
        if rnd.random() < 0.8:
            ingest(t, [tpl_conn(c, vaddr=vaddr, daddr=daddr, timeout=timeout)], now=now)
            repoint = False
        else:
            repoint = rnd.random() < 0.3
            t.note_injected([PlannedTemplate("UDP", c, vaddr, 5000, daddr, 5000, 0, "masq", timeout,
                                             replace=repoint)], now)
        old = model.get(c)
        model[c] = (daddr if old is None or repoint else old[0], now + timeout)
        if rnd.random() < 0.3:
            t.expire(now)
            assert len(t) == len(model)
        got = {e.caddr: (e.daddr, e.expires) for e in t.templates(now)}
        assert got == {k: (d, int(dl - now)) for k, (d, dl) in model.items()}
        below = {e.caddr for e in t.templates(now, below=10)}
        assert below == {k for k, (_, dl) in model.items() if dl - now < 10}


# ---------------------------------------------------------------- bad datagrams


def test_malformed_datagrams_are_counted_never_raised():
    rnd = random.Random(7)
    good = encode_datagrams([tpl_conn(f"10.0.0.{i}") for i in range(1, 6)], syncid=1)[0]
    t = TemplateTable()
    for _ in range(2000):
        bad = bytearray(good)
        for _ in range(rnd.randrange(1, 6)):
            bad[rnd.randrange(len(bad))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            bad = bad[: rnd.randrange(len(bad))]
        t.ingest(bytes(bad), NOW)
        t.ingest(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 60))), NOW)
    assert t.stats.datagrams == 4000 and t.stats.malformed > 1000
    assert t.stats.last_error


def test_the_entries_before_a_fault_are_kept_as_the_kernel_keeps_them():
    data = bytearray(encode_datagrams([tpl_conn(f"10.0.0.{i}") for i in range(1, 6)], syncid=1)[0])
    data[8 + 2 * 36] = 2  # the third entry's type: unknown, the rest is dropped
    t = TemplateTable()
    assert t.ingest(bytes(data), NOW) == 2
    assert sorted(e.caddr for e in t.templates(NOW)) == ["10.0.0.1", "10.0.0.2"]
    assert t.stats.malformed == 1 and "type" in t.stats.last_error
    assert t.ingest(bytes(data[:-1]), NOW) == 0 and t.stats.malformed == 2  # size: all dropped


def test_a_table_with_a_syncid_takes_only_that_one():
    t = TemplateTable(syncid=51)
    t.ingest(golden("v1_fwmark_template_handmade.txt"), NOW)  # syncid 42
    t.ingest(golden("v1_master_resend_reconstructed.txt"), NOW)  # syncid 51
    assert [e.caddr for e in t.templates(NOW)] == ["10.0.0.10"] and t.stats.other_syncid == 1


# ---------------------------------------------------------------- injections


def planned(caddr, daddr="10.1.0.11", timeout=300, replace=False, **kw):
    base = dict(protocol="UDP", caddr=caddr, vaddr="10.0.0.100", vport=5000, daddr=daddr, dport=5000,
                fwmark=0, fwd_method="droute", timeout=timeout, replace=replace)
    return PlannedTemplate(**{**base, **kw})


def test_injections_follow_the_same_rule_unless_planned_as_a_replacement():
    t = TemplateTable()
    t.ingest(golden("v1_injector_6a_udp_template_state_none.txt"), NOW, origin="LOCAL")  # 10.0.0.77 NONE
    assert t.note_injected([
        planned("10.0.0.77", daddr="10.1.0.11", timeout=40),  # exists: timeout and ASSURED only
        planned("10.0.0.78", timeout=60),  # new: SYNC, as the kernel shows what a backup daemon made
        planned("fd00::79", vaddr="fd00::100", daddr="fd00:1::11", timeout=50),
        planned("10.0.0.80", protocol="IP", vaddr="0.0.0.7", vport=0, fwmark=7, daddr="10.1.0.21", dport=8080),
        planned("10.0.0.81", pe_name="sip", pe_data="call-9"),
    ], NOW) == 5
    got = {(e.caddr, e.pe_data): (e.daddr, e.dport, e.expires, e.state, e.origin) for e in t.templates(NOW)}
    assert got == {
        ("10.0.0.77", ""): ("10.1.0.12", 5000, 40, "ASSURED", "LOCAL"),
        ("10.0.0.78", ""): ("10.1.0.11", 5000, 60, "ASSURED", "SYNC"),
        ("fd00::79", ""): ("fd00:1::11", 5000, 50, "ASSURED", "SYNC"),
        ("10.0.0.80", ""): ("10.1.0.21", 8080, 300, "ASSURED", "SYNC"),
        ("10.0.0.81", "call-9"): ("10.1.0.11", 5000, 300, "ASSURED", "SYNC"),
    }
    # a replacement, as the inject path sends it: 1 s first, then the new one after it is gone
    t.note_injected([planned("10.0.0.77", daddr="10.1.0.11", timeout=1)], NOW + 1)
    assert [e.expires for e in t.templates(NOW + 1.5) if e.caddr == "10.0.0.77"] == [0]
    t.note_injected([planned("10.0.0.77", daddr="10.1.0.11", timeout=30, replace=True)], NOW + 2.1)
    (e,) = [e for e in t.templates(NOW + 3) if e.caddr == "10.0.0.77"]
    assert (e.daddr, e.expires, e.origin) == ("10.1.0.11", 29, "SYNC")


# ---------------------------------------------------------------- reconcile


def test_reconcile_reports_how_far_the_table_was_and_takes_procs_view():
    t = ingest(TemplateTable(), [
        tpl_conn("10.0.0.1", timeout=300),  # the same in /proc
        tpl_conn("10.0.0.2", timeout=300),  # another real server in /proc
        tpl_conn("10.0.0.3", timeout=300),  # gone from /proc
        tpl_conn("10.0.0.5", timeout=300),  # /proc says 100 s left
        tpl_conn("10.0.0.6", timeout=5),  # ended here before the read: not counted as dropped
        conn("10.0.0.1"), conn("10.0.0.3"),
    ], origin="SYNC")
    proc = (
        kline("UDP", "10.0.0.1", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 289)
        + kline("UDP", "10.0.0.2", 0, "10.0.0.100", 5000, "10.1.0.12", 5000, "ASSURED", 289)
        + kline("UDP", "10.0.0.4", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "NONE", 50)
        + kline("UDP", "10.0.0.5", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 100)
        + kline("TCP", "10.0.0.1", 40000, "10.0.0.100", 5000, "10.1.0.11", 5000, "ESTABLISHED", 700)
        + kline("TCP", "10.0.0.9", 40000, "10.0.0.100", 5000, "10.1.0.11", 5000, "ESTABLISHED", 30)
    )
    read = parse_conn_table(H + proc)
    rep = t.reconcile(read.entries, NOW + 10.5)
    assert rep.figures() == {"templates": 4, "added": 1, "dropped": 1, "changed": 1, "retimed": 1,
                             "same": 1, "clients": 2, "clients_added": 1, "clients_dropped": 1,
                             "unseen": 0}
    assert "10.0.0.4" in rep.examples["added"][0] and "10.0.0.3" in rep.examples["dropped"][0]
    # the table is now what /proc showed (origins kept where /proc's ip_vs_conn has none)
    want = [e._replace(origin=None if e.caddr == "10.0.0.4" else "SYNC") for e in read.templates]
    assert by_id(t.templates(NOW + 10.5)) == by_id(want)
    assert t.client_counts(NOW + 10.5) == count_connections_by_client(H + proc)
    assert set(t.client_counts(NOW + 41)) == {("10.0.0.1", ("TCP", "10.0.0.100", 5000))}
    # a second reconcile with the same read finds nothing to change; a templates-only read
    # leaves the clients alone
    again = t.reconcile(parse_conn_table(H + proc, templates_only=True).entries, NOW + 10.5,
                        with_connections=False)
    assert (again.same, again.added, again.dropped, again.changed, again.clients) == (4, 0, 0, 0, None)
    assert len(t.client_counts(NOW + 10.5)) == 2
    # what reconcile dropped stays gone; expire finds the rest where the wheel filed it
    assert t.expire(NOW + 200) == (2, 1) and len(t) == 2


def test_what_the_stream_brings_during_a_read_is_not_dropped_by_it():
    """The read began before these came (begin_reconcile): it cannot show them, and they stay.
    Measured in the lab: a start-up reconciliation during a burst of new clients dropped 365
    templates their clients never refreshed (one datagram each)."""
    t = ingest(TemplateTable(), [tpl_conn("10.0.0.1"), tpl_conn("10.0.0.2")])
    t.begin_reconcile()
    read = parse_conn_table(
        H + kline("UDP", "10.0.0.1", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 299)
    )
    ingest(t, [tpl_conn("10.0.0.3"), conn("10.0.0.3")], now=NOW + 1)  # during the read
    ingest(t, [tpl_conn("10.0.0.2", timeout=300)], now=NOW + 1)  # refreshed during the read
    rep = t.reconcile(read.entries, NOW + 2, begun=True)
    assert (rep.added, rep.dropped, rep.same) == (0, 0, 1)
    assert {e.caddr for e in t.templates(NOW + 2)} == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    # its connection too: the read's clients do not replace a client heard during it
    assert ("10.0.0.3", ("TCP", "10.0.0.100", 5000)) in t.client_counts(NOW + 2)


def test_a_restart_the_stream_brought_during_the_read_is_not_undone_by_it():
    # Measured in the lab: a backup's reconciliation read 40 templates just before the master's
    # message restarted them, and set the table 11 s early for the rest of their lives.
    t = ingest(TemplateTable(), [tpl_conn("10.0.0.1", timeout=30)])
    t.begin_reconcile()
    read = parse_conn_table(
        H + kline("UDP", "10.0.0.1", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 19)
    )  # what the read showed at NOW + 11 ...
    ingest(t, [tpl_conn("10.0.0.1", timeout=30)], now=NOW + 11.5)  # ... then the restart
    rep = t.reconcile(read.entries, NOW + 12, begun=True)
    assert rep.retimed == 1 and ends(t, NOW + 12) == [29]
    # not heard during the read: the read's word
    u = ingest(TemplateTable(), [tpl_conn("10.0.0.1", timeout=30)])
    u.reconcile(read.entries, NOW + 12)
    assert ends(u, NOW + 12) == [19]


def test_a_template_one_read_skipped_is_dropped_only_if_a_second_skips_it_too():
    t = ingest(TemplateTable(), [tpl_conn(f"10.0.0.{i}") for i in (1, 2, 3, 4)])
    line = {i: kline("UDP", f"10.0.0.{i}", 0, "10.0.0.100", 5000, "10.1.0.11", 5000,
                     "ASSURED", 299) for i in (1, 2, 3, 4)}
    t.begin_reconcile()
    first = parse_conn_table(H + line[1] + line[4])  # 2 and 3 skipped (or gone)
    rep = t.reconcile(first.entries, NOW + 1, begun=True, drop=False)
    assert (rep.unseen, rep.dropped, len(t)) == (2, 0, 4)
    ingest(t, [tpl_conn("10.0.0.4")], now=NOW + 1.5)  # heard between the reads: stays anyway
    second = parse_conn_table(H + line[2])  # 2 was skipped by the first read; 3 is gone
    rep = t.drop_unseen(second.entries, NOW + 2)
    assert rep.dropped == 1 and "10.0.0.3" in rep.examples["dropped"][0]
    assert {e.caddr for e in t.templates(NOW + 2)} == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}
    # the next round starts clean: an entry every read shows is never unseen
    t.begin_reconcile()
    rep = t.reconcile(parse_conn_table(H + line[1] + line[2] + line[4]).entries, NOW + 3,
                      begun=True, drop=False)
    assert rep.unseen == 0


def test_templates_of_one_protocol_without_building_the_others():
    t = ingest(TemplateTable(), [tpl_conn("10.0.0.1"), tpl_conn("fd00::1", vaddr="fd00::100", daddr="fd00:1::11"),
                                 tpl_conn("10.0.0.2", proto="TCP")])
    assert list(t.templates_of(NOW, "IP")) == []  # no fwmark service: nothing scanned
    ingest(t, [tpl_conn("10.0.0.3", proto="IP", vaddr=None, vport=0, dport=0, fwmark=1),
               tpl_conn("fd00::3", proto="IP", vaddr=None, vport=0, daddr="fd00:1::11",
                        dport=0, fwmark=1)])
    got = sorted(e.caddr for e in t.templates_of(NOW, "IP"))
    assert got == ["10.0.0.3", "fd00::3"]
    assert sorted(e.caddr for e in t.templates_of(NOW, "UDP")) == ["10.0.0.1", "fd00::1"]
    assert [e.caddr for e in t.templates_of(NOW + 301, "UDP")] == []  # ended


def test_netmask_clients_are_keyed_as_their_templates():
    from lvs_hooks.director.keeper import clients_in_use
    from lvs_hooks.kernel.model import Destination, Service

    net = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=300, netmask="255.255.255.0",
                  destinations=(Destination("10.1.0.11", 80),))
    net6 = Service(6, "TCP", "fd00::100", 80, persistent=True, timeout=300, netmask="64",
                   destinations=(Destination("fd00:1::11", 80),))
    conns = [conn(f"192.168.7.{i}", vport=80, dport=80) for i in (33, 34, 200)]
    conns += [conn(f"fd00:7::{i}", vaddr="fd00::100", vport=80, daddr="fd00:1::11", dport=80) for i in (1, 2)]
    plain = ingest(TemplateTable(), conns)
    masked = TemplateTable()
    masked.use_services([net, net6])
    ingest(masked, conns)
    assert (plain.client_keys, masked.client_keys) == (5, 2)
    assert set(masked.client_counts(NOW)) == {("192.168.7.0", ("TCP", "10.0.0.100", 80)),
                                              ("fd00:7::", ("TCP", "fd00::100", 80))}
    assert clients_in_use(masked.client_counts(NOW), [net, net6]) == clients_in_use(
        plain.client_counts(NOW), [net, net6])
