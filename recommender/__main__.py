"""`python -m recommender --registry URI [--host H --port P]`: serve a release over HTTP."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from recommender.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recommender", description=__doc__)
    parser.add_argument(
        "--registry", help="file:///abs/path, s3://bucket/prefix (env REC_REGISTRY)"
    )
    parser.add_argument("--host", help="bind address (env REC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env REC_PORT, default 8080)")
    parser.add_argument("--version", dest="release", help="serve this release (env REC_VERSION)")
    parser.add_argument(
        "--experiment-file", help="A/B experiment, JSON or YAML (env REC_EXPERIMENT_FILE)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    overrides = {
        "registry": args.registry,
        "host": args.host,
        "port": args.port,
        "version": args.release,
        "experiment_file": args.experiment_file,
    }
    try:
        settings = ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from model_registry.logs import configure_logging
    from recommender.app import create_app

    configure_logging(settings.log_level, quiet=("kafka",))
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop=settings.loop,
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
