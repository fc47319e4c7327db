"""The catalogue endpoints and the page's files, through the app (TestClient, real release)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recommender.app import create_app
from recommender.routers.catalogue import catalogue_index, search
from recommender.settings import ServiceSettings

EXPERIMENT = {"salt": "c", "arms": [{"name": "a", "model": "als", "weight": 1}]}


@pytest.fixture(scope="module")
def client(
    synthetic_release: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """A private copy of the registry: the experiment is recorded in its control plane."""
    root = tmp_path_factory.mktemp("catalogue") / "registry"
    shutil.copytree(Path(synthetic_release["registry"].removeprefix("file://")), root)
    app = create_app(ServiceSettings(registry=root.as_uri(), experiment=json.dumps(EXPERIMENT)))
    with TestClient(app) as c:
        yield c


def test_search_is_case_insensitive_most_popular_first_and_bounded(client: TestClient) -> None:
    release = client.app.state.service.pool.current()
    popularity = release.popularity.global_scores()
    body = client.get("/movies", params={"q": "MOVIE 1", "limit": 50}).json()
    ids = [m["movie_id"] for m in body["movies"]]
    # Movie 1 and Movie 10..19: each title once, ordered by popularity (ties: catalogue order)
    assert sorted(ids) == [1, *range(10, 20)]
    scores = [popularity[release.vocab.item_index(i)] for i in ids]
    assert scores == sorted(scores, reverse=True)
    assert body["version"] == "v0.1"
    title = release.titles[release.vocab.item_index(ids[0])]
    assert title == f"Movie {ids[0]} (1990)"  # tests.helpers.write_ml100k: year, no genre
    assert body["movies"][0] == {"movie_id": ids[0], "title": title, "year": 1990, "genres": []}
    assert len(client.get("/movies?q=movie&limit=3").json()["movies"]) == 3
    assert client.get("/movies?q=no+such+title").json()["movies"] == []
    top = client.get("/movies?limit=5").json()["movies"]  # empty query: the most popular
    assert [m["movie_id"] for m in top] == release.vocab.item_ids[
        catalogue_index(release).order[:5]
    ].tolist()


def test_search_never_matches_across_titles(client: TestClient) -> None:
    release = client.app.state.service.pool.current()
    # "0)" ends every title; a needle spanning two titles ("0)m") must find nothing
    assert search(release, "0)m", 50) == [] and search(release, "0)\x00m", 50) == []
    assert len(search(release, "0)", 50)) == 40
    assert catalogue_index(release) is catalogue_index(release)  # built once, kept


def test_lookup_by_ids_skips_unknown_movies(client: TestClient) -> None:
    body = client.get("/movies?ids=3,999999,1").json()
    assert [m["movie_id"] for m in body["movies"]] == [3, 1]


@pytest.mark.parametrize(
    "path",
    [
        "/movies?limit=0",
        "/movies?limit=51",
        "/movies?limit=%2B5",
        "/movies?limit=1_0",
        "/movies?limit=%D9%A1",  # an Arabic-Indic digit: ids and numbers are ASCII
        "/movies?limit=",
        "/movies?q=" + "x" * 101,
        "/movies?q=a%0Ab",
        "/movies?ids=1,,2",
        "/movies?ids=" + ",".join(["1"] * 101),
        "/users/0/history",
        "/users/-1/history",
        "/users/1/history?limit=51",
        "/users/abc/history",
    ],
)
def test_bad_parameters_are_clear_json_errors(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and body["detail"]


def test_known_user_history_and_arm(client: TestClient) -> None:
    release = client.app.state.service.pool.current()
    user_id = int(release.vocab.user_ids[5])
    body = client.get(f"/users/{user_id}/history?limit=5").json()
    seen = set(release.vocab.item_ids[release.seen(release.user_index(user_id))].tolist())
    assert body["known"] and body["total"] == len(seen) == 12
    assert len(body["movies"]) == 5 and {m["movie_id"] for m in body["movies"]} <= seen
    assert body["arm"] == {"name": "a", "model": "als"}
    unknown = client.get("/users/999999/history").json()
    assert not unknown["known"] and unknown["movies"] == [] and unknown["total"] == 0


def test_explanations_over_http(client: TestClient) -> None:
    body = client.get("/recommend/3?model=itemcf&k=4&explain=true").json()
    assert all(r["because"] and "movie_id" in r["because"][0] for r in body["recommendations"])
    plain = client.get("/recommend/3?model=itemcf&k=4").json()
    assert all("because" not in r for r in plain["recommendations"])
    assert plain["items"] == body["items"]
    posted = client.post(
        "/recommend", json={"movie_ids": [2, 4], "model": "popularity", "k": 3, "explain": True}
    ).json()
    assert [r["because"] for r in posted["recommendations"]] == [
        [{"reason": "popular right now: among the most watched movies in this release"}]
    ] * 3


def test_page_and_static_files_are_served_outside_the_schema(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/main.js">' in page.text
    for name in ("main.js", "try.js", "operate.js", "api.js", "dom.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200, name
    for path in ("/static/../app.py", "/static/%2e%2e%2fapp.py", "/static/missing.js"):
        response = client.get(path)
        assert response.status_code == 404 and set(response.json()) == {"error", "detail"}
    paths = client.get("/openapi.json").json()["paths"]
    assert "/movies" in paths and "/users/{user_id}/history" in paths
    assert "/" not in paths and "/static/{name}" not in paths
