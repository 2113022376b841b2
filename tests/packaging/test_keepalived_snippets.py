"""Every keepalived snippet of the source tree passes `keepalived -t` (unit tier: no root; the
host's keepalived, which scripts/setup installs; a second).

- each example of etc/keepalived/ as a whole file;
- the same file with the alternatives its comments show (indented `#   block {` ... `}` lines):
  whole blocks added after it, fragments (a block with a `...` line: "merge into the instance")
  merged into the file's block of the same name;
- every fenced block of README.md and docs/*.md that holds a global_defs or vrrp_instance.

keepalived -t checks the syntax and the options' values (it rejects `lvs_timeouts 7200 120 300`:
"Unknown option 7200"), not the paths of the scripts (test_rpm_keepalived.py starts keepalived
for that).
"""

import glob
import os
import re
import shutil
import subprocess

import pytest
from rpmtest import PROJECT, missing

HOOK = "/usr/libexec/keepalived/lvs-hooks"
TOP = re.compile(r"^(global_defs|vrrp_instance|vrrp_sync_group|vrrp_script|track_file|"
                 r"virtual_server|static_ipaddress|static_routes)\b")


def commented_blocks(text: str) -> list:
    """The keepalived blocks written in comments ('#   name {' up to its closing brace), as
    lists of the blocks of one comment paragraph (the alternatives a paragraph shows go
    together: a vrrp_script and the track_script that names it), without the comment marks."""
    lines = text.splitlines()
    groups: list = []
    para = -1  # index of the comment paragraph the last block was in
    cur = 0
    i = 0
    while i < len(lines):
        if not lines[i].startswith("#"):
            cur += 1  # a blank or code line ends a comment paragraph
            i += 1
            continue
        m = re.match(r"^#\s{2,}(.*)$", lines[i])
        if m and TOP.match(m.group(1)) and "{" in m.group(1):
            body, depth = [], 0
            while i < len(lines):
                m2 = re.match(r"^#\s?(.*)$", lines[i])
                if not m2:
                    break
                code = re.sub(r"\s#.*$", "", m2.group(1))
                body.append(code)
                depth += code.count("{") - code.count("}")
                i += 1
                if depth <= 0:
                    break
            if para != cur:
                groups.append([])
                para = cur
            groups[-1].append("\n".join(body))
        else:
            i += 1
    return groups


def with_alternative(text: str, group: list) -> str:
    """The file with one paragraph's commented blocks: fragments (with a `...` line) merged after
    the opening line of the file's block of the same header, whole blocks put before the file's
    first vrrp_instance (keepalived wants a script or track file defined before it is named),
    a vrrp_sync_group after everything."""
    for block in group:
        lines = block.splitlines()
        head = lines[0].strip()
        if any(ln.strip() == "..." for ln in lines):
            inner = [ln for ln in lines[1:-1] if ln.strip() != "..."]
            pat = re.compile(r"^" + re.escape(head) + r"\s*$", re.M)
            m = pat.search(text)
            assert m, f"fragment {head!r} names no block of the file"
            text = text[: m.end()] + "\n" + "\n".join(inner) + text[m.end():]
        elif head.startswith("vrrp_sync_group") or "vrrp_instance" not in text:
            text += "\n" + block + "\n"
        else:
            k = text.index("\nvrrp_instance")
            text = text[:k] + "\n" + block + "\n" + text[k:]
    return text


# What keepalived says about a commented alternative that is not a whole configuration, by
# (file, first block of the paragraph): the sync group example names a second instance the
# operator has (VI_LVS_INSIDE) and shows the group's track_file, which replaces the instance's
# (keepalived ignores the instance's own in a group, as the comment says).
EXPECTED = {
    ("lvs-hooks-warmup.conf", "vrrp_sync_group VG_LVS {"): (
        "Virtual router VI_LVS_INSIDE specified in sync group VG_LVS doesn't exist - ignoring",
        "Sync group VG_LVS has only 1 virtual router(s) - this probably isn't what you want",
        "(VI_LVS) ignoring tracked file lvs_hooks_warmup with weight -60 due to SYNC group",
    ),
}


