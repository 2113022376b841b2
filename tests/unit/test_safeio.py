"""Reads that a FIFO, a device or a runaway file cannot hang, and parsers with bounds (issue 15)."""

import os

import pytest

from lvs_hooks import safeio
from lvs_hooks.config import load_config, parse_config
from lvs_hooks.errors import ConfigError, KeepalivedConfError, KernelError, SnapshotError
from lvs_hooks.keepalived_conf import parse_text, read_keepalived_conf


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_at_once(fifo):
    with pytest.raises(safeio.Refused, match="is a FIFO, not a regular file") as e:
        safeio.read_file(fifo, 100)
    assert e.value.filename == str(fifo)


def test_a_device_is_refused():
    with pytest.raises(safeio.Refused, match="is a device"):
        safeio.read_file("/dev/zero", 100)


def test_a_file_over_the_cap_is_refused_not_cut(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 101)
    with pytest.raises(safeio.Refused, match="larger than 100 bytes"):
        safeio.read_file(tmp_path / "f", 100)
    assert safeio.read_file(tmp_path / "f", 101) == b"x" * 101


def test_proc_files_are_read_with_a_cap_on_bytes():
    assert safeio.read_proc("/proc/self/stat").startswith(str(os.getpid()).encode())
    with pytest.raises(safeio.Refused, match="larger than"):
        safeio.read_proc("/proc/self/maps", 10)


@pytest.mark.parametrize("where", ["fifo", "/dev/zero", "dir"])
def test_a_config_that_is_no_file_is_one_line(tmp_path, fifo, where):
    path = {"fifo": str(fifo), "dir": str(tmp_path)}.get(where, where)
    with pytest.raises(ConfigError) as e:
        load_config(path, required=True)
    assert e.value.message.startswith(f"config {path}: cannot read: is ")


@pytest.mark.parametrize(
    "line, says",
    [
        ("root:$6$s3cr3t$hash:19000:0:99999:7:::", "a key that is no setting name"),
        ("root:$6$s3cr3t$hash:19000:0:99999:7", "got a string"),
        ("- s3cr3t", "got a list"),
    ],
)
def test_a_config_error_never_echoes_a_file_that_is_no_config(tmp_path, line, says):
    secret = tmp_path / "shadow"
    secret.write_text(line + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(secret), required=True)
    assert "s3cr3t" not in e.value.message and says in e.value.message


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases (*name) are not allowed"),
        ("a: &a [*a]\n", "aliases (*name) are not allowed"),
        ("[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),
        ("sync:\n  syncid: " + "9" * 5000 + "\n", "integer longer than 40 characters"),
        ("sync:\n  syncid: 2001-13-45\n", "not a valid timestamp"),
        ("sync:\n  syncid: !!float abc\n", "not a valid number"),
    ],
)
def test_yaml_bombs_are_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "F")
    assert message in e.value.message and "\n" not in e.value.message
    assert "abc" not in e.value.message


def test_a_definition_bomb_is_one_line():
    with pytest.raises(KeepalivedConfError, match="expand to more than 64 KiB"):
        parse_text("$A=x\n$A=$A $A\nglobal_defs {\n router_id $A\n}\n")
    chain = "$A0=x x\n" + "".join(f"$A{i}=$A{i - 1} $A{i - 1}\n" for i in range(1, 30))
    with pytest.raises(KeepalivedConfError, match="expand to more than"):
        parse_text(chain + "global_defs {\n router_id $A29\n}\n")


def test_an_include_fan_out_is_one_line(tmp_path):
    for i in range(25):
        (tmp_path / f"c{i}.conf").write_text(f"include c{i + 1}.conf\ninclude c{i + 1}.conf\n")
    (tmp_path / "c25.conf").write_text("global_defs {\n}\n")
    with pytest.raises(KeepalivedConfError, match="nested deeper than 16 files|more than 1000 files"):
        read_keepalived_conf(str(tmp_path / "c0.conf"))
    (tmp_path / "b.conf").write_text("include " + "{a,b}" * 40 + "\n")
    with pytest.raises(KeepalivedConfError, match="more than 1024 patterns"):
        read_keepalived_conf(str(tmp_path / "b.conf"))


def test_a_keepalived_include_that_is_a_fifo_is_skipped(tmp_path, fifo):
    (tmp_path / "main.conf").write_text(f"include {fifo}\nglobal_defs {{\n}}\n")
    conf = read_keepalived_conf(str(tmp_path / "main.conf"))
    assert [s[1] for s in conf.skipped] == ["not a regular file"]


def test_the_conn_table_reader_refuses_a_fifo(fifo):
    from lvs_hooks.kernel.conntable import read_proc_file

    with pytest.raises(KernelError, match="is a FIFO"):
        read_proc_file(str(fifo))


def test_a_snapshot_that_is_a_fifo_is_one_line(tmp_path):
    from lvs_hooks.snapshot import SnapshotStore

    store = SnapshotStore(str(tmp_path))
    path = tmp_path / "snapshot-20260101T000000.000000Z.json"
    os.mkfifo(path)
    with pytest.raises(SnapshotError, match="is a FIFO"):
        store.load(path)
    assert [g.ok for g in store.generations()] == [False]
