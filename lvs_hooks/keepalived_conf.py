"""A reader of keepalived.conf: every statement with its file and line, and the blocks lvs-hooks
reasons about (global_defs, vrrp_instance, vrrp_sync_group, vrrp_script, virtual_server).

The syntax is what keepalived 2.x's own reader (lib/parser.c) accepts:

- `{` and `}` outside double quotes split a line, so `name {`, `name` + `{` on the next line
  and `name { a b }` are all one block;
- `#` and `!` outside double quotes start a comment; `\\#` and `\\!` are the characters;
- words are separated by blanks; a word starting with `"` runs to the next `"`;
- `include PATTERN` (a line of exactly two words) reads the files the pattern matches, braces
  (`{a,b}`) and globs, each alternative sorted, relative to the directory of the file that holds
  the line, at the place of the line (inside a block too). keepalived skips directories and files
  that are not regular or are executable, and a pattern that matches nothing: they are recorded
  (`skipped`, `unmatched_includes`), not errors;
- `@ID text` / `@^ID text`: the line counts only when keepalived runs with (without) `-i ID`;
- `$NAME=value` defines, `$NAME` and `${NAME}` are replaced (a value ending in `\\` goes on over
  the next lines), `~SEQ(VAR, [start,] [step,] end) text` repeats `text` with `$VAR` counting.

keepalived only logs what it cannot make sense of and goes on with whatever it understood. A file
whose braces or quotes do not match means something else to keepalived than it seems to say,
so here it is an error (KeepalivedConfError) naming the file and the line, as is an include loop.

`read_keepalived_conf` does the I/O; `parse_text` parses text (tests); `KeepalivedSetup` is the
pure model of the blocks that matter to lvs-hooks.
"""

import glob
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.errors import KeepalivedConfError

# keepalived.conf and each file it includes: real ones are a few hundred KiB at most.
MAX_FILE = 4 << 20

DEFAULT_PATH = "/etc/keepalived/keepalived.conf"

# keepalived's defaults for what lvs-hooks reads (check_data.c, vrrp_data.c)
# `persistence_timeout` without a value (IPVS_SVC_PERSISTENT_TIMEOUT)
DEFAULT_PERSISTENCE_TIMEOUT = 360
DEFAULT_PROTOCOL = "TCP"
DEFAULT_LB_KIND = "NAT"

# Blocks keepalived reads only at the top level; anywhere else it ignores them ("Unknown keyword").
TOP_LEVEL_BLOCKS = (
    "global_defs",
    "vrrp_instance",
    "vrrp_sync_group",
    "vrrp_script",
    "vrrp_track_file",  # (also `track_file` since 2.1, which is a vrrp_instance keyword too)
    "virtual_server",
    "virtual_server_group",
    "static_ipaddress",
    "static_routes",
    "static_rules",
    "linkbeat_interfaces",
    "garp_group",
)

_MAX_SUBSTITUTIONS = 50  # a definition that refers to itself must not loop forever
_MAX_SEQ = 100000
# Bounds on what a keepalived.conf can make the reader do (issue 15): `$A=$A $A` doubles at each
# pass, ten definitions each twice the one before make a thousand copies, a chain of files each
# including the next twice reads 2^depth files, `{a,b}{a,b}...` globs 2^n patterns. Real
# configurations stay far below each; past one, the reader stops with one line, where it was.
MAX_LINE_EXPANSION = 64 << 10  # one line after its definitions are substituted
MAX_TOTAL_EXPANSION = 4 << 20  # every substituted line of the whole configuration
MAX_INCLUDE_DEPTH = 16  # files open at once, the main one included
MAX_FILES_READ = 1000  # includes read in all, counting a file read twice twice
MAX_TOTAL_BYTES = 64 << 20  # the bytes of every file read
MAX_GLOB_PATTERNS = 1024  # patterns one include's braces expand to


