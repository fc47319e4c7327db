"""What the HTTP layer calls: routing a request to (release, kind, arm), and control-plane writes.

Admin writes (switch, weights) go through `model_registry.control`, the same functions the CLI
calls, and are then applied here at once; the other replicas follow within the sync interval.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from model_registry.control import ControlPlane, Record
from model_registry.errors import Conflict, InvalidControl, RegistryError, StorageError
from model_registry.experiments import ExperimentConfig
from model_registry.registry import Registry
from recommender.errors import (
    ConflictError,
    InvalidRequest,
    ServiceError,
    Unauthorized,
    UnknownModel,
)
from recommender.experiment import Arm, Experiment, load_config, parse_model_ref
from recommender.follower import Follower
from recommender.pool import ModelPool
from recommender.publisher import ResponsePublisher
from recommender.release import LoadedRelease
from recommender.settings import MIN_ADMIN_TOKEN, ServiceSettings
from recommender.telemetry import Telemetry

log = logging.getLogger("recommender")
REFUSAL_AUDIT_INTERVAL = 1.0  # at most one refused-action record a second: refusals are cheap
                              # to cause, store writes are not (they are always counted)


class RegistryUnavailable(ServiceError):
    status = 503
    code = "registry_unavailable"


class Service:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.registry = Registry.open(settings.registry)
        self.control = ControlPlane(self.registry)
        cache = Path(settings.cache_dir) if settings.cache_dir else None
        self.pool = ModelPool(
            self.registry, settings.max_loaded, cache, settings.precompute_max_cells
        )
        self.telemetry = Telemetry()
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"[:64]
        self.local_experiment = _local_experiment(settings)  # seeds the control plane if empty
        self.experiment: Experiment | None = (
            Experiment(self.local_experiment) if self.local_experiment else None
        )
        self.ended_experiment_seq = 0
        self.publisher: ResponsePublisher | None = None
        self.follower = Follower(self, self.control, settings.sync_seconds)
        self.telemetry.unreadable.set_function(lambda: self.control.unreadable)
        self.admin_token = _admin_token(settings)
        self._refusal_audited_at = 0.0
        self._refusal_lock = threading.Lock()

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Follow the control plane once, then keep following it in the background.

        Nothing here raises for a broken release or an unreachable registry: the replica stays
        up, answers /healthz, is not ready until something loads, and the follower retries.
        """
        if self.settings.kafka_brokers:
            self.publisher = ResponsePublisher(
                self.settings.kafka_brokers,
                self.settings.responses_topic,
                self.telemetry,
                self.settings.publish_queue,
            )
        for candidate in self.settings.candidate_versions():
            try:
                self.pool.load(candidate)
            except ServiceError as exc:
                log.error("candidate %s not loaded: %s", candidate, exc.detail)
        self._seed_experiment()
        self.follower.sync()
        self._releases_changed()
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        if self.publisher:
            self.publisher.close()

    def _seed_experiment(self) -> None:
        """A configured experiment becomes the fleet's only when the control plane has none:
        afterwards the control plane's record (and its weight changes) wins over the config."""
        if self.local_experiment is None:
            return
        try:
            if self.control.experiment() is None:
                self.control.set_experiment(
                    self.local_experiment,
                    by=f"replica:{self.replica_id}"[:64].replace("@", "-"),
                    reason="initial experiment from REC_EXPERIMENT",
                    expected_seq=0,
                    action="start",
                )
        except Conflict:
            pass  # another replica seeded it first: follow that one
        except (RegistryError, InvalidControl) as exc:
            log.error("experiment not recorded in the control plane: %s", exc)

    def _releases_changed(self) -> None:
        self.telemetry.releases_changed(self.pool.active, self.pool.loaded())

    def activate(self, version: str) -> None:
        """Load, verify, validate and warm `version`, then make it the active release."""
        try:
            self.pool.switch(version)
        except ServiceError:
            self.telemetry.swaps.labels("refused").inc()
            raise
        gc.freeze()  # the new release's objects are long-lived (see app.lifespan)
        self.telemetry.swaps.labels("ok").inc()
        self._releases_changed()

    def set_experiment(self, experiment: Experiment | None, ended_seq: int = 0) -> None:
        """Swap the routing table (one reference) and its gauges."""
        self.experiment = experiment
        if ended_seq:
            self.ended_experiment_seq = ended_seq
        self.telemetry.arm_weight.clear()
        if experiment is not None:
            for arm in experiment.config.arms:
                self.telemetry.arm_weight.labels(arm.name).set(arm.weight)

    # ---- routing ----------------------------------------------------------------------------
    def route(
        self, user_id: int | None, model: str | None, probe: bool = False
    ) -> tuple[LoadedRelease, str, Arm | None]:
        """`model` if given, else the user's A/B arm, else the default kind. Probe traffic is
        routed like anyone's but never counted in an arm (it would skew shares and SRM)."""
        if model is not None:
            return (*self.resolve(model), None)
        experiment = self.experiment
        if experiment is not None and user_id is not None:
            arm = experiment.assign(user_id)
            if not probe:
                experiment.counts[arm.name] += 1
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
    def check_admin(self, authorization: str | None, action: str) -> None:
        if self.admin_token is None:
            self.refuse(action, "admin_disabled", "anonymous",
                        f"admin endpoints are disabled: set REC_ADMIN_TOKEN "
                        f"(at least {MIN_ADMIN_TOKEN} characters)", Unauthorized)
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.encode(), self.admin_token
        ):
            self.refuse(action, "unauthorized", "anonymous",
                        "a valid 'Authorization: Bearer <token>' header is required",
                        Unauthorized)

    def is_admin(self, authorization: str | None) -> bool:
        if self.admin_token is None or not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.admin_token)

    def refuse(
        self, action: str, code: str, by: str, detail: str, error: type[ServiceError]
    ) -> None:
        """Count and audit a refused admin action, then raise `error(detail)`."""
        self.telemetry.refused.labels(code).inc()
        with self._refusal_lock:
            now = time.monotonic()
            audit = now - self._refusal_audited_at >= REFUSAL_AUDIT_INTERVAL
            if audit:
                self._refusal_audited_at = now
        if audit:
            self.control.refused(action, code, by, detail)
        raise error(detail)

    def switch(
        self, version: str, by: str, reason: str, expected_seq: int | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Load and validate `version` here, move the pointer, then serve it here at once.

        A release that cannot load is refused before the pointer moves. If another writer moved
        the pointer since `expected_seq` (or since this call read it), 409 and nothing changes.
        """
        try:
            self.pool.load(version, about_to_switch=True)  # fetch, verify, validate, warm up
        except ServiceError as exc:
            self.telemetry.swaps.labels("refused").inc()
            self.refuse("switch", exc.code, by, f"{version}: {exc.detail}", type(exc))
        try:
            record = self._write("switch", by, lambda: self.control.promote(
                version, by=by, reason=reason,
                expected_seq=self._expected(expected_seq), force=force,
            ))
        except ServiceError:
            self.pool.trim()  # the pointer did not move here: do not keep it beyond max_loaded
            raise
        with self.follower._lock:  # the poll thread must not apply an older pointer meanwhile
            self.follower.pointer = record
            self.activate(version)
            self.follower._set(True, None)
        body = record.to_json()
        return {**body, "from": body["from"], "to": version}

    def _expected(self, given: int | None) -> int:
        if given is not None:
            return given
        try:
            return self.control.head_seq("pointer")
        except RegistryError as exc:
            raise RegistryUnavailable(f"cannot read the control plane: {exc}") from None

    def _write(self, action: str, by: str, write: Any) -> Record:
        try:
            return write()
        except Conflict as exc:
            self.refuse(action, "conflict", by, str(exc), ConflictError)
        except InvalidControl as exc:
            self.refuse(action, "invalid", by, str(exc), InvalidRequest)
        except StorageError as exc:
            # The write may or may not have landed (a timeout after the store took it): say so,
            # never "nothing changed". The pointer is the truth and every replica follows it.
            self.telemetry.refused.labels("store_error").inc()
            raise RegistryUnavailable(
                f"the control plane did not confirm the {action}: {_line(exc)}; "
                "whatever it now records is what the fleet will serve"
            ) from None
        except RegistryError as exc:
            self.refuse(action, "invalid", by, _line(exc), InvalidRequest)
        raise AssertionError("unreachable")

    def load_candidate(self, version: str) -> LoadedRelease:
        release = self.pool.load(version)
        self._releases_changed()
        return release

    def set_weights(
        self, weights: dict[str, float], by: str, reason: str, expected_seq: int | None = None
    ) -> dict[str, Any]:
        if self.experiment is None and self.control.experiment() is None:
            self.refuse("weights", "no_experiment", by, "no experiment is configured",
                        InvalidRequest)
        record = self._write("weights", by, lambda: self.control.set_weights(
            weights, by=by, reason=reason, expected_seq=expected_seq
        ))
        config = ExperimentConfig.model_validate(record.data)
        current = self.experiment
        counts = current.counts if current is not None else None
        self.set_experiment(Experiment(config, record.seq, counts))
        return {**self.experiment.describe(), "record": _public_record(record)}

    # ---- reading the history ----------------------------------------------------------------
    def history(self, stream: str, limit: int, before: int | None) -> dict[str, Any]:
        try:
            records, cursor = self.control.history(stream, limit, before)
        except RegistryError as exc:
            raise RegistryUnavailable(f"cannot read the control plane: {_line(exc)}") from None
        return {"history": [_public_record(r) for r in records], "next_before": cursor}


def _public_record(record: Record) -> dict[str, Any]:
    body = record.to_json()
    if record.stream == "experiment":  # the salt lets a user choose their arm
        for key in ("data", "previous"):
            if isinstance(body.get(key), dict):
                body[key] = {k: v for k, v in body[key].items() if k != "salt"}
    return body


def _admin_token(settings: ServiceSettings) -> bytes | None:
    if settings.admin_token is None:
        return None
    token = settings.admin_token.get_secret_value()
    if len(token) < MIN_ADMIN_TOKEN:
        log.error(
            "admin endpoints disabled: REC_ADMIN_TOKEN is %s (at least %d characters needed)",
            "empty" if not token else "too short", MIN_ADMIN_TOKEN,
        )
        return None
    return token.encode()


def _local_experiment(settings: ServiceSettings) -> ExperimentConfig | None:
    try:
        if settings.experiment_file:
            path = Path(settings.experiment_file)
            return load_config(path.read_text(), yaml_text=path.suffix in (".yaml", ".yml"))
        if settings.experiment:
            return load_config(settings.experiment)
    except (OSError, ValueError) as exc:  # a misconfigured experiment stops the start, loudly
        raise ValueError(f"invalid experiment configuration: {_line(exc)}") from None
    return None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
