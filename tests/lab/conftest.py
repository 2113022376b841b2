"""The lab tier's session fixtures: two VM runs (tests/lab/run) that every lab test module reads.

The tier shards into two VMs that run at the same time, each one runner process with its own
--out directory, both started when the first lab fixture is requested:

- the 6.1 VM (Debian 12's kernel, `lab`): every scenario, in an order that keeps the timing
  comparisons away from the other VM (`SCENARIOS_61_BESIDE`, the gate, `SCENARIOS_61_ALONE`);
- the 6.12 VM (EL10's kernel line, `lab612`): a core set (`SCENARIOS_612`), then the README's
  quick start with the .deb (`quickstart`, on the kernel EL10 directors run); one virtual CPU
  (labrun.smp), about 12 minutes, done before the 6.1 VM reaches its gate. On the 6.1 VM's
  path the quick start cost its whole length (measured: the tier 2,142 s with it there).

The gate (`after-612`, a scenario written here) waits until the host has written
/lab/lab612.done into the 6.1 VM's run directory, which a thread does when the 6.12 runner
exits: busy-keeper, table-scale-1k against table-scale and churn compare timings inside the
6.1 VM, and with the 6.12 VM beside it the host's 2 cores carry 3 virtual CPUs.

`lab` waits for the 6.1 run, `lab612` for the 6.12 run: {"rc", "summary", "by_name", "out",
"output", "names", "wall_s"}. A run still going when the session ends is killed with its QEMU.
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
# 6.1, while the 6.12 VM runs beside it: scenarios that assert outcomes, not timings (their
# waits are lab_wait deadlines, stretched by the guest's LAB_SLOW). Long ones first.
SCENARIOS_61_BESIDE = ["smoke", "helpers", "seed000", "seed000-hooks", "takeover",
                       "takeover-hooks", "capture_sync", "reseed_core", "colocated", "failback3",
                       "handover", "ipv6", "ipv6-agent"]
# 6.1, after the gate, the VM alone on the host: figures compared within the run or with earlier
# runs (reseed rates, explain's predicted ends within 2 s, reload's keeper, busy-keeper's
# latency, table-scale-1k against table-scale, churn's 300 s).
SCENARIOS_61_ALONE = ["reseed_scale", "explain", "reload", "busy-keeper", "table-scale-1k",
                      "table-scale", "churn"]
GATE = "after-612"
GATE_FILE = "lab612.done"  # in the 6.1 VM's run directory, /lab in the guest
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
# The 6.12 VM takes about 7 minutes and the gate comes after about 10 of the 6.1 VM's: it waits
# only when the 6.12 VM is slow; at its deadline it fails (the test says so) and lets the rest run.
GATE_SCRIPT = f"""#!/bin/bash
# lab-timeout: 960
# The tier's gate (tests/lab/conftest.py): what follows compares timings, so it runs once the
# 6.12 VM, which shares the host's cores, is done. The host writes /lab/{GATE_FILE} then.
. "$LAB_DIR/lib.sh"
t0=$EPOCHREALTIME
if lab_wait 900 "the 6.12 VM done" test -e /lab/{GATE_FILE}; then done=true; else done=false; fi
lab_result_json result.json done=$done waited_s=$(lab_elapsed "$t0")
$done
"""


def runner_env():
    # the host's switches would change what the scenarios measure: each scenario sets its own
    return {k: v for k, v in os.environ.items()
            if k not in ("LVS_HOOKS", "LVS_HOOKS_MODE", "LVS_HOOKS_AGENT")}


def _run_lab(args, timeout):
    """One runner call to its end: (CompletedProcess, wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, RUN, "--quiet", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=runner_env())
    return proc, time.monotonic() - t0


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
    """One runner process in its own session (its QEMU with it: killed as a group)."""

    def __init__(self, label, out, opts, scenarios, t_tier):
        self.label, self.out, self.t_tier = label, str(out), t_tier
        self.args = [*opts, *scenarios]
        self.names = unique_names(scenarios)  # as the runner names them
        self.log_path = os.path.join(self.out, "runner.log")
        self.proc = None
        self.t0 = self.t_end = None
        self.result = None

    def start(self):
        os.makedirs(self.out, exist_ok=True)
        with open(self.log_path, "w") as log:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, RUN, "--quiet", "--out", self.out, *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=runner_env(), start_new_session=True)

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def slow(self):
        """The guest's LAB_SLOW once it printed it, else 1."""
        m = re.search(r"LAB: guest ready .*\bslow=([0-9.]+)", self.output())
        return float(m.group(1)) if m else 1.0

    def wait(self):
        """Until the runner exits, or RUN_LIMIT x LAB_SLOW from its start (then killed)."""
        while self.proc.poll() is None:
            left = self.t0 + RUN_LIMIT * self.slow() - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"{self.label} VM run still going after {RUN_LIMIT}s x LAB_SLOW: "
                            f"killed\n{self.output()[-3000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=min(left, 10))
        if self.t_end is None:
            self.t_end = time.monotonic()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def load(self, request):
        """The run's summary, read once, with its LAB: lines printed into the test log."""
        if self.result is not None:
            return self.result
        rc = self.wait()
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
                       "names": self.names, "wall_s": wall,
                       "by_name": {s["name"]: s for s in summary["scenarios"]}}
        return self.result