@dataclass
class Item:
    """One statement: a keyword and its words, where it was read, and its block if it has one."""

    keyword: str
    args: Tuple[str, ...]
    file: str
    line: int
    block: Optional[List["Item"]] = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def text(self) -> str:
        """The statement as one line (quotes dropped), for evidence."""
        return " ".join((self.keyword,) + self.args)

    def children(self, keyword: Optional[str] = None) -> List["Item"]:
        items = self.block or []
        return [i for i in items if keyword is None or i.keyword == keyword]

    def child(self, keyword: str) -> Optional["Item"]:
        """The statement `keyword` of the block; of a repeated one the last, which is the one
        keepalived keeps for the settings lvs-hooks reads."""
        found = self.children(keyword)
        return found[-1] if found else None

    def value(self, keyword: str) -> Optional[str]:
        """The first word after `keyword` in the block (see child), or None."""
        c = self.child(keyword)
        return c.args[0] if c is not None and c.args else None

    def walk(self, parents: Tuple["Item", ...] = ()) -> Iterator[Tuple["Item", Tuple["Item", ...]]]:
        """This item and every item below it, each with its enclosing items."""
        yield self, parents
        for c in self.block or ():
            yield from c.walk(parents + (self,))


@dataclass
class KeepalivedConf:
    """What a configuration file and its includes say, statement by statement."""

    path: str
    items: List[Item] = field(default_factory=list)
    files: List[str] = field(default_factory=list)  # every file read, in reading order
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)  # (file, why, included at)
    unmatched_includes: List[Tuple[str, str]] = field(default_factory=list)  # (pattern, where)

    def top(self, keyword: str) -> List[Item]:
        return [i for i in self.items if i.keyword == keyword]

    def walk(self) -> Iterator[Tuple[Item, Tuple[Item, ...]]]:
        for i in self.items:
            yield from i.walk()


# ---- the reader --------------------------------------------------------------------------------


def _error(file: str, line: int, message: str) -> KeepalivedConfError:
    return KeepalivedConfError(f"keepalived config {file}:{line}: {message}")


def _decomment(raw: str, file: str, line: int) -> Tuple[str, bool]:
    """The line without its comment and outer blanks, and whether it ended in a continuation
    backslash (only definitions use it). As keepalived's decomment(): quotes protect `#` and `!`."""
    out = []
    quote = False
    cont = False
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == '"':
            quote = not quote
        elif c == "\\":
            if i + 1 >= n:
                cont = True
                break
            nxt = raw[i + 1]
            if not quote and nxt in "#!":
                out.append(nxt)
            else:
                out.append(c + nxt)
            i += 2
            continue
        elif not quote and c in "#!":
            break
        out.append(c)
        i += 1
    if quote:
        raise _error(file, line, "unterminated quote (a '\"' the line never closes)")
    return "".join(out).strip(), cont


def _words(text: str, file: str, line: int) -> List[str]:
    """Words as keepalived's alloc_strvec splits them: blanks separate, "..." is one word."""
    words: List[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise _error(file, line, "unterminated quote")
            words.append(text[i + 1 : end])
            i = end + 1
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] != '"':
            j += 1
        words.append(text[i:j])
        i = j
    return words


def _split_braces(text: str) -> List[str]:
    """Split a line at every `{` and `}` outside double quotes, as keepalived's read_line does:
    the braces become pieces of their own."""
    pieces: List[str] = []
    current = []
    quote = False
    for c in text:
        if c == '"':
            quote = not quote
            current.append(c)
        elif not quote and c in "{}":
            if "".join(current).strip():
                pieces.append("".join(current).strip())
            pieces.append(c)
            current = []
        else:
            current.append(c)
    if "".join(current).strip():
        pieces.append("".join(current).strip())
    return pieces


class _TooMany(Exception):
    """A brace pattern expands to more alternatives than the reader takes."""


