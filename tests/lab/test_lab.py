"""Lab tier: real IPVS in a VM (tests/lab/run). Needs root and qemu; slow (about 2-3 minutes).

All the scenario checks share ONE VM boot: a session fixture runs every scenario in one runner
call and keeps each scenario's exit code and result files; the tests then read them. One more,
cheap runner call checks that a single scenario's exit code is the runner's exit code.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.lab

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "run")
RUN_LIMIT = 800  # the whole lab tier must stay under 15 minutes on a 2-core machine under TCG
SEED000_STEPS = ["start", "1-takeover", "2-expired", "2-new", "3-failback", "3-new"]

EXIT7 = """#!/bin/bash
# a scenario outside the repository: its exit code and its result file must come back
echo "outside scenario running as $LAB_NAME"
echo '{"from": "outside"}' > "$LAB_OUT/result.json"
ip netns add leftover          # the guest removes it before the next scenario
sleep 600 &                    # and kills this
exit 7
"""
HANG = """#!/bin/bash
# lab-timeout: 3
ip netns list | grep -q leftover && { echo "previous scenario leaked a netns"; exit 3; }
sleep 600
"""


def show(request, text: str) -> None:
    """Print past pytest's capture: wall times belong in the test log."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman:
        with capman.global_and_fixture_disabled():
            print(text, flush=True)
    else:
        print(text, flush=True)


def run_lab(args, timeout):
    # the host's switches would change what the scenarios measure: each scenario sets its own
    env = {k: v for k, v in os.environ.items() if k not in ("LVS_HOOKS", "LVS_HOOKS_MODE")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, RUN, "--quiet", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="session")
def ext_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("outside-repo")
    (d / "exit7.sh").write_text(EXIT7)
    (d / "hang.sh").write_text(HANG)
    return d


@pytest.fixture(scope="session")
def lab(request, tmp_path_factory, ext_dir):
    """One VM, every lab scenario: {"rc", "summary", "by_name", "out", "output"}."""
    out = tmp_path_factory.mktemp("lab-run")
    scenarios = ["smoke", "helpers", "seed000", "seed000-hooks", str(ext_dir / "exit7.sh"),
                 str(ext_dir / "hang.sh")]
    proc, wall = run_lab(["--out", str(out), *scenarios], RUN_LIMIT + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("LAB: scenario", "[lab]"))]
    show(request, f"\n[lab tier] one VM, {len(scenarios)} scenarios, {wall:.1f}s:\n  "
         + "\n  ".join(lines))
    summary_path = out / "summary.json"
    if not summary_path.exists():
        pytest.fail(f"runner wrote no summary (rc {proc.returncode}):\n{proc.stdout[-3000:]}")
    summary = json.loads(summary_path.read_text())
    return {"rc": proc.returncode, "summary": summary, "out": out, "output": proc.stdout,
            "by_name": {s["name"]: s for s in summary["scenarios"]}}


def result(lab, name):
    path = os.path.join(lab["by_name"][name]["out"], "result.json")
    assert os.path.exists(path), f"{name} wrote no result.json"
    with open(path) as f:
        return json.load(f)


def test_run_reports_every_scenario(lab):
    s = lab["summary"]
    assert s["completed"], lab["output"][-3000:]
    assert [x["name"] for x in s["scenarios"]] == ["smoke", "helpers", "seed000", "seed000-hooks",
                                                   "exit7", "hang"]
    assert all(x["wall_s"] is not None for x in s["scenarios"])
    assert lab["rc"] == 1  # several scenarios, one failed on purpose: non-zero
    for x in s["scenarios"]:
        assert f"LAB: scenario {x['name']} rc={x['rc']} wall=" in lab["output"]


def test_smoke_template_in_proc(lab):
    assert lab["by_name"]["smoke"]["rc"] == 0, lab["output"][-3000:]
    r = result(lab, "smoke")
    assert r["template_seen"] is True
    # client 10.0.0.77, FPrt 0000 (template), VIP 10.0.0.100:5000, real server 10.1.0.11:5000
    assert re.match(r"UDP 0A00004D 0000 0A000064 1388 0A01000B 1388 ASSURED +\d+$", r["line"])


def test_helpers_three_directors_tcp_bulk(lab):
    """lib.sh beyond seed000: 3 directors, TCP connections, VIP move, bulk templates."""
    assert lab["by_name"]["helpers"]["rc"] == 0, lab["output"][-3000:]
    r = result(lab, "helpers")
    assert r["directors"] == 3 and r["dir3_templates"] >= 300


@pytest.mark.parametrize("name,hooks", [("seed000", False), ("seed000-hooks", True)])
def test_seed000_reports_retention(request, lab, name, hooks):
    """The figures are measured and reported, per step, for 20 clients (not that they are good)."""
    assert lab["by_name"][name]["rc"] == 0, lab["output"][-3000:]
    r = result(lab, name)
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
    table = os.path.join(lab["by_name"][name]["out"], "traffic.txt")
    with open(table) as f:
        text = f.read()
    assert "Retention" in text and "3-failback" in text
    show(request, f"\n[lab tier] {name} (seed {traffic['seed']}):\n{text}")
    conf_path = os.path.join(lab["by_name"][name]["out"], "keepalived-dir1.conf")
    with open(conf_path) as f:
        conf = f.read()
    assert "lvs_sync_daemon sync0 VI_1 id 51" in conf
    assert ("vrrp_notify_fifo_script" in conf) is hooks


def test_scenario_outside_repo_rc_and_results(lab, ext_dir):
    x = lab["by_name"]["exit7"]
    assert x["source"] == str(ext_dir / "exit7.sh")
    assert x["rc"] == 7
    assert result(lab, "exit7") == {"from": "outside"}


def test_scenario_time_limit_and_cleanup(lab):
    x = lab["by_name"]["hang"]
    assert x["rc"] == 124  # not 3: the previous scenario's netns was cleaned up
    assert x["limit_s"] == 3 and x["wall_s"] < 15


def test_single_scenario_exit_code_is_runner_exit_code(request, ext_dir, tmp_path):
    proc, wall = run_lab(["--out", str(tmp_path / "run"), str(ext_dir / "exit7.sh")], 300)
    show(request, f"\n[lab tier] single-scenario run: rc={proc.returncode} in {wall:.1f}s")
    assert proc.returncode == 7, proc.stdout[-3000:]
