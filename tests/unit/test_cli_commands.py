"""lvs_hooks.cli.COMMAND_MODULES: a command line loads the one module of lvs_hooks/commands it
runs, and the table names every command the modules register. In fresh interpreters: what is
checked is what an import leaves in sys.modules and on the group."""

import json
import os
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from lvs_hooks.cli import COMMAND_MODULES, cli

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code):
    env = dict(os.environ, PYTHONPATH=PROJECT)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def test_the_table_names_what_each_module_registers():
    registered = run("""
        import importlib, json
        from lvs_hooks.cli import cli
        before = sorted(cli.commands)
        for m in ("agent", "diagnose", "notify", "ready", "rules", "templates"):
            importlib.import_module("lvs_hooks.commands." + m)
        print(json.dumps([before, {name: c.callback.__module__.rsplit(".", 1)[1]
                                   for name, c in cli.commands.items()}]))
    """)
    assert registered == [[], COMMAND_MODULES]


def test_a_command_loads_its_module_only():
    loaded = run("""
        import json, sys
        from lvs_hooks.cli import main
        try:
            main(["rules", "--help"])
        except SystemExit:
            pass
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("lvs_hooks.commands."))))
    """)
    assert loaded == ["lvs_hooks.commands.rules"]


def test_help_lists_every_command():
    out = CliRunner().invoke(cli, ["--help"]).output
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMAND_MODULES)


def test_an_unknown_command_is_one_clear_line():
    r = CliRunner().invoke(cli, ["snapshott"])
    assert r.exit_code == 2 and "No such command 'snapshott'" in r.output
