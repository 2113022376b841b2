"""The configuration: one YAML file, checked against typed frozen dataclasses.

The schema is the dataclasses at the bottom of this module. A small generic validator walks them
by their type hints (int, float, str, bool, Optional[X], List[X], Tuple[X, ...], nested
dataclasses) and by the constraints declared next to each field with `setting()`. To add a
section, add a dataclass and a field for it on `Config`; the validator, the error messages and
the commented example (`dump_default_config`, which the shipped lvs-hooks.yaml is generated
from) follow.

Every problem is reported as one line naming the file, the line, the key path and what is allowed:

    config /etc/lvs-hooks/lvs-hooks.yaml:4: sync.sycnid: unknown key (did you mean 'syncid'?)
    config /etc/lvs-hooks/lvs-hooks.yaml:5: sync.port: must be an integer 1-65535, got 'abc'
"""

import dataclasses
import difflib
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
    get_type_hints,
)

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from lvs_hooks import safeio
from lvs_hooks.errors import ConfigError
from lvs_hooks.kernel import syncproto

log = logging.getLogger(__name__)

T = TypeVar("T")
_NoneType = type(None)

# --------------------------------------------------------------------------------------------
# Declaring settings


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: Optional[float] = None,
    le: Optional[float] = None,
    gt: Optional[float] = None,
    choices: Optional[Tuple[Any, ...]] = None,
    check: Optional[Callable[[Any], bool]] = None,
    allowed: Optional[str] = None,
) -> Any:
    """A dataclass field for a setting: its default, why it exists (`doc`, which becomes the
    comment in the example file) and what values it takes.

    ge/le/gt bound numbers, `choices` lists the values taken, `check` is a predicate for anything
    else; `allowed` describes the values in words for messages when the bounds cannot say it.
    For List/Tuple settings the constraints apply to each item; a list default needs
    `default_factory`, as with dataclasses.field.
    """
    meta = {"doc": doc, "ge": ge, "le": le, "gt": gt, "choices": choices, "check": check}
    meta["allowed"] = allowed
    return field(default=default, default_factory=default_factory, metadata=meta)


def section(cls: Type[Any]) -> Any:
    """A dataclass field holding a nested section; absent or empty in the file means defaults."""
    return field(default_factory=cls)


# --------------------------------------------------------------------------------------------
# The generic validator


@dataclass(frozen=True)
class Problem:
    """One bad key or value."""

    source: str
    line: Optional[int]
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"config {where}: {self.path + ': ' if self.path else ''}{self.message}"


