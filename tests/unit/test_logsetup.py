"""The journal's native protocol, received on a real datagram socket standing where journald's
would: fields, a MESSAGE_ID per kind of record, figures as fields; syslog when it refuses."""

import logging
import socket
import struct

from lvs_hooks.logsetup import JournalHandler, encode_fields, message_id, system_handler


def decode(datagram: bytes) -> dict:
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            fields[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", datagram[nl + 1 : nl + 9])
            fields[line.decode()] = datagram[nl + 9 : nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return fields


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def journal(tmp_path):
    path = str(tmp_path / "journal.socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    return path, server


def test_records_carry_a_message_id_per_kind_and_their_figures(tmp_path):
    path, server = journal(tmp_path)
    handler = JournalHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("lvs_hooks.test_journal")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("push %s: %d templates", "p1", 10020,
                    extra={"fields": {"templates": 10020, "ms total": 572.5, "ok": True,
                                      "skipped": {"x": 1}}})
        log.warning("push %s: %d templates", "p2", 7)
        log.error("line one\nline two")
        first, second, third = (decode(server.recv(65536)) for _ in range(3))
    finally:
        log.removeHandler(handler)
        handler.close()
        server.close()
    assert first["MESSAGE"] == "push p1: 10020 templates"
    assert first["PRIORITY"] == "4" and first["SYSLOG_IDENTIFIER"] == "lvs-hooks"
    assert first["LVS_TEMPLATES"] == "10020" and first["LVS_MS_TOTAL"] == "572.5"
    assert first["LVS_OK"] == "1" and "LVS_SKIPPED" not in first
    # one kind of record, one id; another kind, another
    assert first["MESSAGE_ID"] == second["MESSAGE_ID"] == message_id(
        "lvs_hooks.test_journal", "push %s: %d templates")
    assert len(first["MESSAGE_ID"]) == 32 and third["MESSAGE_ID"] != first["MESSAGE_ID"]
    assert third["MESSAGE"] == "line one\nline two" and third["PRIORITY"] == "3"


def test_a_journal_that_refuses_sends_the_record_to_syslog(tmp_path):
    fallback = Collect()
    handler = JournalHandler(str(tmp_path / "gone.socket"), fallback)
    handler.handle(logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None))
    handler.close()
    assert [r.getMessage() for r in fallback.records] == ["boom"]


def test_the_journal_where_its_socket_is(tmp_path):
    path, server = journal(tmp_path)
    try:
        assert isinstance(system_handler(path), JournalHandler)
    finally:
        server.close()
    assert not isinstance(system_handler(str(tmp_path / "none")), JournalHandler)


def test_values_with_newlines_are_length_prefixed():
    assert encode_fields({"A": "x", "B": "1\n2"}) == (
        b"A=x\nB\n" + struct.pack("<Q", 3) + b"1\n2\n")
