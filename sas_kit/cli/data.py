"""``sas-kit data list|prepare``: the dataset registry and preparation."""

from __future__ import annotations

import json
import os
import sys
import time

from sas_kit.data import datasets, sources
from sas_kit.data.adapter_io import BadItem, UnusableData, skip_summary
from sas_kit.data.download import DataUnavailable


def register(sub) -> None:
    data = sub.add_parser("data", help="list and prepare datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    listing = dsub.add_parser("list", help="the datasets the kit knows")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)
    prep = dsub.add_parser("prepare", help="prepare datasets as cached train/val/test Arrow splits")
    prep.add_argument("names", nargs="+", metavar="NAME", help="dataset names (see `sas-kit data list`)")
    prep.add_argument("--mirror", help="folder of <name>/ copies (default: $SAS_KIT_MIRROR)")
    prep.add_argument("--force", action="store_true", help="re-read the files even if a prepared copy exists")
    prep.set_defaults(func=run_prepare)


def run_list(args) -> int:
    rows = []
    for src in sources.SOURCES.values():
        row = {k: getattr(src, k) for k in ("name", "dataset", "target", "organ", "licence", "citation", "source",
                                            "size_class", "split_rule", "hf_mirror", "manual")}
        row["cached"] = datasets.is_prepared(src.name)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    print(f"{'name':<13} {'target':<18} {'organ':<11} {'size':<6} {'cached':<6} licence")
    for r in rows:
        print(f"{r['name']:<13} {r['target']:<18} {r['organ']:<11} {r['size_class']:<6} "
              f"{'yes' if r['cached'] else 'no':<6} {r['licence']}")
    print("\n`sas-kit data list --json` adds citation, source and split rule.")
    return 0


def run_prepare(args) -> int:
    """Prepare each name; a failure prints the kit's message (never a traceback) and the exit code is 1.
    ``SAS_KIT_DEBUG=1`` re-raises unexpected errors with their traceback."""
    failed = 0
    for name in args.names:
        start = time.perf_counter()
        try:
            prepared = datasets.prepare(name, mirror=args.mirror, force=args.force)
        except (DataUnavailable, UnusableData, BadItem, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"{name}: FAILED\n  {message}", file=sys.stderr)
            failed += 1
            continue
        except Exception as error:  # noqa: BLE001 - a user of `data prepare` gets a message, not a traceback
            if os.environ.get("SAS_KIT_DEBUG"):
                raise
            print(f"{name}: FAILED (unexpected {type(error).__name__}: {error})\n  run again with SAS_KIT_DEBUG=1 "
                  "for the traceback and report it", file=sys.stderr)
            failed += 1
            continue
        counts = prepared.counts()
        origin = "cache" if prepared.cached else "prepared"
        print(f"{name}: {origin} in {time.perf_counter() - start:.1f}s  train {counts['train']}  val {counts['val']}"
              f"  test {counts['test']}  (empty masks kept and flagged: {prepared.empty}; skipped: "
              f"{len(prepared.skipped)})")
        if prepared.source:
            print(f"  from {prepared.source}")
        if prepared.note:
            print(f"  note: {prepared.note}")
        for line in skip_summary(prepared.skipped):
            print(f"  {line}")
    return 1 if failed else 0
