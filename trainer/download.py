"""Download a MovieLens archive from GroupLens, verify its published MD5, and unpack it safely."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.request
import zipfile
from pathlib import Path

from trainer.errors import DownloadError

log = logging.getLogger(__name__)

# MD5s as GroupLens publishes them beside each archive (<name>.zip.md5).
DATASETS: dict[str, str] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
_CHUNK = 1 << 20


def download(name: str, dest: Path, base_url: str | None = None) -> Path:
    """Fetch `name` into `dest` and return the unpacked dataset folder (dest/name).

    An already unpacked folder is reused. A checksum mismatch deletes the archive and raises.
    """
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    dest.mkdir(parents=True, exist_ok=True)
    folder = dest / name
    if folder.is_dir() and any(folder.iterdir()):
        log.info("%s already present at %s", name, folder)
        return folder
    base = (base_url or os.environ.get("MOVIELENS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    url = f"{base}/{name}.zip"
    archive = dest / f"{name}.zip"
    partial = archive.with_suffix(".zip.part")
    md5 = hashlib.md5()
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, partial.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                md5.update(chunk)
                done += len(chunk)
                _progress(done, total)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: download failed: {exc}") from None
    if md5.hexdigest() != DATASETS[name]:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: MD5 {md5.hexdigest()} does not match the published "
            f"{DATASETS[name]}; the file was deleted"
        )
    partial.replace(archive)
    _unpack(archive, dest)
    if not folder.is_dir():
        raise DownloadError(f"{archive}: did not contain a {name}/ folder")
    return folder


def _progress(done: int, total: int) -> None:
    if total and sys.stderr.isatty():
        sys.stderr.write(f"\r  {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
        if done >= total:
            sys.stderr.write("\n")


def _unpack(archive: Path, dest: Path) -> None:
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise DownloadError(f"{archive}: member {member.filename!r} escapes {dest}")
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from None
