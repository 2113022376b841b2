"""The reseed's sender and the looped copies of what it sends, on the host kernel's multicast
loop (no IPVS needed): once the sender's own socket on the group has every copy back, another
socket on the same group and port, opened before it as the kernel's backup daemon's is, holds
every datagram already (kernel/syncsock.py). Without that, a daemon stopped right after a send
could lose a datagram still on its way through the receive path."""

import contextlib
import socket
import subprocess

import pytest
from netnslib import inside, next_tag, sh

from lvs_hooks.kernel import mcast
from lvs_hooks.kernel.syncsock import SyncQueueProbe, SyncSender, settle

pytestmark = pytest.mark.netns

GROUP, PORT = "224.0.0.81", 8848
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)




@pytest.fixture
def ns():
    """A namespace with a veth pair, va up with 10.77.0.1/24 (a multicast interface)."""
    name = f"{next_tag()}l"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        sh("ip", "-n", name, "addr", "add", "10.77.0.1/24", "dev", "va")
        for dev in ("va", "vb", "lo"):
            sh("ip", "-n", name, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def daemon_socket() -> socket.socket:
    """A stand-in for the backup daemon's socket: on the group and port, never read here."""
    s = mcast.udp_socket(False)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # room for every datagram sent
    mcast.join(s, False, GROUP, PORT, socket.if_nametoindex("va"))
    return s


def queued(s: socket.socket) -> list:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(s.recv(0xFFFF, socket.MSG_DONTWAIT))
    return out


def test_once_every_copy_is_back_the_other_socket_on_the_group_holds_them_all(ns):
    dgrams = [i.to_bytes(4, "big") + bytes(1200) for i in range(200)]
    with inside(ns):
        daemon = daemon_socket()
        sender = SyncSender("va", GROUP, PORT, ttl=0, loop=True)
    with contextlib.closing(daemon), sender:
        assert sender.copies is not None
        for d in dgrams:
            sender.send(d)
        with inside(ns):
            # the stand-in is this process's own socket, which the probe leaves out (the agent's
            # listener is one too): here settle waits for the copies alone
            assert settle(sender, SyncQueueProbe("/proc/thread-self", PORT), 60.0), (
                sender.copies.outstanding)
        got = queued(daemon)  # at once, without waiting: nothing is still on its way
    assert sorted(got) == dgrams
