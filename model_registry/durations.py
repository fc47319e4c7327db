"""Durations on command lines ('90s', '10m', '24h', '1.5d', '250ms', plain seconds), one grammar
for every package: the ingestor's KPI job and the recommender's rollout and probe read the same
flags, and both may import model_registry (not each other)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(ms|s|m|h|d)?")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(text: str) -> float:
    """A positive duration in seconds (an argparse type: ValueError on anything else)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(text)
    return float(match[1]) * _UNIT_S[match[2]]
