"""A release loaded for serving: verified files, one scorer per kind, vocabularies, catalogue.

Loading fetches the release through the registry (every sha256 checked), reads and validates it
with the release format (`trainer.models.release_format`: schemas, shapes, dtypes, finite scores
on a sample of users for every kind), and warms each scorer up before anyone can see it. A release
that passes its hashes but breaks the format is refused with `ReleaseInvalid` (409), never a 500.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.errors import InvalidVersion, RegistryError, ReleaseMalformed
from model_registry.errors import ReleaseNotFound as RegistryNotFound
from model_registry.registry import Registry
from recommender.errors import ReleaseInvalid, ReleaseNotFound, ReleaseRefused
from trainer.models import Scorer, top_n
from trainer.models.data import Vocab
from trainer.models.popularity import PopularityScorer
from trainer.models.rating import RatingModel, load_part
from trainer.models.release_format import InvalidRelease, read_release

TOP_DEPTH = 100  # the largest k the API serves


@dataclass(frozen=True)
class TopLists:
    """Every known user's best TOP_DEPTH unseen items for one kind, computed once at load.

    Built with the same `top_n` a request would call, so row u's first k entries are exactly
    top_n(score(u), k, seen(u)); `counts[u]` is how many are valid (0: the model cannot score u).
    """

    items: np.ndarray  # int32 item_idx (n_users, TOP_DEPTH), -1 past counts[u]
    scores: np.ndarray  # float64, already rounded as answers show them
    counts: np.ndarray  # int32 (n_users,)
    movie_ids: np.ndarray  # int64 external ids of `items` (what answers show)

    def nbytes(self) -> int:
        arrays = (self.items, self.scores, self.counts, self.movie_ids)
        return int(sum(a.nbytes for a in arrays))


@dataclass
class LoadedRelease:
    version: str
    manifest: dict[str, Any]
    scorers: dict[str, Scorer]
    vocab: Vocab
    history_indptr: np.ndarray
    history_indices: np.ndarray
    titles: list[str]
    top: dict[str, TopLists] = field(default_factory=dict)
    genres: list[str] = field(default_factory=list)  # '|' separated, per item_idx ("" unknown)
    rating: RatingModel | None = None  # the rating part (GET /predict); None in older releases
    _user_rows: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._user_rows = {int(u): i for i, u in enumerate(self.vocab.user_ids.tolist())}

    def user_index(self, user_id: int) -> int:
        """The user's row, or -1 for a user this release has never seen."""
        return self._user_rows.get(user_id, -1)

    @property
    def popularity(self) -> PopularityScorer:
        scorer = self.scorers["popularity"]
        assert isinstance(scorer, PopularityScorer)
        return scorer

    def seen(self, user_idx: int) -> np.ndarray:
        """Item indices the user interacted with in the release's data (never recommended)."""
        if user_idx < 0:
            return self.history_indices[:0]
        return self.history_indices[
            self.history_indptr[user_idx] : self.history_indptr[user_idx + 1]
        ]

    def nbytes(self) -> int:
        arrays = self.history_indptr.nbytes + self.history_indices.nbytes
        return int(
            sum(s.nbytes() for s in self.scorers.values())
            + arrays
            + sum(t.nbytes() for t in self.top.values())
        )

    def precompute(self, max_cells: int, batch: int = 256) -> None:
        """Fill `top` for each kind whose users x items score matrix is within `max_cells`."""
        n_users, n_items = self.vocab.n_users, self.vocab.n_items
        if n_users * n_items > max_cells:
            return
        depth = min(TOP_DEPTH, n_items)
        for kind, scorer in self.scorers.items():
            items = np.full((n_users, depth), -1, dtype=np.int32)
            scores = np.zeros((n_users, depth), dtype=np.float32)
            counts = np.zeros(n_users, dtype=np.int32)
            for start in range(0, n_users, batch):
                with np.errstate(over="ignore", invalid="ignore"):  # checked below
                    block = scorer.score_many(np.arange(start, min(start + batch, n_users)))
                if not np.isfinite(block).all():  # the load check sampled users; this is all
                    bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise ReleaseInvalid(
                        f"release {self.version}: {kind} scores are not finite for user_idx {bad}"
                    )
                for row, user in enumerate(range(start, start + block.shape[0])):
                    best, values = top_n(block[row], depth, exclude=self.seen(user))
                    items[user, : best.size] = best
                    scores[user, : best.size] = values
                    counts[user] = best.size
            movie_ids = np.where(items >= 0, self.vocab.item_ids[np.maximum(items, 0)], -1)
            self.top[kind] = TopLists(
                items, np.round(scores.astype(np.float64), 6), counts, movie_ids
            )


def load_release(
    registry: Registry, version: str, cache_dir: Path | None = None, precompute_cells: int = 0
) -> LoadedRelease:
    """Fetch, verify, validate, load and warm up `version`; any failure is a ReleaseRefused
    (ReleaseInvalid when the files match their hashes but not the format).

    With `precompute_cells` > 0, known users' top lists are computed now, off the request path.

    The files live in a temporary folder only while loading: every array is read into memory.
    """
    with tempfile.TemporaryDirectory(prefix=f"marquee-{version}-", dir=cache_dir) as tmp:
        try:
            manifest = registry.fetch(version, Path(tmp))
        except (RegistryNotFound, InvalidVersion) as exc:
            raise ReleaseNotFound(_public(exc, registry)) from None
        except ReleaseMalformed as exc:
            raise ReleaseInvalid(_public(exc, registry)) from None
        except RegistryError as exc:  # corrupt, partial, unreadable: refuse, keep serving the old
            raise ReleaseRefused(_public(exc, registry)) from None
        release = _load_fetched(version, manifest, Path(tmp))
    try:
        release.precompute(precompute_cells)
    except (ValueError, TypeError, IndexError, MemoryError) as exc:
        raise ReleaseInvalid(f"release {version}: cannot rank ({type(exc).__name__})") from None
    return release


def _public(exc: Exception, registry: Registry) -> str:
    """The registry's message without its URI: answers never show where releases live."""
    return str(exc).replace(registry.uri, "the registry")


def _load_fetched(version: str, manifest: dict[str, Any], root: Path) -> LoadedRelease:
    try:
        data = read_release(root, manifest)
    except InvalidRelease as exc:
        raise ReleaseInvalid(f"release {version}: {exc}") from None
    try:  # the rating part: separate from the ranking kinds, validated against the vocabulary
        rating = load_part(root, manifest, data.vocab.n_users, data.vocab.n_items)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseInvalid(f"release {version}: rating part: {exc}") from None
    return LoadedRelease(
        version=version,
        manifest=manifest,
        scorers=data.scorers,
        vocab=data.vocab,
        history_indptr=data.history_indptr,
        history_indices=data.history_indices,
        titles=data.titles(),
        genres=data.genres(),
        rating=rating,
    )
