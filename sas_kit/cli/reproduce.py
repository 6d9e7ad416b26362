"""``sas-kit reproduce`` and ``sas-kit sweep``: the paper's protocol and the SAS parameter sweep."""

from __future__ import annotations

import sys
import time


def run_options(parser, out: str) -> None:
    """The options every command that makes a plan shares: profile, model, output folder, data."""
    parser.add_argument("--profile", choices=["quick", "cpu", "gpu"], default="quick")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--out", default=out)
    parser.add_argument("--data", choices=["auto", "real", "phantom"], default="auto",
                        help="real datasets (needs SAS_KIT_MIRROR or prepared copies) or the phantom; auto picks")


def register(sub) -> None:
    rep = sub.add_parser("reproduce", help="run the SAS protocol: arms x datasets x prompts x seeds")
    run_options(rep, "runs/reproduce")
    rep.add_argument("--arms", default="zero_shot,none,sas",
                     help="comma-separated arms: zero_shot, none, classic, stsnet, genseg, sas, sas_size (default: the "
                          "headline run zero_shot,none,sas; controls: none,classic,stsnet,sas; sas_size: exploratory, "
                          "docs/sas_parameters.md); zero_shot is always added")
    rep.add_argument("--sas-params", default=None, help="JSON written by `sas-kit sweep` (default: kit defaults)")
    rep.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                     help="encoder/decoder precision (auto: bf16 where the device computes it natively)")
    rep.add_argument("--workers", type=int, default=0,
                     help="spread the independent runs over N worker processes of a local Dask cluster that the kit "
                          "starts and stops (default 0: one after another in this process)")
    rep.add_argument("--cluster", default=None,
                     help="run on an existing Dask scheduler (tcp://HOST:PORT) or on SLURM jobs (slurm; --workers "
                          "jobs, dask-jobqueue's jobqueue.slurm config)")
    rep.add_argument("--threads", type=int, default=None,
                     help="torch threads per run, serially and on workers (default: torch's choice, so --workers gives "
                          "the serial tables); float results depend on it, not on how the runs are spread")
    rep.add_argument("--readme", help="also write the endpoints into this README's results section")
    rep.add_argument("--readme-marker", default="results", help="README section marker (results, controls, ...)")
    rep.set_defaults(func=run)
    sw = sub.add_parser("sweep", help="choose SAS parameters on the internal val split (writes sas_params.json)")
    sw.add_argument("--profile", choices=["quick", "cpu", "gpu"], default="cpu")
    sw.add_argument("--model", default="litemedsam")
    sw.add_argument("--out", default="runs/sweep")
    sw.add_argument("--epochs", type=int, default=None, help="training epochs per grid point (default: the profile's)")
    sw.add_argument("--val-limit", type=int, default=None, help="score the first N val images (default: all)")
    sw.add_argument("--readme", help="also write the sweep table into this README's sweep section")
    sw.set_defaults(func=run_sweep)


def _arms(text: str) -> tuple[str, ...]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    return tuple(dict.fromkeys(["zero_shot", *arms]))


def run(args) -> int:
    from sas_kit.data.download import DataUnavailable
    from sas_kit.report.reproduce import run_protocol

    start = time.perf_counter()
    try:
        summary = run_protocol(profile=args.profile, model=args.model, out=args.out, datasets_mode=args.data,
                               arms=_arms(args.arms), sas_params=args.sas_params,
                               precision=None if args.precision == "auto" else args.precision,
                               workers=args.workers, cluster=args.cluster, threads=args.threads)
    except (ValueError, KeyError, FileNotFoundError, DataUnavailable) as error:
        print(f"reproduce: {error}", file=sys.stderr)
        return 2
    print(summary.read_text())
    if args.readme:
        from sas_kit.report.readme import block_endpoints, update_readme

        command = (f"sas-kit reproduce --profile {args.profile} --model {args.model} --arms {args.arms}"
                   + (f" --sas-params {args.sas_params}" if args.sas_params else ""))
        update_readme(args.readme, summary.parent, command, args.readme_marker, endpoints=block_endpoints(_arms(args.arms)))
        print(f"updated {args.readme}")
    print(f"wrote {summary.parent}/ (plan.json, results.csv, gains.csv, sizebins.csv, summary.md, figures) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


def run_sweep(args) -> int:
    from sas_kit.experiment.sweep import run_sweep as sweep

    start = time.perf_counter()
    try:
        path = sweep(profile=args.profile, model=args.model, out=args.out, epochs=args.epochs, val_limit=args.val_limit)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    print(path.with_name("sweep.csv").read_text())
    if args.readme:
        from sas_kit.report.readme import replace_block, sweep_block

        command = f"sas-kit sweep --profile {args.profile} --model {args.model}" + (
            f" --epochs {args.epochs}" if args.epochs else "")
        replace_block(args.readme, "sweep", sweep_block(path, command))
        print(f"updated {args.readme}")
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s; use it with `sas-kit reproduce --sas-params {path}`")
    return 0
