"""Event schemas and the one parser every message goes through.

A message is JSON (one of the strict models below) or a plain-text log line as MovieLens-style
course streams carry them:

    2022-03-18T06:12:47,326332,GET /data/m/ghostbusters+1984/54.mpg          -> watch
    2022-03-18T05:53:29,162591,GET /rate/the+incredibles+2004=4              -> rate
    2022-03-18T05:53:30,162591,recommendation request host, status 200, result: 1, 2, 3, 45 ms
                                                                              -> reco_response

`parser_for(kind)` (and `parse_event`, its one-message form) never raises for bad data: it
returns a `DeadLetter` with the reason instead. It also applies the one rule that moves with the
clock, "ts not more than a day ahead", which the models cannot hold as a fixed bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift; a day ahead is still plausible, a year is not
MIN_TS_MS = 789_652_800_000  # 1995-01-09, before MovieLens' first rating
PositiveId = Annotated[int, Field(ge=1, le=2**63 - 1, strict=True)]


def _iso_to_epoch_ms(value: str) -> int:
    """Epoch milliseconds from ISO-8601; a time without a zone is UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ms = int(parsed.timestamp() * 1000)
    if ms < MIN_TS_MS:
        raise ValueError("ts is before 1995")
    return ms


# Epoch milliseconds, checked by pydantic-core itself (no Python call on this once-per-event
# path: a field validator cost ~0.4 us of a ~2 us validation), or an ISO-8601 string. The upper
# bound moves with the clock, so the parser checks it (`parser_for`), not the model.
EpochMs = (
    Annotated[int, Field(strict=True, ge=MIN_TS_MS)]
    | Annotated[str, Field(max_length=40), AfterValidator(_iso_to_epoch_ms)]
)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: PositiveId
    ts: EpochMs


class RateEvent(_Event):
    kind: Literal["rate"] = "rate"
    movie_id: PositiveId
    # 0.5 to 5 in half steps, checked by pydantic-core itself (no Python call per event)
    rating: Annotated[float, Field(ge=0.5, le=5.0, multiple_of=0.5)]


class WatchEvent(_Event):
    kind: Literal["watch"] = "watch"
    movie_id: PositiveId
    minute: Annotated[int, Field(ge=0, le=100_000, strict=True)]


class RecoRequestEvent(_Event):
    kind: Literal["reco_request"] = "reco_request"
    k: Annotated[int, Field(ge=1, le=1000, strict=True)] = 10
    request_id: str | None = Field(default=None, max_length=128)


class RecoResponseEvent(_Event):
    """What the recommender publishes to `reco_responses` (README, "Answers to Kafka")."""

    kind: Literal["reco_response"] = "reco_response"
    user_id: PositiveId | None = None  # anonymous (POST /recommend) answers have none
    items: list[PositiveId] = Field(max_length=1000)
    model: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=32)
    arm: str | None = Field(default=None, max_length=64)
    fallback: str | None = Field(default=None, max_length=32)
    latency_ms: float | None = Field(default=None, ge=0)
    request_id: str | None = Field(default=None, max_length=128)
    status: int | None = Field(default=None, ge=100, le=599)
    probe: bool = False  # a synthetic probe's answer: kept, but out of arm counts and KPIs


class ProbeEvent(_Event):
    """One synthetic probe of the serving API (`python -m recommender probe`)."""

    kind: Literal["reco_probe"] = "reco_probe"
    url: str = Field(max_length=2048)
    model: str | None = Field(default=None, max_length=64)
    status: int | None = Field(default=None, ge=0, le=599)  # 0: no answer at all
    latency_ms: float = Field(ge=0)
    ok: bool
    reason: str | None = Field(default=None, max_length=64)
    items: list[PositiveId] = Field(default_factory=list, max_length=1000)
    version: str | None = Field(default=None, max_length=32)
    arm: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=128)


Event = RateEvent | WatchEvent | RecoRequestEvent | RecoResponseEvent | ProbeEvent
MODELS: dict[str, type[BaseModel]] = {
    "rate": RateEvent,
    "watch": WatchEvent,
    "reco_requests": RecoRequestEvent,
    "reco_responses": RecoResponseEvent,
    "reco_probes": ProbeEvent,
}


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # a short stable code, counted per reason
    detail: str


class Catalogue:
    """Resolves course-stream movie slugs ('the+incredibles+2004') to MovieLens ids."""

    def __init__(self, titles: dict[int, str]) -> None:
        self._by_slug: dict[str, int] = {}
        for movie_id, title in titles.items():
            self._by_slug.setdefault(slug(title), movie_id)

    def resolve(self, text: str) -> int | None:
        return self._by_slug.get(_normalise_slug(text))

    def __len__(self) -> int:
        return len(self._by_slug)


_TITLE = re.compile(r"^(?P<name>.*?)\s*\((?P<year>\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(?P<rest>.*),\s*(?P<article>the|a|an|les|la|le|il|das|der|die|el)$", re.I)


