"""The experiment state the control plane stores: arms (name, model, weight), salt and status.

It lives here, not in the recommender, because the CLI, the rollout controller and every replica
validate the same record; the recommender adds only the user -> arm assignment on top.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# 'als' or 'v0.3/als'; ASCII digits only, matched in full (DESIGN §3)
MODEL_REF = re.compile(r"(?:(v[0-9]{1,6}\.[0-9]{1,9})/)?([a-z]{1,32})")


def kpi_latest_key(experiment: str) -> str:
    """Where the KPI job names its newest report; the controller and the CLI read it."""
    return f"kpi/{experiment}/latest.json"


def kpi_report_key(experiment: str, snapshot_id: str, digest: str) -> str:
    """One KPI report: named by its snapshot and a digest of its own content (ingestor.kpi)."""
    return f"kpi/{experiment}/report-{snapshot_id}-{digest}.json"


def parse_model_ref(ref: str) -> tuple[str | None, str]:
    """'als' -> (None, 'als'); 'v0.3/ncf' -> ('v0.3', 'ncf'); anything else is a ValueError."""
    match = MODEL_REF.fullmatch(ref) if isinstance(ref, str) else None
    if not match:
        raise ValueError(f"model {str(ref)[:80]!r} is not a kind or vMAJOR.MINOR/kind")
    return match.group(1), match.group(2)


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # pydantic-core (Rust): $ is the very end
    model: str
    weight: float = Field(ge=0, le=1e6, allow_inf_nan=False)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, value: str) -> str:
        parse_model_ref(value)
        return value


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    salt: str = Field(min_length=1, max_length=256)
    arms: list[Arm] = Field(min_length=1, max_length=32)
    status: Literal["running", "ended"] = "running"

    @model_validator(mode="after")
    def _sane(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        total = sum(a.weight for a in self.arms)
        if not math.isfinite(total) or total <= 0:
            raise ValueError("arm weights must add up to more than 0")
        return self

    def with_weights(self, weights: dict[str, float]) -> ExperimentConfig:
        """The same arms with new weights; every arm named exactly once."""
        names = {a.name for a in self.arms}
        if set(weights) != names:
            raise ValueError(f"weights must name exactly the arms {sorted(names)}")
        arms = [{**a.model_dump(), "weight": weights[a.name]} for a in self.arms]
        return ExperimentConfig.model_validate({**self.model_dump(), "arms": arms})

    def public(self) -> dict:
        """What anyone may see: everything but the salt (with it a user could pick an arm)."""
        return self.model_dump(exclude={"salt"})
