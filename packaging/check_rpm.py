#!/usr/bin/env python3
"""packaging/check_rpm.py [--with-system-deps] [--json] RPM: checks the built lvs-hooks RPM.

What an EL director needs from it, read from the RPM itself (rpm -qp, and the payload unpacked
with rpm2cpio into a scratch directory):

- files: the expected paths with their modes and flags (config noreplace, ghost /run dir), the
  man pages and bash completion, and nothing in site-packages, no compiled code (noarch), no path
  outside the package's own; the package owns its bytecode: every module compiled for each
  interpreter the wrapper may choose (3.9, 3.11, 3.12: EL8, EL9, EL10);
- modes: every file and directory root:root, none group- or world-writable, no setuid/setgid;
  that covers the hook's whole path inside the package (the wrappers and /usr/lib/lvs-hooks,
  which the wrappers' Python imports from), which keepalived's enable_script_security demands.
  The directories above them (/usr, /usr/libexec, /usr/libexec/keepalived) belong to other
  packages; tests/packaging runs keepalived itself against the unpacked payload;
- requires / provides: exactly the expected dependencies (no generated python(abi) or
  pythondist ones), Recommends ipvsadm, bundled() provides equal to packaging/vendor.lock;
- scriptlets: post/preun/postun with systemctl and systemd-tmpfiles (no bytecode compiled or
  removed: the package owns it), no unexpanded macro, each valid sh; and each one run with sh, for
  install, upgrade and removal ($1), against stand-ins for systemctl, systemd-tmpfiles, find and
  the interpreters that record their calls: what is
  done to each unit (UNIT_POLICY: preset on install, disabled and stopped or only disabled on
  removal, restarted on upgrade or left alone);
- units: every Exec program packaged (or required), /usr/sbin/lvs-hooks and never
  /usr/bin/lvs-hooks, no path of the source tree, Documentation= files packaged, ReadWritePaths=
  directories the package owns (and tmpfiles.d creates, under /run), the [Install] section the
  presets rely on, the rules unit's RefuseManualStop= that its scriptlets rely on;
- payload: both wrappers identical, isolated interpreter flags, the keepalived examples name the
  packaged paths, the bundled licences;
- source tree (when run from a checkout): every unit of systemd/ and every example of
  etc/keepalived/ is in UNITS and EXAMPLES, so none is left out of the package unnoticed.

Prints a summary and one line per failed check; exit 0 when all pass, 1 otherwise. Stdlib only,
Python 3.9+.
"""

import argparse
import glob
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
LIB = "/usr/lib/lvs-hooks"
WRAPPERS = ("/usr/sbin/lvs-hooks", "/usr/libexec/keepalived/lvs-hooks")
COMMAND = WRAPPERS[0]  # the one the units run
PYTHONS = ("/usr/bin/python3.9", "/usr/bin/python3.11", "/usr/bin/python3.12")
UNITDIR = "/usr/lib/systemd/system"
UNITS = ("lvs-hooks-agent.service", "lvs-hooks-rules.service", "lvs-hooks-snapshot.service",
         "lvs-hooks-snapshot.timer")
TMPFILES = "/usr/lib/tmpfiles.d/lvs-hooks.conf"
DOC = "/usr/share/doc/lvs-hooks"
LICENSES = "/usr/share/licenses/lvs-hooks"
EXAMPLES = ("lvs-hooks-fifo.conf", "lvs-hooks-notify.conf", "lvs-hooks-warmup.conf")
# programs outside the package that the units run, each a Requires of the package
REQUIRED_PROGRAMS = ("/usr/bin/flock",)
COMPLETION = "/usr/share/bash-completion/completions/lvs-hooks"
# the bytecode the package owns: one file per module and interpreter (cpython-39 ...)
BYTECODE_TAGS = tuple("cpython-" + p.rsplit("python", 1)[1].replace(".", "") for p in PYTHONS)

