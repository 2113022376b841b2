"""The configuration file: defaults, the example, and one clear line for every bad key or value."""

import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import yaml

from lvs_hooks import config as cfg
from lvs_hooks.config import (
    Config,
    dump_default_config,
    load_config,
    parse_config,
    setting,
    validate,
)
from lvs_hooks.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "lvs-hooks.yaml"
SRC = "/etc/lvs-hooks/lvs-hooks.yaml"


def error_of(text: str, schema=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC, schema)
    message = info.value.format_message()
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# Defaults and the example file


def test_absent_file_not_required_gives_defaults(tmp_path):
    c = load_config(str(tmp_path / "absent.yaml"), required=False)
    assert c == Config()
    assert c.sync.interface is None
    assert c.sync.syncid == 0
    assert c.sync.group == "224.0.0.81"
    assert c.sync.port == 8848
    assert c.sync.ttl == 1
    assert c.sync.maxlen == 1472
    assert c.paths.state_dir == "/var/lib/lvs-hooks"
    assert c.paths.run_dir == "/run/lvs-hooks"
    assert c.paths.proc_root == "/proc"
    assert c.snapshot.keep == 5
    assert c.reseed.min_timeout == 30
    assert c.reseed.verify_timeout == 10.0
    assert isinstance(c.reseed.verify_timeout, float)
    assert c.reseed.resend_rounds == 3
    assert c.reseed.rx_queue_limit == 65536
    assert c.log.level == "info"
    assert c.log.level_number == 20


def test_absent_file_required_is_an_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"^config .*absent\.yaml: no such file$"):
        load_config(str(path), required=True)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "sync:\n", "sync: {}\nlog:\n"])
def test_empty_file_or_sections_mean_defaults(text):
    assert parse_config(text, SRC) == Config()


def test_example_file_loads_and_holds_the_defaults():
    assert load_config(str(EXAMPLE), required=True) == Config()


def test_example_file_is_the_generated_one():
    # One source for the comments: the field docs. If this fails, regenerate the example:
    #   python -m lvs_hooks.config > etc/lvs-hooks.yaml
    assert EXAMPLE.read_text() == dump_default_config()


def test_example_file_names_every_key_and_comments_it():
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    for section in dataclasses.fields(Config):
        assert set(data[section.name]) == {f.name for f in dataclasses.fields(section.type)}
        for f in dataclasses.fields(section.type):
            assert len(f.metadata["doc"]) > 20, f"{section.name}.{f.name} needs a why"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"line {i + 1} has no comment: {line}"


def test_config_is_frozen():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sync.syncid = 3


def test_values_are_read():
    c = parse_config(
        "sync:\n  interface: eth1\n  syncid: 51\n  group: 239.1.2.3\n  maxlen: 0\n"
        "snapshot:\n  keep: 10\nreseed:\n  verify_timeout: 2\nlog:\n  level: debug\n",
        SRC,
    )
    assert c.sync.interface == "eth1"
    assert c.sync.syncid == 51
    assert c.sync.group == "239.1.2.3"
    assert c.sync.maxlen == 0
    assert c.snapshot.keep == 10
    assert c.reseed.verify_timeout == 2.0 and isinstance(c.reseed.verify_timeout, float)
    assert c.log.level == "debug"
    assert c.sync.port == 8848  # untouched keys keep their defaults


# --------------------------------------------------------------------------------------------
# Bad keys


def test_unknown_key_suggests_the_close_one():
    assert error_of("sync:\n  port: 8848\n  sycnid: 3\n") == (
        f"config {SRC}:3: sync.sycnid: unknown key (did you mean 'syncid'?)"
    )


def test_unknown_section_suggests_the_close_one():
    assert error_of("snapshots:\n  keep: 3\n") == (
        f"config {SRC}:1: snapshots: unknown key (did you mean 'snapshot'?)"
    )


def test_key_in_the_wrong_section_points_to_the_right_one():
    assert error_of("sync:\n  keep: 3\n") == (
        f"config {SRC}:2: sync.keep: unknown key (did you mean 'snapshot.keep'?)"
    )


def test_unknown_key_without_a_close_one_lists_the_allowed():
    assert error_of("log:\n  colour: red\n") == (
        f"config {SRC}:2: log.colour: unknown key (allowed: level)"
    )


def test_duplicate_key_is_an_error():
    assert error_of("sync:\n  port: 1\n  port: 2\n") == (
        f"config {SRC}:3: sync.port: duplicate key (first at line 2)"
    )


def test_non_string_key_is_an_error():
    assert "keys must be strings" in error_of("sync:\n  1: 2\n")


# --------------------------------------------------------------------------------------------
# Bad values


