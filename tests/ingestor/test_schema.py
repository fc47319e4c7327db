from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.schema import (
    Catalogue,
    DeadLetter,
    RateEvent,
    RecoResponseEvent,
    WatchEvent,
    parse_event,
    slug,
)

CATALOGUE = Catalogue(
    {54: "Ghostbusters (1984)", 3273: "Incredibles, The (2004)", 7: "Amélie (2001)"}
)
TS = 1763650561609


def test_valid_json_events() -> None:
    rate = parse_event(
        "rate", json.dumps({"user_id": 54, "movie_id": 3273, "rating": 4, "ts": TS}).encode()
    )
    assert isinstance(rate, RateEvent) and rate.rating == 4.0 and rate.ts == TS
    iso = parse_event(
        "watch", b'{"user_id": 1, "movie_id": 2, "minute": 5, "ts": "2022-03-18T06:12:47Z"}'
    )
    assert isinstance(iso, WatchEvent) and iso.ts == 1647583967000
    naive = parse_event(
        "watch", b'{"user_id": 1, "movie_id": 2, "minute": 5, "ts": "2022-03-18T06:12:47"}'
    )
    assert naive.ts == iso.ts
    resp = parse_event(
        "reco_responses",
        json.dumps(
            {
                "user_id": 3,
                "items": [1, 2],
                "model": "als",
                "version": "v0.1",
                "arm": None,
                "latency_ms": 1.5,
                "request_id": "r",
                "ts": TS,
                "fallback": None,
            }
        ).encode(),
    )
    assert isinstance(resp, RecoResponseEvent) and resp.items == [1, 2]


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4.3, "ts": TS}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 5.5, "ts": TS}, "schema"),
    ("rate", {"user_id": 0, "movie_id": 2, "rating": 4, "ts": TS}, "schema"),
    ("rate", {"user_id": -1, "movie_id": 2, "rating": 4, "ts": TS}, "schema"),
    ("rate", {"user_id": "1", "movie_id": 2, "rating": 4, "ts": TS}, "schema"),
    ("rate", {"user_id": True, "movie_id": 2, "rating": 4, "ts": TS}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": 4102444800000}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": 5}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": True}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": 1763650561609.5}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": "2100-01-01T00:00:00Z"}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": "1990-01-01T00:00:00"}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": "yesterday"}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": "2022-03-18" * 5}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4}, "schema"),
    ("rate", {"user_id": 1, "movie_id": 2, "rating": 4, "ts": TS, "extra": 1}, "schema"),
    ("watch", {"user_id": 1, "movie_id": 2, "minute": -1, "ts": TS}, "schema"),
    ("nonsense", {"user_id": 1}, "unknown_topic_format"),
])  # fmt: skip
def test_invalid_json_events_are_dead_letters(topic: str, payload: dict, reason: str) -> None:
    result = parse_event(topic, json.dumps(payload).encode())
    assert isinstance(result, DeadLetter) and result.reason == reason, result


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "bad_json"), (b"\xff\xfe\x00", "not_utf8"), (b"x" * 70_000, "oversized"),
    (b"", "unparseable"), (b"hello", "unparseable"), (b"[1, 2]", "unparseable"),
    (b'{"user_id": 1e999}', "schema"),
])  # fmt: skip
def test_hostile_bytes_are_dead_letters(raw: bytes, reason: str) -> None:
    result = parse_event("rate", raw)
    assert isinstance(result, DeadLetter) and result.reason == reason


def test_course_stream_log_lines() -> None:
    watch = parse_event(
        "watch", b"2022-03-18T06:12:47,326332,GET /data/m/ghostbusters+1984/54.mpg", CATALOGUE
    )
    assert isinstance(watch, WatchEvent)
    assert (watch.user_id, watch.movie_id, watch.minute) == (326332, 54, 54)
    rate = parse_event(
        "rate", b"2022-03-18T05:53:29,162591,GET /rate/the+incredibles+2004=4", CATALOGUE
    )
    assert isinstance(rate, RateEvent) and (rate.movie_id, rate.rating) == (3273, 4.0)
    reco = parse_event(
        "reco_responses",
        b"2022-03-18T05:53:30,162591,recommendation request "
        b"17645-team05.isri.cmu.edu:8082, status 200, result: 3273, 54, 7, 45 ms",
    )
    assert isinstance(reco, RecoResponseEvent)
    assert reco.items == [3273, 54, 7] and reco.status == 200 and reco.latency_ms == 45


def test_log_line_failures_say_why() -> None:
    unknown = parse_event(
        "watch", b"2022-03-18T06:12:47,1,GET /data/m/not+a+movie+1999/3.mpg", CATALOGUE
    )
    assert isinstance(unknown, DeadLetter) and unknown.reason == "unknown_movie"
    no_cat = parse_event("watch", b"2022-03-18T06:12:47,1,GET /data/m/ghostbusters+1984/3.mpg")
    assert no_cat.reason == "no_catalogue"
    wrong_topic = parse_event(
        "rate", b"2022-03-18T06:12:47,1,GET /data/m/ghostbusters+1984/3.mpg", CATALOGUE
    )
    assert wrong_topic.reason == "unparseable"
    bad_rating = parse_event(
        "rate", b"2022-03-18T05:53:29,1,GET /rate/ghostbusters+1984=7", CATALOGUE
    )
    assert bad_rating.reason == "schema"
    future = parse_event("rate", b"2100-01-01T00:00:00,1,GET /rate/ghostbusters+1984=4", CATALOGUE)
    assert future == DeadLetter("schema", "ts: more than a day in the future")


def test_slugs() -> None:
    assert slug("Incredibles, The (2004)") == "the+incredibles+2004"
    assert slug("Ghostbusters (1984)") == "ghostbusters+1984"
    assert slug("Schindler's List (1993)") == "schindlers+list+1993"
    assert CATALOGUE.resolve("ghostbusters+1984") == 54


@given(
    st.binary(max_size=300),
    st.sampled_from(["rate", "watch", "reco_requests", "reco_responses", "x"]),
)
def test_parse_never_raises(raw: bytes, topic: str) -> None:
    parse_event(topic, raw, CATALOGUE)
