"""The IPVS daemon and config messages, encoded and decoded without a kernel."""

import struct

from lvs_hooks.kernel import netlink as n


def roundtrip(msg):
    msg["header"]["type"] = 0x20  # any family id
    msg.encode()
    back = n.ipvs_cmd_msg(msg.data)
    back.decode()
    return msg.data, back


def nla_payloads(data: bytes, nested_type: int):
    """Walk the raw attributes of a genl message (20 bytes of headers) and of one nest."""
    out = {}
    off = 20
    while off < len(data):
        ln, typ = struct.unpack_from("=HH", data, off)
        if typ & 0x3FFF == nested_type:
            inner = off + 4
            while inner < off + ln:
                iln, ityp = struct.unpack_from("=HH", data, inner)
                out[ityp] = data[inner + 4:inner + iln]
                inner += (iln + 3) & ~3
        off += (ln + 3) & ~3
    return out


def test_new_daemon_wire_format_follows_ip_vs_ctl():
    data, back = roundtrip(n.build_new_daemon("backup", "sync0", 51, maxlen=1472,
                                              group="224.0.0.81", port=8848, ttl=1))
    attrs = nla_payloads(data, 3)  # IPVS_CMD_ATTR_DAEMON
    assert struct.unpack("=I", attrs[1])[0] == n.IP_VS_STATE_BACKUP
    assert attrs[2] == b"sync0\x00"
    assert struct.unpack("=I", attrs[3])[0] == 51
    assert struct.unpack("=H", attrs[4])[0] == 1472
    assert attrs[5] == bytes([224, 0, 0, 81])  # in_addr, network order
    assert struct.unpack("=H", attrs[7])[0] == 8848  # nla_get_u16: host order
    assert attrs[8] == b"\x01"
    assert n.decode_daemon(back) == n.SyncDaemon("backup", "sync0", 51, 1472, "224.0.0.81",
                                                 8848, 1)


def test_new_daemon_omits_optional_attributes_for_old_kernels():
    data, _ = roundtrip(n.build_new_daemon("master", "eth1", 0))
    assert set(nla_payloads(data, 3)) == {1, 2, 3}


def test_ipv6_group():
    data, back = roundtrip(n.build_new_daemon("backup", "sync0", 1, group="ff02::81"))
    assert len(nla_payloads(data, 3)[6]) == 16
    assert n.decode_daemon(back).group == "ff02::81"


def test_del_daemon_names_only_the_state():
    data, _ = roundtrip(n.build_del_daemon("master"))
    assert nla_payloads(data, 3) == {1: struct.pack("=I", n.IP_VS_STATE_MASTER)}


def test_timeouts_round_trip():
    _, back = roundtrip(n.build_set_timeouts(900, 120, 300))
    assert n.decode_timeouts(back) == n.Timeouts(900, 120, 300)
