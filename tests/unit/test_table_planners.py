"""The pure planners on the table in memory give the decisions they give on a /proc read of the
same kernel state (keeper, reseed, fwmark repair, push check, push planner).

One random state per seed, mixed IPv4/IPv6, fwmark templates with port 0 (as a kernel master
keys them) and with the real server's port, a persistence netmask, clients with and without
connections. It is sent to the table as sync datagrams (kernel/syncproto's encoder) and written
as the /proc lines the kernel would show (test_conntable.kline), which kernel/conntable parses.
"""

import random
from typing import List, NamedTuple

import pytest
from test_conntable import H, kline

from lvs_hooks.director.fwmark_repair import RepairState, plan_repairs
from lvs_hooks.director.keeper import plan_renewals
from lvs_hooks.director.push_check import check_push
from lvs_hooks.kernel import syncproto as sp
from lvs_hooks.kernel.conntable import parse_conn_table
from lvs_hooks.kernel.model import (
    PROTO_NUMBERS,
    ConnEntry,
    Destination,
    Service,
    template_id,
    template_key,
)
from lvs_hooks.kernel.syncproto import SyncConn, encode_datagrams
from lvs_hooks.push.planner import plan_push
from lvs_hooks.reseed.planner import plan_reseed
from lvs_hooks.snapshot import Snapshot, encode
from lvs_hooks.table import TemplateTable

NOW = 5000.0

UDP4 = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=300,
               destinations=(Destination("10.1.0.11", 5000, "masq"), Destination("10.1.0.12", 5000, "masq")))
NET4 = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=600, netmask="255.255.255.0",
               destinations=(Destination("10.1.0.11", 80, "droute"), Destination("10.1.0.12", 80, "droute")))
TCP6 = Service(6, "TCP", "fd00::100", 443, persistent=True, timeout=600,
               destinations=(Destination("fd00:1::11", 443, "droute"), Destination("fd00:1::12", 443, "droute")))
FWM4 = Service(4, None, None, 0, fwmark=7, persistent=True, timeout=300,
               destinations=(Destination("10.1.0.21", 8080, "masq"), Destination("10.1.0.22", 8080, "masq")))
FWM6 = Service(6, None, None, 0, fwmark=9, persistent=True, timeout=300, netmask="64",
               destinations=(Destination("fd00:1::21", 8080, "tunnel"),))
SERVICES = [UDP4, NET4, TCP6, FWM4, FWM6]
TCP_STATES = {1: "ESTABLISHED", 5: "TIME_WAIT", 7: "CLOSE_WAIT"}


class KEntry(NamedTuple):
    """One entry of the kernel's table: what goes in a sync message and what /proc shows."""

    protocol: str
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: int
    expires: int
    fwmark: int = 0

    def sync(self) -> SyncConn:
        template = self.cport == 0
        return SyncConn(
            af=6 if ":" in self.caddr else 4, protocol=PROTO_NUMBERS[self.protocol],
            flags=sp.IP_VS_CONN_F_TEMPLATE if template else 0, state=self.state, cport=self.cport,
            vport=self.vport, dport=self.dport, fwmark=self.fwmark, timeout=self.expires,
            caddr=self.caddr, vaddr=self.vaddr, daddr=self.daddr)

    def proc(self) -> bytes:
        if self.cport == 0:
            state = "ASSURED" if self.state else "NONE"
        else:
            state = "UDP" if self.protocol == "UDP" else TCP_STATES[self.state]
        return kline(self.protocol, self.caddr, self.cport, self.vaddr, self.vport, self.daddr,
                     self.dport, state, self.expires)