def _expand_braces(pattern: str, limit: int = 1 << 30) -> List[str]:
    """GLOB_BRACE: `a{b,c}d` -> [`abd`, `acd`], nested braces too, in order."""
    depth = 0
    start = -1
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                inner = pattern[start + 1 : i]
                parts, level, last = [], 0, 0
                for j, d in enumerate(inner):
                    if d == "{":
                        level += 1
                    elif d == "}":
                        level -= 1
                    elif d == "," and level == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                if len(parts) == 1:
                    continue  # `{x}` without a comma is literal for glob(3) as well
                head, tail = pattern[:start], pattern[i + 1 :]
                out: List[str] = []
                for p in parts:
                    out.extend(_expand_braces(head + p + tail, limit))
                    if len(out) > limit:
                        raise _TooMany()
                return out
    return [pattern]


_SEQ = re.compile(r"^~SEQ(x?)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,([^)]*)\)\s*(.*)$")
_DEF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_REF = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _read_bytes(path: str) -> bytes:
    return safeio.read_file(path, MAX_FILE)


@dataclass
class _Frame:
    """An open block: its item (None for the file level) and where it was opened."""

    item: Optional[Item]
    items: List[Item]
    file: str
    line: int


class _Reader:
    def __init__(
        self,
        config_id: Optional[str],
        stat_fn: Callable = os.stat,
        read_fn: Optional[Callable[[str], bytes]] = None,
    ):
        self.config_id = config_id
        self.stat = stat_fn
        self.read = read_fn or _read_bytes
        self.conf: Optional[KeepalivedConf] = None
        self.defs: Dict[str, List[str]] = {}  # name -> lines of its value
        self.including: List[str] = []  # files being read, outermost first
        self.frames: List[_Frame] = []
        self.last: Optional[Item] = None  # the statement a `{` on the next line belongs to
        self.files_read = 0
        self.bytes_read = 0
        self.expanded = 0  # characters produced by substitution so far

    # -- files

    def read_main(self, path: str) -> KeepalivedConf:
        self.conf = KeepalivedConf(path=path)
        try:
            st = self.stat(path)
        except FileNotFoundError:
            raise KeepalivedConfError(f"keepalived config {path}: no such file") from None
        except OSError as e:
            raise KeepalivedConfError(f"keepalived config {path}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeepalivedConfError(f"keepalived config {path}: not a regular file")
        if st.st_mode & 0o111:
            raise KeepalivedConfError(
                f"keepalived config {path}: is executable, and keepalived refuses such a file "
                "(chmod a-x it)"
            )
        self.frames = [_Frame(None, self.conf.items, path, 0)]
        self.read_file(path)
        return self.conf

    def read_text(self, text: str, path: str) -> KeepalivedConf:
        self.conf = KeepalivedConf(path=path)
        self.frames = [_Frame(None, self.conf.items, path, 0)]
        self.parse_file_text(text, path)
        return self.conf

    def read_file(self, path: str, file: str = "", line: int = 0) -> None:
        self.files_read += 1
        if self.files_read > MAX_FILES_READ:
            raise _error(file, line, f"more than {MAX_FILES_READ} files read through includes")
        if len(self.including) >= MAX_INCLUDE_DEPTH:
            raise _error(file, line, f"includes nested deeper than {MAX_INCLUDE_DEPTH} files")
        try:
            data = self.read(path)
        except OSError as e:
            raise KeepalivedConfError(
                f"keepalived config {path}: cannot read: {e.strerror or e}"
            ) from None
        self.bytes_read += len(data)
        if self.bytes_read > MAX_TOTAL_BYTES:
            raise _error(file or path, line, f"more than {MAX_TOTAL_BYTES >> 20} MiB read in all")
        # keepalived reads bytes; comments in other scripts than ASCII are common (UTF-8 mostly)
        self.parse_file_text(data.decode("utf-8", errors="replace"), path)

    def parse_file_text(self, text: str, path: str) -> None:
        assert self.conf is not None
        self.conf.files.append(path)
        self.including.append(path)
        depth = len(self.frames)
        self.last = None
        self.parse_lines(text.splitlines(), path)
        if len(self.frames) > depth:
            opened = self.frames[-1]
            name = opened.item.keyword if opened.item else "?"
            raise _error(
                opened.file,
                opened.line,
                f"block '{name}' is never closed (a '}}' is missing before the end of {path})",
            )
        self.including.pop()
        self.last = None

    def include(self, pattern: str, file: str, line: int) -> None:
        assert self.conf is not None
        base = os.path.dirname(file)
        where = f"{file}:{line}"
        matched = 0
        try:
            # Each brace group is a level of recursion: a few dozen is already a huge fan-out.
            if pattern.count("{") > 64:
                raise _TooMany()
            alternatives = _expand_braces(pattern, MAX_GLOB_PATTERNS)
        except _TooMany:
            raise _error(
                file, line, f"include '{pattern[:80]}': more than {MAX_GLOB_PATTERNS} patterns"
            ) from None
        for alt in alternatives:
            full = alt if os.path.isabs(alt) else os.path.normpath(os.path.join(base, alt))
            for path in sorted(glob.glob(full)):
                try:
                    st = self.stat(path)
                except OSError as e:
                    self.conf.skipped.append((path, f"cannot stat: {e.strerror or e}", where))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                matched += 1
                if not stat.S_ISREG(st.st_mode):
                    self.conf.skipped.append((path, "not a regular file", where))
                    continue
                if st.st_mode & 0o111:
                    self.conf.skipped.append((path, "executable (keepalived skips it)", where))
                    continue
                real = os.path.realpath(path)
                if real in (os.path.realpath(p) for p in self.including):
                    raise _error(
                        file,
                        line,
                        f"include loop: '{pattern}' matches {path}, which is being read already "
                        f"(keepalived would read it again and again)",
                    )
                self.read_file(path, file, line)
        if not matched:
            self.conf.unmatched_includes.append((pattern, where))

    # -- lines

    def parse_lines(self, lines: List[str], file: str) -> None:
        multiline: Optional[str] = None  # name of a definition being continued
        for number, raw in enumerate(lines, 1):
            text, cont = _decomment(raw, file, number)
            if multiline is not None:
                if text:
                    self.defs[multiline].append(text)
                if not cont:
                    multiline = None
                continue
            if not text:
                continue
            kept = self._conditional(text)
            if kept is None:
                continue
            text = kept
            m = _DEF.match(text)
            if m:
                name, value = m.group(1), m.group(2).strip()
                self.defs[name] = [value] if value else []
                if cont:
                    multiline = name
                continue
            if cont:
                text += "\\"  # a backslash at the end of any other line is kept, as keepalived does
            m = _SEQ.match(text)
            if m:
                for expanded in self._seq(m, file, number):
                    self.statement_text(expanded, file, number)
                continue
            self.statement_text(text, file, number)

    def _conditional(self, text: str) -> Optional[str]:
        if not text.startswith("@"):
            return text
        negate = text.startswith("@^")
        rest = text[2:] if negate else text[1:]
        parts = rest.split(None, 1)
        if len(parts) < 2:
            return None
        matches = self.config_id is not None and parts[0] == self.config_id
        return parts[1] if matches != negate else None

    def _seq(self, m: "re.Match[str]", file: str, line: int) -> List[str]:
        hex_out, var, params, body = m.group(1), m.group(2), m.group(3), m.group(4)
        try:
            nums = [int(p.strip(), 0) for p in self._substitute(params, file, line)[0].split(",")]
        except ValueError:
            raise _error(file, line, f"~SEQ: not a list of numbers: ({params})") from None
        if len(nums) == 1:
            end = nums[0]
            start, step = (1, 1) if end >= 1 else (-1, -1)
        elif len(nums) == 2:
            start, end = nums
            step = 1 if start <= end else -1
        elif len(nums) == 3:
            start, step, end = nums
        else:
            raise _error(file, line, f"~SEQ takes 1 to 3 numbers, got {len(nums)}")
        if step == 0 or (start < end and step < 0) or (start > end and step > 0):
            raise _error(file, line, f"~SEQ({var}, {start}, {step}, {end}) never ends")
        count = (end - start) // step + 1
        if count > _MAX_SEQ:
            raise _error(file, line, f"~SEQ of {count} lines: more than lvs-hooks reads")
        lines: List[str] = []
        for k in range(count):
            v = start + k * step
            self.defs[var] = [format(v, "x") if hex_out else str(v)]
            lines.extend(self._substitute(body, file, line))
        return lines

    def _substitute(self, text: str, file: str, line: int) -> List[str]:
        """Replace $NAME and ${NAME} by known definitions; a multi-line value gives more lines
        (its first line in place, the others after)."""
        if "$" not in text or not self.defs:
            return [text]
        extra: List[str] = []
        for _ in range(_MAX_SUBSTITUTIONS):
            changed = False

            def repl(m: "re.Match[str]") -> str:
                nonlocal changed
                name = m.group(1).strip("{}")
                if name not in self.defs:
                    return m.group(0)
                changed = True
                value = self.defs[name]
                if not value:
                    return ""
                extra.extend(value[1:])
                return value[0]

            text = _REF.sub(repl, text)
            size = len(text) + sum(len(x) for x in extra)
            if size > MAX_LINE_EXPANSION:
                raise _error(
                    file, line, f"definitions expand to more than {MAX_LINE_EXPANSION >> 10} KiB"
                )
            if not changed or "$" not in text:
                self.expanded += size
                if self.expanded > MAX_TOTAL_EXPANSION:
                    raise _error(
                        file,
                        line,
                        f"definitions expand to more than {MAX_TOTAL_EXPANSION >> 20} MiB in all",
                    )
                return [text] + extra
        raise _error(file, line, "definitions refer to each other without end")

    def statement_text(self, text: str, file: str, line: int) -> None:
        for expanded in self._substitute(text, file, line):
            words = _words(expanded, file, line) if expanded else []
            if len(words) == 2 and words[0] == "include":
                self.include(words[1], file, line)
                continue
            for piece in _split_braces(expanded):
                self.piece(piece, file, line)

    def piece(self, piece: str, file: str, line: int) -> None:
        frame = self.frames[-1]
        if piece == "{":
            target = self.last
            if target is None or target.block is not None:
                raise _error(file, line, "'{' with no keyword before it")
            target.block = []
            self.frames.append(_Frame(target, target.block, file, line))
            self.last = None
            return
        if piece == "}":
            if frame.item is None:
                raise _error(file, line, "'}' closes no block (one '}' too many)")
            if frame.file != file:
                raise _error(
                    file,
                    line,
                    f"'}}' closes the block '{frame.item.keyword}' opened in another file "
                    f"({frame.file}:{frame.line})",
                )
            self.frames.pop()
            self.last = None
            return
        words = _words(piece, file, line)
        if not words:
            return
        item = Item(words[0], tuple(words[1:]), file, line)
        frame.items.append(item)
        self.last = item


def parse_text(
    text: str, path: str = "keepalived.conf", config_id: Optional[str] = None
) -> KeepalivedConf:
    """Parse configuration text as if it were the file `path` (includes are read from the file
    system, relative to it)."""
    return _Reader(config_id).read_text(text, path)


def read_keepalived_conf(
    path: str = DEFAULT_PATH, config_id: Optional[str] = None
) -> KeepalivedConf:
    """Read `path` and its includes as keepalived would (KeepalivedConfError if it cannot)."""
    return _Reader(config_id).read_main(path)


# ---- the blocks that matter to lvs-hooks (pure) ------------------------------------------------


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text, 10)
    except ValueError:
        return None