def slug(title: str) -> str:
    """'Incredibles 2, The (2004)' -> 'the+incredibles+2+2004' (course-stream style)."""
    match = _TITLE.match(title.strip())
    name, year = (match.group("name"), match.group("year")) if match else (title, "")
    article = _ARTICLE.match(name)
    if article:
        name = f"{article.group('article')} {article.group('rest')}"
    return _normalise_slug(f"{name} {year}")


def _normalise_slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))
    return "+".join(words)


_LOG = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T[\d:.]+),(?P<user>\d{1,19}),(?P<rest>.*)$")
_WATCH = re.compile(r"^GET /data/m/(?P<slug>[^/]{1,300})/(?P<minute>\d{1,6})\.mpg$")
_RATE = re.compile(r"^GET /rate/(?P<slug>[^=]{1,300})=(?P<rating>\d(?:\.5)?)$")
_RECO = re.compile(
    r"^recommendation request (?P<host>[^,]{1,200}), status (?P<status>\d{3}), "
    r"result: (?P<result>[^,]*(?:, *\d+)*),? (?P<ms>\d+(?:\.\d+)?) ?ms$"
)


Parser = Callable[[bytes], "Event | DeadLetter"]


def parser_for(topic_kind: str, catalogue: Catalogue | None = None) -> Parser:
    """The validating parser for one topic kind (`rate`, `watch`, `reco_requests`,
    `reco_responses`), looked up once per topic rather than once per message."""
    model = MODELS.get(topic_kind)
    if model is None:
        unknown = DeadLetter("unknown_topic_format", f"no schema for topic kind {topic_kind!r}")
        return lambda raw: _oversized(raw) if len(raw) > MAX_MESSAGE_BYTES else unknown
    validate_json = model.__pydantic_validator__.validate_json

    def parse(raw: bytes) -> Event | DeadLetter:
        if len(raw) > MAX_MESSAGE_BYTES:
            return _oversized(raw)
        if raw[:1] == b"{":  # the common case: one pass of pydantic-core's parser + validation
            try:
                event = validate_json(raw)
            except ValidationError as exc:
                return _json_dead_letter(raw, exc)
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return DeadLetter("not_utf8", "message is not UTF-8 text")
            stripped = text.strip()
            if stripped.startswith("{"):
                return parse(stripped.encode())
            event = _parse_log_line(topic_kind, stripped, catalogue)
            if isinstance(event, DeadLetter):
                return event
        if event.ts > time.time() * 1000 + MAX_FUTURE_MS:
            return DeadLetter("schema", "ts: more than a day in the future")
        return event  # type: ignore[no-any-return]

    return parse


def parse_event(
    topic_kind: str, raw: bytes, catalogue: Catalogue | None = None
) -> Event | DeadLetter:
    """Validate one message of a topic kind; never raises for bad data."""
    return parser_for(topic_kind, catalogue)(raw)


def _oversized(raw: bytes) -> DeadLetter:
    return DeadLetter("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")


def _json_dead_letter(raw: bytes, exc: ValidationError) -> DeadLetter:
    kinds = {e["type"] for e in exc.errors()}
    if "json_invalid" in kinds:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return DeadLetter("not_utf8", "message is not UTF-8 text")
        return DeadLetter("bad_json", _short(exc))
    return DeadLetter("schema", _short(exc))


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())[:300]


def _parse_log_line(topic_kind: str, line: str, catalogue: Catalogue | None) -> Event | DeadLetter:
    match = _LOG.match(line)
    if not match:
        return DeadLetter("unparseable", f"neither JSON nor a known log line: {line[:80]!r}")
    common = {"user_id": int(match.group("user")), "ts": match.group("ts")}
    rest = match.group("rest")
    try:
        if (m := _WATCH.match(rest)) and topic_kind == "watch":
            movie = _resolve(m.group("slug"), catalogue)
            if isinstance(movie, DeadLetter):
                return movie
            return WatchEvent(**common, movie_id=movie, minute=int(m.group("minute")))
        if (m := _RATE.match(rest)) and topic_kind == "rate":
            movie = _resolve(m.group("slug"), catalogue)
            if isinstance(movie, DeadLetter):
                return movie
            return RateEvent(**common, movie_id=movie, rating=float(m.group("rating")))
        if (m := _RECO.match(rest)) and topic_kind == "reco_responses":
            items = [int(x) for x in re.findall(r"\d+", m.group("result"))]
            return RecoResponseEvent(
                **common,
                items=items,
                status=int(m.group("status")),
                latency_ms=float(m.group("ms")),
            )
    except ValidationError as exc:
        return DeadLetter("schema", _short(exc))
    return DeadLetter("unparseable", f"not a {topic_kind} log line: {line[:80]!r}")


def _resolve(text: str, catalogue: Catalogue | None) -> int | DeadLetter:
    if catalogue is None:
        return DeadLetter("no_catalogue", "log lines name movies by slug; no catalogue loaded")
    movie = catalogue.resolve(text)
    if movie is None:
        return DeadLetter("unknown_movie", f"slug {text[:80]!r} is not in the catalogue")
    return movie
