"""Publish each answer to Kafka without ever making a request wait for Kafka.

Requests put a small dict on a bounded queue (`put_nowait`: never blocks); one background thread
drains it into a kafka-python producer. A full queue, or a broker that is down, drops the record
and counts it (`marquee_responses_dropped_total{reason=...}`); answers keep flowing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import orjson

from recommender.telemetry import Telemetry

log = logging.getLogger("recommender.publisher")
_STOP = object()


class ResponsePublisher:
    def __init__(
        self,
        brokers: str,
        topic: str,
        telemetry: Telemetry,
        queue_size: int = 10_000,
        producer_factory: Any = None,
    ) -> None:
        self.brokers = brokers
        self.topic = topic
        self.telemetry = telemetry
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._factory = producer_factory or self._kafka_producer
        self._thread = threading.Thread(target=self._run, name="response-publisher", daemon=True)
        self._thread.start()

    def publish(self, record: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.telemetry.dropped.labels("queue_full").inc()

    def close(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    def _kafka_producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=self.brokers.split(","),
            value_serializer=orjson.dumps,
            linger_ms=5,
            acks=1,
            max_block_ms=2000,  # send() may wait this long for metadata, in this thread only
            bootstrap_timeout_ms=2000,  # a dead broker is noticed in 2 s, not the default 30
            request_timeout_ms=5000,
        )

    def _run(self) -> None:
        producer = None
        retry_at = 0.0
        while True:
            item = self.queue.get()
            if item is _STOP:
                break
            if producer is None and time.monotonic() >= retry_at:
                try:
                    producer = self._factory()
                except Exception as exc:  # broker down or unreachable: count, back off, go on
                    log.warning("kafka unavailable (%s); dropping answers for 5s", exc)
                    retry_at = time.monotonic() + 5.0
            if producer is None:
                self.telemetry.dropped.labels("kafka_unavailable").inc()
                continue
            try:
                future = producer.send(self.topic, item)
                future.add_callback(lambda _m: self.telemetry.published.inc())
                future.add_errback(lambda _e: self.telemetry.dropped.labels("send_error").inc())
            except Exception as exc:  # e.g. no metadata within max_block_ms: the broker is down
                log.warning("kafka send failed: %s", exc)
                self.telemetry.dropped.labels("send_error").inc()
        if producer is not None:
            try:
                producer.flush(timeout=5)
                producer.close(timeout=5)
            except Exception as exc:
                log.warning("kafka close failed: %s", exc)
