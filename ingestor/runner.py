"""The ingest loop: poll -> validate -> batch per partition -> write (retrying) -> commit.

Writes run on one background thread, in order, while the loop goes on consuming (pyarrow and
the store's I/O release the GIL); the loop commits a batch's offsets once its write is done.
At most `max_pending_writes` batches wait for the writer, which bounds memory.

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
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingestor.deadletter import DeadLetterSink, DeadRow, StoreDeadLetters
from ingestor.schema import Catalogue, DeadLetter, Parser, parser_for
from ingestor.snapshot import ValidRows, durable_ranges, warm_up, write_batch
from ingestor.source import EventSource, Record, TopicPartition
from model_registry.errors import StorageError
from model_registry.storage import BlobStore

log = logging.getLogger("ingestor")


GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect young objects every 50k allocations instead of 700.

    Each event allocates a few container objects that live until its batch is flushed, so with
    CPython's default threshold the collector keeps re-walking up to batch-size x partitions live
    events: 30% of the ingestor's CPU in a profile (bench: 7.4 -> 5.0 us per event in memory).
    Events form no reference cycles, so collecting less often frees the same memory.
    """
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


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
        self.store_failing = Gauge(
            "ingest_store_failing", "1 while writes fail and are being retried", registry=r
        )
        self.commit_refused = Counter(
            "ingest_commits_refused_total", "Commits after a rebalance", registry=r
        )
        self.flush_seconds = Histogram(
            "ingest_flush_seconds", "Writing one batch, retries included", registry=r
        )
        self.lag = Gauge(
            "ingest_lag", "Messages behind the high watermark", ("topic", "partition"), registry=r
        )


@dataclass(slots=True)
class Batch:
    first: int
    last: int
    started: float
    rows: ValidRows = field(default_factory=ValidRows)
    dead: list[DeadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows) + len(self.dead)


@dataclass(slots=True)
class PendingCommit:
    """Offsets to commit once the write before them is done (None: nothing to wait for)."""

    tp: TopicPartition
    next_offset: int
    write: Future | None
    commit: bool = True  # False once the partition is revoked: its next owner commits