# What the scriptlets do to each unit: on installation every unit is preset (the distribution's
# preset policy decides; EL's default enables none of them); on removal each is disabled, and
# stopped ("disable --now") unless stopping it would stop keepalived; on upgrade the running ones
# that must run the new code are restarted ("try-restart"), the others left alone.
UNIT_POLICY = {
    # unit: (on removal, on upgrade)
    "lvs-hooks-agent.service": ("disable --now", "try-restart"),
    # RequiredBy=keepalived: stopping or restarting it would stop or restart keepalived (and
    # it refuses both: RefuseManualStop=yes); on upgrade it must not re-apply the backup-role
    # rules on a director that may be master
    "lvs-hooks-rules.service": ("disable", None),
    # a oneshot started by the timer: its next run takes the new code
    "lvs-hooks-snapshot.service": ("disable --now", None),
    "lvs-hooks-snapshot.timer": ("disable --now", "try-restart"),
}
# what each unit runs: its ExecStart= ends with this
UNIT_EXEC = {
    "lvs-hooks-agent.service": f"{COMMAND} agent",
    "lvs-hooks-rules.service": f"{COMMAND} rules apply --role backup",
    "lvs-hooks-snapshot.service": f"{COMMAND} snapshot",
}
# the [Install] line that `systemctl preset` would act on (None: no [Install], started by
# another unit)
UNIT_INSTALL = {
    "lvs-hooks-agent.service": ("WantedBy", "multi-user.target"),
    "lvs-hooks-rules.service": ("RequiredBy", "keepalived.service"),
    "lvs-hooks-snapshot.service": None,
    "lvs-hooks-snapshot.timer": ("WantedBy", "timers.target"),
}
# a path of the source tree (relative, as the source's comments name them), in a packaged file
SOURCE_PATH = re.compile(r"(^|[\s(\"'])(etc/keepalived|systemd|packaging)/[\w.-]+")
# path prefixes the package may put files under (besides the exact paths of EXPECTED)
ALLOWED_PREFIXES = (LIB + "/", DOC + "/", LICENSES + "/")
# the man pages' directories belong to the filesystem package


class Entry(NamedTuple):
    path: str
    mode: int
    user: str
    group: str
    flags: str  # rpm's fflags: c config, n noreplace, g ghost, d doc, l license
    size: int
    link: str


# path -> (mode, flags that must be set)
def expected_entries(bundled: bool) -> Dict[str, tuple]:
    d = stat.S_IFDIR
    f = stat.S_IFREG
    exp = {
        "/etc/lvs-hooks": (d | 0o755, ""),
        "/etc/lvs-hooks/lvs-hooks.yaml": (f | 0o644, "cn"),
        "/usr/sbin/lvs-hooks": (f | 0o755, ""),
        "/usr/libexec/keepalived/lvs-hooks": (f | 0o755, ""),
        LIB: (d | 0o755, ""),
        LIB + "/lvs_hooks": (d | 0o755, ""),
        LIB + "/lvs_hooks/__main__.py": (f | 0o644, ""),
        LIB + "/lvs_hooks/cli.py": (f | 0o644, ""),
        TMPFILES: (f | 0o644, ""),
        "/var/lib/lvs-hooks": (d | 0o700, ""),
        "/run/lvs-hooks": (d | 0o700, "g"),
        DOC + "/README.md": (f | 0o644, "d"),
        "/usr/share/man/man8/lvs-hooks.8.gz": (f | 0o644, "d"),
        "/usr/share/man/man5/lvs-hooks.yaml.5.gz": (f | 0o644, "d"),
        "/usr/share/bash-completion": (d | 0o755, ""),
        "/usr/share/bash-completion/completions": (d | 0o755, ""),
        COMPLETION: (f | 0o644, ""),
    }
    for unit in UNITS:
        exp[f"{UNITDIR}/{unit}"] = (f | 0o644, "")
    for example in EXAMPLES:
        exp[f"{DOC}/{example}"] = (f | 0o644, "d")
    if bundled:
        for pkg in ("click", "filelock", "pyroute2", "yaml"):
            exp[f"{LIB}/vendor/{pkg}/__init__.py"] = (f | 0o644, "")
    return exp


def read_lock(path: str = os.path.join(HERE, "vendor.lock")) -> List[tuple]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.lstrip().startswith("#"):
                name, version, file, sha = line.split()
                rows.append((name, version, file, sha))
    return rows


def rpmq(rpm: str, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, rpm], check=True, capture_output=True,
                          text=True).stdout


