"""Throughput of the augmentation policies on one CPU core (images per second)."""

from __future__ import annotations

import time

import numpy as np

from sas_kit.augment import POLICIES, make_policy
from sas_kit.data.phantom import PhantomSpec, make_phantom

# SAS with both steps on every call: the worst case of the default parameters
SAS_ALWAYS = ("sas (both steps)", "sas", {"p_scale": 1.0, "p_noise": 1.0})


def bench_augment(sizes: tuple[int, ...] = (256, 1024), n: int = 200, policies: tuple = (*POLICIES, SAS_ALWAYS),
                  seed: int = 0, n_images: int = 8, rgb: bool = False) -> list[dict]:
    """Rows ``{policy, size, n, seconds, images_per_s}``: ``n`` calls per policy and size on ``n_images``
    phantom images (cycled), after two warm-up calls. ``policies`` holds names or (label, name, params).
    torch is limited to one thread; numpy, scipy.ndimage and Pillow run these operations single-threaded
    anyway, so the numbers are per core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size in sizes:
            pairs = [(img, m) for img, m, _ in make_phantom(n_images, seed=seed, spec=PhantomSpec(size=size))]
            if rgb:
                pairs = [(np.repeat(img[..., None], 3, axis=2), m) for img, m in pairs]
            for entry in policies:
                label, name, params = (entry, entry, {}) if isinstance(entry, str) else entry
                policy = make_policy(name, seed=seed, **params)
                for img, m in pairs[:2]:
                    policy(img, m)
                start = time.perf_counter()
                for i in range(n):
                    img, m = pairs[i % len(pairs)]
                    policy(img, m)
                seconds = time.perf_counter() - start
                rows.append({"policy": label, "size": size, "n": n, "seconds": round(seconds, 4),
                             "images_per_s": round(n / seconds, 1)})
    finally:
        torch.set_num_threads(threads)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| policy | size | images/s |", "|---|---:|---:|"]
    lines += [f"| {r['policy']} | {r['size']}² | {r['images_per_s']:.1f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_rows(bench_augment()))
