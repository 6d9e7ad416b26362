"""Subcommands of the ``sas-kit`` CLI; each module has ``register(subparsers)``."""