def entries(rpm: str) -> List[Entry]:
    fmt = ("[%{FILENAMES}\\t%{FILEMODES}\\t%{FILEUSERNAME}\\t%{FILEGROUPNAME}\\t"
           "%{FILEFLAGS:fflags}\\t%{FILESIZES}\\t%{FILELINKTOS}\\n]")
    out = []
    for line in rpmq(rpm, "--qf", fmt).splitlines():
        path, mode, user, group, flags, size, link = line.split("\t")
        out.append(Entry(path, int(mode) & 0xFFFF, user, group, flags, int(size), link))
    return out


def unpack(rpm: str, dest: str) -> None:
    """The payload into dest, as rpm2cpio | cpio would (modes kept; owners when root)."""
    p1 = subprocess.Popen(["rpm2cpio", rpm], stdout=subprocess.PIPE)
    subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], stdin=p1.stdout,
                   cwd=dest, check=True)
    p1.stdout.close()
    if p1.wait() != 0:
        raise RuntimeError(f"rpm2cpio {rpm} failed")


class Checker:
    def __init__(self) -> None:
        self.results: List[tuple] = []  # (name, ok, detail)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok), detail))
        return bool(ok)

    @property
    def failed(self) -> List[tuple]:
        return [r for r in self.results if not r[1]]


def check_files(c: Checker, ents: List[Entry], bundled: bool) -> None:
    by_path = {e.path: e for e in ents}
    for path, (mode, flags) in expected_entries(bundled).items():
        e = by_path.get(path)
        if not c.check(f"file {path}", e is not None, "missing"):
            continue
        c.check(f"mode {path} {oct(mode & 0o7777)}", e.mode == mode, f"is {oct(e.mode)}")
        c.check(f"flags {path} {flags or '-'}", set(flags) <= set(e.flags),
                f"has '{e.flags}'")
    exact = set(expected_entries(bundled))
    stray = [e.path for e in ents
             if e.path not in exact and not e.path.startswith(ALLOWED_PREFIXES)
             and e.path not in (DOC, LICENSES)]
    c.check("no path outside the package's own", not stray, ", ".join(stray[:5]))
    bad_owner = [e.path for e in ents if (e.user, e.group) != ("root", "root")]
    c.check("every entry root:root", not bad_owner, ", ".join(bad_owner[:5]))
    writable = [f"{e.path} {oct(e.mode & 0o7777)}" for e in ents if e.mode & 0o022]
    c.check("no entry group- or world-writable", not writable, ", ".join(writable[:5]))
    special = [e.path for e in ents if e.mode & 0o7000]
    c.check("no setuid/setgid/sticky bit", not special, ", ".join(special[:5]))
    links = [e.path for e in ents if stat.S_ISLNK(e.mode)]
    c.check("no symlinks (keepalived resolves them: one path to vet)", not links,
            ", ".join(links[:5]))
    code = [e.path for e in ents if re.search(r"(\.pyo|\.so(\.[0-9.]+)?)$", e.path)]
    c.check("no compiled code (noarch)", not code, ", ".join(code[:5]))
    paths = {e.path for e in ents}
    sources = [p for p in paths if p.startswith(LIB + "/") and p.endswith(".py")]
    tags = BYTECODE_TAGS if bundled else ()
    uncompiled = [f"{src} {tag}" for src in sources for tag in tags
                  if "{}/__pycache__/{}.{}.pyc".format(*os.path.split(src[:-3]), tag) not in paths]
    c.check(f"bytecode owned for every module: {', '.join(tags) or 'as built'}",
            bool(sources) and not uncompiled, ", ".join(uncompiled[:5]))
    stray_pyc = [p for p in paths if p.endswith(".pyc") and (
        "/__pycache__/" not in p or not p.startswith(LIB + "/")
        or "{}.py".format(p.replace("/__pycache__", "").rsplit(".", 2)[0]) not in paths)]
    c.check("no bytecode without its source", not stray_pyc, ", ".join(stray_pyc[:5]))
    site = [e.path for e in ents if re.search(r"/(site|dist)-packages/|^/usr/lib(64)?/python",
                                              e.path)]
    c.check("nothing in a system site-packages", not site, ", ".join(site[:5]))
    hook_path = [e for e in ents if e.path in WRAPPERS or e.path == LIB
                 or e.path.startswith(LIB + "/")]
    c.check(f"the hook's path in the package (wrappers + {LIB}): {len(hook_path)} entries, "
            "all root-only writable",
            all(e.user == "root" and e.group == "root" and not e.mode & 0o022
                for e in hook_path))
    if bundled:
        tops = sorted({e.path.split("/")[5] for e in ents
                       if e.path.startswith(LIB + "/vendor/") and e.path.count("/") >= 5})
        pkgs = [t for t in tops if not t.endswith(".dist-info")]
        c.check("vendor holds click, filelock, pyroute2, yaml only",
                pkgs == ["click", "filelock", "pyroute2", "yaml"], ", ".join(tops))
        lic = {os.path.basename(e.path).split("-")[0] for e in ents
               if e.path.startswith(LICENSES + "/") and "l" in e.flags}
        c.check("licences of the bundled dependencies in " + LICENSES,
                {"click", "filelock", "pyroute2", "PyYAML"} <= lic, ", ".join(sorted(lic)))


