"""Content digests of images and (image, mask) samples: the keys of every cache (embeddings, checkpoints, generators)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def pixel_key(image: np.ndarray) -> str:
    """A hex digest of an image's shape, dtype and pixels: the same view gives the same key in every arm."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.shape}|{image.dtype.str}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def data_key(*sample_lists: Sequence[tuple]) -> str:
    """A digest of the pixels of every (image, mask) sample: a checkpoint records what it was trained on."""
    digest = hashlib.blake2b(digest_size=16)
    for samples in sample_lists:
        digest.update(b"|")
        for image, mask in samples:
            digest.update(pixel_key(np.asarray(image)).encode() + pixel_key(np.asarray(mask, bool)).encode())
    return digest.hexdigest()
