"""Subcommands; each module registers its commands on import."""
