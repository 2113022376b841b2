"""Capturing the sync datagrams a master sends, on the host kernel (no IPVS needed).

Two network namespaces joined by a veth: A (va, 10.77.0.1) plays the master, B (vb,
10.77.0.2) its peer. In A an ordinary UDP socket sends to the sync group and port out of va,
bound to va's address with an ephemeral port and loop off, as the kernel's master daemon does
(docs/design.md 3.8); the capture on va must give those datagrams byte for byte, and nothing
that arrives on va, goes to another port, or is only looped back.

No fixed sleeps: every wait has a deadline. That something was *not* captured is shown after a
barrier that proves the packet has been through the capture's filter already: a later datagram
of the same socket was captured (one socket's packets reach the device in order), or a socket
in A received it (the capture taps a received packet before IP delivers it).
"""

import contextlib
import json
import os
import socket
import subprocess
from typing import List, Optional, Tuple

import pytest
from netnslib import inside, next_tag, sh, wait_for

from lvs_hooks.errors import KernelError
from lvs_hooks.kernel import mcast
from lvs_hooks.kernel import synccapture as sc
from lvs_hooks.kernel.syncproto import decode_datagram, encode_datagrams, template_conn

pytestmark = pytest.mark.netns

PORT = 8848
GROUPS = {4: "224.0.0.81", 6: "ff02::8848"}
A_ADDR, B_ADDR = "10.77.0.1", "10.77.0.2"
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # include/uapi/linux/in.h
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0  # include/uapi/linux/in6.h




def link_json(ns: str, dev: str, *what: str) -> list:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", *what, "show", "dev", dev], capture_output=True, text=True,
        check=True,
    ).stdout
    return json.loads(out)


def link_local(ns: str, dev: str) -> str:
    for info in link_json(ns, dev, "-6", "addr")[0].get("addr_info", []):
        if info["local"].startswith("fe80:") and not info.get("tentative"):
            return info["local"]
    return ""


class Host:
    """One side of the veth: its namespace, device and the address its sockets send from."""

    def __init__(self, ns: str, dev: str, addr4: str):
        self.ns, self.dev, self.addr4 = ns, dev, addr4
        self.addr6 = link_local(ns, dev)

    def addr(self, af: int) -> str:
        return self.addr4 if af == 4 else self.addr6

    def sender(self, af: int, ttl: int = 1, loop: bool = False, port: int = 0
               ) -> socket.socket:
        """A UDP socket sending to the group out of this device, from its address (the
        kernel's master binds its socket to the interface's address, ephemeral port)."""
        with inside(self.ns):
            ifindex = socket.if_nametoindex(self.dev)
            s = mcast.udp_socket(af == 6)
            if af == 6:
                s.bind((self.addr6, port, 0, ifindex))
            else:
                s.bind((self.addr4, port))
            mcast.set_sending(s, af == 6, GROUPS[af], ifindex, ttl, loop)
        return s

    def receiver(self, af: int, port: int = PORT) -> socket.socket:
        """A UDP socket in the group on this device (a peer's listener, or a witness)."""
        with inside(self.ns):
            s = mcast.udp_socket(af == 6)
            mcast.join(s, af == 6, GROUPS[af], port, socket.if_nametoindex(self.dev))
        return s

    def capture(self, **kw) -> sc.OutgoingSyncCapture:
        with inside(self.ns):
            return sc.OutgoingSyncCapture(self.dev, PORT, **kw)


