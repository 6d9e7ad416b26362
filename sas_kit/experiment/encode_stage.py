"""The plan's encode stage: every non-empty test image encoded once into the shared embedding store, in shares
spread over the workers, before any run scores (:func:`sas_kit.experiment.executor.run_plan` calls it)."""

from __future__ import annotations

from sas_kit.experiment.protocol import Plan, load_tests


def shares_embeddings(plan: Plan) -> bool:
    """Whether the plan's scoring reads the base encoder's stored test embeddings (any decoder-mode or zero-shot
    task; a full-mode run encodes with its own encoder)."""
    return any(t.spec.mode == "decoder" or not t.spec.trains for t in plan.tasks)


def encode_share(plan: Plan, share: int, shares: int, progress: bool = True, threads: int | None = None) -> int:
    """Encode the plan's non-empty test images ``share``, ``share + shares``, ... into the embedding store that
    every decoder-mode and zero-shot scoring reads (base encoder, the plan's precision); return the encoder calls.
    Images are decoded one at a time (a share of a real plan is hundreds of images). Run side by side, the shares
    encode each test image once, not once by every run that reaches it before another has stored it."""
    import torch
    from tqdm.auto import tqdm

    from sas_kit.data.datasets import to_arrays
    from sas_kit.experiment.embed_cache import EmbeddingCache
    from sas_kit.models import precision, registry

    precision.fast_heap()  # an engine process (not in a memory-bounded one)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        spec = plan.tasks[0].spec
        items = [ex for exs in load_tests(plan.tests, plan.internal).values() for ex in exs][share::shares]
        cache = EmbeddingCache(spec.model, root=True, precision=spec.precision, device=spec.device, memory=False)
        sam = None
        calls = 0
        for ex in tqdm(items, desc=f"encode test images ({share + 1}/{shares})", disable=not progress, leave=False):
            image, mask = to_arrays(ex)
            if not mask.any() or image in cache:
                continue
            if sam is None:  # loaded only when something is left to encode
                sam = registry.load_model(spec.model, device=spec.device)
            cache.get(sam, spec.model, image)
            calls += 1
        return calls
    finally:
        torch.set_num_threads(before)
