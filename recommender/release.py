"""A release loaded for serving: verified files, one scorer per kind, vocabularies, catalogue.

Loading fetches the release through the registry (every sha256 checked), loads each kind's scorer
with the same class the trainer evaluated, and warms each one up before anyone can see it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.errors import InvalidVersion, RegistryError
from model_registry.errors import ReleaseNotFound as RegistryNotFound
from model_registry.registry import Registry
from recommender.errors import ReleaseNotFound, ReleaseRefused
from trainer.interactions import Vocab
from trainer.models import MODELS, Scorer, top_n
from trainer.models.popularity import PopularityScorer

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
                block = scorer.score_many(np.arange(start, min(start + batch, n_users)))
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
    """Fetch, verify, load and warm up `version`; any failure is a ReleaseRefused.

    With `precompute_cells` > 0, known users' top lists are computed now, off the request path.

    The files live in a temporary folder only while loading: every array is read into memory.
    """
    with tempfile.TemporaryDirectory(prefix=f"marquee-{version}-", dir=cache_dir) as tmp:
        try:
            manifest = registry.fetch(version, Path(tmp))
        except (RegistryNotFound, InvalidVersion) as exc:
            raise ReleaseNotFound(str(exc)) from None
        except RegistryError as exc:  # corrupt, partial, unreadable: refuse, keep serving the old
            raise ReleaseRefused(str(exc)) from None
        release = _load_fetched(version, manifest, Path(tmp))
    release.precompute(precompute_cells)
    return release


def _load_fetched(version: str, manifest: dict[str, Any], root: Path) -> LoadedRelease:
    try:
        scorers: dict[str, Scorer] = {}
        for kind in manifest.get("kinds", {}):
            if kind not in MODELS:
                raise ReleaseRefused(f"release {version}: unknown model kind {kind!r}")
            scorers[kind] = MODELS[kind].scorer.load(root / kind)
        if "popularity" not in scorers:
            raise ReleaseRefused(f"release {version}: no popularity model to fall back on")
        vocab = Vocab.load(root / "vocab")
        catalogue = json.loads((root / "vocab" / "catalogue.json").read_text())
        release = LoadedRelease(
            version=version,
            manifest=manifest,
            scorers=scorers,
            vocab=vocab,
            history_indptr=np.load(root / "vocab" / "history_indptr.npy", allow_pickle=False),
            history_indices=np.load(root / "vocab" / "history_indices.npy", allow_pickle=False),
            titles=[catalogue.get(str(int(i)), {}).get("title", "") for i in vocab.item_ids],
        )
        for scorer in scorers.values():  # warm-up: first-call costs are paid before serving
            if scorer.n_items != vocab.n_items:
                raise ReleaseRefused(
                    f"release {version}: {scorer.kind} has {scorer.n_items} "
                    f"items but the vocabulary has {vocab.n_items}"
                )
            scorer.score(0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ReleaseRefused(
            f"release {version}: cannot be loaded ({type(exc).__name__}: {exc})"
        ) from None
    return release