@pytest.fixture
def hosts():
    """(A, B): namespaces joined by va 10.77.0.1/24 -- vb 10.77.0.2/24, up, IPv6 link-local
    usable (no DAD), both directions proven to pass datagrams. Deleted afterwards."""
    tag = next_tag()
    a, b = f"{tag}a", f"{tag}b"
    made: List[str] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            # before the veth exists: its per-device settings are copied from `default`
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, addr in ((a, "va", A_ADDR), (b, "vb", B_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, dev in ((a, "va"), (b, "vb")):
            wait_for(
                lambda ns=ns, dev=dev: link_json(ns, dev, "link")[0]["operstate"] == "UP",
                10,
                f"{dev} in {ns} to be up",
            )
            wait_for(lambda ns=ns, dev=dev: link_local(ns, dev), 10, f"{dev}'s link-local")
        ha, hb = Host(a, "va", A_ADDR), Host(b, "vb", B_ADDR)
        for af in (4, 6):
            for src, dst in ((ha, hb), (hb, ha)):
                settle(src, dst, af)
        yield ha, hb
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def settle(src: Host, dst: Host, af: int) -> None:
    """Wait until a datagram gets from src to dst (a new veth drops the first frames while its
    queues are being set up); on another port than the sync port, so that nothing is left for
    the tests' sockets."""
    with contextlib.closing(src.sender(af)) as s, contextlib.closing(
        dst.receiver(af, PORT + 100)
    ) as r:
        r.settimeout(0.2)

        def through() -> bool:
            s.sendto(b"probe", (GROUPS[af], PORT + 100))
            try:
                return bool(r.recv(100))
            except socket.timeout:
                return False

        wait_for(through, 10, f"a datagram from {src.dev} to {dst.dev} over IPv{af}")


def source(sock: socket.socket) -> str:
    addr, port = sock.getsockname()[:2]
    return f"[{addr.split('%')[0]}]:{port}" if ":" in addr else f"{addr}:{port}"


def collect(cap: sc.OutgoingSyncCapture, n: int) -> List[Tuple[bytes, str]]:
    got: List[Tuple[bytes, str]] = []

    def enough() -> bool:
        item = cap.recv(0.2)
        if item is not None:
            got.append(item)
        return len(got) >= n

    wait_for(enough, 10, f"{n} captured datagrams (have {len(got)})")
    return got


def receive(sock: socket.socket, n: int, size: int = 0xFFFF) -> List[bytes]:
    sock.settimeout(10)
    return [sock.recv(size) for _ in range(n)]


def sync_messages(count: int) -> List[bytes]:
    """Datagrams as a master sends them: v1 messages of 40 templates, the last one shorter."""
    conns = [
        template_conn(protocol="TCP", caddr=f"192.0.2.{i % 250 + 1}", vaddr="10.0.0.1",
                      vport=80, daddr=f"10.1.0.{i % 3 + 1}", dport=8080, fwd_method="masq",
                      timeout=300 + i)
        for i in range(count)
    ]
    return encode_datagrams(conns, syncid=51, maxlen=1452)  # fits IPv4 and IPv6 under 1500


def empty(cap: sc.OutgoingSyncCapture) -> bool:
    return cap.recv(0) is None


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("af", [4, 6])
def test_outgoing_sync_datagrams_are_captured_byte_for_byte(hosts, af):
    a, b = hosts
    sent = sync_messages(100) + [b"", b"x", bytes(range(256)) * 5]
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture())
        peer = stack.enter_context(b.receiver(af))
        master = stack.enter_context(a.sender(af))
        for d in sent:
            master.sendto(d, (GROUPS[af], PORT))

        got = collect(cap, len(sent))
        assert [d for d, _ in got] == sent  # in order: one socket's packets leave in order
        assert {src for _, src in got} == {source(master)}
        assert source(master).startswith(f"[{a.addr6}]:" if af == 6 else f"{A_ADDR}:")
        assert len(decode_datagram(got[0][0]).conns) == 40
        # the same bytes went on the wire: the peer got them
        assert sorted(receive(peer, len(sent))) == sorted(sent)

        assert empty(cap)
        counters = cap.counters()
        assert counters == sc.CaptureCounters(captured=len(sent), kernel_packets=len(sent))
        assert cap.rcvbuf >= sc.RCVBUF  # root: SO_RCVBUFFORCE passes net.core.rmem_max


@pytest.mark.parametrize("af", [4, 6])
def test_incoming_datagrams_and_other_ports_are_not_captured(hosts, af):
    a, b = hosts
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture())
        witness = stack.enter_context(a.receiver(af))
        peer = stack.enter_context(b.sender(af))
        master = stack.enter_context(a.sender(af))

        incoming = [b"from the peer %d" % i for i in range(5)]
        for d in incoming:
            peer.sendto(d, (GROUPS[af], PORT))
        # received in A: each has been through the capture's filter already
        assert sorted(receive(witness, len(incoming))) == sorted(incoming)

        master.sendto(b"to another port", (GROUPS[af], PORT + 1))
        master.sendto(b"unicast to the peer, another port", (b.addr(af), PORT + 2))
        master.sendto(b"marker", (GROUPS[af], PORT))
        assert cap.recv(10) == (b"marker", source(master))
        assert empty(cap)
        # the filter ran in the kernel: only the marker was ever queued
        assert cap.counters() == sc.CaptureCounters(captured=1, kernel_packets=1)