class _Context:
    def __init__(self, source: str, lines: Dict[str, int], root: Type[Any]):
        self.source = source
        self.lines = lines
        self.root = root
        self.problems: List[Problem] = []
        self.more = 0  # problems past MAX_PROBLEMS, counted only

    def problem(self, path: str, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            # A file of thousands of bad keys is no config: counting the rest is enough, and
            # a suggestion for each would take seconds.
            self.more += 1
            return
        # A key that is missing has no line of its own: point at its section instead.
        line = self.lines.get(path)
        parent = path
        while line is None and parent:
            parent = parent.rpartition(".")[0]
            line = self.lines.get(parent)
        self.problems.append(Problem(self.source, line, path, message))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    """A value as the user wrote it, in YAML terms, short enough for one line."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a mapping"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    """What a value is, without its content."""
    if value is None or isinstance(value, (bool, dict, list)):
        return _show(value)
    return {str: "a string", int: "an integer", float: "a number"}.get(type(value), "a value")


def _optional_inner(tp: Any) -> Any:
    """X for Optional[X], else None."""
    if getattr(tp, "__origin__", None) is Union:
        args = [a for a in tp.__args__ if a is not _NoneType]
        if len(args) != 1 or len(tp.__args__) != 2:
            raise TypeError(f"config schema: only Optional[X] unions are supported, not {tp}")
        return args[0]
    return None


def _sequence_item(tp: Any) -> Any:
    """X for List[X] or Tuple[X, ...], else None."""
    origin = getattr(tp, "__origin__", None)
    if origin is list:
        return tp.__args__[0]
    if origin is tuple:
        args = tp.__args__
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"config schema: only Tuple[X, ...] tuples are supported, not {tp}")
        return args[0]
    return None


def _number(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else str(n)


def describe(tp: Any, meta: Any) -> str:
    """What a setting of type `tp` with constraints `meta` takes, in words ("an integer 0-255")."""
    inner = _optional_inner(tp)
    if inner is not None:
        return describe(inner, meta) + " or null"
    item = _sequence_item(tp)
    if item is not None:
        return "a list of " + _plural(describe(item, meta))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if meta.get("allowed"):
        return meta["allowed"]
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    noun = {int: "an integer", float: "a number"}.get(tp)
    if noun is None:
        raise TypeError(f"config schema: unsupported setting type {tp}")
    ge, le, gt = meta.get("ge"), meta.get("le"), meta.get("gt")
    if ge is not None and le is not None:
        return f"{noun} {_number(ge)}-{_number(le)}"
    bounds = []
    if ge is not None:
        bounds.append(f">= {_number(ge)}")
    if gt is not None:
        bounds.append(f"> {_number(gt)}")
    if le is not None:
        bounds.append(f"<= {_number(le)}")
    return " ".join([noun] + bounds)


def _plural(description: str) -> str:
    for article in ("an ", "a "):
        if description.startswith(article):
            return description[len(article) :] + "s"
    return description


def _scalar_ok(tp: Any, value: Any, meta: Any) -> Tuple[bool, Any]:
    # bool is an int in Python: 'port: true' must not pass as 1, hence the exact type checks.
    if tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = type(value) is int
    elif tp is float:
        ok = type(value) in (int, float) and math.isfinite(value)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"config schema: unsupported setting type {tp}")
    if not ok:
        return False, value
    ge, le, gt = meta.get("ge"), meta.get("le"), meta.get("gt")
    if ge is not None and value < ge:
        return False, value
    if le is not None and value > le:
        return False, value
    if gt is not None and value <= gt:
        return False, value
    if meta.get("choices") and value not in meta["choices"]:
        return False, value
    check = meta.get("check")
    if check is not None and not check(value):
        return False, value
    return True, value


def _value(tp: Any, value: Any, meta: Any, path: str, ctx: _Context, described: Any) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path, ctx)
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _value(inner, value, meta, path, ctx, described)
    item = _sequence_item(tp)
    if item is not None:
        if not isinstance(value, list):
            ctx.problem(path, f"must be {describe(described, meta)}, got {_show(value)}")
            return None
        items = [_value(item, x, meta, f"{path}[{i}]", ctx, item) for i, x in enumerate(value)]
        return items if getattr(tp, "__origin__", None) is list else tuple(items)
    ok, converted = _scalar_ok(tp, value, meta)
    if not ok:
        ctx.problem(path, f"must be {describe(described, meta)}, got {_show(value)}")
    return converted


def _all_paths(cls: Type[Any], prefix: str = "") -> List[str]:
    paths = []
    for f in dataclasses.fields(cls):
        path = _join(prefix, f.name)
        paths.append(path)
        tp = _hints(cls)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            paths.extend(_all_paths(tp, path))
    return paths


def _hints(cls: Type[Any]) -> Dict[str, Any]:
    # get_type_hints, not __annotations__: it resolves string annotations, should a module
    # defining a section use them.
    return get_type_hints(cls)


_KEY_LIKE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def _unknown_key(cls: Type[Any], key: str, path: str, ctx: _Context) -> None:
    if len(ctx.problems) >= MAX_PROBLEMS:
        ctx.more += 1
        return
    if not _KEY_LIKE.match(key):
        # Not a name anyone meant as a setting: a line of some other file. Say where, not what.
        ctx.problem(path, "a key that is no setting name (is this a lvs-hooks config?)")
        return
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{close[0]}'?"
    else:
        # The right key in the wrong section is a common slip: point at where it belongs.
        elsewhere = [p for p in _all_paths(ctx.root) if p.rpartition(".")[2] == key]
        hint = f"did you mean '{elsewhere[0]}'?" if elsewhere else "allowed: " + ", ".join(names)
    ctx.problem(_join(path, key), f"unknown key ({hint})")


def _dataclass(cls: Type[Any], data: Any, path: str, ctx: _Context) -> Any:
    if data is None:
        data = {}  # an empty section ("sync:" and nothing under it) means its defaults
    if not isinstance(data, dict):
        what = "settings" if path else "sections"
        # At the top, only what kind of document it is: a file that is no config at all (a
        # --config pointing at /etc/shadow) must not have its first line echoed to syslog.
        got = _show(data) if path else _kind(data)
        ctx.problem(path, f"must be a mapping of {what}, got {got}")
        return None
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if not isinstance(key, str):
            ctx.problem(_join(path, _show(key)), "keys must be strings")
        elif key not in fields:
            _unknown_key(cls, key, path, ctx)
    values = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            values[name] = _value(hints[name], data[name], f.metadata, sub, ctx, hints[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.problem(sub, f"missing; must be {describe(hints[name], f.metadata)}")
    if ctx.problems:
        return None
    return cls(**values)


def _raise(problems: List[Problem], uncounted: int = 0) -> None:
    # In file order, so the first one named is the first one an editor reaches.
    problems = sorted(problems, key=lambda p: p.line or 0)
    first = str(problems[0])
    more = len(problems) - 1 + uncounted
    if more:
        first += f" (and {more} more problem{'s' if more > 1 else ''})"
    err = ConfigError(first)
    # All of them, for a command that checks a file and wants to list every problem at once.
    err.problems = problems  # type: ignore[attr-defined]
    raise err


def validate(
    cls: Type[T], data: Any, source: str = "config", lines: Optional[Dict[str, int]] = None
) -> T:
    """Build dataclass `cls` from plain data (as YAML gives it), or raise ConfigError.

    `lines` maps key paths ("sync.syncid") to line numbers for the messages.
    """
    ctx = _Context(source, lines or {}, cls)
    result = _dataclass(cls, data, "", ctx)
    if ctx.problems:
        _raise(ctx.problems, ctx.more)
    return result


# --------------------------------------------------------------------------------------------
# YAML


# Bounds on what a config file may make the parser do (issue 15): a file is a few KiB, a few
# levels deep, its numbers a few digits. Past these it is not a config, and it is refused in one
# line before it can exhaust memory, the stack or the integer parser.
MAX_CONFIG_BYTES = 256 << 10
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 40
MAX_PROBLEMS = 100


class _Refused(ComposerError):
    """A document the loader refuses to build (an alias, too deep): not a syntax error."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false), no aliases, bounded nesting and
    numbers.

    YAML 1.1 (PyYAML's default) also reads yes/no/on/off as booleans, which turns an interface
    named "no" into False and lets "yes" pass for true. Here those stay strings, so a boolean
    setting given "yes" is refused with a message instead of being guessed.

    Aliases (`*name`, and with them `<<: *name` merges) are refused: a few lines of them expand
    to billions of nodes (an "alias bomb"), or to a loop, and a config this small does not need
    them. The composer recurses per level: nesting is capped well below Python's stack.
    """

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                None, None, "aliases (*name) are not allowed here; write the value out",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# What PyYAML's scalar constructors raise on a value their tag does not fit (`!!int` alone is an
# IndexError, `!!bool abc` a KeyError, `!!timestamp abc` an AttributeError): input errors all.
_CONSTRUCTION_ERRORS = (ValueError, OverflowError, IndexError, KeyError, AttributeError, TypeError)


def _bounded(kind: str, construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A scalar constructor that refuses a value too long to be a setting, and turns the
    conversion's own errors (which quote the text) into a YAML error at the value's line."""

    def build(loader: Any, node: Any) -> Any:
        if isinstance(node, ScalarNode) and len(node.value) > MAX_NUMBER_CHARS:
            raise ConstructorError(
                None, None, f"{kind} longer than {MAX_NUMBER_CHARS} characters", node.start_mark
            )
        try:
            return construct(loader, node)
        except _CONSTRUCTION_ERRORS:
            raise ConstructorError(
                None, None, f"not a valid {kind}", node.start_mark
            ) from None

    return build




_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_Loader.add_constructor(_INT_TAG, _bounded("integer", yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor(_BOOL_TAG, _bounded("boolean", yaml.SafeLoader.construct_yaml_bool))
_Loader.add_constructor(_FLOAT_TAG, _bounded("number", yaml.SafeLoader.construct_yaml_float))
_Loader.add_constructor(
    _TIMESTAMP_TAG, _bounded("timestamp", yaml.SafeLoader.construct_yaml_timestamp)
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# Numbers as YAML 1.1 reads them, but without its base-60 forms: an unquoted MAC address
# (52:54:00:12:34:56) or a time (1:30) stays the string it looks like instead of becoming an
# integer nobody meant.
_Loader.add_implicit_resolver(
    _INT_TAG,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _node_lines(node: Any, path: str, lines: Dict[str, int], dups: List[Tuple[str, int, int]]):
    """Record the line of every key path; note keys given twice in one mapping (PyYAML would
    silently keep the last one)."""
    if isinstance(node, MappingNode):
        seen: Dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.value == "<<":
                continue
            sub = _join(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                dups.append((sub, line, seen[key_node.value]))
            else:
                seen[key_node.value] = line
                lines[sub] = line
            _node_lines(value_node, sub, lines, dups)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines[sub] = item.start_mark.line + 1
            _node_lines(item, sub, lines, dups)


def _yaml_error(source: str, text: str, e: yaml.YAMLError) -> ConfigError:
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        return ConfigError(
            f"config {source}:{line}: YAML error: character #x{e.character:04x} is not allowed"
        )
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
        what = e.problem or "syntax error"
        if e.context:
            what += f" ({e.context})"
        # The composer's and the constructors' refusals (an alias, a bound) are not syntax.
        kind = "YAML" if isinstance(e, (_Refused, ConstructorError)) else "YAML syntax"
        return ConfigError(
            f"config {source}:{mark.line + 1}:{mark.column + 1}: {kind} error: {what}"
        )
    # ReaderError (a control character, bad encoding) and the like: flatten to one line.
    text = "; ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return ConfigError(f"config {source}: YAML error: {text}")


def parse_config(text: str, source: str = "config", schema: Optional[Type[Any]] = None) -> Any:
    """Parse and validate YAML text into a Config, or into another dataclass `schema`
    (ConfigError on any problem)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {source}: larger than {MAX_CONFIG_BYTES >> 10} KiB")
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise _yaml_error(source, text, e) from None
    except (*_CONSTRUCTION_ERRORS, RecursionError) as e:
        # A constructor's failure on a tag and value this loader did not wrap: still the file's.
        raise ConfigError(f"config {source}: YAML error: a value cannot be read "
                          f"({type(e).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: Dict[str, int] = {}
    dups: List[Tuple[str, int, int]] = []
    if node is not None:
        _node_lines(node, "", lines, dups)
    if dups:
        _raise(
            [
                Problem(source, ln, p, f"duplicate key (first at line {first})")
                for p, ln, first in dups
            ]
        )
    cfg = validate(schema or Config, data, source, lines)
    if isinstance(cfg, Config) and cfg.control.port == cfg.sync.port:
        path = "control.port"
        _raise([Problem(source, lines.get(path), path, "must differ from sync.port")])
    return cfg


def load_config(path: str, required: bool) -> "Config":
    """The configuration from `path`.

    An absent file gives the built-in defaults unless `required` (the operator named the file
    explicitly, so its absence is a mistake worth stopping for).
    """
    try:
        raw = safeio.read_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config {path}: no such file") from None
        log.debug("config %s absent: using built-in defaults", path)
        return Config()
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"config {path}:{line}: not UTF-8 text") from None
    return parse_config(text, path)


# --------------------------------------------------------------------------------------------
# Checks for values that bounds cannot express


def is_multicast_address(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_multicast
    except ValueError:
        return False


def is_interface_name(text: str) -> bool:
    """What the kernel accepts as a network device name (dev_valid_name)."""
    return (
        0 < len(text) < 16
        and text not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in text)
    )


def _is_maxlen(n: int) -> bool:
    return n == 0 or 576 <= n <= 65507


def is_vs_sysctl(text: str) -> bool:
    """A `name=value` assignment of a net.ipv4.vs sysctl ("sloppy_tcp=1", "sync_threshold=3 50")."""
    return re.match(r"^[a-z][a-z0-9_]*=-?[0-9]+( -?[0-9]+)*$", text) is not None


# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class SyncConfig:
    """The IPVS sync link. Templates reach the kernel only as sync messages received by a backup
    sync daemon, which takes only what arrives on its interface, group and port with its sync id:
    these must match that daemon (keepalived's lvs_sync_daemon, or the one lvs-hooks starts)."""

    interface: Optional[str] = setting(
        None,
        "Interface the sync messages leave by (the backup daemon is bound to it; a message from "
        "this host is accepted only if it goes out of that interface). null: the interface of "
        "the kernel sync daemon running when a hook starts.",
        check=is_interface_name,
        allowed="a network interface name (1-15 characters, no '/', ':' or spaces)",
    )
    syncid: int = setting(
        0,
        "Sync id written in every message we send and given to a backup daemon we start. A "
        "backup daemon drops messages whose id differs from its own unless its own is 0, which "
        "accepts all. keepalived's lvs_sync_daemon uses its 'id' option, or else the VRRP "
        "instance's virtual_router_id: set that same number here when you run keepalived's "
        "daemon. 0 suits a backup daemon started with id 0 (e.g. by lvs-hooks itself).",
        ge=0,
        le=255,
    )
    group: str = setting(
        syncproto.IP_VS_SYNC_GROUP,
        "Multicast group of the sync messages; the backup daemon listens only there. "
        "224.0.0.81 is the kernel's default; keepalived's lvs_sync_daemon 'group' changes it.",
        check=is_multicast_address,
        allowed="an IPv4 or IPv6 multicast address",
    )
    port: int = setting(
        syncproto.IP_VS_SYNC_PORT,
        "UDP port of the sync messages (the kernel's default is 8848; keepalived's 'port').",
        ge=1,
        le=65535,
    )
    ttl: int = setting(
        1,
        "Multicast TTL, used only to push templates to peer directors on purpose. Reseeding "
        "this host always sends with TTL 0 and multicast loop on, so nothing reaches the wire.",
        ge=0,
        le=255,
    )
    maxlen: int = setting(
        syncproto.SYNC_MAXLEN_DEFAULT,
        "Largest sync message payload in bytes that we send, and the receive limit of a backup "
        "daemon we start. A datagram bigger than the receiver's limit (by default its MTU, at "
        "least 1500, minus headers) is dropped without a trace; 1472 fits a 1500-byte MTU, 40 "
        "IPv4 templates per datagram as the kernel sends them. 0: the kernel's default.",
        check=_is_maxlen,
        allowed="an integer 0 or 576-65507",
    )


@dataclass(frozen=True)
class PathsConfig:
    """Where lvs-hooks keeps its files."""

    state_dir: str = setting(
        "/var/lib/lvs-hooks",
        "Snapshots of the persistence templates. Must survive a reboot: a director that comes "
        "back and preempts with an empty table reseeds from here. Created with mode 0700.",
        check=os.path.isabs,
        allowed="an absolute path",
    )
    run_dir: str = setting(
        "/run/lvs-hooks",
        "Runtime state that a reboot should forget: the transition lock, the backup sync daemon "
        "lvs-hooks started.",
        check=os.path.isabs,
        allowed="an absolute path",
    )
    proc_root: str = setting(
        "/proc",
        "Where procfs is mounted; the connection table is read from <proc_root>/net. Tests "
        "point it at a fake tree.",
        check=os.path.isabs,
        allowed="an absolute path",
    )


@dataclass(frozen=True)
class SnapshotConfig:
    """Snapshots of the persistence templates, taken while this director is master."""

    keep: int = setting(
        5,
        "Generations kept. More than one, so that a damaged newest file (bad disk, a copy cut "
        "short) still leaves an older good one to reseed from.",
        ge=1,
        le=1000,
    )


@dataclass(frozen=True)
class ReseedConfig:
    """Putting templates back into the kernel after a failover."""

    min_timeout: int = setting(
        30,
        "Floor in seconds for the timeout a reseeded template gets. The kernel keeps the "
        "injected timeout (it re-arms the template with it, not with persistence_timeout), and a "
        "template captured with only seconds left would be gone before its client returns.",
        ge=1,
    )
    verify_timeout: float = setting(
        10.0,
        "Seconds to wait for reseeded templates to show up in the connection table before "
        "reporting the missing ones.",
        gt=0,
    )
    resend_rounds: int = setting(
        3,
        "Times templates still missing after a round are sent again: the receiving socket drops "
        "whole datagrams when its buffer is full. 0: send once.",
        ge=0,
        le=10,
    )
    rx_queue_limit: int = setting(
        65536,
        "Pacing: wait before sending more while the backup daemon's socket holds more than this "
        "many bytes unread (its rx_queue in /proc/net/udp). Unpaced bulk sends lose a third to "
        "two thirds of the templates; fixed sleeps are fragile.",
        gt=0,
        allowed="an integer number of bytes > 0",
    )


@dataclass(frozen=True)
class LogConfig:
    """Logging, to syslog/journal when run by keepalived (a hook's stdout goes nowhere)."""

    level: str = setting(
        "info",
        "Lowest level logged; the --debug flag logs debug lines whatever this says.",
        choices=("debug", "info", "warning", "error"),
    )

    @property
    def level_number(self) -> int:
        """The level as the logging module numbers it."""
        return logging.getLevelName(self.level.upper())


@dataclass(frozen=True)
class RoleConfig:
    """Kernel settings for a role, applied on each transition into it."""

    tcp: int = setting(
        0,
        "IPVS timeout of established TCP connections, in seconds (ipvsadm --set, first value). "
        "0: leave it as it is.",
        ge=0,
        le=2073600,
    )
    tcpfin: int = setting(
        0, "IPVS timeout of TCP connections after a FIN, in seconds. 0: leave it.", ge=0, le=2073600
    )
    udp: int = setting(0, "IPVS timeout of UDP flows, in seconds. 0: leave it.", ge=0, le=2073600)
    sysctls: Tuple[str, ...] = setting(
        ("sloppy_tcp=1",),
        "net.ipv4.vs sysctls to set, as name=value. sloppy_tcp=1 lets an established TCP "
        "connection that this director never saw continue on the real server its template names "
        "(otherwise its next packet is answered with a reset).",
        check=is_vs_sysctl,
        allowed="name=value (e.g. sloppy_tcp=1)",
    )


@dataclass(frozen=True)
class MasterRoleConfig(RoleConfig):
    """Kernel settings applied when this director becomes MASTER, before the templates are
    reseeded."""


@dataclass(frozen=True)
class BackupRoleConfig(RoleConfig):
    """Kernel settings applied when this director becomes BACKUP or goes to FAULT."""


@dataclass(frozen=True)
class TransitionsConfig:
    """What a keepalived state change does on this director (lvs-hooks notify, fifo, master...)."""

    instances: Tuple[str, ...] = setting(
        (),
        "Names of the VRRP instances and sync groups whose state changes drive this director. "
        "The steps act on the whole director (one IPVS table), so name the one instance or sync "
        "group that carries the virtual servers; events of others are journaled and ignored. "
        "Empty: every event counts.",
        check=lambda s: bool(s.strip()),
        allowed="an instance or group name",
    )
    keepalived_lvs_timeouts: bool = setting(
        False,
        "Set true when keepalived.conf has lvs_timeouts: keepalived applies those at start and "
        "reload and restores the old values at stop, so the timeouts of the master and backup "
        "sections are then not applied (each transition says so) rather than fought over.",
    )
    lock_timeout: float = setting(
        60.0,
        "Seconds an event waits for the transition before it to finish; after that it gives up "
        "(exit code 7, logged). A STOP waits at most 0.3 s: keepalived kills it after 1 s.",
        gt=0,
    )
    journal_keep: int = setting(
        1000,
        "Transitions kept in the journal (<state_dir>/events.jsonl, shown by lvs-hooks history).",
        ge=1,
        le=100000,
    )

@dataclass(frozen=True)
class KeeperConfig:
    """The template keeper: while this director is master, templates synced from the old master
    are not linked to the connections they stand for, so the kernel lets them expire while the
    client's flow goes on, and the client's next flow is scheduled afresh. The keeper renews
    them, as the kernel renews its own, while the client still has a connection."""

    enabled: bool = setting(True, "Run the keeper inside `lvs-hooks fifo` while master.")
    interval: float = setting(
        5.0,
        "Seconds between two looks at the table (one read of it each). Must be well under the "
        "shortest persistence_timeout.",
        gt=0,
    )
    refresh_below: float = setting(
        12.0,
        "A template with fewer seconds left than this, whose client still has a connection, is "
        "renewed to its service's persistence_timeout. More than twice the interval.",
        gt=0,
    )
    snapshot_interval: float = setting(
        30.0,
        "While backup, `lvs-hooks fifo` also takes a snapshot this often (seconds; 0: never), "
        "so a takeover finds a recent one even without the systemd timer; or, when the last "
        "one took longer than a tenth of this, ten times as long as it took.",
        ge=0,
    )
    fwmark_repair_interval: float = setting(
        0.5,
        "While backup, `lvs-hooks fifo` looks this often (seconds; 0: never) for fwmark "
        "templates the kernel's sync delivered with port 0, which can never bind to a real "
        "server that has a port (NAT): it lets each expire (timeout 1 s) and puts it back with "
        "the real server's port. The master's sync refreshes a template at every packet of its "
        "client, so a busy client's template is repaired once the master falls silent: a dead "
        "master's in about 2.5 intervals, before VRRP notices (3 advertisement intervals "
        "and more). Costs one read of the template table each time, only while there are "
        "persistent fwmark services.",
        ge=0,
    )


@dataclass(frozen=True)
class TableConfig:
    """The agent's table in memory: the director's templates, fed by the sync stream (heard as
    backup, captured as it leaves as master) and by lvs-hooks' own injections, so that the
    keeper, the fwmark repair, the push check, the takeover's reseed and the periodic snapshot
    need no read of /proc/net/ip_vs_conn, which the kernel serves in time quadratic in its size.
    """

    enabled: bool = setting(
        True,
        "Keep the table in memory in `lvs-hooks agent` and plan from it where a whole read is "
        "over read_budget. Off (and without an agent), every duty reads the kernel's table.",
    )
    read_budget: int = setting(
        20000,
        "A whole read of /proc/net/ip_vs_conn is allowed (at the agent's start, then to "
        "reconcile the table in memory, and to verify an injection entry by entry) only while "
        "the kernel's counters say the table holds at most this many entries; above it the "
        "agent trusts the table in memory and verifies by the per-real-server counters.",
        ge=0,
    )
    reconcile_interval: float = setting(
        300.0,
        "Seconds between two reconciliations of the table in memory with the kernel's (each a "
        "whole read, at low CPU priority, and only within read_budget; 0: only at start).",
        ge=0,
    )


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_mac_address(text: str) -> bool:
    """An Ethernet address written as six colon-separated hex pairs ("52:54:00:12:34:56")."""
    return re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", text) is not None


@dataclass(frozen=True)
class RuleServiceConfig:
    """One virtual service of a director that is also a real server (DR, VIP on lo)."""

    vip: str = setting(
        doc="The service's virtual address.",
        check=is_ip_address,
        allowed="an IPv4 or IPv6 address",
    )
    port: int = setting(0, "The service's port; 0: every port of the protocol.", ge=0, le=65535)
    protocol: str = setting("tcp", "The service's protocol.", choices=("tcp", "udp", "sctp"))
    mode: str = setting(
        "fwmark",
        "fwmark: mark packets to the service that do not come from a peer director (the same "
        "rules in every state; keepalived balances `virtual_server fwmark N`). redirect: on "
        "BACKUP and FAULT send every packet to the service to the local stack (REDIRECT), on "
        "MASTER only those from a peer director; keepalived keeps `virtual_server VIP PORT`, the "
        "real server must listen on the address of the interface the packets come in by (e.g. "
        "on 0.0.0.0). none: no rule.",
        choices=("fwmark", "redirect", "none"),
    )
    fwmark: int = setting(
        0,
        "The mark set in fwmark mode: the N of keepalived's `virtual_server fwmark N`.",
        ge=0,
        le=0xFFFFFFFF,
    )


@dataclass(frozen=True)
class RulesConfig:
    """Loop protection for directors that are also real servers in DR mode: every director has
    the virtual servers loaded and the VIP on lo, so a backup re-balances what the master sent
    it, possibly back to the master, and the packet goes round ("ping-pong"). `lvs-hooks rules`
    installs the rules, the keepalived transitions swap them (first step, before anything else),
    and lvs-hooks-rules.service restores the backup-role rules at boot, before keepalived."""

    services: Tuple[RuleServiceConfig, ...] = setting(
        (),
        "The services to protect, each a mapping, e.g. {vip: 10.0.0.100, port: 80, protocol: "
        "tcp, mode: fwmark, fwmark: 1} or {vip: 10.0.0.100, port: 443, mode: redirect}. Empty: "
        "no rules (the firewall step of a transition does nothing).",
    )
    peers: Tuple[str, ...] = setting(
        (),
        "Addresses of the other directors on the network the real servers are on. Their MAC "
        "addresses, which the rules match (packets a peer director forwarded to this one), are "
        "taken from the neighbour table, or from the last ones learned when it has none. Needed "
        "by fwmark mode and by redirect mode's MASTER rules.",
        check=is_ip_address,
        allowed="IPv4 or IPv6 addresses",
    )
    peer_macs: Tuple[str, ...] = setting(
        (),
        "MAC addresses of the other directors, given here rather than learned: the surest "
        "choice, as a rebooted director may find its neighbour table empty.",
        check=is_mac_address,
        allowed='MAC addresses in quotes ("52:54:00:12:34:56"; unquoted, YAML may read a number)',
    )
    backend: str = setting(
        "auto",
        "Firewall tool. auto: nft when iptables is the nf_tables flavour or absent, else "
        "iptables (legacy). nft works on the table inet lvs_hooks; the iptables flavours on "
        "chains LVS-HOOKS-* jumped to from mangle and nat PREROUTING. The rules are never "
        "mixed with the user's.",
        choices=("auto", "nft", "iptables", "iptables-nft", "iptables-legacy"),
    )
    backup_only: bool = setting(
        False,
        "Also set net.ipv4.vs.backup_only: 1 on BACKUP and FAULT, 0 on MASTER. The kernel then "
        "balances nothing while a backup sync daemon runs. Only fits when keepalived runs one "
        "sync daemon at a time (lvs_sync_daemon with a VRRP instance); with both daemons always "
        "running it is a role switch like redirect mode, with its failback window. See "
        "`lvs-hooks rules show`.",
    )


@dataclass(frozen=True)
class ControlConfig:
    """lvs-hooks' own messages between directors: the start and end of a full-table push,
    requests for one, status queries (warm-up, handover). Each is a UDP datagram to the sync
    group on its own port, authenticated with HMAC-SHA256 under a shared key and refused when
    older than max_skew or seen before (nonce). Without a key there is no control channel:
    pushes still go out, but nobody can confirm them, and `handover` refuses to run."""

    key_file: Optional[str] = setting(
        None,
        "File holding the shared key (the same on every director; at least 32 bytes, e.g. "
        "`head -c 32 /dev/urandom | base64 > FILE`; mode 0600, owned by root). null: no "
        "control channel.",
        check=os.path.isabs,
        allowed="an absolute path, or null",
    )
    name: Optional[str] = setting(
        None,
        "This director's name in its messages (peers report by it; a director ignores its own "
        "messages by it). null: the host name. Must differ between directors.",
        check=lambda v: 0 < len(v) <= 64 and v.isprintable(),
        allowed="1-64 printable characters, or null",
    )
    port: int = setting(
        8849,
        "UDP port of the control messages, on the sync group and interface (sync.group, "
        "sync.interface). Must differ from sync.port.",
        ge=1,
        le=65535,
    )
    max_skew: float = setting(
        30.0,
        "A message whose sender's clock differs from ours by more than this (seconds) is "
        "refused; within it, a nonce seen before is refused. Keep the directors' clocks in "
        "sync (chrony).",
        gt=0,
        le=3600,
    )


@dataclass(frozen=True)
class PushConfig:
    """Full-table push: the master sends every template it holds to the sync group (TTL
    sync.ttl) as ordinary sync messages, so every backup's kernel holds the full set, not only
    the templates of clients that sent traffic lately. Pushed templates carry the real server's
    configured port (fwmark services) and what is left of their lifetime. A push never
    re-points a template a backup already holds (the kernel only updates its timeout)."""

    interval: float = setting(
        60.0,
        "While master, push the whole table this often (seconds; 0: only on request: a "
        "starting peer's request, `lvs-hooks push`, `lvs-hooks handover`).",
        ge=0,
    )
    rate: int = setting(
        20000,
        "Templates per second at most. The sender cannot see a peer's receive queue: this "
        "pace, and the peers' confirmation, are what keep a push from being lost.",
        ge=100,
        le=1000000,
    )
    connections: bool = setting(
        False,
        "Also push connection entries (not only templates).",
    )


@dataclass(frozen=True)
class WarmupConfig:
    """The warm-up gate: a director whose table is not warm yet (no full push received since
    it started, no verified reseed from its own snapshot) asks keepalived, through a track
    file, for a lower priority, so it takes over when it is alone but does not preempt a
    master that holds the clients' templates. The packaged example:
    /usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf."""

    track_file: Optional[str] = setting(
        None,
        "The file keepalived's vrrp_track_file reads: 0 while eligible, 1 while cold or "
        "handing over (keepalived multiplies it by the weight you give it). null: "
        "<run_dir>/warmup.track.",
        check=os.path.isabs,
        allowed="an absolute path, or null",
    )
    max_wait: float = setting(
        120.0,
        "Seconds after start after which a director counts as warm even without a push or a "
        "reseed (a peer that never answers must not keep it out for ever).",
        gt=0,
    )


@dataclass(frozen=True)
class MetricsConfig:
    """Health and metrics: what `lvs-hooks status --check` judges, and a Prometheus text file
    for node_exporter's textfile collector."""

    textfile: Optional[str] = setting(
        None,
        "The metrics file, rewritten atomically after each transition, push and (at most every "
        "5 s) turn of the periodic duties; its directory must exist. node_exporter's "
        "--collector.textfile.directory, e.g. "
        "/var/lib/prometheus/node-exporter/lvs_hooks.prom (Debian's package) or "
        "/var/lib/node_exporter/textfile_collector/lvs_hooks.prom. null: no metrics file.",
        check=lambda p: os.path.isabs(p) and p.endswith(".prom"),
        allowed="an absolute path ending in .prom (node_exporter reads only those)",
    )
    snapshot_max_age: float = setting(
        3600.0,
        "`status --check` warns when the newest good snapshot is older than this many seconds "
        "(the snapshot timer and a backup's agent take one every minute or less). 0: never.",
        ge=0,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; every key has a default that works for one sync interface."""

    sync: SyncConfig = section(SyncConfig)
    paths: PathsConfig = section(PathsConfig)
    snapshot: SnapshotConfig = section(SnapshotConfig)
    reseed: ReseedConfig = section(ReseedConfig)
    log: LogConfig = section(LogConfig)
    transitions: TransitionsConfig = section(TransitionsConfig)
    master: MasterRoleConfig = section(MasterRoleConfig)
    backup: BackupRoleConfig = section(BackupRoleConfig)
    keeper: KeeperConfig = section(KeeperConfig)
    table: TableConfig = section(TableConfig)
    rules: RulesConfig = section(RulesConfig)
    control: ControlConfig = section(ControlConfig)
    push: PushConfig = section(PushConfig)
    warmup: WarmupConfig = section(WarmupConfig)
    metrics: MetricsConfig = section(MetricsConfig)


# --------------------------------------------------------------------------------------------
# The commented default configuration

_WIDTH = 100

_HEADER = """\
# lvs-hooks configuration: /etc/lvs-hooks/lvs-hooks.yaml
#
# Every key is optional: an absent key, section or file means the default shown here.
# Unknown keys are errors, and so are booleans written other than true/false.
#
# Generated by `python -m lvs_hooks.config` (`lvs-hooks init` prints it); the shipped file is this
# output (a unit test keeps the two equal).
"""


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    text = str(value)
    # Plain when YAML reads it back as the same string, quoted otherwise ("0", "true", "a: b").
    try:
        plain_ok = yaml.load(f"k: {text}", Loader=_Loader) == {"k": text}
    except yaml.YAMLError:
        plain_ok = False
    return text if plain_ok and "#" not in text else json.dumps(text)


def _comment(text: str, indent: int) -> List[str]:
    prefix = " " * indent + "# "
    return textwrap.wrap(
        text,
        _WIDTH - len(prefix),
        initial_indent=prefix,
        subsequent_indent=prefix,
        break_on_hyphens=False,
    )


def _dump(cls: Type[Any], value: Any, indent: int, out: List[str]) -> None:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        pad = " " * indent
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.append("")
            out.extend(_comment(inspect.cleandoc(tp.__doc__ or ""), indent))
            out.append(f"{pad}{f.name}:")
            _dump(tp, getattr(value, f.name), indent + 2, out)
        else:
            doc = f.metadata.get("doc", "")
            allowed = describe(tp, f.metadata)
            out.extend(_comment(doc, indent))
            out.extend(_comment(f"Allowed: {allowed}.", indent))
            out.append(f"{pad}{f.name}: {_yaml_scalar(getattr(value, f.name))}")


def dump_default_config() -> str:
    """The default configuration as YAML text, every key commented with why it exists."""
    out = [_HEADER.rstrip("\n")]
    _dump(Config, Config(), 0, out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(dump_default_config())