def _deps(rpm: str, tag: str) -> List[str]:
    return [x for x in rpmq(rpm, "--qf", f"[%{{{tag}NEVRS}}\\n]").splitlines() if x]


def check_deps(c: Checker, rpm: str, bundled: bool, version: str, release: str) -> None:
    req = set(_deps(rpm, "REQUIRE"))
    req = {r for r in req if not r.startswith("rpmlib(")}
    want = {"keepalived", "/usr/bin/flock", "/bin/sh", "systemd",
            f"config(lvs-hooks) = {version}-{release}"}
    if bundled:
        want.add("(" + " or ".join(PYTHONS) + ")")
    else:
        want |= {"python3 >= 3.9", "python3dist(click) >= 8.1.7",
                 "python3dist(pyroute2) >= 0.8.1", "python3dist(filelock) >= 3.12",
                 "python3dist(pyyaml) >= 5.4"}
    c.check("requires exactly: " + ", ".join(sorted(want)), req == want,
            f"missing {sorted(want - req)}, unexpected {sorted(req - want)}")
    c.check("recommends ipvsadm", _deps(rpm, "RECOMMEND") == ["ipvsadm"],
            str(_deps(rpm, "RECOMMEND")))
    for tag in ("CONFLICT", "OBSOLETE", "SUGGEST", "SUPPLEMENT", "ENHANCE"):
        c.check(f"no {tag.lower()}s", not _deps(rpm, tag), str(_deps(rpm, tag)))
    prov = {p for p in _deps(rpm, "PROVIDE") if p.startswith("bundled(")}
    want_prov = ({f"bundled(python3dist({n.lower()})) = {v}" for n, v, _f, _s in read_lock()}
                 if bundled else set())
    c.check("bundled() provides = packaging/vendor.lock", prov == want_prov,
            f"missing {sorted(want_prov - prov)}, unexpected {sorted(prov - want_prov)}")


def scriptlets(rpm: str) -> Dict[str, str]:
    parts: Dict[str, str] = {}
    for tag, name in (("PREIN", "pre"), ("POSTIN", "post"), ("PREUN", "preun"),
                      ("POSTUN", "postun"), ("PRETRANS", "pretrans"),
                      ("POSTTRANS", "posttrans")):
        body = rpmq(rpm, "--qf", f"%{{{tag}}}")
        if body and body != "(none)":
            parts[name] = body
    return parts


def check_scriptlets(c: Checker, rpm: str, bundled: bool = True) -> None:
    s = scriptlets(rpm)
    c.check("scriptlets are post, preun, postun", sorted(s) == ["post", "postun", "preun"],
            str(sorted(s)))
    check_scriptlet_bodies(c, s, bundled)
    trig = rpmq(rpm, "--triggers").strip() + rpmq(rpm, "--filetriggers").strip()
    c.check("no triggers", not trig, trig[:200])


