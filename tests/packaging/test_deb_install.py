"""The .deb installed with dpkg in clean Debian roots (`debroot` tier: root; debootstrap from
Debian's package registry the first time, ~1 min per suite, then cached: debroot.py).

A minbase Debian 12 and 13 root with python3, keepalived and systemd and nothing of lvs-hooks;
in it: dpkg -i, then the command at both of its paths, `doctor` on the packaged configuration
with a keepalived.conf that is the packaged example, `keepalived -t` on every packaged example,
the bash completion; then dpkg -r and -P: the bytecode postinst compiled, the links `systemctl
enable` made (the rules unit's Requires= on keepalived above all) and, on purge, the state
directory go with the package. Ubuntu 22.04/24.04 roots cannot be built here (only Debian's
registry is reachable); docs/packaging.md says why the same package serves them.
"""

import os
import shlex
import shutil
import subprocess

import pytest
from debroot import SUITES, Chroot, ensure_root
from rpmtest import missing

from lvs_hooks import __version__

pytestmark = pytest.mark.debroot

DEB_PATH = "/var/tmp/lvs-hooks.deb"
EXAMPLES = ("lvs-hooks-fifo.conf", "lvs-hooks-notify.conf", "lvs-hooks-warmup.conf")


@pytest.fixture(scope="module", params=sorted(SUITES))
def debian(request, built_deb, tmp_path_factory):
    """(suite, Chroot) with the .deb installed by dpkg -i; the install's output printed."""
    if os.geteuid() != 0:
        missing("needs root (mount namespaces, chroot)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if not shutil.which(tool):
            missing(f"needs {tool} (scripts/setup installs it)")
    suite = request.param
    try:
        root = ensure_root(suite)
    except RuntimeError as e:
        pytest.fail(str(e))
    ch = Chroot(root, str(tmp_path_factory.mktemp(f"chroot-{suite}")))
    ch.put(built_deb, DEB_PATH)
    r = ch.run(f"dpkg -i {DEB_PATH}")
    assert r.returncode == 0, f"dpkg -i on {suite}:\n{r.stdout}\n{r.stderr}"
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    return suite, ch



def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_installed_command_runs(debian):
    suite, ch = debian
    out = _ok(ch.run("lvs-hooks --version; /usr/libexec/keepalived/lvs-hooks --version; "
                     "dpkg-query -W -f '${Status}' lvs-hooks; echo; python3 -c "
                     "'import sys; print(\"%d%d\" % sys.version_info[:2])'"))
    lines = out.splitlines()
    assert lines[:2] == [f"lvs-hooks, version {__version__}"] * 2, out
    assert lines[2] == "install ok installed", out
    # postinst created the runtime directory (systemd-tmpfiles), root only
    assert _ok(ch.run("stat -c '%a %U' /run/lvs-hooks /var/lib/lvs-hooks")).split() == [
        "700", "root", "700", "root"]
    # postinst compiled every module for this root's python3 (py3compile), nothing else did
    pyver = lines[3]
    out = _ok(ch.run("find /usr/lib/lvs-hooks -name '*.py' | wc -l; "
                     "find /usr/lib/lvs-hooks -name '*.pyc' | wc -l; "
                     f"find /usr/lib/lvs-hooks -name '*.pyc' ! -name '*.cpython-{pyver}.pyc'"))
    n_py, n_pyc, *others = out.split("\n")
    assert int(n_pyc) == int(n_py) > 300, out
    assert others == [""], others
    print(f"{SUITES[suite]}: installed, {n_pyc} modules compiled for Python {pyver[0]}.{pyver[1:]}")


def test_keepalived_accepts_the_packaged_examples(debian):
    suite, ch = debian
    for ex in EXAMPLES:
        r = ch.run(f"keepalived -t -f /usr/share/doc/lvs-hooks/{ex}")
        assert r.returncode == 0 and r.stdout + r.stderr == "", (suite, ex, r.stdout, r.stderr)


def test_keepalived_accepts_the_packaged_alternatives(debian, tmp_path):
    """The alternatives the packaged examples show in comments (test_keepalived_snippets.py),
    where the packaged command exists: keepalived finds the vrrp_script's program too."""
    from test_keepalived_snippets import EXPECTED, commented_blocks, with_alternative

    suite, ch = debian
    n = 0
    for ex in EXAMPLES:
        text = _ok(ch.run(f"cat /usr/share/doc/lvs-hooks/{ex}"))
        for group in commented_blocks(text):
            conf = tmp_path / f"alt{n}.conf"
            conf.write_text(with_alternative(text, group))
            ch.put(str(conf), f"/var/tmp/alt{n}.conf")
            r = ch.run(f"keepalived -t -f /var/tmp/alt{n}.conf")
            must = EXPECTED.get((ex, group[0].splitlines()[0].strip()), ())
            said = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
            assert (r.returncode == 0 or must) and \
                all(any(e in ln for e in must) for ln in said), (suite, ex, group, said)
            n += 1
    assert n >= 3


def test_doctor_on_the_packaged_configuration(debian):
    """doctor reads the packaged lvs-hooks.yaml and a keepalived.conf that is the packaged FIFO
    example; the chroot has no IPVS (the host kernel's is not loaded): doctor says so and judges
    the configuration: no error, no warning."""
    suite, ch = debian
    r = ch.run("cp /usr/share/doc/lvs-hooks/lvs-hooks-fifo.conf /etc/keepalived/keepalived.conf "
               "&& keepalived -t -f /etc/keepalived/keepalived.conf && lvs-hooks doctor")
    out = _ok(r)
    assert "0 errors, 0 warnings" in out, out
    assert "/etc/lvs-hooks/lvs-hooks.yaml" in out and "/etc/keepalived/keepalived.conf" in out


def test_bash_completion(debian):
    """The packaged completion, sourced by bash, completes through the packaged command."""
    _suite, ch = debian
    script = ("source /usr/share/bash-completion/completions/lvs-hooks; "
              "COMP_WORDS=(lvs-hooks do); COMP_CWORD=1; _lvs_hooks_completion lvs-hooks; "
              "echo \"${COMPREPLY[*]}\"; COMP_WORDS=(lvs-hooks rules ap); COMP_CWORD=2; "
              "COMPREPLY=(); _lvs_hooks_completion lvs-hooks; echo \"${COMPREPLY[*]}\"")
    out = _ok(ch.run(f"bash -c {shlex.quote(script)}"))
    assert out.splitlines() == ["doctor", "apply"], out


def test_remove_then_purge(debian):
    """Last (it removes the package): dpkg -r takes the bytecode and the units' links an
    operator's `systemctl enable` made, keeps the snapshots; dpkg -P takes those too."""
    suite, ch = debian
    enable = ("mkdir -p /etc/systemd/system/keepalived.service.requires "
              "/etc/systemd/system/multi-user.target.wants && "
              "systemctl enable lvs-hooks-rules.service lvs-hooks-agent.service && "
              "ls /etc/systemd/system/keepalived.service.requires/ && "
              "mkdir -p /var/lib/lvs-hooks && echo x > /var/lib/lvs-hooks/snapshot-test")
    out = _ok(ch.run(enable))
    assert "lvs-hooks-rules.service" in out, out
    out = _ok(ch.run("dpkg -r lvs-hooks >/dev/null; ls -d /usr/lib/lvs-hooks 2>/dev/null; "
                     "find /etc/systemd/system -name '*lvs-hooks*'; "
                     "ls /var/lib/lvs-hooks /etc/lvs-hooks"))
    # the package's files and bytecode gone, no link left; snapshots and the conffile kept
    assert out.split() == ["/etc/lvs-hooks:", "lvs-hooks.yaml", "/var/lib/lvs-hooks:",
                           "snapshot-test"], (suite, out)
    out = _ok(ch.run("dpkg -P lvs-hooks >/dev/null; ls -d /var/lib/lvs-hooks /etc/lvs-hooks "
                     "2>/dev/null; dpkg-query -W lvs-hooks 2>&1 || true"))
    assert out.strip() == "dpkg-query: no packages found matching lvs-hooks", (suite, out)
