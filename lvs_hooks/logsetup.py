"""Logging: to the journal where journald runs, else to syslog (keepalived drops a hook's
stdout), and to stderr when a person runs the command in a terminal (or LVS_HOOKS_LOG_STDERR
is set).

The journal gets each record through its native protocol (one datagram of `KEY=value` fields
to /run/systemd/journal/socket; standard library only), with structured fields: a MESSAGE_ID
per kind of record (derived from the logger and the message's format string, so it is stable
as long as the message is, and `journalctl MESSAGE_ID=...` finds every record of that kind),
the logger, the code location, and the figures a record carries in `extra={"fields": {...}}`
as LVS_<NAME>=value (`journalctl -o json` shows them). A record the journal refuses goes to
syslog instead.
"""

import hashlib
import logging
import logging.handlers
import os
import re
import socket
import struct
import sys
from typing import Any, Dict, Optional

SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "lvs-hooks"

# `extra=SYSLOG_ONLY` on a record keeps it off the terminal: the CLI logs its one-line error
# for the journal, and click prints the same line on stderr already.
SYSLOG_ONLY = {"to_console": False}

# A datagram larger than this is refused by the socket's buffer; journald's own clients then
# pass a memfd, which is more than a hook's log line needs: the message is cut instead.
MAX_MESSAGE = 48 << 10

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
_FIELD_OK = re.compile(r"[^A-Z0-9_]")


def message_id(logger: str, template: str) -> str:
    """The MESSAGE_ID of a kind of record: 128 bits (32 hex digits) of a hash of the logger's
    name and the message's format string."""
    return hashlib.sha256(f"{IDENTIFIER}\0{logger}\0{template}".encode()).hexdigest()[:32]


def field_name(name: str) -> str:
    """A journal field name for a figure: LVS_ and the name in capitals, [A-Z0-9_] only."""
    return "LVS_" + _FIELD_OK.sub("_", str(name).upper())[:60]


def encode_fields(fields: Dict[str, Any]) -> bytes:
    """The journal's native datagram: `KEY=value\\n` per field, or for a value with a newline
    `KEY\\n`, its length as 64-bit little-endian, the value and `\\n`."""
    out = bytearray()
    for key, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Records to journald over its native socket; `fallback` (syslog) when it refuses one."""

    def __init__(self, path: str = JOURNAL_SOCKET,
                 fallback: Optional[logging.Handler] = None):
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def fields(self, record: logging.LogRecord) -> Dict[str, Any]:
        message = self.format(record)
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + " [cut]"
        fields: Dict[str, Any] = {
            "MESSAGE": message,
            "PRIORITY": _PRIORITY.get(record.levelno, 6),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "SYSLOG_FACILITY": 3,  # daemon, as the syslog handler says it
            "MESSAGE_ID": message_id(record.name, str(record.msg)),
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
            "THREAD": record.threadName,
        }
        figures = getattr(record, "fields", None)
        if isinstance(figures, dict):
            for name, value in figures.items():
                if isinstance(value, bool):
                    value = int(value)
                if value is not None and not isinstance(value, (dict, list, tuple)):
                    fields[field_name(name)] = value
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(encode_fields(self.fields(record)), self.path)
        except OSError:
            if self.fallback is not None:
                self.fallback.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


_configured = False  # once per process: a door that falls back to the CLI calls this again


def _syslog() -> Optional[logging.Handler]:
    if not os.path.exists(SYSLOG_SOCKET):
        return None
    try:
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
    except OSError:
        return None  # a socket nobody listens on: no syslog daemon
    handler.setFormatter(logging.Formatter("lvs-hooks[%(process)d]: %(message)s"))
    return handler


def _listens(path: str) -> bool:
    """Whether journald is there: a socket file alone may be left by one that is not."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def system_handler(journal_socket: str = JOURNAL_SOCKET) -> Optional[logging.Handler]:
    """The journal where journald runs (falling back to syslog per record), else syslog, else
    None."""
    syslog = _syslog()
    if _listens(journal_socket):
        handler = JournalHandler(journal_socket, syslog)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    return syslog


def setup_logging(debug: bool = False) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    system = system_handler()
    if system is not None:
        root.addHandler(system)
    to_terminal = sys.stderr is not None and (
        sys.stderr.isatty() or os.environ.get("LVS_HOOKS_LOG_STDERR") or system is None
    )
    if to_terminal:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        err.addFilter(lambda record: getattr(record, "to_console", True))
        root.addHandler(err)
    # Never Python's last-resort handler: it would print a second copy of every error.
    root.addHandler(logging.NullHandler())
