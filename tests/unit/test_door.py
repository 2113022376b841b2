"""The doors in real processes against a real agent inbox (test_inbox.Harness: a real Unix
socket, Sequencer and Journal; a recording planner), and without one: the full CLI then runs
the transition in the door's process, with today's exit codes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from test_inbox import Harness, short_dir, wait_for  # noqa: F401 (short_dir is a fixture)

from lvs_hooks import cli, door
from lvs_hooks.config import PathsConfig, parse_config
from lvs_hooks.door import Unreadable, read_run_dir, split_args
from lvs_hooks.events import fifo
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.role import read_role
from lvs_hooks.events.sequencer import DONE, IGNORED, STALE, SUPERSEDED

# The console script's own code: `lvs-hooks` is `lvs_hooks.door:main`.
DOOR = "import sys; from lvs_hooks.door import main; sys.exit(main())"
# The same door, then the names of every module it imported, into the file named first.
DOOR_MODULES = textwrap.dedent(
    """
    import json, sys
    from lvs_hooks.door import main
    try:
        main(sys.argv[2:])
    finally:
        with open(sys.argv[1], "w") as f:
            json.dump(sorted(sys.modules), f)
    """
)
HEAVY = ("click", "yaml", "pyroute2", "filelock", "lvs_hooks.cli", "lvs_hooks.config")
ENV = {**os.environ, "LVS_HOOKS_LOG_STDERR": "1"}


def config_text(base, instances=None):
    text = (
        f"paths:\n  state_dir: {base}/state\n  run_dir: {base}/run\n  proc_root: {base}/proc\n"
    )
    if instances is not None:
        text += f"transitions:\n  instances: [{', '.join(instances)}]\n"
    return text


def fake_proc(base):
    vs = os.path.join(base, "proc", "sys", "net", "ipv4", "vs")
    os.makedirs(vs)
    with open(os.path.join(vs, "sloppy_tcp"), "w") as f:
        f.write("0\n")


@pytest.fixture
def agent(short_dir):  # noqa: F811
    """A live agent inbox whose config file names its own run directory; the config watches
    only `other`, so a door that falls back and runs a transition itself touches nothing."""
    h = Harness(short_dir, config_text(short_dir, ["other"]))
    h.inbox.start()
    yield h
    h.gate.set()
    h.inbox.stop()


def run_door(config, *args, code=DOOR):
    return subprocess.run(
        [sys.executable, "-c", code, "--config", config, *args],
        capture_output=True, text=True, timeout=60, env=ENV,
    )


def journal(base):
    return Journal(os.path.join(base, "state"), 1000).read()[0]


# -- through the agent


def test_events_handed_by_doors_are_noted_and_run_in_order(agent):
    a = run_door(agent.config, "notify", "INSTANCE", "VI_1", "MASTER", "100")
    assert a.returncode == 0, a.stderr
    b = run_door(agent.config, "backup", "VI_1")
    assert b.returncode == 0, b.stderr
    wait_for(lambda: len(agent.journal()) == 2)
    records = agent.journal()
    assert [(r["event"]["state"], r["event"]["source"], r["outcome"]) for r in records] == [
        ("MASTER", "notify", DONE),
        ("BACKUP", "notify_backup", DONE),
    ]
    assert all(r["pid"] == os.getpid() for r in records)  # run by the agent, not the doors
    assert agent.seen()["INSTANCE VI_1"]["state"] == "BACKUP"
    assert "no agent answered" not in a.stderr + b.stderr


def test_latest_event_wins_across_doors(agent):
    agent.hold = ("MASTER",)
    agent.gate.clear()
    assert run_door(agent.config, "notify", "INSTANCE", "VI_1", "MASTER", "100").returncode == 0
    wait_for(lambda: agent.ran, what="the first MASTER running")
    assert run_door(agent.config, "notify", "INSTANCE", "VI_1", "BACKUP", "100").returncode == 0
    assert run_door(agent.config, "master", "VI_1").returncode == 0
    agent.gate.set()
    wait_for(lambda: len(agent.journal()) == 3)
    assert [(r["event"]["state"], r["outcome"]) for r in agent.journal()] == [
        ("MASTER", SUPERSEDED),
        ("BACKUP", STALE),
        ("MASTER", DONE),
    ]
    wait_for(lambda: not agent.inbox.busy())
    assert read_role(agent.run_dir) == "MASTER"


def test_a_door_imports_only_the_standard_library(agent):
    out = os.path.join(agent.base, "modules.json")
    r = subprocess.run(
        [sys.executable, "-c", DOOR_MODULES, out, "--config", agent.config,
         "notify", "INSTANCE", "VI_1", "MASTER", "100"],
        capture_output=True, text=True, timeout=60, env=ENV,
    )
    assert r.returncode == 0, r.stderr
    wait_for(lambda: agent.inbox.counts["events"] == 1)  # it did hand the event over
    with open(out) as f:
        modules = json.load(f)
    heavy = [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY]
    assert heavy == []
    ours = sorted(m for m in modules if m.startswith("lvs_hooks"))
    assert ours == [
        "lvs_hooks", "lvs_hooks.door", "lvs_hooks.events", "lvs_hooks.events.clock",
        "lvs_hooks.events.keepalived", "lvs_hooks.safeio", "lvs_hooks.trust",
    ]


def test_a_door_for_another_config_file_falls_back(agent):
    other = os.path.join(agent.base, "other.yaml")
    with open(other, "w") as f:  # the same run directory: the door finds the agent's socket
        f.write(config_text(agent.base, ["other"]))
    r = run_door(other, "notify", "INSTANCE", "VI_1", "MASTER", "100")
    assert r.returncode == 0, r.stderr
    sock = os.path.join(agent.run_dir, "agent.sock")
    assert (
        f"no agent answered on {sock} (the agent refused: this agent runs with config "
        f"{agent.config}, not {other}): running the transition in this process"
    ) in r.stderr
    (record,) = journal(agent.base)
    assert record["outcome"] == IGNORED and record["pid"] != os.getpid()  # the door ran it
    assert agent.ran == [] and agent.inbox.counts["events"] == 0


def test_the_agent_command_takes_the_doors_events(short_dir):  # noqa: F811
    """`lvs-hooks agent` as keepalived's director runs it: the doors hand it their events and
    it runs the transitions (the config watches `other` only: each is journalled, none acts)."""
    config = os.path.join(short_dir, "c.yaml")
    with open(config, "w") as f:
        f.write(config_text(short_dir, ["other"]))
    sock = os.path.join(short_dir, "run", "agent.sock")
    with open(os.path.join(short_dir, "agent.err"), "w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-c", DOOR, "--config", config, "agent"],
            stdout=subprocess.DEVNULL, stderr=err, env=ENV,
        )
    try:
        wait_for(lambda: os.path.exists(sock), what="the agent's socket")
        r = run_door(config, "notify", "GROUP", "VG", "MASTER", "0")
        assert r.returncode == 0 and "no agent answered" not in r.stderr, r.stderr
        wait_for(lambda: len(journal(short_dir)) == 1)
        (record,) = journal(short_dir)
        assert record["pid"] == agent.pid and record["event"]["kind"] == "GROUP"
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    assert not os.path.exists(sock)  # removed on the way out
    with open(os.path.join(short_dir, "agent.err")) as f:
        log = f.read()
    assert "MASTER group VG prio 0: from keepalived (notify, door pid" in log


# -- without an agent


@pytest.mark.parametrize(
    "args",
    [
        ["notify", "INSTANCE", "VI_1", "MASTER", "150"],  # 6: the reseed fails without IPVS
        ["notify", "INSTANCE", "VI_2", "BACKUP", "150"],  # 0: not a watched instance
        ["notify", "INSTANCE", "VI_1", "MASTER"],  # 2: keepalived's arguments are wrong
        ["backup", "a", "b"],
        ["fault", "--group"],
        ["stop", "VI_2"],
    ],
)
def test_without_an_agent_the_door_is_the_cli(short_dir, args):  # noqa: F811
    fake_proc(short_dir)
    config = os.path.join(short_dir, "c.yaml")
    with open(config, "w") as f:
        f.write(config_text(short_dir, ["VI_1"]))
    by_door = run_door(config, *args)
    by_cli = subprocess.run(
        [sys.executable, "-m", "lvs_hooks", "--config", config, *args],
        capture_output=True, text=True, timeout=60, env=ENV,
    )
    assert by_door.returncode == by_cli.returncode, (by_door.stderr, by_cli.stderr)
    errors = [line for line in by_door.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [line for line in by_cli.stderr.splitlines() if line.startswith("Error:")]
    if by_door.returncode != 2:
        sock = os.path.join(short_dir, "run", "agent.sock")
        assert (
            f"no agent answered on {sock} (no socket): running the transition in this process"
        ) in by_door.stderr


def test_help_and_other_commands_go_to_the_cli(short_dir):  # noqa: F811
    r = subprocess.run([sys.executable, "-c", DOOR, "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Usage: lvs-hooks" in r.stdout and "handover" in r.stdout
    r = subprocess.run([sys.executable, "-c", DOOR, "notify", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "generic `notify` script" in r.stdout


# -- the FIFO door


class FifoDoorProcess:
    def __init__(self, base, config, code=DOOR, extra=()):
        self.path = os.path.join(base, "vrrp.fifo")
        os.mkfifo(self.path, 0o600)
        self.err = os.path.join(base, "door.err")
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, *extra, "--config", config, "fifo", self.path],
                stdout=subprocess.DEVNULL, stderr=err, env=ENV,
            )
        wait_for(lambda: "reading keepalived events from FIFO" in self.stderr(),
                 what="the FIFO door reading")
        # keepalived's end, opened after the script started, written non-blocking.
        self.wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)

    def stderr(self):
        with open(self.err) as f:
            return f.read()

    def write(self, *lines):
        os.write(self.wfd, "".join(line + "\n" for line in lines).encode())

    def terminate_and_wait(self, *stop_lines):
        """As keepalived stops: SIGTERM first, then the STOP lines."""
        self.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining, then exiting" in self.stderr(), what="the drain")
        self.write(*stop_lines)
        assert self.proc.wait(30) == 0, self.stderr()
        os.close(self.wfd)


def test_the_fifo_door_hands_events_to_the_agent_and_drains_on_sigterm(agent):
    d = FifoDoorProcess(agent.base, agent.config)
    d.write('INSTANCE "VI_1" BACKUP 100', "not keepalived", 'GROUP "VG" MASTER 0')
    wait_for(lambda: len(agent.journal()) == 2)
    d.terminate_and_wait('INSTANCE "VI_1" STOP 100', 'GROUP "VG" STOP 0')
    wait_for(lambda: len(agent.journal()) == 4)
    assert [(r["event"]["kind"], r["event"]["state"]) for r in agent.journal()] == [
        ("INSTANCE", "BACKUP"), ("GROUP", "MASTER"), ("INSTANCE", "STOP"), ("GROUP", "STOP"),
    ]
    assert all(r["event"]["source"] == "fifo" for r in agent.journal())
    assert [r["event"]["order"][2] for r in agent.journal()] == [1, 3, 4, 5]  # line numbers
    assert "line 2 ignored: not a keepalived VRRP event line" in d.stderr()
    assert "4 events handed to the agent, 1 ignored" in d.stderr()


def test_the_fifo_door_imports_only_the_standard_library(agent):
    out = os.path.join(agent.base, "modules.json")
    d = FifoDoorProcess(agent.base, agent.config, DOOR_MODULES, (out,))
    d.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: agent.inbox.counts["events"] == 1)
    d.terminate_and_wait('INSTANCE "VI_1" STOP 100')
    with open(out) as f:
        modules = json.load(f)
    assert [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY] == []


def test_the_fifo_door_without_an_agent_reads_in_its_own_process(short_dir):  # noqa: F811
    config = os.path.join(short_dir, "c.yaml")
    with open(config, "w") as f:
        f.write(config_text(short_dir, ["other"]))
    d = FifoDoorProcess(short_dir, config)
    assert "no agent answered on" in d.stderr() and "reading the FIFO in this process" in (
        d.stderr()
    )
    d.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: len(journal(short_dir)) == 1)
    d.terminate_and_wait('INSTANCE "VI_1" STOP 100')
    records = journal(short_dir)
    assert [r["event"]["state"] for r in records] == ["BACKUP", "STOP"]
    assert {r["pid"] for r in records} == {d.proc.pid}


def test_the_fifo_door_reads_on_itself_when_the_agent_goes_away(agent):
    d = FifoDoorProcess(agent.base, agent.config)
    d.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: len(agent.journal()) == 1)
    agent.inbox.stop()  # the agent stops: it closes the door's connection
    agent.inbox.stop = lambda: None  # already stopped, for the fixture
    wait_for(lambda: "went away: reading the FIFO" in d.stderr())
    d.write('INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: len(journal(agent.base)) == 2)
    d.terminate_and_wait('INSTANCE "VI_1" STOP 100')
    records = journal(agent.base)
    assert [(r["event"]["state"], r["pid"]) for r in records] == [
        ("BACKUP", os.getpid()),  # by the agent
        ("MASTER", d.proc.pid),  # by the door's own reader (the config watches `other` only)
        ("STOP", d.proc.pid),
    ]
    assert [r["event"]["order"][2] for r in records] == [1, 2, 3]


# -- the pieces


def test_constants_a_door_cannot_import():
    assert door.DEFAULT_CONFIG == cli.DEFAULT_CONFIG
    assert PathsConfig().run_dir == door.DEFAULT_RUN_DIR
    assert door.DRAIN_WINDOW == fifo.DRAIN_WINDOW


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["notify", "A"], ("/etc/lvs-hooks/lvs-hooks.yaml", False, False, "notify", ["A"])),
        (["--config", "c.yaml", "--debug", "master", "VI_1"],
         ("c.yaml", True, True, "master", ["VI_1"])),
        (["--config=c.yaml", "fifo", "/f"], ("c.yaml", True, False, "fifo", ["/f"])),
        (["--help"], None),
        (["--version"], None),
        (["--config"], None),
        (["--config", "", "notify"], None),
        ([], None),
    ],
)
def test_split_args(argv, expect):
    a = split_args(argv)
    got = None if a is None else (a.config, a.explicit, a.debug, a.command, a.rest)
    assert got == expect


UNDERSTOOD = [
    "",
    "sync:\n  syncid: 5\n",
    "paths:\n  run_dir: /run/x\n",
    "paths:\n    state_dir: /s   # comment\n    run_dir: /run/x # here\n",
    'paths:\n  run_dir: "/run/with space"\n',
    "paths:\n  run_dir: '/run/it''s'\n",
    "# top\npaths: # the paths\n  # a comment\n\n  run_dir: /r\nlog: {level: info}\n",
    "transitions:\n  instances:\n    - VI_1\npaths:\n  run_dir: /r\n",
    "paths:\n  state_dir: /s\n",
    "\ufeffpaths:\n  run_dir: /bom\n",
]
NOT_UNDERSTOOD = [
    "paths: {run_dir: /r}\n",
    "paths:\n  run_dir: relative\n",
    "paths:\n  run_dir: /a\n  run_dir: /b\n",
    "paths:\n  run_dir: |\n    /r\n",
    "paths:\n  run_dir: /r\n    continued\n",
    'paths:\n  run_dir: "/r\\n"\n',
    "paths:\n  run_dir: &a /r\n",
    "paths:\n\trun_dir: /r\n",
    "---\npaths:\n  run_dir: /r\n",
    "paths:\n  run_dir: /r\npaths:\n  run_dir: /s\n",
    "a: [1,\n2]\n",
    "paths:\n  run_dir: ~\n",
    'paths:\n  run_dir: "/r" x\n',
]


@pytest.mark.parametrize("text", UNDERSTOOD)
def test_what_the_door_reads_of_a_config_is_what_the_cli_reads(text):
    got = read_run_dir(text)
    cfg = parse_config(text.lstrip("\ufeff"), "test.yaml") if text else parse_config("", "t")
    assert (got or door.DEFAULT_RUN_DIR) == cfg.paths.run_dir


@pytest.mark.parametrize("text", NOT_UNDERSTOOD)
def test_what_the_door_does_not_understand_is_left_to_the_cli(text):
    with pytest.raises(Unreadable):
        read_run_dir(text)


def test_the_shipped_example_config_is_understood():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "etc", "lvs-hooks.yaml")) as f:
        assert read_run_dir(f.read()) == "/run/lvs-hooks"


def test_an_agent_that_does_not_answer_in_time_means_fallback(short_dir, monkeypatch):  # noqa: F811
    """A listener that accepts and never answers: the door gives up after ACK_TIMEOUT."""
    run_dir = os.path.join(short_dir, "run")
    os.mkdir(run_dir, 0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(run_dir, "agent.sock"))
    listener.listen(4)
    monkeypatch.setattr(door, "ACK_TIMEOUT", 0.2)
    try:
        conn = door.AgentConnection(os.path.join(run_dir, "agent.sock"), door.ACK_TIMEOUT)
        with pytest.raises(door.NoAgent, match="no acknowledgement within 0.2 s") as e:
            conn.ask(door.hello_message("/c.yaml", "test"))
        assert not e.value.expected  # a wedged agent is worth a warning
        conn.close()
    finally:
        listener.close()
