"""Stage 1 — data: the dataset registry, downloads, one adapter per published layout, cached splits, the phantom."""
