"""``sas-kit augment``: write augmented (image, mask, record) samples of a dataset to a folder."""

from __future__ import annotations

import sys

from sas_kit.augment import POLICIES
from sas_kit.cli import param_pair


def register(sub) -> None:
    p = sub.add_parser("augment", help="write augmented samples (<id>_image.png, <id>_mask.png, <id>.json)")
    p.add_argument("--data", default="phantom", help="dataset name (see `sas-kit data list`)")
    p.add_argument("--policy", choices=POLICIES, default="sas", help="augmentation policy")
    p.add_argument("--n", type=int, default=16, help="number of samples to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample i uses the stream (seed, i))")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="dataset split")
    p.add_argument("--limit", type=int, default=None, help="source images to cycle over (default: N)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="policy parameter, repeatable (e.g. --param p_noise=1 --param noise_models='[\"gamma\"]')")
    p.set_defaults(func=run)


def run(args) -> int:
    from sas_kit.augment.samples import augment_to_dir

    try:
        params = dict(param_pair(t) for t in args.param)
        records = augment_to_dir(args.data, args.policy, args.n, args.seed, args.out, split=args.split,
                                 limit=args.limit, **params)
    except (ValueError, TypeError, KeyError) as error:
        print(f"augment: {error}", file=sys.stderr)
        return 2
    before = sum(r["source_mask_area"] for r in records)
    after = sum(r["mask_area"] for r in records)
    ratio = after / before if before else float("nan")
    print(f"wrote {len(records)} samples ({args.policy}) of {args.data}/{args.split} to {args.out}; "
          f"total mask area after/before = {ratio:.3f}")
    return 0
