"""The release format, in one place: what each part folder of a release holds, how the trainer
writes it, and how a reader gets it back validated (DESIGN §5).

    vocab/meta.json            {"kind": "vocab", "n_users", "n_items", "files": {name: sha256}}
    vocab/user_ids.npy         integer[n_users], strictly increasing, >= 1 (position = user_idx)
    vocab/item_ids.npy         integer[n_items], strictly increasing, >= 1 (position = item_idx)
    vocab/history_indptr.npy   integer[n_users + 1]: CSR row pointers of each user's seen items
    vocab/history_indices.npy  integer[nnz]: item_idx in [0, n_items)
    vocab/catalogue.json       {"<movie_id>": {"title": str, "genres": str}}
    <kind>/meta.json           {"kind", "params", "metrics", "holdout_fit", "libraries",
                                "trials", "n_users", "n_items", "files"}
    <kind>/*.npy               the scorer's arrays (`Scorer.arrays` / `Scorer.from_arrays`)

The registry checks every sha256 and knows nothing of this; a release whose hashes match can
still be malformed (a catalogue that is a list, a history shorter than the user count, NaN
factors). `read_release` finds that out before anything is served and raises `InvalidRelease`
with the reason. Writing refuses the same things, so the trainer never publishes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from model_registry.messages import one_line
from trainer.models import MODELS, Scorer
from trainer.models.data import Vocab

VOCAB = "vocab"
META = "meta.json"
CATALOGUE = "catalogue.json"
HISTORY_INDPTR = "history_indptr.npy"
HISTORY_INDICES = "history_indices.npy"
SAMPLE_USERS = 64  # users scored per kind at load: every score must be finite


class InvalidRelease(ValueError):
    """A release (or an artifact about to be published) that breaks the format; says why."""


def _digits(value: str) -> str:
    if not re.fullmatch(r"[0-9]{1,19}", value):  # ASCII digits only, never \d
        raise ValueError(f"catalogue keys are movie ids (ASCII digits), got {value[:40]!r}")
    return value


# pydantic's patterns run on Rust's regex engine, where the end of the text is \z (no \Z).
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}\z")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}\z")]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]


class PartMeta(BaseModel):
    """What every part's meta.json holds; `files` is filled in by the registry at publish."""

    model_config = ConfigDict(extra="allow", strict=True)

    kind: str
    files: dict[FileName, Sha256] = Field(default_factory=dict)
    n_users: Count | None = None
    n_items: Count | None = None


class KindMeta(PartMeta):
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    libraries: dict[str, str] = Field(default_factory=dict)
    trials: list[dict[str, Any]] = Field(default_factory=list)


class CatalogueEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    title: str = ""
    genres: str = ""


CATALOGUE_SCHEMA = TypeAdapter(dict[Annotated[str, AfterValidator(_digits)], CatalogueEntry])


class Manifest(BaseModel):
    """The parts of manifest.json a reader relies on (the registry adds version and parts)."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: str
    parts: dict[str, Sha256]
    kinds: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ReleaseData:
    """A release read back from its folders, every rule of the format checked."""

    manifest: dict[str, Any]
    vocab: Vocab
    history_indptr: np.ndarray  # int64[n_users + 1]
    history_indices: np.ndarray  # int32[nnz]
    catalogue: dict[str, CatalogueEntry]
    scorers: dict[str, Scorer]
    metas: dict[str, PartMeta]

    def titles(self) -> list[str]:
        """One title per item_idx ('' where the catalogue has none)."""
        empty = CatalogueEntry()
        return [self.catalogue.get(str(int(i)), empty).title for i in self.vocab.item_ids]

    def genres(self) -> list[str]:
        """'|' separated genres per item_idx ('' where unknown)."""
        empty = CatalogueEntry()
        return [self.catalogue.get(str(int(i)), empty).genres for i in self.vocab.item_ids]


# ---- writing (the trainer, test fixtures, benchmarks) ---------------------------------------
def write_vocab(
    folder: Path,
    vocab: Vocab,
    history_indptr: np.ndarray,
    history_indices: np.ndarray,
    catalogue: dict[str, dict[str, str]],
) -> None:
    """The vocab part: ids, each user's seen items (CSR), the catalogue for titles."""
    indptr = np.asarray(history_indptr, dtype=np.int64)
    indices = np.asarray(history_indices, dtype=np.int32)
    _check_vocab(vocab)
    _check_history(indptr, indices, vocab)
    entries = CATALOGUE_SCHEMA.validate_python(
        {k: CatalogueEntry(**v) for k, v in catalogue.items()}
    )
    vocab.save(folder)
    np.save(folder / HISTORY_INDPTR, indptr, allow_pickle=False)
    np.save(folder / HISTORY_INDICES, indices, allow_pickle=False)
    (folder / CATALOGUE).write_text(
        json.dumps({k: v.model_dump() for k, v in entries.items()}, ensure_ascii=False)
    )
    meta = PartMeta(kind=VOCAB, n_users=vocab.n_users, n_items=vocab.n_items)
    (folder / META).write_text(meta.model_dump_json(exclude={"files"}))


