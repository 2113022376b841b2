"""Local trust (docs/design.md section 6.3): the paths root believes are root's alone, and the
files it writes are never reached through a link someone planted."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from lvs_hooks import trust
from lvs_hooks.cli import cli
from lvs_hooks.lockfile import FileLock

ME = os.getuid()
NOBODY = 65534 if ME != 65534 else 65533


@pytest.fixture
def tree(tmp_path):
    """A config, state and run directory as a package lays them, under the test's own uid."""
    base = tmp_path / "t"
    base.mkdir(mode=0o755)
    (base / "state").mkdir(mode=0o700)
    (base / "run").mkdir(mode=0o700)
    cfg = base / "lvs-hooks.yaml"
    cfg.write_text(
        f"paths:\n  state_dir: {base / 'state'}\n  run_dir: {base / 'run'}\n"
        f"  proc_root: {base / 'proc'}\n"
    )
    cfg.chmod(0o644)
    return base


@pytest.fixture
def as_owner(monkeypatch):
    """Check as the production code does as root, with the test's uid standing for root's."""
    monkeypatch.setattr(trust, "expected_owner", lambda: ME)
    monkeypatch.setattr("lvs_hooks.logsetup.setup_logging", lambda debug=False: None)


def untrusted(path, owner=ME):
    try:
        trust.check_path(str(path), "thing", owner)
    except trust.Untrusted as e:
        return e.message
    return None


def test_a_tree_of_ours_is_trusted(tree):
    for p in ("lvs-hooks.yaml", "state", "run", "run/missing/deeper"):
        assert untrusted(tree / p) is None


def test_another_owner_is_refused(tree):
    if ME == 0:
        os.chown(tree / "run", NOBODY, NOBODY)
        msg = untrusted(tree / "run", owner=0)
    else:  # the test's own files stand for root's; nobody else's are at hand
        msg = untrusted(tree / "run", owner=NOBODY)
    assert msg is not None and "not root" in msg and str(tree) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o722])
def test_a_directory_others_can_write_is_refused(tree, mode):
    (tree / "run").chmod(mode)
    msg = untrusted(tree / "run")
    assert msg == (
        f"thing {tree / 'run'}: {tree / 'run'} is writable by group or others "
        f"(mode {mode:04o}); chmod go-w {tree / 'run'}"
    )


def test_a_writable_directory_above_is_refused(tree):
    tree.chmod(0o777)
    assert "writable by group or others" in untrusted(tree / "run" / "x")


def test_a_sticky_directory_above_passes_only_for_an_entry_of_ours(tree):
    tree.chmod(0o1777)  # like /tmp
    assert untrusted(tree / "run") is None
    # but a path that is still to be created there could be anybody's first
    assert "a missing path would be created in it" in untrusted(tree / "new")


def test_a_config_others_can_write_is_refused(tree):
    (tree / "lvs-hooks.yaml").chmod(0o666)
    assert "mode 0666" in untrusted(tree / "lvs-hooks.yaml")


def test_a_symlink_is_judged_by_where_it_leads(tree):
    other = tree / "other"
    other.mkdir()
    other.chmod(0o777)
    (tree / "link").symlink_to(other)
    assert f"{other} is writable" in untrusted(tree / "link")


def test_not_root_checks_nothing(tree, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (tree / "run").chmod(0o777)
    assert trust.check_path(str(tree / "run"), "thing") is None


def run_cli(tree, *args):
    return CliRunner().invoke(cli, ["--config", str(tree / "lvs-hooks.yaml"), *args])


def error_lines(output):
    return [ln for ln in output.splitlines() if ln.startswith("Error:")]


def test_a_0777_run_dir_is_refused_before_anything_is_done(tree, as_owner):
    (tree / "run").chmod(0o777)
    r = run_cli(tree, "notify", "INSTANCE", "VI_1", "BACKUP", "100")
    assert r.exit_code == 11, r.output
    assert error_lines(r.output) == [
        f"Error: run directory {tree / 'run'}: {tree / 'run'} is writable by group or others "
        f"(mode 0777); chmod go-w {tree / 'run'}"
    ]
    assert os.listdir(tree / "run") == [] and os.listdir(tree / "state") == []


def test_a_writable_config_is_refused_before_it_is_read(tree, as_owner):
    cfg = tree / "lvs-hooks.yaml"
    cfg.write_text("not: [valid yaml\n")
    cfg.chmod(0o666)
    r = run_cli(tree, "history")
    assert r.exit_code == 11
    assert "config file" in r.output and "YAML" not in r.output


def test_doctor_lists_what_the_commands_refuse(tree, as_owner):
    (tree / "run").chmod(0o777)
    (tree / "state").chmod(0o1777)
    r = run_cli(tree, "doctor", "--keepalived-conf", str(tree / "none.conf"), "--json")
    import json

    report = json.loads(r.output)
    found = [f for f in report["findings"] if f["check"] == "untrusted-path"]
    assert sorted(f["evidence"][0].split(":")[0] for f in found) == [
        f"run directory {tree / 'run'}",
        f"state directory {tree / 'state'}",
    ]
    assert r.exit_code == 2


# -- writing: locks never follow a planted link


def test_a_lock_refuses_a_symlink_and_leaves_its_target_alone(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "x.lock").symlink_to(victim)
    from lvs_hooks.errors import UntrustedPath

    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        FileLock(tmp_path / "x.lock", timeout=0).acquire()
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644


def test_a_lock_refuses_a_hard_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / "x.lock")
    from lvs_hooks.errors import UntrustedPath

    with pytest.raises(UntrustedPath, match="2 hard links"):
        FileLock(tmp_path / "x.lock").acquire()
    assert victim.read_text() == "precious\n"


