"""Snapshots of the IPVS persistence templates, kept on disk in generations.

A snapshot holds what a reseed needs to rebuild the templates after a failover or a reboot: the
templates (client port 0) with the seconds they had left at capture, and the virtual services
with their real servers as they were then.

File format, version 1: one header line of JSON, then the body.

    {"format":"lvs-hooks-snapshot","version":1,"host":"lb1","captured_at":1795318200.123456,
     "templates":50000,"services":3,"body_bytes":4123456,"sha256":"9f2c..."}\\n
    {"host":"lb1","captured_at":...,"services":[{...}],"columns":["protocol",...],
     "templates":[["TCP","10.0.0.7","10.0.0.100",80,"192.168.1.11",80,"NONE",287,"","",null],...]}\\n

The header alone says what a file holds, so listing generations reads one line per file. The body
length and SHA-256 in the header catch a truncated or corrupted body; the body repeats the
header's host, capture time and counts, so a damaged header cannot pass either. Templates are
compact rows named by `columns`, not one dict each: there can be 50,000 and more of them.

Files are named by capture time (snapshot-20261122T033000.123456Z.json) so that names sort by age,
are written with write_atomic (never a half file under a snapshot's name) and pruned to the newest
`keep` generations only after the new one is in place.
"""

import contextlib
import dataclasses
import errno
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import filelock

from lvs_hooks import safeio
from lvs_hooks.atomicfile import fsync_dir, write_atomic
from lvs_hooks.errors import SnapshotError
from lvs_hooks.kernel.model import ConnEntry, Service
from lvs_hooks.lockfile import FileLock

# About 150 bytes a template: over three million templates; a bigger file is not ours.
MAX_SNAPSHOT = 512 << 20

log = logging.getLogger(__name__)

FORMAT = "lvs-hooks-snapshot"
VERSION = 1

# The fields of a template row, in order. cport is not stored: a template's is always 0.
TEMPLATE_COLUMNS = (
    "protocol",
    "caddr",
    "vaddr",
    "vport",
    "daddr",
    "dport",
    "state",
    "expires",
    "pe_name",
    "pe_data",
    "origin",
)

_NAME_TIME = "%Y%m%dT%H%M%S.%fZ"
_NAME_RE = re.compile(r"^snapshot-(\d{8}T\d{6}\.\d{6}Z)\.json$")
# write_atomic's temp files for snapshot names (other state files in the directory have their
# own writers, whose temp files are not ours to remove).
_TEMP_RE = re.compile(r"^\.snapshot-\d{8}T\d{6}\.\d{6}Z\.json\.tmp-[0-9a-f]{12}$")
# A header is about 250 bytes; anything without a newline this far in is not one.
_MAX_HEADER = 4096
# How every header begins (encode writes the keys in this order): a file cut short inside its
# header is told apart from a file that never was a snapshot.
_HEADER_START = b'{"format":"lvs-hooks-snapshot"'
_LOCK_NAME = ".snapshot.lock"
_LOCK_TIMEOUT = 30.0

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Snapshot:
    """The persistence templates and services of one director at one moment."""

    host: str
    captured_at: float  # time.time() at capture: the clock that survives a reboot
    services: List[Service]
    templates: List[ConnEntry]  # only templates; `expires` = seconds left at capture
    version: int = VERSION
    # The file it was loaded from, for reports; None for a fresh capture. Not part of its value.
    source: Optional[str] = field(default=None, compare=False)
    # Rows and service records of the file that were not valid and were left out (decode).
    skipped: int = field(default=0, compare=False)

    @classmethod
    def capture(
        cls,
        services: Iterable[Service],
        templates: Iterable[ConnEntry],
        host: Optional[str] = None,
        captured_at: Optional[float] = None,
    ) -> "Snapshot":
        """A snapshot taken now of the templates among `templates` (any connections, client
        port not 0, are left out)."""
        return cls(
            host=host if host is not None else socket.gethostname(),
            captured_at=captured_at if captured_at is not None else time.time(),
            services=list(services),
            templates=[e for e in templates if e.is_template],
        )

    @property
    def template_count(self) -> int:
        return len(self.templates)

    @property
    def service_count(self) -> int:
        return len(self.services)


