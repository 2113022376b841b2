#!/usr/bin/env python3
"""Lab traffic client: one long-lived process in the client netns, driven over two FIFOs.

It owns flows (UDP sockets, or TCP connections) from many client addresses to VIP:PORT and
records which real server answers each one (the lab's rs_server.py replies with its name).
Under TCG a process start costs 1-1.5 s of python; here each step costs none: the scenario writes
a command line into CTL.in and reads one JSON line back from CTL.out (lib.sh: lab_client).

Commands (one line each; reply: one JSON line, "ok": true/false):
  open LABEL [udp|tcp]      a new flow from every client address; records who answered
  probe LABEL [FLOWS]       one request on each address's flow opened as FLOWS (default: the
                            reference open), records who answered (TCP: "RESET" on reset)
  keepalive SECS            every SECS send on all open flows (0: stop); flows then "go on"
  sent LABEL                fewest and most packets sent on a flow opened as LABEL
  set timeout SECS          how long a step waits for answers (default 3 s)
  ref LABEL                 the open step retention is measured against (default: the first)
  report FILE               write the whole record as JSON (+ FILE's .txt: retention table)
  quit

Usage: client.py --ctl /tmp/lab/client --vip 10.0.0.100 --port 5000 ADDR...
       (ADDR may be a range A.B.C.D-E, or for IPv6 P::N-M: the last group's text runs from N
       to M as decimal numbers, e.g. fd00::20-39 is fd00::20, fd00::21, ... fd00::39). The VIP's
       family is the flows' family.
"""

import argparse
import contextlib
import errno
import json
import os
import random
import selectors
import socket
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retention  # noqa: E402


class Flow:
    def __init__(self, addr: str, proto: str, label: str):
        self.addr, self.proto, self.label = addr, proto, label
        self.sock: Optional[socket.socket] = None
        self.connected = proto == "udp"
        self.state = "ok"  # ok | reset | refused | closed
        self.buf = b""
        self.answers: Dict[str, str] = {}  # token -> real server
        self.last_rs: Optional[str] = None
        self.out: List[bytes] = []  # TCP lines waiting for the connection
        self.sent = 0  # datagrams / lines sent (the kernel syncs a connection at its 3rd packet)


