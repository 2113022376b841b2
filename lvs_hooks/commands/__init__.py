"""Subcommands: each module registers its commands on the main group when imported, and the main
group imports a module when one of its commands is asked for (lvs_hooks.cli.COMMAND_MODULES)."""
