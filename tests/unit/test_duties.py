"""director.duties: each periodic task on its own interval and role, yielding to events, and a
failing task counted without stopping the others. The tasks themselves are replaced at one
seam (Duties._run): they have their own tests."""

import logging

from lvs_hooks.config import parse_config
from lvs_hooks.director import Director
from lvs_hooks.director.duties import Duties, read_duty_failures
from lvs_hooks.director.fwmark_repair import _Pending
from lvs_hooks.errors import KernelError


def duties_for(tmp_path, text, role="BACKUP", clock=None):
    cfg = parse_config(f"paths:\n  run_dir: {tmp_path}\n" + text, "test")
    roles = [role]
    d = Duties(Director(cfg), lambda: roles[0], **({"clock": clock} if clock else {}))
    ran = []
    d._run = lambda name, proceed: ran.append((name, proceed()))
    return d, ran, roles


def test_each_task_on_its_own_interval_and_role(tmp_path):
    now = [1000.0]
    d, ran, roles = duties_for(
        tmp_path,
        "keeper:\n  interval: 5\n  fwmark_repair_interval: 1\n  snapshot_interval: 30\n",
        clock=lambda: now[0],
    )
    assert d.period == 1
    d.run_due("BACKUP")
    assert [n for n, _ in ran] == ["fwmark-repair", "snapshot"]
    for _ in range(4):
        now[0] += 1
        d.run_due("BACKUP")
    names = [n for n, _ in ran]
    assert names.count("fwmark-repair") == 5 and names.count("snapshot") == 1
    roles[0] = "MASTER"
    d.run_due("MASTER")
    d.run_due("FAULT")
    assert ran[-1] == ("keeper", True) and names.count("keeper") == 0


def test_disabled_tasks_do_not_run(tmp_path):
    d, ran, _ = duties_for(
        tmp_path,
        "keeper:\n  enabled: false\n  fwmark_repair_interval: 0\n  snapshot_interval: 0\n"
        "  interval: 7\n",
    )
    assert d.period == 7
    d.run_due("MASTER")
    d.run_due("BACKUP")
    assert ran == []


def test_a_waiting_event_comes_first(tmp_path):
    d, ran, _ = duties_for(tmp_path, "keeper:\n  fwmark_repair_interval: 1\n")
    d.run_due("BACKUP", should_yield=lambda: True)
    assert ran == []
    # not run, so still due at the next turn
    d.run_due("BACKUP")
    assert [n for n, _ in ran] == ["fwmark-repair", "snapshot"]


def test_the_plan_is_dropped_when_the_role_changed_meanwhile(tmp_path):
    d, ran, roles = duties_for(tmp_path, "keeper:\n  fwmark_repair_interval: 1\n")
    roles[0] = "MASTER"  # the transition ran after the duty was chosen
    d.run_due("BACKUP")
    assert ran and all(ok is False for _, ok in ran)


def test_a_failing_task_is_counted_and_the_others_run(tmp_path, caplog):
    d, ran, _ = duties_for(tmp_path, "keeper:\n  fwmark_repair_interval: 1\n")

    def run(name, proceed):
        if name == "fwmark-repair":
            raise KernelError("IPVS not loaded (no /proc/net/ip_vs_conn)")
        ran.append(name)

    d._run = run
    caplog.set_level(logging.ERROR)
    d.run_due("BACKUP")
    assert ran == ["snapshot"]
    assert d.failures == {"fwmark-repair": 1}
    assert "periodic fwmark-repair while BACKUP failed (1 so far)" in caplog.text


def test_leaving_backup_forgets_the_repairs(tmp_path):
    d, _, _ = duties_for(tmp_path, "keeper:\n  fwmark_repair_interval: 1\n")
    d.director.repair.pending[("IP", "10.0.0.1", "0.0.0.1", 0)] = _Pending(None, 0.0)
    d.run_due("BACKUP")
    assert d.director.repair.pending
    d.run_due("MASTER")
    assert d.director.repair.pending == {}


def test_a_snapshot_left_by_a_transition_runs_at_the_next_turn(tmp_path):
    d, ran, _ = duties_for(tmp_path, "keeper:\n  snapshot_interval: 0\n", role="FAULT")
    assert d.director.duties_beside  # transitions may leave their snapshot to this thread
    d.run_due("FAULT")
    assert ran == []
    d.director.snapshot_wanted = True
    d._run = lambda name, proceed: (ran.append(name), setattr(d.director, "snapshot_wanted",
                                                              False))
    d.run_due("FAULT")
    assert ran == ["snapshot"] and not d.director.snapshot_wanted