def check_scriptlet_bodies(c: Checker, s: Dict[str, str], bundled: bool = True) -> None:
    """The scriptlets' text, then what they do when run (run_scriptlet)."""
    musts = {
        "post": ["systemctl --no-reload preset ", f"systemd-tmpfiles --create {TMPFILES}"],
        "preun": ["systemctl --no-reload disable --now "],
        "postun": ["systemctl try-restart "],
    }
    for name in ("post", "preun", "postun"):
        body = s.get(name, "")
        c.check(f"{name}: neither compiles nor removes bytecode (the package owns it)",
                "compileall" not in body and "__pycache__" not in body)
    for name, needles in musts.items():
        body = s.get(name, "")
        for n in needles:
            c.check(f"{name}: {n.strip()}", n in body)
        c.check(f"{name}: no unexpanded macro", not re.search(r"%[{a-z_]", body),
                " ".join(re.findall(r"%[{a-z_]\S*", body)[:3]))
        r = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
        c.check(f"{name}: valid sh", r.returncode == 0, r.stderr.strip())
    unknown = sorted({p for body in s.values() for p in _paths(body) if not _known_path(p)})
    if not c.check("scriptlets name only known paths (so they can be run here)", not unknown,
                   ", ".join(unknown[:5])):
        return
    with tempfile.TemporaryDirectory(prefix="check-rpm-scriptlets-") as tmp:
        for name, arg, what in SCRIPTLET_RUNS:
            rc, calls, err = run_scriptlet(s.get(name, ""), arg, tmp)
            check_scriptlet_run(c, name, arg, what, rc, calls, err, bundled)


# (scriptlet, $1, what rpm is doing): rpm passes the number of versions of the package that
# remain installed when the scriptlet ends
SCRIPTLET_RUNS = (
    ("post", 1, "installation"), ("post", 2, "upgrade"),
    ("preun", 0, "removal"), ("preun", 1, "upgrade"),
    ("postun", 0, "removal"), ("postun", 1, "upgrade"),
)
# the commands the scriptlets call, each replaced by a stand-in that records its arguments
STANDINS = ("systemctl", "systemd-tmpfiles", "find")
_INTERPRETER = re.compile(r"/usr/bin/(python3[0-9.]*)\b")


def _paths(body: str) -> List[str]:
    code = "\n".join(ln for ln in body.splitlines() if not ln.lstrip().startswith("#"))
    return re.findall(r"(?<![\w.$}-])/[\w./-]+", code)


def _known_path(p: str) -> bool:
    return p in ("/dev/null", LIB, TMPFILES) or _INTERPRETER.fullmatch(p) is not None


def run_scriptlet(body: str, arg: int, tmp: str) -> Tuple[int, List[List[str]], str]:
    """Runs a scriptlet with sh as rpm would (the body, $1 = arg), with PATH holding only
    stand-ins for STANDINS and each /usr/bin/python3.x of the body replaced by a stand-in:
    (exit status, the calls in order as argv lists, stderr)."""
    stand = os.path.join(tmp, "bin")
    log = os.path.join(tmp, "calls")
    if not os.path.isdir(stand):
        os.makedirs(stand)
        names = set(STANDINS) | {m.group(1) for p in PYTHONS + ("/usr/bin/python3",)
                                 for m in [_INTERPRETER.fullmatch(p)]}
        for n in names:
            path = os.path.join(stand, n)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write('#!/bin/sh\n{ printf "%s" "${0##*/}"; for a in "$@"; do '
                         'printf "\\t%s" "$a"; done; printf "\\n"; } >> "$SCRIPTLET_CALLS"\n')
            os.chmod(path, 0o755)
    script = os.path.join(tmp, "scriptlet")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(_INTERPRETER.sub(lambda m: os.path.join(stand, m.group(1)), body))
    with open(log, "w", encoding="utf-8"):
        pass
    r = subprocess.run(["/bin/sh", script, str(arg)], capture_output=True, text=True,
                       cwd=tmp, env={"PATH": stand, "SCRIPTLET_CALLS": log}, timeout=30)
    with open(log, encoding="utf-8") as fh:
        calls = [ln.split("\t") for ln in fh.read().splitlines()]
    return r.returncode, calls, r.stderr


def expected_calls(name: str, arg: int,
                   bundled: bool = True) -> Tuple[Dict[str, Set[str]], List[List[str]]]:
    """What a scriptlet run must do: (unit -> systemctl actions, the other calls in order)."""
    actions: Dict[str, Set[str]] = {u: set() for u in UNITS}
    other: List[List[str]] = []
    if name == "post":
        if arg == 1:
            for u in UNITS:
                actions[u].add("preset")
        other.append(["systemd-tmpfiles", "--create", TMPFILES])
    elif name == "preun" and arg == 0:
        for u, (on_removal, _up) in UNIT_POLICY.items():
            actions[u].add(on_removal)
    elif name == "postun" and arg >= 1:
        for u, (_rm, on_upgrade) in UNIT_POLICY.items():
            if on_upgrade:
                actions[u].add(on_upgrade)
    return actions, other


