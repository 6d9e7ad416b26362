"""``sas-kit reproduce``: run the paper's protocol and write the report."""

from __future__ import annotations

import time


def register(sub) -> None:
    rep = sub.add_parser("reproduce", help="run the SAS protocol: arms x datasets x prompts x seeds")
    rep.add_argument("--profile", choices=["quick", "cpu", "gpu"], default="quick")
    rep.add_argument("--model", default="litemedsam")
    rep.add_argument("--out", default="runs/reproduce")
    rep.add_argument("--data", choices=["auto", "real", "phantom"], default="auto",
                     help="real datasets (needs SAS_KIT_MIRROR or prepared copies) or the phantom; auto picks")
    rep.add_argument("--sweep", choices=["auto", "on", "off"], default="auto",
                     help="SAS parameter sweep on the internal val split (auto: off for quick)")
    rep.add_argument("--readme", help="also write the gains table into this README's results section")
    rep.set_defaults(func=run)


def run(args) -> int:
    from sas_kit.reproduce import run_protocol

    start = time.perf_counter()
    sweep = None if args.sweep == "auto" else args.sweep == "on"
    summary = run_protocol(profile=args.profile, model=args.model, out=args.out, datasets_mode=args.data, sweep=sweep)
    print(summary.read_text())
    if args.readme:
        from sas_kit.report import update_readme

        command = f"sas-kit reproduce --profile {args.profile} --model {args.model} --data {args.data}"
        update_readme(args.readme, summary.parent, command)
        print(f"updated {args.readme}")
    print(f"wrote {summary.parent}/ (results.csv, gains.csv, sizebins.csv, summary.md, figures) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0