@dataclass
class SyncDaemonSpec:
    """keepalived's `lvs_sync_daemon IF [INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group A]`
    (or the deprecated `lvs_sync_daemon_interface IF` inside a vrrp_instance)."""

    interface: str
    instance: Optional[str]
    syncid: Optional[int]  # given with `id`; keepalived then takes the instance's router id
    maxlen: Optional[int] = None
    port: Optional[int] = None
    ttl: Optional[int] = None
    group: Optional[str] = None
    item: Optional[Item] = None
    deprecated: bool = False


@dataclass
class RealServer:
    addr: str
    port: Optional[int]
    item: Item


@dataclass
class VirtualServer:
    """A `virtual_server IP PORT`, `virtual_server fwmark N` or `virtual_server group NAME`."""

    item: Item
    addr: Optional[str] = None
    port: Optional[int] = None
    fwmark: Optional[int] = None
    group: Optional[str] = None
    protocol: str = DEFAULT_PROTOCOL  # "" for a fwmark service that does not say
    lb_kind: str = DEFAULT_LB_KIND
    persistence_timeout: Optional[int] = None  # None: not persistent
    persistence_item: Optional[Item] = None
    real_servers: List[RealServer] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return bool(self.persistence_timeout)

    def describe(self) -> str:
        if self.fwmark is not None:
            return f"virtual_server fwmark {self.fwmark}"
        if self.group is not None:
            return f"virtual_server group {self.group}"
        return f"virtual_server {self.addr} {self.port} ({self.protocol})"


