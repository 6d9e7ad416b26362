"""Atomic writes: a temporary file beside the target, then one rename, so no reader ever sees half a file.

What is guaranteed (for :func:`atomic_path`, :func:`write_text`, :func:`torch_save`):

* A reader of ``path`` sees either no file (or the previous one) or one whole file written by one writer,
  never a mix or a prefix: the bytes go to a temporary file in the same folder, which is renamed onto
  ``path`` with :func:`os.replace` (atomic on POSIX and on Windows/NTFS within one volume).
* Writers never share a temporary: its name holds the process id, the thread id and a random part, so
  any number of threads and processes may write the same ``path`` at once. The last rename wins; for the
  content-keyed caches (embeddings, GenSeg generators) every writer of one key writes the same content.
* A writer killed mid-write (SIGKILL, a crash, a lost worker) leaves at most a stray
  ``<name>.<pid>-<thread>-<random>.tmp`` beside the target, never a partial ``path``; readers look only at
  ``path``, so a stray temporary is never read. :func:`sweep_temps` removes old ones.
* With ``durable=True`` the data (and, on POSIX, the rename) are also fsynced, so the file survives a power
  loss or OS crash whole; without it, only a process crash is covered (the OS page cache survives that).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _tmp_name(path: Path) -> Path:
    """A temporary beside ``path``, unique to this writer (process, thread and a random part)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX only; Windows cannot open a folder for fsync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder: the rename is still atomic
        pass
    finally:
        os.close(fd)


def _replace(src: Path, dst: Path) -> None:
    """``os.replace``; on Windows retry briefly while a reader or another writer holds ``dst`` open."""
    for attempt in range(50 if os.name == "nt" else 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == 49:
                raise
            time.sleep(0.02)


@contextmanager
def atomic_path(path: str | Path, durable: bool = False):
    """Yield a temporary path next to ``path`` (unique to this writer); on success rename it onto ``path``
    (fsyncing first if ``durable``), on error remove it. See the module docstring for the guarantees."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        _replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """``Path.write_text``, atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)


def torch_save(path: str | Path, obj, durable: bool = False) -> None:
    """``torch.save``, atomically (load it back with ``torch.load(path, weights_only=True)``)."""
    import torch

    with atomic_path(path, durable=durable) as tmp:
        torch.save(obj, tmp)


_swept: set[str] = set()
_swept_lock = threading.Lock()


def sweep_temps(folder: str | Path, older_than: float = 3600.0, once: bool = True) -> int:
    """Remove stray ``*.tmp`` files (left by killed writers) older than ``older_than`` seconds in ``folder``
    (not below it); return how many went. With ``once`` a folder is swept only on its first call in this
    process, so callers may call it before every write. A live writer's temporary is seconds old, never
    an hour, so it is left alone; files vanishing under us (another sweeper) are fine."""
    folder = Path(folder)
    if once:
        with _swept_lock:
            if str(folder) in _swept:
                return 0
            _swept.add(str(folder))
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = os.scandir(folder)
    except OSError:  # no folder yet: nothing to sweep
        return 0
    with entries:
        for entry in entries:
            if not entry.name.endswith(TMP_SUFFIX):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
    return removed