def test_looped_copies_are_not_captured_and_ttl0_injections_never_leave(hosts):
    a, b = hosts
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture())
        witness = stack.enter_context(a.receiver(4))
        peer = stack.enter_context(b.receiver(4))
        inject = stack.enter_context(a.sender(4, ttl=0, loop=True))  # docs/design.md 3.4
        push = stack.enter_context(a.sender(4, ttl=1, loop=True))

        inject.sendto(b"injected", (GROUPS[4], PORT))
        # received in A: the looped copy has been handed to the capture (and not taken)
        assert receive(witness, 1) == [b"injected"]
        push.sendto(b"pushed", (GROUPS[4], PORT))
        assert receive(witness, 1) == [b"pushed"]  # its looped copy too
        assert receive(peer, 1) == [b"pushed"]  # only the TTL 1 datagram reached the wire

        assert cap.recv(10) == (b"pushed", source(push))  # once: the copy that left
        assert empty(cap)
        assert cap.counters() == sc.CaptureCounters(captured=1, kernel_packets=1)


@pytest.mark.parametrize("af", [4, 6])
def test_a_fragmented_datagram_is_skipped_and_counted(hosts, af):
    a, b = hosts
    big = bytes(range(256)) * 12  # 3072 bytes: fragmented at MTU 1500
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture())
        peer = stack.enter_context(b.receiver(af))
        master = stack.enter_context(a.sender(af))
        if af == 6:
            master.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
        else:
            master.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        master.sendto(big, (GROUPS[af], PORT))
        master.sendto(b"marker", (GROUPS[af], PORT))

        assert sorted(receive(peer, 2)) == sorted([big, b"marker"])  # it was a real datagram
        assert cap.recv(10) == (b"marker", source(master))
        assert empty(cap)
        counters = cap.counters()
        if af == 4:
            # the first fragment passes the filter (its UDP header names the port) and is
            # skipped here; the later ones never pass the filter
            assert counters == sc.CaptureCounters(captured=1, fragmented=1, kernel_packets=2)
        else:
            # every IPv6 fragment starts with a fragment header: none passes the filter
            assert counters == sc.CaptureCounters(captured=1, kernel_packets=1)


def test_the_counters_add_up_when_the_kernel_drops(hosts):
    a, _ = hosts
    sent = [b"%04d" % i + bytes(996) for i in range(200)]
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture(rcvbuf=1))  # the kernel's minimum: a few packets
        master = stack.enter_context(a.sender(4))
        for d in sent[:100]:
            master.sendto(d, (GROUPS[4], PORT))
        first = cap.counters()  # reading PACKET_STATISTICS resets the kernel's counts
        for d in sent[100:]:
            master.sendto(d, (GROUPS[4], PORT))

        # A marker of the same socket, once captured, proves that everything before it has
        # been through the filter. It may itself be dropped while the buffer is full: drain,
        # send another, until one is captured.
        got: List[bytes] = []
        markers: List[bytes] = []

        def drain() -> None:
            while True:
                item = cap.recv(0)
                if item is None:
                    return
                got.append(item[0])

        def marker_seen() -> bool:
            drain()
            if not set(markers) & set(got):
                markers.append(b"marker %d" % len(markers))
                master.sendto(markers[-1], (GROUPS[4], PORT))
                item = cap.recv(0.2)
                if item is not None:
                    got.append(item[0])
            return bool(set(markers) & set(got))

        wait_for(marker_seen, 10, "a marker")
        drain()
        total = cap.counters()
        kept = [d for d in got if d not in markers]
        assert total.kernel_drops > 0
        assert total.kernel_packets >= first.kernel_packets
        assert total.kernel_packets == len(sent) + len(markers)
        assert total.captured == len(got)
        assert total.captured + total.kernel_drops == total.kernel_packets
        assert kept == [d for d in sent if d in set(kept)]  # what was kept, in order


def test_a_missing_interface_is_named():
    with pytest.raises(KernelError, match="sync interface 'nosuch0' does not exist"):
        sc.OutgoingSyncCapture("nosuch0", PORT)


