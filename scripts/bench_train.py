"""Training at scale: wall time and peak RSS per kind and for a whole release.

    python scripts/bench_train.py [--ml100k DIR] [--sizes 1000000,10000000] [--kinds ...]
        [--per-kind ml-100k,synthetic-1000000] [--out benchmarks/results/train_scale.json]

Each measurement runs `python -m trainer train` in a child process (its own peak RSS, read from
the OS after it exits, through a small wrapper so that it does not inherit this process's; the
JSON is rewritten after every run) on ML-100K and on synthetic MovieLens-shaped data generated
here: power-law item popularity (Zipf, exponent 0.7), genres, users drawn from taste clusters
(the latent structure a personalised model can find), MovieLens' rating-value mix and time
spread. The generator is also what the retrain tests use
for MovieLens-shaped folders (`synthetic`, `write_ml100k`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
RATING_MIX = np.array([0.06, 0.11, 0.27, 0.34, 0.22])  # ML-100K's share of 1..5 stars
T0 = 880_000_000  # seconds; ML-100K's era
DAY = 86_400


def synthetic(
    n_users: int,
    n_items: int,
    n_ratings: int,
    seed: int = 0,
    clusters: int = 20,
    days: int = 210,
):
    """(ratings, items) DataFrames shaped like MovieLens; ~n_ratings unique (user, item) pairs.

    Each taste cluster weights items by global popularity (Zipf, exponent 0.7) times its
    affinity for the item's genres and a per-cluster item factor, so users of one cluster
    share preferences beyond popularity. Users join at uniform times and rate over ~30 days.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_genres = len(GENRES) - 1
    item_genres = [
        sorted(rng.choice(n_genres, size=rng.integers(1, 4), replace=False) + 1)
        for _ in range(n_items)
    ]
    genre_w = np.zeros((n_items, len(GENRES)))
    for i, gs in enumerate(item_genres):
        genre_w[i, gs] = 1.0 / len(gs)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    popularity = popularity[rng.permutation(n_items)]
    taste = rng.dirichlet(np.full(len(GENRES), 0.2), size=clusters)  # cluster x genre
    factor = rng.lognormal(0.0, 2.0, size=(clusters, n_items))
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    user_cluster = rng.integers(0, clusters, size=n_users)
    weights = []
    for c in range(clusters):
        weight = popularity * (genre_w @ taste[c] + 0.05) * factor[c]
        weights.append(weight / weight.sum())
    mult = 1.1
    for _ in range(4):  # draws repeat (user, item) pairs; draw more until ~n_ratings are unique
        counts = np.maximum(5, np.round(activity / activity.sum() * n_ratings * mult))
        counts = np.minimum(counts, n_items // 2).astype(np.int64)
        users, items = [], []
        for c in range(clusters):
            members = np.flatnonzero(user_cluster == c)
            draws = rng.choice(n_items, size=int(counts[members].sum()), p=weights[c])
            users.append(np.repeat(members, counts[members]))
            items.append(draws)
        pair = np.unique(np.concatenate(users).astype(np.int64) * n_items + np.concatenate(items))
        if pair.size >= 0.97 * n_ratings:
            break
        mult *= n_ratings / pair.size
    user, item = pair // n_items, pair % n_items
    start = rng.uniform(0, days - 30, size=n_users) * DAY
    ts = T0 + start[user] + rng.exponential(7 * DAY, size=user.size).clip(0, 30 * DAY)
    ratings = pd.DataFrame(
        {
            "user_id": user + 1,
            "item_id": item + 1,
            "rating": rng.choice(5, size=user.size, p=RATING_MIX) + 1,
            "timestamp": ts.astype(np.int64),
        }
    )
    items_df = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "title": [f"Movie {i} (1995)" for i in range(1, n_items + 1)],
            "genres": ["|".join(GENRES[g] for g in gs) for gs in item_genres],
        }
    )
    return ratings, items_df


