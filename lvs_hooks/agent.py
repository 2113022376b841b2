"""The agent: what runs all the time on every director, beside keepalived (lvs-hooks-agent.service).

keepalived's events say when a director changes role; the agent does what must happen in
between, and what needs a peer:

- while master: push the whole table to the sync group every push.interval, and whenever a
  peer asks (push-request), announcing each push on the control channel;
- while not master: collect each announced push (the sync datagrams, beside the kernel's own
  backup daemon, and the digest in push-end), check the table against a complete one (put back
  what the kernel dropped, re-point stale templates no connection uses: director.push_check),
  and then
  count as warm; ask for a push while cold, and no push is on its way;
- at start, once: reseed from the newest snapshot, if one is young enough, once keepalived's
  checkers have created the services (a rebooted director gets its clients back from disk;
  without a control channel that verified reseed is what makes it warm);
- every second: the warm-up gate (warmup.refresh writes keepalived's track file);
- answer status requests (`lvs-hooks handover` on the master asks whether a peer holds a push).

The role is what the last transition left (events.role). The loop is one thread with one
select(); beside it run keepalived's events (events.inbox: the doors hand them over, an event
thread runs their transitions) and the periodic duties (director.duties), each on its own thread,
so that neither a push nor a keeper period holds up a transition. Every kernel action takes the
transition lock (director.lock), so none runs inside a keepalived transition.

The collaborators are typed as Protocols (below): the tests hand in fakes at exactly these seams.
"""

import collections
import logging
import select
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

from lvs_hooks.config import Config
from lvs_hooks.control.message import Message
from lvs_hooks.director import Director
from lvs_hooks.director.live import LiveTable
from lvs_hooks.director.push_check import check_received_push
from lvs_hooks.director.reseed import reseed
from lvs_hooks.kernel.model import TemplateKey
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.push.collector import PushCollector, format_source
from lvs_hooks.push.run import push_table
from lvs_hooks.ratelog import RateLimitedLog
from lvs_hooks.warmup import WarmupStore, refresh

log = logging.getLogger(__name__)


class ControlPort(Protocol):
    """The control channel as the agent uses it (control.channel.ControlChannel)."""

    def fileno(self) -> int: ...

    def recv(self, timeout: float) -> Optional[Tuple[Message, str]]: ...

    def send(self, kind: str, body: Dict[str, Any], to: str = "*") -> Any: ...


class SyncListener(Protocol):
    """The sync group heard beside the kernel's backup daemon (push.collector)."""

    def fileno(self) -> int: ...

    def recv(self, timeout: Optional[float]) -> Optional[Tuple[bytes, str]]: ...

    def dropped(self) -> int:
        """Datagrams the kernel dropped at this socket (its buffer was full), all told."""
        ...


class AgentKernel(Protocol):
    """The agent's kernel work (KernelOps, through the director layer)."""

    def push(self, channel: Optional[ControlPort]) -> dict: ...

    def check_push(self, keys: List[TemplateKey]) -> dict: ...

    def startup_reseed(self) -> Optional[dict]: ...


class Gate(Protocol):
    """The warm-up gate as the agent drives it (WarmGate)."""

    def start(self) -> None: ...

    def is_warm(self) -> bool: ...

    def mark_warm(self, reason: str, figures: dict) -> None: ...

    def refresh(self) -> None: ...


