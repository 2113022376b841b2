#!/usr/bin/env python3
"""packaging/gen_docs.py OUTDIR: the man pages and the bash completion, from the code.

Run at package build time (packaging/build-rpm's spec and packaging/build-deb) with lvs_hooks and
the click it is packaged with importable (PYTHONPATH), it writes into OUTDIR:

  lvs-hooks.8        every command of the CLI (lvs_hooks.cli and lvs_hooks/commands): usage,
                     help text, options; the exit codes of lvs_hooks.errors; the files
  lvs-hooks.yaml.5   every key of the configuration schema (lvs_hooks.config.Config): type,
                     default, allowed values and why it exists, as the loader checks them
  lvs-hooks.bash     click's bash completion for `lvs-hooks` (what
                     `_LVS_HOOKS_COMPLETE=bash_source lvs-hooks` prints)
  README.md          the operator's README: the source tree's, without its section for
                     developers (which names the tree's scripts and documents, not installed)

Nothing is written by hand that the code already says, so the pages follow the CLI and the
schema; the date is SOURCE_DATE_EPOCH's (reproducible builds). Stdlib besides lvs_hooks and its
dependencies; Python 3.9+.
"""

import argparse
import dataclasses
import inspect
import os
import re
import subprocess
import sys
import time
from typing import Any, List, Optional, Tuple, Type, get_type_hints

PAGES = ("lvs-hooks.8", "lvs-hooks.yaml.5")
COMPLETION = "lvs-hooks.bash"
SOURCE_README = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md"))
DEVELOPERS = "## For developers"

# what the packages install where; the same paths in the RPM and the .deb
FILES = (
    ("/etc/lvs-hooks/lvs-hooks.yaml", "The configuration (lvs-hooks.yaml(5)); every key is "
     "optional."),
    ("/usr/sbin/lvs-hooks", "The command, for people and the systemd units."),
    ("/usr/libexec/keepalived/lvs-hooks", "The same command, the path to name in "
     "keepalived.conf (notify scripts and vrrp_notify_fifo_script)."),
    ("/usr/lib/lvs-hooks", "The lvs_hooks package and its bundled dependencies."),
    ("/var/lib/lvs-hooks", "Snapshots of the persistence templates and the journal of "
     "transitions (root only)."),
    ("/run/lvs-hooks", "Runtime state: the transition lock, the agent's socket, the warm-up "
     "track file, the notify FIFO of the example configuration."),
    ("/usr/share/doc/lvs-hooks", "keepalived.conf examples: lvs-hooks-fifo.conf, "
     "lvs-hooks-notify.conf, lvs-hooks-warmup.conf."),
    ("/usr/lib/systemd/system/lvs-hooks-agent.service", "The agent (table pushes, start-up "
     "reseed, warm-up gate)."),
    ("/usr/lib/systemd/system/lvs-hooks-snapshot.timer", "Periodic snapshots."),
    ("/usr/lib/systemd/system/lvs-hooks-rules.service", "Loop-protection rules before "
     "keepalived starts (co-located directors)."),
)