def doc_blocks() -> list:
    """(where, text) of the fenced blocks of README.md and docs/*.md that are keepalived.conf."""
    out = []
    for path in [os.path.join(PROJECT, "README.md"),
                 *sorted(glob.glob(os.path.join(PROJECT, "docs", "*.md")))]:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for m in re.finditer(r"^```[\w-]*\n(.*?)^```", text, re.M | re.S):
            body = m.group(1)
            if re.search(r"^\s*(global_defs|vrrp_instance)\b.*\{", body, re.M):
                line = text[: m.start()].count("\n") + 1
                out.append((f"{os.path.relpath(path, PROJECT)}:{line}", body))
    return out


def keepalived_t(conf: str, tmp_path, name: str) -> subprocess.CompletedProcess:
    kd = shutil.which("keepalived") or (os.path.exists("/usr/sbin/keepalived")
                                        and "/usr/sbin/keepalived")
    if not kd:
        missing("needs keepalived (scripts/setup installs it)")
    path = tmp_path / name
    path.write_text(conf)
    return subprocess.run([kd, "-t", "-f", str(path)], capture_output=True, text=True,
                          timeout=60)


EXAMPLES = sorted(glob.glob(os.path.join(PROJECT, "etc", "keepalived", "*.conf")))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_file(path, tmp_path):
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    r = keepalived_t(text, tmp_path, "keepalived.conf")
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def _alternatives() -> list:
    out = []
    for path in EXAMPLES:
        with open(path, encoding="utf-8") as fh:
            for group in commented_blocks(fh.read()):
                out.append((os.path.basename(path), group))
    return out


@pytest.mark.parametrize("name,group", _alternatives(),
                         ids=lambda v: v if isinstance(v, str) else v[0].split("{")[0].strip())
def test_example_with_a_commented_alternative(name, group, tmp_path):
    with open(os.path.join(PROJECT, "etc", "keepalived", name), encoding="utf-8") as fh:
        full = with_alternative(fh.read(), group)
    r = keepalived_t(full, tmp_path, "keepalived.conf")
    said = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    must = EXPECTED.get((name, group[0].splitlines()[0].strip()), ())
    expected = must
    if not os.path.exists(HOOK) and HOOK in full:
        # keepalived vets a vrrp_script's program: here the package is not installed (the
        # .deb's test runs the same alternatives where it is: test_deb_install.py)
        expected += ("since not found/accessible", f"Cannot find script {HOOK}")
    unexpected = [ln for ln in said if not any(e in ln for e in expected)]
    assert (r.returncode == 0 or expected) and not unexpected, (r.returncode,
        "\n".join(said) + f"\n--- tested:\n{full}")
    assert all(any(e in ln for ln in said) for e in must), (must, said)


def test_commented_blocks_are_found():
    """Control: the extraction finds what the examples show in comments."""
    found = {os.path.basename(p): [] for p in EXAMPLES}
    for name, group in _alternatives():
        found[name].append([b.split("{")[0].strip() for b in group])
    assert ["global_defs"] in found["lvs-hooks-fifo.conf"], found
    assert ["vrrp_script lvs_hooks_ready", "vrrp_instance VI_LVS"] in \
        found["lvs-hooks-warmup.conf"], found
    assert ["vrrp_sync_group VG_LVS"] in found["lvs-hooks-warmup.conf"], found


def test_a_wrong_snippet_fails(tmp_path):
    """Control: keepalived -t does reject the old example's lvs_timeouts form."""
    r = keepalived_t("global_defs {\n    lvs_timeouts 7200 120 300\n}\n", tmp_path, "bad.conf")
    assert r.returncode != 0 and "Unknown option 7200" in r.stdout + r.stderr


@pytest.mark.parametrize("where,text", doc_blocks() or [("none", "")],
                         ids=lambda v: v if isinstance(v, str) and ":" in v else None)
def test_documented_snippet(where, text, tmp_path):
    if where == "none":
        pytest.skip("no keepalived.conf block in README.md or docs/")
    r = keepalived_t(text, tmp_path, "keepalived.conf")
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), (where, r.stdout + r.stderr)
