"""Sending a planned push to the sync group, paced, with a digest the receivers can check.

The datagrams are ordinary v1 sync messages (sync.syncid, at most sync.maxlen bytes: a
receiver silently drops a longer one) sent to the sync group with TTL sync.ttl and multicast
loop off: they are for the peers' backup daemons, not for this host's kernel.

Pacing: the sender cannot see a peer's receive queue (the reseed paces on the local backup
socket's rx_queue; a peer's is out of sight), and a backup daemon's socket drops whole
datagrams when its buffer fills. So the push is paced by a token bucket on a monotonic clock
at push.rate entries per second, charged per datagram with the number of entries it holds,
holding at most one datagram's worth (or 1 ms of the rate, if more): the sender sleeps only
the time the bucket needs to pay for the next datagram. The achieved rate is reported.

Completion: the caller's control channel (authenticated, elsewhere) is told when a push
begins, on_begin(push_id, templates), and ends, on_end(push_id, templates, datagrams, bytes,
digest). `templates` counts every entry sent: templates, and connections when the plan has
them. `digest` is the hex SHA-256 over every datagram sent, in order, each prefixed with its
length as 2 bytes big-endian (push_digest): a receiver that collected the same datagrams in
the same order computes the same digest (collector.PushCollector).
"""

import hashlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, List, Optional, Sequence

from lvs_hooks.config import Config
from lvs_hooks.errors import ConfigError, KernelError
from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.syncsock import SyncSender
from lvs_hooks.push.planner import PushEntry
from lvs_hooks.reseed.runner import to_sync_conn

log = logging.getLogger(__name__)

BURST_SECONDS = 0.001  # the bucket holds one datagram, or this much of the rate if more

OnBegin = Callable[[str, int], None]
OnEnd = Callable[[str, int, int, int, str], None]

__all__ = [
    "PushResult",
    "datagrams_for",
    "open_push_sender",
    "push_digest",
    "send_push",
]


@dataclass
class PushResult:
    push_id: str
    templates: int  # entries sent (templates, and connections if planned)
    datagrams: int
    bytes: int
    ms: float  # from just before the first datagram to just after the last (0: empty push)
    rate: float  # achieved entries per second over `ms` (0 when no time was measurable)
    digest: str

    def to_dict(self) -> dict:
        return asdict(self)


def datagrams_for(planned: Iterable[PushEntry], syncid: int, maxlen: int) -> List[bytes]:
    """The v1 sync datagrams carrying `planned` in order, none longer than `maxlen` bytes.

    Templates (PlannedTemplate) go through reseed.runner.to_sync_conn, connections (SyncConn)
    as they are. maxlen 0 means the kernel's default, 1472 (40 IPv4 entries).
    """
    conns = [p if isinstance(p, syncproto.SyncConn) else to_sync_conn(p) for p in planned]
    return syncproto.encode_datagrams(
        conns, syncid=syncid, maxlen=maxlen or syncproto.SYNC_MAXLEN_DEFAULT
    )


def push_digest(datagrams: Iterable[bytes]) -> str:
    """Hex SHA-256 over the datagrams in order, each prefixed with its 2-byte big-endian length."""
    h = hashlib.sha256()
    for d in datagrams:
        h.update(len(d).to_bytes(2, "big"))
        h.update(d)
    return h.hexdigest()


def _entries_in(datagram: bytes) -> int:
    """nr_conns of a v1 datagram (its 5th byte)."""
    return datagram[4]


def send_push(
    planned: Sequence[PushEntry],
    sender,
    *,
    syncid: int,
    maxlen: int,
    rate: float,
    on_begin: Optional[OnBegin] = None,
    on_end: Optional[OnEnd] = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Encode `planned` and send it through `sender` (anything with .send(bytes)), paced at
    `rate` entries per second. maxlen 0: the kernel's default (1472 bytes, 1452 when the
    sender's group is IPv6: a SyncSender's `ipv6`).

    on_begin is called before the first datagram, on_end after the last (both also for an
    empty push: 0 datagrams, the digest of nothing). An exception from on_begin stops the push
    before anything is sent; a failing send raises KernelError and on_end is not called (the
    receivers' collectors then never see the push complete).
    """
    if not rate > 0:
        raise ValueError(f"push rate {rate}: must be positive")
    planned = list(planned)
    if not maxlen and getattr(sender, "ipv6", False):
        maxlen = syncproto.SYNC_MAXLEN_DEFAULT_V6
    datagrams = datagrams_for(planned, syncid, maxlen)
    entries = len(planned)
    push_id = secrets.token_hex(8)
    h = hashlib.sha256()
    if on_begin is not None:
        on_begin(push_id, entries)

    capacity = max(max((_entries_in(d) for d in datagrams), default=1), rate * BURST_SECONDS)
    tokens = capacity
    nbytes = 0
    start = last = clock()
    for i, dgram in enumerate(datagrams):
        cost = _entries_in(dgram)
        now = clock()
        tokens = min(capacity, tokens + (now - last) * rate)
        last = now
        if tokens < cost:
            sleep((cost - tokens) / rate)
            now = clock()
            tokens = min(capacity, tokens + (now - last) * rate)
            last = now
        # Charged even when a sleep came back short: the debt is paid before the next one.
        tokens -= cost
        try:
            sender.send(dgram)
        except OSError as e:
            raise KernelError(
                f"push {push_id}: sending datagram {i + 1} of {len(datagrams)} failed: "
                f"{e.strerror or e}"
            ) from e
        h.update(len(dgram).to_bytes(2, "big"))
        h.update(dgram)
        nbytes += len(dgram)
    elapsed = clock() - start if datagrams else 0.0
    digest = h.hexdigest()
    result = PushResult(
        push_id=push_id,
        templates=entries,
        datagrams=len(datagrams),
        bytes=nbytes,
        ms=round(elapsed * 1000, 3),
        rate=round(entries / elapsed, 1) if elapsed > 0 else 0.0,
        digest=digest,
    )
    if on_end is not None:
        on_end(push_id, entries, len(datagrams), nbytes, digest)
    # push.run logs the push with its plan; this line is for a caller that has none
    log.debug(
        "push %s: %d entries in %d datagrams (%d bytes), %.0f ms, %.0f entries/s (asked %g)",
        push_id,
        entries,
        len(datagrams),
        nbytes,
        result.ms,
        result.rate,
        rate,
    )
    return result


def open_push_sender(cfg: Config) -> SyncSender:
    """The socket a push goes out of: the sync group and port through sync.interface, TTL
    sync.ttl, multicast loop off (this host's kernel is not a receiver of its own push)."""
    sync = cfg.sync
    if not sync.interface:
        raise ConfigError(
            "sync.interface is not set: a push needs the interface the sync messages leave by"
        )
    if sync.ttl < 1:
        raise ConfigError("sync.ttl is 0: a push would reach no peer (set 1 or more)")
    return SyncSender(sync.interface, sync.group, sync.port, ttl=sync.ttl, loop=False)

