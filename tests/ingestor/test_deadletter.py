"""Dead-letter sinks: the record format, and a Kafka sink failure retried like a store outage."""

from __future__ import annotations

import json

from ingestor.deadletter import DeadRow, KafkaDeadLetters, StoreDeadLetters
from ingestor.runner import Ingestor
from ingestor.source import MemorySource, Record
from model_registry.storage import MemoryStore


class FlakyProducer:
    """kafka-python's producer surface; the first `failures` acks waited for raise."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> Ack:
        return Ack(self, (topic, key, value))

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


class Ack:
    def __init__(self, producer: FlakyProducer, record: tuple[str, bytes, bytes]) -> None:
        self.producer, self.record = producer, record

    def get(self, timeout: float) -> None:
        from kafka.errors import KafkaTimeoutError

        if self.producer.failures:
            self.producer.failures -= 1
            raise KafkaTimeoutError("no ack from the brokers")
        self.producer.sent.append(self.record)


def test_store_sink_writes_one_json_line_per_dead_letter() -> None:
    store = MemoryStore("dlq")
    rows = [
        DeadRow("rate", 2, 7, "bad_json", "x", b"{oops"),
        DeadRow("rate", 2, 9, "x", "", b"\xff"),
    ]
    key, size = StoreDeadLetters(store).write("rate", "part-00002-7-9", rows)
    assert key == "dlq/rate/part-00002-7-9.jsonl" and size == len(store.get(key))
    lines = [json.loads(x) for x in store.get(key).decode().splitlines()]
    assert [(x["offset"], x["raw"], x["raw_encoding"]) for x in lines] == [
        (7, "{oops", "utf-8"),
        (9, "/w==", "base64"),
    ]


def test_a_failing_dead_letter_topic_is_retried_and_blocks_the_commit() -> None:
    producer = FlakyProducer(failures=2)
    sink = KafkaDeadLetters("unused:9092", producer=producer)
    store = MemoryStore("kafka-dlq")
    sleeps: list[float] = []
    ing = Ingestor(store, {"rate": "rate"}, batch_size=2, dead_letters=sink, sleep=sleeps.append)
    source = MemorySource([Record("rate", 0, 0, b"{broken"), Record("rate", 0, 1, b"junk")])
    ing.source = source
    ing.step()
    ing.complete_writes(wait=True)
    assert sleeps == [0.5, 1.0] and ing.metrics.store_errors._value.get() == 2
    assert source.committed == {("rate", 0): 2}
    assert [(t, k) for t, k, _ in producer.sent] == [
        ("rate.dlq", b"rate/0/0"),
        ("rate.dlq", b"rate/0/1"),
    ]
    marker = json.loads(store.get(store.list("ranges/")[0]))
    assert marker == {"valid": 0, "dead": 2, "files": ["kafka:rate.dlq"]}
