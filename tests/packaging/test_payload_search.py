"""Nothing installed by the RPM or the .deb names the users' write-ups or the source tree (unit
tier; both packages built by the session's fixtures).

Searched: every installed file, gzip-compressed ones (man pages, changelog) decompressed, and the
bytecode; in lvs-hooks' own Python modules the string literals (what --help, messages, the man
pages and pydoc show), not the comments, which are for developers reading the source.

- everywhere, the bundled dependencies included: no "seed 0..." and no path of the build (this
  checkout, the build directory, /work/);
- in lvs-hooks' own files: no path of the source tree as the repository names it
  (etc/keepalived/..., systemd/..., packaging/..., tests/..., docs/...).

lvs-hooks' modules cite the design notes as "design.md section N.M" (the source tree's design
document, not installed: it is for developers and names the tests), the keepalived examples by
their packaged path /usr/share/doc/lvs-hooks/, never by a path of the source tree.

The README is installed without its section for developers (packaging/gen_docs.py), the one
that names the source tree's scripts and documents: it is searched like everything else.
"""

import ast
import gzip
import os
import re
import tempfile

from rpmtest import PROJECT

SEED = re.compile(rb"seeds? ?0\d*\b", re.I)
SOURCE_PATH = re.compile(r"(?<![\w/.~-])(etc/keepalived/|etc/lvs-hooks\.yaml|systemd/"
                         r"(?:tmpfiles\.d|lvs-hooks)|packaging/|tests/|docs/|bench/)[\w.-]*")
BUILD_PATHS = tuple(p.encode() for p in {PROJECT, os.path.realpath(PROJECT), "/work/",
                                         tempfile.gettempdir() + "/pytest-of-"})
LIB = "usr/lib/lvs-hooks/"
VENDOR = LIB + "vendor/"



def _strings(source: bytes) -> str:
    """The string literals of a Python module, one per line."""
    tree = ast.parse(source)
    return "\n".join(n.value for n in ast.walk(tree)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str))


def findings(root: str) -> dict:
    """installed path -> the offending excerpts, for the payload unpacked at root."""
    out: dict = {}
    for dirpath, dirs, files in os.walk(root):
        if dirpath == root and "DEBIAN" in dirs:
            dirs.remove("DEBIAN")
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                continue
            with open(full, "rb") as fh:
                data = fh.read()
            if name.endswith(".gz"):
                data = gzip.decompress(data)
            hits = [m.group(0).decode(errors="replace") for m in SEED.finditer(data)]
            hits += [p.decode() for p in BUILD_PATHS if p in data]
            if not rel.startswith(VENDOR) and not name.endswith(".pyc"):
                text = data.decode("utf-8", errors="replace")
                if name.endswith(".py"):
                    text = _strings(data)
                hits += [m.group(0).rstrip(".") for m in SOURCE_PATH.finditer(text)]
            if hits:
                out[rel] = sorted(set(hits))
    return out


def _judge(kind: str, root: str) -> None:
    found = findings(root)
    assert not found, f"{kind}: " + "; ".join(
        f"{k}: {', '.join(v)}" for k, v in sorted(found.items()))


def test_rpm_payload(rpm_root):
    _judge("RPM", rpm_root)


def test_deb_payload(deb_root):
    _judge(".deb", deb_root)


def test_the_search_finds_what_it_looks_for(tmp_path):
    """Control: each kind of finding in a fake payload, and a comment that is not one."""
    lib = tmp_path / "usr" / "lib" / "lvs-hooks" / "lvs_hooks"
    lib.mkdir(parents=True)
    (lib / "a.py").write_text('# see tests/unit/test_a.py\nFIX = "as in seed 003"\n')
    (lib / "b.py").write_text('"""Copy etc/keepalived/lvs-hooks-fifo.conf."""\n')
    (lib / "c.py").write_text(f'P = "{PROJECT}/x"\n')
    (lib / "d.py").write_text('"""The packaged /usr/share/doc/lvs-hooks/lvs-hooks-fifo.conf"""\n')
    man = tmp_path / "usr" / "share" / "man" / "man8"
    man.mkdir(parents=True)
    (man / "x.8.gz").write_bytes(gzip.compress(b"see docs/design.md\n"))
    found = findings(str(tmp_path))
    assert found == {
        "usr/lib/lvs-hooks/lvs_hooks/a.py": ["seed 003"],
        "usr/lib/lvs-hooks/lvs_hooks/b.py": ["etc/keepalived/lvs-hooks-fifo.conf"],
        "usr/lib/lvs-hooks/lvs_hooks/c.py": sorted(
            {p.decode() for p in BUILD_PATHS if p in f"{PROJECT}/x".encode()}),
        "usr/share/man/man8/x.8.gz": ["docs/design.md"],
    }, found

