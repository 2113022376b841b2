"""Loop-protection rules against the real firewall tools, each test in fresh network namespaces.

Backends: iptables-legacy (where installed), iptables-nft, nft. The test process enters the
director's namespace itself (setns on its own thread) and calls lvs_hooks.rules directly: the
tools it runs inherit the namespace, and a thousand swaps cost no interpreter starts.

- golden listings after apply / swap / remove, the user's rules (and chains, and nft table)
  untouched throughout;
- a refused batch leaves the rules from before;
- verify names drift, apply heals it;
- 1,000 role swaps while a packet generator sends to the VIP: every packet is counted by
  exactly one rule of the old or of the new role (the role chains are never rewritten by a swap,
  so their counters add up over the whole run), packets from the peer director are never left
  to IPVS, and the same measurement catches a non-atomic swap;
- the CLI's exit codes, and a peer MAC learned from the neighbour table.
"""

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from netnslib import IN_CI, inside, next_tag, sh

from lvs_hooks.config import parse_config
from lvs_hooks.errors import FirewallError
from lvs_hooks.rules.manager import RulesManager
from lvs_hooks.rules.model import Rule, RuleSet, build_rule_set

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
PYTHON = sys.executable

VIP = "10.99.0.100"
VIP6 = "fd99::100"
D_ADDR = "10.99.0.1"
S_ADDR = "10.99.0.2"
PEER_MAC = "02:00:00:00:00:02"  # a peer director that does not exist: frames are forged
CLIENT_MAC = "02:00:00:00:00:0c"
PORT_REDIRECT = 6000
PORT_FWMARK = 5000

BACKENDS = ["iptables-legacy", "iptables-nft", "nft"]


def _require_tools(backend: str) -> None:
    tools = {"iptables-legacy": "iptables-legacy-restore", "iptables-nft": "iptables-nft-restore"}
    needed = ["nft", tools.get(backend, "nft")]
    missing = [t for t in needed if not shutil.which(t)]
    if not missing:
        return
    # iptables-legacy is tested where it is installed; nft and iptables-nft are required.
    if IN_CI and backend != "iptables-legacy":
        pytest.fail(f"netns test cannot run in CI: {', '.join(missing)} not installed")
    pytest.skip(f"netns tier: needs {', '.join(missing)}")


# ------------------------------------------------------------------------------ namespaces

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))




def run_in(netns: str, *cmd: str, check: bool = True, stdin: str = None) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], input=stdin, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {netns}: rc {proc.returncode}: {proc.stderr}")
    return proc.stdout


@pytest.fixture
def pair():
    """Director D and sender S joined by a veth (D dd0 10.99.0.1/16, S ss0 10.99.0.2/16); the
    VIPs on D's lo. Returns (D, S, D's MAC, S's MAC)."""
    tag = next_tag()
    d, s = f"{tag}d", f"{tag}s"
    made: List[str] = []
    try:
        for ns in (d, s):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "-n", d, "link", "add", "dd0", "type", "veth", "peer", "name", "ss0", "netns", s)
        batch_d = [
            "link set lo up",
            f"addr add {VIP}/32 dev lo",
            f"addr add {VIP6}/128 dev lo",
            f"addr add {D_ADDR}/16 dev dd0",
            "link set dd0 up",
        ]
        batch_s = ["link set lo up", f"addr add {S_ADDR}/16 dev ss0", "link set ss0 up"]
        subprocess.run(["ip", "-n", d, "-b", "-"], input="\n".join(batch_d), check=True, text=True)
        subprocess.run(["ip", "-n", s, "-b", "-"], input="\n".join(batch_s), check=True, text=True)
        for k in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
            run_in(d, "sysctl", "-qw", f"{k}=0")
        run_in(d, "sysctl", "-qw", "net.ipv4.conf.dd0.rp_filter=0")
        with inside(d):
            d_mac = _link_mac("dd0")
        with inside(s):
            s_mac = _link_mac("ss0")
        yield d, s, d_mac, s_mac
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _link_mac(ifname: str) -> str:
    out = subprocess.run(
        ["ip", "-j", "link", "show", ifname], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)[0]["address"]


# ------------------------------------------------------------------------------ config


