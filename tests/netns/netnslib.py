"""netns tier helpers: a director is real keepalived (VRRP only) plus `lvs-hooks fifo` in a
network namespace, with its own lvs-hooks config, state and run directories under a tmp dir."""

import contextlib
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_counter = itertools.count()


def next_tag() -> str:
    """A namespace name prefix unique to this test process and call."""
    return f"lvh{os.getpid() % 100000}x{next(_counter)}"


def wait_for(cond: Callable[[], object], timeout: float, what: str, on_fail=None):
    """Poll `cond` until it is true; fail naming `what` (and dumping `on_fail()`) at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{on_fail()}" if on_fail else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(0.02)


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread (and the processes it starts) in `netns` (sockets made
    there stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
    script_user root
    vrrp_notify_fifo {fifo}
    vrrp_notify_fifo_script {fifo_script}
}}

vrrp_instance VI_1 {{
    state BACKUP
    interface {iface}
    virtual_router_id 51
    priority {priority}
    version 3
    advert_int 0.1
    unicast_src_ip {src}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        10.77.0.100/24
    }}
}}
"""

FIFO_SCRIPT = """\
#!/bin/sh
# keepalived appends the FIFO path.
LVS_HOOKS_LOG_STDERR=1 exec {python} -m lvs_hooks --config {config} fifo "$@" 2>>{log}
"""


class Director:
    """keepalived + `lvs-hooks fifo` in one namespace, everything under `root`."""

    def __init__(
        self, root: Path, netns: str, name: str, iface: str, src: str, peer: str, priority: int
    ):
        self.root = root / name
        self.root.mkdir(mode=0o700)
        self.netns = netns
        self.name = name
        self.state_dir = self.root / "state"
        self.run_dir = self.root / "run"
        self.config = self.root / "lvs-hooks.yaml"
        self.config.write_text(
            f"paths:\n  state_dir: {self.state_dir}\n  run_dir: {self.run_dir}\n"
        )
        self.fifo = self.root / "vrrp.fifo"
        self.hook_log = self.root / "lvs-hooks.log"
        self.keepalived_log = self.root / "keepalived.log"
        script = self.root / "fifo.sh"
        script.write_text(FIFO_SCRIPT.format(python=PYTHON, config=self.config, log=self.hook_log))
        script.chmod(0o755)
        self.conf = self.root / "keepalived.conf"
        self.conf.write_text(
            KEEPALIVED_CONF.format(
                name=name,
                fifo=self.fifo,
                fifo_script=script,
                iface=iface,
                priority=priority,
                src=src,
                peer=peer,
            )
        )
        self.proc: Optional[subprocess.Popen] = None

    # keepalived

    def start(self) -> None:
        with open(self.keepalived_log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "keepalived",
                    "-n",
                    "-l",
                    "-D",
                    "-P",
                    "-f",
                    str(self.conf),
                    "-p",
                    str(self.root / "keepalived.pid"),
                    "-r",
                    str(self.root / "vrrp.pid"),
                    "-c",
                    str(self.root / "checker.pid"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """A hard failure: SIGKILL keepalived and its VRRP child (not its scripts, which run in
        their own process groups and get SIGTERM from the kernel when keepalived dies)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """A clean stop: SIGTERM, as systemctl stop does."""
        self.proc.terminate()
        self.proc.wait(10)

    def hook_pids(self) -> List[int]:
        """lvs-hooks processes started for this director (found by its unique config path)."""
        pids = []
        needle = str(self.config).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in self.hook_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # lvs-hooks

    def lvs_hooks(self, *args: str) -> subprocess.Popen:
        """Start `lvs-hooks --config <ours> ARGS` in this director's network namespace; its log
        lines go to a file of their own (`.log_path`), not to a pipe that could fill up.

        setns() in the child rather than `ip netns exec`: fifty of those at once would each
        also make a mount namespace and remount /sys, which is not what is being tested.
        """
        env = dict(os.environ, LVS_HOOKS_LOG_STDERR="1")
        log_path = self.root / f"cli-{next(_counter)}.log"
        ns_fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [PYTHON, "-m", "lvs_hooks", "--config", str(self.config), *args],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=lambda: _setns(ns_fd),
                )
        finally:
            os.close(ns_fd)
        proc.log_path = log_path  # type: ignore[attr-defined]
        return proc

    def journal(self) -> List[dict]:
        try:
            text = (self.state_dir / "events.jsonl").read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def applied(self, name: str = "VI_1") -> List[dict]:
        """Transitions that ran (all their steps, some may have failed) for one instance."""
        return [
            r
            for r in self.journal()
            if r["event"]["name"] == name and r["outcome"] in ("done", "failed")
        ]

    def states(self, name: str = "VI_1") -> List[str]:
        return [r["event"]["state"] for r in self.applied(name)]

    def write_fifo(self, *lines: str) -> None:
        """Write lines into keepalived's FIFO as keepalived does (non-blocking, whole lines)."""
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, "".join(line + "\n" for line in lines).encode())
        finally:
            os.close(fd)

    def logs(self) -> str:
        out = []
        for p in (self.keepalived_log, self.hook_log):
            text = p.read_text(errors="replace") if p.exists() else "(none)"
            out.append(f"--- {self.name} {p.name} ---\n{text[-4000:]}")
        out.append(
            f"--- {self.name} journal ---\n"
            + "\n".join(
                f"{r['event']['state']} {r['event']['name']} {r['outcome']}" for r in self.journal()
            )
        )
        return "\n".join(out)
