"""A snapshot file straight from the table in memory: the bytes snapshot.encode writes for
`TemplateTable.dump()`'s Snapshot, without a ConnEntry and a row list per template.

On a million templates snapshot.encode spends most of its time building and serialising one
list per row; the table renders its rows from interned pieces instead (`json_rows`). The format
is snapshot.py's (design.md 5.10): a header line with counts, body length and SHA-256,
then the body. The body is built in memory: the header, which comes first, needs its length and
digest.

A unit test checks that both give the same bytes.
"""

import hashlib
import json
import socket
import time
from typing import Any, Iterable, List, Optional, Tuple

from lvs_hooks.kernel.model import Service
from lvs_hooks.snapshot import FORMAT, TEMPLATE_COLUMNS, VERSION
from lvs_hooks.table.store import TemplateTable


def encode_dump(
    table: TemplateTable,
    services: Iterable[Service],
    now: float,
    host: Optional[str] = None,
    captured_at: Optional[float] = None,
    entries: Optional[Tuple[List[Tuple[int, int]], List[Tuple[Any, int]]]] = None,
) -> bytes:
    """snapshot.encode(table.dump(services, now, host, captured_at)), rendered from the table.

    `host` and `captured_at` default as Snapshot.capture's do (the host name, time.time()).
    `entries`: the table's copy (TemplateTable.entries), to render without holding its lock.
    """
    host = host if host is not None else socket.gethostname()
    captured_at = captured_at if captured_at is not None else time.time()
    services = list(services)
    # The body's keys in snapshot.encode's order, with the template list left open.
    head = json.dumps(
        {
            "host": host,
            "captured_at": captured_at,
            "services": [s.to_dict() for s in services],
            "columns": list(TEMPLATE_COLUMNS),
            "templates": [],
        },
        separators=(",", ":"),
        allow_nan=False,
    )
    assert head.endswith("[]}")
    parts = [head[:-2].encode()]
    count = 0
    for n, rows in table.json_rows(now, entries):
        parts.append((b"," if count else b"") + rows.encode())
        count += n
    parts.append(b"]}\n")
    body = b"".join(parts)
    del parts
    header = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "host": host,
            "captured_at": captured_at,
            "templates": count,
            "services": len(services),
            "body_bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        },
        separators=(",", ":"),
        allow_nan=False,
    )
    return header.encode() + b"\n" + body


__all__ = ["encode_dump"]
