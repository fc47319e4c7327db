"""Checks of command-line values, made before any data is loaded or anything is written.

Shared by `python -m trainer train` and the loop's `retrain`, so both reject the same mistakes
with the same one-line messages.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trainer.errors import TrainerError
from trainer.models import KINDS


def parse_kinds(raw: str) -> list[str]:
    """--kinds: known kinds, comma separated, each once."""
    kinds = [k.strip() for k in raw.split(",")]
    if not any(kinds):
        raise TrainerError(f"--kinds: no model kind given; choose from {','.join(KINDS)}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise TrainerError(f"--kinds: unknown model kind(s) {unknown}; choose from {list(KINDS)}")
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise TrainerError(f"--kinds: {', '.join(repeated)} given more than once")
    return kinds


def check_writable_folder(folder: Path, flag: str) -> None:
    """`folder` is, or can be created as, a folder we can write in; nothing is created.

    Probed with a temporary file in the nearest existing folder (gone when closed): permission
    bits say little when running as root, or on a read-only mount or /proc.
    """
    if folder.exists() and not folder.is_dir():
        raise TrainerError(f"{flag} {folder}: exists and is not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrainerError(f"{flag} {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise TrainerError(f"{flag} {folder}: cannot write in {existing} ({why})") from None


def check_writable_file(path: Path, flag: str) -> None:
    path = path.resolve()
    if path.is_dir():
        raise TrainerError(f"{flag} {path}: is a folder, not a file")
    check_writable_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise TrainerError(f"{flag} {path}: not writable")
