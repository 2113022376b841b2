"""The .deb (packaging/build-deb), unit tier (no root; a few seconds): lintian, its control
data, its payload, its man pages. test_deb_install.py installs it in clean Debian roots."""

import os
import re
import shutil
import stat
import subprocess

from rpmtest import missing

from lvs_hooks import __version__

EXAMPLES = ("lvs-hooks-fifo.conf", "lvs-hooks-notify.conf", "lvs-hooks-warmup.conf")
UNITS = ("lvs-hooks-agent.service", "lvs-hooks-rules.service", "lvs-hooks-snapshot.service",
         "lvs-hooks-snapshot.timer")
DOC = "usr/share/doc/lvs-hooks"


def test_lintian_clean(built_deb):
    """No error, warning, info or pedantic tag that is not overridden, and no override that
    matches nothing (each one says why in packaging/debian/lintian-overrides)."""
    if not shutil.which("lintian"):
        missing("needs lintian (scripts/setup installs it)")
    r = subprocess.run(["lintian", "-I", "--pedantic", "--show-overrides", built_deb],
                       capture_output=True, text=True, timeout=300)
    tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EWIPXO]: ", ln)]
    open_tags = [t for t in tags if not t.startswith("O: ")]
    assert not open_tags, "\n".join(open_tags)
    assert r.returncode == 0, r.stdout + r.stderr
    overridden = sorted({t.split()[2] for t in tags if t.startswith("O: ")})
    print(f"lintian: 0 tags; overridden: {', '.join(overridden)}")


def test_deb_control(deb_root):
    with open(os.path.join(deb_root, "DEBIAN", "control"), encoding="utf-8") as fh:
        control = dict(re.findall(r"^([\w-]+): (.*)$", fh.read(), re.M))
    assert control["Package"] == "lvs-hooks"
    assert control["Version"] == f"{__version__}-1"
    assert control["Architecture"] == "all"
    assert control["Depends"] == "python3 (>= 3.9), keepalived"
    assert control["Recommends"] == "ipvsadm"
    with open(os.path.join(deb_root, "DEBIAN", "conffiles"), encoding="utf-8") as fh:
        assert fh.read().split() == ["/etc/lvs-hooks/lvs-hooks.yaml"]


def test_deb_payload(deb_root):
    """The files a director needs, with modes keepalived's script security accepts; no
    bytecode (postinst compiles it), no compiled code, nothing in site-packages."""
    def p(rel):
        return os.path.join(deb_root, rel)

    want = ["usr/sbin/lvs-hooks", "usr/libexec/keepalived/lvs-hooks", "etc/lvs-hooks/lvs-hooks.yaml",
            "usr/lib/lvs-hooks/lvs_hooks/__main__.py", "usr/lib/tmpfiles.d/lvs-hooks.conf",
            "usr/share/man/man8/lvs-hooks.8.gz", "usr/share/man/man5/lvs-hooks.yaml.5.gz",
            "usr/share/bash-completion/completions/lvs-hooks", f"{DOC}/copyright",
            f"{DOC}/changelog.Debian.gz", "usr/share/python3/runtime.d/lvs-hooks.rtupdate",
            *(f"usr/lib/lvs-hooks/vendor/{m}/__init__.py"
              for m in ("click", "filelock", "pyroute2", "yaml")),
            *(f"usr/lib/systemd/system/{u}" for u in UNITS), *(f"{DOC}/{e}" for e in EXAMPLES)]
    absent = [w for w in want if not os.path.isfile(p(w))]
    assert not absent, absent
    with open(p("usr/sbin/lvs-hooks"), "rb") as a, \
            open(p("usr/libexec/keepalived/lvs-hooks"), "rb") as b:
        wrapper = a.read()
        assert wrapper == b.read()
    assert b'for py in /usr/bin/python3; do' in wrapper
    assert b'exec "$py" -I -S -B -c ' in wrapper
    assert not re.search(rb"@[A-Z_]+@", wrapper)
    bad = []
    for dirpath, dirs, files in os.walk(deb_root):
        if dirpath == deb_root:
            dirs.remove("DEBIAN")
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, deb_root)
            st = os.lstat(full)
            if st.st_mode & 0o022 or st.st_mode & 0o7000 or stat.S_ISLNK(st.st_mode):
                bad.append(f"{rel} {oct(st.st_mode)}")
            if re.search(r"(\.pyc|\.so(\.[0-9.]+)?)$|^__pycache__$", name):
                bad.append(f"{rel}: bytecode or compiled code")
            if re.search(r"(site|dist)-packages", rel):
                bad.append(f"{rel}: in site-packages")
    assert not bad, bad
    for unit in UNITS:
        with open(p(f"usr/lib/systemd/system/{unit}"), encoding="utf-8") as fh:
            text = fh.read()
        assert "/usr/bin/lvs-hooks" not in text, unit
    for ex in EXAMPLES:
        with open(p(f"{DOC}/{ex}"), encoding="utf-8") as fh:
            text = fh.read()
        assert "/usr/libexec/keepalived/lvs-hooks" in text or "lvs_hooks_warmup" in text, ex
        assert not re.search(r"[ (]etc/keepalived/|[ (]systemd/tmpfiles", text), ex


def test_man_pages_render_without_warnings(deb_root, tmp_path):
    """Both man pages as groff reads them: no warning, and every command and config section
    is in them."""
    if not shutil.which("groff"):
        missing("needs groff (scripts/setup installs groff-base)")
    import gzip

    pages = {}
    for rel in ("usr/share/man/man8/lvs-hooks.8.gz", "usr/share/man/man5/lvs-hooks.yaml.5.gz"):
        with gzip.open(os.path.join(deb_root, rel), "rt", encoding="utf-8") as fh:
            src = fh.read()
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=src,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", (rel, r.stderr)
        pages[rel.split("/")[-1]] = src
    for cmd in ("agent", "doctor", "fifo", "init", "notify", "rules apply", "snapshot", "status"):
        assert f'.SS "{cmd}"' in pages["lvs-hooks.8.gz"], cmd
    for key in ("sync.syncid", "paths.state_dir", "warmup.max_wait", "transitions.instances"):
        assert f"\\fB{key}\\fR" in pages["lvs-hooks.yaml.5.gz"].replace("\\-", "-"), key
