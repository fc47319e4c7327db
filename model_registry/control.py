"""The control plane: production pointer, experiment state and decisions as numbered records.

    <root>/control/<stream>/<seq:012d>.json   one immutable record per change, create-if-absent
    <root>/control/<stream>/HEAD              hint: the newest seq (written after the record)
    <root>/control/replicas/<replica>.json    what each replica serves (each overwrites its own)

The newest record of a stream is its state and the records are its history. A writer appends
record N+1 with `put_if_absent`: of two writers that read N, one creates N+1 and the other finds
it taken, so no update is ever lost and every record's `from` is the previous record's `to`. A
writer that passes the seq it read (`expected_seq`) gets `Conflict` instead of a silent retry.

Reading is two small GETs: HEAD, then a probe of HEAD+1 (HEAD may lag when a writer died between
its record and the hint, so readers walk forward until a number is free). Nothing lists the
bucket on the poll path; only a missing HEAD (a store written by hand) falls back to one listing
of that stream's folder.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from model_registry.errors import (
    BlobNotFound,
    Conflict,
    InvalidControl,
    RegistryError,
    ReleaseNotFound,
    StorageError,
)
from model_registry.experiments import ExperimentConfig, parse_model_ref
from model_registry.registry import Registry, parse_version

log = logging.getLogger("model_registry.control")

POINTER = "pointer"
EXPERIMENT = "experiment"
ROLLOUT = "rollout"
REFUSED = "refused"
STREAM = re.compile(r"[a-z][a-z0-9_-]{0,31}")
REPLICA = re.compile(r"[A-Za-z0-9._-]{1,64}")
ACTOR = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CACHE_RECORDS = 10_000  # parsed records kept (they are immutable); the cache restarts past it
MAX_APPEND_TRIES = 50  # writers racing on one stream; each lost race means someone else won


@dataclass(frozen=True)
class Record:
    stream: str
    seq: int
    at: float
    by: str
    reason: str
    action: str
    data: dict[str, Any]  # the state after this change
    previous: dict[str, Any] | None  # the state before it (None for the first record)

    def to_json(self) -> dict[str, Any]:
        body = {
            "stream": self.stream,
            "seq": self.seq,
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
            "action": self.action,
            "data": self.data,
            "previous": self.previous,
        }
        if self.stream == POINTER:  # the pointer's history reads as from -> to
            body["from"] = (self.previous or {}).get("version")
            body["to"] = self.data.get("version")
        return body

    @classmethod
    def from_json(cls, stream: str, raw: bytes) -> Record:
        body = json.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise ValueError("not a control record")
        previous = body.get("previous")
        return cls(
            stream=stream,
            seq=int(body["seq"]),
            at=float(body["at"]),
            by=str(body["by"]),
            reason=str(body["reason"]),
            action=str(body["action"]),
            data=body["data"],
            previous=previous if isinstance(previous, dict) else None,
        )


def check_actor(by: str) -> str:
    """Who acts: a plain name (letters, digits, . _ : -); '@' and spaces would let one actor
    pass for another host or line in the history."""
    if not isinstance(by, str) or not ACTOR.fullmatch(by):
        raise InvalidControl(
            f"actor {str(by)[:40]!r} must be 1-64 letters, digits or . _ : - characters"
        )
    return by


def _check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > 500:
        raise InvalidControl("reason must be text of at most 500 characters")
    return reason


class ControlPlane:
    def __init__(self, registry: Registry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.store = registry.store
        self.clock = clock
        self._cache: dict[tuple[str, int], Record] = {}  # records are immutable: cache by seq
        self.unreadable = 0  # records skipped because they could not be parsed (counted, logged)
        self._bad: set[tuple[str, int]] = set()

    @classmethod
    def open(cls, uri: str) -> ControlPlane:
        return cls(Registry.open(uri))

    # ---- keys -------------------------------------------------------------------------------
    @staticmethod
    def _key(stream: str, seq: int) -> str:
        return f"control/{stream}/{seq:012d}.json"

    @staticmethod
    def _stream(stream: str) -> str:
        if not STREAM.fullmatch(stream):
            raise InvalidControl(f"invalid control stream {stream!r}")
        return stream

    # ---- reading ----------------------------------------------------------------------------
    def head_seq(self, stream: str) -> int:
        """The newest seq of a stream (0: no record yet)."""
        self._stream(stream)
        try:
            seq = int(json.loads(self.store.get(f"control/{stream}/HEAD"))["seq"])
        except BlobNotFound:
            seq = self._listed_seq(stream)
        except (ValueError, KeyError, TypeError):
            log.warning("control/%s/HEAD is unreadable; listing the stream", stream)
            seq = self._listed_seq(stream)
        while self._exists(self._key(stream, seq + 1)):  # the hint may lag behind a writer
            seq += 1
        return seq

    def _listed_seq(self, stream: str) -> int:
        seqs = [
            int(name[:-5])
            for key in self.store.list(f"control/{stream}/")
            if (name := key.rsplit("/", 1)[-1]).endswith(".json") and name[:-5].isdigit()
        ]
        return max(seqs, default=0)

    def _exists(self, key: str) -> bool:
        try:
            self.store.size(key)
        except BlobNotFound:
            return False
        return True

    def read(self, stream: str, seq: int) -> Record | None:
        """Record `seq`, or None when it is missing or unreadable (counted and logged)."""
        cached = self._cache.get((stream, seq))
        if cached is not None or (stream, seq) in self._bad:
            return cached
        try:
            record = Record.from_json(stream, self.store.get(self._key(stream, seq)))
            if record.seq != seq:
                raise ValueError(f"it says seq {record.seq}")
        except BlobNotFound:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            self.unreadable += 1
            self._bad.add((stream, seq))  # records never change: report each bad one once
            log.error("control record %s is unreadable (%s); skipped", self._key(stream, seq),
                      str(exc)[:100])
            return None
        if len(self._cache) > CACHE_RECORDS:
            self._cache.clear()
        self._cache[(stream, seq)] = record
        return record

    def head(self, stream: str) -> Record | None:
        """The newest readable record of a stream (its state), or None."""
        seq = self.head_seq(stream)
        for candidate in range(seq, max(0, seq - 50), -1):  # skip a few unreadable ones
            record = self.read(stream, candidate)
            if record is not None:
                return record
        return None

    def pointer(self) -> Record | None:
        return self.head(POINTER)

    def experiment(self) -> Record | None:
        return self.head(EXPERIMENT)

    def history(
        self, stream: str, limit: int = 100, before: int | None = None
    ) -> tuple[list[Record], int | None]:
        """Up to `limit` records, newest first, older than seq `before` (default: from the
        newest). Costs O(limit) reads, never O(history). Returns (records, next cursor)."""
        self._stream(stream)
        start = self.head_seq(stream) if before is None else min(before - 1, self.head_seq(stream))
        records, seq = [], start
        while seq >= 1 and len(records) < limit:
            record = self.read(stream, seq)
            if record is not None:
                records.append(record)
            seq -= 1
        return records, (seq + 1 if seq >= 1 else None)

    # ---- writing ----------------------------------------------------------------------------
    def append(
        self,
        stream: str,
        data: dict[str, Any],
        *,
        by: str,
        reason: str,
        action: str,
        expected_seq: int | None = None,
        make: Callable[[Record | None], dict[str, Any]] | None = None,
    ) -> Record:
        """Append a record on top of the newest one.

        `expected_seq`: the seq the caller read; if the stream has moved on, Conflict and nothing
        is written. `make(current)` rebuilds `data` from the current state on each try (a
        weight change applies to whatever experiment is current when it lands).
        """
        self._stream(stream)
        check_actor(by)
        _check_reason(reason)
        for _ in range(MAX_APPEND_TRIES):
            seq = self.head_seq(stream)  # the next number follows even an unreadable record
            current = self.head(stream)  # the state: the newest readable record
            if expected_seq is not None and expected_seq != seq:
                raise Conflict(_conflict_message(stream, expected_seq, current), current)
            body = make(current) if make is not None else data
            record = Record(
                stream=stream,
                seq=seq + 1,
                at=self.clock(),
                by=by,
                reason=reason,
                action=action,
                data=body,
                previous=current.data if current else None,
            )
            raw = json.dumps(record.to_json(), indent=2, sort_keys=True).encode()
            if self.store.put_if_absent(self._key(stream, record.seq), raw):
                self._cache[(stream, record.seq)] = record
                self._write_head(stream, record.seq)
                return record
            if expected_seq is not None:  # someone else wrote seq+1 between our read and write
                raise Conflict(_conflict_message(stream, expected_seq, self.head(stream)),
                               self.head(stream))
        raise StorageError(f"control/{stream}: gave up after {MAX_APPEND_TRIES} racing writers")

    def _write_head(self, stream: str, seq: int) -> None:
        try:
            self.store.put(f"control/{stream}/HEAD", json.dumps({"seq": seq}).encode())
        except StorageError as exc:  # only a hint: readers walk forward past a stale one
            log.warning("control/%s/HEAD not updated to %d: %s", stream, seq, exc)

    # ---- the production pointer -------------------------------------------------------------
    def promote(
        self, version: str, *, by: str, reason: str, expected_seq: int | None = None,
        action: str = "promote", force: bool = False,
    ) -> Record:
        """Point production at a complete release (ReleaseNotFound if it has no manifest).

        A release the gate refused is refused here too unless `force` (an operator who read
        the gate's numbers and decided otherwise); the record says it was forced.
        """
        parse_version(version)
        if refused_by_gate(self.registry.manifest(version)):
            if not force:
                raise InvalidControl(
                    f"release {version} was refused by the gate; use force to override"
                )
            action = f"{action}-forced"
        return self.append(
            POINTER, {"version": version}, by=by, reason=reason, action=action,
            expected_seq=expected_seq,
        )

    def rollback(
        self, *, by: str, reason: str, to: str | None = None, expected_seq: int | None = None,
        force: bool = False,
    ) -> Record:
        """Back to `to`, or to the newest earlier production release that was not itself rolled
        back from."""
        from_history = to is None
        if to is None:
            to = self.previous_good()
            if to is None:
                raise InvalidControl("nothing to roll back to: the pointer has no earlier release")
        # A release that was production before may go back (forced then, forced now: recorded).
        return self.promote(to, by=by, reason=reason, expected_seq=expected_seq,
                            action="rollback", force=from_history or force)

    def previous_good(self, skip: set[str] | None = None, scan: int = 200) -> str | None:
        """The newest release in the pointer's history other than the current one, skipping
        releases that were rolled back from (and any in `skip`)."""
        records, _ = self.history(POINTER, limit=scan)
        if not records:
            return None
        current = records[0].data.get("version")
        bad = {current, *(skip or set())}
        for record in records:
            if record.action.startswith("rollback") and record.previous:
                bad.add(record.previous.get("version"))
            version = record.data.get("version")
            if version not in bad:
                return version
        return None

    # ---- the experiment ---------------------------------------------------------------------
    def experiment_config(self) -> ExperimentConfig | None:
        record = self.experiment()
        if record is None:
            return None
        try:
            return ExperimentConfig.model_validate(record.data)
        except ValidationError:
            log.error("experiment record %d is not a valid experiment; ignored", record.seq)
            return None

    def set_experiment(
        self, config: dict[str, Any] | ExperimentConfig, *, by: str, reason: str,
        expected_seq: int | None = None, action: str = "configure",
    ) -> Record:
        try:
            valid = ExperimentConfig.model_validate(
                config.model_dump() if isinstance(config, ExperimentConfig) else config
            )
        except ValidationError as exc:
            raise InvalidControl(f"invalid experiment: {_one_line(exc)}") from None
        for arm in valid.arms:  # a pinned release must exist before anyone routes to it
            pinned, _ = parse_model_ref(arm.model)
            if pinned:
                try:
                    self.registry.manifest(pinned)
                except ReleaseNotFound:
                    raise InvalidControl(f"arm {arm.name}: release {pinned} not found") from None
        return self.append(
            EXPERIMENT, valid.model_dump(), by=by, reason=reason, action=action,
            expected_seq=expected_seq,
        )

    def set_weights(
        self, weights: dict[str, float], *, by: str, reason: str,
        expected_seq: int | None = None,
    ) -> Record:
        def make(current: Record | None) -> dict[str, Any]:
            if current is None:
                raise InvalidControl("no experiment is configured")
            try:
                config = ExperimentConfig.model_validate(current.data)
                return config.with_weights(weights).model_dump()
            except (ValidationError, ValueError) as exc:
                raise InvalidControl(_one_line(exc)) from None

        return self.append(
            EXPERIMENT, {}, by=by, reason=reason, action="weights", expected_seq=expected_seq,
            make=make,
        )

    # ---- audit of refusals and replica reports ----------------------------------------------
    def refused(self, action: str, code: str, by: str, detail: str) -> None:
        """Record a refused admin action; never raises (a refusal must not become a 500)."""
        who = by if ACTOR.fullmatch(by or "") else "unknown"
        try:
            self.append(
                REFUSED,
                {"action": action[:64], "code": code[:64], "detail": detail[:500]},
                by=who, reason="refused", action=action[:64],
            )
        except RegistryError as exc:
            log.error("refused %s (%s) not audited: %s", action, code, exc)

    def report_replica(self, replica: str, info: dict[str, Any]) -> None:
        if not REPLICA.fullmatch(replica):
            raise InvalidControl(f"invalid replica id {replica!r}")
        body = {**info, "replica": replica, "at": self.clock()}
        self.store.put(f"control/replicas/{replica}.json", json.dumps(body).encode())

    def replicas(self) -> list[dict[str, Any]]:
        found = []
        for key in self.store.list("control/replicas/"):
            try:
                found.append(json.loads(self.store.get(key)))
            except (BlobNotFound, ValueError):
                continue
        return found


def refused_by_gate(manifest: dict[str, Any]) -> bool:
    gate = manifest.get("gate")
    return isinstance(gate, dict) and gate.get("decision") == "refuse"


def _conflict_message(stream: str, expected: int, current: Record | None) -> str:
    state = "empty" if current is None else f"seq {current.seq} {_describe(current)}"
    return f"{stream} changed since seq {expected}: now {state}"


def _describe(record: Record) -> str:
    if record.stream == POINTER:
        return f"(version {record.data.get('version')}, by {record.by})"
    return f"({record.action} by {record.by})"


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg')}"
            for e in exc.errors()
        )[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
