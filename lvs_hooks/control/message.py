"""Control messages: their wire format, their authentication and the replay guard.

Pure: no sockets, and the clock is a parameter, so everything here is tested without a network.

One message is one datagram:

    b"LVSH1 " + JSON + TAG

JSON is the canonical form (sorted keys, no spaces, ASCII) of {kind, sender, ts, nonce, body};
TAG is the 32-byte HMAC-SHA256 of everything before it under the shared key. The magic carries
the format version: a format that changes the meaning of a field gets a new magic, so a reader
ignores fields it does not know.

Authentication says a key holder made the message, not when: a captured datagram sent again
would authenticate as well. The ReplayGuard refuses a message whose timestamp is more than
max_skew seconds from our clock, and within that window one whose nonce it has seen before.
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

from lvs_hooks.errors import ControlError

KINDS = ("push-begin", "push-end", "push-request", "status-request", "status-reply")

MAGIC = b"LVSH1 "
TAG_LEN = 32  # HMAC-SHA256
MAX_SIZE = 1400  # whole datagram: fits any usual MTU with IPv6 and UDP headers, never fragmented
MIN_KEY_LEN = 32
_FIELDS = ("body", "kind", "nonce", "sender", "ts")
_NONCE = re.compile(r"[0-9a-f]{32}")

Clock = Callable[[], float]


class BadMessage(Exception):
    """A datagram that must not be acted on. `reason` is one line for the log; `category` is
    one of "forged", "malformed", "stale", "replayed" (for counting)."""

    def __init__(self, reason: str, category: str = "malformed"):
        super().__init__(reason)
        self.reason = reason
        self.category = category


@dataclass(frozen=True)
class Message:
    """One control message. `ts` is the sender's time.time() when it made it; `nonce` 32 hex
    characters, random; `body` a JSON-able dict whose content depends on `kind`."""

    kind: str
    sender: str
    ts: float
    nonce: str
    body: dict


def new_message(kind: str, sender: str, body: Dict[str, Any], clock: Clock = time.time) -> Message:
    """A fresh message from `sender`, stamped now and with a new random nonce."""
    msg = Message(kind, sender, float(clock()), secrets.token_hex(16), body)
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
    }


def _invalid(obj: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the fields of a message, or None. The same rules for what we send
    and what we accept, so nothing we send is refused by a peer running the same version."""
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(missing)
    kind, sender, ts, nonce, body = (obj[f] for f in ("kind", "sender", "ts", "nonce", "body"))
    if not isinstance(kind, str):
        return "kind must be a string"
    if kind not in KINDS:
        return f"unknown kind {kind[:40]!r}"
    if not isinstance(sender, str) or not sender:
        return "sender must be a non-empty string"
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
    if len(data) < len(MAGIC) + 2 + TAG_LEN or not data.startswith(MAGIC):
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
    return Message(obj["kind"], obj["sender"], float(obj["ts"]), obj["nonce"], obj["body"])


class ReplayGuard:
    """Refuses stale messages and messages seen before.

    A message is fresh while its timestamp is within max_skew of our clock. One accepted at our
    time t has a timestamp within t +- max_skew, so it is stale by t + 2 * max_skew: its nonce
    is remembered that long and then forgotten. Memory is bounded by the message rate over that
    window, and hard-capped at `max_entries` (the oldest are dropped first; only key holders'
    messages get here). A clock stepped backwards only delays forgetting.

    Not thread-safe: one guard per receiving loop.
    """

    def __init__(self, max_skew: float, clock: Clock = time.time, max_entries: int = 100_000):
        if not max_skew > 0:
            raise ValueError(f"max_skew must be > 0, got {max_skew!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        self.max_skew = float(max_skew)
        self.clock = clock
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> our time, in order

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, msg: Message) -> None:
        """Accept `msg` (and remember its nonce) or raise BadMessage ("stale", "replayed")."""
        now = self.clock()
        self._forget(now)
        off = msg.ts - now
        if abs(off) > self.max_skew:
            raise BadMessage(f"timestamp {off:+.1f} s off (max_skew {self.max_skew:g})", "stale")
        seen = self._seen.get(msg.nonce)
        if seen is not None:
            raise BadMessage(f"replayed (nonce seen {now - seen:.1f} s ago)", "replayed")
        self._seen[msg.nonce] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.max_skew
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon:
                break
            del seen[oldest]


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
