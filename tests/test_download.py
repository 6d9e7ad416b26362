"""Downloads against a local HTTP server on 127.0.0.1: hashes, atomicity, retries, clear errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from sas_kit.data import datasets, download, sources

PAYLOAD = b"ultrasound" * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    drops: dict[str, int] = {}  # path -> how many more requests to cut short
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.drops.get(self.path, 0) > 0:
            self.drops[self.path] -= 1
            self.wfile.write(body[: len(body) // 3])  # then the connection drops mid-body
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files, _Handler.drops, _Handler.hits = {}, {}, {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield _Handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_good_download_is_verified(server, tmp_path):
    handler, url = server
    handler.files["/a.bin"] = PAYLOAD
    path = download.fetch(f"{url}/a.bin", _sha(PAYLOAD), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    download.fetch(f"{url}/a.bin", _sha(PAYLOAD), tmp_path, progress=False)
    assert handler.hits["/a.bin"] == 1  # a verified file is not fetched again


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    handler, url = server
    handler.files["/a.bin"] = PAYLOAD
    with pytest.raises(ValueError, match="(?i)hash"):
        download.fetch(f"{url}/a.bin", "0" * 64, tmp_path, retries=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_is_retried(server, tmp_path):
    handler, url = server
    handler.files["/a.bin"] = PAYLOAD
    handler.drops["/a.bin"] = 1
    path = download.fetch(f"{url}/a.bin", _sha(PAYLOAD), tmp_path, retries=2, progress=False)
    assert path.read_bytes() == PAYLOAD and handler.hits["/a.bin"] == 2


def test_dropped_connection_without_retries_fails_cleanly(server, tmp_path):
    handler, url = server
    handler.files["/a.bin"] = PAYLOAD
    handler.drops["/a.bin"] = 5
    with pytest.raises(requests.exceptions.RequestException):  # the transport's error; obtain() wraps it
        download.fetch(f"{url}/a.bin", _sha(PAYLOAD), tmp_path, retries=1, progress=False)
    assert list(tmp_path.iterdir()) == [], "a half file was left behind"


def _usgra_zip() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    with zipfile.ZipFile(buf, "w") as zf:
        for sub, n in (("", 6), ("test/", 2)):
            for i in range(n):
                img, m = io.BytesIO(), io.BytesIO()
                Image.fromarray(np.full((20, 20), 80, np.uint8)).save(img, "PNG")
                mask = np.zeros((20, 20), np.uint8)
                mask[4:9, 4:9] = 1
                pm = Image.fromarray(mask, mode="P")
                pm.putpalette(palette)
                pm.save(m, "PNG")
                zf.writestr(f"usgra-seg-x/dataset/{sub}images/{i:04d}.png", img.getvalue())
                zf.writestr(f"usgra-seg-x/dataset/{sub}masks/{i:04d}.png", m.getvalue())
    return buf.getvalue()


def test_download_unpack_prepare_end_to_end(server, tmp_data_root, monkeypatch):
    handler, url = server
    archive = _usgra_zip()
    handler.files["/usgra.zip"] = archive
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    src = sources.Source(**{**sources.get("usgra_nerve").to_dict(), "urls": (f"{url}/usgra.zip",),
                            "sha256": _sha(archive), "mirror_folders": ("usgra_nerve_vessel",)})
    monkeypatch.setitem(sources.SOURCES, "usgra_nerve", src)
    prepared = datasets.prepare("usgra_nerve")
    assert prepared.counts()["test"] == 2 and sum(prepared.counts().values()) == 8
    assert (download.raw_dir(src) / download.COMPLETE_MARKER).exists()


def test_unknown_hash_is_recorded_then_enforced(server, tmp_data_root, monkeypatch):
    handler, url = server
    handler.files["/usgra.zip"] = _usgra_zip()
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    src = sources.Source(**{**sources.get("usgra_nerve").to_dict(), "urls": (f"{url}/usgra.zip",)})
    download.obtain(src, progress=False)
    book = tmp_data_root / "downloads" / "sha256.json"
    assert _sha(handler.files["/usgra.zip"]) in book.read_text()
    assert download._known_hash(src, "usgra.zip") == _sha(handler.files["/usgra.zip"])


def test_no_network_and_no_mirror_says_what_to_do(tmp_data_root, monkeypatch):
    monkeypatch.delenv("SAS_KIT_MIRROR", raising=False)
    dead = "http://127.0.0.1:9/usgra.zip"  # discard port: connection refused
    src = sources.Source(**{**sources.get("usgra_nerve").to_dict(), "urls": (dead,)})
    with pytest.raises(download.DataUnavailable) as info:
        download.obtain(src, progress=False)
    text = str(info.value)
    assert dead in text and "SAS_KIT_MIRROR" in text and "raw/usgra_nerve" in text
    assert not any(Path(tmp_data_root, "raw").glob("**/*.png"))
