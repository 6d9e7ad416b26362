"""Stage 3 — models: the SAM-family registry, checkpoints, preprocessing, precision, prompts and prompted segmentation."""
