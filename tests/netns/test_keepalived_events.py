"""keepalived (VRRP only, real) driving lvs-hooks in two network namespaces on the host kernel.

The host kernel has no IPVS: the steps that need it (sysctls, snapshot) fail and the reseed
finds no snapshot; the journal must still record every transition with each step's outcome.
"""

import pytest
from netnslib import wait_for

pytestmark = pytest.mark.netns

MASTER_STEPS = ["firewall", "sysctls", "timeouts", "reseed"]
BACKUP_STEPS = ["firewall", "sysctls", "timeouts", "sync daemon", "snapshot"]
FAULT_STEPS = ["firewall", "sysctls", "timeouts", "snapshot"]
STEPS = {"MASTER": MASTER_STEPS, "BACKUP": BACKUP_STEPS, "FAULT": FAULT_STEPS}


def both_logs(a, b):
    return lambda: a.logs() + "\n" + b.logs()


def assert_no_overlap(records):
    spans = sorted((r["start_ns"], r["end_ns"]) for r in records)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 <= s2, f"transitions overlap: {s1}-{e1} and {s2}-{e2}"


def test_killing_the_master_runs_the_master_transition_once_on_the_backup(directors):
    a, b = directors
    logs = both_logs(a, b)
    a.start()
    wait_for(lambda: "MASTER" in a.states(), 15, "a to journal its MASTER transition", logs)
    b.start()  # after a is master, so that b never holds the role before the failure
    wait_for(lambda: "BACKUP" in b.states(), 15, "b to journal its BACKUP transition", logs)
    assert "MASTER" not in b.states()

    a.kill()  # hard failure: no priority-0 advert, b takes over after the master-down timer
    wait_for(lambda: "MASTER" in b.states(), 15, "b to journal a MASTER transition", logs)
    # Stop b cleanly: its reader runs the STOP lines and exits, so the journal is final.
    b.stop()
    wait_for(lambda: "STOP" in b.states(), 5, "b to journal STOP", logs)
    wait_for(lambda: not b.hook_pids(), 5, "b's FIFO reader to exit", logs)

    masters = [r for r in b.applied() if r["event"]["state"] == "MASTER"]
    assert len(masters) == 1, logs()
    (m,) = masters
    assert m["event"]["source"] == "fifo"
    assert [s["step"] for s in m["steps"]] == MASTER_STEPS
    steps = {s["step"]: s for s in m["steps"]}
    assert steps["firewall"]["ok"] and steps["firewall"]["summary"] == (
        "no firewall rules configured"
    )
    assert not steps["sysctls"]["ok"] and "no such sysctl" in steps["sysctls"]["error"]
    assert steps["timeouts"]["ok"]
    assert not steps["reseed"]["ok"]
    assert steps["reseed"]["figures"]["latency_ms"] > 0
    assert m["outcome"] == "failed"
    assert m["start_ns"] < m["end_ns"]
    # In keepalived's order: BACKUP (maybe after FAULT while the link came up), MASTER, STOP.
    states = b.states()
    assert states.index("BACKUP") < states.index("MASTER") < states.index("STOP")
    assert states[-1] == "STOP"
    assert "reseed ended" in b.hook_log.read_text()


