"""The transitions journal: appended in O(1), compacted atomically, readable by `history`."""

import json
import os

import pytest

from lvs_hooks.events import journal as journal_mod
from lvs_hooks.events.journal import JOURNAL_NAME, Journal, render_history


def rec(i, **extra):
    r = {
        "at": "2026-11-22T02:50:01.123+00:00",
        "event": {"kind": "INSTANCE", "name": "VI_1", "state": "MASTER", "order": [i, 1, 0]},
        "outcome": "done",
        "ms": 12.5,
        "steps": [],
        "n": i,
    }
    r.update(extra)
    return r


def test_append_and_read(tmp_path):
    j = Journal(str(tmp_path / "state"), keep=10)
    assert j.read() == ([], 0)
    for i in range(3):
        j.append(rec(i))
    records, bad = j.read()
    assert [r["n"] for r in records] == [0, 1, 2] and bad == 0
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert os.stat(j.path).st_mode & 0o777 == 0o600
    # One JSON object per line.
    lines = j.path.read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]


def test_bounded_to_the_newest(tmp_path):
    j = Journal(str(tmp_path), keep=5)
    for i in range(12):
        j.append(rec(i))
    records, _ = j.read()
    assert [r["n"] for r in records] == [7, 8, 9, 10, 11]
    j.compact()
    assert len(j.path.read_text().splitlines()) == 5
    assert [r["n"] for r in j.read()[0]] == [7, 8, 9, 10, 11]


def test_an_append_writes_one_line_and_never_reads_or_rewrites(tmp_path, monkeypatch):
    j = Journal(str(tmp_path), keep=5)
    j.append(rec(1))
    monkeypatch.setattr(journal_mod, "write_atomic", lambda *a: pytest.fail("rewritten"))
    monkeypatch.setattr(Journal, "_read_all", lambda self: pytest.fail("read"))
    before = j.path.stat().st_ino
    j.append(rec(2))
    assert j.path.stat().st_ino == before
    assert len(j.path.read_text().splitlines()) == 2


def test_compaction_is_bounded_in_bytes_and_runs_between_events(tmp_path):
    from lvs_hooks.events.keepalived import Event
    from lvs_hooks.events.sequencer import Plan, Sequencer

    j = Journal(str(tmp_path / "state"), keep=1000, compact_bytes=4096)
    seq = Sequencer(str(tmp_path / "run"), j)
    for i in range(60):
        seq.handle(Event("INSTANCE", "VI_1", "BACKUP", 100, "notify", (i + 1, 1, 0)),
                   lambda e: Plan(), 1)
        assert j.path.stat().st_size <= 4096 + 1024  # compacted after the event that passed it
    records, bad = j.read()
    assert bad == 0 and records[-1]["event"]["order"] == [60, 1, 0]
    assert 0 < len(records) < 60


def test_a_line_cut_by_a_power_failure_does_not_swallow_the_next(tmp_path):
    j = Journal(str(tmp_path), keep=5)
    j.append(rec(1))
    with open(j.path, "a") as f:
        f.write('{"at": "2026-11-22T0')  # the rest never reached the disk
    j.append(rec(2))
    assert j.read() == ([rec(1), rec(2)], 1)


def test_a_journal_that_is_a_link_is_not_written_through(tmp_path):
    from lvs_hooks.safeio import Refused

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / JOURNAL_NAME).symlink_to(victim)
    with pytest.raises(Refused, match="symbolic link"):
        Journal(str(tmp_path / "state"), keep=5).append(rec(1))
    assert victim.read_text() == "precious\n"


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        Journal(str(tmp_path), keep=0)


def test_compaction_dying_mid_write_leaves_the_old_journal(tmp_path, monkeypatch):
    j = Journal(str(tmp_path), keep=5)
    j.append(rec(1))
    before = j.path.read_bytes()

    def dies(src, dst):
        raise KeyboardInterrupt  # killed between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        j.compact()
    monkeypatch.undo()
    assert j.path.read_bytes() == before
    # write_atomic removed its temp file on the way out; a SIGKILLed writer would leave one,
    # which the next append removes.
    stray = tmp_path / f".{JOURNAL_NAME}.tmp-0123456789ab"
    stray.write_text("half")
    j.append(rec(3))
    j.compact()
    assert not stray.exists()
    assert [r["n"] for r in j.read()[0]] == [1, 3]


def test_snapshot_temp_files_are_not_ours_to_remove(tmp_path):
    j = Journal(str(tmp_path), keep=5)
    theirs = tmp_path / ".snapshot-20261122T025001.000000Z.json.tmp-0123456789ab"
    theirs.write_text("being written by a snapshot")
    j.append(rec(1))
    j.compact()
    assert theirs.exists()


def test_damaged_lines_are_skipped_and_counted(tmp_path, caplog):
    j = Journal(str(tmp_path), keep=5)
    j.path.write_text(json.dumps(rec(1)) + "\n{torn line\n[1, 2]\n\n" + json.dumps(rec(2)) + "\n")
    records, bad = j.read()
    assert [r["n"] for r in records] == [1, 2] and bad == 2
    j.append(rec(3))
    assert j.read() == ([rec(1), rec(2), rec(3)], 2)
    j.compact()
    assert "dropped 2 lines" in caplog.text
    assert j.read() == ([rec(1), rec(2), rec(3)], 0)


def test_every_compaction_is_atomic_replace(tmp_path, monkeypatch):
    calls = []
    real = journal_mod.write_atomic

    def spy(path, data, mode):
        calls.append((str(path), mode))
        real(path, data, mode)

    monkeypatch.setattr(journal_mod, "write_atomic", spy)
    j = Journal(str(tmp_path), keep=5)
    j.append(rec(1))
    assert calls == []  # an append is an append
    j.compact()
    assert calls == [(str(j.path), 0o600)]


# -- history


def test_render_history_empty():
    assert render_history([]) == "no transitions recorded"


def test_render_history_lines():
    records = [
        rec(
            1,
            outcome="failed",
            steps=[
                {"step": "firewall", "ok": True, "summary": "no firewall rules configured"},
                {"step": "timeouts", "ok": False, "error": "IPVS is not available"},
                {"step": "reseed", "ok": True, "figures": {"latency_ms": 812.4}},
            ],
        ),
        rec(
            2,
            outcome="stale",
            event={"kind": "GROUP", "name": "VG", "state": "BACKUP"},
            newer={"state": "MASTER"},
        ),
        rec(3, outcome="done", note="keepalived reports DELETED: nothing to do"),
    ]
    text = render_history(records)
    lines = text.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "OUTCOME", "MS", "STEPS"]
    assert "MASTER instance VI_1" in lines[1] and "failed" in lines[1]
    assert "firewall ok, timeouts FAILED, reseed ok (812 ms after MASTER)" in lines[1]
    assert lines[2].strip() == "timeouts: IPVS is not available"
    assert "BACKUP group VG" in lines[3] and "stale" in lines[3]
    assert "newer MASTER came first" in lines[3]
    assert "nothing to do" in lines[4]