def test_without_cap_net_raw_the_error_says_so():
    """In a child that gave up root (setuid drops every capability)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        message = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            sc.OutgoingSyncCapture("lo", PORT).close()
        except KernelError as e:
            message = e.message
        except BaseException as e:  # anything else is a failure the parent reports
            message = f"{type(e).__name__}: {e}"
        finally:
            os.write(w, message.encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert message == "cannot capture sync datagrams on lo: needs CAP_NET_RAW (run as root)"


def test_the_interface_going_away_is_an_error_naming_it(hosts):
    a, _ = hosts
    with a.capture() as cap:
        sh("ip", "-n", a.ns, "link", "del", "va")
        err: Optional[KernelError] = None
        try:
            cap.recv(10)
        except KernelError as e:
            err = e
        assert err is not None and err.message.startswith("capturing sync datagrams on va: ")


def test_a_port_range_takes_every_sync_thread(hosts):
    """With sync_ports 2 the master's second thread sends to port + 1 (docs/design.md 3.9)."""
    a, _ = hosts
    with contextlib.ExitStack() as stack:
        with inside(a.ns):
            cap = stack.enter_context(sc.OutgoingSyncCapture("va", PORT, ports=2))
        one = stack.enter_context(a.sender(4))
        two = stack.enter_context(a.sender(4))
        two.sendto(b"not a sync port", (GROUPS[4], PORT + 2))
        one.sendto(b"thread 0", (GROUPS[4], PORT))
        two.sendto(b"thread 1", (GROUPS[4], PORT + 1))
        got = collect(cap, 2)
        assert sorted(got) == sorted([(b"thread 0", source(one)), (b"thread 1", source(two))])
        assert empty(cap)
        assert cap.counters() == sc.CaptureCounters(captured=2, kernel_packets=2)


def test_the_group_listener_counts_what_its_full_buffer_dropped(hosts):
    """SO_RXQ_OVFL: the listener learns the kernel's drop count with each datagram, so the agent
    knows its table in memory missed something (director/live.LiveTable.note_loss)."""
    from lvs_hooks.push.collector import SyncGroupListener

    a, b = hosts
    sent = sync_messages(40 * 400)  # 400 datagrams, far more than a 4 KiB buffer holds
    with inside(b.ns):
        listener = SyncGroupListener(b.dev, GROUPS[4], PORT, rcvbuf=4096)
    with contextlib.closing(a.sender(4)) as s, contextlib.closing(listener):
        # a witness beside it, with room for all: when it has them all, so does the kernel
        with contextlib.closing(b.receiver(4)) as witness:
            witness.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            for d in sent:
                s.sendto(d, (GROUPS[4], PORT))
            assert len(receive(witness, len(sent))) == len(sent)
        got = []
        while True:
            item = listener.recv(0)
            if item is None:
                break
            got.append(item)
        # the count comes with a datagram queued after the drops: the next one that gets in
        s.sendto(sent[0], (GROUPS[4], PORT))
        got.append(listener.recv(10.0))
        assert got[-1] is not None and listener.dropped() > 0
        assert len(got) + listener.dropped() == len(sent) + 1


@pytest.mark.parametrize("af", [4, 6])
def test_a_push_from_the_sync_port_is_told_from_the_kernels_own_messages(hosts, af):
    # A push of lvs-hooks leaves by the same interface to the same group and port as the
    # kernel master's stream; this host's agent must not take it for its kernel's own messages
    # (lab, churn: the handover's push re-armed templates in the former master's table that
    # its kernel let go). The push is sent from the sync port, the kernel's from an ephemeral
    # one.
    from lvs_hooks.push.run import bind_push_source

    a, b = hosts
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(a.capture(own_port=PORT))
        # the kernel's backup daemon's socket: bound to the group and port, SO_REUSEADDR
        stack.enter_context(a.receiver(af))
        peer = stack.enter_context(b.receiver(af))
        master = stack.enter_context(a.sender(af))
        with inside(a.ns):
            push = stack.enter_context(mcast.udp_socket(af == 6))
            mcast.set_sending(push, af == 6, GROUPS[af], socket.if_nametoindex(a.dev), 1, False)
            assert bind_push_source(push, af == 6, PORT) == PORT
        push.sendto(b"pushed", (GROUPS[af], PORT))
        master.sendto(b"kernel", (GROUPS[af], PORT))
        assert sorted(receive(peer, 2)) == [b"kernel", b"pushed"]  # both reached the peer
        assert cap.recv(10) == (b"kernel", source(master))
        assert empty(cap)
        assert cap.counters() == sc.CaptureCounters(captured=1, own=1, kernel_packets=2)
