"""The agent's inbox on a real Unix socket: events noted, queued, acknowledged and run in order
by the event thread through a real Sequencer and Journal; what it refuses; the periodic thread.

The planner is the one fake: its steps record what ran.
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from lvs_hooks.agent import Agent
from lvs_hooks.config import parse_config
from lvs_hooks.door import MAX_MESSAGE, SOCKET_NAME, WIRE_VERSION
from lvs_hooks.events import inbox as inbox_mod
from lvs_hooks.events.inbox import Inbox, RunDirUnsafe, check_event, peer_allowed
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.periodic import PeriodicThread
from lvs_hooks.events.role import read_role, write_role
from lvs_hooks.events.sequencer import DONE, STALE, SUPERSEDED, Plan, Sequencer, Step


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError(f"{what} not met in time")


@pytest.fixture
def short_dir():
    """A directory with a short path: a socket path must fit in 107 bytes, and pytest's
    tmp_path can be longer than that with the run directory under it."""
    d = tempfile.mkdtemp(prefix="lvsh-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Harness:
    """A real inbox in run_dir, the sequencer with a real journal, a recording planner. `gate`
    holds the first step of events whose state is in `hold` until set."""

    def __init__(self, base, config_text="paths: {}\n", uid=None):
        self.base = base
        self.run_dir = os.path.join(base, "run")
        self.state_dir = os.path.join(base, "state")
        self.config = os.path.join(base, "agent.yaml")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.sequencer = Sequencer(self.run_dir, Journal(self.state_dir, 1000))
        self.ran = []  # (state, name, step)
        self.gate = threading.Event()
        self.gate.set()
        self.hold = ()
        self.inbox = Inbox(
            self.run_dir, self.config, self.sequencer, self.planner, lambda e: 10.0, uid=uid
        )
        self.sock_path = os.path.join(self.run_dir, SOCKET_NAME)

    def planner(self, event):
        def first():
            self.ran.append((event.state, event.name, "first"))
            if event.state in self.hold:
                assert self.gate.wait(10)
            return "ok", {}

        def second():
            self.ran.append((event.state, event.name, "second"))
            return "ok", {}

        return Plan([Step("first", first), Step("second", second)])

    def journal(self):
        return Journal(self.state_dir, 1000).read()[0]

    def seen(self):
        with open(os.path.join(self.run_dir, "seen.json")) as f:
            return json.load(f)["keys"]


@pytest.fixture
def h(short_dir):
    harness = Harness(short_dir)
    harness.inbox.start()
    yield harness
    harness.gate.set()
    harness.inbox.stop()


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            return None  # closed without (the rest of) an answer
        buf += chunk
    return json.loads(buf)


def ask(path, message):
    s = connect(path)
    try:
        s.sendall(json.dumps(message).encode() + b"\n")
        return read_line(s)
    finally:
        s.close()


def event_msg(h, state, order, name="VI_1", config=None, over=None):
    ev = Event("INSTANCE", name, state, 100, "notify", (order, 1, 0)).to_dict()
    ev.update(over or {})
    return {"v": WIRE_VERSION, "config": config or h.config, "event": ev}


def test_an_event_is_noted_before_the_ack_and_run_by_the_event_thread(h):
    h.hold = ("MASTER",)
    h.gate.clear()
    assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}
    # Acknowledged means noted as the newest of its instance: a transition already under way
    # elsewhere sees it from now on.
    assert h.seen()["INSTANCE VI_1"]["state"] == "MASTER"
    wait_for(lambda: h.ran == [("MASTER", "VI_1", "first")])
    assert h.inbox.busy()
    h.gate.set()
    wait_for(lambda: len(h.journal()) == 1)
    wait_for(lambda: not h.inbox.busy())
    assert [(r["event"]["state"], r["outcome"]) for r in h.journal()] == [("MASTER", DONE)]
    assert h.inbox.counts["events"] == 1


def test_latest_event_wins_master_backup_master_ends_master(h):
    h.hold = ("MASTER",)
    h.gate.clear()
    assert ask(h.sock_path, event_msg(h, "MASTER", 100))["ok"]
    wait_for(lambda: h.ran, what="the first MASTER running")
    assert ask(h.sock_path, event_msg(h, "BACKUP", 200))["ok"]
    assert ask(h.sock_path, event_msg(h, "MASTER", 300))["ok"]
    h.gate.set()
    wait_for(lambda: len(h.journal()) == 3)
    assert [(r["event"]["state"], r["outcome"]) for r in h.journal()] == [
        ("MASTER", SUPERSEDED),
        ("BACKUP", STALE),
        ("MASTER", DONE),
    ]
    assert h.ran[-2:] == [("MASTER", "VI_1", "first"), ("MASTER", "VI_1", "second")]
    wait_for(lambda: not h.inbox.busy())  # the role file is written after the journal
    assert read_role(h.run_dir) == "MASTER"


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"state": "BOGUS"}, "state must be one of"),
        ({"kind": "VRRP"}, "kind must be one of"),
        ({"priority": 300}, "priority must be 0-255"),
        ({"order": [1, 2]}, "order must be three integers"),
        ({"order": ["a", 2, 3]}, "order must be three integers"),
    ],
)
def test_a_bad_event_is_refused_and_nothing_is_noted(h, over, reason):
    answer = ask(h.sock_path, event_msg(h, "MASTER", 100, over=over))
    assert answer["ok"] is False and reason in answer["reason"]
    assert not os.path.exists(os.path.join(h.run_dir, "seen.json"))
    assert ask(h.sock_path, event_msg(h, "BACKUP", 100)) == {"ok": True}  # still serving


def test_messages_that_are_not_events(h):
    s = connect(h.sock_path)
    s.sendall(b"not json\n")
    assert "not a JSON line" in read_line(s)["reason"]
    s.sendall(b'{"v": 2, "config": "x"}\n')
    assert "wire version 2" in read_line(s)["reason"]
    s.sendall(json.dumps({"v": 1, "config": h.config}).encode() + b"\n")
    assert read_line(s)["reason"] == "no event"
    # The connection keeps its framing after a refusal: the next line is served.
    s.sendall(json.dumps({"v": 1, "config": h.config, "hello": "test"}).encode() + b"\n")
    assert read_line(s) == {"ok": True}
    s.close()


def test_an_event_for_another_config_file_is_refused(h):
    other = os.path.join(h.base, "other.yaml")
    answer = ask(h.sock_path, event_msg(h, "MASTER", 100, config=other))
    assert answer["ok"] is False
    assert f"this agent runs with config {h.config}, not {other}" in answer["reason"]
    assert h.inbox.counts["events"] == 0
    # The same file by another name is the same config.
    link = os.path.join(h.base, "link.yaml")
    os.symlink(h.config, link)
    assert ask(h.sock_path, event_msg(h, "MASTER", 100, config=link)) == {"ok": True}


def test_an_overlong_line_is_refused_and_the_agent_keeps_serving(h):
    s = connect(h.sock_path)
    s.sendall(b"x" * (MAX_MESSAGE + 100))
    answer = read_line(s)
    assert answer["ok"] is False and f"longer than {MAX_MESSAGE}" in answer["reason"]
    assert s.recv(10) == b""  # and closed: the line's end cannot be found again
    s.close()
    assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}


def test_a_stalled_client_blocks_nobody_and_is_closed(h, monkeypatch):
    monkeypatch.setattr(inbox_mod, "LINE_TIMEOUT", 0.3)
    stalled = connect(h.sock_path)
    stalled.sendall(b'{"v": 1, "conf')  # and nothing more
    assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}
    assert stalled.recv(10) == b""  # closed once its line is overdue (recv waits for that)
    stalled.close()


def test_connections_are_bounded(h, monkeypatch):
    monkeypatch.setattr(inbox_mod, "MAX_CONNECTIONS", 2)
    hello = json.dumps({"v": 1, "config": h.config, "hello": "test"}).encode() + b"\n"
    held = []
    for _ in range(2):
        s = connect(h.sock_path)
        s.sendall(hello)
        assert read_line(s) == {"ok": True}
        held.append(s)
    extra = connect(h.sock_path)
    assert extra.recv(10) == b""  # turned away at once: its door runs the transition itself
    extra.close()
    held.pop().close()
    wait_for(lambda: len(h.inbox._clients) == 1)
    assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}
    for s in held:
        s.close()


def test_a_crashing_transition_does_not_stop_the_event_thread(short_dir, caplog):
    h = Harness(short_dir)

    def planner(event):
        if event.state == "FAULT":
            raise RuntimeError("bug in a planner")
        return h.planner(event)

    h.inbox.planner = planner
    h.inbox.start()
    try:
        assert ask(h.sock_path, event_msg(h, "FAULT", 100))["ok"]
        assert ask(h.sock_path, event_msg(h, "MASTER", 100, name="VI_2"))["ok"]
        wait_for(lambda: ("MASTER", "VI_2", "second") in h.ran)
    finally:
        h.inbox.stop()
    assert h.inbox.counts["errors"] == 1
    assert "FAULT instance VI_1 prio 100: transition crashed" in caplog.text


def test_stop_runs_the_events_already_taken(short_dir):
    h = Harness(short_dir)
    h.hold = ("MASTER",)
    h.gate.clear()
    h.inbox.start()
    assert ask(h.sock_path, event_msg(h, "MASTER", 100))["ok"]
    assert ask(h.sock_path, event_msg(h, "BACKUP", 100, name="VI_2"))["ok"]
    wait_for(lambda: h.ran)
    stopper = threading.Thread(target=h.inbox.stop)
    stopper.start()
    wait_for(lambda: not os.path.exists(h.sock_path), what="the socket removed")
    h.gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert [r["event"]["state"] for r in h.journal()] == ["MASTER", "BACKUP"]


# -- where it listens


def test_the_run_dir_is_created_0700_and_the_socket_is_0600(short_dir):
    h = Harness(short_dir)
    old = os.umask(0)  # the most permissive umask: the modes below must hold all the same
    try:
        h.inbox.start()
        assert os.umask(0) == 0  # and the process's umask is put back after binding
        assert stat.S_IMODE(os.stat(h.run_dir).st_mode) == 0o700
        st = os.lstat(h.sock_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077 == 0
    finally:
        os.umask(old)
        h.inbox.stop()
    assert not os.path.exists(h.sock_path)


def test_a_run_dir_writable_by_others_is_refused(short_dir):
    h = Harness(short_dir)
    os.mkdir(h.run_dir)
    os.chmod(h.run_dir, 0o777)
    with pytest.raises(RunDirUnsafe, match=f"run directory {h.run_dir} is writable by group or "
                                           f"others \\(mode 0777\\)"):
        h.inbox.start()
    assert not os.path.exists(h.sock_path)


def test_a_run_dir_of_another_user_is_refused(short_dir):
    other = os.geteuid() + 1  # the agent's uid as the inbox sees it: the seam for ownership
    h = Harness(short_dir, uid=other)
    os.mkdir(h.run_dir, 0o700)
    with pytest.raises(RunDirUnsafe, match=f"run directory {h.run_dir} is owned by uid "
                                           f"{os.geteuid()}, not by this agent's uid {other}"):
        h.inbox.start()


def test_something_else_at_the_socket_path_is_refused(short_dir):
    h = Harness(short_dir)
    os.mkdir(h.run_dir, 0o700)
    with open(h.sock_path, "w") as f:
        f.write("mine")
    with pytest.raises(RunDirUnsafe, match="exists and is not a socket"):
        h.inbox.start()
    with open(h.sock_path) as f:
        assert f.read() == "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="a socket owned by another uid needs root to make")
def test_a_socket_owned_by_someone_else_is_refused(short_dir):
    h = Harness(short_dir)
    os.mkdir(h.run_dir, 0o700)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(h.sock_path)
    s.close()
    os.chown(h.sock_path, 65534, 65534)
    with pytest.raises(RunDirUnsafe, match=f"socket {h.sock_path} is owned by uid 65534"):
        h.inbox.start()
    assert os.lstat(h.sock_path).st_uid == 65534  # left alone


def test_a_stale_socket_of_ours_is_replaced(short_dir):
    h = Harness(short_dir)
    os.mkdir(h.run_dir, 0o700)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(h.sock_path)  # bound, never listening: what an agent killed with SIGKILL leaves
    s.close()
    h.inbox.start()
    try:
        assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}
    finally:
        h.inbox.stop()


def test_a_second_agent_on_the_same_run_dir_is_refused(h):
    second = Inbox(h.run_dir, h.config, h.sequencer, h.planner, lambda e: 1.0)
    with pytest.raises(RunDirUnsafe, match=f"another agent listens on {h.sock_path}"):
        second.start()
    assert ask(h.sock_path, event_msg(h, "MASTER", 100)) == {"ok": True}  # the first goes on


def test_peers_allowed():
    assert peer_allowed(0, 1000) and peer_allowed(1000, 1000)
    assert not peer_allowed(1001, 1000)
    assert peer_allowed(0, 0) and not peer_allowed(65534, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
def test_a_peer_of_another_uid_is_closed_unheard(short_dir, caplog):
    h = Harness(short_dir)
    h.inbox.start()
    try:
        # Loosen what keeps others out, as a careless admin might, to reach the uid check.
        for d in (short_dir, h.run_dir):
            os.chmod(d, 0o711)
        os.chmod(h.sock_path, 0o666)
        client = (
            "import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.settimeout(10)\n"
            "s.connect(sys.argv[1])\n"
            "try:\n"
            "    s.sendall(sys.argv[2].encode() + b'\\n')\n"
            "    print(s.recv(100) or 'closed')\n"
            "except OSError:\n"
            "    print('closed')\n"
        )
        msg = json.dumps(event_msg(h, "MASTER", 100))
        out = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", client, h.sock_path, msg],
            user=65534, capture_output=True, text=True, timeout=30, cwd="/",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "closed"  # closed without an answer
        assert h.inbox.counts["events"] == 0
        assert "uid 65534 refused (only root and uid 0)" in caplog.text
    finally:
        h.inbox.stop()


def test_a_socket_path_too_long_for_af_unix_is_one_clear_error(tmp_path):
    run_dir = str(tmp_path / ("d" * 100))
    h = Harness(str(tmp_path))
    h.inbox = Inbox(run_dir, h.config, h.sequencer, h.planner, lambda e: 1.0)
    with pytest.raises(RunDirUnsafe, match="longer than 107 bytes"):
        h.inbox.start()


def test_check_event_round_trips_a_door_event():
    ev = Event("GROUP", "VG 1", "STOP", None, "notify_stop", (5, 6, 7))
    assert check_event(json.loads(json.dumps(ev.to_dict()))) == ev


# -- the periodic thread


class Busy:
    def __init__(self):
        self.value = False
        self.looks = 0

    def __call__(self):
        self.looks += 1
        return self.value


def test_periodic_runs_with_the_role_the_last_transition_left(short_dir):
    run_dir = os.path.join(short_dir, "run")
    write_role(run_dir, "MASTER", "VI_1")
    calls = []
    p = PeriodicThread(
        lambda role, should_yield: calls.append(role), 0.01, lambda: read_role(run_dir), Busy()
    )
    p.start()
    try:
        wait_for(lambda: "MASTER" in calls)
        write_role(run_dir, "BACKUP", "VI_1")
        wait_for(lambda: calls[-1] == "BACKUP")
    finally:
        p.stop()


def test_periodic_waits_while_an_event_is_queued_or_running(short_dir):
    busy = Busy()
    busy.value = True
    calls = []
    p = PeriodicThread(lambda role, should_yield: calls.append(role), 0.01, lambda: None, busy)
    p.start()
    try:
        wait_for(lambda: busy.looks >= 3)  # it looked a few times and never ran meanwhile
        assert calls == []
        busy.value = False
        wait_for(lambda: calls)
    finally:
        p.stop()


def test_periodic_duty_is_told_to_yield_when_an_event_comes(short_dir):
    busy = Busy()
    yielded = threading.Event()
    started = threading.Event()

    def duty(role, should_yield):
        started.set()
        wait_for(should_yield, what="should_yield")
        yielded.set()

    p = PeriodicThread(duty, 0.01, lambda: "MASTER", busy)
    p.start()
    try:
        assert started.wait(10)
        busy.value = True  # an event arrived
        assert yielded.wait(10)
    finally:
        p.stop()


def test_periodic_survives_a_failing_duty(short_dir, caplog):
    calls = []

    def duty(role, should_yield):
        calls.append(role)
        if len(calls) == 1:
            raise RuntimeError("bug in a duty")

    p = PeriodicThread(duty, 0.01, lambda: "BACKUP", Busy())
    p.start()
    try:
        wait_for(lambda: len(calls) >= 2)
    finally:
        p.stop()
    assert "periodic work while BACKUP failed" in caplog.text


# -- the agent runs them beside its loop


class Part:
    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail

    def start(self):
        self.log.append(f"{self.name} start")
        if self.fail:
            raise RunDirUnsafe("refused")

    def stop(self):
        self.log.append(f"{self.name} stop")


class Warm:
    def start(self):
        pass


def test_the_agent_starts_what_runs_beside_it_and_stops_it_last_first():
    events = []
    agent = Agent(parse_config("", "t"), None, None, None, lambda: None, Warm(),
                  beside=[Part("inbox", events), Part("periodic", events)])
    agent.run(lambda: True)
    assert events == ["inbox start", "periodic start", "periodic stop", "inbox stop"]


def test_an_agent_whose_inbox_cannot_start_stops_what_started():
    events = []
    agent = Agent(parse_config("", "t"), None, None, None, lambda: None, Warm(),
                  beside=[Part("first", events), Part("inbox", events, fail=True)])
    with pytest.raises(RunDirUnsafe):
        agent.run(lambda: False)
    assert events == ["first start", "inbox start", "first stop"]