class Ingestor:
    def __init__(
        self,
        store: BlobStore,
        topic_kinds: dict[str, str],
        *,
        batch_size: int = 10_000,
        flush_seconds: float = 30.0,
        catalogue: Catalogue | None = None,
        dead_letters: DeadLetterSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        metrics: Metrics | None = None,
        max_backoff: float = 30.0,
        max_pending_writes: int = 2,
    ) -> None:
        self.store = store
        self.dead_letters = dead_letters or StoreDeadLetters(store)
        self.topic_kinds = topic_kinds  # topic name -> schema kind (rate, watch, ...)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.catalogue = catalogue
        self.clock = clock
        self.sleep = sleep
        self.metrics = metrics or Metrics()
        self.max_backoff = max_backoff
        self.max_pending_writes = max_pending_writes
        self.source: EventSource | None = None
        self.batches: dict[TopicPartition, Batch] = {}
        self._parsers: dict[str, Parser] = {}
        self._durable: dict[TopicPartition, list[tuple[int, int]]] = {}
        self._counts: dict[str, list[int]] = {}  # per topic, published to Prometheus each step
        self._pending: deque[PendingCommit] = deque()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ingest-writer")
        warm_up()

    # ---- rebalance hooks --------------------------------------------------------------------
    def on_assign(self, partitions: list[TopicPartition]) -> None:
        # Only the assigned partitions' markers: each member of the group reads its share.
        for topic, p in partitions:
            ranges = durable_ranges(self.store, topic, p).get(p)
            if ranges:
                self._durable[(topic, p)] = ranges
        log.info("assigned", extra={"fields": {"partitions": sorted(partitions)}})

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Runs on kafka-python's IO thread, where a blocking commit is not allowed. Writing the
        # batch and its range marker is enough: the partition's next owner reads the markers
        # when it is assigned the partition, skips the marked offsets and commits past them. So
        # the writes must be finished before this returns.
        revoked = set(partitions)
        for tp in partitions:
            if tp in self.batches:
                self.flush(tp, commit=False)
            self._durable.pop(tp, None)
        for pending in self._pending:
            if pending.tp in revoked:
                pending.commit = False
                if pending.write is not None:
                    pending.write.result()
        log.info("revoked", extra={"fields": {"partitions": sorted(partitions)}})

    # ---- the loop ---------------------------------------------------------------------------
    def step(self, max_records: int = 5000, timeout_s: float = 0.5) -> int:
        assert self.source is not None
        polled = self.source.poll(max_records, timeout_s)
        for tp, records in polled.items():
            self.handle(tp, records)
        self.publish_counts()
        self.flush_due()
        self.complete_writes()
        return sum(len(records) for records in polled.values())

    def publish_counts(self) -> None:
        """Per-message counts go to Prometheus once per poll: inc() per message costs ~5%."""
        m = self.metrics
        for topic, counts in self._counts.items():
            consumed, valid, skipped = counts
            counts[:] = (0, 0, 0)  # zeroed in place: handle() may hold this list
            m.consumed.labels(topic).inc(consumed)
            m.valid.labels(topic).inc(valid)
            m.skipped.labels(topic).inc(skipped)

    def run(self, source: EventSource, should_stop: Callable[[], bool]) -> None:
        self.source = source
        last_lag = 0.0
        try:
            while not should_stop():
                self.step()
                if self.clock() - last_lag > 5:
                    for (topic, p), lag in source.lag().items():
                        self.metrics.lag.labels(topic, str(p)).set(lag)
                    last_lag = self.clock()
            self.flush_all()
        finally:
            self.close()
            source.close()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.dead_letters.close()

    def handle(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        """One partition's records from one poll, in offset order."""
        if not records:
            return
        counts = self._counts.setdefault(tp[0], [0, 0, 0])  # consumed, valid, skipped
        counts[0] += len(records)
        ranges = self._durable.get(tp)
        if not ranges or ranges[-1][1] < records[0].offset:
            self._append(tp, records, counts)  # the common case: nothing here is durable yet
            return
        # Replayed after a crash or a rebalance: offsets inside a range marker are already in the
        # store. Skip them, and once past a range, commit it so a restart does not read it again.
        for record in records:
            end = self._durable_end(ranges, record.offset)
            if end is None:
                self._append(tp, [record], counts)
                continue
            counts[2] += 1
            if tp in self.batches:
                self.flush(tp)  # what is open ends before this range: ranges never overlap
            if record.offset == end:
                self._pending.append(PendingCommit(tp, end + 1, None))

    def _append(self, tp: TopicPartition, records: Sequence[Record], counts: list[int]) -> None:
        topic, partition = tp
        parse = self._parsers.get(topic)
        if parse is None:
            kind = self.topic_kinds.get(topic, "")
            parse = self._parsers[topic] = parser_for(kind, self.catalogue)
        start = 0
        while start < len(records):
            batch = self.batches.get(tp)
            if batch is None:
                batch = self.batches[tp] = Batch(records[start].offset, 0, self.clock())
            chunk = records[start : start + self.batch_size - len(batch)]
            rows, dead = batch.rows, batch.dead
            valid_before = len(rows)
            for record in chunk:
                value = record.value or b""  # a Kafka tombstone has no value: a dead letter
                event = parse(value)
                if type(event) is DeadLetter:
                    self.metrics.invalid.labels(topic, event.reason).inc()
                    dead.append(
                        DeadRow(topic, partition, record.offset, event.reason, event.detail, value)
                    )
                    continue
                rows.offsets.append(record.offset)
                rows.events.append(event)
                # the message itself when it was JSON (pydantic checked it is UTF-8)
                payload = value if value[:1] == b"{" else event.model_dump_json().encode()
                rows.payloads.append(payload)
            counts[1] += len(rows) - valid_before
            batch.last = chunk[-1].offset
            start += len(chunk)
            if len(batch) >= self.batch_size:
                self.flush(tp)

    @staticmethod
    def _durable_end(ranges: list[tuple[int, int]], offset: int) -> int | None:
        i = bisect.bisect_right(ranges, (offset, float("inf"))) - 1
        if i >= 0 and ranges[i][0] <= offset <= ranges[i][1]:
            return ranges[i][1]
        return None

    def flush_due(self) -> None:
        now = self.clock()
        for tp in [tp for tp, b in self.batches.items() if now - b.started >= self.flush_seconds]:
            self.flush(tp)

    def flush_all(self) -> None:
        """Write everything buffered and commit it (shutdown)."""
        for tp in list(self.batches):
            self.flush(tp)
        self.complete_writes(wait=True)

    def flush(self, tp: TopicPartition, commit: bool = True) -> None:
        """Hand the batch to the writer; its offsets are committed by complete_writes()."""
        batch = self.batches.pop(tp)
        write = self._writer.submit(self._write, tp, batch)
        self._pending.append(PendingCommit(tp, batch.last + 1, write, commit))
        # Backpressure: with the store slow or down, stop consuming instead of buffering more
        # (after publishing the counts, so the metrics show what is waiting).
        writes = [p.write for p in self._pending if p.write is not None]
        if len(writes) > self.max_pending_writes:
            self.publish_counts()
            writes[-1 - self.max_pending_writes].result()

    def complete_writes(self, wait: bool = False) -> None:
        """Commit, in order, the offsets whose writes are done (all of them, if `wait`)."""
        offsets: dict[TopicPartition, int] = {}
        while self._pending:
            pending = self._pending[0]
            if pending.write is not None:
                if not (wait or pending.write.done()):
                    break
                pending.write.result()  # a writer bug is raised here, on the loop's thread
            self._pending.popleft()
            if pending.commit:
                offsets[pending.tp] = pending.next_offset
        if offsets:
            self._commit(offsets)

    def _write(self, tp: TopicPartition, batch: Batch) -> None:
        """On the writer thread: write the batch, retrying with backoff until the store takes it."""
        started = time.perf_counter()
        backoff = 0.5
        while True:
            try:
                written = write_batch(
                    self.store,
                    self.dead_letters,
                    tp[0],
                    tp[1],
                    batch.first,
                    batch.last,
                    batch.rows,
                    batch.dead,
                )
                break
            except StorageError as exc:
                self.metrics.store_errors.inc()
                self.metrics.store_failing.set(1)
                log.error(
                    "store write failed, retrying in %.1fs: %s",
                    backoff,
                    exc,
                    extra={"fields": {**_where(tp, batch), "retry_in_s": backoff}},
                )
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self.metrics.store_failing.set(0)
        for key, size in written:
            kind = "dlq" if key.startswith("kafka:") else key.split("/", 1)[0]
            self.metrics.files.labels(kind).inc()
            self.metrics.bytes.inc(size)
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        fields = {
            **_where(tp, batch),
            "valid": len(batch.rows),
            "dead": len(batch.dead),
            "bytes": sum(size for _, size in written),
            "seconds": round(time.perf_counter() - started, 4),
        }
        log.info("wrote batch", extra={"fields": fields})

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.source is not None and not self.source.commit(offsets):
            self.metrics.commit_refused.inc()


def _where(tp: TopicPartition, batch: Batch) -> dict[str, object]:
    return {"topic": tp[0], "partition": tp[1], "first": batch.first, "last": batch.last}