def test_fifty_concurrent_notify_calls_serialize(directors):
    a, _ = directors  # a's namespace and config; keepalived is not needed here
    states = ("MASTER", "BACKUP", "FAULT")
    procs = [
        a.lvs_hooks("notify", "INSTANCE", f"VI_{i % 5}", states[i % 3], "100") for i in range(50)
    ]
    codes = [p.wait(60) for p in procs]
    # 6: the transition ran with failed steps (no IPVS here); 0: skipped as stale/superseded.
    odd = [
        (p.pid, rc, p.log_path.read_text()[-1500:])
        for p, rc in zip(procs, codes)
        if rc not in (0, 6)
    ]
    assert not odd, odd
    records = a.journal()
    table = "\n".join(
        f"{r['pid']} {r['event']['name']} {r['event']['state']} {r['event']['order']} "
        f"{r['outcome']} {r['start_ns']}-{r['end_ns']}"
        for r in records
    )
    assert len(records) == 50, table
    assert len({r["pid"] for r in records}) == 50, table
    assert_no_overlap(records)
    for i in range(5):
        rs = [r for r in records if r["event"]["name"] == f"VI_{i}"]
        newest = max(rs, key=lambda r: r["event"]["order"])
        applied = [r for r in rs if r["outcome"] in ("done", "failed")]
        assert applied[-1] is newest, table  # the latest event won, and ran last
        for r in applied:
            want = STEPS[r["event"]["state"]]
            assert [s["step"] for s in r["steps"]] == want, table  # no transition half done
        for r in rs:
            if r["outcome"] in ("stale", "superseded"):
                assert tuple(r["newer"]["order"]) > tuple(r["event"]["order"]), table


def test_a_flap_ends_in_the_last_state(directors):
    a, b = directors
    logs = both_logs(a, b)
    b.start()  # alone: it becomes master
    wait_for(lambda: "MASTER" in b.states(), 15, "b's MASTER transition", logs)

    # Ordered: through keepalived's FIFO, as keepalived writes a flap.
    b.write_fifo(
        'INSTANCE "VI_FLAP" MASTER 100',
        'INSTANCE "VI_FLAP" BACKUP 100',
        'INSTANCE "VI_FLAP" MASTER 100',
    )
    wait_for(
        lambda: len([r for r in b.journal() if r["event"]["name"] == "VI_FLAP"]) == 3,
        15,
        "the three FIFO events journaled",
        logs,
    )
    flap = [r for r in b.journal() if r["event"]["name"] == "VI_FLAP"]
    assert [r["event"]["state"] for r in flap] == ["MASTER", "BACKUP", "MASTER"]
    assert b.states("VI_FLAP")[-1] == "MASTER"
    assert flap[-1]["outcome"] == "failed"  # it ran, every step, some failing without IPVS
    assert [s["step"] for s in flap[-1]["steps"]] == MASTER_STEPS

    # Racing: three notify processes forked within milliseconds, as keepalived forks them.
    procs = [
        b.lvs_hooks("notify", "INSTANCE", "VI_RACE", state, "100")
        for state in ("MASTER", "BACKUP", "MASTER")
    ]
    for p in procs:
        p.wait(60)
    race = [r for r in b.journal() if r["event"]["name"] == "VI_RACE"]
    assert len(race) == 3
    applied = [r for r in race if r["outcome"] in ("done", "failed")]
    assert applied[-1]["pid"] == procs[2].pid
    assert applied[-1]["event"]["state"] == "MASTER"
    assert all([s["step"] for s in r["steps"]] == STEPS[r["event"]["state"]] for r in applied)
    assert_no_overlap(race)


def test_a_malformed_fifo_line_is_ignored_with_a_log_line(directors):
    a, b = directors
    logs = both_logs(a, b)
    b.start()  # alone: it becomes master
    wait_for(lambda: "MASTER" in b.states(), 15, "b's MASTER transition", logs)
    b.write_fifo(
        "this is not keepalived",
        "INSTANCE VI_BAD MASTER 100",  # unquoted name
        'INSTANCE "VI_BAD" SLAVE 100',
        'INSTANCE "VI_PROBE" DELETED 0',  # a harmless event that shows the lines were read
    )
    wait_for(
        lambda: any(r["event"]["name"] == "VI_PROBE" for r in b.journal()),
        15,
        "the probe event journaled",
        logs,
    )
    assert not [r for r in b.journal() if r["event"]["name"] == "VI_BAD"], logs()
    log = b.hook_log.read_text()
    assert "ignored: not a keepalived VRRP event line: 'this is not keepalived'" in log
    assert "ignored: not a keepalived VRRP event line: 'INSTANCE VI_BAD MASTER 100'" in log
    assert "ignored: unknown state 'SLAVE'" in log
    assert b.hook_pids(), "the reader must still be running"
