"""Make MovieLens users behave: ask for recommendations, then watch and rate like they would.

    python scripts/simulate_users.py --url http://127.0.0.1:8080 [--url ...] \
        --brokers 127.0.0.1:9092 --truth data/ml-100k/u.data --holdout-from 890000000 \
        --duration 10m --rate 50 --seed 0

Ground truth is what each user really rated at or after `--holdout-from` (held out from
training): a served item the user rated >= 4 there is watched with probability `--p-hit`
(discounted by rank: `p_hit * rank_decay^(rank-1)`) and rated with its true rating with
probability `--p-rate`; besides, every visit emits a background watch of a random catalogue item
with probability `--p-background` (users also find things without us). Events go to the `watch`
and `rate` topics as JSON with the event time of the visit (plus a few seconds), so the KPI job
sees hits only when the served model ranks what users really like. Same seed, same users, same
choices. Prints a JSON summary (requests and events per arm) at the end or on SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from model_registry.durations import duration


def read_ratings(path: Path) -> list[tuple[int, int, float, int]]:
    """(user, item, rating, unix ts) rows of a u.data-style file (tab or comma separated)."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.replace(",", "\t").split("\t")
        if len(parts) >= 4 and parts[0].strip().isdigit():
            rows.append((int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3])))
    return rows


def split(
    rows: list[tuple[int, int, float, int]], holdout_from: int, holdout_last: float
) -> tuple[list, list]:
    """(train, truth): ratings at or after `holdout_from`, or each user's latest
    `holdout_last` share of ratings (every user stays known to the model), are the truth."""
    if not holdout_last:
        return [r for r in rows if r[3] < holdout_from], [r for r in rows if r[3] >= holdout_from]
    by_user: dict[int, list] = defaultdict(list)
    for r in rows:
        by_user[r[0]].append(r)
    train, truth = [], []
    for user_rows in by_user.values():
        user_rows.sort(key=lambda r: (r[3], r[1]))
        cut = len(user_rows) - int(len(user_rows) * holdout_last)
        train += user_rows[:cut]
        truth += user_rows[cut:]
    return train, truth


def load_truth(
    path: Path, holdout_from: int, holdout_last: float = 0.0
) -> tuple[dict[int, dict[int, float]], list[int]]:
    """(user -> {movie: rating} held out, every movie id seen)."""
    rows = read_ratings(path)
    truth: dict[int, dict[int, float]] = defaultdict(dict)
    for user, movie, rating, _ts in split(rows, holdout_from, holdout_last)[1]:
        truth[user][movie] = rating
    return dict(truth), sorted({r[1] for r in rows})


def write_train(source: Path, dest: Path, holdout_from: int, holdout_last: float) -> Path:
    """A MovieLens folder with only the training ratings (u.item copied), to train on."""
    dest.mkdir(parents=True, exist_ok=True)
    train, _ = split(read_ratings(source), holdout_from, holdout_last)
    (dest / "u.data").write_text(
        "".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in sorted(train, key=lambda r: r[3]))
    )
    item = source.parent / "u.item"
    if item.is_file():
        (dest / "u.item").write_bytes(item.read_bytes())
    return dest


class Replicas:
    """Keep-alive HTTP connections to each replica, used round robin."""

    def __init__(self, urls: list[str], timeout: float = 5.0) -> None:
        self.targets = [urlparse(u) for u in urls]
        self.conns: list[http.client.HTTPConnection | None] = [None] * len(urls)
        self.timeout = timeout
        self.next = 0

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        i = self.next = (self.next + 1) % len(self.targets)
        for attempt in (1, 2):  # a connection the server closed is reopened once
            conn = self.conns[i]
            if conn is None:
                t = self.targets[i]
                conn = self.conns[i] = http.client.HTTPConnection(
                    t.hostname, t.port, timeout=self.timeout
                )
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                body = response.read()
                return response.status, json.loads(body) if body else None
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                self.conns[i] = None
                if attempt == 2:
                    return 0, None
        return 0, None