def write_ml100k(folder: Path, ratings, items) -> Path:
    """An ML-100K layout folder (u.data, u.item with the 19 genre flags)."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings[["user_id", "item_id", "rating", "timestamp"]].to_csv(
        folder / "u.data", sep="\t", header=False, index=False
    )
    lines = []
    for item_id, title, genres in items[["item_id", "title", "genres"]].itertuples(index=False):
        names = set(genres.split("|"))
        flags = "|".join("1" if g in names else "0" for g in GENRES)
        lines.append(f"{item_id}|{title}|01-Jan-1995||http://example.invalid/{item_id}|{flags}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    return folder


# "[kind] ..." lines of the pipeline, a kind's own module logging ("trainer.models.ncf ..."),
# and the final "published"
_LINE = re.compile(
    r"^([0-9-]+ [0-9:]+),([0-9]{3}) trainer"
    r"(?:\.models\.(\w+) |(?:\.\w+)? (?:\[(\w+)\]|(published)))"
)


def _kind_walls(log: str) -> dict[str, float]:
    """Seconds per kind inside one whole-release run, from the trainer's log timestamps: from a
    kind's first line to the next kind's first line (the last kind: to "published")."""
    starts: list[tuple[str, float]] = []
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
        name = m[3] or m[4] or "end"
        if all(n != name for n, _ in starts):
            starts.append((name, t))
    return {
        name: round(nxt - t, 1)
        for (name, t), (_, nxt) in itertools.pairwise(starts)
        if name != "end"
    }


def _run(data: Path, kinds: str, registry: str, label: str) -> dict:
    """One `trainer train` in a child process: wall seconds, its peak RSS, per-kind train s."""
    report = Path(tempfile.mkdtemp()) / "report.json"
    cmd = [sys.executable, "-m", "trainer", "train", "--data", str(data), "--registry", registry,
           "--kinds", kinds, "--report", str(report)]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "TRAIN_LOG_LEVEL": "INFO"}
    started = time.perf_counter()
    log = report.with_suffix(".log")
    with log.open("w") as err:
        # Through a small wrapper process: a child forked straight from this one starts with this
        # process's peak RSS (Linux carries it across fork and exec), which after generating 10M
        # synthetic interactions is ~1.4 GB, and every run then reported at least that.
        wrapper = [sys.executable, __file__, _PEAK_RSS_OF, *cmd]
        proc = subprocess.run(
            wrapper, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, check=False
        )
    exit_code, peak_kb = (int(x) for x in proc.stdout.split())
    wall = time.perf_counter() - started
    out = {
        "label": label,
        "kinds": kinds,
        "exit": exit_code,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }
    if exit_code != 0:
        out["stderr_tail"] = log.read_text()[-2000:]
        return out
    out["kind_wall_s"] = _kind_walls(log.read_text())
    rep = json.loads(report.read_text())
    out["metrics"] = {
        k: {m: v["metrics"].get(m) for m in ("ndcg@10", "hr@10", "train_seconds")}
        for k, v in rep["kinds"].items()
    }
    out["params"] = {k: v.get("params") for k, v in rep["kinds"].items()}  # what was chosen
    print(f"  {label} [{kinds}]: {wall:.0f}s, peak {out['peak_rss_mb']} MB", file=sys.stderr)
    return out


_PEAK_RSS_OF = "--peak-rss-of"


def _peak_rss_of(cmd: list[str]) -> int:
    """Run `cmd` (stdout discarded, stderr inherited) and print its exit code and peak RSS in KB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
    print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K folder")
    parser.add_argument("--sizes", default="1000000", help="synthetic interaction counts")
    parser.add_argument("--kinds", default="popularity,itemcf,als,ncf")
    parser.add_argument(
        "--per-kind", default="ml-100k", help="datasets (labels) that also get one run per kind"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train_scale.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        datasets = []
        if args.ml100k:
            datasets.append(("ml-100k", args.ml100k, None))
        for size in [int(s) for s in args.sizes.split(",") if s]:
            n_users = max(1000, size // 140)
            n_items = max(1000, int(10_600 * (size / 7.4e6) ** 0.5))
            started = time.perf_counter()
            ratings, items = synthetic(n_users, n_items, size, seed=0)
            folder = write_ml100k(root / f"syn-{size}", ratings, items)
            shape = {"users": n_users, "items": n_items, "interactions": len(ratings)}
            print(f"generated {shape} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
            datasets.append((f"synthetic-{size}", folder, shape))
        for label, folder, shape in datasets:
            runs: list[dict] = []
            results.append({"dataset": label, "shape": shape, "runs": runs})
            kinds = args.kinds.split(",") if label in args.per_kind.split(",") else []
            for kind in [*kinds, args.kinds]:  # each kind alone (if asked), then the release
                runs.append(_run(folder, kind, (root / f"reg-{label}-{len(runs)}").as_uri(), label))
                _write(args.out, results)  # after every run: a long benchmark keeps what it has
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def machine() -> dict:
    """Where a benchmark ran; a shared machine's load inflates wall times: said, not hidden."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(out: Path, fields: dict) -> None:
    """A benchmark's JSON: where it ran, the command that made it, then its own fields."""
    payload = {"machine": machine(), "command": " ".join(sys.argv), **fields}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")


def _write(out: Path, results: list[dict]) -> None:
    note = (
        "popularity is always trained too (the fallback) and every release has a rating "
        "part; kind_wall_s: seconds per kind inside a whole-release run, from its log"
    )
    write_result(out, {"note": note, "results": results})


if __name__ == "__main__":
    if sys.argv[1:2] == [_PEAK_RSS_OF]:
        raise SystemExit(_peak_rss_of(sys.argv[2:]))
    raise SystemExit(main())
