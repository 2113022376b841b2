"""The keepalived.conf reader: keepalived's own syntax (lib/parser.c), file:line for every item,
includes with globs, and one clear error naming file and line for a malformed file."""

import os
import shutil
import subprocess

import pytest

from lvs_hooks.errors import KeepalivedConfError, LvsHooksError
from lvs_hooks.keepalived_conf import (
    KeepalivedSetup,
    _expand_braces,
    parse_text,
    read_keepalived_conf,
)

SEEDS = os.path.join(os.path.dirname(__file__), "fixtures", "seeds")


def flat(conf):
    """(depth, keyword, args, line) of every item, in file order."""
    return [(len(p), i.keyword, i.args, i.line) for i, p in conf.walk()]


def write(tmp_path, name, text, mode=0o644):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    return p


def test_blocks_lines_and_brace_placements():
    conf = parse_text(
        "global_defs {\n"
        "  router_id r1\n"
        "}\n"
        "vrrp_instance VI_1\n"
        "{\n"
        "  virtual_ipaddress { 10.0.0.1/24 dev eth0 }\n"
        "  track_script {\n"
        "    chk\n"
        "  }}\n"
        "virtual_server 10.0.0.1 80 {  real_server 10.1.0.1 80 { weight 1 } }\n"
    )
    assert flat(conf) == [
        (0, "global_defs", (), 1),
        (1, "router_id", ("r1",), 2),
        (0, "vrrp_instance", ("VI_1",), 4),
        (1, "virtual_ipaddress", (), 6),
        (2, "10.0.0.1/24", ("dev", "eth0"), 6),
        (1, "track_script", (), 7),
        (2, "chk", (), 8),
        (0, "virtual_server", ("10.0.0.1", "80"), 10),
        (1, "real_server", ("10.1.0.1", "80"), 10),
        (2, "weight", ("1",), 10),
    ]
    assert conf.items[1].block[0].where == "keepalived.conf:6"


def test_comments_and_quotes():
    conf = parse_text(
        "! a comment\n"
        "# another\n"
        "global_defs { # trailing\n"
        '  notify_fifo_script "/usr/bin/x --a # not a comment" root ! comment\n'
        "  router_id a\\#b ! escaped hash is a character\n"
        '  x "{ not a block }"\n'
        "}\n"
    )
    g = conf.items[0]
    assert [c.args for c in g.children()] == [
        ("/usr/bin/x --a # not a comment", "root"),
        ("a#b",),
        ("{ not a block }",),
    ]


def test_utf8_comments_of_the_seeds_are_read():
    conf = read_keepalived_conf(os.path.join(SEEDS, "seed000", "keepalived.conf"))
    inst = conf.top("vrrp_instance")[0]
    assert inst.value("state") == "MASTER"
    assert inst.value("mcast_src_ip") == "192.168.1.131"


def test_include_glob_relative_sorted_and_inside_a_block(tmp_path):
    write(tmp_path, "conf.d/b.conf", "virtual_server 10.0.0.2 80 {\n}\n")
    write(tmp_path, "conf.d/a.conf", "virtual_server 10.0.0.1 80 {\n  include ../rs/*.conf\n}\n")
    write(tmp_path, "rs/one.conf", "real_server 10.1.0.1 80 {\n  weight 2\n}\n")
    write(tmp_path, "conf.d/sub/ignored.conf", "bogus {\n")  # a directory match is not read
    main = write(tmp_path, "keepalived.conf", "global_defs {\n}\ninclude conf.d/*\n")
    conf = read_keepalived_conf(str(main))
    vss = conf.top("virtual_server")
    assert [v.args[0] for v in vss] == ["10.0.0.1", "10.0.0.2"]
    rs = vss[0].child("real_server")
    assert rs.where == f"{tmp_path}/rs/one.conf:1" and rs.value("weight") == "2"
    assert conf.files == [str(main), f"{tmp_path}/conf.d/a.conf", f"{tmp_path}/rs/one.conf",
                          f"{tmp_path}/conf.d/b.conf"]


def test_include_braces_and_skips(tmp_path):
    write(tmp_path, "x.conf", "a 1\n")
    write(tmp_path, "y.conf", "b 2\n")
    write(tmp_path, "z.conf", "c 3\n", mode=0o755)  # executable: keepalived skips it
    main = write(tmp_path, "k.conf", "include {y,x,z}.conf\ninclude none-*.conf\n")
    conf = read_keepalived_conf(str(main))
    assert [i.keyword for i in conf.items] == ["b", "a"]
    assert conf.skipped == [(f"{tmp_path}/z.conf", "executable (keepalived skips it)",
                             f"{main}:1")]
    assert conf.unmatched_includes == [("none-*.conf", f"{main}:2")]


