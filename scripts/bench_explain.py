"""What `explain=true` costs: /recommend with and without explanations, results as JSON.

Two measurements on the same release:

1. In process, per request: `recommend` alone vs `recommend` + `explain_for_user` for random
   known users, and `recommend_for_history` alone vs + `explain_for_history` for random
   anonymous histories (20 movies), per kind; median and p95 in microseconds.
2. Over HTTP (needs `wrk`): the real service (`python -m recommender`) on a loopback port,
   `GET /recommend/{user}?model=KIND` with and without `&explain=true`, random known users,
   16 connections, each configuration run 3 times (median reported, every run kept). Server and
   wrk are pinned to different CPUs as in scripts/bench_serving.py, whose helpers this reuses.

    python scripts/bench_explain.py --registry file://$PWD/registry \
        --out benchmarks/results/explain.json [--seconds 5] [--kinds itemcf,als]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from bench_serving import free_port, measure, pin, run_wrk, wait_ready  # noqa: E402

from model_registry.registry import Registry  # noqa: E402
from recommender.explain import explain_for_history, explain_for_user  # noqa: E402
from recommender.recommend import recommend, recommend_for_history  # noqa: E402
from recommender.release import load_release  # noqa: E402

KINDS = ("popularity", "itemcf", "als", "ncf")


def _stats(samples_s: list[float]) -> dict:
    us = np.asarray(samples_s) * 1e6
    return {
        "p50_us": round(float(np.median(us)), 1),
        "p95_us": round(float(np.percentile(us, 95)), 1),
    }


def in_process(registry: str, version: str | None, n: int, seed: int) -> dict:
    reg = Registry.open(registry)
    release = load_release(reg, version or reg.latest(), precompute_cells=50_000_000)
    rng = np.random.default_rng(seed)
    users = rng.choice(release.vocab.user_ids, size=n).tolist()
    histories = [
        rng.choice(release.vocab.item_ids, size=20, replace=False).tolist() for _ in range(n)
    ]
    out: dict = {"release": release.version, "n_users": release.vocab.n_users,
                 "n_items": release.vocab.n_items, "requests": n, "kinds": {}}
    for kind in KINDS:
        if kind not in release.scorers:
            continue
        plain, explained, anon, anon_explained = [], [], [], []
        for user, history in zip(users, histories, strict=True):
            start = time.perf_counter()
            answer = recommend(release, user, 10, kind)
            mid = time.perf_counter()
            explain_for_user(release, kind, user, answer)
            end = time.perf_counter()
            plain.append(mid - start)
            explained.append(end - start)
            weights = [1.0] * len(history)
            start = time.perf_counter()
            answer = recommend_for_history(release, history, weights, 10, kind)
            mid = time.perf_counter()
            explain_for_history(release, kind, history, weights, answer)
            end = time.perf_counter()
            anon.append(mid - start)
            anon_explained.append(end - start)
        row = {
            "known_user": {"plain": _stats(plain), "explain": _stats(explained)},
            "history_20": {"plain": _stats(anon), "explain": _stats(anon_explained)},
        }
        for case in row.values():
            case["added_p50_us"] = round(case["explain"]["p50_us"] - case["plain"]["p50_us"], 1)
        out["kinds"][kind] = row
        print(
            f"in-process {kind:<10} known user p50 {row['known_user']['plain']['p50_us']:>7.1f} -> "
            f"{row['known_user']['explain']['p50_us']:>7.1f} us; history(20) p50 "
            f"{row['history_20']['plain']['p50_us']:>7.1f} -> "
            f"{row['history_20']['explain']['p50_us']:>7.1f} us",
            flush=True,
        )
    return out


def over_http(registry: str, kinds: list[str], seconds: int, users: int, tmp: Path) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "REC_LOG_LEVEL": "WARNING"}
    log = (tmp / "service.log").open("wb")
    proc = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "recommender", "--registry", registry, "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(f"{base}/readyz", proc)
        with urllib.request.urlopen(f"{base}/readyz") as resp:
            ready = json.loads(resp.read())
        run_wrk(base, "/healthz", users, 16, 2, tmp)  # warm-up
        out: dict = {"release": ready["version"], "connections": 16, "kinds": {}}
        for kind in [k for k in kinds if k in ready["models"]]:
            row = {}
            for label, suffix in (("plain", ""), ("explain", "&explain=true")):
                path = f"/recommend/%d?k=10&model={kind}{suffix}"
                row[label] = measure(base, path, users, 16, seconds, tmp)
            row["throughput_ratio"] = round(
                row["explain"]["req_per_s"] / row["plain"]["req_per_s"], 3
            )
            out["kinds"][kind] = row
            print(
                f"http {kind:<10} {row['plain']['req_per_s']:>7.1f} -> "
                f"{row['explain']['req_per_s']:>7.1f} req/s ({row['throughput_ratio']:.0%}); "
                f"p50 {row['plain']['p50_ms']:.2f} -> {row['explain']['p50_ms']:.2f} ms; "
                f"p99 {row['plain']['p99_ms']:.2f} -> {row['explain']['p99_ms']:.2f} ms; "
                f"errors {row['plain']['errors'] + row['explain']['errors']}",
                flush=True,
            )
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", required=True, help="registry with an ML-100K release")
    parser.add_argument("--version", help="release to measure (default: the newest)")
    parser.add_argument("--out", default="benchmarks/results/explain.json")
    parser.add_argument("--requests", type=int, default=500, help="in-process requests per kind")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run; each config runs 3x")
    parser.add_argument("--kinds", default="itemcf,als", help="kinds measured over HTTP")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result: dict = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        # other work on the machine shows in these figures: the load average says how much
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "in_process": in_process(args.registry, args.version, args.requests, args.seed),
    }
    if shutil.which("wrk"):
        with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
            users = result["in_process"]["n_users"]
            result["http"] = over_http(
                args.registry, args.kinds.split(","), args.seconds, users, Path(tmp)
            )
    else:
        result["http"] = None
        print("wrk not found (apt-get install wrk): HTTP phase skipped", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