class LabRuns:
    """Both VM runs of the tier, started together (see the module's docstring)."""

    def __init__(self, tmp_path_factory, ext_dir):
        self.t0 = time.monotonic()
        out61 = tmp_path_factory.mktemp("lab-run")
        out612 = tmp_path_factory.mktemp("lab-run-612")
        (ext_dir / f"{GATE}.sh").write_text(GATE_SCRIPT)
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
            # last in the 6.12 VM, off the 6.1 VM's path (the module's docstring)
            quick = ["quickstart"]
        self.vm612 = VMRun("6.12", out612, env612, SCENARIOS_612 + quick, self.t0)
        self.vm612.start()
        scen61 = (SCENARIOS_61_BESIDE + [str(ext_dir / f"{GATE}.sh")]
                  + SCENARIOS_61_ALONE + [str(ext_dir / "exit7.sh"), str(ext_dir / "hang.sh")])
        self.vm61 = VMRun("6.1", out61, [], scen61, self.t0)
        self.vm61.start()
        # the gate's signal: written whatever the 6.12 run's outcome, once it has ended
        gate = os.path.join(str(out61), GATE_FILE)
        threading.Thread(target=self._open_gate, args=(gate,), daemon=True).start()

    def _open_gate(self, path):
        self.vm612.proc.wait()
        self.vm612.t_end = time.monotonic()  # its end, not when a test first asked for it
        with open(path, "w") as f:
            f.write(f"{time.monotonic() - self.t0:.1f}\n")

    def stop(self):
        for vm in (self.vm61, self.vm612):
            vm.kill()


@pytest.fixture(scope="session")
def ext_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("outside-repo")
    (d / "exit7.sh").write_text(EXIT7)
    (d / "hang.sh").write_text(HANG)
    return d


@pytest.fixture(scope="session")
def lab_runs(request, tmp_path_factory, ext_dir):
    runs = LabRuns(tmp_path_factory, ext_dir)
    request.addfinalizer(runs.stop)
    return runs


@pytest.fixture(scope="session")
def lab(request, lab_runs):
    """The 6.1 VM: every lab scenario but the quick start."""
    return lab_runs.vm61.load(request)


@pytest.fixture(scope="session")
def lab612(request, lab_runs):
    """The 6.12 VM: the core set (SCENARIOS_612) and the quick start with the .deb."""
    r = lab_runs.vm612.load(request)
    r["deb"], r["deb_s"], r["deb_error"] = lab_runs.deb, lab_runs.deb_s, lab_runs.deb_error
    return r


@pytest.fixture(scope="session")
def run_lab():
    """One more runner call, to its end: run_lab(args, timeout) -> (CompletedProcess, wall)."""
    return _run_lab
