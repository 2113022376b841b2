"""The RPM, unit tier (no root needed; about 20 s, the first run also downloads the bundled
wheels): packaging/build-rpm builds it, packaging/check_rpm.py checks it, and its payload runs.

The packaged wrapper runs at its real path (the payload overlaid on /usr in a mount namespace),
once with a Python 3.9 as /usr/bin/python3.9 (EL9's python3, EL8's python39) and once with the
host's /usr/bin/python3.11 (EL8/EL9's python3.11 package) when there is no 3.9 to prefer.
Everything it could import besides the bundled dependencies is poisoned: packages named click,
filelock, pyroute2, yaml and lvs_hooks that abort the process wait in every site-packages
directory of the interpreter, in the current directory and on PYTHONPATH. A run that works
imported only what the RPM bundles.

The host kernel has no IPVS: what needs it (status, snapshot, reseed past its plan's input)
must stop with exit 4 and the one-line "IPVS is not available" error; the lab runs the same
payload against a real kernel (tests/lab/scenarios/seed000-rpm.sh).
"""

import json
import os
import shutil
import stat
import subprocess

import pytest
from rpmtest import PROJECT, ns_run, real_interpreter

from lvs_hooks import __version__
from lvs_hooks.kernel.conntable import CONN_HEADER, SYNC_HEADER
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.snapshot import Snapshot, SnapshotStore

WRAPPERS = ("/usr/sbin/lvs-hooks", "/usr/libexec/keepalived/lvs-hooks")
NO_IPVS = "Error: IPVS is not available: the ip_vs module is not loaded"
POISONED = ("click", "filelock", "pyroute2", "yaml", "lvs_hooks")
SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
              destinations=(Destination("10.1.0.11", 5000),))
TPL = ConnEntry("UDP", "10.0.0.20", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 300)


def test_check_rpm_passes(built_rpm):
    from check_rpm import run_checks

    c, summary = run_checks(built_rpm)
    assert not c.failed, "\n".join(f"{n}: {d}" for n, _ok, d in c.failed)
    assert summary["checks"] > 100
    # small enough to copy around: the four bundled dependencies and their bytecode for three
    # interpreters (3.9, 3.11, 3.12) are most of it (0.6 MB without the bytecode)
    assert summary["rpm_bytes"] < 4_000_000, summary
    print(json.dumps(summary, indent=2))


class Packaged:
    """Runs the packaged wrapper with one interpreter, everything else poisoned."""

    def __init__(self, rpm_root: str, py_layer, site_dirs, poison: str, version: str):
        self.overlays = {"/usr": [*([py_layer] if py_layer else []), os.path.join(rpm_root, "usr")]}
        for d in site_dirs:
            self.overlays[d] = [poison]
        self.poison = poison
        self.version = version

    def __call__(self, *args: str, wrapper: str = WRAPPERS[0],
                 shell_trace: bool = False) -> subprocess.CompletedProcess:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": self.poison,
            "PYTHONHOME": "/nonexistent",  # would stop the interpreter if it were honoured
            "PYTHONSTARTUP": os.path.join(self.poison, "lvs_hooks", "__init__.py"),
            "LANG": "C",
        }
        cmd = ["/bin/sh", "-x", wrapper] if shell_trace else [wrapper]
        return ns_run(self.overlays, [*cmd, *args], cwd=self.poison, env=env)


