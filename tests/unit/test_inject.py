"""director.inject: the one inject path. Its lock (re-entrant for the thread holding it,
exclusive across threads and processes), its last look under the lock, and the ledger. The
kernel work (reseed.runner, tested on its own and in the lab) is the one seam replaced."""

import threading

import filelock
import pytest

from lvs_hooks.config import Config, PathsConfig, TransitionsConfig
from lvs_hooks.director import inject as inject_mod
from lvs_hooks.director import ledger
from lvs_hooks.director.inject import inject
from lvs_hooks.director.lock import lock_path, transition_lock
from lvs_hooks.errors import LockTimeout
from lvs_hooks.kernel.model import template_key
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.reseed.runner import ReseedResult


def cfg_for(tmp_path, lock_timeout=1.0):
    return Config(
        paths=PathsConfig(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run"),
                          proc_root=str(tmp_path / "proc")),
        transitions=TransitionsConfig(lock_timeout=lock_timeout),
    )


def tpl(caddr, timeout=300):
    return PlannedTemplate("UDP", caddr, "10.0.0.100", 53, "10.0.1.11", 53, 0, "masq", timeout)


@pytest.fixture
def runner(monkeypatch):
    """The kernel seam: records each call and whether the lock was held during it."""
    calls = []

    def run(planned, ipvs, cfg, **overrides):
        held = transition_lock(cfg.paths.run_dir).is_locked
        calls.append((list(planned), ipvs, overrides, held))
        return ReseedResult(planned=len(planned), sent=len(planned), verified=len(planned))

    monkeypatch.setattr(inject_mod, "run_reseed_configured", run)
    return calls


def test_sends_under_the_lock_and_records_what_lives(tmp_path, runner):
    cfg = cfg_for(tmp_path)
    (tmp_path / "run").mkdir()
    keep, expire = tpl("10.0.0.1", 300), tpl("10.0.0.2", 1)
    res = inject(cfg, [keep, expire], "keeper", verify=False, resend_rounds=0, ipvs="session")
    assert res.sent == 2 and not res.abandoned
    ((planned, ipvs, overrides, held),) = runner
    assert planned == [keep, expire] and ipvs == "session" and held
    assert overrides == {"verify": False, "resend_rounds": 0}
    # the one sent with 1 s is being made to expire: not an injection to remember
    got = ledger.load(str(tmp_path / "run"))
    assert list(got) == [template_key(keep)] and got[template_key(keep)].by == "keeper"


def test_nothing_planned_takes_no_lock_and_writes_nothing(tmp_path, runner):
    assert inject(cfg_for(tmp_path), [], "keeper").planned == 0
    assert runner == [] and not (tmp_path / "run").exists()


def test_re_entrant_for_the_thread_that_holds_the_lock(tmp_path, runner):
    cfg = cfg_for(tmp_path, lock_timeout=0.1)
    (tmp_path / "run").mkdir()
    lock = transition_lock(cfg.paths.run_dir)
    with lock.acquire(timeout=1):  # as the sequencer holds it for a MASTER transition
        inject(cfg, [tpl("10.0.0.1")], "takeover reseed", ipvs="s")
        assert lock.is_locked
    assert not lock.is_locked
    assert len(runner) == 1


def test_another_thread_holding_the_lock_makes_it_wait_then_fail(tmp_path, runner):
    cfg = cfg_for(tmp_path, lock_timeout=0.05)
    (tmp_path / "run").mkdir()
    held, release = threading.Event(), threading.Event()

    def holder():
        with transition_lock(cfg.paths.run_dir).acquire(timeout=5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout, match="templates not sent"):
            inject(cfg, [tpl("10.0.0.1")], "keeper", ipvs="s")
    finally:
        release.set()
        t.join()
    assert runner == []
    inject(cfg, [tpl("10.0.0.1")], "keeper", ipvs="s")
    assert len(runner) == 1


def test_another_process_holding_the_lock_excludes_it(tmp_path, runner):
    cfg = cfg_for(tmp_path, lock_timeout=0.05)
    (tmp_path / "run").mkdir()
    # a second lock object on the same file stands for another process (flock is per open file)
    with filelock.FileLock(lock_path(cfg.paths.run_dir)), pytest.raises(LockTimeout):
        inject(cfg, [tpl("10.0.0.1")], "keeper", ipvs="s")


def test_a_plan_that_no_longer_holds_is_abandoned_under_the_lock(tmp_path, runner):
    cfg = cfg_for(tmp_path)
    (tmp_path / "run").mkdir()
    looked = []

    def proceed():
        looked.append(transition_lock(cfg.paths.run_dir).is_locked)
        return False

    res = inject(cfg, [tpl("10.0.0.1")], "keeper", ipvs="s", proceed=proceed)
    assert res.abandoned and res.sent == 0 and looked == [True]
    assert runner == [] and ledger.load(cfg.paths.run_dir) == {}
