"""The agent's side of keepalived's events: the inbox the doors hand events to, the event thread
that runs their transitions, and the periodic thread beside it.

keepalived's entry points (lvs_hooks.door) start in milliseconds and hand each event to the
long-running agent over `<run_dir>/agent.sock` (wire format: door module). The agent is the
director's one brain: it notes each event as the newest of its instance (Sequencer.note, which
lets a transition under way see it has been superseded), queues it and acknowledges; the event
thread runs the queued events one at a time, in order, through the same sequencer as every
other entry point (the transition lock and the latest-event-wins rule hold across processes, so
a door that fell back to running its transition itself still takes its turn).

The periodic duties (keeper, fwmark repair, snapshots) run in their own thread, never in front
of an event: they wait while one is queued or running, and are told to yield when one comes.

The socket is root's: the run directory must be this process's and not writable by group or
others (created 0700 if missing), the socket is bound under umask 0o077, and each peer's uid
(SO_PEERCRED) must be root's or the agent's own.
"""

import contextlib
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable, Dict, Optional

from lvs_hooks.door import MAX_MESSAGE, SOCKET_NAME, WIRE_VERSION, Streamed
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.clock import now_ns
from lvs_hooks.events.eventqueue import EventQueue
from lvs_hooks.events.keepalived import KINDS, STATES, Event
from lvs_hooks.events.sequencer import Plan, Sequencer

log = logging.getLogger(__name__)

# Doors at once: keepalived forks one per event, and a flap is a handful; beyond this a
# connection is closed at once (the door then runs its transition itself).
MAX_CONNECTIONS = 32
# A client that began a line must end it within this; one that stalls is closed, so a slow or
# stuck client holds nothing but its own connection.
LINE_TIMEOUT = 5.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less the terminating NUL


class RunDirUnsafe(LvsHooksError):
    """The run directory or the socket in it is not this agent's alone."""