class JsonProducer:
    """kafka-python's producer, given JSON-encoded values."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    def send(self, topic: str, value: dict[str, Any]) -> None:
        self.producer.send(topic, json.dumps(value).encode())

    def flush(self) -> None:
        self.producer.flush()


def simulate(args: argparse.Namespace, producer: Any, stop: list[bool]) -> dict[str, Any]:
    truth, movies = load_truth(args.truth, args.holdout_from, args.holdout_last)
    users = sorted(u for u, liked in truth.items() if any(r >= 4 for r in liked.values()))
    if args.users:
        users = users[: args.users]
    rng = random.Random(args.seed)
    replicas = Replicas(args.url)
    started = time.monotonic()
    per_arm: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    errors = 0
    sent = 0
    rounds = 0
    while not stop[0] and rounds < args.rounds:
        order = users[:]
        rng.shuffle(order)
        for user in order:
            if stop[0] or time.monotonic() - started >= args.duration:
                stop[0] = True
                break
            if args.rate:
                ahead = started + sent / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            sent += 1
            status, body = replicas.get(f"/recommend/{user}?k={args.k}")
            if status != 200 or not isinstance(body, dict):
                errors += 1
                continue
            arm = body.get("arm") or "none"
            stats = per_arm[arm]
            stats["requests"] += 1
            now_ms = int(time.time() * 1000)
            for rank, item in enumerate(body.get("items") or [], 1):
                rating = truth[user].get(item)
                if rating is None or rating < 4:
                    continue
                if rng.random() < args.p_hit * args.rank_decay ** (rank - 1):
                    ts = now_ms + rng.randrange(1, 5000)
                    producer.send(
                        args.watch_topic,
                        {
                            "user_id": user,
                            "movie_id": item,
                            "minute": rng.randrange(0, 120),
                            "ts": ts,
                        },
                    )
                    stats["watches"] += 1
                    if rng.random() < args.p_rate:
                        producer.send(
                            args.rate_topic,
                            {"user_id": user, "movie_id": item, "rating": rating, "ts": ts + 1},
                        )
                        stats["rates"] += 1
            if rng.random() < args.p_background:
                producer.send(
                    args.watch_topic,
                    {
                        "user_id": user,
                        "movie_id": rng.choice(movies),
                        "minute": 0,
                        "ts": now_ms + 1,
                    },
                )
                stats["background"] += 1
        rounds += 1
    producer.flush()
    return {
        "users": len(users),
        "requests": sent,
        "errors": errors,
        "rounds": rounds,
        "seconds": round(time.monotonic() - started, 1),
        "arms": {arm: dict(s) for arm, s in sorted(per_arm.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", default=[], help="a replica (repeatable)")
    parser.add_argument("--brokers")
    parser.add_argument("--truth", type=Path, required=True, help="u.data-style ratings file")
    parser.add_argument("--holdout-from", type=int, default=0, help="unix ts where truth begins")
    parser.add_argument(
        "--holdout-last", type=float, default=0.0, help="or: each user's latest share (0.2)"
    )
    parser.add_argument(
        "--write-train", type=Path, help="write the training ratings (+ u.item) here and exit"
    )
    parser.add_argument("--users", type=int, default=0, help="at most this many users (0: all)")
    parser.add_argument("--duration", type=duration, default=60.0)
    parser.add_argument("--rounds", type=int, default=1_000_000, help="passes over the users")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s at most (0: as fast)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--p-hit", type=float, default=0.3)
    parser.add_argument("--rank-decay", type=float, default=0.9)
    parser.add_argument("--p-rate", type=float, default=0.5)
    parser.add_argument("--p-background", type=float, default=0.05)
    parser.add_argument("--watch-topic", default="watch")
    parser.add_argument("--rate-topic", default="rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", type=Path, help="also write the summary JSON here")
    args = parser.parse_args(argv)
    if not args.truth.is_file():
        print(f"error: {args.truth}: no such file", file=sys.stderr)
        return 2
    if not 0 <= args.holdout_last < 1:
        print("error: --holdout-last must be in [0, 1)", file=sys.stderr)
        return 2
    if args.write_train:
        print(write_train(args.truth, args.write_train, args.holdout_from, args.holdout_last))
        return 0
    if not args.url or not args.brokers:
        print("error: --url and --brokers are required to simulate", file=sys.stderr)
        return 2
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(
            bootstrap_servers=args.brokers.split(","),
            linger_ms=20,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as exc:
        print(f"error: cannot reach Kafka at {args.brokers}: {exc}", file=sys.stderr)
        return 1
    stop = [False]

    def on_signal(*_: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    summary = simulate(args, JsonProducer(producer), stop)
    producer.close(timeout=10)
    text = json.dumps(summary)
    print(text, flush=True)
    if args.summary:
        args.summary.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