@dataclass
class VrrpInstance:
    name: str
    item: Item
    state: Optional[str] = None
    interface: Optional[str] = None
    vrid: Optional[int] = None
    priority: Optional[int] = None
    nopreempt: bool = False
    preempt_delay: Optional[str] = None
    track_scripts: List[str] = field(default_factory=list)
    track_files: List[str] = field(default_factory=list)
    track_file_weights: Dict[str, "Item"] = field(default_factory=dict)  # per-instance weight
    own_addrs: List[str] = field(default_factory=list)  # mcast_src_ip, unicast_src_ip
    peer_addrs: List[str] = field(default_factory=list)  # unicast_peer
    virtual_addrs: List[str] = field(default_factory=list)


@dataclass
class Script:
    """A command keepalived runs: notify scripts, FIFO readers, vrrp_script, MISC_CHECK."""

    kind: str  # the keyword: notify, notify_master, vrrp_notify_fifo_script, script, misc_path...
    command: str
    user: Optional[str]  # a user named on the line (`notify "/x" user [group]`)
    item: Item

    @property
    def path(self) -> str:
        words = self.command.split()
        return words[0] if words else ""

    @property
    def is_lvs_hooks(self) -> bool:
        return "lvs-hooks" in self.command or "lvs_hooks" in self.command


