"""Subcommands of ``rethink-dist``: one module each (see rethink_dist.cli)."""
