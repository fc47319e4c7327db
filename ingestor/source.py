"""EventSource: poll records, commit offsets, hear about rebalances. Kafka, or memory for tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("ingestor.source")

TopicPartition = tuple[str, int]
RevokeHook = Callable[[list[TopicPartition]], None]


@dataclass(slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes


class EventSource(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Record]]:
        """Up to `max_records` records, per partition, each partition's in offset order."""
        ...

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit next-offset-to-read per partition; False if the group moved on (rebalance)."""
        ...

    def lag(self) -> dict[TopicPartition, int]: ...

    def close(self) -> None: ...


class KafkaSource:
    """kafka-python consumer in a group, manual commits only.

    `on_revoke` runs inside poll(), on kafka-python's IO thread, before partitions are taken
    away, so the ingestor can write what it holds for them (it must not commit there: blocking
    consumer calls are refused on that thread); `on_assign` lets it learn what is already durable.
    """

    def __init__(
        self,
        brokers: str,
        topics: Iterable[str],
        group: str,
        on_revoke: RevokeHook,
        on_assign: RevokeHook,
        **overrides: object,
    ) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        config: dict[str, object] = {
            "bootstrap_servers": brokers.split(","),
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": 5000,
            "fetch_max_bytes": 16 * 1024 * 1024,
        }
        config.update(overrides)
        self.consumer = KafkaConsumer(**config)

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):
                on_assign([(tp.topic, tp.partition) for tp in assigned])

        self.consumer.subscribe(list(topics), listener=Listener())

    def poll(self, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Record]]:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        # kafka-python's ConsumerRecord has Record's fields (topic, partition, offset, value):
        # passed through as is, not copied, on this per-message path.
        return {(tp.topic, tp.partition): messages for tp, messages in batches.items()}

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        from kafka import OffsetAndMetadata, TopicPartition
        from kafka.errors import CommitFailedError, KafkaError

        payload = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
        }
        try:
            self.consumer.commit(payload)
            return True
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit refused (%s): another member now owns these partitions", exc)
            return False

    def lag(self) -> dict[TopicPartition, int]:
        # Lag from the fetch high watermark: Tansu answers end_offsets() off by a batch.
        out = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:
                out[(tp.topic, tp.partition)] = max(0, high - self.consumer.position(tp))
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class MemorySource:
    """Records from lists, committed offsets in a dict: for fast unit tests of the ingestor."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.records = sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
        self.committed: dict[TopicPartition, int] = {}
        self.position = 0
        self.closed = False

    def poll(self, max_records: int, timeout_s: float) -> dict[TopicPartition, list[Record]]:
        out: dict[TopicPartition, list[Record]] = {}
        for record in self.records[self.position : self.position + max_records]:
            out.setdefault((record.topic, record.partition), []).append(record)
        self.position += sum(len(records) for records in out.values())
        return out

    def rewind_to_committed(self) -> None:
        """What a restart does: continue from each partition's committed offset."""
        self.position = 0
        self.records = [
            r for r in self.records if r.offset >= self.committed.get((r.topic, r.partition), 0)
        ]

    def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        self.committed.update(offsets)
        return True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        self.closed = True
