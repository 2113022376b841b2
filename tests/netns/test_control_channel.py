"""The control channel over the host kernel: two network namespaces joined by a veth, a channel
in each (director lb-a in A on va 10.77.0.1, lb-b in B on vb 10.77.0.2).

The test process makes each socket inside its namespace (setns on its own thread, then back):
a socket stays in the namespace it was made in, so both channels are then driven from here.
Forged, stale and replayed datagrams are made with the message module and sent from A by a
plain UDP socket, as an attacker on the link would. Every wait is a deadline (recv timeout,
wait_for); a refusal is shown by a good message sent after it arriving alone.
"""

import collections
import contextlib
import json
import logging
import socket
import struct
import subprocess
import time
from typing import List, Tuple

import pytest
from netnslib import inside, next_tag, sh, wait_for

from lvs_hooks.control.channel import ControlChannel
from lvs_hooks.control.message import Message, decode, encode, new_message

pytestmark = pytest.mark.netns

KEY = b"lvs-hooks-netns-test-key-0123456789abcdef"
WRONG_KEY = b"not-the-key-of-these-directors-0123456789"
GROUP = "224.0.0.81"
GROUP6 = "ff02::8849:81"
PORT = 8849
A_ADDR, B_ADDR = "10.77.0.1", "10.77.0.2"
MAX_SKEW = 30.0




def link_json(ns: str, dev: str, *what: str) -> list:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", *what, "show", "dev", dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def link_local(ns: str, dev: str) -> str:
    """The usable (not tentative) IPv6 link-local address of `dev`, or ""."""
    for info in link_json(ns, dev, "-6", "addr")[0].get("addr_info", []):
        if info["local"].startswith("fe80:") and not info.get("tentative"):
            return info["local"]
    return ""


@pytest.fixture
def pair():
    """Namespaces (A, B) joined by va 10.77.0.1/24 -- vb 10.77.0.2/24, up, no IPv6 DAD (so
    the link-local addresses are usable at once). Deleted afterwards, failed test or not."""
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
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def open_channel(ns: str, dev: str, sender: str, group: str = GROUP) -> ControlChannel:
    with inside(ns):
        return ControlChannel(dev, group, PORT, 1, KEY, sender, MAX_SKEW)


def drain(*channels: ControlChannel) -> None:
    for ch in channels:
        while ch.recv(0) is not None:
            pass


def settle(a: ControlChannel, b: ControlChannel) -> None:
    """Wait until a message gets through each way (a new veth may drop the first frames while
    its queues are being set up), then empty both queues."""
    for src, dst in ((a, b), (b, a)):

        def through(src=src, dst=dst) -> bool:
            src.send("status-request", {"probe": True})
            return dst.recv(0.2) is not None

        wait_for(through, 10, f"a first message from {src.sender} to {dst.sender}")
    drain(a, b)


@pytest.fixture
def channels(pair):
    """Channels (lb-a in A, lb-b in B) that have heard each other once, queues empty."""
    a_ns, b_ns = pair
    opened: List[ControlChannel] = []
    try:
        opened.append(open_channel(a_ns, "va", "lb-a"))
        opened.append(open_channel(b_ns, "vb", "lb-b"))
        settle(*opened)
        for ch in opened:
            ch.refused.clear()
        yield opened[0], opened[1]
    finally:
        for ch in opened:
            ch.close()


def attacker(ns: str, dev: str, group: str = GROUP) -> socket.socket:
    """A plain UDP socket in `ns` that sends to the group out of `dev` (loop off)."""
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        mreqn = struct.pack(
            "4s4si",
            socket.inet_aton(group),
            socket.inet_aton("0.0.0.0"),
            socket.if_nametoindex(dev),
        )
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return s


