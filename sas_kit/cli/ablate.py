"""``sas-kit ablate``: the factorial sensitivity study of the SAS − none gain (docs/protocol.md, amendment v3)."""

from __future__ import annotations

import sys
import time

from sas_kit.cli.reproduce import run_options


def register(sub) -> None:
    ab = sub.add_parser("ablate", help="which setting drives the SAS gain: a 2^(4-1) (or 2^4) factorial study")
    run_options(ab, "runs/ablate")
    ab.add_argument("--full", action="store_true", help="the full 2^4 design (16 cells) instead of the half fraction")
    ab.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the profile's first three)")
    ab.add_argument("--workers", type=int, default=0, help="local Dask worker processes (default 0: serial)")
    ab.add_argument("--cluster", default=None, help="a Dask scheduler address or slurm (as for reproduce)")
    ab.add_argument("--threads", type=int, default=None, help="torch threads per run (as for reproduce)")
    ab.add_argument("--readme", help="also write the effects into this README's ablation section")
    ab.set_defaults(func=run)


def run(args) -> int:
    from sas_kit.data.download import DataUnavailable
    from sas_kit.experiment.ablate import ablation, run_ablation
    from sas_kit.report.ablation import effects_block

    start = time.perf_counter()
    try:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
        study = ablation(args.profile, args.model, args.data, seeds=seeds, full=args.full)
        table = run_ablation(study, args.out, workers=args.workers, cluster=args.cluster, threads=args.threads)
    except (ValueError, KeyError, FileNotFoundError, DataUnavailable) as error:
        print(f"ablate: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    command = f"sas-kit ablate --profile {args.profile}" + (" --full" if args.full else "")
    block = effects_block(args.out, command)
    print(block)
    if args.readme:
        from sas_kit.report.readme import replace_block

        replace_block(args.readme, "ablation", block)
        print(f"updated {args.readme}")
    print(f"wrote {args.out}/ (ablation.json, effects.csv, main_effects.png, runs/) in {seconds:.0f} s; "
          f"{int((table.kind == 'main effect').sum()) if not table.empty else 0} main-effect rows")
    return 0