def roff(text: str) -> str:
    """Text as a roff line body: backslashes escaped, a leading control character defused,
    hyphens that are options or names kept as ASCII minus signs."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?<![\w])-", r"\\-", text)
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def paragraphs(doc: str) -> List[Tuple[bool, str]]:
    """A click help text as (preformatted, text) paragraphs: click's \\b marks a paragraph
    that must not be rewrapped."""
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")):
        if not para.strip():
            continue
        if para.startswith("\b"):
            out.append((True, para[1:].lstrip("\n")))
        else:
            out.append((False, " ".join(para.split())))
    return out


def emit_paragraphs(out: List[str], doc: str) -> None:
    for i, (pre, text) in enumerate(paragraphs(doc)):
        if i:
            out.append(".PP")
        if pre:
            out.append(".nf")
            out.extend(roff(ln) for ln in text.splitlines())
            out.append(".fi")
        else:
            out.append(roff(text))


def header(name: str, section: int, version: str, manual: str) -> List[str]:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    return [
        f'.\\" Generated from the command line and configuration of lvs-hooks {version}.',
        f'.TH "{name.upper()}" "{section}" "{date}" "lvs-hooks {version}" "{manual}"',
    ]


def _options(cmd: Any, ctx: Any) -> List[Tuple[str, str]]:
    recs = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx)
        if rec is not None and rec[1]:
            recs.append(rec)
    return recs


def _commands(group: Any, ctx: Any, path: List[str]) -> List[Tuple[List[str], Any, Any]]:
    """Every command below group, depth first, by name: (path, command, its context)."""
    import click

    out = []
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        out.append((path + [name], cmd, sub))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, sub, path + [name]))
    return out


def exit_codes() -> List[Tuple[int, List[str]]]:
    """(code, [what it means]) from lvs_hooks.errors: each error class's exit code and the
    first sentence of its docstring."""
    from lvs_hooks import errors

    by_code: dict = {}
    for _name, cls in sorted(vars(errors).items()):
        if not (inspect.isclass(cls) and issubclass(cls, errors.LvsHooksError)):
            continue
        if cls is errors.LvsHooksError:
            continue
        doc = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
        first = re.split(r"(?<=[.:])\s", doc, maxsplit=1)[0].rstrip(".:")
        by_code.setdefault(cls.exit_code, []).append(first)
    return sorted(by_code.items())


def command_page(version: str) -> str:
    import click

    from lvs_hooks.cli import cli

    ctx = click.Context(cli, info_name="lvs-hooks")
    summary = inspect.cleandoc(cli.help or "").splitlines()[0].rstrip(".")
    out = header("lvs-hooks", 8, version, "System Administration")
    out += [".SH NAME", f"lvs-hooks \\- {roff(summary)}", ".SH SYNOPSIS",
            ".B lvs-hooks", "[\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fB\\-\\-debug\\fR] "
            "\\fICOMMAND\\fR [\\fIARGS\\fR]...", ".br", ".B lvs-hooks",
            "\\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR",
            ".SH DESCRIPTION"]
    emit_paragraphs(out, cli.help or "")
    out += [".PP", roff(
        "keepalived runs the notify commands (notify, master, backup, fault, stop) or fifo "
        "when VRRP state changes; people run the others. Every command takes --help. The "
        "configuration is described in lvs-hooks.yaml(5).")]
    out.append(".SH GLOBAL OPTIONS")
    for opt, text in _options(cli, ctx):
        out += [".TP", f"\\fB{roff(opt)}\\fR", roff(text)]
    out.append(".SH COMMANDS")
    for path, cmd, sub in _commands(cli, ctx, []):
        usage = " ".join(cmd.collect_usage_pieces(sub))
        out.append(f'.SS "{roff(" ".join(path))}"')
        out += [".nf", f"\\fBlvs-hooks {roff(' '.join(path))}\\fR {roff(usage)}", ".fi"]
        if cmd.help:
            out.append(".PP")
            emit_paragraphs(out, cmd.help)
        opts = [(o, t) for o, t in _options(cmd, sub) if o != "--help"]
        for opt, text in opts:
            out += [".TP", f"\\fB{roff(opt)}\\fR", roff(text) if text else ""]
    out += [".SH EXIT STATUS", ".TP", "\\fB0\\fR", "Success (doctor: nothing found).",
            ".TP", "\\fB1\\fR", roff("An error an operator can act on, of no more specific "
                                      "kind (doctor: warnings).")]
    for code, meanings in exit_codes():
        if code == 1:
            continue
        out += [".TP", f"\\fB{code}\\fR", roff("; ".join(dict.fromkeys(meanings)) + ".")]
    out += [".PP", roff("Errors are one line on standard error, the traceback only with "
                         "--debug. Commands run by keepalived log to syslog or the journal.")]
    out.append(".SH FILES")
    for path, text in FILES:
        out += [".TP", f"\\fI{roff(path)}\\fR", roff(text)]
    out += [".SH SEE ALSO", "\\fBlvs-hooks.yaml\\fR(5), \\fBkeepalived\\fR(8), "
            "\\fBkeepalived.conf\\fR(5), \\fBipvsadm\\fR(8), \\fBsystemctl\\fR(1)"]
    return "\n".join(out) + "\n"


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _keys(cls: Type[Any], prefix: str) -> List[Tuple[str, Any, Any, Any]]:
    """(dotted key, type, field, default value) of every setting below cls, sections as
    (key, section class, None, None) first."""
    out = []
    hints = get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if _is_section(tp):
            out.append((key, tp, None, None))
            out.extend(_keys(tp, key + "."))
        else:
            out.append((key, tp, f, getattr(default, f.name)))
    return out


def config_page(version: str) -> str:
    from lvs_hooks import config

    out = header("lvs-hooks.yaml", 5, version, "File Formats")
    out += [".SH NAME", "lvs-hooks.yaml \\- configuration of lvs-hooks", ".SH SYNOPSIS",
            "\\fI/etc/lvs-hooks/lvs-hooks.yaml\\fR", ".SH DESCRIPTION", roff(
                "One YAML mapping of sections, each a mapping of keys. Every key is optional: "
                "an absent key, section or file means the default shown here. Unknown keys are "
                "errors (with a suggestion for a misspelt one), and so are booleans written "
                "other than true/false and values outside what a key allows; each problem is "
                "reported with the file, the line and the key's path, and the command stops "
                "with exit code 2."),
            ".PP", roff("A file for this director's keepalived.conf: lvs-hooks init "
                        "--from-keepalived /etc/keepalived/keepalived.conf; then lvs-hooks "
                        "doctor checks them together. lvs-hooks init alone prints every key "
                        "with its default.")]
    for key, tp, f, value in _keys(config.Config, ""):
        if f is None:
            out += [f'.SH "{roff(key.upper())}"' if "." not in key else f'.SS "{roff(key)}"']
            emit_paragraphs(out, " ".join(inspect.cleandoc(tp.__doc__ or "").split()))
            continue
        allowed = config.describe(tp, f.metadata)
        shown = config._yaml_scalar(value)
        out += [".TP", f"\\fB{roff(key)}\\fR: {roff(shown)}"]
        doc = f.metadata.get("doc", "")
        if doc:
            out.append(roff(" ".join(doc.split())))
            out.append(".br")
        out.append(roff(f"Allowed: {allowed}."))
    out += [".SH EXAMPLE", ".nf", roff("transitions:"), roff("  instances: [VI_LVS]"),
            roff("sync:"), roff("  interface: eth1"), roff("  syncid: 51"), ".fi",
            ".SH FILES", ".TP", "\\fI/etc/lvs-hooks/lvs-hooks.yaml\\fR",
            roff("Read by every command; --config FILE names another."),
            ".SH SEE ALSO", "\\fBlvs-hooks\\fR(8), \\fBkeepalived.conf\\fR(5)"]
    return "\n".join(out) + "\n"


def completion() -> str:
    """click's bash completion script for `lvs-hooks`, as the command prints it (in a child
    process: click writes it to the binary stdout and exits)."""
    import click

    import lvs_hooks

    path = [os.path.dirname(os.path.dirname(m.__file__)) for m in (lvs_hooks, click)]
    env = dict(os.environ, _LVS_HOOKS_COMPLETE="bash_source",
               PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))
    r = subprocess.run([sys.executable, "-c", "from lvs_hooks.cli import main; main([])"],
                       env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "_LVS_HOOKS_COMPLETE=bash_complete" not in r.stdout:
        raise SystemExit(f"gen_docs: click printed no bash completion (exit {r.returncode}): "
                         f"{r.stdout[:200]!r} {r.stderr[-500:]!r}")
    return r.stdout


def operator_readme(source: str) -> str:
    """The README up to its section for developers: the last section, and the only one that
    names the source tree. Missing, it is an error: a README reordered would otherwise ship
    the developers' section, or half the operators'."""
    head, sep, _ = source.partition("\n" + DEVELOPERS + "\n")
    if not sep:
        raise SystemExit(f"gen_docs.py: {SOURCE_README}: no '{DEVELOPERS}' section")
    return head.rstrip("\n") + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outdir")
    a = p.parse_args(argv)
    from lvs_hooks import __version__

    os.makedirs(a.outdir, exist_ok=True)
    with open(SOURCE_README, encoding="utf-8") as fh:
        readme = operator_readme(fh.read())
    for name, text in (("lvs-hooks.8", command_page(__version__)),
                       ("lvs-hooks.yaml.5", config_page(__version__)),
                       (COMPLETION, completion()),
                       ("README.md", readme)):
        with open(os.path.join(a.outdir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
