"""keepalived's entry points as doors to the agent: the `lvs-hooks` console script.

keepalived starts `lvs-hooks notify ...`, `lvs-hooks master VI_1` or `lvs-hooks fifo FIFO` at
the moment a transition should begin. The full command line (click, pyroute2, yaml ...) takes
more than a second to start; a door starts in a few tens of milliseconds because it imports only
the standard library and the pure event modules (events.keepalived, events.clock). It turns
keepalived's arguments or FIFO lines into Events and hands each to the agent
(`lvs-hooks agent`, events.inbox) over `<run_dir>/agent.sock`, which runs the transitions.

Anything else, and any event no agent takes (no socket, nobody listening, no acknowledgement in
ACK_TIMEOUT, an agent that runs with another config file, arguments the door does not
understand), goes to the full command line, which runs the transition in this process as it
always did, with its own messages and exit codes.

Wire format (one JSON object per line each way; at most MAX_MESSAGE bytes to the agent, at most
MAX_ANSWER from it):
    door:  {"v": 1, "config": "/abs/path.yaml", "event": Event.to_dict()}
           {"v": 1, "config": "/abs/path.yaml", "hello": "fifo"}      (no event: "are you there")
           {"v": 1, "config": "/abs/path.yaml", "request": "status", "text": true,
            "args": {...}}                (a command run by hand: "status", "explain" ...)
    agent: {"ok": true}  or  {"ok": false, "reason": "..."}; to a request, {"ok": true,
           "report": {...}, "text": "..."}
The agent acknowledges once it has noted the event as the newest of its instance and queued it.
"""

import contextlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, NoReturn, Optional, Tuple

from lvs_hooks import safeio, trust
from lvs_hooks.events.clock import fifo_order, notify_order
from lvs_hooks.events.keepalived import (
    MAX_LINE,
    ROLE_COMMANDS,
    ArgumentError,
    Event,
    Ignored,
    LineSplitter,
    parse_fifo_line,
    parse_notify_args,
    role_event,
)

# The same values as lvs_hooks.cli.DEFAULT_CONFIG and PathsConfig.run_dir's default, which a
# door cannot import (click, yaml); tests/unit/test_door.py keeps them equal.
DEFAULT_CONFIG = "/etc/lvs-hooks/lvs-hooks.yaml"
DEFAULT_RUN_DIR = "/run/lvs-hooks"
# After SIGTERM, how long to keep reading for keepalived's STOP lines: events.fifo.DRAIN_WINDOW
# (that module imports the sequencer, and with it filelock).
DRAIN_WINDOW = 0.7

SOCKET_NAME = "agent.sock"
WIRE_VERSION = 1
# lvs_hooks.config's cap (a door cannot import it): a bigger file is the CLI's to refuse.
MAX_CONFIG = 256 << 10
MAX_MESSAGE = 8192  # bytes per line to the agent; an event is about 150
# An answer carries a report: table-check's mismatches, or a status of some fifty real servers
# with its text, are more than MAX_MESSAGE. Capped at that, they fell back to a whole read of
# the kernel's table in the asking command, the read the agent is there to spare.
MAX_ANSWER = 256 << 20
# From connecting to the acknowledgement. The agent only notes and queues an event (well under
# a millisecond); one that takes this long is wedged, and the transition is better run here.
ACK_TIMEOUT = 1.0

DOOR_COMMANDS = ("notify", "fifo", *ROLE_COMMANDS)
# What a command run by hand asks of the agent and prints as it answers (ask_door).
ASK_COMMANDS = ("status", "snapshot", "table-check")
# A dump of a million templates takes seconds; a whole read, which the agent does only when its
# table in memory is not the table, minutes.
ASK_TIMEOUT = 600.0
_CHUNK = 65536


