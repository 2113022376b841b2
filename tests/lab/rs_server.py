#!/usr/bin/env python3
"""Lab real server: answers UDP datagrams and TCP lines on one port with its own name.

Reply (UDP: per datagram; TCP: per line): `NAME CLIENT_IP:CLIENT_PORT PAYLOAD`, so the client
sees which real server it landed on. One process, one thread, both protocols (selectors).

Usage: rs_server.py NAME [--port 5000] [--bind 0.0.0.0]
       (--bind :: answers IPv6 and IPv4 clients alike: one dual-stack socket per protocol)
"""

import argparse
import contextlib
import selectors
import socket


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--bind", default="0.0.0.0")
    a = p.parse_args()
    name = a.name.encode()
    family = socket.AF_INET6 if ":" in a.bind else socket.AF_INET

    def sock(kind: int) -> socket.socket:
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((a.bind, a.port))
        return s

    sel = selectors.DefaultSelector()
    udp = sock(socket.SOCK_DGRAM)
    sel.register(udp, selectors.EVENT_READ, "udp")
    tcp = sock(socket.SOCK_STREAM)
    tcp.listen(256)
    sel.register(tcp, selectors.EVENT_READ, "listen")
    bufs = {}

    def peer_tag(addr) -> bytes:
        return f"{addr[0]}:{addr[1]}".encode()

    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "udp":
                try:
                    data, addr = s.recvfrom(4096)
                    s.sendto(b" ".join((name, peer_tag(addr), data.strip())), addr)
                except OSError:
                    pass
            elif key.data == "listen":
                try:
                    c, addr = s.accept()
                except OSError:
                    continue
                c.setblocking(False)
                bufs[c] = (b"", peer_tag(addr))
                sel.register(c, selectors.EVENT_READ, "conn")
            else:
                buf, tag = bufs[s]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    del bufs[s]
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                bufs[s] = (buf, tag)
                for line in lines:
                    with contextlib.suppress(OSError):
                        s.sendall(b" ".join((name, tag, line.strip())) + b"\n")


if __name__ == "__main__":
    main()