def prepare_run_dir(path: str, uid: int) -> None:
    """Create the run directory 0700 if missing; refuse one that is not `uid`'s or that group or
    others may write (anyone could replace the socket, the lock or the role file)."""
    if not os.path.isdir(path):
        os.makedirs(os.path.dirname(path.rstrip("/")) or "/", exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # whatever the umask
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirUnsafe(f"run directory {path} is not a directory")
    if st.st_uid != uid:
        raise RunDirUnsafe(
            f"run directory {path} is owned by uid {st.st_uid}, not by this agent's uid {uid}: "
            f"refusing to listen there"
        )
    if st.st_mode & 0o022:
        raise RunDirUnsafe(
            f"run directory {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): refusing to listen there; chmod 0700 it"
        )


def peer_allowed(peer_uid: int, uid: int) -> bool:
    """Who may hand events to the agent: root (keepalived runs its scripts as root) and the
    agent's own user."""
    return peer_uid in (0, uid)


def check_event(d: Any) -> Event:
    """An Event from the wire, or ValueError saying what is wrong with it."""
    if not isinstance(d, dict):
        raise ValueError("no event")
    try:
        event = Event.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not an event: {e}") from None
    if event.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {event.kind!r}")
    if event.state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {event.state!r}")
    if not isinstance(event.name, str) or not isinstance(event.source, str):
        raise ValueError("name and source must be strings")
    p = event.priority
    if p is not None and (type(p) is not int or not 0 <= p <= 255):
        raise ValueError(f"priority must be 0-255 or null, got {p!r}")
    if len(event.order) != 3 or any(type(x) is not int for x in event.order):
        raise ValueError(f"order must be three integers, got {list(event.order)!r}")
    return event


class _Client:
    def __init__(self, sock: socket.socket, pid: int, uid: int):
        self.sock = sock
        self.pid = pid
        self.uid = uid
        self.buf = b""
        self.line_started: Optional[float] = None  # when the unfinished line in buf began


class Inbox:
    """The listening socket (a server thread) and the event thread.

    `sequencer`, `planner` and `lock_timeout(event)` are what every entry point hands its events
    to (events.sequencer, events.transitions). `config_path` is the agent's config file: an
    event for another one is refused, and its door runs the transition with its own config.
    """

    def __init__(
        self,
        run_dir: str,
        config_path: str,
        sequencer: Sequencer,
        planner: Callable[[Event], Plan],
        lock_timeout: Callable[[Event], float],
        uid: Optional[int] = None,
        requests: Optional[Dict[str, Callable[[Dict[str, Any]], Any]]] = None,
        renderers: Optional[Dict[str, Callable[[dict], str]]] = None,
    ):
        """`requests`: what a command run by hand may ask of the agent by name (`lvs-hooks
        snapshot` asks for a dump of the table in memory), each called with the request's
        `args` (a JSON object, {} when there are none) and answered with its report (a dict,
        or a door.Streamed sent as it is made) from a thread of its own, one at a time, so that
        the inbox keeps taking events.
        `renderers`: the report as the command prints it, added as `text` when the request
        asks for it (a door, which imports nothing to render with)."""
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, SOCKET_NAME)
        self.config_path = os.path.abspath(config_path)
        self.sequencer = sequencer
        self.planner = planner
        self.lock_timeout = lock_timeout
        self.uid = os.geteuid() if uid is None else uid
        self.counts = {"events": 0, "refused": 0, "errors": 0}
        self._sock: Optional[socket.socket] = None
        self._ino: Optional[int] = None
        self._clients: Dict[int, _Client] = {}
        # the planner and lock timeout looked up at each event (tests swap them)
        self.events = EventQueue(
            sequencer, lambda e: self.planner(e), lambda e: self.lock_timeout(e), self.counts
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._server: Optional[threading.Thread] = None
        self._events: Optional[threading.Thread] = None
        self.requests = dict(requests or {})
        self.renderers = dict(renderers or {})
        self._request_running = threading.Lock()

    # -- life

    def start(self) -> None:
        """Bind the socket (RunDirUnsafe if the place is not ours) and start both threads."""
        prepare_run_dir(self.run_dir, self.uid)
        self._sock = self._bind()
        self._events = threading.Thread(target=self._run_events, name="events", daemon=True)
        self._events.start()
        self._server = threading.Thread(target=self._serve, name="inbox", daemon=True)
        self._server.start()
        log.info("agent: taking keepalived's events on %s", self.path)

    def stop(self) -> None:
        """Stop listening, run the events already taken, then return."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        if self._server is not None:
            self._server.join()
        if self._events is not None:
            self.events.close()
            self._events.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def busy(self) -> bool:
        """True while an event is queued or its transition runs: periodic work yields to it."""
        return self.events.busy()

    # -- the socket

    def _bind(self) -> socket.socket:
        if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
            raise RunDirUnsafe(
                f"socket path {self.path} is longer than {_SUN_PATH_MAX} bytes (AF_UNIX limit)"
            )
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
        self._ino = os.stat(self.path).st_ino
        return sock

    def _remove_stale(self) -> None:
        """A socket left by an agent that died is removed; anything else is refused."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RunDirUnsafe(f"{self.path} exists and is not a socket: refusing to replace it")
        if st.st_uid != self.uid:
            raise RunDirUnsafe(
                f"socket {self.path} is owned by uid {st.st_uid}, not by this agent's uid "
                f"{self.uid}: refusing to replace it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            probe.settimeout(1.0)
            probe.connect(self.path)
        except ConnectionRefusedError:
            pass  # nobody listens: stale
        except OSError as e:
            log.warning("probing %s: %s; taking it as stale", self.path, e.strerror or e)
        else:
            raise RunDirUnsafe(f"another agent listens on {self.path}")
        finally:
            probe.close()
        os.unlink(self.path)
        log.info("removed %s, left by an agent that did not stop cleanly", self.path)

    def _unlink_own(self) -> None:
        # Only our own socket: a second agent that started meanwhile keeps its own.
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    def _serve(self) -> None:
        assert self._sock is not None
        try:
            while not self._stopping:
                timeout = self._expire_stalled()
                fds = [self._wake_r, self._sock.fileno(), *self._clients]
                ready, _, _ = select.select(fds, [], [], timeout)
                for fd in ready:
                    if fd == self._sock.fileno():
                        self._accept()
                    elif fd in self._clients:
                        self._receive(self._clients[fd])
        except Exception:
            # The agent's other work goes on; doors now find no one and run transitions
            # themselves. Say so loudly.
            self.counts["errors"] += 1
            log.exception("agent inbox %s failed; doors will run their transitions themselves",
                          self.path)
        finally:
            for c in list(self._clients.values()):
                self._drop(c)
            self._sock.close()
            self._unlink_own()

    def _expire_stalled(self) -> Optional[float]:
        """Close clients whose line is overdue; the time until the next one is due."""
        now = time.monotonic()
        timeout: Optional[float] = None
        for c in list(self._clients.values()):
            if c.line_started is None:
                continue
            left = c.line_started + LINE_TIMEOUT - now
            if left <= 0:
                log.warning("agent inbox: pid %d sent part of a line and stalled; closed", c.pid)
                self._drop(c)
            else:
                timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the door falls back; try again later
                log.error("agent inbox: accept failed: %s", e.strerror or e)
                return
            pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            if not peer_allowed(uid, self.uid):
                log.warning(
                    "agent inbox: connection from pid %d uid %d refused (only root and uid %d)",
                    pid, uid, self.uid,
                )
                self.counts["refused"] += 1
                sock.close()
                continue
            if len(self._clients) >= MAX_CONNECTIONS:
                log.warning(
                    "agent inbox: %d connections open; pid %d turned away", MAX_CONNECTIONS, pid
                )
                sock.close()
                continue
            sock.setblocking(False)
            self._clients[sock.fileno()] = _Client(sock, pid, uid)

    def _drop(self, c: _Client) -> None:
        self._clients.pop(c.sock.fileno(), None)
        c.sock.close()

    def _receive(self, c: _Client) -> None:
        try:
            chunk = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not chunk:
            self._drop(c)
            return
        c.buf += chunk
        answered = False
        while True:
            nl = c.buf.find(b"\n")
            if nl < 0:
                break
            if nl > MAX_MESSAGE:
                self._overlong(c)
                return
            line, c.buf = c.buf[:nl], c.buf[nl + 1 :]
            answered = True
            answer = self._take(line, c)
            if answer is None:  # a request: its thread answers, and the connection is its
                return
            if not self._reply(c, answer):
                return
        if len(c.buf) > MAX_MESSAGE:
            self._overlong(c)
        elif not c.buf:
            c.line_started = None
        elif answered or c.line_started is None:
            c.line_started = time.monotonic()

    def _overlong(self, c: _Client) -> None:
        log.warning("agent inbox: pid %d sent a line over %d bytes; closed", c.pid, MAX_MESSAGE)
        self.counts["refused"] += 1
        self._reply(c, {"ok": False, "reason": f"line longer than {MAX_MESSAGE} bytes"})
        self._drop(c)

    def _reply(self, c: _Client, answer: dict) -> bool:
        """Send an answer; False (and the client closed) if it cannot take it at once."""
        data = json.dumps(answer).encode() + b"\n"
        try:
            sent = c.sock.send(data)
        except OSError:
            sent = -1
        if sent != len(data):
            # A door reads its answer at once; one that does not is not a door.
            self._drop(c)
            return False
        return True

    # -- one message

    def _take(self, line: bytes, c: _Client) -> Optional[dict]:
        try:
            msg = json.loads(line)
        except ValueError:
            return self._refuse(c, "not a JSON line")
        if not isinstance(msg, dict):
            return self._refuse(c, "not a JSON object")
        if msg.get("v") != WIRE_VERSION:
            return self._refuse(
                c, f"wire version {msg.get('v')!r}; this agent speaks {WIRE_VERSION}"
            )
        config = msg.get("config")
        if not isinstance(config, str) or not _same_file(config, self.config_path):
            return self._refuse(c, f"this agent runs with config {self.config_path}, not {config}")
        if "event" not in msg and "hello" in msg:
            # `status --check` says hello every time a monitoring system asks, and a FIFO
            # reader that found no agent every few seconds (events.handoff): not worth a line
            log.log(logging.DEBUG if msg["hello"] in ("status", "handoff") else logging.INFO,
                    "agent inbox: %s door (pid %d) connected", msg["hello"], c.pid)
            return {"ok": True}
        if "event" not in msg and "request" in msg:
            args = msg.get("args", {})
            if not isinstance(args, dict):
                return self._refuse(c, "the request's args are not a JSON object")
            return self._request(msg["request"], c, bool(msg.get("text")), args)
        try:
            event = check_event(msg.get("event"))
        except ValueError as e:
            return self._refuse(c, str(e))
        try:
            self.sequencer.note(event)
        except (OSError, LvsHooksError) as e:
            text = e.format_message() if isinstance(e, LvsHooksError) else (e.strerror or str(e))
            return self._refuse(c, f"cannot note the event: {text}")
        self.events.put(event)
        self.counts["events"] += 1
        log.info(
            "%s: from keepalived (%s, door pid %d), %.1f ms after keepalived emitted it",
            event.describe(),
            event.source,
            c.pid,
            (now_ns() - event.order[0]) / 1e6,
        )
        return {"ok": True}

    def _request(
        self, name: Any, c: _Client, text: bool = False, args: Optional[Dict[str, Any]] = None
    ) -> Optional[dict]:
        handler = self.requests.get(name) if isinstance(name, str) else None
        if handler is None:
            return self._refuse(c, f"no such request: {name!r}")
        if not self._request_running.acquire(blocking=False):
            return self._refuse(c, "another request is running; try again")

        def run() -> None:
            running = True
            try:
                streamed: Optional[Streamed] = None
                try:
                    report = handler(args or {})
                    answer: Dict[str, Any] = {"ok": True, "report": report}
                    if isinstance(report, Streamed):
                        streamed = report
                    render = self.renderers.get(name) if text else None
                    if render is not None and streamed is None:
                        answer["text"] = render(report)
                except LvsHooksError as e:
                    answer = {"ok": False, "reason": e.format_message(), "exit_code": e.exit_code}
                except Exception as e:  # a bug: the traceback to the log, one line to the asker
                    log.exception("agent inbox: request %s (pid %d) failed", name, c.pid)
                    answer = {"ok": False, "reason": f"bug: {type(e).__name__}: {e}"}
                if streamed is not None:
                    # made as it is sent: the request runs until the last piece is out
                    try:
                        c.sock.settimeout(5.0)  # per send: the asker reads as it comes
                        for piece in streamed.answer_pieces():
                            c.sock.sendall(piece)
                    except OSError:
                        pass  # the asker left; it does the work itself if it still can
                    except Exception:  # a bug: the asker sees the answer cut, and falls back
                        log.exception("agent inbox: request %s (pid %d) failed while sent",
                                      name, c.pid)
                    return
                data = json.dumps(answer, default=str).encode() + b"\n"
                # Free before the answer leaves: an asker that got it may send its next request
                # at once, and found this one still running it was refused ("try again").
                running = False
                self._request_running.release()
                with contextlib.suppress(OSError):
                    c.sock.settimeout(5.0)  # per send: the asker reads the answer as it comes
                    c.sock.sendall(data)
            finally:
                c.sock.close()
                if running:
                    self._request_running.release()

        log.info("agent inbox: request %s from pid %d", name, c.pid)
        # the connection is the request thread's from now on: this loop no longer selects on
        # it (before the thread starts, which closes it when done)
        self._clients.pop(c.sock.fileno(), None)
        threading.Thread(target=run, name=f"request-{name}", daemon=True).start()
        return None

    def _refuse(self, c: _Client, reason: str) -> dict:
        self.counts["refused"] += 1
        log.warning("agent inbox: refused a message from pid %d: %s", c.pid, reason)
        return {"ok": False, "reason": reason}

    # -- the event thread

    def _run_events(self) -> None:
        self.events.run()


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