def test_expand_braces():
    assert _expand_braces("a{b,c{d,e}}f") == ["abf", "acdf", "acef"]
    assert _expand_braces("plain") == ["plain"]
    assert _expand_braces("{x}") == ["{x}"]


def test_definitions_conditionals_and_seq():
    conf = parse_text(
        "$IF=eth1\n"
        "$RS=real_server 10.1.0.${N} 80 { weight 1 }\n"
        "global_defs {\n"
        "  lvs_sync_daemon $IF VI_1 id 9\n"
        "  @lvs1 router_id one\n"
        "  @^lvs1 router_id other\n"
        "}\n"
        "virtual_server 10.0.0.1 80 {\n"
        "~SEQ(N, 1, 3) $RS\n"
        "}\n",
        config_id="lvs1",
    )
    g = conf.items[0]
    assert g.child("lvs_sync_daemon").args == ("eth1", "VI_1", "id", "9")
    assert [c.args for c in g.children("router_id")] == [("one",)]
    rs = conf.items[1].children("real_server")
    assert [r.args[0] for r in rs] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert all(r.line == 9 for r in rs)


def test_multiline_definition():
    conf = parse_text(
        "$CHECK=TCP_CHECK { \\\n"
        "  connect_timeout 3 \\\n"
        "}\n"
        "virtual_server 10.0.0.1 80 {\n"
        "  real_server 10.1.0.1 80 {\n"
        "    $CHECK\n"
        "  }\n"
        "}\n"
    )
    rs = conf.items[0].child("real_server")
    check = rs.child("TCP_CHECK")
    assert check is not None and check.value("connect_timeout") == "3"


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("global_defs {\n  router_id a\n", 1, "block 'global_defs' is never closed"),
        ("global_defs {\n}\n}\n", 3, "'}' closes no block"),
        ('global_defs {\n  router_id "a\n}\n', 2, "unterminated quote"),
        ("{\n}\n", 1, "'{' with no keyword before it"),
        ("a {\n} {\n}\n", 2, "'{' with no keyword before it"),
        ("~SEQ(N, 1, 0, 3) x\n", 1, "never ends"),
    ],
)
def test_malformed_is_one_error_with_file_and_line(tmp_path, text, line, what):
    main = write(tmp_path, "keepalived.conf", text)
    with pytest.raises(KeepalivedConfError) as e:
        read_keepalived_conf(str(main))
    msg = e.value.format_message()
    assert msg.startswith(f"keepalived config {main}:{line}: ") and what in msg, msg
    assert "\n" not in msg
    assert isinstance(e.value, LvsHooksError) and e.value.exit_code == 2


def test_malformed_include_names_the_included_file(tmp_path):
    write(tmp_path, "inc/bad.conf", "real_server 1.2.3.4 80 {\n  weight 1\n")
    main = write(tmp_path, "keepalived.conf", "virtual_server 1.2.3.4 80 {\n"
                                              "  include inc/bad.conf\n}\n")
    with pytest.raises(KeepalivedConfError, match=rf"{tmp_path}/inc/bad.conf:1: block "
                                                  r"'real_server' is never closed"):
        read_keepalived_conf(str(main))


def test_brace_closing_a_block_of_the_including_file(tmp_path):
    write(tmp_path, "inc/close.conf", "real_server 1.2.3.4 80 {\n}\n}\n")
    main = write(tmp_path, "keepalived.conf", "virtual_server 1.2.3.4 80 {\n"
                                              "  include inc/close.conf\n")
    with pytest.raises(KeepalivedConfError, match=r"close.conf:3: '}' closes the block "
                                                  r"'virtual_server' opened in another file"):
        read_keepalived_conf(str(main))


def test_include_loop_is_an_error(tmp_path):
    """Seed 002's method 1 taken literally: keepalived.conf including its own directory."""
    main = write(tmp_path, "keepalived.conf", "global_defs {\n}\ninclude *.conf\n")
    with pytest.raises(KeepalivedConfError, match=r"keepalived.conf:3: include loop"):
        read_keepalived_conf(str(main))


