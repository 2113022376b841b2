"""The lab tier's session fixtures: five VM runs (tests/lab/run) in two lanes, then one alone,
which every lab test module reads. They start when the collection ends, and the lab's tests run
last: the other tiers run while the lanes do (`pytest_collection_modifyitems`).

The host has 2 cores. Two lanes run side by side, each VM with one virtual CPU (`--smp 1`), so
no VM shares its core with another (a 2-CPU 6.1 VM beside the 6.12 VM made 3 virtual CPUs on 2
cores: its scenarios took 1.2 to 2.1 times their alone walls):

- lane 1, a 6.1 VM (Debian 12's kernel): `SCENARIOS_61`, then two scenarios from outside the
  repository (exit7, hang) that check the runner itself; then a run of exit7 alone (a
  one-scenario run's exit code is its scenario's);
- lane 2, the 6.12 VM (EL10's kernel line): the core set (`SCENARIOS_612`), then the README's
  quick start with the .deb (`quickstart`); then a second 6.1 VM with `SCENARIOS_61_LANE2`.

Once both lanes are done, a 6.1 VM with two virtual CPUs has the host to itself for
`SCENARIOS_61_ALONE`: the scenarios with large tables, which one CPU made far longer or
missed their own premises (the kernel's work on the table, the senders and the agents all on
that CPU). Measured on one CPU:
- table-scale: the bulk of 200,000 templates 438 s instead of 185, a snapshot 103 s, the
  reseed's latency 2.35 times table-scale-1k's (over the 2x the tier asserts);
- handover (10,000 templates): 376 s instead of 92-104;
- busy-keeper: a MASTER transition started 1,547 ms after keepalived's line (7-12 ms on two);
- churn: 139 of its 140 rounds late, a source back after 24.9 s, past the 16 s its premise
  allows.
table-scale-1k, table-scale's yardstick, runs in the same VM.

The lanes' lengths are balanced by hand from measured walls (tests/lab/README.md).

`lab` waits for the three 6.1 runs and is their union: {"summary", "by_name", "output",
"names", "runs"}, each run {"rc", "summary", "by_name", "out", "output", "names", "wall_s",
"t0", "t_end"}; `lab612` waits for the 6.12 run. A run still going when
the session ends is killed with its QEMU.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from labchecks import show
from labrun import unique_names

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(os.path.dirname(HERE))
RUN = os.path.join(HERE, "run")
# A hang guard per VM run, from its start, stretched by its guest's LAB_SLOW; the tier itself
# must stay well under it (measured: see the test log).
RUN_LIMIT = 2400

# The core set on 6.12: the keeper through a takeover and past the templates' lifetime, the
# never-synced TCP connection and fwmark repair, the agent's warm-up gate with three directors,
# and co-located directors' rules.
SCENARIOS_612 = ["smoke", "seed000-hooks", "takeover-hooks", "failback3", "colocated"]
# 6.1, lane 1: long ones first, so that a slow host shows in the first minutes.
SCENARIOS_61 = ["colocated", "explain", "failback3", "seed000-hooks", "ipv6-agent", "ipv6",
                "reseed_core", "takeover-hooks", "seed000", "takeover", "helpers",
                "capture_sync", "smoke"]
# 6.1, lane 2, after the 6.12 VM (about 810 s).
SCENARIOS_61_LANE2 = ["reload", "reseed_scale"]
# 6.1 alone, after both lanes, with two virtual CPUs (the module's docstring): busy-keeper's
# figure, the push of 10,000 templates, the 200,000-template takeover and its 1,000-template
# yardstick, and the churn, whose pace one CPU cannot keep.
SCENARIOS_61_ALONE = ["busy-keeper", "handover", "table-scale-1k", "table-scale", "churn"]
# busy-keeper: the MASTER line right after a keeper read twice with the large table (each flap
# waits for a read of its 100,000 lines; the scenario's default is 3). churn: 180 s (its default
# is 300), the check 90 s after the handover: that is where a former master's table was seen to
# keep templates its kernel had let go (fixed in table/store.py; 0 differ since).
ENV_61_ALONE = ["-e", "LAB_BUSY_FLAPS=2", "-e", "LAB_CHURN_S=180"]
QUICKSTART = os.path.join(HERE, "scenarios", "quickstart.sh")

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
def runner_env():
    # the host's switches would change what the scenarios measure: each scenario sets its own
    return {k: v for k, v in os.environ.items()
            if k not in ("LVS_HOOKS", "LVS_HOOKS_MODE", "LVS_HOOKS_AGENT")}


def build_deb(dest_dir):
    """The .deb of this checkout, built once per session (packaging/build-deb prints its path
    on its last stdout line), copied into the 6.1 VM's run directory: the guest's /tmp is its
    own, the run directory is the guest's /lab. Returns the path in the guest."""
    build = os.path.join(dest_dir, "build")
    t0 = time.monotonic()
    proc = subprocess.run([os.path.join(PROJECT, "packaging", "build-deb"), "--out", build,
                           "--no-lintian"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"packaging/build-deb failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    deb = proc.stdout.strip().splitlines()[-1]
    return deb, time.monotonic() - t0


class VMRun:
    """One runner process in its own session (its QEMU with it: killed as a group), run to its
    end by its lane's thread (`run`); the fixtures `load` it."""

    def __init__(self, label, out, opts, scenarios, t_tier, smp=1):
        self.label, self.out, self.t_tier = label, str(out), t_tier
        self.args = [*opts, "--smp", str(smp), *scenarios]
        self.names = unique_names(scenarios)  # as the runner names them
        self.log_path = os.path.join(self.out, "runner.log")
        self.proc = None
        self.t0 = self.t_end = None
        self.killed = None  # why the hang guard killed it
        self.finished = threading.Event()
        self.result = None

    def run(self, stopping):
        """Start the runner and wait for its end, or RUN_LIMIT x LAB_SLOW from its start
        (then killed). Never started once the session is `stopping`."""
        try:
            if stopping.is_set():
                self.killed = "not started: the session was ending"
                return
            os.makedirs(self.out, exist_ok=True)
            with open(self.log_path, "w") as log:
                self.t0 = time.monotonic()
                self.proc = subprocess.Popen(
                    [sys.executable, RUN, "--quiet", "--out", self.out, *self.args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=runner_env(), start_new_session=True)
            if stopping.is_set():  # stop() ran while it started: its QEMU must not outlive us
                self.kill()
            while self.proc.poll() is None:
                left = self.t0 + RUN_LIMIT * self.slow() - time.monotonic()
                if left <= 0:
                    self.killed = f"still going after {RUN_LIMIT}s x LAB_SLOW: killed"
                    self.kill()
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=min(left, 10))
        except Exception as e:  # its lane goes on; the fixture says why this run has no result
            self.killed = f"could not run: {type(e).__name__}: {e}"
            self.kill()
        finally:
            self.t_end = time.monotonic()
            self.finished.set()

    def output(self):
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def slow(self):
        """The guest's LAB_SLOW once it printed it, else 1."""
        m = re.search(r"LAB: guest ready .*\bslow=([0-9.]+)", self.output())
        return float(m.group(1)) if m else 1.0

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def load(self, request):
        """The run's summary, read once, with its LAB: lines printed into the test log."""
        if self.result is not None:
            return self.result
        self.finished.wait()
        if self.killed:
            pytest.fail(f"{self.label} VM run {self.killed}\n{self.output()[-3000:]}")
        rc = self.proc.returncode
        output = self.output()
        wall = self.t_end - self.t0
        lines = [ln for ln in output.splitlines() if ln.startswith(("LAB: scenario", "[lab]"))]
        show(request, f"\n[lab tier] {self.label} VM, {len(self.names)} scenarios, "
             f"{wall:.1f}s (started {self.t0 - self.t_tier:.1f}s, done "
             f"{self.t_end - self.t_tier:.1f}s into the tier; slow={self.slow():.2f}):\n  "
             + "\n  ".join(lines))
        summary_path = os.path.join(self.out, "summary.json")
        if not os.path.exists(summary_path):
            pytest.fail(f"{self.label}: runner wrote no summary (rc {rc}):\n{output[-3000:]}")
        with open(summary_path) as f:
            summary = json.load(f)
        self.result = {"rc": rc, "summary": summary, "out": self.out, "output": output,
                       "names": self.names, "wall_s": wall, "t0": self.t0 - self.t_tier,
                       "t_end": self.t_end - self.t_tier,
                       "by_name": {s["name"]: s for s in summary["scenarios"]}}
        return self.result


class LabRuns:
    """The tier's VM runs in their two lanes (see the module's docstring)."""

    def __init__(self, tmp_path_factory, ext_dir):
        self.t0 = time.monotonic()
        self.ext_dir = ext_dir
        self.stopping = threading.Event()
        out61 = tmp_path_factory.mktemp("lab-run")
        out612 = tmp_path_factory.mktemp("lab-run-612")
        out61b = tmp_path_factory.mktemp("lab-run-lane2")
        out61s = tmp_path_factory.mktemp("lab-run-alone")
        env612 = ["--kernel", "6.12"]
        self.deb, self.deb_s, self.deb_error = None, None, None
        quick = []
        if os.path.exists(QUICKSTART):
            try:
                deb, self.deb_s = build_deb(str(tmp_path_factory.mktemp("deb")))
                os.makedirs(os.path.join(out612, "pkg"), exist_ok=True)
                shutil.copyfile(deb, os.path.join(out612, "pkg", os.path.basename(deb)))
                self.deb = "/lab/pkg/" + os.path.basename(deb)
                env612 += ["-e", f"LAB_DEB={self.deb}"]
            except (RuntimeError, OSError, IndexError, subprocess.TimeoutExpired) as e:
                # the scenario runs without LAB_DEB and says so; the other scenarios still run
                self.deb_error = str(e)
            quick = ["quickstart"]
        self.vm61 = VMRun("6.1", out61, [], SCENARIOS_61 + [str(ext_dir / "exit7.sh"),
                                                            str(ext_dir / "hang.sh")], self.t0)
        self.vm612 = VMRun("6.12", out612, env612, SCENARIOS_612 + quick, self.t0)
        self.vm61b = VMRun("6.1 (lane 2)", out61b, [], SCENARIOS_61_LANE2, self.t0)
        # the runner with one scenario: its exit code is the scenario's (lane 1 ends first)
        self.single = VMRun("6.1 (one scenario)", tmp_path_factory.mktemp("lab-run-single"), [],
                            [str(ext_dir / "exit7.sh")], self.t0)
        self.vm61s = VMRun("6.1 (alone)", out61s, ENV_61_ALONE, SCENARIOS_61_ALONE, self.t0,
                           smp=2)
        self.all = (self.vm61, self.single, self.vm612, self.vm61b, self.vm61s)
        threading.Thread(target=self._run, daemon=True).start()

    def _run_lane(self, vms):
        for vm in vms:
            vm.run(self.stopping)

    def _run(self):
        lanes = [threading.Thread(target=self._run_lane, args=(lane,), daemon=True)
                 for lane in ([self.vm61, self.single], [self.vm612, self.vm61b])]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
        self.vm61s.run(self.stopping)

    def stop(self):
        self.stopping.set()
        for vm in self.all:
            vm.kill()


def union(runs):
    """One view of several runs of the same kernel: their scenarios by name, their output."""
    by_name = {}
    for r in runs:
        by_name.update(r["by_name"])
    scenarios = [x for r in runs for x in r["summary"]["scenarios"]]
    return {"runs": runs, "by_name": by_name,
            "summary": {**runs[0]["summary"], "scenarios": scenarios,
                        "completed": all(r["summary"]["completed"] for r in runs)},
            "names": [n for r in runs for n in r["names"]],
            "output": "\n".join(r["output"] for r in runs)}


RUNS = pytest.StashKey()  # the LabRuns started at the end of the collection


def _write_ext_dir(factory):
    d = factory.mktemp("outside-repo")
    (d / "exit7.sh").write_text(EXIT7)
    (d / "hang.sh").write_text(HANG)
    return d


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they deselect
def pytest_collection_modifyitems(session, config, items):
    """The lab tier runs last and its VMs start now, so that the other tiers (about 3.5 min on
    an idle host) run while the lanes do instead of after the whole tier. Where the lab cannot
    run (no root, no QEMU), nothing starts: its tests fail or skip in tests/conftest.py."""
    lab = [i for i in items if i.get_closest_marker("lab")]
    if not lab or config.option.collectonly:
        return
    items[:] = [i for i in items if not i.get_closest_marker("lab")] + lab
    if os.geteuid() == 0 and shutil.which("qemu-system-x86_64"):
        factory = config._tmp_path_factory  # what the tmp_path_factory fixture returns
        runs = LabRuns(factory, _write_ext_dir(factory))
        config.stash[RUNS] = runs
        config.add_cleanup(runs.stop)


@pytest.fixture(scope="session")
def lab_runs(request, tmp_path_factory):
    runs = request.config.stash.get(RUNS, None)
    if runs is None:  # not started at the collection's end (a lab test asked for by itself)
        runs = request.config.stash[RUNS] = LabRuns(tmp_path_factory,
                                                    _write_ext_dir(tmp_path_factory))
        request.addfinalizer(runs.stop)
    return runs


@pytest.fixture(scope="session")
def ext_dir(lab_runs):
    return lab_runs.ext_dir


@pytest.fixture(scope="session")
def lab(request, lab_runs):
    """The three 6.1 VMs, as one: every lab scenario but the quick start."""
    return union([lab_runs.vm61.load(request), lab_runs.vm61b.load(request),
                  lab_runs.vm61s.load(request)])


@pytest.fixture(scope="session")
def lab612(request, lab_runs):
    """The 6.12 VM: the core set (SCENARIOS_612) and the quick start with the .deb."""
    r = lab_runs.vm612.load(request)
    r["deb"], r["deb_s"], r["deb_error"] = lab_runs.deb, lab_runs.deb_s, lab_runs.deb_error
    return r
