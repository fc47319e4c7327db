"""A replica follows the control plane: poll, then load, verify, validate, warm and swap.

Every `REC_SYNC_SECONDS` the follower reads the production pointer and the experiment record
(two small reads each, `model_registry.control`). When either changed it does the heavy work off
the request path and then swaps one reference, as a `/switch` does. What it cannot follow it
reports instead of crashing: `in_sync` false with the reason (on /readyz and in metrics), the
release it has keeps serving, and the failing version is retried with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from model_registry.control import ControlPlane, Record, refused_by_gate
from model_registry.errors import RegistryError
from model_registry.experiments import ExperimentConfig, parse_model_ref
from recommender.errors import ServiceError
from recommender.experiment import Experiment

if TYPE_CHECKING:
    from recommender.service import Service

log = logging.getLogger("recommender.follower")
REPORT_EVERY = 60.0  # seconds between replica reports when nothing changes
NEWEST_TRIED = 5  # with no pointer yet, the newest releases tried in turn until one loads


class Follower:
    def __init__(
        self,
        service: Service,
        control: ControlPlane,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        max_backoff: float = 300.0,
    ) -> None:
        self.service = service
        self.control = control
        self.interval = interval
        self.clock = clock
        self.max_backoff = max_backoff
        self.last_ok: float | None = None
        self.in_sync = False
        self.reason: str | None = "the control plane has not been read yet"
        self.pointer: Record | None = None
        self._failures: dict[str, tuple[int, float, str]] = {}  # version -> (n, retry_at, why)
        self._lock = threading.Lock()  # one sync at a time: the poll thread or an admin call
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report: tuple[Any, ...] | None = None
        self._reported_at = -REPORT_EVERY
        telemetry = service.telemetry
        telemetry.sync_age.set_function(self.sync_age)

    # ---- state seen by /readyz, metrics and the operator view -----------------------------------
    def sync_age(self) -> float:
        return float("inf") if self.last_ok is None else max(0.0, self.clock() - self.last_ok)

    def state(self) -> dict[str, Any]:
        active = self.service.pool.active
        return {
            "in_sync": self.in_sync,
            "reason": self.reason,
            "pointer": self.pointer.data.get("version") if self.pointer else None,
            "pointer_seq": self.pointer.seq if self.pointer else 0,
            "serving": active.version if active else None,
            "experiment_seq": self.service.experiment.seq if self.service.experiment else 0,
            "sync_age_seconds": None if self.last_ok is None else round(self.sync_age(), 3),
            "sync_seconds": self.interval,
        }

    # ---- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception:  # the loop must outlive any surprise; the next poll retries
                log.exception("control-plane sync failed unexpectedly")
                self.service.telemetry.sync_errors.labels("unexpected").inc()

    def sync(self) -> None:
        """One poll: read the control plane and converge on it."""
        with self._lock:
            try:
                pointer = self.control.pointer()
                experiment = self.control.experiment()
            except RegistryError as exc:
                self._set(False, f"control plane unreachable: {_line(exc)}")
                self.service.telemetry.sync_errors.labels("poll").inc()
                return
            self.last_ok = self.clock()
            self.pointer = pointer
            problems = self._follow_pointer(pointer) + self._follow_experiment(experiment)
            self._set(not problems, "; ".join(problems) or None)
            self._report()

    def _set(self, in_sync: bool, reason: str | None) -> None:
        if (in_sync, reason) != (self.in_sync, self.reason):
            (log.info if in_sync else log.warning)(
                "in sync" if in_sync else "out of sync", extra={"fields": {"reason": reason}}
            )
        self.in_sync, self.reason = in_sync, reason
        telemetry = self.service.telemetry
        telemetry.in_sync.set(1 if in_sync else 0)
        telemetry.pointer_seq.set(self.pointer.seq if self.pointer else 0)
        exp = self.service.experiment
        telemetry.experiment_seq.set(exp.seq if exp else 0)

    # ---- the pointer ------------------------------------------------------------------------
    def _follow_pointer(self, pointer: Record | None) -> list[str]:
        pool = self.service.pool
        if pointer is None:  # nothing promoted yet: the configured or the newest good release
            if pool.active is not None:
                return []
            if self.service.settings.version:
                return self._activate(self.service.settings.version)
            versions = self.service.registry.versions()
            if not versions:
                return ["the registry holds no complete release yet"]
            problems: list[str] = []
            for version in reversed(versions[-NEWEST_TRIED:]):
                if self._refused_by_gate(version):
                    problems.append(f"{version} skipped: refused by the gate")
                    continue
                problems += self._activate(version)
                if pool.active is not None:
                    return []
            return problems
        target = str(pointer.data.get("version"))
        if pool.active is not None and pool.active.version == target:
            self._failures.pop(target, None)
            return []
        problems = self._activate(target)
        if problems and pool.active is None:  # nothing serves yet: the newest good release
            problems += self._fall_back(target)
        return problems

    def _activate(self, version: str) -> list[str]:
        failure = self._failures.get(version)
        if failure is not None and self.clock() < failure[1]:
            return [f"cannot serve {version}: {failure[2]} (retry in "
                    f"{failure[1] - self.clock():.0f} s)"]
        try:
            self.service.activate(version)
        except ServiceError as exc:
            n = failure[0] + 1 if failure else 1
            delay = min(self.interval * 2**n, self.max_backoff)
            self._failures[version] = (n, self.clock() + delay, exc.detail)
            self.service.telemetry.sync_errors.labels(exc.code).inc()
            log.error("cannot serve %s: %s (retry in %.0f s)", version, exc.detail, delay)
            return [f"cannot serve {version}: {exc.detail}"]
        self._failures.pop(version, None)
        return []

    def _refused_by_gate(self, version: str) -> bool:
        try:
            return refused_by_gate(self.service.registry.manifest(version))
        except RegistryError:
            return False  # loading it will say what is wrong

    def _fall_back(self, broken: str) -> list[str]:
        skip = {broken}
        while True:
            try:
                version = self.control.previous_good(skip=skip)
            except RegistryError as exc:
                return [f"no fallback: {_line(exc)}"]
            if version is None:
                return ["no earlier good release to fall back on"]
            if not self._activate(version):
                return [f"serving {version}, the newest good release in the pointer's history"]
            skip.add(version)

    # ---- the experiment ---------------------------------------------------------------------
    def _follow_experiment(self, record: Record | None) -> list[str]:
        current = self.service.experiment
        if record is None or (current is not None and current.seq == record.seq):
            return []
        if current is None and record.seq == self.service.ended_experiment_seq:
            return []
        try:
            config = ExperimentConfig.model_validate(record.data)
        except ValidationError:
            return [f"experiment record {record.seq} is not a valid experiment"]
        if config.status == "ended":
            self.service.set_experiment(None, ended_seq=record.seq)
            return []
        pinned = {v for v, _ in map(parse_model_ref, (a.model for a in config.arms)) if v}
        for version in sorted(pinned):  # arms on a fixed release: load it before routing there
            try:
                self.service.pool.load(version)
            except ServiceError as exc:
                return [f"experiment {record.seq}: cannot load {version}: {exc.detail}"]
            self.service.pool.pinned.add(version)
        self.service.pool.pinned = pinned  # releases of arms that are gone may be evicted again
        same_arms = current is not None and [a.name for a in current.config.arms] == [
            a.name for a in config.arms
        ]
        counts = current.counts if same_arms and current is not None else Counter()
        self.service.set_experiment(Experiment(config, record.seq, counts))
        return []

    # ---- what this replica reports --------------------------------------------------------------
    def _report(self) -> None:
        state = self.state()
        key = (state["in_sync"], state["reason"], state["serving"], state["pointer_seq"],
               state["experiment_seq"])
        now = self.clock()
        if key == self._last_report and now - self._reported_at < REPORT_EVERY:
            return
        try:
            self.control.report_replica(self.service.replica_id, {
                k: state[k] for k in ("in_sync", "reason", "serving", "pointer_seq",
                                      "experiment_seq")
            } | {"version": state["serving"]})
        except RegistryError as exc:
            log.warning("replica report not written: %s", _line(exc))
            return
        self._last_report, self._reported_at = key, now


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
