"""packaging/check_rpm.py can fail (unit tier): the built RPM's payload and scriptlets, each with
one fault put in, fail exactly the checks that name that fault, and nothing else.

Without these, a check that can never fail (a wrong path, a set compared with itself) would pass
every RPM. The faults are the ones that matter on a director: a unit that still runs the source
tree's /usr/bin/lvs-hooks, a ReadWritePaths= directory nobody creates (the unit fails to start),
an example naming a /run path outside the tmpfiles.d directory, the rules unit stopped on removal
or restarted on upgrade (keepalived with it), the agent not restarted on upgrade.
"""

import os
import shutil

import pytest
from check_rpm import Checker, check_scriptlet_bodies, check_source_tree, run_checks, scriptlets
from rpmtest import PROJECT

UNITDIR = "usr/lib/systemd/system"
DOC = "usr/share/doc/lvs-hooks"


def _edit(root: str, rel: str, old: str, new: str) -> None:
    path = os.path.join(root, rel)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert old in text, (rel, old)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(old, new))


def _failed(c: Checker) -> set:
    return {name for name, _ok, _detail in c.failed}


@pytest.fixture(scope="module")
def clean_result(built_rpm):
    c, _summary = run_checks(built_rpm)
    assert not c.failed, c.failed
    return c


PAYLOAD_FAULTS = {
    "agent unit names /usr/bin/lvs-hooks": (
        f"{UNITDIR}/lvs-hooks-agent.service",
        "ExecStart=/usr/sbin/lvs-hooks agent",
        "ExecStart=/usr/bin/lvs-hooks agent",
        {
            "lvs-hooks-agent.service names no /usr/bin/lvs-hooks",
            "lvs-hooks-agent.service ExecStart= runs a packaged or required program",
            "lvs-hooks-agent.service ExecStart= runs lvs-hooks as /usr/sbin/lvs-hooks",
            "lvs-hooks-agent.service ExecStart= ... /usr/sbin/lvs-hooks agent",
            "lvs-hooks-agent.service: the package's paths it names are packaged",
        },
    ),
    "snapshot unit runs /usr/bin/lvs-hooks behind flock": (
        f"{UNITDIR}/lvs-hooks-snapshot.service",
        "    /usr/sbin/lvs-hooks snapshot",
        "    /usr/bin/lvs-hooks snapshot",
        {
            "lvs-hooks-snapshot.service names no /usr/bin/lvs-hooks",
            "lvs-hooks-snapshot.service ExecStart= runs lvs-hooks as /usr/sbin/lvs-hooks",
            "lvs-hooks-snapshot.service ExecStart= ... /usr/sbin/lvs-hooks snapshot",
            "lvs-hooks-snapshot.service: the package's paths it names are packaged",
        },
    ),
    "rules unit runs another command": (
        f"{UNITDIR}/lvs-hooks-rules.service",
        "rules apply --role backup",
        "rules apply --role master",
        {"lvs-hooks-rules.service ExecStart= ... /usr/sbin/lvs-hooks rules apply --role backup"},
    ),
    "rules unit without RefuseManualStop": (
        f"{UNITDIR}/lvs-hooks-rules.service",
        "RefuseManualStop=yes",
        "",
        {"lvs-hooks-rules.service: RefuseManualStop=yes"},
    ),
    "rules unit not RequiredBy keepalived": (
        f"{UNITDIR}/lvs-hooks-rules.service",
        "RequiredBy=keepalived.service",
        "WantedBy=multi-user.target",
        {"lvs-hooks-rules.service: [Install] RequiredBy=keepalived.service"},
    ),
    "agent writes a /run directory nobody creates": (
        f"{UNITDIR}/lvs-hooks-agent.service",
        "ReadWritePaths=/var/lib/lvs-hooks /run/lvs-hooks",
        "ReadWritePaths=/var/lib/lvs-hooks /run/lvs-hooks-agent",
        {"lvs-hooks-agent.service ReadWritePaths=: directories of the package (under /run: "
         "ones tmpfiles.d creates)"},
    ),
    "agent unit names the source tree's example": (
        f"{UNITDIR}/lvs-hooks-agent.service",
        "(/usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf)",
        "(etc/keepalived/lvs-hooks-warmup.conf)",
        {"lvs-hooks-agent.service names no path of the source tree"},
    ),
    "agent unit names a doc file not packaged": (
        f"{UNITDIR}/lvs-hooks-agent.service",
        "/usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf",
        "/usr/share/doc/lvs-hooks/lvs-hooks-gate.conf",
        {"lvs-hooks-agent.service: the package's paths it names are packaged"},
    ),
    "timer without [Install]": (
        f"{UNITDIR}/lvs-hooks-snapshot.timer",
        "WantedBy=timers.target",
        "",
        {"lvs-hooks-snapshot.timer: [Install] WantedBy=timers.target"},
    ),
    "warm-up example's track file outside /run/lvs-hooks": (
        f"{DOC}/lvs-hooks-warmup.conf",
        'file "/run/lvs-hooks/warmup.track"',
        'file "/run/keepalived/warmup.track"',
        {f"/{DOC}/lvs-hooks-warmup.conf: its /run paths are in directories tmpfiles.d creates"},
    ),
    "fifo example names the source tree's tmpfiles.d file": (
        f"{DOC}/lvs-hooks-fifo.conf",
        "(/usr/lib/tmpfiles.d/lvs-hooks.conf creates it",
        "(systemd/tmpfiles.d/lvs-hooks.conf creates it",
        {f"/{DOC}/lvs-hooks-fifo.conf names no path of the source tree"},
    ),
    "notify example names /usr/bin/lvs-hooks": (
        f"{DOC}/lvs-hooks-notify.conf",
        '"/usr/libexec/keepalived/lvs-hooks notify"',
        '"/usr/bin/lvs-hooks notify"',
        {f"/{DOC}/lvs-hooks-notify.conf names no /usr/bin/lvs-hooks",
         f"/{DOC}/lvs-hooks-notify.conf: the package's paths it names are packaged"},
    ),
}


