"""Serving benchmark: the real service on a loopback port, driven by wrk, results as JSON.

For each catalogue (the ML-100K release you give, and a synthetic 27k-item one built here) and
each serving mode it starts `python -m recommender`, measures /healthz as the floor, then
/recommend for each model at 16 and 64 connections, random users, for a fixed time; wrk reports
req/s, p50/p95/p99 and errors (non-2xx and socket errors). Modes: `precomputed` (the default:
known users' top lists computed at release load) and `on_the_fly` (REC_PRECOMPUTE_MAX_CELLS=0:
every request scores the whole catalogue), so the cost growth with catalogue size stays visible.

    python scripts/bench_serving.py --registry file://$PWD/registry \
        --out benchmarks/results/serving.json [--seconds 10] [--models als,ncf,itemcf,popularity]

With `--against OTHER_CHECKOUT` it instead runs this tree and the other side by side, interleaved
rounds of /healthz and /recommend (`--out benchmarks/results/serving_ab.json`): the honest way to
see whether a change cost throughput on a VM whose host steals CPU.

Needs `wrk` (Debian package wrk). Only ever targets 127.0.0.1. With two or more CPUs the server
is pinned to CPU 0 and wrk to CPU 1 (taskset), so the load generator does not steal the server's
core: unpinned, the scheduler now and then puts both on one core and p99 at 64 connections
jumps from ~16 ms to ~90 ms while p50 and throughput barely move.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LUA = """
local users = %(users)d
local path = "%(path)s"
request = function()
  if path == "/healthz" then return wrk.format("GET", path) end
  return wrk.format("GET", string.format(path, math.random(1, users)))
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
               + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %%d, "seconds": %%.3f, "errors": %%d, "non2xx": %%d, '
    .. '"p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f}\\n',
    summary.requests, summary.duration / 1e6, errors, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout}s")


def pin(cpu: int) -> list[str]:
    """taskset prefix for one CPU, when there are two to separate server and load generator."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def run_wrk(base: str, path: str, users: int, connections: int, seconds: int, tmp: Path) -> dict:
    script = tmp / "bench.lua"
    script.write_text(LUA % {"users": users, "path": path})
    out = subprocess.run(
        [
            *pin(1),
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            base,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    result["req_per_s"] = round(result["requests"] / result["seconds"], 1)
    return result


REPEATS = 3


def measure(base: str, path: str, users: int, connections: int, seconds: int, tmp: Path) -> dict:
    """REPEATS runs; the reported figures are each one's median, every run is kept.

    Single runs on this VM are noisy in the tail: the server's own histogram shows every request
    handled in under 2.5 ms while wrk now and then sees stalls of 100-300 ms from outside the
    process, which lands in p99 in some runs and not in others.
    """
    runs = [run_wrk(base, path, users, connections, seconds, tmp) for _ in range(REPEATS)]
    out: dict = {"runs": runs}
    for key in ("req_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"):
        out[key] = sorted(r[key] for r in runs)[len(runs) // 2]
    out["errors"] = sum(r["errors"] for r in runs)
    out["non2xx"] = sum(r["non2xx"] for r in runs)
    return out


def synthetic_registry(root: Path, n_users: int, n_items: int, seed: int = 0) -> str:
    """A release with random ALS factors and NCF weights over a large catalogue.

    Serving cost depends on shapes, not on what the numbers mean, so this isolates how latency
    grows with the catalogue. Built through the release format (tests.helpers.build_release).
    """
    from tests.helpers import build_release

    uri = (root / "registry").as_uri()
    build_release(
        uri, n_users, n_items, seed, kinds=("popularity", "als", "ncf"), per_user=50, als_factors=32
    )
    return uri


MODES = {"precomputed": {}, "on_the_fly": {"REC_PRECOMPUTE_MAX_CELLS": "0"}}


def bench_catalogue(
    name: str, registry: str, models: list[str], seconds: int, tmp: Path, mode: str
) -> dict:
    proc, base = start_service(REPO, registry, tmp, MODES[mode])
    try:
        with urllib.request.urlopen(f"{base}/readyz") as resp:
            ready = json.loads(resp.read())
        with urllib.request.urlopen(f"{base}/releases") as resp:
            memory = {r["version"]: r["memory_bytes"] for r in json.loads(resp.read())["loaded"]}
        users = 943 if name == "ml-100k" else 1000
        out: dict = {"release": ready["version"], "memory_bytes": memory, "runs": {}}
        run_wrk(base, "/healthz", users, 16, 2, tmp)  # warm-up
        for connections in (16, 64):
            key = f"c{connections}"
            out["runs"][key] = {
                "healthz": measure(base, "/healthz", users, connections, seconds, tmp)
            }
            floor = out["runs"][key]["healthz"]["req_per_s"]
            for model in [m for m in models if m in ready["models"]]:
                r = measure(
                    base, f"/recommend/%d?k=10&model={model}", users, connections, seconds, tmp
                )
                r["share_of_healthz"] = round(r["req_per_s"] / floor, 3)
                out["runs"][key][model] = r
                print(
                    f"{name} {mode} c={connections} {model:<10} {r['req_per_s']:>8.1f} req/s "
                    f"p50 {r['p50_ms']:.2f} p95 {r['p95_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
                    f"errors {r['errors']} ({r['share_of_healthz']:.0%} of /healthz "
                    f"{floor:.0f})",
                    flush=True,
                )
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def start_service(tree: Path, registry: str, tmp: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`python -m recommender` from the checkout `tree`, pinned to CPU 0; (process, base URL)."""
    port = free_port()
    log = (tmp / f"{tree.name}-{port}.log").open("wb")
    proc = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "recommender", "--registry", registry, "--port", str(port)],
        cwd=tree,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "REC_LOG_LEVEL": "WARNING", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/readyz", proc)
    return proc, base