def test_wrong_type_names_key_allowed_and_value():
    assert error_of("sync:\n  syncid: abc\n") == (
        f"config {SRC}:2: sync.syncid: must be an integer 0-255, got 'abc'"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("sync:\n  syncid: 256\n", "sync.syncid: must be an integer 0-255, got 256"),
        ("sync:\n  syncid: -1\n", "sync.syncid: must be an integer 0-255, got -1"),
        ("sync:\n  port: 0\n", "sync.port: must be an integer 1-65535, got 0"),
        ("sync:\n  port: 65536\n", "sync.port: must be an integer 1-65535, got 65536"),
        ("sync:\n  ttl: 256\n", "sync.ttl: must be an integer 0-255, got 256"),
        ("sync:\n  maxlen: 100\n", "sync.maxlen: must be an integer 0 or 576-65507, got 100"),
        ("sync:\n  maxlen: 65508\n", "sync.maxlen: must be an integer 0 or 576-65507, got 65508"),
        ("snapshot:\n  keep: 0\n", "snapshot.keep: must be an integer 1-1000, got 0"),
        ("snapshot:\n  keep: 1001\n", "snapshot.keep: must be an integer 1-1000, got 1001"),
        ("reseed:\n  min_timeout: 0\n", "reseed.min_timeout: must be an integer >= 1, got 0"),
        ("reseed:\n  verify_timeout: 0\n", "reseed.verify_timeout: must be a number > 0, got 0"),
        ("reseed:\n  verify_timeout: .inf\n", "verify_timeout: must be a number > 0, got inf"),
        ("reseed:\n  verify_timeout: '5'\n", "verify_timeout: must be a number > 0, got '5'"),
        ("reseed:\n  resend_rounds: 11\n", "resend_rounds: must be an integer 0-10, got 11"),
        ("reseed:\n  rx_queue_limit: 0\n", "rx_queue_limit: must be an integer number of bytes"),
        ("reseed:\n  min_timeout: 1.5\n", "min_timeout: must be an integer >= 1, got 1.5"),
        ("log:\n  level: DEBUG\n", "must be one of debug, info, warning, error, got 'DEBUG'"),
        ("paths:\n  state_dir: var/lib\n", "paths.state_dir: must be an absolute path, got"),
        ("sync:\n  interface: eth0/1\n", "sync.interface: must be a network interface name"),
        ("sync:\n  interface: a23456789012345x\n", "or null, got 'a23456789012345x'"),
        ("sync:\n  interface: 12\n", "sync.interface: must be a network interface name"),
        ("sync: 3\n", "sync: must be a mapping of settings, got 3"),
        ("- sync\n", f"config {SRC}: must be a mapping of sections, got a list"),
    ],
)
def test_bad_values(text, message):
    assert message in error_of(text)


@pytest.mark.parametrize("maxlen", [0, 576, 1472, 65507])
def test_maxlen_bounds_accepted(maxlen):
    assert parse_config(f"sync:\n  maxlen: {maxlen}\n").sync.maxlen == maxlen


@pytest.mark.parametrize("group", ["224.0.0.81", "239.255.0.1", "ff02::81", "ff15::1234"])
def test_multicast_groups_accepted(group):
    assert parse_config(f"sync:\n  group: '{group}'\n").sync.group == group


@pytest.mark.parametrize("group", ["10.0.0.1", "255.255.255.255", "fe80::1", "::1", "eth0", ""])
def test_group_must_be_multicast(group):
    assert error_of(f"sync:\n  group: '{group}'\n") == (
        f"config {SRC}:2: sync.group: must be an IPv4 or IPv6 multicast address, got '{group}'"
    )


def test_int_setting_refuses_a_boolean():
    # In Python True == 1; 'port: true' must still not pass as port 1.
    assert error_of("sync:\n  port: true\n") == (
        f"config {SRC}:2: sync.port: must be an integer 1-65535, got true"
    )


def test_several_problems_first_in_file_order_and_all_kept():
    with pytest.raises(ConfigError) as info:
        parse_config("bogus: 1\nsync:\n  syncid: x\n  port: y\n", SRC)
    assert info.value.format_message() == (
        f"config {SRC}:1: bogus: unknown key (allowed: sync, paths, snapshot, reseed, log, transitions, master, backup, keeper, table, rules, control, push, warmup, metrics) "
        "(and 2 more problems)"
    )
    assert [str(p) for p in info.value.problems] == [
        f"config {SRC}:1: bogus: unknown key (allowed: sync, paths, snapshot, reseed, log, transitions, master, backup, keeper, table, rules, control, push, warmup, metrics)",
        f"config {SRC}:3: sync.syncid: must be an integer 0-255, got 'x'",
        f"config {SRC}:4: sync.port: must be an integer 1-65535, got 'y'",
    ]


# --------------------------------------------------------------------------------------------
# YAML itself


def test_yaml_syntax_error_names_file_and_line():
    message = error_of("sync:\n  port: 1\n bad: 2\n")
    assert message.startswith(f"config {SRC}:3:2: YAML syntax error: ")


def test_yaml_tab_error_names_the_line():
    assert error_of("sync:\n  port: 1\n\tttl: 2\n").startswith(f"config {SRC}:3:1: YAML syntax")


def test_yaml_unclosed_flow_mapping():
    assert error_of("log: {level: info\n").startswith(f"config {SRC}:2:1: YAML syntax error")


