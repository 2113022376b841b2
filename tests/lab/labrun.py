"""The lab runner behind `tests/lab/run`: real IPVS in a throwaway QEMU VM.

The host kernel has no IPVS, so every IPVS check runs in a VM that boots Debian's own kernel
(linux-image-amd64, fetched with `apt-get download`) with the host's `/` as its read-only root
(9p + tmpfs overlay). The guest therefore runs the host's keepalived, ipvsadm, iptables, nft and
python3, and this checkout.

One run = one fresh VM; the scenarios run in turn, as root, each in its own cgroup, with a time
limit; between two scenarios the guest kills every process the scenario started and deletes its
network namespaces and links (tests/lab/vm/stage2.sh).

Per-run directory (--out DIR, default a new /tmp/lvs-lab-XXXX; shared rw into the guest as /lab):
    DIR/console.log                  the whole serial console, with host timestamps
    DIR/summary.json                 accel, boot time, per scenario: name, source, rc, wall, limit
    DIR/results/NAME/                $LAB_OUT of scenario NAME: files it writes (result.json ...)
    DIR/results/NAME/console.log     that scenario's part of the console
    DIR/scenarios/NAME.sh            the copy that ran

Exit code: with one scenario, its exit code (124 when it hit its time limit); with several, 0 when
all passed, else 1. 125: the VM died or never reported the scenario; 2: usage or build error.

Artifacts (vmlinux, initrd.img) are cached in $LVS_LAB_CACHE (default /var/cache/lvs-hooks-lab),
in a directory named after the kernel package, its version and a hash of vm/build.sh + vm/init:
they are rebuilt only when one of those changes.

Python 3.9 compatible, standard library only.
"""

import argparse
import fcntl
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(os.path.dirname(HERE))
VM_DIR = os.path.join(HERE, "vm")
SCENARIO_DIR = os.path.join(HERE, "scenarios")
DEFAULT_CACHE = "/var/cache/lvs-hooks-lab"
DEFAULT_SCENARIO_TIMEOUT = 300
BOOT_ALLOWANCE = 90  # seconds for boot + power-off, added to the scenario limits for the run limit
RC_TIMEOUT = 124
RC_VM_FAILED = 125

# Env variables of the host passed on to the scenarios when set (the switches scenarios read).
PASSTHROUGH_ENV = ("LVS_HOOKS", "LVS_HOOKS_MODE")


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- build


# --kernel NAME: the Debian meta-package that names the kernel. 6.1 is Debian 12's own; 6.12 is
# the kernel EL10 directors run (Debian 12 ships it too, in bookworm itself).
KERNELS = {"6.1": "linux-image-amd64", "6.12": "linux-image-6.12-amd64"}


def kernel_package(kernel: str = "6.1") -> Tuple[str, str]:
    """(package, version) of the kernel that KERNELS[kernel] currently points at."""
    meta = KERNELS[kernel]
    dep = subprocess.run(
        ["apt-cache", "depends", meta], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", dep)
    if not m:
        raise RuntimeError(f"apt-cache knows no {meta} kernel (apt-get update?)")
    pkg = m.group(1)
    show = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", pkg], capture_output=True, text=True, check=True
    ).stdout
    v = re.search(r"^Version: (\S+)", show, re.M)
    return pkg, v.group(1) if v else "unknown"