def _site_dirs(exe: str) -> list:
    code = ("import site, sys; print('\\n'.join(site.getsitepackages() + "
            "[site.getusersitepackages()]))")
    out = subprocess.run([exe, "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return sorted({os.path.realpath(d) for d in out if os.path.isdir(d)})


def _poison(d) -> str:
    for name in POISONED:
        (d / name).mkdir()
        (d / name / "__init__.py").write_text(
            f"import os, sys\nsys.stderr.write('POISON: {name} imported from ' + __file__ + "
            f"'\\n')\nos._exit(99)\n")
    return str(d)


@pytest.fixture(scope="module", params=["3.9", "3.11", "3.12"])
def packaged(request, rpm_root, can_unshare, tmp_path_factory) -> Packaged:
    """The wrapper with one interpreter: 3.9 as EL9's python3 (EL8's python39), 3.11 as EL8/EL9's
    python3.11, 3.12 alone as on EL10 (the host's /usr/bin/python3.9 and 3.11 hidden by
    overlayfs whiteouts, so the wrapper finds only 3.12)."""
    version = request.param
    system = f"/usr/bin/python{version}"
    py_layer = None
    if version in ("3.9", "3.12"):
        exe = system if os.path.exists(system) else real_interpreter(version)
        if exe is None:
            pytest.skip(f"no Python {version} on this machine to stand in for EL's")
        layer = tmp_path_factory.mktemp(f"py{version}")
        os.makedirs(layer / "usr" / "bin")
        if exe != system:
            os.symlink(exe, layer / "usr" / "bin" / f"python{version}")
        if version == "3.12":
            if os.geteuid() != 0:
                pytest.skip("hiding the host's interpreters (whiteouts) needs root")
            for other in ("3.9", "3.11"):  # EL10 has neither
                os.mknod(layer / "usr" / "bin" / f"python{other}", stat.S_IFCHR | 0o600,
                         os.makedev(0, 0))
        py_layer = str(layer / "usr")
    else:
        if not os.path.exists(system):
            pytest.skip(f"no {system} on this machine")
        if os.path.exists("/usr/bin/python3.9"):
            pytest.skip("/usr/bin/python3.9 exists here: the wrapper prefers it")
        exe = system
    poison = _poison(tmp_path_factory.mktemp("poison"))
    return Packaged(rpm_root, py_layer, _site_dirs(exe), poison, version)


@pytest.fixture
def cfg(tmp_path):
    """A config with state, run and a fake /proc under tmp_path; returns (path, store)."""
    proc = tmp_path / "proc" / "net"
    proc.mkdir(parents=True)
    line = b"UDP 0A000014 0000 0A000064 1388 0A01000B 1388 ASSURED         300\n"
    (proc / "ip_vs_conn").write_bytes(CONN_HEADER + b"\n" + line)
    (proc / "ip_vs_conn_sync").write_bytes(SYNC_HEADER + b"\n" + line[:-1] + b" LOCAL\n")
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
                    f"  proc_root: {tmp_path / 'proc'}\n")
    return str(path), SnapshotStore(tmp_path / "state", keep=5)


def test_poison_is_armed(packaged):
    """Control: the same interpreter without the wrapper's flags does import the poison (from
    site-packages and from the current directory), so the runs above would have shown it."""
    py = f"/usr/bin/python{packaged.version}"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"}
    for mod in ("yaml", "click"):
        r = ns_run(packaged.overlays, [py, "-c", f"import {mod}"], cwd="/", env=env)
        assert r.returncode == 99 and f"POISON: {mod} imported from " in r.stderr, r.stderr
        assert "site-packages" in r.stderr or "dist-packages" in r.stderr, r.stderr
    r = ns_run(packaged.overlays, [py, "-c", "import click"], cwd=packaged.poison, env=env)
    assert r.returncode == 99 and f"POISON: click imported from {packaged.poison}" in r.stderr


def _ok_python(r: subprocess.CompletedProcess) -> None:
    assert "POISON" not in r.stderr, r.stderr


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_version(packaged, wrapper):
    r = packaged("--version", wrapper=wrapper)
    _ok_python(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"lvs-hooks, version {__version__}"


def test_wrapper_chooses_the_interpreter(packaged):
    """The same wrapper file traced by sh -x: which interpreter it executes, with which flags."""
    r = packaged("--version", shell_trace=True)
    _ok_python(r)
    assert r.returncode == 0, r.stderr
    execs = [ln for ln in r.stderr.splitlines() if ln.startswith("+ exec ")]
    assert len(execs) == 1, r.stderr
    assert execs[0].startswith(f"+ exec /usr/bin/python{packaged.version} -I -S -B -c "), execs


def test_status_without_ipvs_reports_the_rest(packaged, cfg):
    """status without the ip_vs module says so and reports the rest (issue 14): exit 0."""
    r = packaged("--config", cfg[0], "status")
    _ok_python(r)
    assert r.returncode == 0, r.stderr
    assert "could not read IPVS: IPVS is not available: the ip_vs module is not loaded" in r.stdout
    assert "role: unknown" in r.stdout


def test_debug_traceback_shows_bundled_modules(packaged, cfg):
    r = packaged("--debug", "--config", cfg[0], "snapshot")
    _ok_python(r)
    assert r.returncode == 4
    tb = r.stderr
    assert 'File "/usr/lib/lvs-hooks/lvs_hooks/kernel/netlink.py"' in tb, tb
    assert 'File "/usr/lib/lvs-hooks/vendor/pyroute2/' in tb, tb
    assert "site-packages" not in tb and "dist-packages" not in tb, tb


def test_snapshot_list_reads_generations(packaged, cfg):
    path, store = cfg
    store.save(Snapshot.capture([SVC], [TPL], captured_at=1_700_000_000.0))
    newest = store.save(Snapshot.capture([SVC], [TPL, TPL], captured_at=1_700_000_100.0))
    newest.write_bytes(newest.read_bytes()[:-20])  # truncated
    r = packaged("--config", path, "snapshot", "--list", "--json")
    _ok_python(r)
    assert r.returncode == 0, r.stderr
    assert [(g["templates"], g["ok"]) for g in json.loads(r.stdout)] == [(2, False), (1, True)]
    human = packaged("--config", path, "snapshot", "--list")
    assert human.returncode == 0 and "REFUSED" in human.stdout


def test_snapshot_needs_ipvs(packaged, cfg, tmp_path):
    r = packaged("--config", cfg[0], "snapshot")
    _ok_python(r)
    assert r.returncode == 4 and r.stderr.strip().splitlines()[-1] == NO_IPVS
    assert not list(tmp_path.glob("state/snapshot-*"))


def test_reseed_dry_run(packaged, cfg, tmp_path):
    """The snapshot is read and verified first (exit 3 for a bad one), then the plan needs the
    live services: exit 4 here."""
    path, store = cfg
    good = store.save(Snapshot.capture([SVC], [TPL], captured_at=1_700_000_000.0))
    r = packaged("--config", path, "reseed", "--dry-run", "--from", str(good))
    _ok_python(r)
    assert r.returncode == 4 and r.stderr.strip().splitlines()[-1] == NO_IPVS, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}\n{}\n')
    r = packaged("--config", path, "reseed", "--dry-run", "--from", str(bad))
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ") and str(bad) in r.stderr


def test_config_errors_name_the_key(packaged, cfg, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("sync:\n  sycnid: 3\n")
    r = packaged("--config", str(bad), "status")
    _ok_python(r)
    assert r.returncode == 2 and "sync.sycnid" in r.stderr, r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("sync: [1,\n")
    r = packaged("--config", str(broken), "status")
    assert r.returncode == 2 and "YAML syntax error" in r.stderr, r.stderr


def test_history_without_transitions(packaged, cfg):
    r = packaged("--config", cfg[0], "history")
    _ok_python(r)
    assert r.returncode == 0 and "no transitions recorded" in r.stdout, r.stderr


@pytest.mark.parametrize("version", ["3.9", "3.11", "3.12"])
def test_packaged_bytecode_is_current(version, rpm_root, tmp_path):
    """The bytecode the RPM owns is what each interpreter the wrapper may choose loads as it is:
    for every module, its .pyc for that version records the source's size and mtime as rpm
    installs them (timestamp-checked), names the installed path (not the buildroot), and the
    interpreter's own loader accepts it (importlib's validation, without a recompile)."""
    exe = real_interpreter(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine")
    lib = os.path.join(rpm_root, "usr", "lib", "lvs-hooks")
    code = r"""
import importlib.util, marshal, os, sys
lib, root = sys.argv[1], sys.argv[2]
bad, n = [], 0
for d, _dirs, files in os.walk(lib):
    for f in files:
        if not f.endswith(".py"):
            continue
        src = os.path.join(d, f)
        pyc = importlib.util.cache_from_source(src)
        n += 1
        try:
            data = open(pyc, "rb").read()
        except FileNotFoundError:
            bad.append("missing " + pyc); continue
        st = os.stat(src)
        flags = int.from_bytes(data[4:8], "little")
        mtime = int.from_bytes(data[8:12], "little")
        size = int.from_bytes(data[12:16], "little")
        if data[:4] != importlib.util.MAGIC_NUMBER or flags != 0 \
                or mtime != int(st.st_mtime) or size != st.st_size & 0xFFFFFFFF:
            bad.append("stale " + pyc); continue
        name = marshal.loads(data[16:]).co_filename
        if name != src[len(root):]:
            bad.append(pyc + " names " + name)
print(n, len(bad)); print("\n".join(bad[:10]))
"""
    r = subprocess.run([exe, "-I", "-S", "-c", code, lib, rpm_root], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n, nbad = map(int, r.stdout.split("\n")[0].split())
    assert n > 300 and nbad == 0, r.stdout


UNITS = ("lvs-hooks-agent.service", "lvs-hooks-rules.service", "lvs-hooks-snapshot.service",
         "lvs-hooks-snapshot.timer")


def test_units_verify(rpm_root, can_unshare, tmp_path):
    """systemd-analyze verify, with the payload over /usr: each packaged unit parses without a
    warning, and every program its Exec lines name exists and is executable there. Control: the
    source tree's agent unit (/usr/bin/lvs-hooks) fails the same verification."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("needs systemd-analyze")
    unitdir = "/usr/lib/systemd/system"
    overlays = {"/usr": [os.path.join(rpm_root, "usr")]}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "SYSTEMD_LOG_LEVEL": "info"}
    r = ns_run(overlays, ["systemd-analyze", "verify", *(f"{unitdir}/{u}" for u in UNITS)],
               env=env)
    assert r.returncode == 0, r.stderr
    assert "lvs-hooks" not in r.stderr, r.stderr
    if os.path.exists("/usr/bin/lvs-hooks"):
        return  # the control needs a host without it
    src = tmp_path / "lvs-hooks-agent.service"
    shutil.copy(os.path.join(PROJECT, "systemd", "lvs-hooks-agent.service"), src)
    r = ns_run(overlays, ["systemd-analyze", "verify", str(src)], env=env)
    assert r.returncode != 0 and "/usr/bin/lvs-hooks" in r.stderr, r.stderr