def kernel_state(seed: int) -> List[KEntry]:
    rnd = random.Random(seed)
    out: List[KEntry] = []
    for i in range(400):
        kind = rnd.randrange(5)
        expires = rnd.choice((1, 3, 8, 11, 30, 200, 599))
        state = rnd.choice((0, 1, 1, 1))
        conns = rnd.random() < 0.5
        cport = 1024 + i
        if kind == 0:  # UDP, real servers sometimes gone
            c = f"10.2.{i // 256}.{i % 256}"
            d = rnd.choice(("10.1.0.11", "10.1.0.12", "10.1.0.13"))
            out.append(KEntry("UDP", c, 0, "10.0.0.100", 5000, d, 5000, state, expires))
            if conns:
                out.append(KEntry("UDP", c, cport, "10.0.0.100", 5000, d, 5000, 0, rnd.randrange(1, 300)))
        elif kind == 1:  # TCP with a /24 netmask: the template keys the network
            net = f"192.{168 + i // 256}.{i % 256}"
            d = rnd.choice(("10.1.0.11", "10.1.0.12"))
            out.append(KEntry("TCP", f"{net}.0", 0, "10.0.0.100", 80, d, 80, state, expires))
            if conns:
                out.append(KEntry("TCP", f"{net}.{rnd.randrange(1, 255)}", cport, "10.0.0.100", 80, d,
                                  80, rnd.choice((1, 5, 7)), rnd.randrange(1, 900)))
        elif kind == 2:  # IPv6
            c = f"fd00:2::{i:x}"
            d = rnd.choice(("fd00:1::11", "fd00:1::12"))
            out.append(KEntry("TCP", c, 0, "fd00::100", 443, d, 443, state, expires))
            if conns:
                out.append(KEntry("TCP", c, cport, "fd00::100", 443, d, 443, 1, rnd.randrange(1, 900)))
        elif kind == 3:  # fwmark 7: the kernel master's port 0, or the real server's port
            c = f"10.3.{i // 256}.{i % 256}"
            d = rnd.choice(("10.1.0.21", "10.1.0.22"))
            out.append(KEntry("IP", c, 0, "0.0.0.7", 0, d, rnd.choice((0, 8080)), state, expires, 7))
            if conns:  # the packet's protocol, VIP and port, not the mark
                out.append(KEntry("TCP", c, cport, "10.0.0.102", 8080, d, 8080, 1, rnd.randrange(1, 900), 7))
        else:  # fwmark 9, IPv6 with a /64 netmask
            net = f"fd00:{3 + i % 50:x}:0:{i:x}"
            out.append(KEntry("IP", f"{net}::", 0, "0:9::", 0, "fd00:1::21", rnd.choice((0, 8080)), state,
                              expires, 9))
            if conns:
                out.append(KEntry("TCP", f"{net}::{rnd.randrange(1, 99):x}", cport, "fd00::102", 8080,
                                  "fd00:1::21", 8080, 1, rnd.randrange(1, 900), 9))
    rnd.shuffle(out)
    return out


class Both(NamedTuple):
    table: TemplateTable
    state: List[KEntry]
    proc_templates: List[ConnEntry]
    proc_counts: dict

    def proc_at(self, delta: float, gone=frozenset()):
        """(templates, client counts) of a /proc read `delta` seconds after NOW: what is left,
        whole seconds rounded down; without the templates of `gone` (template ids)."""
        lines = [e._replace(expires=int(e.expires - delta)).proc() for e in self.state
                 if e.expires > delta and (e.cport or template_id(e) not in gone)]
        read = parse_conn_table(H + b"".join(lines), client_counts=True)
        return read.templates, read.client_counts or {}


def both(seed: int, masks: bool) -> Both:
    state = kernel_state(seed)
    table = TemplateTable()
    if masks:
        table.use_services(SERVICES)
    for d in encode_datagrams([e.sync() for e in state], syncid=3):
        table.ingest(d, NOW)
    read = parse_conn_table(H + b"".join(e.proc() for e in state), client_counts=True)
    assert read.malformed == 0
    return Both(table, state, read.templates, read.client_counts or {})


SEEDS = [(s, m) for s in range(3) for m in (False, True)]


