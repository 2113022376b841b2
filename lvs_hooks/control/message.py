"""Control messages: their wire format, their authentication and the replay guard.

Pure but for the replay guard's own file: no sockets, and the clock is a parameter, so
everything here is tested without a network.

One message is one datagram:

    b"LVSH2 " + JSON + TAG

JSON is the canonical form (sorted keys, no spaces, ASCII) of {body, epoch, kind, nonce, sender,
seq, to, ts}; TAG is the 32-byte HMAC-SHA256 of everything before it under the shared key. The
magic carries the format version: a format that changes the meaning of a field gets a new magic,
so a reader ignores fields it does not know.

Version 2 (magic LVSH2) added `to` (the recipient: a director's sender name, or "*" for every
director), `epoch` (16 random hex digits, new each time a sender starts) and `seq` (1, 2, ... per
message within an epoch). Wire compatibility: a version-1 datagram (LVSH1) is refused as
category "version" and a version-1 reader takes a version-2 datagram for no control message at
all, so the two versions do not talk: upgrade both directors together (design.md section
5.8). Pushes still reach the kernels of peers of either version; only their announcement is lost.

Authentication says a key holder made the message, not when: a captured datagram sent again
would authenticate as well. The ReplayGuard refuses a message whose timestamp is more than
max_skew seconds from our clock, and within that window one whose sender and epoch it has seen
with a sequence number as high or higher; it keeps that window in a file, so that a restarted
receiver still refuses what it accepted before (design.md section 6.2).
"""

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.errors import ControlError

KINDS = ("push-begin", "push-end", "push-request", "status-request", "status-reply")

MAGIC = b"LVSH2 "
VERSION = 2
OLD_MAGICS = {b"LVSH1 ": 1}  # earlier versions, recognised to be refused by name
TAG_LEN = 32  # HMAC-SHA256
MAX_SIZE = 1400  # whole datagram: fits any usual MTU with IPv6 and UDP headers, never fragmented
MIN_KEY_LEN = 32
MAX_NAME = 255  # sender and recipient names
MAX_SEQ = 2**53  # JSON numbers stay exact up to here
EVERYONE = "*"  # the recipient of a message to every director
_FIELDS = ("body", "epoch", "kind", "nonce", "sender", "seq", "to", "ts")
_NONCE = re.compile(r"[0-9a-f]{32}")
_EPOCH = re.compile(r"[0-9a-f]{16}")

Clock = Callable[[], float]


class BadMessage(Exception):
    """A datagram that must not be acted on. `reason` is one line for the log; `category` is
    one of "forged", "malformed", "version", "stale", "replayed", "own-name" (for counting)."""

    def __init__(self, reason: str, category: str = "malformed"):
        super().__init__(reason)
        self.reason = reason
        self.category = category


@dataclass(frozen=True)
class Message:
    """One control message. `ts` is the sender's time.time() when it made it; `nonce` 32 hex
    characters, random; `body` a JSON-able dict whose content depends on `kind`; `to` the
    recipient's sender name or "*"; `epoch` 16 hex characters, random, one per start of the
    sender; `seq` the message's number in its epoch, from 1."""

    kind: str
    sender: str
    ts: float
    nonce: str
    body: dict
    to: str = EVERYONE
    epoch: str = ""
    seq: int = 0


def new_epoch() -> str:
    return secrets.token_hex(8)


def new_message(
    kind: str,
    sender: str,
    body: Dict[str, Any],
    clock: Clock = time.time,
    to: str = EVERYONE,
    epoch: Optional[str] = None,
    seq: int = 1,
) -> Message:
    """A fresh message from `sender` to `to`, stamped now and with a new random nonce; a new
    epoch unless one is given (a sender that sends more than one message keeps its epoch and
    counts `seq` up: control.channel does)."""
    msg = Message(kind, sender, float(clock()), secrets.token_hex(16), body, to,
                  new_epoch() if epoch is None else epoch, seq)
    problem = _invalid(_fields(msg))
    if problem:
        raise ValueError(f"control message: {problem}")
    return msg


def _fields(msg: Message) -> Dict[str, Any]:
    return {
        "kind": msg.kind,
        "sender": msg.sender,
        "ts": msg.ts,
        "nonce": msg.nonce,
        "body": msg.body,
        "to": msg.to,
        "epoch": msg.epoch,
        "seq": msg.seq,
    }