def test_a_lock_is_created_with_its_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o277)
    try:
        with FileLock(tmp_path / "x.lock", mode=0o600):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "x.lock").stat().st_mode & 0o777 == 0o600


def test_a_lock_is_reentrant_per_thread_and_excludes_other_holders(tmp_path):
    import filelock

    lock = FileLock(tmp_path / "x.lock")
    with lock.acquire(timeout=1):
        with lock.acquire(timeout=0):
            assert lock.is_locked
        assert lock.is_locked
        with pytest.raises(filelock.Timeout):
            FileLock(tmp_path / "x.lock").acquire(timeout=0)
    assert not lock.is_locked
    with filelock.FileLock(str(tmp_path / "x.lock")), pytest.raises(filelock.Timeout):
        lock.acquire(timeout=0.05)


@pytest.mark.parametrize("lock", ["run/transition.lock", "run/seen.lock"])
def test_a_symlinked_lock_in_a_notify_run_is_one_line_and_touches_nothing(tree, lock):
    """The issue's case (`ln -s VICTIM run/transition.lock; lvs-hooks notify ...`), through the
    installed entry point: the victim keeps its content and mode, one line, non-zero exit."""
    victim = tree / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tree / lock).symlink_to(victim)
    r = subprocess.run(
        [sys.executable, "-m", "lvs_hooks", "--config", str(tree / "lvs-hooks.yaml"),
         "notify", "INSTANCE", "VI_1", "BACKUP", "100"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    # (log lines go to stderr too where there is no syslog, as in a test container)
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "is a symbolic link" in lines[0] and "Traceback" not in r.stderr
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_mode & 0o777 == 0o644


def test_a_sysctl_is_never_written_through_a_link(tmp_path):
    from lvs_hooks.errors import KernelError
    from lvs_hooks.kernel import tunables

    vs = tmp_path / "proc" / "sys" / "net" / "ipv4" / "vs"
    vs.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (vs / "sloppy_tcp").symlink_to(victim)
    with pytest.raises(KernelError, match="sloppy_tcp=1: is a symbolic link"):
        tunables.write_sysctl(str(tmp_path / "proc"), "sloppy_tcp", "1")
    assert victim.read_text() == "precious\n"
    (vs / "conn_reuse_mode").write_text("1\n")
    assert tunables.write_sysctl(str(tmp_path / "proc"), "conn_reuse_mode", "0") == "0"


def test_rules_state_is_written_with_its_mode_whatever_the_umask(tmp_path):
    from lvs_hooks.rules.state import _replace

    old = os.umask(0o777)
    try:
        _replace(tmp_path / "applied.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "applied.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="the check runs only as root")
def test_the_door_hands_nothing_to_a_socket_in_an_untrusted_run_dir(tree):
    """Through the installed entry point (the door first): a 0777 run directory is refused
    before any socket in it is spoken to, by the CLI the door falls back to."""
    (tree / "run").chmod(0o777)
    r = subprocess.run(
        [sys.executable, "-m", "lvs_hooks", "--config", str(tree / "lvs-hooks.yaml"),
         "notify", "INSTANCE", "VI_1", "BACKUP", "100"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 11
    assert error_lines(r.stderr) == [
        f"Error: run directory {tree / 'run'}: {tree / 'run'} is writable by group or others "
        f"(mode 0777); chmod go-w {tree / 'run'}"
    ]
    assert os.listdir(tree / "run") == [] and os.listdir(tree / "state") == []
