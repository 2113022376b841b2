"""Issue 14's last acceptance point, in the lab tier: two directors configured by following
README.md's quick start verbatim (tests/lab/scenarios/quickstart.sh reads the README at run
time): the .deb installed with the README's `apt install`, its keepalived.conf, `init`, the
control key, `doctor` clean, the units' lines (done as systemd would: no systemd in the guest);
then seed000's story on that pair, 20 of 20 clients on their real server at every step; then
`lvs-hooks status --check` OK on both directors, and CRITICAL on the one whose agent was killed.

The scenario runs last in the tier's 6.12 VM (the session fixture `lab612`, tests/lab/conftest.py,
which builds the .deb and passes it as LAB_DEB): the kernel EL10 directors run; these tests read
its result.json.
"""

import json
import os

import pytest
from labchecks import SEED000_STEPS as STEPS
from labchecks import show

pytestmark = pytest.mark.lab

DIRECTORS = ("dir1", "dir2")


@pytest.fixture(scope="module")
def quick(lab612):
    """The quickstart scenario's summary entry and result.json."""
    lab = lab612
    s = lab["by_name"].get("quickstart")
    assert s is not None, ("the quickstart scenario did not run"
                           + (f" (the .deb: {lab.get('deb_error')})" if lab.get("deb_error") else ""))
    path = os.path.join(s["out"], "result.json")
    assert os.path.exists(path), (f"quickstart wrote no result.json (rc {s['rc']}):\n"
                                  + lab["output"][-3000:])
    with open(path) as f:
        return s, json.load(f)


def test_quickstart_installs_and_configures_by_the_readme(quick):
    """The README's own lines did it: the install, init, the key, the units' lines all exit 0,
    and `doctor` finds nothing on either director (exit 0: no error, no warning)."""
    _, r = quick
    assert r["install_rc"] == 0, r["install"]
    assert r["install"].startswith("apt install ./lvs-hooks_") and r["install"].endswith(".deb")
    assert r["doctor_rc"] == {d: 0 for d in DIRECTORS}, r["doctor_rc"]
    assert r["doctor_errors"] == {d: 0 for d in DIRECTORS}, r["doctor_errors"]
    assert r["commands_rc"] and set(r["commands_rc"].values()) == {0}, r["commands_rc"]
    for d in DIRECTORS:  # init, the key's lines, the units' lines ran on both directors
        for what in ("init", "key", "units"):
            assert any(k.startswith(f"{d}/{what}.") for k in r["commands_rc"]), (d, what)


def test_quickstart_pair_keeps_every_client_through_seed000s_story(request, quick):
    """seed000's story on the README's pair: every client on its real server at every step,
    the expiry step past 1.5 x the README's persistence."""
    _, r = quick
    assert r["clients"] == 20
    assert r["same_rs"] == {s: 20 for s in STEPS}, r["same_rs"]
    assert r["waited_s"]["expiry"] >= 1.5 * r["persistence_timeout"], r["waited_s"]
    steps = r["traffic"]["steps"]
    assert [s["label"] for s in steps] == STEPS
    assert all(s["answered"] == 20 and s["same_as_ref"] == 20 for s in steps), steps
    assert r["tracebacks_total"] == 0, r["tracebacks"]
    show(request, f"\n[lab tier] quickstart: README pair (VIP {r['vip']}:{r['port']}, "
         f"persistence {r['persistence_timeout']} s): 20/20 at every step "
         f"({', '.join(STEPS)}); doctor {r['doctor_rc']}; {r['wall_s']:.0f} s")


def test_quickstart_status_check_ok_then_critical_without_the_agent(request, quick):
    """`lvs-hooks status --check` on each director: OK, one line, exit 0; with dir2's agent
    killed: CRITICAL, exit 2, saying the agent does not run."""
    s, r = quick
    for d in DIRECTORS:
        line = r["status_check_line"][d]
        assert r["status_check_rc"][d] == 0, (d, line)
        assert line.startswith("LVS-HOOKS OK - ") and "\n" not in line, (d, line)
    k = r["after_kill"]
    assert k is not None and k["director"] == "dir2", k
    assert k["rc"] == 2 and k["line"].startswith("LVS-HOOKS CRITICAL - "), k
    assert "agent not running" in k["line"] and "\n" not in k["line"], k
    assert r["completed"] and r["pass"], r["failures"]
    assert s["rc"] == 0, r["failures"]
    show(request, "\n[lab tier] quickstart status --check: "
         + "; ".join(f"{d} rc {r['status_check_rc'][d]} {r['status_check_line'][d]!r}"
                     for d in DIRECTORS)
         + f"; dir2 without its agent: rc {k['rc']} {k['line']!r}")