def test_two_documents_are_an_error():
    assert "YAML syntax error" in error_of("sync: {}\n---\nlog: {}\n")


def test_control_character_names_the_line():
    assert error_of("sync:\n  interface: a\x07b\n") == (
        f"config {SRC}:2: YAML error: character #x0007 is not allowed"
    )


def test_file_not_utf8(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"sync:\n  interface: \xff\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: not UTF-8 text$"):
        load_config(str(path), required=False)


def test_unreadable_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^config .*: cannot read: is a directory, not a regular file$"):
        load_config(str(tmp_path), required=False)


def test_load_config_reports_the_path_and_line(tmp_path):
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text("# comment\nsync:\n  sycnid: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), required=True)
    assert info.value.format_message() == (
        f"config {path}:3: sync.sycnid: unknown key (did you mean 'syncid'?)"
    )


# --------------------------------------------------------------------------------------------
# The generic validator, on schemas of its own: booleans, lists, required keys


@dataclasses.dataclass(frozen=True)
class Inner:
    ports: Tuple[int, ...] = setting((80,), "ports", ge=1, le=65535)


@dataclasses.dataclass(frozen=True)
class Sample:
    enabled: bool = setting(False, "a switch")
    names: List[str] = setting(doc="names", default_factory=list)
    ratio: Optional[float] = setting(None, "a ratio", ge=0, le=1)
    inner: Inner = cfg.section(Inner)


@dataclasses.dataclass(frozen=True)
class Required:
    name: str = dataclasses.field(metadata={"doc": "must be given"})


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("True", True)])
def test_bool_takes_true_and_false(text, value):
    assert parse_config(f"enabled: {text}\n", SRC, Sample).enabled is value


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "y", "1", "'true'"])
def test_bool_refuses_yes_no_and_friends(text):
    shown = {"1": "1", "'true'": "'true'"}.get(text, f"'{text}'")
    assert error_of(f"enabled: {text}\n", Sample) == (
        f"config {SRC}:1: enabled: must be true or false, got {shown}"
    )


def test_yes_and_no_stay_strings():
    # YAML 1.1 would have made an interface named "no" the boolean False.
    assert parse_config("sync:\n  interface: no\n", SRC).sync.interface == "no"


def test_optional_takes_null_and_checks_the_rest():
    assert parse_config("ratio: null\n", SRC, Sample).ratio is None
    assert parse_config("ratio: 0.5\n", SRC, Sample).ratio == 0.5
    assert error_of("ratio: 2\n", Sample) == (
        f"config {SRC}:1: ratio: must be a number 0-1 or null, got 2"
    )


def test_lists_and_tuples_are_checked_item_by_item():
    s = parse_config("names: [a, b]\ninner:\n  ports:\n    - 1\n    - 2\n", SRC, Sample)
    assert s.names == ["a", "b"]
    assert s.inner.ports == (1, 2)
    assert error_of("inner:\n  ports:\n    - 1\n    - 0\n", Sample) == (
        f"config {SRC}:4: inner.ports[1]: must be an integer 1-65535, got 0"
    )
    assert error_of("names: a\n", Sample) == (
        f"config {SRC}:1: names: must be a list of strings, got 'a'"
    )


def test_missing_required_key_points_at_its_section():
    assert error_of("{}\n", Required) == f"config {SRC}: name: missing; must be a string"
    with pytest.raises(ConfigError, match="name: missing"):
        validate(Required, {}, "x")


def test_unsupported_schema_type_is_a_bug_not_a_config_error():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        what: bytes = setting(b"", "bytes are not a YAML scalar")

    with pytest.raises(TypeError):
        parse_config("what: x\n", SRC, Bad)


def test_control_port_must_differ_from_sync_port():
    with pytest.raises(ConfigError) as e:
        parse_config("sync:\n  port: 9000\ncontrol:\n  port: 9000\n", SRC)
    assert str(e.value) == f"config {SRC}:4: control.port: must differ from sync.port"


def test_issue6_sections_defaults():
    c = parse_config("", SRC)
    assert c.control.key_file is None and c.control.port == 8849
    assert c.push.interval == 60.0 and c.push.rate == 20000
    assert c.warmup.track_file is None and c.warmup.max_wait == 120.0
    assert c.keeper.fwmark_repair_interval == 0.5


def test_unquoted_mac_and_times_stay_strings_not_base60_integers():
    c = parse_config("rules:\n  peer_macs: [52:54:00:12:34:56]\n", SRC)
    assert c.rules.peer_macs == ("52:54:00:12:34:56",)
    with pytest.raises(ConfigError) as e:
        parse_config("keeper:\n  interval: 1:30\n", SRC)
    assert "keeper.interval" in str(e.value) and "'1:30'" in str(e.value)
    c = parse_config("keeper:\n  interval: 2.5\n  refresh_below: 0x10\n", SRC)
    assert (c.keeper.interval, c.keeper.refresh_below) == (2.5, 16)