NOTIFY_KEYWORDS = ("notify", "notify_master", "notify_backup", "notify_fault", "notify_stop")
CHECKER_SCRIPT_KEYWORDS = ("misc_path", "notify_up", "notify_down", "quorum_up", "quorum_down")
FIFO_SCRIPT_KEYWORDS = (
    "notify_fifo_script",
    "vrrp_notify_fifo_script",
    "lvs_notify_fifo_script",
)


@dataclass
class KeepalivedSetup:
    """The parts of a keepalived configuration lvs-hooks reasons about."""

    conf: KeepalivedConf
    global_defs: Optional[Item] = None
    sync_daemon: Optional[SyncDaemonSpec] = None
    lvs_timeouts: Dict[str, int] = field(default_factory=dict)
    lvs_timeouts_item: Optional[Item] = None
    instances: List[VrrpInstance] = field(default_factory=list)
    sync_groups: Dict[str, Tuple[List[str], Item]] = field(default_factory=dict)
    vrrp_scripts: Dict[str, Item] = field(default_factory=dict)
    track_files: Dict[str, Item] = field(default_factory=dict)
    virtual_servers: List[VirtualServer] = field(default_factory=list)
    scripts: List[Script] = field(default_factory=list)
    enable_script_security: bool = False
    script_user: Optional[str] = None

    @classmethod
    def from_conf(cls, conf: KeepalivedConf) -> "KeepalivedSetup":
        s = cls(conf=conf)
        gd = conf.top("global_defs")
        s.global_defs = gd[0] if gd else None
        for g in gd:
            s._global(g)
        for item in conf.top("vrrp_instance"):
            s.instances.append(s._instance(item))
        for item in conf.top("vrrp_sync_group"):
            name = item.args[0] if item.args else ""
            group = item.child("group")
            members = [c.keyword for c in group.children()] if group is not None else []
            s.sync_groups[name] = (members, item)
            s._notify_scripts(item)
        for item in conf.top("vrrp_script"):
            name = item.args[0] if item.args else ""
            s.vrrp_scripts[name] = item
            c = item.child("script")
            if c is not None and c.args:
                s.scripts.append(Script("script", c.args[0], _user(c), c))
        for kw in ("vrrp_track_file", "track_file"):
            for item in conf.top(kw):
                s.track_files[item.args[0] if item.args else ""] = item
        for item in conf.top("virtual_server"):
            s.virtual_servers.append(_virtual_server(item))
            for sub, _ in item.walk():
                if sub.keyword in CHECKER_SCRIPT_KEYWORDS and sub.args and sub is not item:
                    s.scripts.append(Script(sub.keyword, sub.args[0], _user(sub), sub))
        if s.sync_daemon is None:
            for inst in s.instances:
                c = inst.item.child("lvs_sync_daemon_interface")
                if c is not None and c.args:
                    s.sync_daemon = SyncDaemonSpec(
                        interface=c.args[0],
                        instance=inst.name,
                        syncid=None,
                        item=c,
                        deprecated=True,
                    )
                    break
        return s

    def _global(self, g: Item) -> None:
        for c in g.children():
            if c.keyword == "lvs_sync_daemon" and c.args and self.sync_daemon is None:
                self.sync_daemon = _sync_daemon(c)
            elif c.keyword == "lvs_timeouts":
                self.lvs_timeouts_item = c
                words = list(c.args)
                for i, w in enumerate(words[:-1]):
                    if w in ("tcp", "tcpfin", "udp"):
                        n = _int(words[i + 1])
                        if n is not None:
                            self.lvs_timeouts[w] = n
            elif c.keyword == "enable_script_security":
                self.enable_script_security = True
            elif c.keyword == "script_user" and c.args:
                self.script_user = c.args[0]
            elif c.keyword in FIFO_SCRIPT_KEYWORDS and c.args:
                self.scripts.append(Script(c.keyword, c.args[0], _user(c), c))

    def _notify_scripts(self, block: Item) -> None:
        for c in block.children():
            if c.keyword in NOTIFY_KEYWORDS and c.args:
                self.scripts.append(Script(c.keyword, c.args[0], _user(c), c))

    def _instance(self, item: Item) -> VrrpInstance:
        inst = VrrpInstance(name=item.args[0] if item.args else "", item=item)
        inst.state = item.value("state")
        inst.interface = item.value("interface")
        inst.vrid = _int(item.value("virtual_router_id"))
        inst.priority = _int(item.value("priority"))
        inst.nopreempt = item.child("nopreempt") is not None
        inst.preempt_delay = item.value("preempt_delay")
        for kw, target in (("track_script", inst.track_scripts), ("track_file", inst.track_files)):
            for block in item.children(kw):
                target.extend(c.keyword for c in block.children())
        for block in item.children("track_file"):
            for c in block.children():
                # `NAME weight W [reverse]` in the instance overrides the track file's own weight
                if len(c.args) >= 2 and c.args[0] == "weight":
                    inst.track_file_weights[c.keyword] = c
        for kw in ("mcast_src_ip", "unicast_src_ip"):
            v = item.value(kw)
            if v:
                inst.own_addrs.append(v)
        for block in item.children("unicast_peer"):
            inst.peer_addrs.extend(c.keyword for c in block.children())
        for kw in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
            for block in item.children(kw):
                inst.virtual_addrs.extend(c.keyword.split("/")[0] for c in block.children())
        self._notify_scripts(item)
        return inst

    # -- questions

    def instance(self, name: str) -> Optional[VrrpInstance]:
        return next((i for i in self.instances if i.name == name), None)

    def effective_syncid(self) -> Tuple[Optional[int], str]:
        """The sync id keepalived's daemons get, and why: `id N`, else the router id of the
        instance named on the lvs_sync_daemon line."""
        sd = self.sync_daemon
        if sd is None:
            return None, "no lvs_sync_daemon"
        if sd.syncid is not None:
            where = sd.item.where if sd.item else "?"
            return sd.syncid, f"id {sd.syncid} on lvs_sync_daemon ({where})"
        inst = self.instance(sd.instance) if sd.instance else None
        if inst is not None and inst.vrid is not None:
            return inst.vrid, f"virtual_router_id {inst.vrid} of {inst.name} ({inst.item.where})"
        return None, "lvs_sync_daemon names no id and no instance with a virtual_router_id"

    def hook_scripts(self) -> List[Script]:
        """Commands that run lvs-hooks."""
        return [s for s in self.scripts if s.is_lvs_hooks]

    def lvs_instances(self) -> List[VrrpInstance]:
        """The instances that decide where the virtual servers run: the one lvs_sync_daemon
        names, else every instance."""
        sd = self.sync_daemon
        if sd is not None and sd.instance:
            inst = self.instance(sd.instance)
            if inst is not None:
                return [inst]
        return list(self.instances)