def observer(ns: str, dev: str) -> socket.socket:
    """A plain UDP socket in `ns` that gets every datagram to the group and control port on
    `dev`, whatever it holds: the raw bytes on the wire."""
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((GROUP, PORT))
        mreqn = struct.pack(
            "4s4si",
            socket.inet_aton(GROUP),
            socket.inet_aton("0.0.0.0"),
            socket.if_nametoindex(dev),
        )
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    s.settimeout(5)
    return s


def receive_until(ch: ControlChannel, marker: Message, category: str) -> List[Tuple[Message, str]]:
    """Everything `ch` accepts until both `marker` arrived and one datagram of `category` was
    refused (the veth may reorder two datagrams sent back to back from different sockets)."""
    got: List[Tuple[Message, str]] = []

    def done() -> bool:
        item = ch.recv(0.2)
        if item is not None:
            got.append(item)
        return ch.refused[category] >= 1 and any(m.nonce == marker.nonce for m, _ in got)

    wait_for(done, 10, f"{ch.sender} to take {marker.kind} and refuse a {category} datagram")
    return got


def refusals(caplog) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lvs_hooks.control.channel" and r.levelno == logging.WARNING
    ]


# ------------------------------------------------------------------------------ tests


def test_a_message_reaches_the_other_director_with_its_address_and_body(channels):
    a, b = channels
    sent = a.send("push-begin", {"push": "p-1", "templates": 1234, "services": ["10.0.0.1:80"]})
    got = b.recv(5)
    assert got is not None, "lb-b received nothing"
    msg, src = got
    assert src == A_ADDR
    assert msg == sent
    assert (msg.kind, msg.sender, msg.body["templates"]) == ("push-begin", "lb-a", 1234)

    reply = b.send("status-reply", {"warm": True})
    got = a.recv(5)
    assert got == (reply, B_ADDR)
    assert not a.refused and not b.refused


def test_a_datagram_made_with_another_key_is_refused_and_logged(channels, pair, caplog):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    forged = encode(new_message("push-request", "lb-a", {"from": "mallory"}), WRONG_KEY)
    with contextlib.closing(attacker(pair[0], "va")) as s:
        s.sendto(forged, (GROUP, PORT))
    marker = a.send("push-end", {"push": "p-1"})

    got = receive_until(b, marker, "forged")
    assert got == [(marker, A_ADDR)]
    assert b.refused == collections.Counter(forged=1)
    assert refusals(caplog) == [
        f"control: messages refused (forged): from {A_ADDR}: bad HMAC: wrong key or forged"
    ]


def test_garbage_is_refused_as_malformed(channels, pair, caplog):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    with contextlib.closing(attacker(pair[0], "va")) as s:
        s.sendto(b"\x01\x00\x00\x28" + b"\x00" * 36, (GROUP, PORT))  # e.g. a sync message
    marker = a.send("push-end", {})

    assert receive_until(b, marker, "malformed") == [(marker, A_ADDR)]
    assert b.refused == collections.Counter(malformed=1)
    assert refusals(caplog) == [
        f"control: messages refused (malformed): from {A_ADDR}: not an lvs-hooks control "
        "message"
    ]


def test_the_same_bytes_sent_again_are_refused_as_replayed(channels, pair, caplog):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    with contextlib.closing(observer(pair[1], "vb")) as wire:
        first = a.send("push-request", {"reason": "starting"})
        assert b.recv(5) == (first, A_ADDR)
        captured, src = wire.recvfrom(65535)  # the datagram as lb-b's socket got it
    assert src[0] == A_ADDR
    assert decode(captured, KEY) == first

    with contextlib.closing(attacker(pair[0], "va")) as s:
        s.sendto(captured, (GROUP, PORT))
    marker = a.send("push-end", {})

    assert receive_until(b, marker, "replayed") == [(marker, A_ADDR)]
    assert b.refused == collections.Counter(replayed=1)
    (line,) = refusals(caplog)
    assert line.startswith(f"control: messages refused (replayed): from {A_ADDR}: replayed "
                           f"(sequence {first.seq} of epoch {a.epoch}, ")
    assert line.endswith(" s ago)")


