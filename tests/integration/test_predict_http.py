"""GET /predict over real HTTP: a uvicorn process serving a release built by the trainer CLI.

Every answer must be the estimate of the rating part as the trainer saved it (loaded here through
the same `load_release`), unknown ids fall back to the known biases and say so, and bad ids get
/recommend's 422 shape.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from model_registry.registry import Registry
from recommender.errors import ReleaseInvalid
from recommender.release import load_release
from tests.helpers import free_port, python, start, stop, wait_for_http
from tests.integration.test_serving_http import get
from trainer.models.rating import RatingModel

# The service as `python -m recommender` builds it; the predict router is added only if the app
# does not include it yet, so this test keeps covering the route once the app does.
_SERVE = """
import sys, uvicorn
from recommender.app import create_app
from recommender.routers import predict
from recommender.settings import ServiceSettings
app = create_app(ServiceSettings(registry=sys.argv[1]))
if not any(getattr(r, "path", "") == "/predict/{user_id}/{movie_id}" for r in app.routes):
    app.include_router(predict.router)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""
UNKNOWN = 10**12


@pytest.fixture(scope="module")
def served(synthetic_release: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("predict") / "service.log"
    proc = start([python(), "-c", _SERVE, synthetic_release["registry"], str(port)], log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base
    except Exception:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def release(synthetic_release: dict):
    loaded = load_release(Registry.open(synthetic_release["registry"]), "v0.1")
    assert loaded.rating is not None, "the trainer CLI must publish a rating part"
    return loaded


def test_known_pairs_answer_the_full_estimate(served: str, release) -> None:
    model = release.rating
    for user_id in release.vocab.user_ids[::9]:
        for movie_id in release.vocab.item_ids[::7]:
            status, body = get(f"{served}/predict/{user_id}/{movie_id}")
            assert status == 200, body
            want = model.predict_many(
                np.array([release.vocab.user_index(int(user_id))]),
                np.array([release.vocab.item_index(int(movie_id))]),
            )[0]
            assert body["estimate"] == "full"
            assert body["rating"] == pytest.approx(float(want), abs=1e-4)
            assert model.scale[0] <= body["rating"] <= model.scale[1]
            assert body["user_id"] == int(user_id) and body["movie_id"] == int(movie_id)
            assert body["model_version"] == "v0.1"
            assert body["provenance"]["model_name"] == "rating"
            assert body["provenance"]["data_snapshot_id"] == release.manifest["data_snapshot_id"]


def test_unknown_ids_fall_back_to_the_known_biases(served: str, release) -> None:
    model = release.rating
    user_id, movie_id = int(release.vocab.user_ids[0]), int(release.vocab.item_ids[0])
    cases = {
        (user_id, UNKNOWN): ("user_bias_only", model.mu + model.user_bias[0]),
        (UNKNOWN, movie_id): ("item_bias_only", model.mu + model.item_bias[0]),
        (UNKNOWN, UNKNOWN + 1): ("global_mean", model.mu),
    }
    for (u, m), (estimate, raw) in cases.items():
        status, body = get(f"{served}/predict/{u}/{m}")
        assert status == 200, body
        assert body["estimate"] == estimate
        assert body["rating"] == pytest.approx(float(np.clip(raw, *model.scale)), abs=1e-4)


@pytest.mark.parametrize(
    "path",
    [
        "/predict/0/1",
        "/predict/1/0",
        "/predict/-1/1",
        "/predict/1/9223372036854775808",  # 2^63
        "/predict/%D9%A4%D9%A2/1",  # Arabic-Indic digits: not ASCII
        "/predict/%EF%BC%94/1",  # fullwidth 4
        "/predict/1/2%0A",  # trailing newline
        "/predict/1.5/2",
        "/predict/abc/2",
    ],
)
def test_bad_ids_are_422_with_the_error_shape(served: str, path: str) -> None:
    status, body = get(served + path)
    assert status == 422, body
    assert body["error"] == "invalid_request" and body["detail"]


def _publish_with_rating(registry_uri: str, rating: RatingModel | None) -> str:
    """A tiny popularity-only release, with `rating` as its rating part when given."""
    import tempfile
    from pathlib import Path

    from trainer.models import release_format
    from trainer.models.data import Vocab
    from trainer.models.popularity import PopularityScorer

    vocab = Vocab(np.arange(1, 4), np.arange(1, 6))
    scorers = {"popularity": PopularityScorer(np.linspace(1, 0, 5, dtype=np.float32), 3)}
    catalogue = {str(i): {"title": f"Movie {i}", "genres": ""} for i in range(1, 6)}
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        kinds = release_format.stage_release(
            stage, vocab, np.array([0, 1, 2, 3]), np.array([0, 1, 2]), catalogue, scorers
        )
        if rating is not None:
            rating.save(stage / "rating")
            (stage / "rating" / "meta.json").write_text('{"kind": "rating"}')
        manifest = {"kinds": kinds, "git_sha": "t", "data_snapshot_id": "t", "gate": None}
        return Registry.open(registry_uri).publish(stage, manifest)


def test_a_release_without_rating_part_answers_404(tmp_path) -> None:
    registry = (tmp_path / "registry").as_uri()
    _publish_with_rating(registry, None)
    port = free_port()
    proc = start([python(), "-c", _SERVE, registry, str(port)], log=tmp_path / "service.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc)
        status, body = get(f"http://127.0.0.1:{port}/predict/1/1")
        assert status == 404 and body["error"] == "unknown_model", body
    finally:
        stop(proc)


def test_a_rating_part_that_does_not_fit_the_vocabulary_is_refused(tmp_path) -> None:
    registry = (tmp_path / "registry").as_uri()
    wrong = RatingModel(3.5, np.zeros(3), np.zeros(4), np.zeros((3, 2)), np.zeros((4, 2)), (1, 5))
    version = _publish_with_rating(registry, wrong)  # 4 items; the vocabulary has 5
    with pytest.raises(ReleaseInvalid, match="rating part"):
        load_release(Registry.open(registry), version)
