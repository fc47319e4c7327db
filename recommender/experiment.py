"""A/B routing: a user's arm is sticky through a salted SHA-256 hash onto cumulative weights.

The experiment itself (arms, weights, salt, status) is control-plane state
(`model_registry.experiments`); this module only assigns users. Assignment never uses Python's
`hash()` (salted per process): the same user lands in the same arm in every replica and after
every restart, as long as salt and weights are unchanged.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from model_registry.experiments import Arm, ExperimentConfig, parse_model_ref

__all__ = ["Arm", "Experiment", "ExperimentConfig", "bucket", "parse_model_ref"]


def bucket(salt: str, user_id: int) -> float:
    """A stable number in [0, 1) for (salt, user)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Experiment:
    """An immutable routing table for one experiment record; a change builds a new one."""

    def __init__(self, config: ExperimentConfig, seq: int = 0, counts: Counter | None = None):
        self.config = config
        self.seq = seq  # the control-plane record this routes by (0: local config only)
        self.counts: Counter[str] = counts if counts is not None else Counter()
        total = sum(a.weight for a in config.arms)
        edges, running = [], 0.0
        for arm in config.arms:
            running += arm.weight / total
            edges.append(running)
        edges[-1] = 1.0  # no user falls off the end through rounding
        self._edges = edges

    def assign(self, user_id: int) -> Arm:
        point = bucket(self.config.salt, user_id)
        for arm, edge in zip(self.config.arms, self._edges, strict=True):
            if point < edge and arm.weight > 0:
                return arm
        return next(a for a in reversed(self.config.arms) if a.weight > 0)

    def describe(self, show_salt: bool = False) -> dict:
        body = self.config.model_dump() if show_salt else self.config.public()
        return {
            **body,
            "seq": self.seq,
            "counts": {a.name: self.counts[a.name] for a in self.config.arms},
        }


def load_config(text: str, yaml_text: bool = False) -> ExperimentConfig:
    """An experiment from REC_EXPERIMENT (JSON) or REC_EXPERIMENT_FILE (JSON or YAML)."""
    if yaml_text:
        import yaml

        return ExperimentConfig.model_validate(yaml.safe_load(text))
    return ExperimentConfig.model_validate_json(text)