class Beside(Protocol):
    """A part that runs on threads of its own beside the loop (events.inbox)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

TICK = 1.0  # seconds between two looks at the role, the gate and the timers
REQUEST_EVERY = 5.0  # while cold, ask for a push this often
COLLECT_TIMEOUT = 120.0  # a push whose end never came is forgotten after this
# Sync datagrams kept from before a push-begin (they may overtake it, or the agent was busy
# when the push began): 4096 datagrams are 160,000 IPv4 templates, about 6 MB at most.
BACKLOG = 4096
STARTUP_RESEED_RETRY = 2.0  # seconds between looks for keepalived's services at start


@dataclass
class PushStatus:
    """The last push this director received, as it reports it in status replies."""

    push_id: str = ""
    source: str = ""
    complete: bool = False
    reason: str = ""
    templates: int = 0
    verified: int = 0
    put_back: int = 0
    repointed: int = 0
    stale_in_use: int = 0
    missing: int = 0  # after putting back: still not in the table
    foreign: int = 0  # sync datagrams from other addresses during the push (not counted)
    other_ports: int = 0  # from the pusher's address, not the announced port (not counted)
    at: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Collecting:
    collector: Any
    started: float
    source: str


@dataclass
class AgentState:
    role: Optional[str] = None
    next_push: float = 0.0
    push_requested: bool = False
    next_request: float = 0.0
    startup_reseed: str = "pending"  # pending, done, skipped
    next_startup_try: float = 0.0
    last_push: PushStatus = field(default_factory=PushStatus)
    collecting: Dict[str, _Collecting] = field(default_factory=dict)
    backlog: Deque[Tuple[bytes, str]] = field(
        default_factory=lambda: collections.deque(maxlen=BACKLOG)
    )
    drops: Dict[str, int] = field(default_factory=dict)  # per feed, as last seen
    wire: "WireCounts" = field(default_factory=lambda: WireCounts())


@dataclass
class WireCounts:
    """What came on the wire that was not what it claimed, since the agent started, for
    `status` and the metrics (<run_dir>/wire.json: health.record_wire)."""

    # sync group, while a push is being collected: datagrams from another address than the
    # pusher's (the kernel's backup daemon took them in: it cannot refuse them, section 6.1)
    sync_foreign: int = 0
    # from the pusher's address, another port than the announced one (its kernel master
    # daemon's own sync messages, or someone spoofing its address): not counted in the push
    sync_other_port: int = 0
    sync_foreign_last: str = ""  # source of the last foreign one
    sync_foreign_at: float = 0.0  # Unix time of the last foreign one
    control_refused: Dict[str, int] = field(default_factory=dict)  # by category

    def to_dict(self) -> dict:
        return {
            "sync_foreign": self.sync_foreign,
            "sync_other_port": self.sync_other_port,
            "sync_foreign_last": self.sync_foreign_last,
            "sync_foreign_at": self.sync_foreign_at,
            "control_refused": dict(self.control_refused),
        }


class Agent:
    """The loop. `ops` does the kernel work (see KernelOps); `channel` and `listener` are the
    control channel and the sync-group listener (None: no control channel configured).

    `beside`: what runs in threads of its own beside the loop, each with start() and stop():
    the inbox of keepalived's events with its event thread, and the periodic duties
    (events.inbox). They are started after the warm-up gate and stopped, last started first,
    when the loop ends; a transition is never held up by the loop's pushes and checks."""

    def __init__(
        self,
        cfg: Config,
        ops: AgentKernel,
        channel: Optional[ControlPort],
        listener: Optional[SyncListener],
        read_role: Callable[[], Optional[str]],
        warm: Gate,
        clock: Callable[[], float] = time.monotonic,
        beside: Sequence[Beside] = (),
        capture: Optional[SyncListener] = None,
        live: Optional[LiveTable] = None,
        on_push: Optional[Callable[[str, dict, bool], None]] = None,
        on_wire: Optional[Callable[[dict], None]] = None,
    ):
        self.cfg = cfg
        self.ops = ops
        self.channel = channel
        self.listener = listener
        self.read_role = read_role
        self.warm = warm
        self.clock = clock
        self.beside = list(beside)
        # The table in memory (director.live): fed with what the sync group brings (as
        # backup: the master's kernel) and what this host's kernel sends out (`capture`, as
        # master), whichever the role; both are the kernel's own account of its table.
        self.capture = capture
        self.live = live
        # `status` and the metrics: <run_dir>/push.json, the metrics file (note_push)
        self.on_push = on_push
        # `status` and the metrics: <run_dir>/wire.json (note_wire), when the counts change
        self.on_wire = on_wire
        self._wire_noted: Optional[dict] = None
        # foreign sync datagrams: a line per interval with the count, never one per datagram
        self.ratelog = RateLimitedLog(log, clock=clock)
        self.st = AgentState()

    # -- the loop

    def run(self, should_stop: Callable[[], bool]) -> None:
        self.warm.start()
        started: List[Beside] = []
        try:
            for part in self.beside:
                part.start()
                started.append(part)
            log.info(
                "agent started: control channel %s, push every %s",
                "on" if self.channel is not None else "off (control.key_file not set)",
                f"{self.cfg.push.interval:g} s while master"
                if self.cfg.push.interval
                else "request",
            )
            next_tick = self.clock()
            while not should_stop():
                now = self.clock()
                if now >= next_tick:
                    try:
                        self.tick()
                    except Exception:  # a bug or a broken state file: say so, keep serving
                        log.exception("agent: periodic work failed")
                    next_tick = self.clock() + TICK
                self.wait(max(0.0, next_tick - self.clock()))
        finally:
            for part in reversed(started):
                part.stop()

    def wait(self, timeout: float) -> None:
        """Wait for datagrams up to `timeout` s and take all that came."""
        fds = [x for x in (self.channel, self.listener, self.capture) if x is not None]
        if not fds:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(fds, [], [], timeout)
        if ready:
            # Datagrams first, into the collectors or the backlog (push-begin may be read only
            # now, after the agent was busy); a push-end drains them again before it counts.
            self.drain_sync()
            self.drain_capture()
        if self.channel is not None and self.channel in ready:
            while True:
                got = self.channel.recv(0)
                if got is None:
                    break
                self.on_message(*got)

    def drain_capture(self) -> None:
        if self.capture is None:
            return
        while True:
            got = self.capture.recv(0)
            if got is None:
                return
            if self.live is not None:
                self.live.ingest(got[0], "LOCAL")

    def drain_sync(self) -> None:
        if self.listener is None:
            return
        while True:
            got = self.listener.recv(0)
            if got is None:
                return
            self.on_sync_datagram(*got)

    def tick(self) -> None:
        now = self.clock()
        st = self.st
        role = self.read_role()
        if role != st.role:
            log.info("agent: role %s -> %s", st.role or "unknown", role or "unknown")
            st.role = role
            st.next_push = now  # a new master pushes at once
        if st.startup_reseed == "pending" and now >= st.next_startup_try:
            self.startup_reseed(now)
        for pid, c in list(st.collecting.items()):
            if now - c.started > COLLECT_TIMEOUT:
                log.warning("push %s from %s: no end after %.0f s; forgotten", pid, c.source,
                            COLLECT_TIMEOUT)
                del st.collecting[pid]
        if role == "MASTER":
            if not self.warm.is_warm():
                self.warm.mark_warm("master: its table is the reference", {})
            interval = self.cfg.push.interval
            if st.push_requested or (interval > 0 and now >= st.next_push):
                st.push_requested = False
                st.next_push = now + interval if interval > 0 else float("inf")
                self.push()
        elif (self.channel is not None and not st.collecting and now >= st.next_request
              and not self.warm.is_warm()):
            # Not while a push is on its way: the master would queue a second one behind it,
            # whose datagrams reach the kernel's backup daemon while this one is checked (under
            # load they filled its queue, and expiries the check sent were lost). A push that
            # ends incomplete, or never ends (COLLECT_TIMEOUT), lets the asking resume.
            st.next_request = now + REQUEST_EVERY
            self.send("push-request", {"role": role or "unknown"})
        self.warm.refresh()
        self.check_feeds()
        self.ratelog.flush()
        flush = getattr(self.channel, "flush_log", None)
        if flush is not None:
            flush()
        self.note_wire()

    def note_wire(self) -> None:
        """Hand the wire counts to `on_wire` when they changed since the last time."""
        w = self.st.wire
        refused = getattr(self.channel, "refused", None)
        if refused is not None:
            w.control_refused = {k: int(v) for k, v in refused.items() if v}
        data = w.to_dict()
        if data == self._wire_noted or self.on_wire is None:
            return
        self._wire_noted = data
        try:
            self.on_wire(data)
        except Exception as e:  # a file that cannot be written fails nothing else
            log.warning("agent: cannot note the wire counts: %s", _text(e))

    def check_feeds(self) -> None:
        """Datagrams dropped at the sockets since the last look: the table in memory missed
        what they carried (a push being collected finds its own losses by its count)."""
        for name, feed in (("sync group listener", self.listener),
                           ("capture of the outgoing sync", self.capture)):
            if feed is None:
                continue
            try:
                total = feed.dropped()
            except OSError as e:
                log.warning("agent: cannot read the %s's drop counter: %s", name, e)
                continue
            new = total - self.st.drops.get(name, 0)
            self.st.drops[name] = total
            if new <= 0:
                continue
            if self.live is not None:
                self.live.note_loss(name, new)
            else:
                log.warning("agent: the %s dropped %d datagrams (its receive buffer was "
                            "full)", name, new)

    # -- what we do

    def push(self) -> Optional[dict]:
        try:
            figures = self.ops.push(self.channel)
        except Exception as e:  # an LvsHooksError, or an OSError of the socket
            log.error("push failed: %s", _text(e))
            self.pushed("sent", {"error": _text(e)}, False)
            return None
        self.pushed("sent", figures, True)
        return figures

    def pushed(self, direction: str, figures: dict, ok: bool) -> None:
        """A push sent or received, for `status` and the metrics (`on_push`)."""
        if self.on_push is not None:
            self.on_push(direction, figures, ok)

    def startup_reseed(self, now: float) -> None:
        st = self.st
        if st.role == "MASTER":  # the MASTER transition reseeded already
            st.startup_reseed = "skipped"
            return
        try:
            outcome = self.ops.startup_reseed()
        except Exception as e:
            log.error("start-up reseed failed: %s", _text(e))
            st.startup_reseed = "skipped"
            return
        if outcome is None:  # no services yet: keepalived's checkers have not added them
            st.next_startup_try = now + STARTUP_RESEED_RETRY
            return
        st.startup_reseed = "done" if outcome.get("usable") else "skipped"
        # With peers to push (a control channel), only a push counts: the disk is older than
        # what the master holds, and a director warm from disk alone would preempt with the
        # real servers its clients had before it went down.
        if outcome.get("warm") and self.channel is None:
            self.warm.mark_warm(
                f"verified reseed of {outcome.get('verified', 0)} templates from the snapshot",
                outcome,
            )

    def send(self, kind: str, body: dict, to: str = "*") -> None:
        if self.channel is None:
            return
        try:
            if to == "*":
                self.channel.send(kind, body)
            else:
                self.channel.send(kind, body, to=to)
        except Exception as e:
            log.error("control: cannot send %s: %s", kind, _text(e))

    # -- what we hear

    def on_sync_datagram(self, data: bytes, src: str) -> None:
        if self.live is not None:
            self.live.ingest(data, "SYNC")
        st = self.st
        if not st.collecting:
            st.backlog.append((data, src))
            return
        took = pusher = False
        for c in st.collecting.values():
            if c.collector.add(data, src):
                took = True
            elif c.collector.from_sender_address(src):
                pusher = True
        if took:
            return
        w = st.wire
        if pusher:
            w.sync_other_port += 1
            return
        # During a push, a datagram from anyone but the pusher: the kernel's backup daemon
        # takes it in all the same (section 6.1); the operator must see it.
        w.sync_foreign += 1
        w.sync_foreign_last = src
        w.sync_foreign_at = time.time()
        pushes = ", ".join(f"{pid} from {c.source}" for pid, c in st.collecting.items())
        self.ratelog.note(
            "sync group: datagram from a source other than the pusher during a push",
            f"from {src} during push {pushes}",
        )

    def on_message(self, msg: Any, src: str) -> None:
        kind = msg.kind
        if kind == "push-request":
            if self.st.role == "MASTER":
                log.info("push requested by %s (%s)", msg.sender, src)
                self.st.push_requested = True
        elif kind == "push-begin":
            self.on_push_begin(msg, src)
        elif kind == "push-end":
            self.on_push_end(msg, src)
        elif kind == "status-request":
            self.send(
                "status-reply",
                {
                    "in_reply_to": msg.nonce,
                    "role": self.st.role or "unknown",
                    "warm": self.warm.is_warm(),
                    "last_push": self.st.last_push.to_dict(),
                },
                to=msg.sender,
            )

    def on_push_begin(self, msg: Any, src: str) -> None:
        if self.st.role == "MASTER":
            return  # a push of our own (`lvs-hooks push` or `handover` on this host)
        try:
            push_id = str(msg.body["push_id"])
            port = int(msg.body["port"])
            templates = int(msg.body["templates"])
        except (KeyError, TypeError, ValueError):
            log.warning("control: push-begin from %s without push_id, port, templates", src)
            return
        source = format_source(src, port)
        collector = PushCollector(push_id, source, templates)
        # Datagrams can overtake the announcement: give it what came just before.
        for data, dsrc in self.st.backlog:
            collector.add(data, dsrc)
        self.st.backlog.clear()
        self.st.collecting[push_id] = _Collecting(collector, self.clock(), source)
        log.info("push %s from %s (%s): %d templates coming", push_id, msg.sender, source,
                 templates)

    def on_push_end(self, msg: Any, src: str) -> None:
        try:
            push_id = str(msg.body["push_id"])
            templates = int(msg.body["templates"])
            datagrams = int(msg.body["datagrams"])
            digest = str(msg.body["digest"])
        except (KeyError, TypeError, ValueError):
            log.warning("control: push-end from %s without push_id, templates, datagrams, "
                        "digest", src)
            return
        if push_id not in self.st.collecting:
            return  # ours, or one whose begin we did not hear
        # The last datagrams left before push-end did; they may wait in the listener's queue.
        self.drain_sync()
        c = self.st.collecting.pop(push_id)
        res = c.collector.finish(templates, datagrams, digest)
        status = PushStatus(
            push_id=push_id,
            source=c.source,
            complete=res.complete,
            reason=res.reason,
            templates=templates,
            foreign=res.foreign,
            other_ports=res.other_ports,
            at=time.time(),
        )
        if not res.complete:
            log.warning("push %s from %s incomplete: %s", push_id, c.source, res.reason)
            self.st.last_push = status
            self.pushed("received", status.to_dict(), False)
            self.st.next_request = 0.0  # ask again at the next tick, if still cold
            return
        try:
            fig = self.ops.check_push(res.keys)
        except Exception as e:
            log.error("push %s: checking the table failed: %s", push_id, _text(e))
            status.complete = False
            status.reason = f"table check failed: {_text(e)}"
            self.st.last_push = status
            self.pushed("received", status.to_dict(), False)
            return
        status.verified = fig["verified"]
        status.put_back = fig["put_back"]
        status.repointed = fig["repointed"]
        status.stale_in_use = fig["stale_in_use"]
        status.missing = fig["missing_after"]
        self.st.last_push = status
        self.pushed("received", status.to_dict(), status.missing == 0)
        if status.missing == 0:
            self.warm.mark_warm(
                f"full push {push_id} from {msg.sender} ({c.source}): {templates} templates, "
                f"{status.verified} verified in the table",
                status.to_dict(),
            )


