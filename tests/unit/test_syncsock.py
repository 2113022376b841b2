from lvs_hooks.kernel.syncsock import parse_proc_udp

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
