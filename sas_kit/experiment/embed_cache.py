"""Pre-drawn augmented views and an image-embedding cache keyed by view pixels (encode each view once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sas_kit import config, files
from sas_kit.augment import check_pair, make_policy
from sas_kit.digest import pixel_key
from sas_kit.models import registry

Policy = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


@dataclass
class View:
    """One training view: view 0 of a sample is its original image, views 1..K-1 come from the policy."""

    image: np.ndarray
    mask: np.ndarray
    sample: int
    view: int
    record: dict = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = pixel_key(self.image)


def get_policy(policy: str | Policy, seed: int | None = None, params: dict | None = None) -> Policy:
    """A policy callable: a callable passes through, a name goes to ``sas_kit.augment.make_policy``."""
    if callable(policy):
        return policy
    return make_policy(policy, seed=seed, **(params or {}))


def build_views(samples: Sequence[tuple], policy: str | Policy, views: int, seed: int = 0,
                params: dict | None = None, tries: int = 10) -> list[View]:
    """``views`` views per (image, mask) sample: view 0 the original, views 1..K-1 drawn by ``policy``.

    View j of sample i uses its own stream ``SeedSequence([seed, i, j])``, so arms that share a seed draw
    the same views (and hit the same cached embeddings) whatever the other samples are. A policy other
    than ``none`` that returns a view equal to one already drawn for the sample (e.g. SAS drew "not
    applied") is redrawn from ``SeedSequence([seed, i, j, attempt])`` up to ``tries`` times, so every arm
    sees the same number of distinct views (docs/notes.md); the record says ``attempts``, and
    ``duplicate: True`` if no distinct view came.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1 (view 0 is the original image), got {views}")
    fn = get_policy(policy, seed=seed, params=params)
    distinct = getattr(fn, "name", policy) != "none"
    out = []
    for i, sample in enumerate(samples):
        image, mask = check_pair(sample[0], sample[1], f"sample {i}")
        out.append(View(image, mask, i, 0, {"policy": "original"}))
        keys = {out[-1].key}
        for j in range(1, views):
            for attempt in range(tries if distinct else 1):
                entropy = [seed, i, j] + ([attempt] if attempt else [])
                v_image, v_mask, record = fn(image, mask, np.random.default_rng(np.random.SeedSequence(entropy)))
                v_image, v_mask = check_pair(v_image, v_mask, f"sample {i} view {j}")
                view = View(v_image, v_mask, i, j, dict(record))
                if view.key not in keys:
                    break
            if distinct:
                view.record.update(attempts=attempt + 1, duplicate=view.key in keys)
            keys.add(view.key)
            out.append(view)
    return out


def _plain_meta(meta: dict) -> dict:
    """Meta as Python primitives (tuples of ints/floats), safe for torch.load(weights_only=True)."""
    def plain(v):
        if isinstance(v, (tuple, list, np.ndarray)):
            return tuple(plain(x) for x in v)
        if isinstance(v, (np.integer, int)):
            return int(v)
        if isinstance(v, (np.floating, float)):
            return float(v)
        return v
    return {k: plain(v) for k, v in meta.items()}


class EmbeddingCache:
    """Image-encoder outputs of the BASE weights of one model, in memory and (optionally) on disk.

    An entry is keyed by everything that makes an embedding: the model and its base checkpoint hash, the
    precision (:mod:`sas_kit.models.precision`), the preprocessing version (:data:`sas_kit.models.preprocess.VERSION`) — these
    name the folder ``<root>/<model>/<precision>-prep<V>-<hash8>/`` — and the image pixels (:func:`pixel_key`,
    the file name). So the same pixels are encoded once for every arm, seed, dataset (USGRA nerve and vessel
    share images), notebook and run, and nothing encoded under other settings is ever returned. ``root=True``
    uses ``config.data_root()/cache/embeddings``. ``encoder_calls`` counts real encoder runs. Do not use it with
    an encoder that was fine-tuned (mode ``full``): its embeddings differ from the cached ones.
    """

    def __init__(self, model: str, root: str | Path | bool | None = None, memory: bool = True,
                 precision: str | None = "fp32", device: str | None = None):
        from sas_kit.models import precision as policy
        from sas_kit.models import preprocess

        self.model = model
        self.precision = policy.resolve(precision, config.device(device))
        spec = registry.get_spec(model)
        digest = (spec.sha256 or spec.md5 or "nohash")[:8]
        if root is True:
            root = config.data_root() / "cache" / "embeddings"
        self.root = Path(root) / model / f"{self.precision}-prep{preprocess.VERSION}-{digest}" if root else None
        self.memory = memory
        self._store: dict[str, tuple[torch.Tensor, dict]] = {}
        self.encoder_calls = 0
        self.hits = 0
        self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, image) -> bool:
        key = image if isinstance(image, str) else pixel_key(image)
        return key in self._store or bool(self.root and (self.root / f"{key}.pt").exists())

    def _load(self, key: str) -> tuple[torch.Tensor, dict] | None:
        """The entry ``<root>/<key>.pt`` or None. Entries are written whole by one rename
        (:func:`sas_kit.files.torch_save`), so concurrent writers of a key never leave a corrupt one: a file
        that does not load is genuinely damaged (or foreign) and raises. Stray ``*.tmp`` files of killed
        writers are never read (they are not ``<key>.pt``)."""
        path = self.root / f"{key}.pt" if self.root else None
        if path is None:
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if obj.get("model") != self.model or obj.get("precision", self.precision) != self.precision:
                raise ValueError(f"made for {obj.get('model')}/{obj.get('precision')}")
            return obj["embedding"], obj["meta"]
        except FileNotFoundError:  # not written (yet): found by opening it, not by a racy exists()
            return None
        except Exception as err:  # a truncated or foreign file: say so and re-encode
            raise ValueError(f"embedding cache file {path} is unreadable ({err}); delete it to re-encode") from err

    def _save(self, key: str, embedding: torch.Tensor, meta: dict) -> None:
        """Write ``<root>/<key>.pt`` atomically (safe with many threads and processes: the last rename wins and
        every writer of a key writes the same embedding; not fsynced, to keep fast GPU fills fast). The first
        save of a process in a folder also removes ``*.tmp`` files that killed writers left there over an
        hour ago."""
        files.sweep_temps(self.root)
        files.torch_save(self.root / f"{key}.pt",
                         {"model": self.model, "precision": self.precision, "embedding": embedding, "meta": meta})

    def get(self, sam, spec, image: np.ndarray, key: str | None = None,
            device: str | torch.device | None = None) -> tuple[torch.Tensor, dict]:
        """(embedding 1x256x64x64, meta) of ``image``: from memory, else disk, else one encoder call."""
        key = key or pixel_key(image)
        hit = self._store.get(key)
        if hit is not None:
            self.hits += 1
        else:
            hit = self._load(key)
            if hit is not None:
                self.disk_hits += 1
            else:
                embedding, meta = registry.encode(sam, spec, image, precision=self.precision)
                self.encoder_calls += 1
                hit = (embedding.detach().float().cpu(), _plain_meta(meta))
                if self.root:
                    self._save(key, *hit)
            if self.memory:
                self._store[key] = hit
        embedding, meta = hit
        return (embedding.to(device) if device is not None else embedding), meta

    def fill(self, sam, spec, items: Iterable, desc: str = "encode", progress: bool = True) -> int:
        """Encode every image (or :class:`View`) not cached yet; return how many encoder calls it took."""
        before = self.encoder_calls
        seen = set()
        todo = []
        for item in items:
            image, key = (item.image, item.key) if isinstance(item, View) else (item, pixel_key(item))
            if key not in seen:
                seen.add(key)
                todo.append((image, key))
        for image, key in tqdm(todo, desc=desc, disable=not progress, leave=False):
            self.get(sam, spec, image, key=key)
        return self.encoder_calls - before
