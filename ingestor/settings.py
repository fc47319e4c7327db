"""Ingestor settings from INGEST_* environment variables, read inside main()."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    metrics_port: int = Field(default=0, ge=0)  # 0: no Prometheus endpoint
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    log_level: str = "INFO"

    def topic_kinds(self) -> dict[str, str]:
        pairs = [p.strip() for p in self.topics.split(",") if p.strip()]
        out = {}
        for pair in pairs:
            topic, _, kind = pair.partition("=")
            out[topic.strip()] = (kind or topic).strip()
        return out
