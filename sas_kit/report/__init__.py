"""Stage 5 — report: tables, figures, README blocks, notebook widgets, and ``run_protocol`` (experiment, then report)."""
