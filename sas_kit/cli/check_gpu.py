"""``sas-kit check-gpu``: the gpu profile's path on a small subset, on the GPU(s) of this machine, with a table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check-gpu", help="run the gpu profile's path on a small subset on this machine's GPU(s)")
    p.add_argument("--limit", type=int, default=8, help="training images per run (default 8)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def _train(args: list[str], env: dict, launcher: list[str]) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "sas_kit", "train", *args], env=env, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - t0, (done.stdout + done.stderr)[-2000:]


def checks(limit: int, out: Path) -> list[dict]:
    """Full-mode fine-tuning (encoder trained, the gpu profile's mode) of LiteMedSAM and, when its weights are in
    ``SAS_KIT_WEIGHTS_DIR``, MobileSAM, on the phantom (``limit`` images, 1 epoch, the device's native precision),
    each checkpoint scored by ``sas-kit evaluate``; then 2-GPU DDP under torchrun when two GPUs are present."""
    import torch

    from sas_kit import config
    from sas_kit.models import checkpoints, registry

    env = {k: v for k, v in os.environ.items() if k != "SAS_KIT_MIRROR"}
    python = [sys.executable]
    models = ["litemedsam"]
    try:
        if checkpoints.checkpoint_path(registry.get_spec("mobilesam"), download=False):
            models.append("mobilesam")
    except (TypeError, ValueError, FileNotFoundError):  # not offline: the check names it instead of downloading
        pass
    rows = []
    gpus = torch.cuda.device_count()
    plans = [(m, 1, python) for m in models]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if gpus >= 2 and torchrun:
        plans.append(("litemedsam", 2, [torchrun, "--standalone", "--nproc-per-node", "2"]))
    for model, procs, launcher in plans:
        folder = out / f"{model}-{procs}gpu"
        args = ["--model", model, "--data", "phantom", "--mode", "full", "--epochs", "1", "--limit", str(limit),
                "--views", "2", "--batch-size", "4", "--device", "cuda", "--out", str(folder)]
        rc, seconds, tail = _train(args, env, python if procs == 1 else launcher)
        row = {"model": model, "processes": procs, "train_rc": rc, "train_s": round(seconds, 1)}
        if rc == 0:
            ev = subprocess.run([sys.executable, "-m", "sas_kit", "evaluate", "--model", model, "--checkpoint",
                                 str(folder / "best.pt"), "--data", "phantom", "--limit", "8", "--json",
                                 "--device", "cuda"], env=env, capture_output=True, text=True)
            score = json.loads(ev.stdout.strip().splitlines()[0]) if ev.returncode == 0 else {}
            row.update(box_dice=score.get("dice_mean"), precision=score.get("precision"), evaluate_rc=ev.returncode)
        else:
            row["error"] = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        rows.append(row)
    rows.append({"model": "(device)", "processes": gpus, "train_rc": None, "train_s": None,
                 "name": torch.cuda.get_device_name(0), "torch": torch.__version__, "device": config.device()})
    return rows


def run(args) -> int:
    import torch

    from sas_kit.cli.bench import print_table

    if not torch.cuda.is_available():
        print("check-gpu: no CUDA device here (torch.cuda.is_available() is False); nothing was measured. "
              "Run it on a machine with a GPU.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sas-kit-check-gpu-") as tmp:
        rows = checks(args.limit, Path(args.out) if args.out else Path(tmp))
    print(json.dumps(rows, indent=1) if args.json else "")
    if not args.json:
        print_table(rows)
    return 0 if all(r.get("train_rc") in (0, None) and r.get("evaluate_rc", 0) == 0 for r in rows) else 1