def make_config(tmp_path: Path, backend: str, services: str, peers: str = "") -> object:
    text = f"""\
paths:
  state_dir: {tmp_path}/state
  run_dir: {tmp_path}/run
rules:
  backend: {backend}
{peers or f'  peer_macs: ["{PEER_MAC}"]'}
  services:
{services}
"""
    (tmp_path / "lvs-hooks.yaml").write_text(text)
    return parse_config(text)


GOLDEN_SERVICES = f"""\
    - {{vip: {VIP}, port: {PORT_FWMARK}, protocol: udp, mode: fwmark, fwmark: 1}}
    - {{vip: {VIP}, port: 443, protocol: tcp, mode: redirect}}
    - {{vip: "{VIP6}", port: 53, protocol: udp, mode: redirect}}
    - {{vip: {VIP}, port: 80, protocol: tcp, mode: none}}"""


# ------------------------------------------------------------------------------ listings

_COUNTS = re.compile(r"\[\d+:\d+\]")
_BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
_XT_TABLES = {"filter", "nat", "mangle", "raw", "security"}


def _save(backend: str, family: int) -> str:
    tool = ("iptables" if family == 4 else "ip6tables") + backend[len("iptables") :] + "-save"
    return subprocess.run([tool], capture_output=True, text=True, check=True).stdout


def _save_lines(backend: str):
    """(family, table, line) of iptables-save output, counters out."""
    for family in (4, 6):
        table = None
        for line in _save(backend, family).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith((":", "-A")):
                yield family, table, _COUNTS.sub("", line).strip()


