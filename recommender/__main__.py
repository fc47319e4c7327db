"""`python -m recommender --registry URI [--host H --port P]`: serve a release over HTTP.

The server is uvicorn with httptools, under the transport limits of `recommender.limits` (body,
header size and count, slow clients, keep-alive, connection cap; REC_* settings listed there).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

from pydantic import ValidationError

from model_registry.errors import RegistryError
from model_registry.messages import one_line
from recommender.limits import Limits, LimitSettings
from recommender.settings import ServiceSettings

log = logging.getLogger("recommender")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("rollout", "probe"):  # recommender/cli.py
        from recommender import cli

        return cli.main(argv)
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
        limits = Limits.from_settings(LimitSettings(), settings.max_body_bytes)
    except ValidationError as exc:
        print(f"error: invalid settings: {one_line(exc)}", file=sys.stderr)
        return 2

    import uvicorn

    from model_registry.logs import configure_logging
    from recommender.app import create_app

    configure_logging(settings.log_level, quiet=("kafka",))
    try:
        app = create_app(settings)
    except (ValueError, RegistryError) as exc:  # a bad URI, experiment file, ...: one line
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    _allow_files(limits.max_connections)
    options = limits.uvicorn_options()
    _register_metrics(app, options["http"].stats)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop=settings.loop,
        **options,
    )
    return 0


def _allow_files(max_connections: int) -> None:
    """Raise the open-files limit so the connection cap, not EMFILE, is what refuses clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256  # release files, the registry, logs, the listening socket
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open-files limit %d is below REC_MAX_CONNECTIONS + 256 = %d", target, wanted
            )


def _register_metrics(app: object, stats: object) -> None:
    """The limits' counters beside the service's own metrics, on the same /metrics."""
    service = getattr(getattr(app, "state", None), "service", None)
    telemetry = getattr(service, "telemetry", None)
    if telemetry is not None:
        telemetry.registry.register(stats)


if __name__ == "__main__":
    raise SystemExit(main())