class NoAgent(Exception):
    """No agent takes the event. `expected`: nothing listens (no agent is set up, or it is
    stopped), which is routine; otherwise something is wrong and worth a warning. `silent`:
    something listens but did not answer in time (a busy agent, or a hung one)."""

    def __init__(self, reason: str, expected: bool = False, silent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.expected = expected
        self.silent = silent


class Args:
    """The global options before the command (as the full CLI takes them), the command and
    what follows it."""

    def __init__(self, config: str, explicit: bool, debug: bool, command: str, rest: List[str]):
        self.config = config
        self.explicit = explicit
        self.debug = debug
        self.command = command
        self.rest = rest


def split_args(argv: List[str]) -> Optional[Args]:
    """argv as `[--config FILE] [--debug] COMMAND ARGS...`; None for anything else (--help,
    --version, an unknown option), which the full CLI answers."""
    config, explicit, debug = DEFAULT_CONFIG, False, False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--debug":
            debug = True
        elif a == "--config" or a.startswith("--config="):
            if a == "--config":
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
            else:
                value = a[len("--config=") :]
            if not value:
                return None
            config, explicit = value, True
        elif a.startswith("-"):
            return None
        else:
            return Args(config, explicit, debug, a, argv[i + 1 :])
        i += 1
    return None


# -- where the agent listens


class Unreadable(ValueError):
    """A config file the door's reader does not understand: only the full loader may judge it."""


def read_run_dir(text: str) -> Optional[str]:
    """`paths.run_dir` of a YAML config, None when it does not set one.

    A small, conservative reader: a block-style top-level `paths:` mapping whose `run_dir:` is
    a plain, single- or double-quoted (no escapes) scalar on one line, an absolute path.
    Anything else it is not sure about raises Unreadable (the door then leaves the event to the
    full CLI, which loads the file with its real parser).
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    found: Optional[str] = None
    seen_paths = False
    in_paths = False
    child_indent = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if "\t" in line[: len(line) - len(stripped) + 1]:
            raise Unreadable(f"line {n}: a tab in the indentation")
        indent = len(line) - len(stripped)
        if indent == 0:
            in_paths = False
            key, value = _key_value(stripped, n)
            if key != "paths":
                continue
            if seen_paths:
                raise Unreadable(f"line {n}: paths twice")
            seen_paths = True
            if value not in ("", "~", "null"):
                raise Unreadable(f"line {n}: paths is not a block mapping")
            in_paths, child_indent = True, 0
            continue
        if not in_paths:
            continue  # inside another section: none of our business
        if child_indent == 0:
            child_indent = indent
        if indent != child_indent:
            # paths holds scalars only: a deeper line continues a value, a shallower one
            # breaks the mapping; either way not one-line scalars.
            raise Unreadable(f"line {n}: paths is not a mapping of one-line values")
        key, value = _key_value(stripped, n)
        path = _scalar(value, n)
        if key == "run_dir":
            if found is not None:
                raise Unreadable(f"line {n}: run_dir twice")
            if not os.path.isabs(path):
                raise Unreadable(f"line {n}: run_dir is not an absolute path")
            found = path
    return found


def _key_value(stripped: str, n: int) -> Tuple[str, str]:
    """`key: value` (value may be empty) with a plain key, or Unreadable."""
    key, sep, value = stripped.partition(":")
    key = key.rstrip(" ")
    if not sep or not key or not all(c.isalnum() or c in "_-" for c in key):
        raise Unreadable(f"line {n}: not a plain `key: value` line")
    if value and not value.startswith(" "):
        raise Unreadable(f"line {n}: not a plain `key: value` line")
    value = value.strip(" ")
    if value.startswith("#"):
        value = ""
    return key, value


def _scalar(value: str, n: int) -> str:
    if not value:
        raise Unreadable(f"line {n}: an empty value")
    quote = value[0]
    if quote in "\"'":
        end = 1
        out = []
        while True:
            j = value.find(quote, end)
            if j < 0:
                raise Unreadable(f"line {n}: a quoted value that does not end on its line")
            out.append(value[end:j])
            if quote == "'" and value[j + 1 : j + 2] == "'":  # '' is a quote in single quotes
                out.append("'")
                end = j + 2
                continue
            break
        rest = value[j + 1 :].strip(" ")
        if rest and not rest.startswith("#"):
            raise Unreadable(f"line {n}: something after a quoted value")
        text = "".join(out)
        if quote == '"' and "\\" in text:
            raise Unreadable(f"line {n}: an escape in a double-quoted value")
        return text
    # A plain scalar: up to a comment (" #"); indicators and ": " make it something else.
    if value[0] in "-?:,[]{}#&*!|>%@`":
        raise Unreadable(f"line {n}: not a plain scalar")
    cut = value.find(" #")
    if cut >= 0:
        value = value[:cut].rstrip(" ")
    if ": " in value or value.endswith(":"):
        raise Unreadable(f"line {n}: not a plain scalar")
    return value


def socket_path_for(config: str, explicit: bool) -> str:
    """Where the agent of this config file listens. NoAgent when the file cannot say, or when
    the file or the run directory is not root's alone (the full CLI then refuses, and says why:
    an event must not go to a socket someone else may have put there)."""
    try:
        if os.path.lexists(config):
            trust.check_path(config, "config file")
        data = safeio.read_file(config, MAX_CONFIG)
    except trust.Untrusted as e:
        raise NoAgent(e.message) from None
    except FileNotFoundError:
        if explicit:
            raise NoAgent(f"config {config}: no such file") from None
        data = None
    except OSError as e:
        raise NoAgent(f"config {config}: cannot read: {e.strerror or e}") from None
    run_dir = None
    if data is not None:
        try:
            run_dir = read_run_dir(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise NoAgent(f"config {config}: not UTF-8 text") from None
        except Unreadable as e:
            raise NoAgent(f"config {config}: {e}: left to the full parser") from None
    run_dir = run_dir or DEFAULT_RUN_DIR  # built-in defaults, as the CLI has them
    try:
        trust.check_path(run_dir, "run directory")
    except trust.Untrusted as e:
        raise NoAgent(e.message) from None
    return os.path.join(run_dir, SOCKET_NAME)


# -- talking to the agent


class AgentConnection:
    """One connection to the agent's inbox; `ask` sends a message and waits for its answer."""

    def __init__(self, path: str, timeout: float = ACK_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            self.close()
            raise NoAgent("no socket", expected=True) from None
        except ConnectionRefusedError:
            self.close()
            raise NoAgent("nobody listens", expected=True) from None
        except socket.timeout:
            self.close()
            raise NoAgent(f"no connection within {timeout:g} s", silent=True) from None
        except OSError as e:
            self.close()
            raise NoAgent(f"cannot connect: {e.strerror or e}") from None

    def close(self) -> None:
        self.sock.close()

    def ask(self, message: dict) -> dict:
        """Send one message; its answer once the agent took it, else NoAgent with its reason."""
        reply = self.exchange(message)
        if reply.get("ok") is not True:
            raise NoAgent(f"the agent refused: {reply.get('reason') or 'no reason given'}")
        return reply

    def exchange(self, message: dict) -> dict:
        """Send one message and return the agent's answer, whatever it says; NoAgent when
        there is none."""
        deadline = time.monotonic() + self.timeout
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        buf = bytearray(self._buf)  # grows in place: an answer may be megabytes
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(line)
            searched = 0
            while buf.find(b"\n", searched) < 0:
                searched = len(buf)  # a newline can only be in what comes next
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                self.sock.settimeout(left)
                chunk = self.sock.recv(_CHUNK)
                if not chunk:
                    raise NoAgent("the agent closed the connection without an answer")
                buf += chunk
                if len(buf) > MAX_ANSWER:
                    raise NoAgent(f"the agent's answer is longer than {MAX_ANSWER} bytes")
        except socket.timeout:
            raise NoAgent(f"no acknowledgement within {self.timeout:g} s", silent=True) from None
        except OSError as e:
            raise NoAgent(f"connection lost: {e.strerror or e}") from None
        self._buf = bytes(buf)
        answer, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = json.loads(answer)
        except ValueError:
            raise NoAgent("the agent's answer is not JSON") from None
        if not isinstance(reply, dict):
            raise NoAgent("the agent's answer is not a JSON object")
        return reply


class Streamed:
    """A report too big to build whole in the agent (explain from a table of a million
    templates): `head`, a JSON object, and lists each made as JSON text a piece at a time by
    `lists[key]()` (a piece: items comma-joined, without brackets), written to the asker as they
    are made. The asker reads one answer line as from any other request."""

    def __init__(self, head: Dict[str, Any], lists: Dict[str, Callable[[], Iterable[str]]]):
        self.head, self.lists = head, lists

    def answer_pieces(self) -> Iterator[bytes]:
        """The answer line ({"ok": true, "report": ...}) in pieces."""
        head = json.dumps(self.head, separators=(",", ":"), default=str)
        yield b'{"ok":true,"report":' + head[:-1].encode()
        sep = "," if self.head else ""
        for key, make in self.lists.items():
            yield f"{sep}{json.dumps(key)}:[".encode()
            first = True
            for piece in make():
                if piece:
                    yield piece.encode() if first else b"," + piece.encode()
                    first = False
            yield b"]"
            sep = ","
        yield b"}}\n"


def event_message(config: str, event: Event) -> dict:
    return {"v": WIRE_VERSION, "config": config, "event": event.to_dict()}


def hello_message(config: str, what: str) -> dict:
    return {"v": WIRE_VERSION, "config": config, "hello": what}


def request_message(
    config: str, what: str, text: bool = False, args: Optional[Dict[str, Any]] = None
) -> dict:
    """A command run by hand asking the agent for something by name (Inbox.requests), with its
    `args`; with `text`, the report as the command prints it too."""
    msg: Dict[str, Any] = {"v": WIRE_VERSION, "config": config, "request": what}
    if text:
        msg["text"] = True
    if args:
        msg["args"] = args
    return msg


# -- the doors


def main(argv: Optional[List[str]] = None) -> int:
    """The console script: a door for keepalived's commands, the full CLI for the rest."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = split_args(argv)
    # Only a first `--help` asks for help: keepalived's arguments after it are data (an instance
    # may be named --help), as the CLI reads them too (commands.notify.KeepalivedArgs).
    if args is not None and args.command in ASK_COMMANDS:
        return ask_door(args, argv)
    if args is None or args.command not in DOOR_COMMANDS or args.rest[:1] == ["--help"]:
        full_cli(argv)
    if args.command == "fifo":
        return fifo_door(args, argv)
    event = _notify_event(args.command, args.rest)
    if event is None:
        full_cli(argv)  # the CLI says what is wrong with the arguments, and exits 2
    config = os.path.abspath(args.config)
    where = "the agent socket"
    try:
        where = socket_path_for(config, args.explicit)
        conn = AgentConnection(where)
        try:
            conn.ask(event_message(config, event))
        finally:
            conn.close()
    except NoAgent as e:
        _log_fallback(args, where, e, "running the transition in this process")
        full_cli(argv)
    return 0


def ask_door(args: Args, argv: List[str]) -> int:
    """`status`, `snapshot` and `table-check` as an agent answers them, printed here: python and
    the standard library start in a fraction of the full command line's time (lab: about 3 s
    of imports under emulation, beside an agent's answer in one or two). Anything else (other
    options, no agent, an agent that refuses) goes to the full command line, which asks the
    agent itself where it can."""
    if any(a != "--json" for a in args.rest):
        full_cli(argv)
    as_json = "--json" in args.rest
    config = os.path.abspath(args.config)
    try:
        conn = AgentConnection(socket_path_for(config, args.explicit), timeout=ASK_TIMEOUT)
        try:
            reply = conn.exchange(request_message(config, args.command, text=not as_json))
        finally:
            conn.close()
    except NoAgent:
        full_cli(argv)
    if reply.get("ok") is not True or not isinstance(reply.get("report"), dict):
        full_cli(argv)  # the full command line says why, in its words and with its exit code
    report = reply["report"]
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    elif isinstance(reply.get("text"), str):
        sys.stdout.write(reply["text"] + "\n")
    else:
        full_cli(argv)
    if args.command == "table-check" and report.get("mismatches"):
        sys.stderr.write(f"Error: {report['mismatches']} templates differ between the table in "
                         "memory and the kernel's\n")
        return 1
    return 0


def _notify_event(command: str, rest: List[str]) -> Optional[Event]:
    """The event of a notify-form call, None when the full CLI should judge the arguments."""
    order = notify_order()  # first: keepalived's fork time, read before anything else
    try:
        if command == "notify":
            return parse_notify_args(rest, order)
        names = [a for a in rest if a != "--group"]
        if len(names) > 1 or any(a.startswith("-") for a in names):
            return None
        return role_event(command, names[0] if names else None, "--group" in rest, order)
    except ArgumentError:
        return None


def full_cli(argv: List[str]) -> NoReturn:
    """The whole command line, in this process; exits with its exit code."""
    # heavy (click, pyroute2, yaml): only for what no agent takes; a door imports none of it
    from lvs_hooks.cli import main as cli_main

    cli_main(argv)
    sys.exit(0)  # cli_main exits itself (click's standalone mode); this is for the type


def _setup_logging(debug: bool):
    # logging costs milliseconds at start; a door that hands its event over logs nothing
    import logging

    # stdlib only, like the door; only where the door logs
    from lvs_hooks.logsetup import setup_logging

    setup_logging(debug)
    return logging.getLogger(__name__)


def _log_fallback(args: Args, where: str, e: NoAgent, what: str) -> None:
    log = _setup_logging(args.debug)
    # Nothing listening is how a director without the agent works; anything else is a fault.
    say = log.info if e.expected else log.warning
    say("no agent answered on %s (%s): %s", where, e.reason, what)


# -- the FIFO door


def open_fifo(path: str) -> int:
    """The FIFO as events.fifo opens it: read-write (a reader that is also a writer never sees
    end-of-file when keepalived reopens its end), non-blocking. OSError, or ValueError if it is
    no FIFO (the full CLI then says so)."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a FIFO")
    return fd


