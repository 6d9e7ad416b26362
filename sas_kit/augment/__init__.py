"""Stage 2 — augmentation: SAS and the baselines behind one seeded policy interface (``make_policy``)."""

from sas_kit.augment.geometry import Box, as_rng, check_pair, mask_box, resample_pair
from sas_kit.augment.policy import POLICIES, Policy, make_policy
from sas_kit.augment.sas import NOISE_MODELS, SAS, SASParams, inject_noise, roi_mask, simulate_scale

__all__ = ["Box", "as_rng", "check_pair", "mask_box", "resample_pair", "POLICIES", "Policy", "make_policy",
           "NOISE_MODELS", "SAS", "SASParams", "inject_noise", "roi_mask", "simulate_scale"]
