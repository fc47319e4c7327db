"""The ingest loop: poll -> validate -> batch per partition -> write (retrying) -> commit.

Guarantees, and where each comes from:
- nothing lost: offsets are committed only after a batch's files and range marker are written;
  a crash replays from the last commit.
- nothing duplicated: keys depend only on (topic, partition, first, last offset), and offsets
  inside an already-marked range are skipped on replay (see snapshot.py).
- several processes: one consumer group; a partition revoked in a rebalance is flushed and
  committed first, and a commit refused after a rebalance is harmless for the same reasons.
- store outage: the write is retried with backoff, the batch stays in memory, nothing commits.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingestor.schema import Catalogue, DeadLetter, parse_event
from ingestor.snapshot import DeadRow, Row, durable_ranges, write_batch
from ingestor.source import EventSource, Record, TopicPartition
from model_registry.errors import StorageError
from model_registry.storage import BlobStore

log = logging.getLogger("ingestor")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter("ingest_consumed_total", "Messages read", ("topic",), registry=r)
        self.valid = Counter("ingest_valid_total", "Valid events", ("topic",), registry=r)
        self.invalid = Counter(
            "ingest_invalid_total", "Dead letters", ("topic", "reason"), registry=r
        )
        self.skipped = Counter(
            "ingest_replayed_skipped_total",
            "Replayed messages already durable",
            ("topic",),
            registry=r,
        )
        self.files = Counter("ingest_files_written_total", "Files written", ("kind",), registry=r)
        self.bytes = Counter("ingest_bytes_written_total", "Bytes written", registry=r)
        self.store_errors = Counter("ingest_store_errors_total", "Failed writes", registry=r)
        self.commit_refused = Counter(
            "ingest_commits_refused_total", "Commits after a rebalance", registry=r
        )
        self.flush_seconds = Histogram(
            "ingest_flush_seconds", "Write + commit of one batch", registry=r
        )
        self.lag = Gauge(
            "ingest_lag", "Messages behind the high watermark", ("topic", "partition"), registry=r
        )


@dataclass
class Batch:
    first: int
    last: int
    started: float
    rows: list[Row] = field(default_factory=list)
    dead: list[DeadRow] = field(default_factory=list)
    size: int = 0  # len(rows) + len(dead), kept as a field: checked once per message


class Ingestor:
    def __init__(
        self,
        store: BlobStore,
        topic_kinds: dict[str, str],
        *,
        batch_size: int = 10_000,
        flush_seconds: float = 30.0,
        catalogue: Catalogue | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.store = store
        self.topic_kinds = topic_kinds  # topic name -> schema kind (rate, watch, ...)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.catalogue = catalogue
        self.clock = clock
        self.sleep = sleep
        self.metrics = metrics or Metrics()
        self.max_backoff = max_backoff
        self.source: EventSource | None = None
        self.batches: dict[TopicPartition, Batch] = {}
        self._durable: dict[TopicPartition, list[tuple[int, int]]] = {}
        self._counts: dict[str, list[int]] = {}  # per topic, published to Prometheus each step

    # ---- rebalance hooks --------------------------------------------------------------------
    def on_assign(self, partitions: list[TopicPartition]) -> None:
        for topic in {t for t, _ in partitions}:
            for p, ranges in durable_ranges(self.store, topic).items():
                self._durable[(topic, p)] = ranges
        log.info("assigned %s", sorted(partitions))

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Runs on kafka-python's IO thread, where a blocking commit is not allowed. Writing the
        # batch and its range marker is enough: the partition's next owner skips the marked
        # offsets and commits past them.
        for tp in partitions:
            if tp in self.batches:
                self.flush(tp, commit=False)
            self._durable.pop(tp, None)
        log.info("revoked %s", sorted(partitions))

    # ---- the loop ---------------------------------------------------------------------------
    def step(self, max_records: int = 5000, timeout_s: float = 0.5) -> int:
        assert self.source is not None
        records = self.source.poll(max_records, timeout_s)
        for record in records:
            self.handle(record)
        self.publish_counts()
        self.flush_due()
        return len(records)

    def publish_counts(self) -> None:
        """Per-message counts go to Prometheus once per poll: inc() per message costs ~5%."""
        for topic, (consumed, valid, skipped) in self._counts.items():
            m = self.metrics
            m.consumed.labels(topic).inc(consumed)
            m.valid.labels(topic).inc(valid)
            m.skipped.labels(topic).inc(skipped)
        self._counts.clear()

    def run(self, source: EventSource, should_stop: Callable[[], bool]) -> None:
        self.source = source
        last_lag = 0.0
        while not should_stop():
            self.step()
            if self.clock() - last_lag > 5:
                for (topic, p), lag in source.lag().items():
                    self.metrics.lag.labels(topic, str(p)).set(lag)
                last_lag = self.clock()
        self.flush_all()
        source.close()

    def handle(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        counts = self._counts.setdefault(record.topic, [0, 0, 0])  # consumed, valid, skipped
        counts[0] += 1
        durable_end = self._durable_end(tp, record.offset)
        if durable_end is not None:
            # Replayed after a crash: these offsets are already in the store. Skip them, and once
            # past the range, commit it so the next restart does not read them again.
            counts[2] += 1
            if record.offset == durable_end:
                self._commit({tp: durable_end + 1})
            return
        batch = self.batches.get(tp)
        if batch is None:
            batch = self.batches[tp] = Batch(record.offset, record.offset, self.clock())
        batch.last = record.offset
        batch.size += 1
        value = record.value or b""  # a Kafka tombstone has no value: a dead letter below
        event = parse_event(self.topic_kinds.get(record.topic, ""), value, self.catalogue)
        if isinstance(event, DeadLetter):
            self.metrics.invalid.labels(record.topic, event.reason).inc()
            batch.dead.append(
                DeadRow(
                    record.topic,
                    record.partition,
                    record.offset,
                    event.reason,
                    event.detail,
                    value,
                )
            )
        else:
            counts[1] += 1
            payload = value.decode() if value[:1] == b"{" else event.model_dump_json()
            batch.rows.append(Row(record.topic, record.partition, record.offset, event, payload))
        if batch.size >= self.batch_size:
            self.flush(tp)

    def _durable_end(self, tp: TopicPartition, offset: int) -> int | None:
        ranges = self._durable.get(tp)
        if not ranges:
            return None
        i = bisect.bisect_right(ranges, (offset, float("inf"))) - 1
        if i >= 0 and ranges[i][0] <= offset <= ranges[i][1]:
            return ranges[i][1]
        return None

    def flush_due(self) -> None:
        now = self.clock()
        for tp in [tp for tp, b in self.batches.items() if now - b.started >= self.flush_seconds]:
            self.flush(tp)

    def flush_all(self) -> None:
        for tp in list(self.batches):
            self.flush(tp)

    def flush(self, tp: TopicPartition, commit: bool = True) -> None:
        """Write the batch (retrying until the store takes it), then commit past it."""
        batch = self.batches[tp]
        started = time.perf_counter()
        backoff = 0.5
        while True:
            try:
                keys = write_batch(
                    self.store, tp[0], tp[1], batch.first, batch.last, batch.rows, batch.dead
                )
                break
            except StorageError as exc:
                self.metrics.store_errors.inc()
                log.error(
                    "store write failed for %s [%d..%d], retrying in %.1fs: %s",
                    tp,
                    batch.first,
                    batch.last,
                    backoff,
                    exc,
                )
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        for key in keys:
            self.metrics.files.labels(key.split("/", 1)[0]).inc()
        del self.batches[tp]
        if commit:
            self._commit({tp: batch.last + 1})
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        log.info(
            "flushed %s [%d..%d]: %d valid, %d dead",
            tp,
            batch.first,
            batch.last,
            len(batch.rows),
            len(batch.dead),
        )

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.source is not None and not self.source.commit(offsets):
            self.metrics.commit_refused.inc()