def test_main_file_missing_or_executable(tmp_path):
    with pytest.raises(KeepalivedConfError, match="no such file"):
        read_keepalived_conf(str(tmp_path / "nope.conf"))
    main = write(tmp_path, "k.conf", "global_defs {\n}\n", mode=0o755)
    with pytest.raises(KeepalivedConfError, match="executable"):
        read_keepalived_conf(str(main))


def test_setup_model_of_seed000():
    s = KeepalivedSetup.from_conf(
        read_keepalived_conf(os.path.join(SEEDS, "seed000", "keepalived.conf"))
    )
    assert s.sync_daemon.interface == "eth0" and s.sync_daemon.deprecated
    assert s.effective_syncid()[0] == 51
    (vs,) = s.virtual_servers
    assert (vs.addr, vs.port, vs.protocol, vs.lb_kind, vs.persistence_timeout) == (
        "192.168.1.160", 5000, "UDP", "DR", 360)
    assert [r.addr for r in vs.real_servers] == ["192.168.1.141", "192.168.1.142",
                                                 "192.168.1.143"]
    assert [sc.command for sc in s.scripts][0] == "/root/testlvs.sh 192.168.1.141"
    (inst,) = s.instances
    assert (inst.state, inst.vrid, inst.priority, inst.nopreempt) == ("MASTER", 51, 100, False)
    assert inst.own_addrs == ["192.168.1.131"] and inst.virtual_addrs == ["192.168.1.160"]


def test_setup_model_details():
    s = KeepalivedSetup.from_conf(parse_text(
        "global_defs {\n"
        "  lvs_sync_daemon sync0 inst VI_2 id 12 maxlen 1400 port 8849 ttl 2 group 239.0.0.9\n"
        "  lvs_timeouts tcp 7200 tcpfin 60 udp 30\n"
        '  vrrp_notify_fifo_script "/usr/bin/lvs-hooks fifo"\n'
        "  enable_script_security\n"
        "  script_user root\n"
        "}\n"
        "vrrp_instance VI_2 {\n"
        '  notify "/usr/bin/other" nobody\n'
        "  unicast_peer {\n    10.0.0.2\n  }\n"
        "}\n"
        "virtual_server fwmark 7 {\n  persistence_timeout\n  lb_kind dr\n"
        "  real_server 10.1.0.1 5000 {\n  }\n}\n"
        "virtual_server group G {\n  protocol udp\n}\n"
    ))
    sd = s.sync_daemon
    assert (sd.interface, sd.instance, sd.syncid, sd.maxlen, sd.port, sd.ttl, sd.group) == (
        "sync0", "VI_2", 12, 1400, 8849, 2, "239.0.0.9")
    assert s.lvs_timeouts == {"tcp": 7200, "tcpfin": 60, "udp": 30}
    assert s.enable_script_security and s.script_user == "root"
    assert [(x.kind, x.path, x.user, x.is_lvs_hooks) for x in s.scripts] == [
        ("vrrp_notify_fifo_script", "/usr/bin/lvs-hooks", None, True),
        ("notify", "/usr/bin/other", "nobody", False),
    ]
    assert s.instances[0].peer_addrs == ["10.0.0.2"]
    fw, grp = s.virtual_servers
    assert (fw.fwmark, fw.persistence_timeout, fw.lb_kind, fw.protocol) == (7, 360, "DR", "")
    assert (grp.group, grp.protocol, grp.persistent) == ("G", "UDP", False)
    assert s.lvs_instances()[0].name == "VI_2"


def test_positional_sync_daemon_form():
    s = KeepalivedSetup.from_conf(parse_text(
        "global_defs {\n  lvs_sync_daemon eth1 VI_1 33\n}\nvrrp_instance VI_1 {\n"
        "  virtual_router_id 5\n}\n"))
    assert (s.sync_daemon.instance, s.effective_syncid()[0]) == ("VI_1", 33)


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="needs keepalived")
def test_fixtures_are_what_keepalived_reads_without_structure_errors():
    """The seeds' corrected configurations pass keepalived's own check (interfaces aside)."""
    for seed in ("seed000", "seed001", "seed002", "seed003"):
        path = os.path.join(SEEDS, seed, "fixed", "keepalived.conf")
        out = subprocess.run(["keepalived", "-t", "-f", path], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=30).stdout
        for bad in ("Unknown keyword", "missing '}'", "Extra '}'", "Unterminated quote"):
            assert bad not in out, f"{seed}: {out}"