@pytest.mark.parametrize("fault", sorted(PAYLOAD_FAULTS))
def test_payload_fault_fails_its_checks(fault, built_rpm, rpm_root, clean_result, tmp_path):
    rel, old, new, want = PAYLOAD_FAULTS[fault]
    assert want <= {name for name, _ok, _d in clean_result.results}, "a check was renamed"
    root = str(tmp_path / "root")
    shutil.copytree(rpm_root, root, symlinks=True)
    _edit(root, rel, old, new)
    c, _summary = run_checks(built_rpm, unpack_dir=root)
    assert _failed(c) == want


def _postun_upgrade(body: str, line: str) -> str:
    """body with `line` added inside its upgrade branch (`if [ $1 -ge 1 ]`)."""
    head, sep, tail = body.partition("# Package upgrade, not uninstall")
    assert sep, body
    return head + sep + "\n" + line + "\n" + tail


SCRIPTLET_FAULTS = {
    "rules restarted on upgrade": (
        "postun",
        lambda b: _postun_upgrade(b, "systemctl try-restart lvs-hooks-rules.service || :"),
        {"postun $1=1 (upgrade): lvs-hooks-rules.service: untouched"},
    ),
    "agent not restarted on upgrade": (
        "postun",
        lambda b: b.replace("try-restart lvs-hooks-snapshot.timer lvs-hooks-agent.service",
                            "try-restart lvs-hooks-snapshot.timer"),
        {"postun $1=1 (upgrade): lvs-hooks-agent.service: try-restart"},
    ),
    "rules stopped on removal": (
        "preun",
        lambda b: b.replace("disable lvs-hooks-rules.service",
                            "disable --now lvs-hooks-rules.service"),
        {"preun $1=0 (removal): lvs-hooks-rules.service: disable"},
    ),
    "rules not disabled on removal": (
        "preun",
        lambda b: b.replace("systemctl --no-reload disable lvs-hooks-rules.service", ":"),
        {"preun $1=0 (removal): lvs-hooks-rules.service: disable"},
    ),
    "agent left enabled on removal": (
        "preun",
        lambda b: b.replace("--now lvs-hooks-agent.service ", "--now "),
        {"preun $1=0 (removal): lvs-hooks-agent.service: disable --now"},
    ),
    "units preset on upgrade too (no $1 guard)": (
        "post",
        lambda b: b.replace("if [ $1 -eq 1 ] ; then", "if true ; then"),
        {f"post $1=2 (upgrade): {u}: untouched" for u in (
            "lvs-hooks-agent.service", "lvs-hooks-rules.service", "lvs-hooks-snapshot.service",
            "lvs-hooks-snapshot.timer")},
    ),
    "rules not preset on installation": (
        "post",
        lambda b: b.replace(" lvs-hooks-rules.service ", " "),
        {"post $1=1 (installation): lvs-hooks-rules.service: preset"},
    ),
    "a unit of another package": (
        "postun",
        lambda b: _postun_upgrade(b, "systemctl try-restart keepalived.service || :"),
        {"postun $1=1 (upgrade): systemctl names the package's units only"},
    ),
    "a scriptlet touches an unknown path: not run": (
        "preun",
        lambda b: b + "\nrm -rf /var/lib/lvs-hooks\n",
        {"scriptlets name only known paths (so they can be run here)"},
    ),
}


@pytest.mark.parametrize("fault", sorted(SCRIPTLET_FAULTS))
def test_scriptlet_fault_fails_its_checks(fault, built_rpm):
    name, change, want = SCRIPTLET_FAULTS[fault]
    bodies = scriptlets(built_rpm)
    clean = Checker()
    check_scriptlet_bodies(clean, bodies)
    assert not clean.failed, clean.failed
    assert want <= {n for n, _ok, _d in clean.results}, "a check was renamed"
    changed = dict(bodies)
    changed[name] = change(bodies[name])
    assert changed[name] != bodies[name]
    c = Checker()
    check_scriptlet_bodies(c, changed)
    assert _failed(c) == want


def test_source_tree_units_and_examples_are_all_packaged(tmp_path):
    """A unit or an example added to the source tree but not to check_rpm's lists (and so,
    likely, not to the spec) fails; the checkout itself passes."""
    here = Checker()
    check_source_tree(here)
    assert len(here.results) == 2 and not here.failed, here.results
    fake = tmp_path / "project"
    shutil.copytree(os.path.join(PROJECT, "systemd"), fake / "systemd")
    shutil.copytree(os.path.join(PROJECT, "etc", "keepalived"), fake / "etc" / "keepalived")
    (fake / "systemd" / "lvs-hooks-extra.service").write_text("[Service]\n")
    (fake / "etc" / "keepalived" / "lvs-hooks-extra.conf").write_text("# x\n")
    c = Checker()
    check_source_tree(c, str(fake))
    assert _failed(c) == {"the units of systemd/ are UNITS",
                          "the examples of etc/keepalived/ are EXAMPLES"}
