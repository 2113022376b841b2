import os
import socket

from lvs_hooks.kernel.syncsock import SyncQueueProbe, own_socket_inodes, parse_proc_udp

PROC_UDP = b"""\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 510000E0:2290 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 31337 2 0000000000000000 17
  121: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 31338 2 0000000000000000 0
  122: 00000000:2290 00000000:0000 07 00000000:00000100 00:00000000 00000000     0        0 31339 2 0000000000000000 3
"""


def test_finds_sockets_on_the_sync_port_with_queue_and_drops():
    socks = parse_proc_udp(PROC_UDP, 8848)
    assert [(s.local, s.rx_queue, s.drops) for s in socks] == [
        ("510000E0:2290", 0xA00, 17),
        ("00000000:2290", 0x100, 3),
    ]


def test_other_ports_and_garbage_are_ignored():
    assert parse_proc_udp(PROC_UDP + b"garbage line\n", 53) == [
        parse_proc_udp(PROC_UDP, 53)[0]
    ]
    assert parse_proc_udp(b"header only\n", 8848) == []


def test_inodes_are_read_and_this_process_own_sockets_are_not_the_receiver(tmp_path):
    assert [s.inode for s in parse_proc_udp(PROC_UDP, 8848)] == [31337, 31339]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mine:
        ino = os.fstat(mine.fileno()).st_ino
        assert ino in own_socket_inodes()
        (tmp_path / "net").mkdir()
        text = PROC_UDP.decode().replace(" 31339 ", f" {ino} ").encode()
        (tmp_path / "net" / "udp").write_bytes(text)
        probe = SyncQueueProbe(str(tmp_path), 8848)
        # our own socket's 0x100 queued bytes are not waited for; the other's 0xA00 are
        assert [s.inode for s in probe.sockets()] == [31337] and probe.rx_queue() == 0xA00