@pytest.mark.parametrize("offset", [-120.0, +120.0])
def test_an_old_or_future_timestamp_is_refused_as_stale(channels, pair, caplog, offset):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    stale = new_message("push-request", "lb-a", {}, clock=lambda: time.time() + offset)
    with contextlib.closing(attacker(pair[0], "va")) as s:
        s.sendto(encode(stale, KEY), (GROUP, PORT))
    marker = a.send("push-end", {})

    assert receive_until(b, marker, "stale") == [(marker, A_ADDR)]
    assert b.refused == collections.Counter(stale=1)
    (line,) = refusals(caplog)
    prefix = (f"control: messages refused (stale): from {A_ADDR}: timestamp "
              f"{'-' if offset < 0 else '+'}1")
    assert line.startswith(prefix), line
    assert line.endswith(" s off (max_skew 30)"), line


def test_a_director_never_receives_its_own_messages(channels, pair, caplog):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    with contextlib.closing(observer(pair[1], "vb")) as wire:
        own = b.send("status-request", {"seq": 1})
        # multicast loop is on: lb-b's own datagram does come back to its namespace ...
        data, src = wire.recvfrom(65535)
        assert (decode(data, KEY), src[0]) == (own, B_ADDR)
    # ... and reaches lb-a, which answers only after it got it
    assert a.recv(5) == (own, B_ADDR)
    answer = a.send("status-reply", {"seq": 1})
    # lb-b's looped copy was queued before the answer was even sent: skipped, not returned
    assert b.recv(5) == (answer, A_ADDR)
    assert b.recv(0) is None
    assert not b.refused and not refusals(caplog)


def test_two_directors_in_one_namespace_hear_each_other(channels, pair):
    a, b = channels
    with contextlib.closing(open_channel(pair[1], "vb", "lb-b2")) as b2:
        sent = b.send("push-request", {})
        assert b2.recv(5) == (sent, B_ADDR)  # the looped copy, from the same host
        assert a.recv(5) == (sent, B_ADDR)  # and the one on the wire
        assert b.recv(0) is None


def test_ipv6_group(pair):
    a_ns, b_ns = pair
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(contextlib.closing(open_channel(a_ns, "va", "lb-a", GROUP6)))
        b = stack.enter_context(contextlib.closing(open_channel(b_ns, "vb", "lb-b", GROUP6)))
        settle(a, b)
        sent = a.send("status-request", {"v": 6})
        assert b.recv(5) == (sent, link_local(a_ns, "va"))
        reply = b.send("status-reply", {"v": 6})
        assert a.recv(5) == (reply, link_local(b_ns, "vb"))
        assert b.recv(0) is None
        assert not a.refused and not b.refused


# ------------------------------------------------------------------------------ the agent under attack
# (issue 15, the wire: a flood of forged control datagrams, spoofed sync datagrams)

SYNC_PORT = 8848
C_ADDR = "10.77.0.3"  # a third host on the link, added to A's veth


class _Ops:
    """The agent's kernel work: only the check of a complete push is reached here."""

    def __init__(self):
        self.checked: List[list] = []

    def push(self, channel):
        raise AssertionError("a backup does not push")

    def check_push(self, keys):
        self.checked.append(list(keys))
        return {"verified": len(keys), "put_back": 0, "repointed": 0, "stale_in_use": 0,
                "missing_after": 0}

    def startup_reseed(self):
        return {"usable": False}


class _Warm:
    def __init__(self):
        self.warm = False

    def start(self):
        pass

    def is_warm(self):
        return self.warm

    def mark_warm(self, reason, figures):
        self.warm = True

    def refresh(self):
        pass


def backup_agent(tmp_path, channel, listener=None):
    from lvs_hooks.agent import Agent
    from lvs_hooks.config import parse_config

    cfg = parse_config(f"paths: {{run_dir: {tmp_path}/run, state_dir: {tmp_path}/state}}\n",
                       "test")
    agent = Agent(cfg, _Ops(), channel, listener, lambda: "BACKUP", _Warm())
    agent.tick()  # takes the role
    return agent