class _Refused(Exception):
    """Why a file is not a usable snapshot (the reason only; callers add the file name)."""


@dataclass(frozen=True)
class _Header:
    host: str
    captured_at: float
    templates: int
    services: int
    body_bytes: int
    sha256: str
    length: int  # bytes of the header line, newline included


def _field(header: Dict[str, Any], name: str, types: Tuple[type, ...]) -> Any:
    value = header.get(name)
    # bool is an int: refuse it where a count or a time is due.
    if isinstance(value, bool) or not isinstance(value, types):
        raise _Refused(f"bad header: '{name}' is {value!r}")
    return value


def _parse_header(head: bytes) -> _Header:
    """The header from the first bytes of a file (at least the header line, if there is one)."""
    if not head:
        raise _Refused("empty file")
    end = head.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        if _HEADER_START.startswith(head) or head.startswith(_HEADER_START):
            raise _Refused("truncated inside the header")
        raise _Refused("not an lvs-hooks snapshot (no header line)")
    try:
        header = json.loads(head[:end])
    except (ValueError, RecursionError):
        raise _Refused("not an lvs-hooks snapshot (the header is not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Refused("not an lvs-hooks snapshot (no 'format': 'lvs-hooks-snapshot' header)")
    if header.get("version") != VERSION:
        raise _Refused(
            f"snapshot format version {header.get('version')!r} is not supported "
            f"(this lvs-hooks reads version {VERSION})"
        )
    sha = _field(header, "sha256", (str,))
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise _Refused(f"bad header: 'sha256' is {sha!r}")
    raw_time = _field(header, "captured_at", (int, float))
    # compared before float(): an integer of 400 digits does not convert
    if not _MIN_TIME <= raw_time <= _MAX_TIME:
        raise _Refused(f"bad header: 'captured_at' is {str(raw_time)[:40]}")
    captured_at = float(raw_time)
    return _Header(
        host=_field(header, "host", (str,)),
        captured_at=captured_at,
        templates=_field(header, "templates", (int,)),
        services=_field(header, "services", (int,)),
        body_bytes=_field(header, "body_bytes", (int,)),
        sha256=sha,
        length=end + 1,
    )


def _check_length(header: _Header, file_size: int) -> None:
    have = file_size - header.length
    if have < header.body_bytes:
        raise _Refused(f"truncated: {have} of {header.body_bytes} body bytes")
    if have > header.body_bytes:
        raise _Refused(f"{have - header.body_bytes} bytes of trailing data after the body")


def template_row(e: ConnEntry) -> list:
    """A template as a row of TEMPLATE_COLUMNS (all of ConnEntry's fields but cport)."""
    return [e[0], e[1], *e[3:]]


def encode(snapshot: Snapshot) -> bytes:
    """The file content for a snapshot."""
    rows = []
    for e in snapshot.templates:
        if e.cport != 0:
            # A caller bug: a connection would come back as a template.
            raise ValueError(f"not a template (client port {e.cport}): {e}")
        rows.append(template_row(e))
    body = {
        "host": snapshot.host,
        "captured_at": snapshot.captured_at,
        "services": [s.to_dict() for s in snapshot.services],
        "columns": list(TEMPLATE_COLUMNS),
        "templates": rows,
    }
    body_bytes = json.dumps(body, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    header = {
        "format": FORMAT,
        "version": VERSION,
        "host": snapshot.host,
        "captured_at": snapshot.captured_at,
        "templates": len(rows),
        "services": len(snapshot.services),
        "body_bytes": len(body_bytes),
        "sha256": hashlib.sha256(body_bytes).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode() + b"\n" + body_bytes


def _decode(data: bytes, source: Optional[str]) -> Snapshot:
    header = _parse_header(data[:_MAX_HEADER])
    _check_length(header, len(data))
    body = data[header.length :]
    if hashlib.sha256(body).hexdigest() != header.sha256:
        raise _Refused("checksum mismatch: the file is corrupt")
    try:
        obj = json.loads(body)
    except ValueError as e:
        raise _Refused(f"invalid JSON in the body: {e}") from None
    except RecursionError:
        raise _Refused("invalid JSON in the body: nested too deep") from None
    if not isinstance(obj, dict):
        raise _Refused("the body is not a JSON object")
    if obj.get("host") != header.host or obj.get("captured_at") != header.captured_at:
        raise _Refused("header and body disagree on host or capture time")
    if obj.get("columns") != list(TEMPLATE_COLUMNS):
        raise _Refused(f"unexpected template columns {obj.get('columns')!r}")
    services_in, rows = obj.get("services"), obj.get("templates")
    if not isinstance(services_in, list) or not isinstance(rows, list):
        raise _Refused("the body lacks the 'services' or 'templates' list")
    if len(services_in) != header.services or len(rows) != header.templates:
        raise _Refused(
            f"header counts ({header.templates} templates, {header.services} services) differ "
            f"from the body ({len(rows)}, {len(services_in)})"
        )
    # Row by row: a bad row or service record (whatever wrote it, the checksum only says it is
    # what was written) is left out and counted, and the rest is reseeded. A file none of whose
    # rows is usable is no snapshot: the store falls back to the generation before it.
    services = [svc for svc in map(_service, services_in) if svc is not None]
    addrs: Dict[Any, bool] = {}
    templates = [e for e in (template_from_row(r, addrs) for r in rows) if e is not None]
    skipped = len(services_in) - len(services) + len(rows) - len(templates)
    if rows and not templates:
        raise _Refused(f"none of its {len(rows)} template rows is valid")
    if services_in and not services:
        raise _Refused(f"none of its {len(services_in)} service records is valid")
    return Snapshot(header.host, header.captured_at, services, templates, VERSION, source, skipped)


# Capture times a snapshot may have: after 2001 and before 2500 (a clock gone mad, -Infinity or
# NaN in a file are not times).
_MIN_TIME = 1e9
_MAX_TIME = 1.7e10
_U32 = 0xFFFFFFFF
_PROTOCOLS = ("TCP", "UDP", "SCTP", "IP")
_MAX_TEXT = 4096  # a state name, a PE name, PE data (a SIP Call-ID): far below


def _is_int(x: Any, top: int) -> bool:
    return type(x) is int and 0 <= x <= top


def _is_text(x: Any) -> bool:
    return type(x) is str and len(x) <= _MAX_TEXT


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# An IPv4 address as ipaddress writes it, matched in C: a million client addresses are checked
# in a reseed, and ipaddress.ip_address costs four times as much.
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _family(addr: Any, cache: Dict[Any, bool]) -> int:
    """4 or 6 for an address as the model writes it, 0 for anything else."""
    if type(addr) is not str or len(addr) > 45:
        return 0
    if _IPV4.fullmatch(addr):
        return 4
    if ":" not in addr:
        return 0
    known = cache.get(addr)
    if known is None:
        try:
            known = cache[addr] = ipaddress.ip_address(addr).version == 6
        except ValueError:
            return 0
        if len(cache) > 100000:
            cache.clear()  # client addresses rarely repeat: only the servers' are worth keeping
    return 6 if known else 4


def template_from_row(r: Any, addrs: Dict[Any, bool]) -> Optional[ConnEntry]:
    """A template from a row (TEMPLATE_COLUMNS), or None when the row is not one. `addrs`: a
    cache of the addresses' families, kept from row to row."""
    if type(r) is not list or len(r) != len(TEMPLATE_COLUMNS):
        return None
    proto, caddr, vaddr, vport, daddr, dport, state, expires, pe_name, pe_data, origin = r
    if (
        proto not in _PROTOCOLS
        or not _is_int(vport, 0xFFFF)
        or not _is_int(dport, 0xFFFF)
        or not _is_int(expires, _U32)
        or not _is_text(state)
        or not _is_text(pe_name)
        or not _is_text(pe_data)
        or origin not in (None, "LOCAL", "SYNC")
    ):
        return None
    family = _family(caddr, addrs)
    if not family or _family(vaddr, addrs) != family or not _family(daddr, addrs):
        return None
    return ConnEntry(proto, caddr, 0, vaddr, vport, daddr, dport, state, expires, pe_name,
                     pe_data, origin)


def _service(d: Any) -> Optional[Service]:
    """A service from its record, or None when the record is not one."""
    try:
        svc = Service.from_dict(d)
    except (TypeError, ValueError, AttributeError):
        return None
    cache: Dict[Any, bool] = {}
    ok = (
        svc.af in (4, 6)
        and svc.protocol in (None, "TCP", "UDP", "SCTP")
        and (svc.addr is None or _family(svc.addr, cache) == svc.af)
        and _is_int(svc.port, 0xFFFF)
        and _is_int(svc.fwmark, _U32)
        and _is_int(svc.timeout, _U32)
        and type(svc.persistent) is bool
        and all(_is_text(x) for x in (svc.scheduler, svc.netmask, svc.pe_name))
        and all(
            _family(dst.addr, cache)
            and _is_int(dst.port, 0xFFFF)
            and _is_text(dst.fwd_method)
            and type(dst.weight) is int
            for dst in svc.destinations
        )
    )
    return svc if ok else None


def decode(data: bytes, name: str = "snapshot") -> Snapshot:
    """A snapshot from file content; SnapshotError naming `name` and the problem if it is not a
    complete, intact snapshot of a version this code reads."""
    try:
        return _decode(data, name)
    except _Refused as e:
        raise SnapshotError(f"snapshot {name}: {e}") from None


@dataclass(frozen=True)
class GenerationInfo:
    """One snapshot file as a listing sees it, from its header line and size only: `ok` means
    complete and of a known format; the checksum is checked by loading it."""

    path: Path
    captured_at: float
    age: float  # seconds between capture and the listing
    templates: Optional[int]  # None when the header could not be read
    services: Optional[int]
    ok: bool
    error: Optional[str]  # why it is not usable, when not ok

    def to_dict(self) -> Dict[str, Any]:
        """Plain values, for JSON reports."""
        return {**dataclasses.asdict(self), "path": str(self.path)}


def _name_time(name: str) -> Optional[float]:
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        stamp = datetime.strptime(m.group(1), _NAME_TIME).replace(tzinfo=timezone.utc)
    except ValueError:  # digits in the right places, but no date (month 13)
        return None
    return stamp.timestamp()


def snapshot_name(captured_at: float) -> str:
    """The file name for a capture time; names sort as the times do."""
    stamp = datetime.fromtimestamp(captured_at, tz=timezone.utc).strftime(_NAME_TIME)
    return f"snapshot-{stamp}.json"


class SnapshotStore:
    """Snapshot generations in one directory (created with mode 0700 when first written)."""

    def __init__(self, state_dir: PathLike, keep: int = 5):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.dir = Path(state_dir)
        self.keep = keep

    # -- writing

    def save(self, snapshot: Snapshot) -> Path:
        """Write a snapshot as the newest generation, then prune to `keep` generations."""
        return self.save_encoded(
            encode(snapshot), snapshot.captured_at, snapshot.template_count,
            snapshot.service_count,
        )

    def save_encoded(
        self, data: bytes, captured_at: float, templates: int = 0, services: int = 0
    ) -> Path:
        """save() for bytes already in this format (table.dumpfile renders them without a
        Snapshot); `templates` and `services` are for the log line only."""
        path = self.dir / snapshot_name(captured_at)
        try:
            self._ensure_dir()
            with FileLock(self.dir / _LOCK_NAME, timeout=_LOCK_TIMEOUT, mode=0o600):
                # Under the lock no other save is writing, so every snapshot temp file is a
                # stray from a writer that was killed.
                self._remove_stray_temps()
                write_atomic(path, data, 0o600)
                pruned = self._prune(also_keep=path)
        except filelock.Timeout:
            # (Timeout is an OSError: it must be caught first.)
            raise SnapshotError(
                f"cannot save snapshot {path}: another process has held the lock "
                f"{self.dir / _LOCK_NAME} for {_LOCK_TIMEOUT:.0f} s"
            ) from None
        except OSError as e:
            where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
            raise SnapshotError(f"cannot save snapshot {path}: {e.strerror or e}{where}") from None
        log.debug(
            "saved snapshot %s: %d templates, %d services, %d bytes; pruned %d",
            path,
            templates,
            services,
            len(data),
            pruned,
        )
        return path

    def _ensure_dir(self) -> None:
        if self.dir.is_dir():
            return
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            if self.dir.is_dir():
                return  # made by a concurrent save
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.dir)
            ) from None
        # mkdir applied the umask; snapshots name clients, keep them to root whatever it was.
        os.chmod(self.dir, 0o700)
        fsync_dir(self.dir.parent)

    def _remove_stray_temps(self) -> None:
        for name in os.listdir(self.dir):
            if _TEMP_RE.match(name):
                log.info("removing %s, left by a snapshot writer that did not finish", name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / name)

    def _prune(self, also_keep: Path) -> int:
        # By name, newest first. The file just written always stays, even if a clock stepped
        # back and gave it an older name than the rest.
        names = sorted((n for n in os.listdir(self.dir) if _NAME_RE.match(n)), reverse=True)
        doomed = [n for n in names[self.keep :] if n != also_keep.name]
        for name in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / name)
        if doomed:
            fsync_dir(self.dir)
        return len(doomed)

    # -- reading

    def _names(self) -> List[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise SnapshotError(f"cannot list snapshots in {self.dir}: {e.strerror or e}") from None
        return sorted((n for n in names if _NAME_RE.match(n)), reverse=True)

    def generations(self, now: Optional[float] = None) -> List[GenerationInfo]:
        """The snapshot files, newest first, each checked from its header line and size only."""
        now = time.time() if now is None else now
        result = []
        for name in self._names():
            path = self.dir / name
            captured_at = _name_time(name) or 0.0
            header: Optional[_Header] = None
            err: Optional[str] = None
            try:
                fd = safeio.open_regular(path)
                try:
                    head = os.read(fd, _MAX_HEADER)
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            except FileNotFoundError:
                continue  # pruned by a concurrent save since the listing
            except OSError as e:
                err = f"cannot read: {e.strerror or e}"
            else:
                try:
                    header = _parse_header(head)
                    # Keeps `header` when only the length is wrong: its counts still say
                    # what the file was meant to hold.
                    _check_length(header, size)
                except _Refused as e:
                    err = str(e)
            if header is not None:
                captured_at = header.captured_at
            result.append(
                GenerationInfo(
                    path=path,
                    captured_at=captured_at,
                    age=now - captured_at,
                    templates=header.templates if header else None,
                    services=header.services if header else None,
                    ok=err is None,
                    error=err,
                )
            )
        return result

    def load(self, path: PathLike) -> Snapshot:
        """The snapshot in one file; SnapshotError naming the file and the problem."""
        try:
            data = safeio.read_file(path, MAX_SNAPSHOT)
        except OSError as e:
            raise SnapshotError(f"snapshot {path}: cannot read: {e.strerror or e}") from None
        return decode(data, str(path))

    def load_latest(self) -> Tuple[Snapshot, List[str]]:
        """The newest good snapshot, and a warning for each newer generation refused and why.

        SnapshotError when no generation is usable.
        """
        warnings: List[str] = []
        for info in self.generations():
            if not info.ok:
                warnings.append(f"skipped snapshot {info.path}: {info.error}")
                continue
            try:
                snapshot = self.load(info.path)
            except SnapshotError as e:
                warnings.append(f"skipped {e.format_message()}")
                continue
            if snapshot.skipped:
                warnings.append(
                    f"snapshot {info.path}: {snapshot.skipped} invalid rows or service records "
                    "left out"
                )
            return snapshot, warnings
        if not self.dir.exists():
            why = "the directory does not exist"
        elif not warnings:
            why = "no snapshot files"
        else:
            why = "; ".join(warnings)
        raise SnapshotError(f"no usable snapshot in {self.dir}: {why}")
