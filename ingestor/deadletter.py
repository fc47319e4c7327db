"""Where dead letters go: a folder in the snapshot store, or a `<topic>.dlq` Kafka topic.

Either way each dead letter is one JSON record with the message's topic, partition, offset, the
reason (a short code counted per reason), a detail, and the raw bytes (UTF-8 text, or base64 when
they are not UTF-8). A sink returns only once its dead letters are durable, because the batch's
range marker, and then the offset commit, come after it; a failure raises StorageError, which
the ingestor retries like any store outage.

- `StoreDeadLetters` writes `dlq/<topic>/part-<p>-<first>-<last>.jsonl`: a deterministic key, so
  a replay after a crash rewrites the same object (exactly once).
- `KafkaDeadLetters` produces to `<topic><suffix>` (default `.dlq`) with acks=all and waits for
  every ack. Kafka has no overwrite, so a crash between the ack and the range marker sends those
  dead letters again on replay (at least once); each record's key is `<topic>/<partition>/<offset>`
  so a consumer of the DLQ topic can drop repeats.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from model_registry.errors import StorageError
from model_registry.storage import BlobStore

log = logging.getLogger("ingestor.deadletter")


@dataclass(slots=True)
class DeadRow:
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    raw: bytes


def dead_letter_record(row: DeadRow) -> dict[str, Any]:
    try:
        raw, encoding = row.raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        raw, encoding = base64.b64encode(row.raw).decode(), "base64"
    return {
        "topic": row.topic,
        "partition": row.partition,
        "offset": row.offset,
        "reason": row.reason,
        "detail": row.detail,
        "raw": raw,
        "raw_encoding": encoding,
    }


class DeadLetterSink(Protocol):
    def write(self, topic: str, span: str, rows: Sequence[DeadRow]) -> tuple[str, int]:
        """Make one batch's dead letters durable; returns (where, bytes). `span` names the batch
        (`part-<p>-<first>-<last>`). Raises StorageError when the destination is unavailable."""
        ...

    def close(self) -> None: ...


class StoreDeadLetters:
    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def write(self, topic: str, span: str, rows: Sequence[DeadRow]) -> tuple[str, int]:
        key = f"dlq/{topic}/{span}.jsonl"
        data = "".join(json.dumps(dead_letter_record(r)) + "\n" for r in rows).encode()
        self.store.put(key, data)
        return key, len(data)

    def close(self) -> None:
        pass


class KafkaDeadLetters:
    def __init__(
        self,
        brokers: str,
        suffix: str = ".dlq",
        timeout_s: float = 30.0,
        producer: Any = None,
        bootstrap_timeout_ms: int = 30_000,
    ) -> None:
        self.suffix = suffix
        self.timeout_s = timeout_s
        if producer is None:
            from kafka import KafkaProducer

            producer = KafkaProducer(
                bootstrap_servers=brokers.split(","),
                acks="all",
                linger_ms=5,
                retries=5,
                max_block_ms=int(timeout_s * 1000),
                bootstrap_timeout_ms=bootstrap_timeout_ms,
            )
        self.producer = producer

    def write(self, topic: str, span: str, rows: Sequence[DeadRow]) -> tuple[str, int]:
        from kafka.errors import KafkaError

        topic = topic + self.suffix
        size = 0
        try:
            futures = []
            for row in rows:
                value = json.dumps(dead_letter_record(row)).encode()
                size += len(value)
                key = f"{row.topic}/{row.partition}/{row.offset}".encode()
                futures.append(self.producer.send(topic, key=key, value=value))
            self.producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)  # raises the send's error, if any
        except KafkaError as exc:
            raise StorageError(f"dead-letter topic {topic}: {exc!r}") from exc
        return f"kafka:{topic}", size

    def close(self) -> None:
        self.producer.close(timeout=5)
