"""Getting raw dataset files: local mirror first, then a checksummed pooch download, else a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pooch

from sas_kit import config, files
from sas_kit.data.sources import Source

COMPLETE_MARKER = ".sas-kit-complete"


class DataUnavailable(RuntimeError):
    """Raised when a dataset is neither mirrored, nor placed by hand, nor downloadable."""


def raw_dir(src: Source) -> Path:
    """Where the kit keeps (or a user places) the unpacked upstream files of ``src``."""
    return config.data_root() / "raw" / src.name


def find_local(src: Source, mirror: Path | str | None = None) -> Path | None:
    """The first local copy of ``src``: ``mirror/<folder>`` (or ``$SAS_KIT_MIRROR``), then ``raw_dir``."""
    mirror = Path(mirror) if mirror else config.mirror_dir()
    if mirror is not None:
        for folder in src.mirror_folders or (src.name,):
            candidate = mirror / folder
            if candidate.is_dir() and any(candidate.iterdir()):
                return candidate
    placed = raw_dir(src)
    if placed.is_dir() and any(p.name != COMPLETE_MARKER for p in placed.iterdir()):
        return placed
    return None


def _hash_book() -> Path:
    return config.data_root() / "downloads" / "sha256.json"


def _known_hash(src: Source, fname: str) -> str | None:
    """The registry hash, else one recorded at the first download (trust on first use)."""
    if src.sha256:
        return src.sha256
    book = _hash_book()
    if book.exists():
        return json.loads(book.read_text()).get(fname)
    return None


def _record_hash(fname: str, path: Path) -> None:
    book = _hash_book()
    entries = json.loads(book.read_text()) if book.exists() else {}
    entries[fname] = pooch.file_hash(str(path), alg="sha256")
    files.write_text(book, json.dumps(entries, indent=1, sort_keys=True))


def fetch(url: str, sha256: str | None, folder: Path, fname: str | None = None, retries: int = 2,
          progress: bool = True) -> Path:
    """Download ``url`` into ``folder`` with pooch: hash-checked (``sha256`` hex, or ``"md5:<hex>"``), atomic
    (a temporary file is renamed only after a complete, verified download), retried ``retries`` times."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fname = fname or url.rstrip("/").split("/")[-1]
    known = sha256 if not sha256 or ":" in sha256 else f"sha256:{sha256}"
    fetcher = pooch.create(path=folder, base_url="", registry={fname: known},
                           urls={fname: url}, retry_if_failed=retries)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=60)
    return Path(fetcher.fetch(fname, downloader=downloader))


def how_to_get(src: Source, error: Exception | None = None) -> str:
    """The message a user sees when ``src`` is not available."""
    lines = [f"dataset {src.name!r} ({src.dataset}) is not available locally."]
    if error is not None:
        lines.append(f"download failed: {type(error).__name__}: {error}")
    if src.urls:
        lines.append("tried: " + ", ".join(src.urls))
    if src.manual:
        lines.append("manual step: " + src.manual.replace("DIR", str(config.data_root() / "raw")))
    lines.append(f"licence: {src.licence}. Source: {src.source}")
    lines.append(f"fix: put the unpacked files in {raw_dir(src)}/, or set SAS_KIT_MIRROR to a folder holding "
                 f"one of {list(src.mirror_folders or (src.name,))} (e.g. SAS_KIT_MIRROR=../shared/data).")
    return "\n  ".join(lines)


def obtain(src: Source, mirror: Path | str | None = None, progress: bool = True) -> Path:
    """A folder with the upstream files of ``src``: mirror → placed/extracted copy → download → error."""
    local = find_local(src, mirror)
    if local is not None:
        return local
    if not src.urls or src.manual:
        raise DataUnavailable(how_to_get(src))
    target = raw_dir(src)
    downloads = config.data_root() / "downloads"
    try:
        for url in src.urls:
            fname = url.rstrip("/").split("/")[-1]
            path = fetch(url, _known_hash(src, fname), downloads, fname, progress=progress)
            if _known_hash(src, fname) is None:
                _record_hash(fname, path)
            _unpack(path, target)
    except Exception as error:  # network, hash or archive errors all end the same way for a user
        raise DataUnavailable(how_to_get(src, error)) from error
    (target / COMPLETE_MARKER).write_text("ok\n")
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Unzip/untar ``archive`` into ``target`` (a plain file is copied in); partial output is removed."""
    import shutil
    import tempfile

    target.mkdir(parents=True, exist_ok=True)
    if not (archive.suffix in {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz"}):
        shutil.copy2(archive, target / archive.name)
        return
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        shutil.unpack_archive(str(archive), tmp)
        for item in Path(tmp).iterdir():
            dest = target / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            shutil.move(str(item), dest)