def check_scriptlet_run(c: Checker, name: str, arg: int, what: str, rc: int,
                        calls: List[List[str]], err: str, bundled: bool = True) -> None:
    tag = f"{name} $1={arg} ({what})"
    c.check(f"{tag}: exit status 0", rc == 0, f"{rc}: {err.strip()[:200]}")
    actions: Dict[str, Set[str]] = {}
    stray = []
    other = []
    for call in calls:
        if call[0] != "systemctl":
            other.append(call)
            continue
        flags = [a for a in call[1:] if a.startswith("-")]
        words = [a for a in call[1:] if not a.startswith("-")]
        label = (words[0] if words else "?") + (" --now" if "--now" in flags else "")
        if len(words) < 2 or any(u not in UNITS for u in words[1:]):
            stray.append(" ".join(call))
        for u in words[1:]:
            actions.setdefault(u, set()).add(label)
    want_actions, want_other = expected_calls(name, arg, bundled)
    for unit in UNITS:
        want = want_actions[unit]
        got = actions.get(unit, set())
        c.check(f"{tag}: {unit}: {', '.join(sorted(want)) or 'untouched'}", got == want,
                f"systemctl {', '.join(sorted(got)) or 'nothing'}")
    c.check(f"{tag}: systemctl names the package's units only", not stray, "; ".join(stray))
    c.check(f"{tag}: other calls: " + ("; ".join(" ".join(x) for x in want_other) or "none"),
            other == want_other, "; ".join(" ".join(x) for x in other) or "none")


def parse_unit(text: str) -> List[Tuple[str, str, str]]:
    """A unit file's settings as (section, key, value), in order: continuation lines joined,
    comments dropped, the value's whitespace collapsed."""
    out = []
    section = ""
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")) or (not line and not buf):
            continue  # a comment, also between continuation lines (as systemd reads it)
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, value = line.split("=", 1)
            out.append((section, key.strip(), " ".join(value.split())))
    return out


def tmpfiles_dirs(text: str) -> Set[str]:
    """The directories a tmpfiles.d file creates (types d and D)."""
    dirs = set()
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and not f[0].startswith("#") and f[0].rstrip("!-=~^") in ("d", "D"):
            dirs.add(f[1].rstrip("/"))
    return dirs


# a path of this package named in a unit or example: it must be in the package
_OWN_PATH = re.compile(r"/(?:usr|etc|var)/[\w./-]*lvs-hooks[\w./-]*")


