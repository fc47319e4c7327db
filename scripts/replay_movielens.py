"""Publish a MovieLens dataset to Kafka as timed watch and rate events (demos, load tests).

Each rating becomes a watch event (the user watched the movie) and then a rate event, at the
rating's timestamp. Events are keyed by user, so one user's events stay in order on one partition.

    python scripts/replay_movielens.py --data ../shared/datasets/ml-100k --brokers 127.0.0.1:9092 \
        [--speedup 0] [--format json|log] [--limit N] [--rate-topic rate] [--watch-topic watch]

--speedup 0 sends as fast as possible; --speedup 3600 plays an hour of history per second.
--format log writes the course-stream lines (`<iso>,<user>,GET /rate/<slug>=<r>`), which the
ingestor resolves through the catalogue.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingestor.schema import slug
from trainer.data import load_movielens


def events(data: Path, fmt: str, limit: int | None):
    """(seconds, user, kind, payload bytes) in time order."""
    dataset = load_movielens(data)
    ratings = dataset.ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    if limit:
        ratings = ratings.head(limit)
    titles = dict(zip(dataset.items["item_id"], dataset.items["title"], strict=True))
    for user, item, rating, ts in ratings[["user_id", "item_id", "rating", "timestamp"]].itertuples(
        index=False
    ):
        user, item, ts = int(user), int(item), int(ts)
        if fmt == "json":
            watch = {"user_id": user, "movie_id": item, "minute": 0, "ts": ts * 1000}
            rate = {"user_id": user, "movie_id": item, "rating": float(rating), "ts": ts * 1000}
            yield ts, user, "watch", json.dumps(watch).encode()
            yield ts, user, "rate", json.dumps(rate).encode()
        else:
            iso = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            name = slug(titles.get(item, ""))
            yield ts, user, "watch", f"{iso},{user},GET /data/m/{name}/0.mpg".encode()
            shown = int(rating) if float(rating).is_integer() else rating
            yield ts, user, "rate", f"{iso},{user},GET /rate/{name}={shown}".encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--format", choices=("json", "log"), default="json")
    parser.add_argument("--speedup", type=float, default=0.0)
    parser.add_argument("--limit", type=int, help="only the first N ratings")
    parser.add_argument("--rate-topic", default="rate")
    parser.add_argument("--watch-topic", default="watch")
    args = parser.parse_args()
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=args.brokers.split(","), linger_ms=20, acks=1, batch_size=256 * 1024
    )
    topics = {"watch": args.watch_topic, "rate": args.rate_topic}
    sent, started, first_ts = 0, time.monotonic(), None
    for ts, user, kind, payload in events(args.data, args.format, args.limit):
        if args.speedup > 0:
            first_ts = ts if first_ts is None else first_ts
            delay = (ts - first_ts) / args.speedup - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
        producer.send(topics[kind], key=str(user).encode(), value=payload)
        sent += 1
        if sent % 50_000 == 0:
            print(f"{sent} events, {sent / (time.monotonic() - started):.0f}/s", file=sys.stderr)
    producer.flush()
    producer.close()
    print(f"sent {sent} events in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
