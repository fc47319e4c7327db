"""Service settings, read from REC_* environment variables inside create_app() / main()."""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainer.models import KINDS


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REC_", extra="ignore")

    registry: str = "file:///var/lib/marquee/registry"
    version: str | None = None  # None: the newest complete release
    default_model: str = "als"
    cache_dir: str | None = None  # where fetched releases are unpacked (a temp dir if unset)
    host: str = "127.0.0.1"
    port: int = 8080

    @field_validator("default_model")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"default_model must be one of {list(KINDS)}")
        return value