def serve_until(agent, cond, timeout: float, what: str) -> None:
    """Run the agent's loop (its wait: every socket drained) until `cond()`."""

    def step() -> bool:
        agent.wait(0.2)
        return bool(cond())

    wait_for(step, timeout, what)


def warnings(caplog) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_genuine_push_end_behind_20000_forged_datagrams_is_handled_in_few_lines(
        channels, pair, caplog, tmp_path):
    from lvs_hooks.push.sender import push_digest

    a, b = channels
    caplog.set_level(logging.INFO)
    agent = backup_agent(tmp_path, b)
    a.send("push-begin", {"push_id": "p-flood", "templates": 0, "port": 40000})
    serve_until(agent, lambda: "p-flood" in agent.st.collecting, 10, "the push-begin")
    # While the agent is busy elsewhere: 20,000 forged datagrams of 1,000 bytes, then the end.
    forged = encode(new_message("push-end", "lb-a", {"pad": "x" * 800}), WRONG_KEY)
    assert 900 < len(forged) <= 1400
    with contextlib.closing(attacker(pair[0], "va")) as s:
        for _ in range(20_000):
            s.sendto(forged, (GROUP, PORT))
    a.send("push-end", {"push_id": "p-flood", "templates": 0, "datagrams": 0, "bytes": 0,
                        "digest": push_digest([])})
    t0 = time.monotonic()
    serve_until(agent, lambda: agent.st.last_push.push_id == "p-flood", 20, "the push-end")
    took = time.monotonic() - t0
    assert agent.st.last_push.complete and agent.warm.is_warm()
    assert b.refused == collections.Counter(forged=20_000)  # none lost: all read and refused
    agent.ratelog.clock = b.ratelog.clock = lambda: time.monotonic() + 60  # the interval over
    agent.tick()
    lines = warnings(caplog)
    assert len(lines) <= 20, lines
    print(f"\nflood: 20000 forged datagrams, {len(lines)} warning lines, push-end handled "
          f"after {took:.2f} s")
    agent.note_wire()
    assert agent.st.wire.control_refused == {"forged": 20_000}


