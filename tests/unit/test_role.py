"""events.role: the role file the sequencer leaves, read by the agent and `handover`."""

import json
import os
import stat

import pytest

from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.role import ROLE_FILE, read_role, write_role
from lvs_hooks.events.sequencer import DONE, FAILED, IGNORED, STALE, Plan, Sequencer, Step


def test_round_trip(tmp_path):
    run = tmp_path / "run"
    write_role(str(run), "BACKUP", "VI_1", now=1_700_000_000.5)
    assert read_role(str(run)) == "BACKUP"
    data = json.loads((run / ROLE_FILE).read_text())
    assert data == {"state": "BACKUP", "name": "VI_1", "at": 1_700_000_000.5}
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o700
    write_role(str(run), "MASTER", "VG_1")
    assert read_role(str(run)) == "MASTER"


def test_missing_file_is_no_role(tmp_path):
    assert read_role(str(tmp_path)) is None
    assert read_role(str(tmp_path / "no-such-dir")) is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b'["MASTER"]',
        b'"MASTER"',
        b"{}",
        b'{"state": "master"}',
        b'{"state": "UNKNOWN"}',
        b'{"state": null}',
        b'{"state": ["MASTER"]}',
    ],
)
def test_corrupt_or_unknown_is_no_role(tmp_path, content):
    (tmp_path / ROLE_FILE).write_bytes(content)
    assert read_role(str(tmp_path)) is None


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP"])
def test_every_keepalived_state_reads_back(tmp_path, state):
    write_role(str(tmp_path), state, "VI_1")
    assert read_role(str(tmp_path)) == state


# -- the sequencer writes it


def ev(state, order, name="VI_1"):
    return Event("INSTANCE", name, state, 100, "notify", (order, 1, 0))


def make_seq(tmp_path):
    return Sequencer(str(tmp_path / "run"), Journal(str(tmp_path / "state"), 1000))


def planner(event):
    return Plan([Step("work", lambda: ("done", {}))])


def failing_planner(event):
    def boom():
        raise RuntimeError("step failed")

    return Plan([Step("work", boom)])


def role_record(tmp_path):
    return json.loads((tmp_path / "run" / ROLE_FILE).read_text())


def test_sequencer_writes_the_role_after_a_done_transition(tmp_path):
    seq = make_seq(tmp_path)
    run = str(tmp_path / "run")
    assert read_role(run) is None
    assert seq.handle(ev("MASTER", 10, name="VI_7"), planner, 5).outcome == DONE
    assert read_role(run) == "MASTER"
    assert role_record(tmp_path)["name"] == "VI_7"
    assert seq.handle(ev("BACKUP", 11, name="VI_7"), planner, 5).outcome == DONE
    assert read_role(run) == "BACKUP"


def test_a_stale_event_leaves_the_role_alone(tmp_path):
    seq = make_seq(tmp_path)
    run = str(tmp_path / "run")
    assert seq.handle(ev("BACKUP", 20), planner, 5).outcome == DONE
    before = role_record(tmp_path)
    assert seq.handle(ev("MASTER", 10), planner, 5).outcome == STALE
    assert read_role(run) == "BACKUP"
    assert role_record(tmp_path) == before


def test_a_failed_transition_still_sets_the_role(tmp_path):
    # keepalived made the director MASTER whatever a step did
    seq = make_seq(tmp_path)
    assert seq.handle(ev("MASTER", 10), failing_planner, 5).outcome == FAILED
    assert read_role(str(tmp_path / "run")) == "MASTER"


def test_an_ignored_event_leaves_the_role_alone(tmp_path):
    seq = make_seq(tmp_path)
    assert seq.handle(ev("BACKUP", 10), planner, 5).outcome == DONE
    out = seq.handle(ev("MASTER", 11), lambda e: Plan(ignore=True, note="not watched"), 5)
    assert out.outcome == IGNORED
    assert read_role(str(tmp_path / "run")) == "BACKUP"