def ours_listing(backend: str) -> str:
    """Our chains and jumps as the kernel has them (counters out): the golden listing."""
    if backend == "nft":
        proc = subprocess.run(
            ["nft", "list", "table", "inet", "lvs_hooks"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return ""
        return re.sub(r"counter packets \d+ bytes \d+", "counter", proc.stdout).strip()
    out = []
    for family, table, line in _save_lines(backend):
        if "LVS-HOOKS-" in line:
            out.append((family, table, line))
    # legacy lists tables in the order they were made, nft alphabetically: by table, stably
    out.sort(key=lambda x: (x[0], x[1]))
    return "\n".join(f"v{f} {t} {line}" for f, t, line in out)


def user_state(backend: str) -> List[str]:
    """Everything of the user's: rules and chains (iptables), other nft tables."""
    state = []
    flavours = [backend] if backend != "nft" else ["iptables-nft"]
    for flavour in flavours:
        for family, table, line in _save_lines(flavour):
            if "LVS-HOOKS-" in line:
                continue
            if line.startswith(":") and line[1:].split()[0] in _BUILTIN:
                continue
            state.append(f"{flavour} v{family} {table} {line}")
    text = subprocess.run(
        ["nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    blocks = re.findall(r"^table (\S+ \S+) \{\n(.*?)^\}", text, re.S | re.M)
    for name, body in blocks:
        # iptables-nft's tables are compared above, ours is the golden listing
        family, _, tname = name.partition(" ")
        if name == "inet lvs_hooks" or (family in ("ip", "ip6") and tname in _XT_TABLES):
            continue
        state.append(f"nft table {name}:\n{body}")
    return sorted(state)


def add_user_rules(backend: str) -> None:
    """Rules of the user's own in the tables and hooks ours use."""
    flavour = backend if backend != "nft" else "iptables-nft"
    for family in (4, 6):
        ipt = ("iptables" if family == 4 else "ip6tables") + flavour[len("iptables") :]
        for args in (
            [
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "22",
                "-j",
                "MARK",
                "--set-mark",
                "7",
            ],
            ["-t", "nat", "-N", "USER-CHAIN"],
            [
                "-t",
                "nat",
                "-A",
                "USER-CHAIN",
                "-p",
                "tcp",
                "--dport",
                "8080",
                "-j",
                "REDIRECT",
                "--to-ports",
                "80",
            ],
            ["-t", "nat", "-A", "PREROUTING", "-j", "USER-CHAIN"],
        ):
            subprocess.run([ipt, *args], check=True, capture_output=True)
    nft = """
table inet user {
    chain pre {
        type filter hook prerouting priority -150; policy accept;
        tcp dport 22 counter
    }
}
"""
    subprocess.run(["nft", "-f", "-"], input=nft, check=True, text=True, capture_output=True)


# The golden listings: what `rules apply` leaves in the kernel. Both iptables flavours print
# the same text. Rule ids are hashes of what each rule does; the comments carry them.

GOLDEN_IPTABLES_BACKUP = """\
v4 mangle :LVS-HOOKS-MARK -
v4 mangle -A PREROUTING -j LVS-HOOKS-MARK
v4 mangle -A LVS-HOOKS-MARK -d 10.99.0.100/32 -p udp -m udp --dport 5000 -m mac --mac-source 02:00:00:00:00:02 -m comment --comment "lvs-hooks b1fc329f fwmark 1 udp 10.99.0.100:5000 from peer 02:00:00:00:00:02" -j RETURN
v4 mangle -A LVS-HOOKS-MARK -d 10.99.0.100/32 -p udp -m udp --dport 5000 -m comment --comment "lvs-hooks 0ae1ebca fwmark 1 udp 10.99.0.100:5000" -j MARK --set-xmark 0x1/0xffffffff
v4 nat :LVS-HOOKS-REDIRECT -
v4 nat :LVS-HOOKS-REDIRECT-BACKUP -
v4 nat :LVS-HOOKS-REDIRECT-MASTER -
v4 nat -A PREROUTING -j LVS-HOOKS-REDIRECT
v4 nat -A LVS-HOOKS-REDIRECT -j LVS-HOOKS-REDIRECT-BACKUP
v4 nat -A LVS-HOOKS-REDIRECT-BACKUP -d 10.99.0.100/32 -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "lvs-hooks d95fa005 redirect tcp 10.99.0.100:443 backup" -j REDIRECT
v4 nat -A LVS-HOOKS-REDIRECT-MASTER -d 10.99.0.100/32 -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -m mac --mac-source 02:00:00:00:00:02 -m comment --comment "lvs-hooks 0bcc8482 redirect tcp 10.99.0.100:443 from peer 02:00:00:00:00:02" -j REDIRECT
v4 nat -A LVS-HOOKS-REDIRECT-MASTER -d 10.99.0.100/32 -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment "lvs-hooks aa33d198 redirect tcp 10.99.0.100:443 master: to IPVS" -j RETURN
v6 nat :LVS-HOOKS-REDIRECT -
v6 nat :LVS-HOOKS-REDIRECT-BACKUP -
v6 nat :LVS-HOOKS-REDIRECT-MASTER -
v6 nat -A PREROUTING -j LVS-HOOKS-REDIRECT
v6 nat -A LVS-HOOKS-REDIRECT -j LVS-HOOKS-REDIRECT-BACKUP
v6 nat -A LVS-HOOKS-REDIRECT-BACKUP -d fd99::100/128 -p udp -m udp --dport 53 -m comment --comment "lvs-hooks 7a23a2d4 redirect udp [fd99::100]:53 backup" -j REDIRECT
v6 nat -A LVS-HOOKS-REDIRECT-MASTER -d fd99::100/128 -p udp -m udp --dport 53 -m mac --mac-source 02:00:00:00:00:02 -m comment --comment "lvs-hooks fc54ff1d redirect udp [fd99::100]:53 from peer 02:00:00:00:00:02" -j REDIRECT
v6 nat -A LVS-HOOKS-REDIRECT-MASTER -d fd99::100/128 -p udp -m udp --dport 53 -m comment --comment "lvs-hooks a12ec708 redirect udp [fd99::100]:53 master: to IPVS" -j RETURN"""

GOLDEN_NFT_BACKUP = """\
table inet lvs_hooks {
	chain mark_prerouting {
		type filter hook prerouting priority mangle - 10; policy accept;
		ip daddr 10.99.0.100 udp dport 5000 ether saddr 02:00:00:00:00:02 counter return comment "lvs-hooks b1fc329f fwmark 1 udp 10.99.0.100:5000 from peer 02:00:00:00:00:02"
		ip daddr 10.99.0.100 udp dport 5000 counter meta mark set 0x00000001 comment "lvs-hooks 0ae1ebca fwmark 1 udp 10.99.0.100:5000"
	}

	chain redirect_prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		jump redirect_backup
	}

	chain redirect_master {
		ip daddr 10.99.0.100 tcp dport 443 tcp flags syn / fin,syn,rst,ack ether saddr 02:00:00:00:00:02 counter redirect comment "lvs-hooks 0bcc8482 redirect tcp 10.99.0.100:443 from peer 02:00:00:00:00:02"
		ip daddr 10.99.0.100 tcp dport 443 tcp flags syn / fin,syn,rst,ack counter return comment "lvs-hooks aa33d198 redirect tcp 10.99.0.100:443 master: to IPVS"
		ip6 daddr fd99::100 udp dport 53 ether saddr 02:00:00:00:00:02 counter redirect comment "lvs-hooks fc54ff1d redirect udp [fd99::100]:53 from peer 02:00:00:00:00:02"
		ip6 daddr fd99::100 udp dport 53 counter return comment "lvs-hooks a12ec708 redirect udp [fd99::100]:53 master: to IPVS"
	}

	chain redirect_backup {
		ip daddr 10.99.0.100 tcp dport 443 tcp flags syn / fin,syn,rst,ack counter redirect comment "lvs-hooks d95fa005 redirect tcp 10.99.0.100:443 backup"
		ip6 daddr fd99::100 udp dport 53 counter redirect comment "lvs-hooks 7a23a2d4 redirect udp [fd99::100]:53 backup"
	}
}"""


def golden(backend: str, role: str) -> str:
    if backend == "nft":
        return GOLDEN_NFT_BACKUP.replace("jump redirect_backup", f"jump redirect_{role}")
    return GOLDEN_IPTABLES_BACKUP.replace(
        "-j LVS-HOOKS-REDIRECT-BACKUP\n", f"-j LVS-HOOKS-REDIRECT-{role.upper()}\n"
    )


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_swap_remove_golden_and_user_rules_untouched(pair, tmp_path, backend):
    _require_tools(backend)
    d, _s, _dm, _sm = pair
    cfg = make_config(tmp_path, backend, GOLDEN_SERVICES)
    with inside(d):
        add_user_rules(backend)
        before = user_state(backend)
        assert before, "the user's rules must be there to be left alone"
        mgr = RulesManager(cfg)

        first = mgr.apply("backup")
        assert first["changes"] and first["rules"] == 8
        assert ours_listing(backend) == golden(backend, "backup")
        assert user_state(backend) == before

        again = mgr.apply("fault")  # FAULT protects as BACKUP: nothing to change
        assert again["changes"] == []
        assert ours_listing(backend) == golden(backend, "backup")

        swap = mgr.apply("master")
        # a swap rewrites the pointer(s) only: one per family for iptables, one chain for nft
        assert all("point" in c for c in swap["changes"]), swap["changes"]
        assert len(swap["changes"]) == (1 if backend == "nft" else 2)
        assert ours_listing(backend) == golden(backend, "master")
        assert user_state(backend) == before
        assert mgr.verify()["ok"] and mgr.verify("master")["ok"]
        assert not mgr.verify("backup")["ok"]

        mgr.apply("backup")
        assert ours_listing(backend) == golden(backend, "backup")

        gone = mgr.remove()
        assert gone["changes"]
        assert ours_listing(backend) == ""
        assert user_state(backend) == before
        assert mgr.remove()["changes"] == []  # nothing left to remove


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_batch_leaves_the_rules_from_before(pair, tmp_path, backend):
    _require_tools(backend)
    d, _s, _dm, _sm = pair
    cfg = make_config(tmp_path, backend, GOLDEN_SERVICES)
    with inside(d):
        mgr = RulesManager(cfg)
        mgr.apply("backup")
        good = ours_listing(backend)
        assert good == golden(backend, "backup")
        backend_obj = mgr.backend
        ruleset = build_rule_set(mgr.services, [PEER_MAC])
        # The mark chain changes (a different mark: first table), and the redirect chains get
        # a rule no tool accepts (second table): the whole change must be refused.
        bogus = Rule(
            "redirect_backup", 4, VIP, "bogus", 0, None, "redirect", note="refused by the tool"
        )
        marks = tuple(
            Rule(
                r.chain,
                r.family,
                r.daddr,
                r.protocol,
                r.dport,
                r.src_mac,
                r.action,
                r.value + 1 if r.action == "mark" else r.value,
                r.note,
            )
            for r in ruleset.mark
        )
        bad = RuleSet(marks, ruleset.redirect_master, ruleset.redirect_backup + (bogus,))
        plans = backend_obj.plan(bad, "master", backend_obj.read((4, 6)), {})
        assert len(plans) >= 2 if backend != "nft" else len(plans) == 1
        with pytest.raises(FirewallError) as e:
            backend_obj.send(plans)
        assert "bogus" in e.value.format_message() or "refused" in e.value.format_message()
        assert ours_listing(backend) == good
        # and the manager still finds everything in place
        assert mgr.verify("backup")["ok"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_verify_names_drift_and_apply_heals_it(pair, tmp_path, backend):
    _require_tools(backend)
    d, _s, _dm, _sm = pair
    cfg = make_config(tmp_path, backend, GOLDEN_SERVICES)
    with inside(d):
        mgr = RulesManager(cfg)
        mgr.apply("master")
        assert mgr.verify()["ok"]
        if backend == "nft":
            sh("nft", "flush", "chain", "inet", "lvs_hooks", "redirect_backup")
            sh(
                "nft",
                "add",
                "rule",
                "inet",
                "lvs_hooks",
                "mark_prerouting",
                "tcp",
                "dport",
                "1",
                "counter",
            )
        else:
            ipt = "iptables" + backend[len("iptables") :]
            sh(ipt, "-t", "nat", "-D", "PREROUTING", "-j", "LVS-HOOKS-REDIRECT")
            sh(ipt, "-t", "mangle", "-A", "LVS-HOOKS-MARK", "-p", "tcp", "--dport", "1")
        report = mgr.verify()
        assert not report["ok"]
        assert report["role"] == "master"
        assert len(report["drift"]) == 2, report["drift"]
        mgr.apply("master")
        assert mgr.verify()["ok"]
        assert ours_listing(backend) == golden(backend, "master")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_swap_also_heals_drift_and_survives_a_missing_role_chain(pair, tmp_path, backend):
    """A swap sends the pointer alone when the rest was in place at the last apply; what the
    read-back finds amiss after it, or a refused swap, falls back to a planned batch."""
    _require_tools(backend)
    d, _s, _dm, _sm = pair
    cfg = make_config(tmp_path, backend, GOLDEN_SERVICES)
    ipt = "iptables" + backend[len("iptables") :]
    with inside(d):
        mgr = RulesManager(cfg)
        mgr.apply("master")
        # drift the swap itself does not repair: a foreign rule in the mark chain
        if backend == "nft":
            sh("nft", "add", "rule", "inet", "lvs_hooks", "mark_prerouting", "tcp", "dport", "1")
        else:
            sh(ipt, "-t", "mangle", "-A", "LVS-HOOKS-MARK", "-p", "tcp", "--dport", "1")
        r = mgr.apply("backup")
        assert any("mark" in c.lower() for c in r["changes"]), r["changes"]
        assert ours_listing(backend) == golden(backend, "backup")
        # the chain the next swap points at is gone: the pointer batch is refused
        if backend == "nft":
            sh("nft", "delete", "chain", "inet", "lvs_hooks", "redirect_master")
        else:
            sh(ipt, "-t", "nat", "-F", "LVS-HOOKS-REDIRECT-MASTER")
            sh(ipt, "-t", "nat", "-X", "LVS-HOOKS-REDIRECT-MASTER")
        r = mgr.apply("master")
        assert any("MASTER" in c or "redirect_master" in c for c in r["changes"]), r["changes"]
        # the same rules; a chain made again may be listed in another place
        assert sorted(ours_listing(backend).splitlines()) == sorted(
            golden(backend, "master").splitlines()
        )
        assert mgr.verify()["ok"]


def test_cli_exit_codes(pair, tmp_path):
    _require_tools("nft")
    d, _s, _dm, _sm = pair
    make_config(tmp_path, "nft", GOLDEN_SERVICES)
    cfg_path = str(tmp_path / "lvs-hooks.yaml")
    env = dict(os.environ, PYTHONPATH=str(PROJECT))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                d,
                PYTHON,
                "-m",
                "lvs_hooks",
                "--config",
                cfg_path,
                "rules",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
        )

    assert cli("verify").returncode == 2  # no role applied yet, none named
    r = cli("apply", "--role", "backup", "--dry-run")
    assert r.returncode == 0 and '"add"' in r.stdout
    assert cli("verify", "--role", "backup").returncode == 9  # the dry run changed nothing
    assert cli("apply", "--role", "backup").returncode == 0
    assert cli("verify").returncode == 0
    r = cli("verify", "--role", "master")
    assert r.returncode == 9 and "point redirect_prerouting at redirect_master" in r.stdout
    show = cli("show")
    assert show.returncode == 0 and "kernel pointer: backup" in show.stdout, show.stdout
    assert "backup_only" in show.stdout
    j = json.loads(cli("show", "--json").stdout)
    assert j["kernel_role"] == "backup" and len(j["kernel_rules"]) == 9
    assert cli("remove").returncode == 0
    assert cli("verify", "--role", "backup").returncode == 9


def test_peer_mac_learned_from_the_neighbour_table_and_remembered(pair, tmp_path):
    _require_tools("nft")
    d, s, _d_mac, s_mac = pair
    cfg = make_config(
        tmp_path,
        "nft",
        f"    - {{vip: {VIP}, port: 443, protocol: tcp, mode: redirect}}",
        peers=f"  peers: [{S_ADDR}]",
    )
    with inside(d):
        report = RulesManager(cfg).apply("backup")  # S answers ARP: learned
        assert report["peer_macs"] == {s_mac: f"neighbour table ({S_ADDR})"}
        assert f"ether saddr {s_mac}" in ours_listing("nft")
    # The peer is gone and the neighbour table forgot it: the MAC learned before is used.
    sh("ip", "-n", s, "link", "set", "ss0", "down")
    sh("ip", "-n", d, "neigh", "flush", "all")
    with inside(d):
        report = RulesManager(cfg).apply("master")
        assert report["peer_macs"] == {s_mac: f"learned before ({S_ADDR})"}
        assert f"ether saddr {s_mac}" in ours_listing("nft")


# ------------------------------------------------------------------------------ 1,000 swaps

PROBE = f"""
table inet lvsh_probe {{
    chain arrive {{
        # after conntrack (-200), before every rule of ours (-160 nft, -150/-100 iptables)
        type filter hook prerouting priority -199; policy accept;
        ether saddr {CLIENT_MAC} udp dport {PORT_REDIRECT} counter comment "client:{PORT_REDIRECT}"
        ether saddr {PEER_MAC} udp dport {PORT_REDIRECT} counter comment "peer:{PORT_REDIRECT}"
        ether saddr {CLIENT_MAC} udp dport {PORT_FWMARK} counter comment "client:{PORT_FWMARK}"
        ether saddr {PEER_MAC} udp dport {PORT_FWMARK} counter comment "peer:{PORT_FWMARK}"
    }}
    chain deliver {{
        # where each packet went: redirected (to {D_ADDR}) or left for IPVS (still to the VIP)
        type filter hook input priority 0; policy accept;
        ether saddr {PEER_MAC} ip daddr {VIP} udp dport {PORT_REDIRECT} counter comment "peer left to IPVS"
        ether saddr {PEER_MAC} ip daddr {D_ADDR} udp dport {PORT_REDIRECT} counter comment "peer redirected"
        ether saddr {CLIENT_MAC} ip daddr {VIP} udp dport {PORT_REDIRECT} counter comment "client left to IPVS"
        ether saddr {CLIENT_MAC} ip daddr {D_ADDR} udp dport {PORT_REDIRECT} counter comment "client redirected"
        ether saddr {CLIENT_MAC} udp dport {PORT_FWMARK} meta mark != 1 counter comment "client unmarked"
        ether saddr {PEER_MAC} udp dport {PORT_FWMARK} meta mark 1 counter comment "peer marked"
        udp dport {{ {PORT_REDIRECT}, {PORT_FWMARK} }} drop
    }}
}}
"""

SWAP_SERVICES = f"""\
    - {{vip: {VIP}, port: {PORT_REDIRECT}, protocol: udp, mode: redirect}}
    - {{vip: {VIP}, port: {PORT_FWMARK}, protocol: udp, mode: fwmark, fwmark: 1}}"""


def probe_counters() -> Dict[str, int]:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", "lvsh_probe"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment"):
            for stmt in rule["expr"]:
                if "counter" in stmt:
                    counts[rule["comment"]] = stmt["counter"]["packets"]
    return counts


def our_counters(mgr: RulesManager) -> Dict[str, int]:
    """Packets counted by our rules, by chain (neutral names) and port."""
    rows = mgr.backend.rules_listing(mgr.backend.read((4,)))
    sums: Dict[str, int] = {}
    for row in rows:
        if row["packets"] is None or row["id"] is None:
            continue
        chain = row["chain"].lower().replace("lvs-hooks-", "").replace("-", "_")
        chain = {"mark_prerouting": "mark"}.get(chain, chain)
        port = PORT_REDIRECT if f"dport {PORT_REDIRECT}" in row["rule"] else PORT_FWMARK
        key = f"{chain}:{port}"
        sums[key] = sums.get(key, 0) + row["packets"]
    return sums


def naive_swap(backend: str, role: str) -> None:
    """A swap in two kernel calls (empty the pointer, then fill it): what the test must catch."""
    if backend == "nft":
        sh("nft", "flush", "chain", "inet", "lvs_hooks", "redirect_prerouting")
        sh(
            "nft",
            "add",
            "rule",
            "inet",
            "lvs_hooks",
            "redirect_prerouting",
            "jump",
            f"redirect_{role}",
        )
    else:
        ipt = "iptables" + backend[len("iptables") :]
        sh(ipt, "-t", "nat", "-F", "LVS-HOOKS-REDIRECT")
        sh(ipt, "-t", "nat", "-A", "LVS-HOOKS-REDIRECT", "-j", f"LVS-HOOKS-REDIRECT-{role.upper()}")


def swap_run(pair, tmp_path, backend: str, swaps: int, naive: bool = False, rate: int = 5000):
    d, s, d_mac, _s_mac = pair
    cfg = make_config(tmp_path, backend, SWAP_SERVICES)
    run_in(d, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=5", check=False)
    out = tmp_path / "pktgen.json"
    with inside(d):
        subprocess.run(["nft", "-f", "-"], input=PROBE, check=True, text=True)
        mgr = RulesManager(cfg)
        mgr.apply("backup")
    gen = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            s,
            PYTHON,
            str(HERE / "rules_pktgen.py"),
            "--ifname",
            "ss0",
            "--dst-mac",
            d_mac,
            "--client-mac",
            CLIENT_MAC,
            "--peer-mac",
            PEER_MAC,
            "--vip",
            VIP,
            "--ports",
            f"{PORT_REDIRECT},{PORT_FWMARK}",
            "--rate",
            str(rate),
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with inside(d):
            # traffic first, so that the first swap already has packets around it
            deadline = time.monotonic() + 10
            while sum(probe_counters().values()) < 200:
                assert time.monotonic() < deadline and gen.poll() is None, gen.stderr.read()
                time.sleep(0.02)
            t0 = time.monotonic()
            for i in range(swaps):
                role = "master" if i % 2 == 0 else "backup"
                if naive:
                    naive_swap(backend, role)
                else:
                    mgr.apply(role)
            swap_s = time.monotonic() - t0
    finally:
        gen.send_signal(signal.SIGTERM)
        gen.wait(10)
    sent = json.loads(out.read_text())
    time.sleep(0.2)  # the last frames through the veth
    with inside(d):
        probe = probe_counters()
        ours = our_counters(mgr)
    return {"swaps": swaps, "swap_s": swap_s, "sent": sent, "probe": probe, "ours": ours}


def _report(request, text: str) -> None:
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(text, flush=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_1000_swaps_under_traffic_no_packet_unhandled(request, pair, tmp_path, backend):
    _require_tools(backend)
    t0 = time.monotonic()
    r = swap_run(pair, tmp_path, backend, 1000)
    probe, ours, sent = r["probe"], r["ours"], r["sent"]["sent"]
    R, F = PORT_REDIRECT, PORT_FWMARK
    arrived_r = probe[f"client:{R}"] + probe[f"peer:{R}"]
    arrived_f = probe[f"client:{F}"] + probe[f"peer:{F}"]
    handled_r = ours.get(f"redirect_master:{R}", 0) + ours.get(f"redirect_backup:{R}", 0)
    handled_f = ours.get(f"mark:{F}", 0)
    _report(
        request,
        f"\n[rules swap {backend}] {r['swaps']} swaps in {r['swap_s']:.1f} s "
        f"({r['swap_s'] / r['swaps'] * 1000:.1f} ms each), test {time.monotonic() - t0:.1f} s; "
        f"sent {sum(sent.values())} frames in {r['sent']['seconds']} s; redirect port: "
        f"arrived {arrived_r}, counted by the rules {handled_r} (master "
        f"{ours.get(f'redirect_master:{R}', 0)}, backup {ours.get(f'redirect_backup:{R}', 0)}); "
        f"fwmark port: arrived {arrived_f}, counted {handled_f}; delivery {probe}",
    )
    assert arrived_r > 2000 and arrived_f > 2000, (probe, sent)
    # Every packet to the redirect service was counted by one rule of the master OR of the
    # backup chain: none went through while neither set was in place.
    assert handled_r == arrived_r, (ours, probe)
    # Both sets really took turns under the traffic.
    assert probe["client left to IPVS"] > 0 and probe["client redirected"] > 0, probe
    assert probe["client left to IPVS"] + probe["client redirected"] == probe[f"client:{R}"]
    # A peer's packet is never left to IPVS, whatever the role at the time.
    assert probe["peer left to IPVS"] == 0, probe
    assert probe["peer redirected"] == probe[f"peer:{R}"], probe
    # The fwmark rules are the same in both roles: never rewritten, never a gap.
    assert handled_f == arrived_f, (ours, probe)
    assert probe["client unmarked"] == 0 and probe["peer marked"] == 0, probe


def test_the_swap_measure_catches_a_non_atomic_swap(request, pair, tmp_path):
    """The same measurement, with the pointer emptied and refilled in two kernel calls: packets
    slip through between them, so the test above can fail."""
    _require_tools("nft")
    r = swap_run(pair, tmp_path, "nft", 200, naive=True)
    probe, ours = r["probe"], r["ours"]
    R = PORT_REDIRECT
    arrived_r = probe[f"client:{R}"] + probe[f"peer:{R}"]
    handled_r = ours.get(f"redirect_master:{R}", 0) + ours.get(f"redirect_backup:{R}", 0)
    _report(
        request,
        f"\n[rules naive swap nft] {r['swaps']} two-step swaps: {arrived_r - handled_r} of "
        f"{arrived_r} packets counted by no rule, {probe['peer left to IPVS']} peer packets "
        "left to IPVS",
    )
    assert handled_r < arrived_r
    assert probe["peer left to IPVS"] > 0


# ------------------------------------------------------------------------------ keepalived

KEEPALIVED_RULES = """\
rules:
  backend: nft
  peers: [{peer}]
  services:
    - {{vip: 10.77.0.100, port: 80, protocol: tcp, mode: redirect}}
"""


def kernel_role(director) -> str:
    with inside(director.netns):
        mgr = RulesManager(parse_config(director.config.read_text()))
        return mgr.backend.active_role(mgr.backend.read())


def firewall_steps(director, state: str) -> List[dict]:
    return [
        s
        for r in director.applied()
        if r["event"]["state"] == state
        for s in r["steps"]
        if s["step"] == "firewall"
    ]


def test_keepalived_transitions_swap_the_rules_first(directors):
    """Real keepalived (VRRP only) drives `lvs-hooks fifo`: the firewall step of each
    transition puts the role's rules in place, as the first step."""
    from netnslib import wait_for

    _require_tools("nft")
    a, b = directors
    for d, peer in ((a, "10.77.0.2"), (b, "10.77.0.1")):
        with open(d.config, "a") as f:
            f.write(KEEPALIVED_RULES.format(peer=peer))
    logs = lambda: a.logs() + "\n" + b.logs()  # noqa: E731
    a.start()
    wait_for(lambda: "MASTER" in a.states(), 15, "a's MASTER transition", logs)
    b.start()
    wait_for(lambda: "BACKUP" in b.states(), 15, "b's BACKUP transition", logs)
    assert kernel_role(a) == "master" and kernel_role(b) == "backup"
    (m,) = [r for r in a.applied() if r["event"]["state"] == "MASTER"]
    assert m["steps"][0]["step"] == "firewall" and m["steps"][0]["ok"], m
    assert m["steps"][0]["summary"].startswith("master rules: "), m["steps"][0]
    # both hosts answer ARP (b's keepalived was not running yet): the peer MACs were learned
    assert m["steps"][0]["figures"]["rules"] == 3 and "unknown" not in m["steps"][0]["summary"]
    (fb,) = firewall_steps(b, "BACKUP")[-1:]
    assert fb["ok"] and "unknown" not in fb["summary"], fb

    a.kill()  # b takes over
    wait_for(lambda: "MASTER" in b.states(), 15, "b's MASTER transition", logs)
    assert kernel_role(b) == "master"
    (fm,) = firewall_steps(b, "MASTER")
    assert fm["ok"] and fm["figures"]["changes"] == ["point redirect_prerouting at redirect_master"]
    b.stop()