def note_push(cfg: Config) -> Callable[[str, dict, bool], None]:
    """The agent's `on_push`: <run_dir>/push.json (health.record_push), then the metrics file."""
    from lvs_hooks.health import record_push
    from lvs_hooks.metrics import write_metrics

    def on_push(direction: str, figures: dict, ok: bool) -> None:
        record_push(cfg.paths.run_dir, direction, figures, ok)
        write_metrics(cfg, f"push {direction}")

    return on_push


def note_wire(cfg: Config) -> Callable[[dict], None]:
    """The agent's `on_wire`: <run_dir>/wire.json (health.record_wire)."""
    from lvs_hooks.health import record_wire

    def on_wire(counts: dict) -> None:
        record_wire(cfg.paths.run_dir, counts)

    return on_wire


def _text(e: BaseException) -> str:
    fm = getattr(e, "format_message", None)
    return fm() if callable(fm) else str(e)


class KernelOps:
    """The agent's kernel work, through the director layer: every injection takes the
    transition lock there, so none runs inside a keepalived transition."""

    def __init__(self, director: Director):
        self.director = director
        self.cfg = director.cfg

    def push(self, channel: Optional[ControlPort]) -> dict:
        # Under the lock: a push reads the table a transition may be changing.
        # The templates from the table in memory when there is one (a push with connections
        # needs them, and those only a read of /proc has). No transition lock: a push sends to
        # the peers and changes nothing in this kernel, and at 50,000 templates it takes tens
        # of seconds, which a keepalived transition must not wait for.
        table = None if self.cfg.push.connections else self.director.table("push")
        with IPVS() as ipvs:
            return push_table(self.cfg, ipvs, channel, table)

    def check_push(self, keys: List[TemplateKey]) -> dict:
        """Compare the table with a complete push, put back and re-point: figures."""
        return check_received_push(self.director, keys)

    def startup_reseed(self) -> Optional[dict]:
        """Reseed from the newest snapshot once the services exist. None: no services yet."""
        if not self.director.store().generations():
            log.info("start-up reseed: no snapshot in %s", self.cfg.paths.state_dir)
            return {"usable": False}
        with IPVS() as ipvs:
            if not ipvs.services():
                return None
        report = reseed(self.director, by="start-up reseed")
        usable = report.get("planned", 0) + report.get("skipped", {}).get("already present", 0)
        report["usable"] = bool(usable)
        report["warm"] = bool(usable) and report.get("missing", 0) == 0
        log.info(
            "start-up reseed from %s (%.0f s old): %d planned, %d verified, %d missing",
            report.get("snapshot"),
            report.get("snapshot_age_s", 0),
            report.get("planned", 0),
            report.get("verified", 0),
            report.get("missing", 0),
        )
        return report


class WarmGate:
    """The agent's view of the warm-up state (lvs_hooks.warmup), for the configuration."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = WarmupStore(cfg.paths.run_dir)

    def start(self) -> None:
        self.store.start()
        self.refresh()

    def is_warm(self) -> bool:
        state = self.store.load()
        return bool(state and state.warm)

    def mark_warm(self, reason: str, figures: dict) -> None:
        if not self.is_warm():  # the store keeps the first reason; so does the log
            self.store.mark_warm(reason, figures)
            log.info("warm: %s", reason)

    def refresh(self) -> None:
        try:
            refresh(self.cfg)
        except Exception as e:
            log.error("warm-up gate: %s", _text(e))