def test_a_spoofed_sync_datagram_with_the_pushers_address_leaves_the_push_complete(
        channels, pair, caplog, tmp_path):
    from lvs_hooks.kernel.syncsock import SyncSender
    from lvs_hooks.push.collector import SyncGroupListener
    from lvs_hooks.push.sender import datagrams_for, push_digest
    from lvs_hooks.reseed.planner import PlannedTemplate

    a, b = channels
    a_ns, b_ns = pair
    caplog.set_level(logging.INFO)
    sh("ip", "-n", a_ns, "addr", "add", f"{C_ADDR}/24", "dev", "va")
    planned = [PlannedTemplate("TCP", f"11.0.0.{i}", "10.0.0.100", 443, "10.1.0.11", 443, 0,
                               "droute", 300) for i in range(1, 91)]
    dgrams = datagrams_for(planned, 0, 0)
    assert len(dgrams) == 3
    with contextlib.ExitStack() as stack:
        with inside(b_ns):
            listener = stack.enter_context(SyncGroupListener("vb", GROUP, SYNC_PORT))
        with inside(a_ns):
            pusher = stack.enter_context(SyncSender("va", GROUP, SYNC_PORT, ttl=1, loop=False))
            pusher.sock.bind((A_ADDR, 0))
            spoofer = stack.enter_context(contextlib.closing(attacker(a_ns, "va")))
            spoofer.bind((A_ADDR, 0))  # the pusher's address, another port
            stranger = stack.enter_context(contextlib.closing(attacker(a_ns, "va")))
            stranger.bind((C_ADDR, 0))
        port = pusher.sock.getsockname()[1]
        agent = backup_agent(tmp_path, b, listener)
        a.send("push-begin", {"push_id": "p-spoof", "templates": len(planned), "port": port})
        serve_until(agent, lambda: "p-spoof" in agent.st.collecting, 10, "the push-begin")
        pusher.send(dgrams[0])
        spoofer.sendto(dgrams[0], (GROUP, SYNC_PORT))  # a copy: would spoil the digest
        pusher.send(dgrams[1])
        stranger.sendto(dgrams[1], (GROUP, SYNC_PORT))
        pusher.send(dgrams[2])
        a.send("push-end", {"push_id": "p-spoof", "templates": len(planned),
                            "datagrams": len(dgrams), "bytes": sum(map(len, dgrams)),
                            "digest": push_digest(dgrams)})
        serve_until(agent, lambda: agent.st.last_push.push_id == "p-spoof", 10, "the push-end")
    last = agent.st.last_push
    assert last.complete, last.reason
    assert (last.other_ports, last.foreign) == (1, 1)
    assert agent.warm.is_warm() and agent.ops.checked == [[p.table_key() for p in planned]]
    w = agent.st.wire
    assert (w.sync_other_port, w.sync_foreign) == (1, 1)
    assert w.sync_foreign_last.startswith(f"{C_ADDR}:")
    (line,) = [m for m in warnings(caplog) if "other than the pusher" in m]
    assert f"from {C_ADDR}:" in line and f"during push p-spoof from {A_ADDR}:{port}" in line
    print(f"\nspoof: push complete={last.complete}, other_ports={last.other_ports}, "
          f"foreign={last.foreign}")


def test_a_captured_push_request_replayed_to_a_restarted_receiver_is_refused(
        channels, pair, caplog, tmp_path):
    a, b = channels
    a_ns, b_ns = pair
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    window = str(tmp_path / "state" / "control-replay.json")
    b.close()
    with inside(b_ns):
        b1 = ControlChannel("vb", GROUP, PORT, 1, KEY, "lb-b", MAX_SKEW, replay_file=window)
    with contextlib.closing(b1), contextlib.closing(observer(b_ns, "vb")) as wire:
        first = a.send("push-request", {"role": "BACKUP"})
        assert b1.recv(5) == (first, A_ADDR)
        captured, _ = wire.recvfrom(65535)
    assert decode(captured, KEY) == first
    # the receiver restarts (its agent was restarted, or the host rebooted) within max_skew
    with inside(b_ns):
        b2 = ControlChannel("vb", GROUP, PORT, 1, KEY, "lb-b", MAX_SKEW, replay_file=window)
    with contextlib.closing(b2), contextlib.closing(attacker(a_ns, "va")) as s:
        s.sendto(captured, (GROUP, PORT))
        marker = a.send("push-end", {})
        assert receive_until(b2, marker, "replayed") == [(marker, A_ADDR)]
        assert b2.refused == collections.Counter(replayed=1)


def test_own_name_refused_and_messages_to_another_director_not_taken(channels, pair, caplog):
    a, b = channels
    caplog.set_level(logging.WARNING, logger="lvs_hooks.control.channel")
    claims_b = encode(new_message("push-request", "lb-b", {}), KEY)  # a key holder posing as b
    with contextlib.closing(attacker(pair[0], "va")) as s:
        s.sendto(claims_b, (GROUP, PORT))
    a.send("status-reply", {"x": 1}, to="lb-c")  # for a third director
    marker = a.send("push-end", {}, to="lb-b")
    assert receive_until(b, marker, "own-name") == [(marker, A_ADDR)]
    assert b.refused == collections.Counter({"own-name": 1})
    assert b.acceptor.not_for_us == 1  # sent before the marker, from the same socket
    assert refusals(caplog) == [
        f"control: messages refused (own-name): from {A_ADDR}: claims this director's own "
        "name 'lb-b'"]
