"""``sas-kit train``: fine-tune a model on a dataset and print per-epoch loss, val Dice and checkpoints."""

from __future__ import annotations

import sys

from sas_kit.cli import param_pair

# run.TRAINED_ARMS, not imported: it pulls torch into --help
POLICIES = ("none", "classic", "stsnet", "sas", "genseg", "sas_size")


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (decoder-only or full) with mixed box/click prompts")
    p.add_argument("--model", default="litemedsam", help="model name (see sas_kit.models.registry.MODELS)")
    p.add_argument("--data", default="phantom", help="dataset name (train split to train, val split to select)")
    p.add_argument("--policy", choices=POLICIES, default="none", help="augmentation policy for views 1..K-1")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter, repeatable")
    p.add_argument("--mode", choices=["decoder", "full"], default="decoder",
                   help="decoder: image encoder frozen, embeddings cached; full: encoder trained too (GPU)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", required=True, help="output folder for last.pt / best.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", type=int, default=3, help="views per training image (view 0 = original)")
    p.add_argument("--limit", type=int, default=None, help="first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="first N validation images")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 5e-5 decoder, 1e-5 full)")
    p.add_argument("--batch-size", type=int, default=4, help="images per optimiser step (gradient accumulation)")
    p.add_argument("--click-fraction", type=float, default=0.5, help="share of steps prompted by clicks")
    p.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="encoder/decoder precision (auto: bf16 where the device computes it natively)")
    p.add_argument("--no-disk-cache", action="store_true", help="keep image embeddings in memory only")
    p.set_defaults(func=run)


def run(args) -> int:
    from sas_kit.experiment.run import RunSpec
    from sas_kit.experiment.train import train

    try:
        spec = RunSpec.build(model=args.model, data=args.data, arm=args.policy, seed=args.seed,
                             params=dict(param_pair(t) for t in args.param), mode=args.mode, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch_size, views=args.views, train_limit=args.limit,
                             val_limit=args.val_limit, click_fraction=args.click_fraction, device=args.device,
                             precision=None if args.precision == "auto" else args.precision)
        result = train(spec, args.out, resume=args.resume, disk_cache=not args.no_disk_cache)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    from sas_kit.experiment import distributed

    ctx = distributed.from_env(spec.device) if spec.mode == "full" else distributed.Context()
    distributed.shutdown(ctx)
    if not ctx.main:  # under torchrun: rank 0 reports
        return 0
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    print(f"run {spec.name} ({spec.mode} mode, precision {spec.precision}, {ctx.world} process(es))")
    print(f"epoch 0: val Dice (box + 2 clicks) {result.val_dice_initial:.4f}  (starting weights)")
    done = len(result.train_loss)
    for e, (loss, dice) in enumerate(zip(result.train_loss, result.val_dice), start=1):
        mark = "  *best" if e == result.best_epoch else ""
        note = "" if e > result.resumed_from else "  (earlier run)"
        print(f"epoch {e}: train loss {loss:.4f}  val Dice (box + 2 clicks) {dice:.4f}{mark}{note}")
    print(f"{done} epochs, {result.steps} steps, {result.encoder_calls} encoder calls, {result.seconds:.1f} s")
    print(f"checkpoint: {result.last}\nbest (epoch {result.best_epoch}): {result.best}")
    print(f"use it with: sas-kit evaluate --model {spec.model} --checkpoint {result.best}")
    return 0
