"""``sas-kit bench augment|train|encoder|memory|grid|score``: benchmarks that print tables (speed goals live here, not in tests)."""

from __future__ import annotations

import importlib
import sys


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print tables")
    bench.add_argument("what", choices=["augment", "train", "encoder", "memory", "grid", "score"], help="what to benchmark")
    bench.add_argument("--n", type=int, default=None, help="images / steps per measurement")
    bench.add_argument("--model", default="litemedsam", help="model for `bench train|encoder|score`")
    bench.add_argument("--json", action="store_true", help="print rows as JSON")
    bench.add_argument("--profile", default="quick", help="notebook profile for `bench memory`")
    bench.add_argument("--notebooks", nargs="*", default=None,
                       help="`bench memory`: notebook name prefixes, e.g. 02 03 (default: all)")
    bench.add_argument("--no-demo", action="store_true", help="`bench memory`: skip `sas-kit demo`")
    bench.add_argument("--mmap-threshold", type=int, default=None,
                       help="`bench memory`: glibc mmap threshold in bytes for the kernels (default: Binder's, "
                            "binder/start; 0: the kit's default, faster and larger)")
    bench.add_argument("--write-docs", action="store_true",
                       help="`bench memory`: write the peaks into each measured chapter's Memory line and (all measured) "
                            "the README's memory table")
    bench.add_argument("--workers", type=int, default=2, help="`bench grid`: local Dask workers (default 2)")
    bench.set_defaults(func=run)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """A plain aligned table of dict rows (also valid Markdown)."""
    if not rows:
        print("(no rows)")
        return
    keys = list(rows[0])
    cells = [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")


def run(args) -> int:
    module = importlib.import_module(f"sas_kit.cli.bench_{args.what}")
    bench = getattr(module, f"bench_{args.what}")
    kwargs = {}
    if args.n is not None:
        kwargs["n"] = args.n
    if args.what in ("train", "encoder", "score"):
        kwargs["model"] = args.model
    if args.what == "memory":
        kwargs = {"profile": args.profile, "notebooks": args.notebooks, "demo": not args.no_demo,
                  "mmap_threshold": args.mmap_threshold}
    if args.what == "grid":
        kwargs = {"workers": args.workers}
    try:
        rows = bench(**kwargs)
    except ValueError as error:
        print(f"bench {args.what}: {error}", file=sys.stderr)
        return 2
    if args.json:  # printed before any docs are written, so a failed write never loses a measurement
        import json

        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)
    if args.what == "memory" and args.write_docs:
        from sas_kit.cli.bench_memory import write_docs

        try:
            for path in write_docs(rows, args.profile):
                print(f"wrote {path}", file=sys.stderr)
        except ValueError as error:
            print(f"bench memory --write-docs: {error}", file=sys.stderr)
            return 2
    return 0