def save_scorer(folder: Path, scorer: Scorer) -> list[str]:
    """Check a scorer's artifacts (numeric, finite, finite scores) and save them; file names."""
    check_scorer(scorer.kind, scorer)
    return scorer.save(folder)


def write_kind_meta(folder: Path, scorer: Scorer, meta: dict[str, Any]) -> None:
    """The kind's meta.json: what the trainer knows, plus the shapes a reader checks against."""
    full = KindMeta.model_validate(
        {**meta, "kind": scorer.kind, "n_users": scorer.n_users, "n_items": scorer.n_items},
        strict=False,
    )
    (folder / META).write_text(full.model_dump_json(indent=2, exclude={"files"}))


def stage_release(
    staging: Path,
    vocab: Vocab,
    history_indptr: np.ndarray,
    history_indices: np.ndarray,
    catalogue: dict[str, dict[str, str]],
    scorers: dict[str, Scorer],
) -> dict[str, dict[str, Any]]:
    """Every part of a release in `staging`, ready for `Registry.publish`; the manifest's kinds.

    For fixtures and benchmarks that build releases from arrays; the trainer writes its parts
    one by one as it trains them (same helpers).
    """
    write_vocab(staging / VOCAB, vocab, history_indptr, history_indices, catalogue)
    for kind, scorer in scorers.items():
        save_scorer(staging / kind, scorer)
        write_kind_meta(staging / kind, scorer, {})
    return {kind: {} for kind in scorers}


def check_scorer(kind: str, scorer: Scorer, users: np.ndarray | None = None) -> None:
    """Numeric arrays, finite floats, and finite scores for a sample of known users."""
    for name, array in scorer.arrays().items():
        array = np.asarray(array)
        if array.dtype.kind not in "biuf":
            raise InvalidRelease(f"{kind}: artifact {name!r} has dtype {array.dtype}, not numeric")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidRelease(f"{kind}: artifact {name!r} has non-finite values")
    sample = sample_users(scorer.n_users) if users is None else users
    if sample.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below, with the reason
        scores = scorer.score_many(sample)
    if scores.shape != (sample.size, scorer.n_items):
        raise InvalidRelease(
            f"{kind}: scores have shape {scores.shape}, expected {(sample.size, scorer.n_items)}"
        )
    if not np.isfinite(scores).all():
        bad = int(sample[np.flatnonzero(~np.isfinite(scores).all(axis=1))[0]])
        raise InvalidRelease(f"{kind}: scores are not finite (first for user_idx {bad})")


def sample_users(n_users: int, size: int = SAMPLE_USERS) -> np.ndarray:
    """Evenly spread user rows, first and last included: deterministic, so refusals repeat."""
    if n_users <= 0:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_users - 1, min(size, n_users)).astype(np.int64))


# ---- reading (the service) ------------------------------------------------------------------
def read_release(root: Path, manifest: dict[str, Any]) -> ReleaseData:
    """Read and validate a fetched release (hashes already checked); InvalidRelease if not."""
    try:
        head = Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise InvalidRelease(f"manifest.json: {one_line(exc)}") from None
    unknown = sorted(set(head.kinds) - set(MODELS))
    if unknown:
        raise InvalidRelease(f"unknown model kind(s) {unknown}")
    missing = sorted({VOCAB, *head.kinds} - set(head.parts))
    if missing:
        raise InvalidRelease(f"manifest lists no part for {missing}")
    if "popularity" not in head.kinds:
        raise InvalidRelease("no popularity model to fall back on")
    metas = {part: _read_meta(root / part, part) for part in (VOCAB, *head.kinds)}
    vocab, indptr, indices, catalogue = _read_vocab(root / VOCAB, metas[VOCAB])
    scorers = {kind: _read_scorer(root / kind, kind, metas[kind], vocab) for kind in head.kinds}
    return ReleaseData(manifest, vocab, indptr, indices, catalogue, scorers, metas)


def read_json(path: Path, validate: Callable[[bytes], Any]) -> Any:
    """A JSON file through its schema; InvalidRelease naming part/file and what is wrong."""
    where = f"{path.parent.name}/{path.name}"
    try:
        return validate(path.read_bytes())
    except ValidationError as exc:
        raise InvalidRelease(f"{where}: {one_line(exc)}") from None
    except OSError as exc:
        raise InvalidRelease(f"{where}: unreadable ({_why(exc)})") from None