def _invalid(obj: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the fields of a message, or None. The same rules for what we send
    and what we accept, so nothing we send is refused by a peer running the same version."""
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(missing)
    kind, sender, ts, nonce, body = (obj[f] for f in ("kind", "sender", "ts", "nonce", "body"))
    to, epoch, seq = obj["to"], obj["epoch"], obj["seq"]
    if not isinstance(kind, str):
        return "kind must be a string"
    if kind not in KINDS:
        return f"unknown kind {kind[:40]!r}"
    if not isinstance(sender, str) or not sender or len(sender) > MAX_NAME:
        return f"sender must be a non-empty string of at most {MAX_NAME} characters"
    if not isinstance(to, str) or not to or len(to) > MAX_NAME:
        return f"to must be a non-empty string of at most {MAX_NAME} characters"
    if not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch):
        return "epoch must be 16 hex characters"
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        return f"seq must be an integer from 1 to {MAX_SEQ}"
    # bool is an int in Python: true must not pass as a timestamp
    if type(ts) not in (int, float) or not math.isfinite(ts):
        return "ts must be a finite number"
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        return "nonce must be 32 hex characters"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    return None


def _canonical(obj: Dict[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def encode(msg: Message, key: bytes) -> bytes:
    """The datagram for `msg`, authenticated under `key`. ValueError if the message is not
    valid (what decode would refuse), not JSON-able, or longer than MAX_SIZE encoded."""
    fields = _fields(msg)
    problem = _invalid(fields)
    if problem:
        raise ValueError(f"control message: {problem}")
    try:
        payload = MAGIC + _canonical(fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"control message {msg.kind}: body is not JSON-able: {e}") from None
    data = payload + _tag(key, payload)
    if len(data) > MAX_SIZE:
        raise ValueError(
            f"control message {msg.kind}: {len(data)} bytes encoded, more than {MAX_SIZE}"
        )
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def decode(data: bytes, key: bytes) -> Message:
    """The message in datagram `data`, or BadMessage saying why it must be dropped.

    The tag is checked before the JSON is parsed: nothing from a sender without the key is
    interpreted. Fields a reader does not know are ignored (see the module's docstring).
    """
    head = bytes(data[: len(MAGIC)])
    if head in OLD_MAGICS:
        raise BadMessage(
            f"a version {OLD_MAGICS[head]} message (this director speaks version {VERSION}): "
            "upgrade lvs-hooks on every director", "version",
        )
    if len(data) < len(MAGIC) + 2 + TAG_LEN or head != MAGIC:
        raise BadMessage("not an lvs-hooks control message")
    if len(data) > MAX_SIZE:
        raise BadMessage(f"malformed: {len(data)} bytes, more than {MAX_SIZE}")
    payload, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    if not hmac.compare_digest(_tag(key, payload), tag):
        raise BadMessage("bad HMAC: wrong key or forged", "forged")
    try:
        obj = json.loads(
            payload[len(MAGIC) :].decode("utf-8"),
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadMessage(f"malformed: not JSON ({str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise BadMessage("malformed: not a JSON object")
    problem = _invalid(obj)
    if problem:
        raise BadMessage(f"malformed: {problem}")
    return Message(obj["kind"], obj["sender"], float(obj["ts"]), obj["nonce"], obj["body"],
                   obj["to"], obj["epoch"], obj["seq"])


REPLAY_FILE_MAX = 4 << 20  # bytes of the replay guard's file read at most


class ReplayGuard:
    """Refuses stale messages and messages seen before, across restarts when given a `path`.

    A message is fresh while its timestamp is within max_skew of our clock. Within that window,
    a message is new when its sequence number is above the highest accepted from its sender and
    epoch (a sender counts up from 1 in each epoch, a random value it draws at start; one
    socket on one link does not reorder). The guard keeps, per (sender, epoch), that highest
    number and when it was accepted; an entry silent for 2 * max_skew is forgotten, because any
    message of that epoch not above it was sent before the one accepted then and is stale by
    now. Memory is bounded by the senders' starts over that window, and hard-capped at
    `max_entries` (the oldest are dropped first; only key holders' messages get here). A clock
    stepped backwards only delays forgetting.

    With `path`, the window is written there (write_atomic, mode 0600) after every accepted
    message, before the caller acts on it, and read back at start: a message captured before a
    restart and sent again after it is refused as a replay. A file that cannot be read (corrupt,
    not a regular file, too big) makes the guard refuse everything for 2 * max_skew, after
    which nothing captured before the start can be fresh; a missing one is a first start. A
    write that fails leaves `save_error` set (the caller logs it) and the message accepted.

    Not thread-safe: one guard per receiving loop.
    """

    def __init__(
        self,
        max_skew: float,
        clock: Clock = time.time,
        max_entries: int = 10_000,
        path: Optional[str] = None,
    ):
        if not max_skew > 0:
            raise ValueError(f"max_skew must be > 0, got {max_skew!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        self.max_skew = float(max_skew)
        self.clock = clock
        self.max_entries = max_entries
        self.path = path
        self.save_error = ""
        self.load_error = ""
        self.quarantine_until = float("-inf")
        # (sender, epoch) -> (highest seq, our time of its acceptance), oldest first
        self._seen: OrderedDict[Tuple[str, str], Tuple[int, float]] = OrderedDict()
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, msg: Message) -> None:
        """Accept `msg` (and remember it) or raise BadMessage ("stale", "replayed")."""
        now = self.clock()
        self._forget(now)
        off = msg.ts - now
        if abs(off) > self.max_skew:
            raise BadMessage(f"timestamp {off:+.1f} s off (max_skew {self.max_skew:g})", "stale")
        if now < self.quarantine_until:
            raise BadMessage(
                f"replay window unreadable at start ({self.load_error}): everything refused "
                f"for {self.quarantine_until - now:.0f} s more", "replayed",
            )
        key = (msg.sender, msg.epoch)
        seen = self._seen.get(key)
        if seen is not None and msg.seq <= seen[0]:
            raise BadMessage(
                f"replayed (sequence {msg.seq} of epoch {msg.epoch}, {seen[0]} accepted "
                f"{now - seen[1]:.1f} s ago)", "replayed",
            )
        self._seen[key] = (msg.seq, now)
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        if self.path is not None:
            self._save(self.path)

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.max_skew
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest][1] >= horizon:
                break
            del seen[oldest]

    def _save(self, path: str) -> None:
        rows = [[s, e, q, t] for (s, e), (q, t) in self._seen.items()]
        data = json.dumps({"version": 1, "window": rows}, separators=(",", ":"))
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            write_atomic(path, data.encode("ascii"), 0o600)
        except OSError as e:
            self.save_error = f"cannot write {path}: {e.strerror or e}"
        else:
            self.save_error = ""

    def _load(self, path: str) -> None:
        now = self.clock()
        try:
            obj = json.loads(safeio.read_file(path, REPLAY_FILE_MAX, nofollow=True))
            rows = obj["window"] if isinstance(obj, dict) and obj.get("version") == 1 else None
            if not isinstance(rows, list):
                raise ValueError("not a replay window of version 1")
            loaded = []
            for row in rows:
                if not (isinstance(row, list) and len(row) == 4):
                    raise ValueError("a row is not [sender, epoch, seq, time]")
                sender, epoch, seq, t = row
                if not (isinstance(sender, str) and isinstance(epoch, str)
                        and type(seq) is int and type(t) in (int, float) and math.isfinite(t)):
                    raise ValueError("a row is not [sender, epoch, seq, time]")
                loaded.append(((sender, epoch), (seq, float(t))))
        except FileNotFoundError:
            return  # a first start: nothing was accepted before
        except (OSError, ValueError, RecursionError) as e:
            self.load_error = f"{path}: " + (
                (e.strerror or str(e)) if isinstance(e, OSError) else str(e)[:80])
            self.quarantine_until = now + 2 * self.max_skew
            return
        loaded.sort(key=lambda kv: kv[1][1])
        for key, val in loaded[-self.max_entries:]:
            self._seen[key] = val
        self._forget(now)


def load_key(path: str) -> bytes:
    """The shared key: the content of `path` without surrounding whitespace.

    ControlError, one line naming the file, if it cannot be read, is not a regular file, is
    readable by group or others, or holds fewer than MIN_KEY_LEN bytes.
    """
    what = f"control key file {path}"
    try:
        # O_NONBLOCK: a FIFO put there must not hang the caller; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ControlError(f"{what}: no such file") from None
    except OSError as e:
        raise ControlError(f"{what}: cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ControlError(f"{what}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ControlError(
                f"{what}: mode {mode:04o} lets group or others read it, must be mode 0600"
            )
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        raw = b"".join(chunks)
    except OSError as e:
        raise ControlError(f"{what}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    key = raw.strip()
    if len(key) < MIN_KEY_LEN:
        raise ControlError(
            f"{what}: key is {len(key)} bytes, must be at least {MIN_KEY_LEN} "
            f"(e.g. head -c 32 /dev/urandom | base64 > {path})"
        )
    return key
