"""Entry point for ``python -m sas_kit``."""

from sas_kit.cli import main

raise SystemExit(main())
