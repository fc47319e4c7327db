"""Service settings, read from REC_* environment variables inside create_app() / main()."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.models import KINDS

MIN_ADMIN_TOKEN = 16  # shorter (or empty) tokens disable admin: guessable secrets are no secrets


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REC_", extra="ignore")

    registry: str = "file:///var/lib/marquee/registry"
    # Serve this release while the control plane has no production pointer (then: the newest).
    version: str | None = None
    # Poll the control plane (pointer, experiment) this often; changes reach every replica.
    sync_seconds: float = Field(default=5.0, gt=0, le=3600)
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    default_model: str = "als"
    candidates: str = ""  # comma separated versions to keep loaded beside the active one
    max_loaded: int = Field(default=3, ge=1, le=32)
    # Precompute every known user's top 100 per kind at load when users x items is at most this
    # (ML-1M: 22M cells, yes; ML-25M: 10G, no). 0 scores every request on the fly.
    precompute_max_cells: int = Field(default=50_000_000, ge=0)
    cache_dir: str | None = None  # where fetched releases are unpacked while loading
    admin_token: SecretStr | None = None  # bearer token for admin routes (>= MIN_ADMIN_TOKEN)
    experiment: str | None = None  # experiment config as JSON
    experiment_file: str | None = None  # ... or as a JSON/YAML file
    kafka_brokers: str | None = None  # set to publish every answer to `responses_topic`
    responses_topic: str = "reco_responses"
    publish_queue: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    # Measured on the 2-core box (scripts/bench_serving.py, README "Serving speed"): same
    # throughput for /recommend with either loop, but uvloop showed intermittent 100-450 ms
    # stalls at 64 connections (p99 ~110 ms in 2 of 3 runs, /healthz too); asyncio did not.
    loop: Literal["asyncio", "uvloop"] = "asyncio"

    @field_validator("default_model")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"default_model must be one of {list(KINDS)}")
        return value

    def candidate_versions(self) -> list[str]:
        return [v.strip() for v in self.candidates.split(",") if v.strip()]