def _read_meta(folder: Path, part: str) -> PartMeta:
    model = PartMeta if part == VOCAB else KindMeta
    meta = read_json(folder / META, model.model_validate_json)
    if meta.kind != part:
        raise InvalidRelease(f"{part}/{META}: says kind {meta.kind!r}")
    return meta


def read_array(path: Path) -> np.ndarray:
    """A .npy file, never pickled; InvalidRelease (without the path) if it is not one."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        where = f"{path.parent.name}/{path.name}"
        raise InvalidRelease(f"{where}: not a numpy array ({_why(exc)})") from None


def _why(exc: BaseException) -> str:
    """The reason without the file path an OSError carries (answers never show paths)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {str(exc)[:120]}"


def _read_vocab(
    folder: Path, meta: PartMeta
) -> tuple[Vocab, np.ndarray, np.ndarray, dict[str, CatalogueEntry]]:
    try:
        vocab = Vocab.load(folder)  # the id files' names are Vocab's own (save / load)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidRelease(f"vocab: ids are not numpy arrays ({_why(exc)})") from None
    _check_vocab(vocab)
    vocab = Vocab(vocab.user_ids.astype(np.int64), vocab.item_ids.astype(np.int64))
    if (meta.n_users, meta.n_items) != (vocab.n_users, vocab.n_items):
        raise InvalidRelease(
            f"vocab: meta.json says {meta.n_users} users x {meta.n_items} items, the ids are "
            f"{vocab.n_users} x {vocab.n_items}"
        )
    indptr, indices = read_array(folder / HISTORY_INDPTR), read_array(folder / HISTORY_INDICES)
    _check_history(indptr, indices, vocab)
    catalogue = read_json(folder / CATALOGUE, CATALOGUE_SCHEMA.validate_json)
    return vocab, indptr.astype(np.int64), indices.astype(np.int32), catalogue


def _check_ids(name: str, ids: np.ndarray) -> None:
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InvalidRelease(f"vocab: {name} must be 1-D integers, got {ids.dtype}{ids.shape}")
    if ids.size and (int(ids[0]) < 1 or int(ids[-1]) > 2**63 - 1):
        raise InvalidRelease(f"vocab: {name} must lie in 1..2**63-1")
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        raise InvalidRelease(f"vocab: {name} must be strictly increasing")


def _check_vocab(vocab: Vocab) -> None:
    _check_ids("user_ids", np.asarray(vocab.user_ids))
    _check_ids("item_ids", np.asarray(vocab.item_ids))
    if vocab.n_items == 0:
        raise InvalidRelease("vocab: no items")


def _check_history(indptr: np.ndarray, indices: np.ndarray, vocab: Vocab) -> None:
    if indptr.dtype.kind not in "iu" or indptr.shape != (vocab.n_users + 1,):
        raise InvalidRelease(
            f"vocab: history index pointer has {indptr.dtype}{indptr.shape}, expected an "
            f"integer array of {vocab.n_users + 1} (users + 1)"
        )
    if indices.dtype.kind not in "iu" or indices.ndim != 1:
        raise InvalidRelease(f"vocab: history items have {indices.dtype}{indices.shape}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.size or (np.diff(indptr) < 0).any():
        raise InvalidRelease("vocab: history index pointer is not a CSR row pointer of the items")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= vocab.n_items):
        raise InvalidRelease("vocab: history names items outside the vocabulary")


def _read_scorer(folder: Path, kind: str, meta: PartMeta, vocab: Vocab) -> Scorer:
    arrays = {}
    for name in meta.files:
        if name.endswith(".npy"):
            array = read_array(folder / name)
            if array.dtype.kind not in "biuf":  # before a scorer quietly casts "1.5" to 1.5
                raise InvalidRelease(f"{kind}: artifact {name!r} has dtype {array.dtype}")
            arrays[name.removesuffix(".npy")] = array
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are checked
            scorer = MODELS[kind].scorer.from_arrays(arrays)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise InvalidRelease(f"{kind}: artifacts do not make a scorer ({why})") from None
    if (scorer.n_users, scorer.n_items) != (vocab.n_users, vocab.n_items):
        raise InvalidRelease(
            f"{kind}: {scorer.n_users} users x {scorer.n_items} items, the vocabulary has "
            f"{vocab.n_users} x {vocab.n_items}"
        )
    try:
        check_scorer(kind, scorer)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        if isinstance(exc, InvalidRelease):
            raise
        raise InvalidRelease(f"{kind}: cannot score ({type(exc).__name__}: {exc})") from None
    return scorer

