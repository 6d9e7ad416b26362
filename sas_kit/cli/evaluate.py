"""``sas-kit evaluate``: mean Dice with a bootstrap 95% CI per prompt for one model on one dataset split."""

from __future__ import annotations

import argparse
import json
import sys
import time

from sas_kit.models.prompts import PROMPTS


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice (mean, bootstrap 95%% CI) of a model per prompt on a dataset split")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="litemedsam", help="model name (litemedsam, mobilesam, sam_vit_b, ...)")
    p.add_argument("--checkpoint", default=None, help="fine-tuned state_dict from `sas-kit train` to overlay")
    p.add_argument("--data", default="phantom", help="dataset name (see `sas-kit data list`)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="dataset split, or all (every split: for data never trained on)")
    p.add_argument("--prompt", action="append", choices=PROMPTS, default=None,
                   help="prompt type, repeatable (default: box)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images of the split")
    p.add_argument("--seed", type=int, default=0, help="seed for box jitter and the bootstrap")
    p.add_argument("--jitter", type=float, default=0.0, help="box jitter as a fraction of box size (default 0)")
    p.add_argument("--whole", action="store_true",
                   help="one prompt around the whole target instead of one per connected part (docs/notes.md)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="encoder/decoder precision; use the one the checkpoint was trained with (default auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda → mps → cpu)")
    p.add_argument("--csv", default=None, help="also write the per-image rows to this CSV file")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt (JSON Lines)")


def run(args) -> int:
    from sas_kit import config
    from sas_kit.data import datasets
    from sas_kit.experiment.embed_cache import EmbeddingCache
    from sas_kit.experiment.evaluate import evaluate, summarise
    from sas_kit.models import precision as policy
    from sas_kit.models import registry

    prompts = args.prompt or ["box"]
    start = time.perf_counter()
    try:
        device = config.device(args.device)
        sam = registry.load_model(args.model, checkpoint=args.checkpoint, device=device)
        trained = checkpoint_spec(args.checkpoint)
        precision = policy.resolve(None if args.precision == "auto" else args.precision, device)
        if args.precision == "auto" and trained.get("precision"):
            precision = trained["precision"]  # score in the precision the checkpoint was trained in
        splits = datasets.SPLITS if args.split == "all" else (args.split,)
        data = [ex for split in splits for ex in datasets.load(args.data, split=split)]
        data = data[:args.limit] if args.limit is not None else data
        # cached embeddings are the base encoder's: not for a checkpoint whose encoder was fine-tuned (full mode)
        cache = (None if trained.get("mode") == "full"
                 else EmbeddingCache(args.model, root=True, device=device, precision=precision))
        df = evaluate(sam, args.model, data, prompts, seed=args.seed, per_component=not args.whole,
                      jitter=args.jitter, progress=not args.json, embeddings=cache, precision=precision)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    if args.csv:
        df.to_csv(args.csv, index=False)
    summary = summarise(df, seed=args.seed, by=("prompt",)).set_index("prompt")
    for prompt in prompts:
        row = summary.loc[prompt] if prompt in summary.index else None
        result = {"model": args.model, "data": args.data, "split": args.split, "prompt": prompt,
                  "n": int(row["n"]) if row is not None else 0, "skipped_empty": df.attrs["skipped_empty"],
                  "dice_mean": None if row is None else round(float(row["dice_mean"]), 4),
                  "ci_low": None if row is None else round(float(row["ci_low"]), 4),
                  "ci_high": None if row is None else round(float(row["ci_high"]), 4),
                  "iou_mean": None if row is None else round(float(row["iou_mean"]), 4),
                  "per_component": not args.whole, "checkpoint": args.checkpoint, "precision": precision,
                  "wall_s": round(wall, 1)}
        if args.json:
            print(json.dumps(result))
        elif row is None:
            print(f"{args.model} {args.data}/{args.split} {prompt}: no non-empty images")
        else:
            print(f"{args.model} {args.data}/{args.split} {prompt:>6}: Dice {result['dice_mean']:.3f} "
                  f"[95% CI {result['ci_low']:.3f}, {result['ci_high']:.3f}] IoU {result['iou_mean']:.3f} "
                  f"n={result['n']} (skipped empty: {result['skipped_empty']}; "
                  f"{'per part' if not args.whole else 'whole target'})")
    return 0


def checkpoint_spec(path: str | None) -> dict:
    """The run spec stored in a checkpoint of ``sas-kit train`` / ``reproduce`` ({} without one), read with
    weights_only=True; a checkpoint holding encoder weights counts as full mode."""
    if path is None:
        return {}
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # load_model has read it already; say which file if this read fails
        raise ValueError(f"could not read checkpoint {path}: {err}") from err
    spec = dict(state.get("spec", {})) if isinstance(state, dict) else {}
    weights = state.get("model", state) if isinstance(state, dict) else {}
    if any(str(k).startswith("image_encoder.") for k in weights):
        spec["mode"] = "full"
    return spec


def main(argv: list[str] | None = None) -> int:
    """Run this command alone: ``python -m sas_kit.cli.evaluate --model ...``."""
    parser = argparse.ArgumentParser(prog="sas-kit evaluate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
