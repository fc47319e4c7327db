"""`python -m recommender --registry URI [--host H --port P]`: serve the newest release."""

from __future__ import annotations

import argparse
import logging
import os

from recommender.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recommender", description=__doc__)
    parser.add_argument(
        "--registry", help="file:///abs/path, s3://bucket/prefix (env REC_REGISTRY)"
    )
    parser.add_argument("--host", help="bind address (env REC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env REC_PORT, default 8080)")
    parser.add_argument(
        "--version", dest="release", help="serve this release instead of the newest"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(
        level=os.environ.get("REC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    overrides = {
        k: v
        for k, v in {
            "registry": args.registry,
            "host": args.host,
            "port": args.port,
            "version": args.release,
        }.items()
        if v is not None
    }
    settings = ServiceSettings(**overrides)

    import uvicorn

    from recommender.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
