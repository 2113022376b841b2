"""events.handoff: a FIFO reader that started without an agent hands events, and leaves its
duties, to an agent that comes up later (the lab: keepalived starts its FIFO script before the
agent's socket exists), and takes them back when the agent goes. A real inbox on its socket, a
real FIFO; the clock of the handoff's cache is the one seam."""

import os
import threading

from test_events_fifo import wait_for
from test_inbox import Harness as InboxHarness
from test_inbox import short_dir  # noqa: F401  (fixture)

from lvs_hooks.door import SOCKET_NAME
from lvs_hooks.events.fifo import FifoReader
from lvs_hooks.events.handoff import AgentHandoff
from lvs_hooks.events.sequencer import Plan, Step


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_events_and_duties_go_to_an_agent_that_starts_later(short_dir):  # noqa: F811
    agent = InboxHarness(short_dir)  # not started yet: no socket
    fifo = os.path.join(short_dir, "vrrp.fifo")
    os.mkfifo(fifo, 0o600)
    ran_here, duties = [], []

    def planner(event):
        return Plan([Step("record", lambda: (ran_here.append(event.state), ("ok", {}))[1])])

    clock = Clock()
    handoff = AgentHandoff(os.path.join(agent.run_dir, SOCKET_NAME), agent.config, clock=clock)
    reader = FifoReader(fifo, agent.sequencer, planner, lambda e: 10.0,
                        duty=lambda role, y: duties.append(role), duty_period=0.01,
                        handoff=handoff)
    reader.drain_window = 0.05
    wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    t = threading.Thread(target=reader.run)
    t.start()
    try:
        os.write(wfd, b'INSTANCE "VI_1" BACKUP 100\n')
        wait_for(lambda: ran_here == ["BACKUP"] and duties)  # no agent: all here
        agent.inbox.start()
        clock.t += 10  # past the cached "no agent"
        os.write(wfd, b'INSTANCE "VI_1" MASTER 100\n')
        wait_for(lambda: ("MASTER", "VI_1", "second") in agent.ran)
        assert ran_here == ["BACKUP"]  # the agent ran it, not this process
        n = len(duties)
        clock.t += 10
        wait_for(lambda: reader._handed)
        assert len(duties) <= n + 1  # and the duties stood down
        agent.inbox.stop()
        clock.t += 10  # the agent is gone: events and duties run here again
        os.write(wfd, b'INSTANCE "VI_1" BACKUP 100\n')
        wait_for(lambda: ran_here == ["BACKUP", "BACKUP"])
        wait_for(lambda: len(duties) > n + 1)
        assert reader.role == "BACKUP"
    finally:
        reader.request_stop()
        t.join(10)
        os.close(wfd)
        reader.close()


def test_a_silent_agent_is_taken_as_busy_for_a_grace_then_as_gone(short_dir, caplog):  # noqa: F811
    """A socket that is there but does not answer (the agent busy) keeps the duties with the
    agent for SLOW_GRACE seconds after its last answer; a socket that is gone gives them back at
    once. The silent agent is a real listening socket that never accepts."""
    import logging
    import socket

    from lvs_hooks.events.handoff import RECHECK, SLOW_GRACE

    caplog.set_level(logging.INFO, logger="lvs_hooks.events.handoff")
    agent = InboxHarness(short_dir)
    clock = Clock()
    handoff = AgentHandoff(agent.sock_path, agent.config, clock=clock, timeout=0.2)
    assert not handoff.alive()  # no socket yet
    agent.inbox.start()
    clock.t += RECHECK
    assert handoff.alive()
    agent.inbox.stop()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.exists(agent.sock_path):
            os.unlink(agent.sock_path)
        silent.bind(agent.sock_path)
        silent.listen(8)
        clock.t += RECHECK
        assert handoff.alive()  # silent 2 s after an answer: busy
        assert "taken as busy, not gone" in caplog.text
        clock.t = RECHECK + SLOW_GRACE - 0.5
        assert handoff.alive()  # still within the grace
        clock.t = RECHECK + SLOW_GRACE + RECHECK
        assert not handoff.alive()  # silent past the grace: hung, taken as gone
        assert "no longer answers (no acknowledgement within 0.2 s)" in caplog.text
    finally:
        silent.close()
    # an agent that answers again is there at once; one whose socket is gone is gone at once
    agent2 = InboxHarness(short_dir)
    if os.path.exists(agent2.sock_path):  # the silent socket's file stays after its close
        os.unlink(agent2.sock_path)
    agent2.inbox.start()
    try:
        clock.t += RECHECK
        assert handoff.alive()
    finally:
        agent2.inbox.stop()
    if os.path.exists(agent2.sock_path):
        os.unlink(agent2.sock_path)
    clock.t += RECHECK
    assert not handoff.alive()
    assert caplog.text.count("no longer answers") == 2
    # an agent that answers no (it runs another config) is not one to wait for, even just after
    # an answer
    agent3 = InboxHarness(short_dir)
    agent3.inbox.start()
    try:
        clock.t += RECHECK
        assert handoff.alive()
        other = AgentHandoff(agent3.sock_path, agent3.config + ".other", clock=clock, timeout=0.2)
        other._answered = clock.t  # as if it had answered a moment ago
        assert not other.alive()
    finally:
        agent3.inbox.stop()