class FifoDoor:
    """Reads keepalived's FIFO and hands every event to the agent over one connection."""

    def __init__(self, path: str, fd: int, conn: AgentConnection, config: str):
        self.path = path
        self.fd = fd
        self.conn = conn
        self.config = config
        self.seq = 0  # lines read, for the order key (events.clock.fifo_order)
        self.last_state: Dict[str, str] = {}
        self.counts = {"lines": 0, "events": 0, "ignored": 0}
        self.lines = LineSplitter()
        self.drain_window = DRAIN_WINDOW
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # the FIFO door lives as long as keepalived: its start-up costs nothing that matters
        import logging

        self.log = logging.getLogger(__name__)

    def close(self) -> None:
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)
        self.conn.close()

    def request_stop(self) -> None:
        """Stop once every instance heard of has sent STOP or after the drain window (safe from
        a signal handler)."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_w, b"x")

    def run(self) -> Optional[bytes]:
        """Hand events to the agent until stopped and drained: None. If the agent goes away:
        the bytes read and not handed over (from the first event the agent did not take), for
        the reader that goes on in this process."""
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            watch = [self.fd, self._wake_r, self.conn.sock]
            ready, _, _ = select.select(watch, [], [], timeout)
            if self.conn.sock in ready:
                # The agent speaks only when asked: readable now means it closed or died.
                self.log.warning("the agent on %s closed the connection", self.conn.path)
                return self.lines.buf
            if self.fd in ready:
                left = self._read_available()
                if left is not None:
                    return left
            if self._wake_r in ready and deadline is None:
                os.read(self._wake_r, 64)
                deadline = time.monotonic() + self.drain_window
                left = self._read_available()
                if left is not None:
                    return left
            if deadline is not None and (self._all_stopped() or time.monotonic() >= deadline):
                if self.lines.buf:
                    self.log.warning(
                        "FIFO %s: incomplete line at exit ignored: %r",
                        self.path,
                        self.lines.buf[:200],
                    )
                return None

    def _all_stopped(self) -> bool:
        # As events.fifo: keepalived writes the STOP lines after signalling its scripts.
        return bool(self.last_state) and all(s == "STOP" for s in self.last_state.values())

    def _read_available(self) -> Optional[bytes]:
        """Hand over what can be read now: None, or when the agent did not take a line, the
        bytes from that line on (the splitter's unfinished line included)."""
        while True:
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                return None
            if not chunk:  # no writer at all: cannot happen while we hold it open read-write
                return None
            before = self.lines.overlong
            lines = self.lines.feed(chunk)
            if self.lines.overlong > before:
                self.log.warning(
                    "FIFO %s: a line longer than %d bytes ignored, up to its newline",
                    self.path,
                    MAX_LINE,
                )
                self.counts["ignored"] += 1
            for i, line in enumerate(lines):
                if not self._line(line):
                    left = b"".join(x + b"\n" for x in lines[i:]) + self.lines.buf
                    self.lines.buf = b""
                    return left

    def _line(self, raw: bytes) -> bool:
        """Parse one line and hand its event over; False if the agent did not take it."""
        parsed = parse_fifo_line(raw, fifo_order(self.seq + 1))
        if isinstance(parsed, Ignored):
            self.seq += 1
            self.counts["lines"] += 1
            self.counts["ignored"] += 1
            say = self.log.warning if parsed.unexpected else self.log.debug
            say(
                "FIFO %s line %d ignored: %s: %r",
                self.path,
                self.seq,
                parsed.reason,
                raw[:200].decode("utf-8", errors="replace"),
            )
            return True
        try:
            self.conn.ask(event_message(self.config, parsed))
        except NoAgent as e:
            self.log.warning("FIFO line %d: %s: %s", self.seq + 1, parsed.describe(), e.reason)
            return False  # the line is left for the reader in this process, seq unchanged
        self.seq += 1
        self.counts["lines"] += 1
        self.counts["events"] += 1
        self.last_state[parsed.key] = parsed.state
        self.log.debug("FIFO line %d: %s: handed to the agent", self.seq, parsed.describe())
        return True


def fifo_door(args: Args, argv: List[str]) -> int:
    """`lvs-hooks fifo PATH`: the agent runs the transitions while it is there; the reader of
    events.fifo does, in this process, when it is not there at the start or goes away."""
    if len(args.rest) != 1 or args.rest[0].startswith("-"):
        full_cli(argv)
    path = args.rest[0]
    log = _setup_logging(args.debug)
    config = os.path.abspath(args.config)
    where = "the agent socket"
    try:
        where = socket_path_for(config, args.explicit)
        conn = AgentConnection(where)
    except NoAgent as e:
        _log_fallback(args, where, e, "reading the FIFO in this process")
        full_cli(argv)
    try:
        conn.ask(hello_message(config, "fifo"))
    except NoAgent as e:
        conn.close()
        _log_fallback(args, where, e, "reading the FIFO in this process")
        full_cli(argv)
    try:
        fd = open_fifo(path)
    except (OSError, ValueError):
        conn.close()
        full_cli(argv)  # the CLI reports the FIFO's problem in its words, and exits 2
    door = FifoDoor(path, fd, conn, config)
    stop_target = [door.request_stop]

    def on_signal(signum, frame):
        log.info("FIFO %s: %s: draining, then exiting", path, signal.Signals(signum).name)
        door.stopping = True
        stop_target[0]()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("reading keepalived events from FIFO %s for the agent on %s", path, where)
    try:
        left = door.run()
        if left is None:
            log.info(
                "FIFO %s: exiting after %d lines, %d events handed to the agent, %d ignored",
                path,
                door.counts["lines"],
                door.counts["events"],
                door.counts["ignored"],
            )
            door.close()
            return 0
        log.warning(
            "the agent on %s went away: reading the FIFO %s in this process from now on",
            where,
            path,
        )
        return _read_in_process(args, door, left, stop_target)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _read_in_process(args: Args, door: FifoDoor, left: bytes, stop_target: list) -> int:
    """Go on as `lvs-hooks fifo` without an agent: events.fifo's reader, from where the door
    stopped (what it read and the agent did not take is read again)."""
    # heavy (the sequencer, the planner, click): only once the agent has gone away
    from lvs_hooks.config import load_config
    from lvs_hooks.errors import LvsHooksError
    from lvs_hooks.events.fifo import FifoReader, serve
    from lvs_hooks.events.handoff import AgentHandoff
    from lvs_hooks.events.parts import director_parts

    try:
        parts = director_parts(load_config(args.config, required=args.explicit))
        reader = FifoReader(
            door.path,
            parts.sequencer,
            parts.planner,
            parts.lock_timeout,
            duty=parts.duty,
            duty_period=parts.period,
            handoff=AgentHandoff(door.conn.path, door.config),
        )
    except LvsHooksError as e:
        door.log.error("%s", e.format_message())
        door.close()
        return e.exit_code
    reader.carry_over(left, door.last_state, door.seq, door.lines.skipping)
    door.close()  # after the reader opened the FIFO: it never loses its last reader
    stop_target[0] = reader.request_stop
    if door.stopping:
        reader.request_stop()
    serve(reader)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