def build_hash() -> str:
    h = hashlib.sha256()
    for name in ("build.sh", "init"):
        with open(os.path.join(VM_DIR, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:12]


def artifacts(cache: str, rebuild: bool = False, kernel: str = "6.1") -> str:
    """Directory holding vmlinux + initrd.img for the current kernel package; builds it if needed."""
    pkg, version = kernel_package(kernel)
    key = f"{pkg}_{version}_{build_hash()}"
    dest = os.path.join(cache, key)
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second runner waits and reuses
        ok = all(os.path.exists(os.path.join(dest, f)) for f in ("vmlinux", "initrd.img", "kver"))
        if ok and not rebuild:
            return dest
        if os.path.exists(dest):
            shutil.rmtree(dest)
        log(f"building VM artifacts for {pkg} {version} into {dest}")
        t0 = time.monotonic()
        tmp = dest + ".new"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        subprocess.run(["bash", os.path.join(VM_DIR, "build.sh"), tmp, pkg], check=True)
        os.rename(tmp, dest)  # complete or absent, never half-built
        log(f"built in {time.monotonic() - t0:.1f}s")
    return dest


# ------------------------------------------------------------------------------------------ run


def kvm_usable() -> bool:
    """KVM only where it boots a stock kernel: /dev/kvm usable, vmx/svm, and not PVM (kvm_pvm
    needs specially built guests; a stock kernel hangs at boot there)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or os.path.exists("/sys/module/kvm_pvm"):
        return False
    with open("/proc/cpuinfo") as f:
        return bool(re.search(r"\b(vmx|svm)\b", f.read()))


def scenario_limit(path: str, default: int) -> int:
    """A scenario may declare its own limit in its first lines: `# lab-timeout: 240`."""
    with open(path, errors="replace") as f:
        for _, line in zip(range(20), f):
            m = re.match(r"#\s*lab-timeout:\s*(\d+)", line)
            if m:
                return int(m.group(1))
    return default


def resolve_scenario(spec: str) -> str:
    """A path, or the name of a file under tests/lab/scenarios/ (with or without .sh)."""
    if os.path.isfile(spec):
        return os.path.abspath(spec)
    for cand in (os.path.join(SCENARIO_DIR, spec), os.path.join(SCENARIO_DIR, spec + ".sh")):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError(f"no scenario file {spec!r} (nor under {SCENARIO_DIR})")


def unique_names(paths: List[str]) -> List[str]:
    names: List[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(p))
        base = re.sub(r"\.sh$", "", base) or "scenario"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def write_manifest(run_dir: str, a: argparse.Namespace, names: List[str], limits: List[int],
                   env: List[str]) -> None:
    q = shlex.quote
    lines = [
        "# written by tests/lab/run; sourced by stage2.sh in the guest",
        f"LAB_PYTHON={q(a.python)}",
        f"LAB_PROJECT={q(PROJECT)}",
        f"LAB_DIR={q(HERE)}",
        f"LAB_LVS_HOOKS_CMD={q(a.lvs_hooks or '')}",
        "LAB_HOST_TMP=(" + " ".join(q(d) for d in host_tmp_dirs(a)) + ")",
        f"LAB_MODE={'shell' if a.shell else 'run'}",
        "LAB_SCENARIOS=(" + " ".join(q(n) for n in names) + ")",
        "LAB_TIMEOUTS=(" + " ".join(str(t) for t in limits) + ")",
        "LAB_ENV=(" + " ".join(q(e) for e in env) + ")",
    ]
    with open(os.path.join(run_dir, "manifest.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")


def host_tmp_dirs(a: argparse.Namespace) -> List[str]:
    """The top directories under the host's /tmp that the guest needs to see: the checkout, the
    interpreter (a virtualenv) and an --lvs-hooks command may live there (CI clones anywhere),
    but the guest mounts a fresh tmpfs on /tmp. They are shared read-only (9p "hosttmp") and
    mounted back at their own paths by stage2.sh."""
    dirs = []
    for path in (PROJECT, a.python, (shlex.split(a.lvs_hooks)[0] if a.lvs_hooks else "")):
        real = os.path.realpath(path) if path else ""
        for p in {path, real}:
            parts = p.split("/")
            if len(parts) > 2 and parts[1] == "tmp" and parts[2]:
                top = "/tmp/" + parts[2]
                if top not in dirs:
                    dirs.append(top)
    return dirs


def compile_bytecode(python: str) -> str:
    """The checkout's bytecode, written before the guest boots. The guest sees this tree
    read-only over 9p, so an interpreter that finds no .pyc compiles every module again in
    memory, at every start: each hook keepalived runs, each command a scenario runs. Under
    emulation that is seconds per process. Compiled by the guest's own interpreter (the .pyc
    names carry its version); a failure only costs time, so it is reported, not fatal."""
    t = time.monotonic()
    proc = subprocess.run([python, "-m", "compileall", "-q", os.path.join(PROJECT, "lvs_hooks"),
                           HERE], capture_output=True, text=True)
    took = f"{time.monotonic() - t:.1f}s"
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        return f"bytecode: compileall failed (rc {proc.returncode}, {took}): {tail[0]}"
    return f"bytecode: {PROJECT}/lvs_hooks and {HERE} compiled ({took})"


def smp(a: argparse.Namespace, accel: str) -> str:
    """The guest's CPUs: --smp, else up to 4. Debian 12's 6.12 under multi-threaded TCG oopses
    at boot on an int3 in enqueue_timer (live-patched kernel text across virtual CPUs, which
    TCG does not keep coherent; seen on 6.12.118, never on 6.1): one CPU there."""
    if a.smp:
        return str(a.smp)
    if a.kernel == "6.12" and accel == "tcg":
        return "1"
    return str(min(os.cpu_count() or 1, 4))


def qemu_command(art: str, run_dir: str, a: argparse.Namespace, accel: str) -> List[str]:
    acc = (["-accel", "kvm", "-cpu", "host"] if accel == "kvm"
           else ["-accel", "tcg,thread=multi", "-cpu", "max"])
    kargs = "console=ttyS0 panic=-1 " + ("ignore_loglevel" if a.verbose_kernel
                                          else "quiet loglevel=4")
    return [
        "qemu-system-x86_64", "-M", "q35", *acc, "-m", str(a.mem), "-smp", str(smp(a, accel)),
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", os.path.join(art, "vmlinux"), "-initrd", os.path.join(art, "initrd.img"),
        "-append", kargs,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={run_dir},mount_tag=lab,security_model=none",
        *(["-virtfs", "local,path=/tmp,mount_tag=hosttmp,security_model=none,readonly=on,"
           "multidevs=remap"] if host_tmp_dirs(a) else []),
    ]


class Console:
    """Streams the serial console with host timestamps, splits it per scenario, reads markers."""

    START = re.compile(r"LAB: scenario (\S+) start")
    # the guest's speed factor (vm/stage2.sh): LAB_SLOW as applied, and the measured ratio
    SLOW = re.compile(r"LAB: guest ready .*\bslow=([0-9.]+) calib=([0-9.]+)")
    END = re.compile(r"LAB: scenario (\S+) rc=(\d+) wall=([0-9.]+)s")

    def __init__(self, run_dir: str, t0: float, quiet: bool):
        self.run_dir, self.t0, self.quiet = run_dir, t0, quiet
        self.log = open(os.path.join(run_dir, "console.log"), "w")  # noqa: SIM115 (closed in close())
        self.current = None  # per-scenario log file
        self.results: Dict[str, Tuple[int, float]] = {}
        self.boot_s: Optional[float] = None
        self.slow = 1.0  # LAB_SLOW, once the guest has measured it: stretches the run's limit
        self.calib: Optional[float] = None
        self.done = False
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            self.line(raw.decode(errors="replace").rstrip("\r"))

    def line(self, text: str) -> None:
        stamped = f"[{time.monotonic() - self.t0:8.3f}] {text}"
        if not self.quiet or text.startswith("LAB: "):
            print(stamped, flush=True)
        self.log.write(stamped + "\n")
        self.log.flush()
        if self.current:
            self.current.write(stamped + "\n")
        m = self.START.search(text)
        if m:
            d = os.path.join(self.run_dir, "results", m.group(1))
            os.makedirs(d, exist_ok=True)
            self.current = open(os.path.join(d, "console.log"), "w")  # noqa: SIM115
            self.current.write(stamped + "\n")
        m = self.END.search(text)
        if m:
            self.results[m.group(1)] = (int(m.group(2)), float(m.group(3)))
            if self.current:
                self.current.close()
                self.current = None
        if "LAB: guest ready" in text and self.boot_s is None:
            self.boot_s = time.monotonic() - self.t0
            m = self.SLOW.search(text)
            if m:
                self.slow, self.calib = float(m.group(1)), float(m.group(2))
        if "LAB: all done" in text:
            self.done = True

    def close(self) -> None:
        if self.buf:
            self.line(self.buf.decode(errors="replace"))
            self.buf = b""
        if self.current:
            self.current.close()
        self.log.close()


def run_vm(cmd: List[str], con: Console, fixed: float, scaled: float, interactive: bool) -> bool:
    """Runs QEMU until it exits or the run limit, fixed + scaled x the guest's LAB_SLOW (known
    from its `guest ready` line, 1 until then: the scenarios' limits are stretched in the guest
    by the same factor); True when it hit the limit (and was killed)."""
    if interactive:
        return subprocess.run(cmd).returncode is None
    pr = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(pr.stdout, selectors.EVENT_READ)
    timed_out = False
    try:
        while True:
            limit = fixed + scaled * con.slow
            left = con.t0 + limit - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if sel.select(timeout=min(left, 1.0)):
                data = os.read(pr.stdout.fileno(), 65536)
                if not data:
                    break
                con.feed(data)
    finally:
        if timed_out or pr.poll() is None:
            if timed_out:
                log(f"RUN TIMEOUT after {limit:.0f}s: killing qemu (pid {pr.pid})")
            pr.kill()
        pr.wait()
        sel.close()
    return timed_out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="tests/lab/run",
        description="Run lab scenarios (bash scripts, as root) in one fresh QEMU VM with real IPVS.",
        epilog="Scenario results: DIR/results/NAME/ ($LAB_OUT in the guest); summary: "
               "DIR/summary.json. See tests/lab/README.md.")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="scenario file (any path) or name under tests/lab/scenarios/")
    p.add_argument("--out", metavar="DIR", help="per-run directory (default: new /tmp/lvs-lab-*)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="limit for the whole run (default: boot allowance + scenario limits)")
    p.add_argument("--scenario-timeout", type=int, default=DEFAULT_SCENARIO_TIMEOUT, metavar="S",
                   help="limit per scenario, unless it declares '# lab-timeout: S' (default %(default)s)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VAL",
                   help="environment variable for the scenarios (repeatable)")
    p.add_argument("--hooks", action="store_true",
                   help="same as -e LVS_HOOKS=1: scenarios wire lvs-hooks into keepalived")
    p.add_argument("--lvs-hooks", metavar="CMD", default=os.environ.get("LAB_LVS_HOOKS"),
                   help="command run as `lvs-hooks` in the guest (default: this checkout run by "
                        "the runner's python; env LAB_LVS_HOOKS)")
    p.add_argument("--python", default=os.environ.get("LAB_PYTHON") or sys.executable,
                   help="interpreter for the checkout and the lab helpers (default: this one; env "
                        "LAB_PYTHON)")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    p.add_argument("--mem", default="1024", help="guest memory in MiB (default %(default)s)")
    p.add_argument("--smp", default=None,
                   help="guest CPUs (default: up to 4; 1 for --kernel 6.12 under TCG)")
    p.add_argument("--cache", default=os.environ.get("LVS_LAB_CACHE") or DEFAULT_CACHE,
                   help="artifact cache (env LVS_LAB_CACHE, default %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the artifacts even if cached")
    p.add_argument("--kernel", choices=sorted(KERNELS), default="6.1",
                   help="the guest's kernel, Debian's package (default %(default)s)")
    p.add_argument("--build-only", action="store_true", help="build or check the artifacts, exit")
    p.add_argument("--shell", action="store_true", help="interactive shell in the guest")
    p.add_argument("--quiet", action="store_true",
                   help="print only LAB: lines (the full console is in DIR/console.log)")
    p.add_argument("--verbose-kernel", action="store_true")
    a = p.parse_args(argv)

    if not a.scenarios and not (a.build_only or a.shell):
        p.error("no scenario given")
    try:
        paths = [resolve_scenario(s) for s in a.scenarios]
    except FileNotFoundError as e:
        p.error(str(e))
    if a.lvs_hooks:
        exe = shlex.split(a.lvs_hooks)
        found = shutil.which(exe[0])
        if not found:
            p.error(f"--lvs-hooks: {exe[0]} not found")
        a.lvs_hooks = " ".join(shlex.quote(x) for x in [os.path.abspath(found)] + exe[1:])
    a.python = os.path.abspath(shutil.which(a.python) or a.python)
    for kv in a.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", kv):
            p.error(f"--env {kv!r}: expected KEY=VALUE")
    env = [f"{k}={os.environ[k]}" for k in PASSTHROUGH_ENV if k in os.environ]
    env += (["LVS_HOOKS=1"] if a.hooks else []) + a.env

    t_start = time.monotonic()
    try:
        art = artifacts(a.cache, a.rebuild, a.kernel)
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        log(f"build failed: {e}")
        return 2
    log(f"artifacts: {art} ({time.monotonic() - t_start:.1f}s)")
    if a.build_only:
        return 0
    log(compile_bytecode(a.python))

    run_dir = os.path.abspath(a.out) if a.out else tempfile.mkdtemp(prefix="lvs-lab-")
    os.makedirs(os.path.join(run_dir, "scenarios"), exist_ok=True)
    os.makedirs(os.path.join(run_dir, "results"), exist_ok=True)
    names = unique_names(paths)
    limits = [scenario_limit(pth, a.scenario_timeout) for pth in paths]
    for pth, name in zip(paths, names):
        shutil.copyfile(pth, os.path.join(run_dir, "scenarios", name + ".sh"))
    shutil.copyfile(os.path.join(VM_DIR, "stage2.sh"), os.path.join(run_dir, "stage2.sh"))
    write_manifest(run_dir, a, names, limits, env)

    accel = a.accel if a.accel != "auto" else ("kvm" if kvm_usable() else "tcg")
    # --timeout is the whole run's, as given; the default grows with the guest's LAB_SLOW
    fixed, scaled = ((a.timeout, 0.0) if a.timeout
                     else (BOOT_ALLOWANCE, float(sum(limits) + 10 * len(limits))))
    if a.shell:
        fixed, scaled = 10.0 ** 9, 0.0
    log(f"run dir {run_dir}; accel={accel}; scenarios: {' '.join(names) or '-'}; "
        f"run limit {fixed + scaled:.0f}s" + (" x LAB_SLOW" if scaled else ""))
    t0 = time.monotonic()
    con = Console(run_dir, t0, a.quiet)
    timed_out = run_vm(qemu_command(art, run_dir, a, accel), con, fixed, scaled, a.shell)
    con.close()
    total = time.monotonic() - t0

    rows = []
    for name, pth, limit in zip(names, paths, limits):
        rc, wall = con.results.get(name, (None, None))
        if rc is None:
            rc = RC_TIMEOUT if timed_out else RC_VM_FAILED
        rows.append({"name": name, "source": pth, "rc": rc, "wall_s": wall, "limit_s": limit,
                     "timed_out": rc == RC_TIMEOUT, "out": os.path.join(run_dir, "results", name)})
    # slow: LAB_SLOW, by which the guest stretched lab_wait's deadlines and each scenario's
    # limit (limit_s is the written one); calib: the measured ratio to the idle reference
    summary = {"accel": accel, "kernel": a.kernel, "smp": int(smp(a, accel)), "boot_s": con.boot_s,
               "slow": con.slow, "calib": con.calib, "total_s": round(total, 2),
               "run_timed_out": timed_out, "completed": con.done, "env": env,
               "scenarios": rows}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    boot = f"{con.boot_s:.1f}s" if con.boot_s is not None else "n/a"
    log(f"boot to guest ready {boot} (slow={con.slow:.2f}, calib={con.calib}), VM total "
        f"{total:.1f}s")
    for r in rows:
        wall = f"{r['wall_s']:.2f}s" if r["wall_s"] is not None else "n/a"
        print(f"LAB: scenario {r['name']} rc={r['rc']} wall={wall}", flush=True)
    log(f"results in {run_dir}/results/ (summary.json, console.log in {run_dir})")
    if len(rows) == 1:
        return rows[0]["rc"]
    return 0 if rows and all(r["rc"] == 0 for r in rows) else 1
