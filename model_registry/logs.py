"""JSON log lines for every service (recommender, ingestor).

It lives here because model_registry is the one package every other may import (the dependency
rule in tests/test_dependency_rules.py). Structured fields travel in `extra={"fields": {...}}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO", quiet: tuple[str, ...] = ()) -> None:
    """One JSON line per record on stderr. Loggers in `quiet` (chatty libraries) log at WARNING
    or above, whatever `level` is."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    floor = max(logging.WARNING, logging.getLevelName(level.upper()))
    for name in quiet:
        logging.getLogger(name).setLevel(floor)
