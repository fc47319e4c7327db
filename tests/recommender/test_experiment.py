"""A/B assignment: deterministic, sticky across processes, shares within 2 points of weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from recommender.experiment import Experiment, ExperimentConfig, bucket, parse_model_ref
from tests.helpers import REPO


def _config(weights: dict[str, float], salt: str = "s1") -> ExperimentConfig:
    models = ["als", "ncf", "itemcf", "popularity", "v0.1/als"]
    arms = [
        {"name": n, "model": models[i % len(models)], "weight": w}
        for i, (n, w) in enumerate(weights.items())
    ]
    return ExperimentConfig(salt=salt, arms=arms)


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 50, "b": 50},
        {"a": 70, "b": 20, "c": 10},
        {"a": 1, "b": 1, "c": 1, "d": 1},
        {"a": 95, "b": 5},
    ],
)
def test_shares_within_two_points_over_100k_users(weights: dict[str, float]) -> None:
    exp = Experiment(_config(weights))
    for user in range(1, 100_001):
        exp.counts[exp.assign(user).name] += 1
    total = sum(weights.values())
    for name, weight in weights.items():
        share = exp.counts[name] / 100_000
        assert abs(share - weight / total) <= 0.02, (name, share)


def test_zero_weight_arm_gets_nobody() -> None:
    exp = Experiment(_config({"a": 0, "b": 1}))
    assert {exp.assign(u).name for u in range(1, 2000)} == {"b"}


def test_assignment_is_identical_in_another_process() -> None:
    code = (
        "from recommender.experiment import bucket;"
        "print([round(bucket('s1', u), 12) for u in (1, 42, 10**12)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == str([round(bucket("s1", u), 12) for u in (1, 42, 10**12)])


@given(st.integers(1, 2**63 - 1), st.text(min_size=1, max_size=20))
def test_bucket_is_a_stable_unit_interval(user: int, salt: str) -> None:
    assert 0.0 <= bucket(salt, user) < 1.0 and bucket(salt, user) == bucket(salt, user)


def test_salt_reshuffles_users() -> None:
    a, b = Experiment(_config({"a": 1, "b": 1}, "x")), Experiment(_config({"a": 1, "b": 1}, "y"))
    differ = sum(a.assign(u).name != b.assign(u).name for u in range(1, 5001))
    assert 2000 < differ < 3000


def test_weight_change_is_validated() -> None:
    config = _config({"a": 1, "b": 1})
    for bad in ({"a": 1}, {"a": 1, "b": 1, "c": 1}, {"a": -1, "b": 1}, {"a": 0, "b": 0}):
        with pytest.raises((ValueError, ValidationError)):
            config.with_weights(bad)
    assert [a.weight for a in config.arms] == [1, 1]  # the config is immutable
    assert Experiment(config.with_weights({"a": 0, "b": 3})).assign(7).name == "b"


def test_public_description_hides_the_salt() -> None:
    exp = Experiment(_config({"a": 1, "b": 1}, salt="secret-salt"))
    assert "secret-salt" not in str(exp.describe())
    assert exp.describe(show_salt=True)["salt"] == "secret-salt"


@pytest.mark.parametrize(
    "config",
    [
        {"salt": "s", "arms": []},
        {"salt": "", "arms": [{"name": "a", "model": "als", "weight": 1}]},
        {"salt": "s", "arms": [{"name": "a", "model": "als", "weight": 1}] * 2},
        {"salt": "s", "arms": [{"name": "a", "model": "../etc/als", "weight": 1}]},
        {"salt": "s", "arms": [{"name": "a", "model": "v1/als", "weight": 1}]},
        {"salt": "s", "arms": [{"name": "a", "model": "als", "weight": 0}]},
        {"salt": "s", "arms": [{"name": "a b", "model": "als", "weight": 1}]},
        {"salt": "s", "arms": [{"name": "a", "model": "als", "weight": 1, "x": 1}]},
    ],
)
def test_bad_configs_are_refused(config: dict) -> None:
    with pytest.raises(ValidationError):
        ExperimentConfig.model_validate(config)


def test_model_refs() -> None:
    assert parse_model_ref("als") == (None, "als")
    assert parse_model_ref("v0.12/ncf") == ("v0.12", "ncf")
    for bad in ("", "ALS", "v0.1/", "/als", "v0.1/../als", "v0.1/als/x", "als\n", "v٠.1/als"):
        with pytest.raises(ValueError):
            parse_model_ref(bad)
