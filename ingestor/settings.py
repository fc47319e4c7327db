"""Ingestor settings from INGEST_* environment variables, read inside main()."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingestor.schema import MODELS


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    brokers: str = "127.0.0.1:9092"
    # topic=kind pairs; kind is the schema: rate, watch, reco_requests, reco_responses
    topics: str = "rate=rate,watch=watch,reco_requests=reco_requests,reco_responses=reco_responses"
    group: str = "marquee-ingestor"
    store: str = "file:///var/lib/marquee/events"
    batch_size: int = Field(default=10_000, ge=1)
    flush_seconds: float = Field(default=30.0, gt=0)
    # Resolves log-line slugs to movie ids: a registry URI (its newest release's catalogue) or a
    # catalogue.json file ({"movie_id": {"title": ...}}).
    catalogue: str | None = None
    # Dead letters: "store" writes dlq/<topic>/... files beside the snapshots (exactly once);
    # "kafka" produces them to <topic><dlq_suffix> on the same brokers (at least once).
    dlq: Literal["store", "kafka"] = "store"
    dlq_suffix: str = Field(default=".dlq", min_length=1, max_length=100)
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, for the scraper next door
    bootstrap_timeout_ms: int = Field(default=30_000, ge=100)  # first contact with the brokers
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    log_level: str = "INFO"

    @field_validator("topics")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        kinds = parse_topics(value)
        if not kinds:
            raise ValueError("no topics given")
        for topic, kind in kinds.items():
            if not topic:
                raise ValueError(f"empty topic name in {value!r}")
            if kind not in MODELS:
                raise ValueError(
                    f"topic {topic!r}: unknown kind {kind!r} (kinds: {', '.join(MODELS)})"
                )
        return value

    @field_validator("brokers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        """host:port[,host:port]: checked here, so a typo fails at once, not after the
        bootstrap timeout."""
        brokers = [b.strip() for b in value.split(",")]
        if not any(brokers):
            raise ValueError("no broker given (host:port[,host:port])")
        for broker in brokers:
            host, _, port = broker.rpartition(":")
            if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
                raise ValueError(f"{broker[:80]!r} is not host:port")
        return ",".join(brokers)

    def topic_kinds(self) -> dict[str, str]:
        return parse_topics(self.topics)


def parse_topics(value: str) -> dict[str, str]:
    """'ratings=rate,watch' -> {'ratings': 'rate', 'watch': 'watch'} (a bare name is its kind)."""
    out = {}
    for pair in (p.strip() for p in value.split(",")):
        if pair:
            topic, _, kind = pair.partition("=")
            out[topic.strip()] = (kind or topic).strip()
    return out