def compare(args: argparse.Namespace) -> int:
    """This tree against another checkout (`--against`), interleaved: on a VM whose host steals
    CPU now and then, only runs taken side by side say whether a change cost throughput."""
    trees = {"this": REPO, "against": Path(args.against).resolve()}
    paths = {
        "healthz": "/healthz",
        **{m: f"/recommend/%d?k=10&model={m}" for m in args.models.split(",")},
    }
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp_name:
        tmp = Path(tmp_name)
        procs = {name: start_service(tree, args.registry, tmp, {}) for name, tree in trees.items()}
        try:
            for _, base in procs.values():
                run_wrk(base, "/healthz", 943, 16, 2, tmp)  # warm-up
            for i in range(args.rounds):
                order = list(procs) if i % 2 == 0 else list(reversed(procs))
                row: dict = {}
                for name in order:
                    base = procs[name][1]
                    for label, path in paths.items():
                        r = run_wrk(base, path, 943, 16, args.seconds, tmp)
                        row[f"{name} {label}"] = r["req_per_s"]
                print(json.dumps(row), flush=True)
                rounds.append(row)
        finally:
            for proc, _ in procs.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    summary = {}
    for label in paths:
        this = sorted(r[f"this {label}"] for r in rounds)[len(rounds) // 2]
        other = sorted(r[f"against {label}"] for r in rounds)[len(rounds) // 2]
        summary[label] = {
            "this_median": this,
            "against_median": other,
            "ratio": round(this / other, 3),
        }
    out = {
        "against": str(trees["against"]),
        "method": f"{args.rounds} interleaved rounds, wrk 1 thread 16 connections {args.seconds}s "
        "per run, both services up, server on CPU 0 and wrk on CPU 1",
        "rounds": rounds,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", required=True, help="registry with an ML-100K release")
    parser.add_argument("--out", default="benchmarks/results/serving.json")
    parser.add_argument("--seconds", type=int, default=5, help="per run; each config runs 3x")
    parser.add_argument("--models", default="als,ncf,itemcf,popularity")
    parser.add_argument("--catalogue-items", type=int, default=27_000)
    parser.add_argument("--against", help="another checkout: compare with it, interleaved")
    parser.add_argument("--rounds", type=int, default=6, help="with --against")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.against:
        return compare(args)
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        synthetic = synthetic_registry(tmp / "synthetic", 1000, args.catalogue_items)
        catalogues = {"ml-100k": args.registry, f"synthetic-{args.catalogue_items}": synthetic}
        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "server": "uvicorn, 1 worker, asyncio + httptools under recommender.limits' "
            "protocol (body/header/time/connection limits), orjson; wrk 1 thread, same host",
            "pinning": "server on CPU 0, wrk on CPU 1" if pin(0) else "none",
            "seconds_per_run": args.seconds,
            "repeats": REPEATS,
            "catalogues": {
                name: {
                    mode: bench_catalogue(name, uri, models, args.seconds, tmp, mode)
                    for mode in MODES
                }
                for name, uri in catalogues.items()
            },
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