class Client:
    def __init__(self, vip: str, port: int, addrs: List[str], seed: int):
        self.vip, self.port, self.addrs = vip, port, addrs
        self.family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        # Real clients do not arrive in a fixed order. With a round-robin scheduler a fixed order
        # would hand every client the same real server again on a fresh director, hiding the
        # loss: every step sends in a new random order (seeded, recorded in the report).
        self.seed = seed
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.flows: Dict[str, List[Flow]] = {a: [] for a in addrs}
        self.steps: List[Dict] = []
        self.ref: Optional[str] = None
        self.timeout = 3.0
        self.keepalive = 0.0
        self.next_keepalive = 0.0
        self.seq = 0
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ sockets
    def send(self, flow: Flow, token: str) -> None:
        data = token.encode()
        if flow.state != "ok":
            return
        flow.sent += 1
        try:
            if flow.proto == "udp":
                flow.sock.send(data)
            elif flow.connected:
                flow.sock.send(data + b"\n")
            else:
                flow.out.append(data + b"\n")
        except OSError as e:
            self.broken(flow, e.errno)

    def broken(self, flow: Flow, err: Optional[int]) -> None:
        if flow.proto == "udp":
            return  # ICMP errors on UDP: keep the flow, the answer is just missing
        flow.state = {errno.ECONNRESET: "reset", errno.ECONNREFUSED: "refused"}.get(err, "closed")
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(flow.sock)
        flow.sock.close()

    def readable(self, flow: Flow, mask: int) -> None:
        if flow.proto == "tcp" and not flow.connected:
            err = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.broken(flow, err)
                return
            flow.connected = True
            self.sel.modify(flow.sock, selectors.EVENT_READ, flow)
            for data in flow.out:
                self.send_raw(flow, data)
            flow.out = []
            return
        try:
            data = flow.sock.recv(65536)
        except OSError as e:
            self.broken(flow, e.errno)
            return
        if flow.proto == "udp":
            self.answer(flow, data)
            return
        if not data:
            self.broken(flow, None)
            return
        flow.buf += data
        *lines, flow.buf = flow.buf.split(b"\n")
        for line in lines:
            self.answer(flow, line)

    def send_raw(self, flow: Flow, data: bytes) -> None:
        try:
            flow.sock.send(data)
        except OSError as e:
            self.broken(flow, e.errno)

    def answer(self, flow: Flow, data: bytes) -> None:
        # "rs1 10.0.0.20:40001 P label"
        parts = data.decode(errors="replace").split(" ", 2)
        if len(parts) < 3:
            return
        flow.last_rs = parts[0]
        flow.answers[parts[2].strip()] = parts[0]

    def pump(self, until: float, done=None, resend=None) -> None:
        """Handles socket events (and keepalives) until `until` or done(); resend() every 0.5 s."""
        next_resend = time.monotonic() + 0.5
        while True:
            now = time.monotonic()
            if done and done():
                return
            if now >= until:
                return
            if self.keepalive and now >= self.next_keepalive:
                self.seq += 1
                for fl in self.shuffled(self.all_flows()):
                    self.send(fl, f"K {self.seq}")
                self.next_keepalive = now + self.keepalive
            if resend and now >= next_resend:
                resend()
                next_resend = now + 0.5
            wait = until - now
            if self.keepalive:
                wait = min(wait, max(0.0, self.next_keepalive - now))
            for key, mask in self.sel.select(timeout=min(wait, 0.1)):
                if isinstance(key.data, Flow):
                    self.readable(key.data, mask)

    def shuffled(self, items: List) -> List:
        items = list(items)
        self.rng.shuffle(items)
        return items

    def all_flows(self) -> List[Flow]:
        return [f for fl in self.flows.values() for f in fl if f.state == "ok"]

    # ------------------------------------------------------------------ steps
    def new_flow(self, addr: str, proto: str, label: str) -> Flow:
        fl = Flow(addr, proto, label)
        if proto == "udp":
            s = socket.socket(self.family, socket.SOCK_DGRAM)
            s.bind((addr, 0))
            s.connect((self.vip, self.port))
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, fl)
        else:
            s = socket.socket(self.family, socket.SOCK_STREAM)
            s.bind((addr, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setblocking(False)
            s.connect_ex((self.vip, self.port))
            self.sel.register(s, selectors.EVENT_WRITE, fl)
        fl.sock = s
        self.flows[addr].append(fl)
        return fl

    def exchange(self, flows: Dict[str, Flow], token: str) -> Dict[str, Optional[str]]:
        """Sends `token` on each flow, waits for the answers (UDP: re-sent every 0.5 s)."""
        for fl in self.shuffled(flows.values()):
            self.send(fl, token)

        def pending():
            return [f for f in flows.values() if token not in f.answers and f.state == "ok"]

        def resend():
            for f in self.shuffled(pending()):
                if f.proto == "udp":
                    self.send(f, token)

        self.pump(time.monotonic() + self.timeout, done=lambda: not pending(), resend=resend)
        res: Dict[str, Optional[str]] = {}
        for addr, f in flows.items():
            if token in f.answers:
                res[addr] = f.answers[token]
            elif f.state != "ok":
                res[addr] = f.state.upper()
            else:
                res[addr] = None
        return res

    def record(self, kind: str, label: str, flows_label: str, proto: str,
               res: Dict[str, Optional[str]], t_start: float) -> Dict:
        ref = next((s for s in self.steps if s["label"] == self.ref), None)
        ref_res = ref["results"] if ref else res
        same = sum(1 for a in self.addrs if res.get(a) and res.get(a) == ref_res.get(a))
        no_answer = sum(1 for a in self.addrs if not res.get(a) or res[a] in ("RESET", "REFUSED",
                                                                            "CLOSED"))
        by_rs: Dict[str, int] = {}
        for v in res.values():
            by_rs[str(v)] = by_rs.get(str(v), 0) + 1
        step = {"label": label, "kind": kind, "flows": flows_label, "proto": proto,
                "t": round(t_start - self.t0, 2), "took_s": round(time.monotonic() - t_start, 2),
                "results": res, "answered": len(self.addrs) - no_answer,
                "same_as_ref": same, "moved": len(self.addrs) - no_answer - same,
                "no_answer": no_answer, "by_rs": by_rs}
        self.steps.append(step)
        return {k: v for k, v in step.items() if k != "results"}

    def cmd_open(self, label: str, proto: str = "udp") -> Dict:
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be udp or tcp, not {proto!r}")
        if any(s["label"] == label for s in self.steps):
            raise ValueError(f"label {label!r} already used")
        t = time.monotonic()
        flows = {a: self.new_flow(a, proto, label) for a in self.addrs}
        res = self.exchange(flows, f"O {label}")
        if self.ref is None:
            self.ref = label
        return self.record("open", label, label, proto, res, t)

    def cmd_probe(self, label: str, flows_label: Optional[str] = None) -> Dict:
        flows_label = flows_label or self.ref
        if any(s["label"] == label for s in self.steps):
            raise ValueError(f"label {label!r} already used")
        flows = {}
        for a in self.addrs:
            cand = [f for f in self.flows[a] if f.label == flows_label]
            if not cand:
                raise ValueError(f"no flows opened as {flows_label!r}")
            flows[a] = cand[-1]
        t = time.monotonic()
        res = self.exchange(flows, f"P {label}")
        return self.record("probe", label, flows_label, flows[self.addrs[0]].proto, res, t)

    def cmd_report(self, path: str) -> Dict:
        rep = self.report()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rep, f, indent=1)
        os.rename(tmp, path)
        with open(os.path.splitext(path)[0] + ".txt", "w") as f:
            f.write(retention.render(rep) + "\n")
        return {"file": path, "steps": len(self.steps)}

    def report(self) -> Dict:
        return {"vip": self.vip, "port": self.port, "clients": self.addrs, "seed": self.seed,
                "reference": self.ref, "steps": self.steps}

    def handle(self, line: str) -> Dict:
        words = line.split()
        if not words:
            return {"ok": False, "error": "empty command"}
        cmd, args = words[0], words[1:]
        if cmd == "open":
            return self.cmd_open(*args)
        if cmd == "probe":
            return self.cmd_probe(*args)
        if cmd == "sent":
            counts = [f.sent for fl in self.flows.values() for f in fl if f.label == args[0]]
            if not counts:
                raise ValueError(f"no flows opened as {args[0]!r}")
            return {"label": args[0], "min_sent": min(counts), "max_sent": max(counts)}
        if cmd == "keepalive":
            self.keepalive = float(args[0])
            self.next_keepalive = time.monotonic()
            return {"keepalive": self.keepalive}
        if cmd == "set" and args[:1] == ["timeout"]:
            self.timeout = float(args[1])
            return {"timeout": self.timeout}
        if cmd == "ref":
            self.ref = args[0]
            return {"ref": self.ref}
        if cmd == "report":
            return self.cmd_report(args[0])
        if cmd == "quit":
            raise SystemExit(0)
        raise ValueError(f"unknown command {cmd!r}")


def expand(addrs: List[str]) -> List[str]:
    out = []
    for a in addrs:
        if "-" in a:
            first, last = a.split("-")
            sep = ":" if ":" in first else "."
            base, lo = first.rsplit(sep, 1)
            out += [f"{base}{sep}{i}" for i in range(int(lo), int(last) + 1)]
        else:
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ctl", required=True, help="FIFO prefix: CTL.in, CTL.out, CTL.ready")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--seed", type=int, help="seed of the random send order (default: random)")
    p.add_argument("addrs", nargs="+")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    cl = Client(a.vip, a.port, expand(a.addrs), seed)
    for suffix in (".in", ".out"):
        if not os.path.exists(a.ctl + suffix):
            os.mkfifo(a.ctl + suffix)
    # O_RDWR: neither side ever sees EOF or blocks in open() when the other is not there (yet)
    fin = os.open(a.ctl + ".in", os.O_RDWR | os.O_NONBLOCK)
    fout = os.open(a.ctl + ".out", os.O_RDWR)
    with open(a.ctl + ".ready", "w") as f:
        f.write(f"{os.getpid()}\n")
    ctl = selectors.DefaultSelector()
    ctl.register(fin, selectors.EVENT_READ)
    buf = b""
    while True:
        # between commands: serve the flows (keepalives, late answers) and watch the FIFO
        if ctl.select(timeout=0.05):
            buf += os.read(fin, 65536)
        else:
            cl.pump(time.monotonic() + 0.05)
            continue
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            try:
                rep = {"ok": True, "cmd": line.split()[0] if line else ""}
                rep.update(cl.handle(line))
            except SystemExit:
                os.write(fout, b'{"ok": true, "cmd": "quit"}\n')
                return
            except Exception as e:  # a bad command must not kill the client mid-scenario
                rep = {"ok": False, "cmd": line, "error": f"{type(e).__name__}: {e}"}
            os.write(fout, (json.dumps(rep, separators=(",", ":")) + "\n").encode())


if __name__ == "__main__":
    main()
