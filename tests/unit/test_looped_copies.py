"""syncsock.LoopedCopies: the count of a sender's looped-back copies, on a real UDP socket (a
unicast one on 127.0.0.1 standing in for the group: what it counts is the same). The netns tier
shows the real multicast loop (tests/netns/test_sync_loop.py)."""

import select
import socket
import threading
import time

from lvs_hooks.kernel.syncsock import LoopedCopies


def pair():
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind(("127.0.0.1", 0))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return LoopedCopies(own), out, own.getsockname()


def test_back_when_every_copy_came_whatever_the_order_and_the_strangers():
    copies, out, addr = pair()
    with out:
        for d in (b"a", b"b", b"a"):
            copies.outstanding[d] += 1  # as sent() counts, before the copies come
        out.sendto(b"stranger", addr)
        out.sendto(b"b", addr)
        out.sendto(b"a", addr)
        assert not copies.wait(0.2)  # one "a" of the two is still on its way
        assert copies.outstanding == {b"a": 1}
        out.sendto(b"a", addr)
        assert copies.wait(5.0) and not copies.outstanding
    copies.close()


def test_sent_counts_and_takes_what_is_already_back():
    copies, out, addr = pair()
    with out:
        out.sendto(b"x", addr)
        assert select.select([copies.sock], [], [], 30.0)[0]
        copies.sent(b"x")  # its copy was there already: taken at once
        assert not copies.outstanding
        copies.sent(b"y")
        assert copies.outstanding == {b"y": 1}
    copies.close()


def test_wait_returns_as_soon_as_the_last_copy_arrives():
    copies, out, addr = pair()
    copies.outstanding[b"late"] += 1
    t = threading.Timer(0.3, out.sendto, (b"late", addr))
    t.start()
    try:
        t0 = time.monotonic()
        assert copies.wait(30.0)
        assert time.monotonic() - t0 < 29.0  # woke by the datagram, not by the timeout
    finally:
        t.join()
        out.close()
        copies.close()
