#!/usr/bin/env python3
"""packaging/check_rpm.py [--with-system-deps] [--json] RPM: checks the built lvs-hooks RPM.

What an EL director needs from it, read from the RPM itself (rpm -qp, and the payload unpacked
with rpm2cpio into a scratch directory):

- files: the expected paths with their modes and flags (config noreplace, ghost /run dir), and
  nothing in site-packages, no bytecode, no compiled code (noarch), no path outside the
  package's own;
- modes: every file and directory root:root, none group- or world-writable, no setuid/setgid;
  that covers the hook's whole path inside the package (the wrappers and /usr/lib/lvs-hooks,
  which the wrappers' Python imports from), which keepalived's enable_script_security demands.
  The directories above them (/usr, /usr/libexec, /usr/libexec/keepalived) belong to other
  packages; tests/packaging runs keepalived itself against the unpacked payload;
- requires / provides: exactly the expected dependencies (no generated python(abi) or
  pythondist ones), Recommends ipvsadm, bundled() provides equal to packaging/vendor.lock;
- scriptlets: post/preun/postun with systemctl and systemd-tmpfiles, no unexpanded macro, each
  valid sh;
- payload: both wrappers identical, isolated interpreter flags, the units and keepalived examples
  name the packaged paths, the bundled licences.

Prints a summary and one line per failed check; exit 0 when all pass, 1 otherwise. Stdlib only,
Python 3.9+.
"""

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = "/usr/lib/lvs-hooks"
WRAPPERS = ("/usr/sbin/lvs-hooks", "/usr/libexec/keepalived/lvs-hooks")
PYTHONS = ("/usr/bin/python3.9", "/usr/bin/python3.11", "/usr/bin/python3.12")
UNITS = ("lvs-hooks-snapshot.service", "lvs-hooks-snapshot.timer")
DOC = "/usr/share/doc/lvs-hooks"
LICENSES = "/usr/share/licenses/lvs-hooks"
# path prefixes the package may put files under (besides the exact paths of EXPECTED)
ALLOWED_PREFIXES = (LIB + "/", DOC + "/", LICENSES + "/")


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
        "/usr/lib/systemd/system/lvs-hooks-snapshot.service": (f | 0o644, ""),
        "/usr/lib/systemd/system/lvs-hooks-snapshot.timer": (f | 0o644, ""),
        "/usr/lib/tmpfiles.d/lvs-hooks.conf": (f | 0o644, ""),
        "/var/lib/lvs-hooks": (d | 0o700, ""),
        "/run/lvs-hooks": (d | 0o700, "g"),
        DOC + "/README.md": (f | 0o644, "d"),
        DOC + "/lvs-hooks-fifo.conf": (f | 0o644, "d"),
        DOC + "/lvs-hooks-notify.conf": (f | 0o644, "d"),
    }
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
    code = [e.path for e in ents if re.search(r"(\.pyc|\.pyo|\.so(\.[0-9.]+)?)$|/__pycache__(/|$)",
                                              e.path)]
    c.check("no bytecode or compiled code (noarch; %post compiles)", not code,
            ", ".join(code[:5]))
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


def check_scriptlets(c: Checker, rpm: str) -> None:
    s = scriptlets(rpm)
    c.check("scriptlets are post, preun, postun", sorted(s) == ["post", "postun", "preun"],
            str(sorted(s)))
    units = " ".join(UNITS)
    musts = {
        "post": [f"systemctl --no-reload preset {units}",
                 "systemd-tmpfiles --create /usr/lib/tmpfiles.d/lvs-hooks.conf",
                 f"-m compileall -q -f {LIB}"],
        "preun": [f"systemctl --no-reload disable --now {units}", "-name __pycache__"],
        "postun": ["systemctl try-restart lvs-hooks-snapshot.timer"],
    }
    for name, needles in musts.items():
        body = s.get(name, "")
        for n in needles:
            c.check(f"{name}: {n}", n in body)
        c.check(f"{name}: no unexpanded macro", not re.search(r"%[{a-z_]", body),
                " ".join(re.findall(r"%[{a-z_]\S*", body)[:3]))
        r = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
        c.check(f"{name}: valid sh", r.returncode == 0, r.stderr.strip())
    trig = rpmq(rpm, "--triggers").strip() + rpmq(rpm, "--filetriggers").strip()
    c.check("no triggers", not trig, trig[:200])


def check_payload(c: Checker, root: str, bundled: bool) -> None:
    def read(p: str) -> str:
        with open(root + p, encoding="utf-8") as fh:
            return fh.read()

    w = [read(p) for p in WRAPPERS]
    c.check("both wrappers identical", w[0] == w[1])
    c.check("wrapper is valid sh",
            subprocess.run(["sh", "-n", root + WRAPPERS[0]]).returncode == 0)
    flags = "-I -S -B" if bundled else "-I -B"
    c.check(f"wrapper runs the interpreter with {flags}", f'exec "$py" {flags} -c ' in w[0])
    pythons = " ".join(PYTHONS) if bundled else "/usr/bin/python3"
    c.check(f"wrapper's interpreters: {pythons}", f"for py in {pythons}; do" in w[0])
    c.check("wrapper imports from " + LIB, f'sys.path[:0] = ["{LIB}"' in w[0])
    c.check("wrapper has no placeholder left", not re.search(r"@[A-Z_]+@", w[0]))
    svc = read("/usr/lib/systemd/system/lvs-hooks-snapshot.service")
    c.check("service runs /usr/sbin/lvs-hooks", "/usr/sbin/lvs-hooks snapshot" in svc)
    for p in ("/usr/lib/systemd/system/lvs-hooks-snapshot.service",
              DOC + "/lvs-hooks-fifo.conf", DOC + "/lvs-hooks-notify.conf"):
        c.check(f"{p} names no /usr/bin/lvs-hooks", "/usr/bin/lvs-hooks" not in read(p))
    for p in (DOC + "/lvs-hooks-fifo.conf", DOC + "/lvs-hooks-notify.conf"):
        c.check(f"{p} names /usr/libexec/keepalived/lvs-hooks",
                "/usr/libexec/keepalived/lvs-hooks" in read(p))
    elf = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    elf.append(p[len(root):])
    c.check("no ELF file in the payload", not elf, ", ".join(elf[:5]))
    if bundled:
        y = read(LIB + "/vendor/yaml/__init__.py")
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
    check_scriptlets(c, rpm)
    with tempfile.TemporaryDirectory(prefix="check-rpm-") as tmp:
        root = unpack_dir or tmp
        if unpack_dir is None:
            unpack(rpm, root)
        check_payload(c, root, bundled)
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