def _sorted(planned):
    return sorted(planned, key=lambda p: (p.table_key(), p.timeout, p.replace))


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_the_table_holds_what_proc_shows(seed, masks):
    b = both(seed, masks)
    key = lambda e: (template_key(e), e.expires, e.state)  # noqa: E731
    assert sorted(b.table.templates(NOW), key=key) == sorted(b.proc_templates, key=key)


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_keeper(seed, masks):
    b = both(seed, masks)
    for now_delta, below in ((0, 12), (2.5, 12), (7, 30)):
        now = NOW + now_delta
        proc, proc_counts = b.proc_at(now_delta)
        counts = b.table.client_counts(now)
        want = plan_renewals(proc, proc_counts, SERVICES, below)
        got = plan_renewals(b.table.templates(now), counts, SERVICES, below)
        assert _sorted(got.renew) == _sorted(want.renew) and got.renew
        assert got.figures() == want.figures()
        # only the templates about to expire, found through the wheel: the same renewals
        fast = plan_renewals(b.table.templates(now, below=below), counts, SERVICES, below)
        assert _sorted(fast.renew) == _sorted(want.renew)


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_reseed(seed, masks):
    b = both(seed, masks)
    # a snapshot taken earlier on a peer: some clients the table knows (with the same or another
    # real server), some it does not
    peer = parse_conn_table(H + b"".join(e.proc() for e in kernel_state(seed + 100))).templates
    snap = [e._replace(expires=e.expires + 100) for e in peer]
    snap += [e._replace(daddr="10.1.0.12" if e.daddr == "10.1.0.11" else e.daddr)
             for e in b.proc_templates[::3]]
    want = plan_reseed(snap, 40, SERVICES, b.proc_templates, 30)
    got = plan_reseed(snap, 40, SERVICES, b.table.templates(NOW), 30)
    assert _sorted(got.planned) == _sorted(want.planned) and got.planned
    assert got.skipped == want.skipped and any(p.replace for p in got.planned)


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_fwmark_repair(seed, masks):
    b = both(seed, masks)
    mine, theirs = RepairState(), RepairState()
    want = plan_repairs(b.proc_templates, SERVICES, theirs, NOW)
    got = plan_repairs(b.table.templates(NOW), SERVICES, mine, NOW)
    assert _sorted(got.expire) == _sorted(want.expire) and got.expire
    assert got.figures() == want.figures()
    # the table takes the 1 s sends as the kernel does; two seconds later they are gone there
    b.table.note_injected(got.expire, NOW)
    later, _ = b.proc_at(2, gone=frozenset(template_id(p) for p in want.expire))
    want2 = plan_repairs(later, SERVICES, theirs, NOW + 2)
    got2 = plan_repairs(b.table.templates(NOW + 2), SERVICES, mine, NOW + 2)
    assert _sorted(got2.restore) == _sorted(want2.restore) and got2.restore
    assert got2.figures() == want2.figures()


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_push_check(seed, masks):
    b = both(seed, masks)
    rnd = random.Random(seed)
    keys = []
    for e in b.proc_templates:
        k = list(template_key(e))
        r = rnd.random()
        if r < 0.3:  # the master names the other real server: stale here
            k[4] = {"10.1.0.11": "10.1.0.12", "10.1.0.12": "10.1.0.11", "fd00:1::11": "fd00:1::12",
                    "fd00:1::12": "fd00:1::11", "10.1.0.21": "10.1.0.22"}.get(k[4], k[4])
        elif r < 0.4:  # a client this director never heard of
            k[1] = k[1].replace("10.", "172.", 1) if ":" not in k[1] else k[1].replace("fd00", "fd01", 1)
        keys.append(tuple(k))
    want = check_push(keys, b.proc_templates, b.proc_counts, SERVICES)
    got = check_push(keys, b.table.templates(NOW), b.table.client_counts(NOW), SERVICES)
    assert got.figures() == want.figures()
    assert _sorted(got.missing) == _sorted(want.missing) and got.missing
    assert _sorted(got.repoint) == _sorted(want.repoint) and got.repoint and got.stale_in_use


@pytest.mark.parametrize("seed,masks", SEEDS)
def test_push_planner_and_snapshot(seed, masks):
    b = both(seed, masks)
    want = plan_push(b.proc_templates, SERVICES)
    got = plan_push(b.table.templates(NOW), SERVICES)
    assert _sorted(got.planned) == _sorted(want.planned) and got.planned
    assert got.skipped == want.skipped
    # a dump is the snapshot a /proc read would give, rows in the table's order
    snap = b.table.dump(SERVICES, NOW, host="lb1", captured_at=1.5e9)
    from_proc = Snapshot.capture(SERVICES, b.proc_templates, host="lb1", captured_at=1.5e9)
    key = lambda e: (template_key(e), e.expires)  # noqa: E731
    assert sorted(snap.templates, key=key) == sorted(from_proc.templates, key=key)
    assert snap.services == from_proc.services
    assert len(encode(snap)) == len(encode(from_proc))
