"""Parquet snapshots on a BlobStore, under keys that depend only on what they hold.

For one flushed batch of a topic partition covering offsets [first, last]:

    snapshots/<topic>/date=YYYY-MM-DD/part-<p>-<first>-<last>.parquet   valid events (if any)
    dlq/<topic>/part-<p>-<first>-<last>.jsonl                          dead letters (if any)
    ranges/<topic>/part-<p>-<first>-<last>                             written LAST: "durable"

The range marker is the store-side commit point. After a crash, offsets inside a marked range are
already durable and are skipped, so a replay never writes a second file for the same events;
offsets after the last marker are rewritten under the same keys. Offsets are zero-padded so keys
sort numerically.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from model_registry.storage import BlobStore

_OFFSET_WIDTH = 20
_RANGE = re.compile(r"^ranges/(?P<topic>[^/]+)/part-(?P<p>\d+)-(?P<first>\d+)-(?P<last>\d+)$")
_SNAPSHOT = re.compile(
    r"^snapshots/(?P<topic>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})/"
    r"part-(?P<p>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$"
)
COLUMNS = {
    "topic": pa.string(),
    "partition": pa.int32(),
    "offset": pa.int64(),
    "kind": pa.string(),
    "user_id": pa.int64(),
    "movie_id": pa.int64(),
    "rating": pa.float32(),
    "minute": pa.int32(),
    "ts": pa.int64(),
    "payload": pa.string(),
}


@dataclass(slots=True)
class Row:
    """One valid event with where it came from, and its JSON text (the validated message itself,
    or the event serialised when it arrived as a log line)."""

    topic: str
    partition: int
    offset: int
    event: Any  # a pydantic event model
    payload: str


@dataclass(slots=True)
class DeadRow:
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    raw: bytes


def _span(partition: int, first: int, last: int) -> str:
    return f"part-{partition:05d}-{first:0{_OFFSET_WIDTH}d}-{last:0{_OFFSET_WIDTH}d}"


def snapshot_key(topic: str, partition: int, first: int, last: int, first_ts_ms: int) -> str:
    day = datetime.fromtimestamp(first_ts_ms / 1000, UTC).strftime("%Y-%m-%d")
    return f"snapshots/{topic}/date={day}/{_span(partition, first, last)}.parquet"


def to_parquet(rows: Sequence[Row]) -> bytes:
    # Event fields via __dict__: a pydantic model's getattr() of a field it lacks goes through a
    # slow exception path, and this runs once per event per column.
    fields = [r.event.__dict__ for r in rows]
    table = pa.table(
        {
            "topic": [r.topic for r in rows],
            "partition": [r.partition for r in rows],
            "offset": [r.offset for r in rows],
            "kind": [f["kind"] for f in fields],
            "user_id": [f["user_id"] for f in fields],
            "movie_id": [f.get("movie_id") for f in fields],
            "rating": [f.get("rating") for f in fields],
            "minute": [f.get("minute") for f in fields],
            "ts": [f["ts"] for f in fields],
            "payload": [r.payload for r in rows],
        },
        schema=pa.schema(COLUMNS),
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def dead_letters_jsonl(rows: Sequence[DeadRow]) -> bytes:
    lines = []
    for r in rows:
        try:
            raw, encoding = r.raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw, encoding = base64.b64encode(r.raw).decode(), "base64"
        lines.append(
            json.dumps(
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "reason": r.reason,
                    "detail": r.detail,
                    "raw": raw,
                    "raw_encoding": encoding,
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def write_batch(
    store: BlobStore,
    topic: str,
    partition: int,
    first: int,
    last: int,
    rows: Sequence[Row],
    dead: Sequence[DeadRow],
) -> list[str]:
    """Write one batch's files and then its range marker; returns the keys written."""
    keys = []
    if rows:
        key = snapshot_key(topic, partition, first, last, rows[0].event.ts)
        store.put(key, to_parquet(rows))
        keys.append(key)
    if dead:
        key = f"dlq/{topic}/{_span(partition, first, last)}.jsonl"
        store.put(key, dead_letters_jsonl(dead))
        keys.append(key)
    marker = f"ranges/{topic}/{_span(partition, first, last)}"
    store.put(marker, json.dumps({"valid": len(rows), "dead": len(dead), "files": keys}).encode())
    return [*keys, marker]


def durable_ranges(store: BlobStore, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Per partition, the offset ranges already made durable, sorted."""
    out: dict[int, list[tuple[int, int]]] = {}
    for key in store.list(f"ranges/{topic}/"):
        m = _RANGE.match(key)
        if m:
            out.setdefault(int(m["p"]), []).append((int(m["first"]), int(m["last"])))
    for ranges in out.values():
        ranges.sort()
    return out


@dataclass(frozen=True)
class SnapshotFile:
    key: str
    topic: str
    date: str
    partition: int
    first: int
    last: int


def list_snapshots(
    store: BlobStore, topic: str | None = None, since: str | None = None, until: str | None = None
) -> list[SnapshotFile]:
    """Snapshot files, optionally one topic and dates within [since, until] (YYYY-MM-DD)."""
    files = []
    for key in store.list(f"snapshots/{topic}/" if topic else "snapshots/"):
        m = _SNAPSHOT.match(key)
        if not m or (since and m["date"] < since) or (until and m["date"] > until):
            continue
        files.append(
            SnapshotFile(key, m["topic"], m["date"], int(m["p"]), int(m["first"]), int(m["last"]))
        )
    return files


def snapshot_id(store: BlobStore, files: Sequence[SnapshotFile]) -> str:
    """Identity of a window: hash of the sorted keys and their sizes (what a release records)."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.key):
        digest.update(f"{f.key}\t{store.size(f.key)}\n".encode())
    return f"snapshot-{digest.hexdigest()[:16]}"
