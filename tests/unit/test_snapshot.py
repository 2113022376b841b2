"""The snapshot store: round trips, generations, damaged files, and a writer killed mid-write."""

import hashlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lvs_hooks.atomicfile import temp_files
from lvs_hooks.errors import SnapshotError
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.snapshot import (
    FORMAT,
    TEMPLATE_COLUMNS,
    VERSION,
    Snapshot,
    SnapshotStore,
    decode,
    encode,
    snapshot_name,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1795318200.123456  # 2026-11-22T03:30:00.123456Z


def services():
    return [
        Service(
            af=4,
            protocol="TCP",
            addr="192.0.2.10",
            port=80,
            scheduler="wlc",
            persistent=True,
            timeout=300,
            netmask="255.255.255.255",
            destinations=(
                Destination("10.9.0.1", 80, "droute", 1),
                Destination("10.9.0.2", 80, "droute", 3),
            ),
        ),
        Service(
            af=6,
            protocol="UDP",
            addr="2001:db8::10",
            port=53,
            scheduler="rr",
            persistent=True,
            timeout=120,
            netmask="128",
            destinations=(Destination("fd00:1::5", 53, "masq", 1),),
        ),
        Service(
            af=4,
            protocol=None,
            addr=None,
            port=0,
            fwmark=7,
            scheduler="sh",
            persistent=True,
            timeout=600,
            netmask="255.255.255.0",
            destinations=(Destination("10.9.0.3", 5000, "droute", 1),),
        ),
        Service(af=4, protocol="TCP", addr="192.0.2.11", port=443),  # no real server yet
    ]


def templates():
    return [
        ConnEntry("TCP", "198.51.100.7", 0, "192.0.2.10", 80, "10.9.0.2", 80, "NONE", 287,
                  origin="LOCAL"),
        ConnEntry("UDP", "2001:db8:1::7", 0, "2001:db8::10", 53, "fd00:1::5", 53, "NONE", 119,
                  origin="SYNC"),
        # fwmark templates: protocol IP, the mark where the virtual address would be.
        ConnEntry("IP", "198.51.100.0", 0, "0.0.0.7", 0, "10.9.0.3", 5000, "NONE", 599),
        ConnEntry("IP", "2001:db8:2::", 0, "0:7::", 0, "fd00:1::6", 0, "NONE", 42),
        ConnEntry("TCP", "198.51.100.8", 0, "192.0.2.10", 80, "10.9.0.1", 80, "NONE", 3,
                  pe_name="sip", pe_data="call-id-1"),
    ]  # fmt: skip


def sample(captured_at=T0, host="lb1"):
    return Snapshot(host, captured_at, services(), templates())


def big(n, captured_at=T0):
    rows = [
        ConnEntry("TCP", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0, "192.0.2.10", 80,
                  f"10.9.0.{i % 2 + 1}", 80, "NONE", 1 + i % 300, origin="LOCAL")
        for i in range(n)
    ]  # fmt: skip
    return Snapshot("lb1", captured_at, services(), rows)


def flip_bit(path: Path, offset: int, mask: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def header_length(path: Path) -> int:
    return path.read_bytes().index(b"\n") + 1


# --------------------------------------------------------------------------------------------
# Round trips and the format


def test_round_trip_ipv4_ipv6_fwmark_and_services(tmp_path):
    store = SnapshotStore(tmp_path / "state", keep=5)
    snap = sample()
    path = store.save(snap)
    loaded = store.load(path)
    assert loaded == snap
    assert loaded.templates[2].fwmark == 7 and loaded.templates[3].fwmark == 7
    assert loaded.services[2].fwmark == 7 and loaded.services[2].protocol is None
    assert loaded.templates[1].origin == "SYNC" and loaded.templates[2].origin is None
    assert loaded.template_count == 5 and loaded.service_count == 4
    assert path.name == "snapshot-20261122T033000.123456Z.json"
    assert loaded.source == str(path) and snap.source is None


def test_store_directory_is_created_0700_and_files_are_0600(tmp_path):
    state = tmp_path / "var" / "lib" / "lvs-hooks"
    path = SnapshotStore(state).save(sample())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_capture_keeps_only_templates():
    connection = ConnEntry("TCP", "198.51.100.7", 40000, "192.0.2.10", 80, "10.9.0.2", 80,
                           "ESTABLISHED", 800)  # fmt: skip
    before = time.time()
    snap = Snapshot.capture(services=services(), templates=[connection] + templates())
    assert snap.templates == templates()
    assert before <= snap.captured_at <= time.time()
    assert snap.host


def test_encoding_a_connection_as_a_template_is_a_bug():
    connection = ConnEntry("TCP", "198.51.100.7", 40000, "192.0.2.10", 80, "10.9.0.2", 80,
                           "ESTABLISHED", 800)  # fmt: skip
    with pytest.raises(ValueError, match="not a template"):
        encode(Snapshot("lb1", T0, [], [connection]))


def test_file_is_a_header_line_then_a_compact_body():
    data = encode(sample())
    head, body = data.split(b"\n", 1)
    header = json.loads(head)
    assert header == {
        "format": FORMAT,
        "version": VERSION,
        "host": "lb1",
        "captured_at": T0,
        "templates": 5,
        "services": 4,
        "body_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    rows = json.loads(body)["templates"]
    assert rows[0] == ["TCP", "198.51.100.7", "192.0.2.10", 80, "10.9.0.2", 80, "NONE", 287,
                       "", "", "LOCAL"]  # fmt: skip
    assert b", " not in body and b": " not in body  # compact separators


def test_names_sort_by_capture_time():
    times = [T0, T0 + 0.000001, T0 + 0.5, T0 + 9, T0 + 86400 * 400]
    names = [snapshot_name(t) for t in times]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


# --------------------------------------------------------------------------------------------
# Generations


def test_generations_newest_first_with_counts_and_age(tmp_path):
    store = SnapshotStore(tmp_path, keep=5)
    store.save(sample(T0))
    store.save(big(10, T0 + 60))
    store.save(sample(T0 + 120))
    gens = store.generations(now=T0 + 180)
    assert [g.captured_at for g in gens] == [T0 + 120, T0 + 60, T0]
    assert [g.age for g in gens] == pytest.approx([60, 120, 180])
    assert [g.templates for g in gens] == [5, 10, 5]
    assert [g.services for g in gens] == [4, 4, 4]
    assert all(g.ok and g.error is None for g in gens)
    assert json.loads(json.dumps(gens[0].to_dict())) == {
        "path": str(tmp_path / snapshot_name(T0 + 120)),
        "captured_at": T0 + 120,
        "age": pytest.approx(60),
        "templates": 5,
        "services": 4,
        "ok": True,
        "error": None,
    }


def test_prune_keeps_the_newest(tmp_path):
    store = SnapshotStore(tmp_path, keep=3)
    for i in range(6):
        store.save(sample(T0 + i))
    assert [g.captured_at for g in store.generations()] == [T0 + 5, T0 + 4, T0 + 3]
    left = sorted(n for n in os.listdir(tmp_path) if n != ".snapshot.lock")
    assert left == [snapshot_name(T0 + i) for i in (3, 4, 5)]


def test_prune_never_removes_the_one_just_saved(tmp_path):
    # After a clock step back the new snapshot gets the oldest name; it must survive anyway.
    store = SnapshotStore(tmp_path, keep=2)
    store.save(sample(T0 + 10))
    store.save(sample(T0 + 20))
    path = store.save(sample(T0))
    assert path.exists()
    assert [g.captured_at for g in store.generations()] == [T0 + 20, T0 + 10, T0]


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, keep=0)


def test_other_files_in_the_directory_are_ignored(tmp_path):
    store = SnapshotStore(tmp_path, keep=1)
    (tmp_path / "snapshot-latest.json").write_text("{}")
    (tmp_path / "README").write_text("hands off")
    (tmp_path / ".other-state.tmp-0123456789ab").write_text("another writer's temp")
    store.save(sample(T0))
    store.save(sample(T0 + 1))
    assert [g.captured_at for g in store.generations()] == [T0 + 1]
    for name in ("snapshot-latest.json", "README", ".other-state.tmp-0123456789ab"):
        assert (tmp_path / name).exists()


# --------------------------------------------------------------------------------------------
# Damaged files


def test_bit_flip_in_body_is_refused_and_latest_falls_back(tmp_path):
    store = SnapshotStore(tmp_path, keep=5)
    good = sample(T0)
    store.save(good)
    bad = store.save(sample(T0 + 60, host="lb1-newer"))
    flip_bit(bad, header_length(bad) + 100)

    with pytest.raises(SnapshotError) as info:
        store.load(bad)
    assert info.value.format_message() == (
        f"snapshot {bad}: checksum mismatch: the file is corrupt"
    )
    # The listing reads headers only: the size is right, the damage shows when loading.
    assert store.generations()[0].ok

    loaded, warnings = store.load_latest()
    assert loaded == good
    assert warnings == [f"skipped snapshot {bad}: checksum mismatch: the file is corrupt"]


def test_bit_flip_in_header_time_is_refused(tmp_path):
    store = SnapshotStore(tmp_path)
    path = store.save(sample(T0))
    head = path.read_bytes()[: header_length(path)]
    # Bit 0 turns a digit into another digit: still JSON, only the time is wrong.
    flip_bit(path, head.index(b'"captured_at":') + len(b'"captured_at":') + 3, mask=0x01)
    with pytest.raises(SnapshotError, match="header and body disagree"):
        store.load(path)


@pytest.mark.parametrize("keep_bytes", ["half", "header+10", "header-5", "one", "zero"])
def test_truncated_file_is_refused_and_latest_falls_back(tmp_path, keep_bytes):
    store = SnapshotStore(tmp_path, keep=5)
    good = sample(T0)
    store.save(good)
    cut = store.save(big(1000, T0 + 60))
    size, head = cut.stat().st_size, header_length(cut)
    new_size = {"half": size // 2, "header+10": head + 10, "header-5": head - 5, "one": 1,
                "zero": 0}[keep_bytes]  # fmt: skip
    os.truncate(cut, new_size)

    expected = {
        "half": f"truncated: {size // 2 - head} of {size - head} body bytes",
        "header+10": f"truncated: 10 of {size - head} body bytes",
        "header-5": "truncated inside the header",
        "one": "truncated inside the header",
        "zero": "empty file",
    }[keep_bytes]
    with pytest.raises(SnapshotError) as info:
        store.load(cut)
    assert info.value.format_message() == f"snapshot {cut}: {expected}"
    newest = store.generations()[0]
    assert (newest.path, newest.ok, newest.error) == (cut, False, expected)

    loaded, warnings = store.load_latest()
    assert loaded == good
    assert warnings == [f"skipped snapshot {cut}: {expected}"]


def test_trailing_data_is_refused(tmp_path):
    path = SnapshotStore(tmp_path).save(sample())
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(SnapshotError, match="4 bytes of trailing data after the body$"):
        SnapshotStore(tmp_path).load(path)


def rewrite_header(path: Path, **changes) -> None:
    head, body = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header.update(changes)
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


def test_unknown_version_is_refused(tmp_path):
    store = SnapshotStore(tmp_path)
    path = store.save(sample())
    rewrite_header(path, version=2)
    with pytest.raises(SnapshotError) as info:
        store.load(path)
    assert info.value.format_message() == (
        f"snapshot {path}: snapshot format version 2 is not supported "
        "(this lvs-hooks reads version 1)"
    )
    assert store.generations()[0].error == info.value.format_message().split(": ", 1)[1]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello\n", "not an lvs-hooks snapshot (the header is not JSON)"),
        (b'{"format": "other"}\n{}', "not an lvs-hooks snapshot (no 'format'"),
        (b"x" * 5000, "not an lvs-hooks snapshot (no header line)"),
        (b'{"format":"lvs-hooks-snapshot","version":1}\n', "bad header: 'sha256' is None"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, reason):
    path = tmp_path / snapshot_name(T0)
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match="^snapshot .*: " + re.escape(reason)):
        SnapshotStore(tmp_path).load(path)


def test_invalid_json_with_a_valid_checksum_is_refused(tmp_path):
    body = b'{"host": "lb1", oops}\n'
    header = {"format": FORMAT, "version": 1, "host": "lb1", "captured_at": T0, "templates": 0,
              "services": 0, "body_bytes": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}  # fmt: skip
    data = json.dumps(header).encode() + b"\n" + body
    with pytest.raises(SnapshotError, match=r"^snapshot x: invalid JSON in the body: "):
        decode(data, "x")


def test_no_snapshot_at_all(tmp_path):
    with pytest.raises(SnapshotError) as info:
        SnapshotStore(tmp_path / "absent").load_latest()
    assert info.value.format_message() == (
        f"no usable snapshot in {tmp_path / 'absent'}: the directory does not exist"
    )
    with pytest.raises(SnapshotError, match=r"^no usable snapshot in .*: no snapshot files$"):
        SnapshotStore(tmp_path).load_latest()


def test_all_generations_bad_names_every_one(tmp_path):
    store = SnapshotStore(tmp_path)
    a = store.save(sample(T0))
    b = store.save(sample(T0 + 1))
    os.truncate(a, 0)
    flip_bit(b, header_length(b) + 3)
    with pytest.raises(SnapshotError) as info:
        store.load_latest()
    message = info.value.format_message()
    assert message == (
        f"no usable snapshot in {tmp_path}: "
        f"skipped snapshot {b}: checksum mismatch: the file is corrupt; "
        f"skipped snapshot {a}: empty file"
    )
    assert "\n" not in message


def test_save_failure_is_a_snapshot_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(
        SnapshotError, match=rf"^cannot save snapshot .*: Not a directory \({not_a_dir}\)$"
    ):
        SnapshotStore(not_a_dir).save(sample())


# --------------------------------------------------------------------------------------------
# Stray temp files and a writer killed in the middle of writing

# The child saves a big snapshot through the real store and write_atomic, and stalls at a chosen
# point of writing the temp file, so that the kill lands there every time: after the first chunk
# of data ("write": a half file) or with all data written but before the rename ("fsync"). It
# says "stalled" on stdout when it is there; the test then checks the temp file and kills it.
CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
state_dir, stage, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
real_write, real_fsync = os.write, os.fsync

def is_temp(fd):
    return ".tmp-" in os.readlink(f"/proc/self/fd/{fd}")

def stall():
    sys.stdout.write("stalled\n")
    sys.stdout.flush()
    time.sleep(3600)

def write(fd, data):
    written = real_write(fd, data)
    if stage == "write" and is_temp(fd):
        stall()
    return written

def fsync(fd):
    if stage == "fsync" and is_temp(fd):
        stall()
    return real_fsync(fd)

os.write, os.fsync = write, fsync
from lvs_hooks.kernel.model import ConnEntry
from lvs_hooks.snapshot import Snapshot, SnapshotStore
rows = [ConnEntry("TCP", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0, "192.0.2.10", 80,
                  "10.9.0.1", 80, "NONE", 300) for i in range(n)]
SnapshotStore(state_dir).save(Snapshot("child", time.time(), [], rows))
sys.exit(3)  # not reached: the parent kills us
"""


def start_writer(state_dir: Path, stage: str, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(state_dir), stage, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_stalled(proc: subprocess.Popen, deadline_s: float) -> None:
    """Until the writer says it has reached its stall point; polled, with a deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the writer did not reach its stall point within {deadline_s} s")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.1))
        if ready:
            line = proc.stdout.readline()
            if line == b"stalled\n":
                return
            proc.wait(timeout=10)
            pytest.fail(f"writer exited ({proc.returncode}) first: {proc.stderr.read().decode()}")


@pytest.mark.parametrize("stage", ["write", "fsync"])
def test_writer_killed_mid_write_leaves_previous_snapshot_usable(tmp_path, stage):
    store = SnapshotStore(tmp_path, keep=5)
    previous = sample(T0)
    previous_path = store.save(previous)

    proc = start_writer(tmp_path, stage, 50000)
    try:
        wait_until_stalled(proc, deadline_s=60)
        temps = temp_files(tmp_path)
        assert len(temps) == 1 and temps[0].stat().st_size > 0
        assert proc.poll() is None, "the writer must still be in the middle of writing"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    # The killed writer left its temp file, under no snapshot name.
    assert temp_files(tmp_path) == temps
    half = temps[0].read_bytes()
    if stage == "write":
        with pytest.raises(SnapshotError, match="truncated"):
            decode(half, str(temps[0]))
    else:
        assert decode(half).template_count == 50000  # complete, yet never renamed in

    gens = store.generations()
    assert [(g.path, g.ok) for g in gens] == [(previous_path, True)]
    loaded, warnings = store.load_latest()
    assert loaded == previous
    assert warnings == []

    # The next save cleans the stray up.
    store.save(sample(time.time()))
    assert temp_files(tmp_path) == []
    assert len(store.generations()) == 2


def test_stray_temp_from_a_killed_writer_is_ignored_then_cleaned(tmp_path):
    store = SnapshotStore(tmp_path)
    path = store.save(sample(T0))
    stray = tmp_path / f".{snapshot_name(T0 + 5)}.tmp-0123456789ab"
    stray.write_bytes(encode(big(100, T0 + 5))[:500])
    assert [g.path for g in store.generations()] == [path]
    assert store.load_latest()[0] == sample(T0)
    store.save(sample(T0 + 10))
    assert not stray.exists()


# --------------------------------------------------------------------------------------------
# Row by row (issue 15): a bad row is left out and counted, a file of bad rows falls back


def forged(rows, services_in=None, captured_at=T0, header_extra=None):
    """A file with a correct checksum holding whatever rows it is given."""
    services_in = [s.to_dict() for s in services()] if services_in is None else services_in
    body = json.dumps({"host": "lb1", "captured_at": captured_at, "services": services_in,
                       "columns": list(TEMPLATE_COLUMNS), "templates": rows}).encode() + b"\n"
    header = {"format": FORMAT, "version": 1, "host": "lb1", "captured_at": captured_at,
              "templates": len(rows), "services": len(services_in), "body_bytes": len(body),
              "sha256": hashlib.sha256(body).hexdigest(), **(header_extra or {})}
    return json.dumps(header).encode() + b"\n" + body


GOOD = ["TCP", "198.51.100.7", "192.0.2.10", 80, "10.9.0.2", 80, "NONE", 287, "", "", "LOCAL"]
BAD_ROWS = [
    GOOD[:7] + ["abc"] + GOOD[8:],  # expires "abc"
    GOOD[:7] + [None] + GOOD[8:],  # expires null
    GOOD[:7] + [2**32] + GOOD[8:],  # a timeout above 2^32-1
    GOOD[:7] + [-1] + GOOD[8:],
    GOOD[:7] + [True] + GOOD[8:],
    ["TCP", "not-an-address"] + GOOD[2:],
    ["TCP", "198.51.100.7", "2001:db8::10"] + GOOD[3:],  # families differ
    GOOD[:3] + [70000] + GOOD[4:],
    ["ICMP"] + GOOD[1:],
    GOOD[:10] + ["ELSEWHERE"],
    GOOD[:10],
    "a row",
    None,
    {"protocol": "TCP"},
]


def test_bad_rows_are_left_out_and_counted(tmp_path):
    snap = decode(forged([GOOD] + BAD_ROWS + [GOOD]), "x")
    assert len(snap.templates) == 2 and snap.skipped == len(BAD_ROWS)
    assert snap.templates[0].expires == 287


def test_bad_service_records_are_left_out_and_counted():
    svcs = [s.to_dict() for s in services()]
    bad = [{**svcs[0], "port": "http"}, {**svcs[0], "af": 5}, {**svcs[0], "nope": 1}, 7,
           {**svcs[0], "destinations": [{"addr": "x", "port": 1}]}]
    snap = decode(forged([GOOD], svcs + bad), "x")
    assert len(snap.services) == len(svcs) and snap.skipped == len(bad)


def test_a_newest_generation_of_bad_rows_falls_back_to_the_previous(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(sample(T0))
    newest = tmp_path / snapshot_name(T0 + 60)
    newest.write_bytes(forged(BAD_ROWS, captured_at=T0 + 60))
    snap, warnings = store.load_latest()
    assert snap.captured_at == T0
    assert "none of its 14 template rows is valid" in warnings[0]


def test_load_latest_says_how_many_rows_it_left_out(tmp_path):
    store = SnapshotStore(tmp_path)
    (tmp_path / snapshot_name(T0)).write_bytes(forged([GOOD] + BAD_ROWS))
    snap, warnings = store.load_latest()
    assert len(snap.templates) == 1
    assert warnings == [f"snapshot {tmp_path / snapshot_name(T0)}: 14 invalid rows or service "
                        "records left out"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (forged([GOOD], captured_at=float("-inf")), "bad header: 'captured_at' is -inf"),
        (forged([GOOD], header_extra={"captured_at": 10**400}), "bad header: 'captured_at'"),
        (b'{"format":"lvs-hooks-snapshot",' + b"[" * 3000 + b"\n", "header is not JSON"),
    ],
)
def test_absurd_headers_are_refused(data, reason):
    with pytest.raises(SnapshotError, match=re.escape(reason)):
        decode(data, "x")


def test_a_body_nested_200k_deep_is_refused():
    body = b"[" * 200000 + b"]" * 200000 + b"\n"
    header = {"format": FORMAT, "version": 1, "host": "lb1", "captured_at": T0, "templates": 0,
              "services": 0, "body_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    with pytest.raises(SnapshotError, match="nested too deep"):
        decode(json.dumps(header).encode() + b"\n" + body, "x")


def test_listing_survives_unreadable_headers_and_odd_names(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save(sample(T0))
    (tmp_path / "snapshot-20261399T000000.000000Z.json").write_bytes(b"\x00garbage")
    (tmp_path / snapshot_name(T0 + 1)).write_bytes(forged([GOOD], captured_at=float("nan")))
    (tmp_path / snapshot_name(T0 + 2)).mkdir()
    (tmp_path / snapshot_name(T0 + 3)).write_bytes(b'{"format":' + b"[" * 4000)
    gens = store.generations()
    assert sum(g.ok for g in gens) == 1 and len(gens) == 5
    assert all(g.error for g in gens if not g.ok)
    assert store.load_latest()[0].captured_at == T0