def _user(item: Item) -> Optional[str]:
    return item.args[1] if len(item.args) > 1 else None


def _sync_daemon(item: Item) -> SyncDaemonSpec:
    args = list(item.args)
    spec = SyncDaemonSpec(interface=args[0], instance=None, syncid=None, item=item)
    i = 1
    while i < len(args):
        word = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if word in ("inst", "id", "maxlen", "port", "ttl", "group") and nxt is not None:
            if word == "inst":
                spec.instance = nxt
            elif word == "group":
                spec.group = nxt
            else:
                setattr(spec, "syncid" if word == "id" else word, _int(nxt))
            i += 2
            continue
        # the older positional form: lvs_sync_daemon IF INSTANCE [SYNCID]
        if i == 1:
            spec.instance = word
        elif i == 2 and _int(word) is not None:
            spec.syncid = _int(word)
        i += 1
    return spec


def _virtual_server(item: Item) -> VirtualServer:
    vs = VirtualServer(item=item)
    args = item.args
    if len(args) >= 2 and args[0] == "fwmark":
        vs.fwmark = _int(args[1])
    elif len(args) >= 2 and args[0] == "group":
        vs.group = args[1]
    elif args:
        vs.addr = args[0]
        vs.port = _int(args[1]) if len(args) > 1 else None
    proto = item.value("protocol")
    if vs.fwmark is not None:
        # IPVS has no protocol for a fwmark service (keepalived ignores the keyword there): it
        # only says what the marked traffic is meant to be
        vs.protocol = proto.upper() if proto else ""
    elif proto:
        vs.protocol = proto.upper()
    kind = item.value("lb_kind")
    if kind:
        vs.lb_kind = kind.upper()
    pt = item.child("persistence_timeout")
    if pt is not None:
        vs.persistence_item = pt
        vs.persistence_timeout = (
            DEFAULT_PERSISTENCE_TIMEOUT if not pt.args else (_int(pt.args[0]) or 0)
        )
    for rs in item.children("real_server"):
        if rs.args:
            vs.real_servers.append(
                RealServer(rs.args[0], _int(rs.args[1]) if len(rs.args) > 1 else None, rs)
            )
    return vs