def _under(path: str, dirs: Set[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def check_units(c: Checker, read, ents: List[Entry]) -> None:
    by_path = {e.path: e for e in ents}
    dirs = {e.path for e in ents if stat.S_ISDIR(e.mode)}
    runtime = tmpfiles_dirs(read(TMPFILES) or "")
    for unit in UNITS:
        text = read(f"{UNITDIR}/{unit}")
        if text is None:
            continue  # check_files reported it
        settings = parse_unit(text)
        c.check(f"{unit} names no /usr/bin/lvs-hooks", "/usr/bin/lvs-hooks" not in text,
                next((ln.strip() for ln in text.splitlines() if "/usr/bin/lvs-hooks" in ln), ""))
        m = SOURCE_PATH.search(text)
        c.check(f"{unit} names no path of the source tree", m is None, m and m.group(0).strip())
        own = sorted({p.rstrip(".") for p in _OWN_PATH.findall(text)} - set(by_path))
        c.check(f"{unit}: the package's paths it names are packaged", not own, ", ".join(own))
        execs = [(k, v) for sec, k, v in settings if sec == "Service" and k.startswith("Exec")]
        for key, value in execs:
            try:
                argv = shlex.split(value)
            except ValueError as e:
                c.check(f"{unit} {key}= parses", False, str(e))
                continue
            prog = argv[0].lstrip("-@:+!") if argv else ""
            e = by_path.get(prog)
            packaged = e is not None and stat.S_ISREG(e.mode) and e.mode & 0o111
            c.check(f"{unit} {key}= runs a packaged or required program",
                    packaged or prog in REQUIRED_PROGRAMS, prog)
            ours = [a for a in argv if a.endswith("/lvs-hooks")]
            c.check(f"{unit} {key}= runs lvs-hooks as {COMMAND}",
                    all(a == COMMAND for a in ours), " ".join(ours))
        if unit in UNIT_EXEC:
            starts = [v for k, v in execs if k == "ExecStart"]
            c.check(f"{unit} ExecStart= ... {UNIT_EXEC[unit]}",
                    len(starts) == 1 and starts[0].endswith(UNIT_EXEC[unit]), "; ".join(starts))
        for _sec, key, value in settings:
            if key == "Documentation":
                for url in value.split():
                    if url.startswith("file://"):
                        c.check(f"{unit} Documentation= {url} is packaged",
                                url[len("file://"):] in by_path)
            elif key in ("ReadWritePaths", "ReadOnlyPaths"):
                # a missing path fails the unit at start (226/NAMESPACE); /run is empty at boot.
                # "-PATH" may be missing (the agent's metrics directories of node_exporter).
                bad = [p for p in (p.lstrip("+") for p in value.split())
                       if not p.startswith("-")
                       and (p not in dirs or (p.startswith("/run/") and p not in runtime))]
                c.check(f"{unit} {key}=: directories of the package (under /run: ones "
                        "tmpfiles.d creates)", not bad, " ".join(bad))
        install = [(k, v) for sec, k, v in settings if sec == "Install"]
        want = UNIT_INSTALL.get(unit)
        if want is None:
            c.check(f"{unit}: no [Install] section (started by another unit)", not install,
                    str(install))
        else:
            c.check(f"{unit}: [Install] {want[0]}={want[1]}",
                    any(k == want[0] and want[1] in v.split() for k, v in install), str(install))
    rules = read(f"{UNITDIR}/lvs-hooks-rules.service")
    if rules is not None:
        # the scriptlets never stop or restart it (UNIT_POLICY); this makes systemd refuse an
        # operator's stop or restart, which would stop or restart keepalived with it
        c.check("lvs-hooks-rules.service: RefuseManualStop=yes",
                ("Unit", "RefuseManualStop", "yes") in parse_unit(rules))


def check_examples(c: Checker, read, ents: List[Entry]) -> None:
    paths = {e.path for e in ents}
    runtime = tmpfiles_dirs(read(TMPFILES) or "")
    for example in EXAMPLES:
        p = f"{DOC}/{example}"
        text = read(p)
        if text is None:
            continue
        c.check(f"{p} names no /usr/bin/lvs-hooks", "/usr/bin/lvs-hooks" not in text)
        c.check(f"{p} names /usr/libexec/keepalived/lvs-hooks",
                "/usr/libexec/keepalived/lvs-hooks" in text)
        m = SOURCE_PATH.search(text)
        c.check(f"{p} names no path of the source tree", m is None, m and m.group(0).strip())
        own = sorted({q.rstrip(".") for q in _OWN_PATH.findall(text)} - paths)
        c.check(f"{p}: the package's paths it names are packaged", not own, ", ".join(own))
        run = sorted({q.rstrip(".") for q in re.findall(r"/run/[\w./-]+", text)})
        c.check(f"{p}: its /run paths are in directories tmpfiles.d creates",
                all(_under(q, runtime) for q in run), ", ".join(run))


def check_source_tree(c: Checker, project: str = PROJECT) -> None:
    """From a checkout: every unit and keepalived example of the source is packaged."""
    sysd = os.path.join(project, "systemd")
    if os.path.isdir(sysd):
        src = sorted(os.path.basename(p) for pat in ("*.service", "*.timer", "*.socket",
                                                     "*.path", "*.target")
                     for p in glob.glob(os.path.join(sysd, pat)))
        c.check("the units of systemd/ are UNITS", src == sorted(UNITS),
                f"systemd/ has {src}")
    ex = os.path.join(project, "etc", "keepalived")
    if os.path.isdir(ex):
        src = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ex, "*.conf")))
        c.check("the examples of etc/keepalived/ are EXAMPLES", src == sorted(EXAMPLES),
                f"etc/keepalived/ has {src}")


