"""A/B experiment: named arms with weights, sticky per user through a salted SHA-256 hash.

Assignment never uses Python's `hash()` (salted per process): the same user lands in the same arm
in every process and after every restart, as long as salt and weights are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_REF = re.compile(r"^(?:(v\d{1,6}\.\d{1,9})/)?([a-z]{1,32})$")


def parse_model_ref(ref: str) -> tuple[str | None, str]:
    """'als' -> (None, 'als'); 'v0.3/ncf' -> ('v0.3', 'ncf'); anything else is a ValueError."""
    match = MODEL_REF.match(ref)
    if not match:
        raise ValueError(f"model {ref!r} is not a kind or vMAJOR.MINOR/kind")
    return match.group(1), match.group(2)


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    model: str
    weight: float = Field(ge=0, le=1e6)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model_ref(value)
        return value


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", max_length=128)
    salt: str = Field(min_length=1, max_length=256)
    arms: list[Arm] = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _sane(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        total = sum(a.weight for a in self.arms)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("arm weights must add up to more than 0")
        return self

    @classmethod
    def from_file(cls, path: Path) -> ExperimentConfig:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return cls.model_validate(yaml.safe_load(text))
        return cls.model_validate(json.loads(text))


def bucket(salt: str, user_id: int) -> float:
    """A stable number in [0, 1) for (salt, user)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Experiment:
    def __init__(self, config: ExperimentConfig) -> None:
        self.counts: Counter[str] = Counter()
        self._apply(config)

    def _apply(self, config: ExperimentConfig) -> None:
        total = sum(a.weight for a in config.arms)
        edges, running = [], 0.0
        for arm in config.arms:
            running += arm.weight / total
            edges.append(running)
        edges[-1] = 1.0  # no user falls off the end through rounding
        self.config = config
        self._edges = edges

    def assign(self, user_id: int) -> Arm:
        point = bucket(self.config.salt, user_id)
        for arm, edge in zip(self.config.arms, self._edges, strict=True):
            if point < edge and arm.weight > 0:
                return arm
        return next(a for a in reversed(self.config.arms) if a.weight > 0)

    def set_weights(self, weights: dict[str, float]) -> ExperimentConfig:
        """New weights for the same arms (every arm named once); validated before it applies."""
        names = {a.name for a in self.config.arms}
        if set(weights) != names:
            raise ValueError(f"weights must name exactly the arms {sorted(names)}")
        arms = [a.model_copy(update={"weight": weights[a.name]}) for a in self.config.arms]
        config = ExperimentConfig.model_validate(
            {**self.config.model_dump(), "arms": [a.model_dump() for a in arms]}
        )
        self._apply(config)
        return config

    def describe(self) -> dict:
        return {
            **self.config.model_dump(),
            "counts": {a.name: self.counts[a.name] for a in self.config.arms},
        }