def test_a_failing_duty_is_counted_where_status_can_read_it(tmp_path, caplog):
    """Issue 17: the keeper raised on every period for an IPv6 service, and that showed only as
    the same traceback in the log every period. Now: counted per duty in <run_dir>/duties.json
    (failures, in a row, the last error), the traceback once per streak and error."""
    d, _, _ = duties_for(tmp_path, "keeper:\n  interval: 1\n", role="MASTER")
    outcome = ["bug"]

    def run(name, proceed):
        if outcome[0] == "bug":
            raise ValueError("'fd00::29/2147483648' does not appear to be an IPv4 or IPv6 network")
        if outcome[0] == "error":
            raise KernelError("IPVS is not available")

    d._run = run
    assert read_duty_failures(str(tmp_path)) is None
    caplog.set_level(logging.INFO)
    for _ in range(3):
        d.last.clear()
        d.run_due("MASTER")
    rec = read_duty_failures(str(tmp_path))
    assert rec["tasks"] == {"keeper": {"failures": 3, "in_a_row": 3, "last_error": (
        "ValueError: 'fd00::29/2147483648' does not appear to be an IPv4 or IPv6 network")}}
    assert caplog.text.count("Traceback") == 1
    assert "periodic keeper while MASTER failed (3 so far, 3 in a row)" in caplog.text
    outcome[0] = "error"  # another error: counted on, no traceback (an error a user can act on)
    d.last.clear()
    d.run_due("MASTER")
    assert read_duty_failures(str(tmp_path))["tasks"]["keeper"]["in_a_row"] == 4
    outcome[0] = "ok"  # the streak ends: said once, and recorded
    d.last.clear()
    d.run_due("MASTER")
    assert read_duty_failures(str(tmp_path))["tasks"]["keeper"] == {
        "failures": 4, "in_a_row": 0, "last_error": "IPVS is not available"}
    assert "ran again after 4 failures in a row" in caplog.text
    assert caplog.text.count("Traceback") == 1


def test_no_duty_runs_once_lvs_hooks_is_removed(tmp_path, caplog):
    """keepalived's FIFO reader outlives `apt purge`: its next snapshot must not bring back the
    state directory the purge removed."""
    d, ran, _ = duties_for(tmp_path, "keeper:\n  fwmark_repair_interval: 1\n")
    on_disk = [True]
    d.installed = lambda: on_disk[0]
    d.run_due("BACKUP")
    assert [n for n, _ in ran] == ["fwmark-repair", "snapshot"]
    on_disk[0] = False
    d.director.snapshot_wanted = True  # even the snapshot a transition left to the duties
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            d.run_due("BACKUP")
            d.run_due("MASTER")
    assert len(ran) == 2
    removed = [r for r in caplog.records if "has been removed" in r.getMessage()]
    assert len(removed) == 1  # said once
    on_disk[0] = True  # a reinstall does not revive a process that saw its code go
    d.run_due("BACKUP")
    assert len(ran) == 2


def test_the_default_check_looks_at_this_modules_own_file():
    from lvs_hooks.director import duties

    assert duties._installed() and duties._OWN_CODE.endswith("duties.py")


def test_a_costly_snapshot_waits_ten_times_its_own_length(tmp_path):
    # a backup dumping 200,000 templates while it ingests them took 4 to 23 s per dump (lab):
    # every 30 s that is over half a core; the next one waits 10x the last one's length
    now = [1000.0]
    d, ran, _ = duties_for(tmp_path, "keeper:\n  snapshot_interval: 30\n",
                           clock=lambda: now[0])
    took = {"snapshot": 12.0}

    def run(name, proceed):
        ran.append((name, proceed()))
        now[0] += took.get(name, 0.0)

    d._run = run
    d.run_due("BACKUP")  # 1000 -> 1012
    assert [n for n, _ in ran].count("snapshot") == 1
    now[0] = 1000 + 119  # 30 s is long past; 10 x 12 s is not
    d.run_due("BACKUP")
    assert [n for n, _ in ran].count("snapshot") == 1
    now[0] = 1000 + 120
    took["snapshot"] = 1.0
    d.run_due("BACKUP")
    assert [n for n, _ in ran].count("snapshot") == 2
    now[0] = 1000 + 120 + 30  # a cheap one: the configured interval again
    d.run_due("BACKUP")
    assert [n for n, _ in ran].count("snapshot") == 3
    # the snapshot a transition to backup asks for is never stretched
    took["snapshot"] = 50.0
    now[0] += 1
    d.run_due("BACKUP")
    d.director.snapshot_wanted = True
    now[0] += 1
    d.run_due("BACKUP")
    assert [n for n, _ in ran].count("snapshot") == 4
