"""Subcommands; each module registers its commands on the main group when imported."""

from lvs_hooks.commands import (  # noqa: F401
    agent,
    diagnose,
    notify,
    ready,
    rules,
    templates,
)
