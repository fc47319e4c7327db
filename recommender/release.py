"""A release loaded for serving: verified files, one scorer per kind, vocabularies, catalogue.

Loading fetches the release through the registry (every sha256 checked), loads each kind's scorer
with the same class the trainer evaluated, and warms each one up before anyone can see it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.errors import InvalidVersion, RegistryError
from model_registry.errors import ReleaseNotFound as RegistryNotFound
from model_registry.registry import Registry
from recommender.errors import ReleaseNotFound, ReleaseRefused
from trainer.interactions import Vocab
from trainer.models import MODELS, Scorer
from trainer.models.popularity import PopularityScorer


@dataclass
class LoadedRelease:
    version: str
    manifest: dict[str, Any]
    scorers: dict[str, Scorer]
    vocab: Vocab
    history_indptr: np.ndarray
    history_indices: np.ndarray
    titles: list[str]

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
        return int(sum(s.nbytes() for s in self.scorers.values()))


def load_release(registry: Registry, version: str, cache_dir: Path | None = None) -> LoadedRelease:
    """Fetch, verify, load and warm up `version`; any failure is a ReleaseRefused.

    The files live in a temporary folder only while loading: every array is read into memory.
    """
    with tempfile.TemporaryDirectory(prefix=f"marquee-{version}-", dir=cache_dir) as tmp:
        try:
            manifest = registry.fetch(version, Path(tmp))
        except (RegistryNotFound, InvalidVersion) as exc:
            raise ReleaseNotFound(str(exc)) from None
        except RegistryError as exc:  # corrupt, partial, unreadable: refuse, keep serving the old
            raise ReleaseRefused(str(exc)) from None
        return _load_fetched(version, manifest, Path(tmp))


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
