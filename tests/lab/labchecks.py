"""Checks of lab scenario results that more than one VM run of the tier makes (tests/lab/conftest.py):
the 6.1 VM's (test_lab.py) and the 6.12 VM's (test_lab_612.py). One function per scenario, given
the run (the `lab` or `lab612` fixture's dict), so that both kernels are held to the same
assertions. `tag` names the run in the printed figures.
"""

import json
import os
import re

SEED000_STEPS = ["start", "1-takeover", "2-expired", "2-new", "3-failback", "3-new"]


def show(request, text: str) -> None:
    """Print past pytest's capture: wall times belong in the test log."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman:
        with capman.global_and_fixture_disabled():
            print(text, flush=True)
    else:
        print(text, flush=True)


def result(run, name, file="result.json"):
    path = os.path.join(run["by_name"][name]["out"], file)
    assert os.path.exists(path), f"{name} wrote no {file}"
    with open(path) as f:
        return json.load(f)


def assert_passed(run, name):
    assert run["by_name"][name]["rc"] == 0, run["output"][-3000:]


def check_smoke(run):
    assert_passed(run, "smoke")
    r = result(run, "smoke")
    assert r["template_seen"] is True
    # client 10.0.0.77, FPrt 0000 (template), VIP 10.0.0.100:5000, real server 10.1.0.11:5000
    assert re.match(r"UDP 0A00004D 0000 0A000064 1388 0A01000B 1388 ASSURED +\d+$", r["line"])


def check_seed000(request, run, name, hooks, tag):
    """The figures are measured and reported, per step, for 20 clients (not that they are good)."""
    assert_passed(run, name)
    r = result(run, name)
    assert r["hooks"] is hooks
    assert r["clients"] == 20
    traffic = r["traffic"]
    assert len(traffic["clients"]) == 20
    assert [s["label"] for s in traffic["steps"]] == SEED000_STEPS
    for s in traffic["steps"]:
        assert set(s["results"]) == set(traffic["clients"])
        assert 0 <= s["same_as_ref"] <= 20
        assert s["same_as_ref"] + s["moved"] + s["no_answer"] == 20
    start = traffic["steps"][0]
    assert start["answered"] == 20 and start["same_as_ref"] == 20
    table = os.path.join(run["by_name"][name]["out"], "traffic.txt")
    with open(table) as f:
        text = f.read()
    assert "Retention" in text and "3-failback" in text
    show(request, f"\n[{tag}] {name} (seed {traffic['seed']}):\n{text}")
    conf_path = os.path.join(run["by_name"][name]["out"], "keepalived-dir1.conf")
    with open(conf_path) as f:
        conf = f.read()
    assert "lvs_sync_daemon sync0 VI_1 id 51" in conf
    assert ("vrrp_notify_fifo_script" in conf) is hooks


def check_seed000_hooks_keeps_clients(run, name="seed000-hooks"):
    """Issue 4: with lvs-hooks in keepalived's FIFO, the synced templates do not expire on the
    new master while their clients' flows go on (the keeper), so new flows stay put."""
    traffic = result(run, name)["traffic"]
    same = {s["label"]: s["same_as_ref"] for s in traffic["steps"]}
    assert (same["1-takeover"], same["2-expired"], same["2-new"]) == (20, 20, 20), same


def check_takeover_figures(r):
    assert r["clients"] == 20
    assert r["tcp_same"] + r["tcp_no_answer"] <= 20 and 0 <= r["fwmark_same"] <= 20


def check_takeover_hooks(run):
    """Issue 4 with lvs-hooks: every never-synced TCP connection goes on after the takeover
    (sloppy_tcp + its template) and every fwmark client keeps its real server (the backup
    repaired the port-0 templates of the kernel's sync before the takeover)."""
    r = result(run, "takeover-hooks")
    check_takeover_figures(r)
    assert r["tcp_same"] == 20
    assert r["fwmark_same"] == 20
    return r


def check_colocated(run):
    """Issue 5: co-located DR directors loop without rules; with fwmark or redirect rules no
    packet loops during or after three takeovers and clients keep their real server."""
    assert_passed(run, "colocated")
    r = result(run, "colocated")
    lp = r["baseline"]["looped"]
    assert 0 < lp[0] < lp[1] < lp[2]
    for mode in ("fwmark", "redirect"):
        assert r[mode]["looped_after"] == 0
        for t in r[mode]["takeovers"]:
            assert t["looped"] == 0
            assert t["answered"] == t["same_rs"] == t["new_same_rs"] == r["clients"], t


def check_failback3(request, run, tag):
    """Issue 6: three directors; the master dies, comes back rebooted and cold, is kept from
    preempting by the warm-up gate until a push from the new master is checked in its table,
    then preempts; twice. Every client keeps its real server at every step."""
    assert_passed(run, "failback3")
    r = result(run, "failback3")
    same = {s["label"]: s["same_as_ref"] for s in r["traffic"]["steps"]}
    want = ["r1-takeover", "r1-failback", "r1-new", "r2-takeover", "r2-failback", "r2-new"]
    assert {k: same[k] for k in want} == {k: 20 for k in want}, same
    w = r["waited_s"]
    show(request, f"\n[{tag}] failback3: 20/20 at every step; cold director warm after "
         f"{w['warm1']:.1f} s and {w['warm2']:.1f} s, preempted {w['failback1']:.1f} s and "
         f"{w['failback2']:.1f} s after its reboot")
