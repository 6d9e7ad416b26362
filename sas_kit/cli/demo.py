"""``sas-kit demo``: the kit's main job on the embedded default data (no network, no mirror needed)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    demo = sub.add_parser("demo", help="prepare the phantom data and run the quick reproduction")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.set_defaults(func=run)


def run(args) -> int:
    from sas_kit.data import datasets
    from sas_kit.report import plots

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepared = datasets.prepare("phantom")
    print(f"phantom: {prepared.counts()} ({'cache' if prepared.cached else 'generated'})")
    test = prepared.splits["test"]
    samples = []
    for example in test.select(range(8)):
        image, mask = datasets.to_arrays(example)
        samples.append((image, mask, f"{example['id']} ({100 * example['area_fraction']:.1f}%)"))
    sheet = out / "phantom.png"
    plots.contact_sheet(samples).savefig(sheet, dpi=100)
    print(f"wrote {sheet}")
    from sas_kit.report.reproduce import run_protocol

    report = run_protocol(profile="quick", model="litemedsam", out=out / "reproduce", datasets_mode="phantom")
    print(f"quick reproduction report: {report}")
    return 0