def check_payload(c: Checker, root: str, bundled: bool, ents: List[Entry]) -> None:
    def read(p: str) -> Optional[str]:
        try:
            with open(root + p, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    w = [read(p) or "" for p in WRAPPERS]
    c.check("both wrappers identical", w[0] == w[1])
    c.check("wrapper is valid sh",
            subprocess.run(["sh", "-n", root + WRAPPERS[0]]).returncode == 0)
    flags = "-I -S -B" if bundled else "-I -B"
    c.check(f"wrapper runs the interpreter with {flags}", f'exec "$py" {flags} -c ' in w[0])
    pythons = " ".join(PYTHONS) if bundled else "/usr/bin/python3"
    c.check(f"wrapper's interpreters: {pythons}", f"for py in {pythons}; do" in w[0])
    c.check("wrapper imports from " + LIB, f'sys.path[:0] = ["{LIB}"' in w[0])
    c.check("wrapper has no placeholder left", not re.search(r"@[A-Z_]+@", w[0]))
    check_units(c, read, ents)
    check_examples(c, read, ents)
    elf = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    elf.append(p[len(root):])
    c.check("no ELF file in the payload", not elf, ", ".join(elf[:5]))
    if bundled:
        y = read(LIB + "/vendor/yaml/__init__.py") or ""
        c.check("PyYAML is the pure-Python package", "__version__ = '6.0.3'" in y
                and not os.path.exists(root + LIB + "/vendor/_yaml"))


def run_checks(rpm: str, bundled: bool = True, unpack_dir: Optional[str] = None) -> tuple:
    c = Checker()
    nevra = rpmq(rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{SIZE} %{LICENSE}")
    name, version, release, arch, size, lic = nevra.split(" ", 5)
    c.check("name lvs-hooks", name == "lvs-hooks", name)
    c.check("noarch", arch == "noarch", arch)
    init = os.path.join(HERE, "..", "lvs_hooks", "__init__.py")
    if os.path.exists(init):
        with open(init, encoding="utf-8") as fh:
            m = re.search(r'^__version__ = "(.*)"$', fh.read(), re.M)
        c.check("version = lvs_hooks.__version__", m is not None and m.group(1) == version,
                version)
    if bundled:
        for spdx in ("GPL-2.0-or-later", "BSD-3-Clause", "Unlicense", "Apache-2.0", "MIT"):
            c.check(f"License names {spdx}", spdx in lic, lic)
    ents = entries(rpm)
    check_files(c, ents, bundled)
    check_deps(c, rpm, bundled, version, release)
    check_scriptlets(c, rpm, bundled)
    with tempfile.TemporaryDirectory(prefix="check-rpm-") as tmp:
        root = unpack_dir or tmp
        if unpack_dir is None:
            unpack(rpm, root)
        check_payload(c, root, bundled, ents)
    check_source_tree(c)
    files = [e for e in ents if stat.S_ISREG(e.mode)]
    vendor = [e for e in files if e.path.startswith(LIB + "/vendor/")]
    own = [e for e in files if e.path.startswith(LIB + "/lvs_hooks/")]
    summary = {
        "rpm": os.path.basename(rpm),
        "rpm_bytes": os.path.getsize(rpm),
        "installed_bytes": int(size),
        "entries": len(ents),
        "files": len(files),
        "dirs": sum(1 for e in ents if stat.S_ISDIR(e.mode)),
        "lvs_hooks_files": len(own),
        "vendor_files": len(vendor),
        "vendor_bytes": sum(e.size for e in vendor),
        "other_files": sorted(e.path for e in files if e not in vendor and e not in own),
        "checks": len(c.results),
        "failed": len(c.failed),
    }
    return c, summary


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rpm")
    p.add_argument("--with-system-deps", action="store_true",
                   help="the RPM was built --with system_deps (no bundled dependencies)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every check")
    a = p.parse_args(argv)
    c, summary = run_checks(a.rpm, bundled=not a.with_system_deps)
    if a.json:
        print(json.dumps({**summary, "failures": [[n, d] for n, _ok, d in c.failed]}, indent=2))
    else:
        print(f"check-rpm: {summary['rpm']}: {summary['rpm_bytes']} bytes "
              f"({summary['installed_bytes']} installed), {summary['entries']} entries: "
              f"{summary['files']} files in {summary['dirs']} directories; "
              f"lvs_hooks {summary['lvs_hooks_files']} files, bundled dependencies "
              f"{summary['vendor_files']} files ({summary['vendor_bytes']} bytes); others:")
        for f in summary["other_files"]:
            print(f"  {f}")
        for name, ok, detail in c.results:
            if a.verbose or not ok:
                print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok
                                                            else ""))
        print(f"check-rpm: {len(c.results) - len(c.failed)} checks passed, "
              f"{len(c.failed)} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
