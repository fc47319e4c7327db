"""The loaded releases: one active, some candidates, at most `max_loaded` in memory.

Readers never lock: they read `active` (one attribute) once per request and keep that release for
the whole answer. Loads and switches are serialised by a lock and run off the event loop; a switch
loads and verifies the new release completely before the single assignment that publishes it, so
in-flight requests finish on the old release and no request sees a half-loaded one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from model_registry.registry import Registry, parse_version
from recommender.errors import NotReady, ReleaseNotLoaded, ReleaseRefused
from recommender.release import LoadedRelease, load_release

log = logging.getLogger("recommender.pool")


class ModelPool:
    def __init__(
        self,
        registry: Registry,
        max_loaded: int = 3,
        cache_dir: Path | None = None,
        precompute_cells: int = 0,
    ) -> None:
        self.registry = registry
        self.max_loaded = max(1, max_loaded)
        self.cache_dir = cache_dir
        self.precompute_cells = precompute_cells
        self.active: LoadedRelease | None = None
        self.pinned: set[str] = set()  # versions an experiment arm serves: never evicted
        self._loaded: OrderedDict[str, LoadedRelease] = OrderedDict()
        self._lock = threading.Lock()

    def current(self) -> LoadedRelease:
        release = self.active
        if release is None:
            raise NotReady("no release is loaded yet")
        return release

    def get(self, version: str) -> LoadedRelease:
        release = self._loaded.get(version)
        if release is None:
            raise ReleaseNotLoaded(f"release {version} is not loaded; loaded: {self.versions()}")
        return release

    def versions(self) -> list[str]:
        return sorted(self._loaded, key=parse_version)

    def loaded(self) -> list[LoadedRelease]:
        return [self._loaded[v] for v in self.versions()]

    def load(self, version: str, about_to_switch: bool = False) -> LoadedRelease:
        """Load (or reuse) a release as a candidate; blocking, so call it off the event loop.

        Refused when the pool is full of releases it may not evict (the active and pinned ones),
        unless the caller is `about_to_switch` to it (then `trim` after a switch that failed).
        """
        with self._lock:
            if about_to_switch:
                return self._load_locked(version)
            if version not in self._loaded and len(self._keep()) >= self.max_loaded:
                raise ReleaseRefused(
                    f"no room for {version}: max_loaded={self.max_loaded} is taken by the active "
                    "and pinned releases"
                )
            release = self._load_locked(version)
            self._evict(keep=self._keep() | {version})
            return release

    def switch(self, version: str) -> tuple[str | None, LoadedRelease]:
        """Make `version` active and return the one it replaced; raises before changing anything.

        The old release stays in memory only until the assignment: in-flight requests hold their
        own reference to it, so evicting it right after is safe.
        """
        with self._lock:
            release = self._load_locked(version)
            previous = self.active.version if self.active else None
            self.active = release  # the one assignment readers can observe
            self._loaded.move_to_end(version)
            self._evict(keep=self._keep())
            log.info("active release %s -> %s", previous, version)
            return previous, release

    def trim(self) -> None:
        with self._lock:
            self._evict(keep=self._keep())

    def _keep(self) -> set[str]:
        return {self.active.version} | self.pinned if self.active else set(self.pinned)

    def _load_locked(self, version: str) -> LoadedRelease:
        parse_version(version)
        release = self._loaded.get(version)
        if release is None:
            release = load_release(self.registry, version, self.cache_dir, self.precompute_cells)
            self._loaded[version] = release
        return release

    def _evict(self, keep: set[str]) -> None:
        """Drop the least recently used releases not in `keep` until at most `max_loaded`."""
        for version in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                break
            if version not in keep:
                del self._loaded[version]
                log.info("unloaded release %s (max_loaded=%d)", version, self.max_loaded)
