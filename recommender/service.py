"""What the HTTP layer calls: routing a request to (release, kind, arm), switching, auditing."""

from __future__ import annotations

import gc
import hmac
import logging
from pathlib import Path
from typing import Any

from model_registry.errors import RegistryError
from model_registry.registry import Registry
from recommender.errors import (
    InvalidRequest,
    ServiceError,
    Unauthorized,
    UnknownModel,
)
from recommender.experiment import Arm, Experiment, ExperimentConfig, parse_model_ref
from recommender.pool import ModelPool
from recommender.publisher import ResponsePublisher
from recommender.release import LoadedRelease
from recommender.settings import ServiceSettings
from recommender.telemetry import Telemetry

log = logging.getLogger("recommender")


class RegistryUnavailable(ServiceError):
    status = 503
    code = "registry_unavailable"


class Service:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.registry = Registry.open(settings.registry)
        cache = Path(settings.cache_dir) if settings.cache_dir else None
        self.pool = ModelPool(
            self.registry, settings.max_loaded, cache, settings.precompute_max_cells
        )
        self.telemetry = Telemetry()
        self.experiment = _experiment(settings)
        self.publisher: ResponsePublisher | None = None

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load what to serve. A registry with nothing in it leaves the service up but not ready."""
        if self.settings.kafka_brokers:
            self.publisher = ResponsePublisher(
                self.settings.kafka_brokers,
                self.settings.responses_topic,
                self.telemetry,
                self.settings.publish_queue,
            )
        version = self.settings.version or self._production_version() or self.registry.latest()
        if version is None:
            log.error("registry %s has no complete release yet: not ready", self.registry.uri)
            return
        self.pool.switch(version)
        for candidate in self.settings.candidate_versions():
            self.pool.load(candidate)
        if self.experiment:
            for arm in self.experiment.config.arms:  # arms on a fixed release: load it, pin it
                pinned, _ = parse_model_ref(arm.model)
                if pinned:
                    self.pool.load(pinned)
                    self.pool.pinned.add(pinned)
            for arm in self.experiment.config.arms:
                self.telemetry.arm_weight.labels(arm.name).set(arm.weight)
        self._releases_changed()

    def stop(self) -> None:
        if self.publisher:
            self.publisher.close()

    def _production_version(self) -> str | None:
        try:
            record = self.registry.production()
        except RegistryError as exc:
            log.error("ignoring production.json: %s", exc)
            return None
        return record["version"] if record else None

    def _releases_changed(self) -> None:
        self.telemetry.releases_changed(self.pool.active, self.pool.loaded())

    # ---- routing ----------------------------------------------------------------------------
    def route(
        self, user_id: int | None, model: str | None
    ) -> tuple[LoadedRelease, str, Arm | None]:
        """`model` if given, else the user's A/B arm, else the default kind."""
        if model is not None:
            return (*self.resolve(model), None)
        if self.experiment is not None and user_id is not None:
            arm = self.experiment.assign(user_id)
            self.experiment.counts[arm.name] += 1
            return (*self.resolve(arm.model), arm)
        return self.pool.current(), self.settings.default_model, None

    def resolve(self, model: str) -> tuple[LoadedRelease, str]:
        try:
            version, kind = parse_model_ref(model)
        except ValueError as exc:
            raise UnknownModel(str(exc)) from None
        release = self.pool.get(version) if version else self.pool.current()
        return release, kind

    # ---- admin ------------------------------------------------------------------------------
    def check_admin(self, authorization: str | None) -> None:
        token = self.settings.admin_token
        if token is None:
            raise Unauthorized("admin endpoints are disabled: set REC_ADMIN_TOKEN")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), token.get_secret_value().encode()
        ):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    def switch(self, version: str, by: str, reason: str) -> dict[str, Any]:
        """Load and verify `version`, record it in the registry, then make it active.

        Nothing changes if any step fails: the old release keeps serving.
        """
        try:
            self.pool.load(version)  # fetch + verify every hash + warm up, off the request path
        except ServiceError:
            self.telemetry.swaps.labels("refused").inc()
            raise
        previous = self.pool.active.version if self.pool.active else None
        try:
            record = self.registry.set_production(version, by, reason, previous=previous)
        except RegistryError as exc:
            self.telemetry.swaps.labels("refused").inc()
            raise RegistryUnavailable(
                f"could not record the switch, nothing changed: {exc}"
            ) from None
        self.pool.switch(version)
        gc.freeze()  # the new release's objects are long-lived too (see app.lifespan)
        self.telemetry.swaps.labels("ok").inc()
        self._releases_changed()
        return {"from": previous, "to": version, "at": record["at"], "by": by, "reason": reason}

    def load_candidate(self, version: str) -> LoadedRelease:
        release = self.pool.load(version)
        self._releases_changed()
        return release

    def set_weights(self, weights: dict[str, float], by: str, reason: str) -> dict[str, Any]:
        if self.experiment is None:
            raise InvalidRequest("no experiment is configured")
        before = {a.name: a.weight for a in self.experiment.config.arms}
        try:
            self.experiment.set_weights(weights)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        try:
            self.registry.append_audit(
                "experiment", {"by": by, "reason": reason, "from": before, "to": weights}
            )
        except RegistryError as exc:
            log.error("weight change applied but not audited: %s", exc)
        for name, weight in weights.items():
            self.telemetry.arm_weight.labels(name).set(weight)
        return self.experiment.describe()


def _experiment(settings: ServiceSettings) -> Experiment | None:
    try:
        if settings.experiment_file:
            return Experiment(ExperimentConfig.from_file(Path(settings.experiment_file)))
        if settings.experiment:
            return Experiment(ExperimentConfig.model_validate_json(settings.experiment))
    except (OSError, ValueError) as exc:  # a misconfigured experiment stops the start, loudly
        raise ValueError(f"invalid experiment configuration: {exc}") from None
    return None
