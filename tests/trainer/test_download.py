"""Downloads against a local HTTP server: checksum verified, bad archives refused, nothing left."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer import download as dl
from trainer.errors import DownloadError


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_unpacks(server, tmp_path: Path, monkeypatch) -> None:
    url, root = server
    archive = _zip({"ml-100k/u.data": b"1\t1\t5\t1\n", "ml-100k/u.item": b"1|A\n"})
    (root / "ml-100k.zip").write_bytes(archive)
    monkeypatch.setitem(dl.DATASETS, "ml-100k", hashlib.md5(archive).hexdigest())
    folder = dl.download("ml-100k", tmp_path / "data", base_url=url)
    assert (folder / "u.data").read_bytes() == b"1\t1\t5\t1\n"
    assert dl.download("ml-100k", tmp_path / "data", base_url=url + "/gone") == folder  # reused


def test_checksum_mismatch_is_refused_and_deleted(server, tmp_path: Path) -> None:
    url, root = server
    (root / "ml-1m.zip").write_bytes(_zip({"ml-1m/ratings.dat": b"tampered"}))
    with pytest.raises(DownloadError, match="does not match the published"):
        dl.download("ml-1m", tmp_path / "data", base_url=url)
    assert not any((tmp_path / "data").iterdir())


def test_zip_slip_is_refused(server, tmp_path: Path, monkeypatch) -> None:
    url, root = server
    archive = _zip({"../../evil.txt": b"x", "ml-100k/u.data": b"1"})
    (root / "ml-100k.zip").write_bytes(archive)
    monkeypatch.setitem(dl.DATASETS, "ml-100k", hashlib.md5(archive).hexdigest())
    with pytest.raises(DownloadError, match="escapes"):
        dl.download("ml-100k", tmp_path / "data", base_url=url)
    assert not (tmp_path / "evil.txt").exists()


def test_not_a_zip_and_http_errors(server, tmp_path: Path, monkeypatch) -> None:
    url, root = server
    (root / "ml-100k.zip").write_bytes(b"<html>not a zip</html>")
    monkeypatch.setitem(dl.DATASETS, "ml-100k", hashlib.md5(b"<html>not a zip</html>").hexdigest())
    with pytest.raises(DownloadError, match="not a valid zip"):
        dl.download("ml-100k", tmp_path / "a", base_url=url)
    with pytest.raises(DownloadError, match="download failed"):
        dl.download("ml-25m", tmp_path / "b", base_url=url)  # 404
    with pytest.raises(DownloadError, match="unknown dataset"):
        dl.download("ml-10k", tmp_path / "c", base_url=url)
