"""Transport limits: what `python -m recommender` accepts from a client before the app runs.

uvicorn with httptools (llhttp, in C) is the server, as measured in README "Serving speed"; but
neither httptools nor uvicorn bounds header size or count, the time a client may take to send its
headers or body, or the size of a chunked body, and uvicorn's protocol errors answer plain text.
h11, uvicorn's other parser, bounds only one of these (`h11_max_incomplete_event_size`, answered
with a plain-text 400) and parses in pure Python. So we keep httptools and subclass uvicorn's
protocol class (`LimitedHttpToolsProtocol`), which sees every byte as it arrives, before any
parsing into a request:

| limit                | setting (env)              | default | answer                        |
|----------------------|----------------------------|---------|-------------------------------|
| body size            | REC_MAX_BODY_BYTES         | 64 KiB  | 413                           |
| request line+headers | REC_MAX_HEADER_BYTES       | 16 KiB  | 431                           |
| header count         | REC_MAX_HEADERS            | 100     | 431                           |
| headers received in  | REC_HEADER_TIMEOUT_SECONDS | 10 s    | 408 (none if no byte came)    |
| body received in     | REC_BODY_TIMEOUT_SECONDS   | 30 s    | 408                           |
| idle keep-alive      | REC_KEEPALIVE_SECONDS      | 5 s     | none (uvicorn's timer)        |
| open connections     | REC_MAX_CONNECTIONS        | 1000    | 503 at accept                 |
| malformed request    | (llhttp)                   |         | 400                           |

Each of these closes the connection after its answer.

- The body is counted as it streams in, whatever the transfer encoding: a Content-Length over
  the limit is refused when the headers end, a chunked body the moment its running count passes
  the limit, so at most one read (<= 256 KiB) beyond the limit is ever held.
- Every answer above is `{"error": code, "detail": message}` JSON with `connection: close`.
- The connection cap is checked at accept, so a flood of idle sockets costs a refused socket,
  not memory. uvicorn's own `limit_concurrency` stays off: it looks only once headers have
  arrived (no help against slow clients) and answers plain text; the cap here replaces it.
- Slow clients are found by one sweep every `SWEEP_SECONDS` over the open connections (not a
  timer per request, which would cost every request two timer operations), so a deadline fires
  up to SWEEP_SECONDS late.
- Keep-alive: 5 s like uvicorn's default; behind a load balancer, set it above the balancer's
  idle timeout (an AWS ALB's 60 s -> 65 s), or the balancer reuses sockets we just closed.
- Every refusal is counted in `marquee_http_rejected_total{reason}`; open connections are the
  `marquee_http_connections` gauge (`LimitStats`, registered in the app's metrics registry).

A 405's `Allow` header comes from the app (Starlette puts it on the exception; the app's handler
keeps the exception's headers), so nothing here wraps the app.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("recommender.limits")

SWEEP_SECONDS = 0.5
REASONS = (
    "body_too_large",
    "headers_too_large",
    "too_many_headers",
    "header_timeout",
    "body_timeout",
    "idle_timeout",
    "too_many_connections",
    "bad_request",
)


class LimitSettings(BaseSettings):
    """The transport limits' REC_* settings (REC_MAX_BODY_BYTES lives in ServiceSettings)."""

    model_config = SettingsConfigDict(env_prefix="REC_", extra="ignore")

    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=1000)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    keepalive_seconds: int = Field(default=5, ge=1, le=3600)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_seconds: int = 5
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: LimitSettings, max_body_bytes: int) -> Limits:
        return cls(max_body_bytes=max_body_bytes, **settings.model_dump())

    def uvicorn_options(self) -> dict[str, Any]:
        """The uvicorn.Config options these limits decide."""
        return {
            "http": protocol_class(self, LimitStats()),
            "ws": "none",  # no websocket routes: an Upgrade request is plain HTTP
            "timeout_keep_alive": self.keepalive_seconds,
            "limit_concurrency": None,  # replaced by max_connections, checked at accept
            "backlog": min(2048, self.max_connections),
        }


class LimitStats:
    """Refusals by reason and open connections, as a Prometheus collector."""

    def __init__(self) -> None:
        self.rejected: collections.Counter[str] = collections.Counter()
        self.connections: set[Any] = set()  # uvicorn's own set, bound at the first connection

    def collect(self) -> Iterator[Any]:
        rejected = CounterMetricFamily(
            "marquee_http_rejected",
            "Requests and connections refused by the transport limits, by reason",
            labels=["reason"],
        )
        for reason in REASONS:
            rejected.add_metric([reason], self.rejected[reason])
        yield rejected
        yield GaugeMetricFamily(
            "marquee_http_connections", "Open HTTP connections", value=len(self.connections)
        )


class _Reject(Exception):
    """Raised inside a parser callback; the protocol answers and closes the connection."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def protocol_class(limits: Limits, stats: LimitStats) -> type[LimitedHttpToolsProtocol]:
    """uvicorn builds one protocol per connection from a class: bind the limits to one."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "stats": stats, "_sweeper": None},
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = Limits()
    stats: ClassVar[LimitStats]
    _sweeper: ClassVar[asyncio.TimerHandle | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closed = False
        self._in_headers = True  # between the end of a message and the end of the next headers
        self._header_bytes = 0  # raw bytes received while _in_headers
        self._body_bytes = 0
        self._deadline: float | None = None  # loop time by which the current phase must end
        self._phase = "idle"
        self._message_has_cycle = False  # the message being received has reached the app

    # ---- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stats.connections = self.connections
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)  # it never counts against the cap it broke
            self._reject(
                503,
                "too_many_connections",
                f"the server holds its maximum of {self.limits.max_connections} connections",
            )
            return
        # The first request's headers must arrive in time from the moment of connecting.
        self._arm("headers", self.limits.header_timeout_seconds)
        cls = type(self)
        if cls._sweeper is None:
            cls._sweeper = self.loop.call_later(SWEEP_SECONDS, cls._sweep, self.loop)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(cls.stats.connections):
            deadline = getattr(conn, "_deadline", None)
            if deadline is not None and now >= deadline:
                conn._expire()
        cls._sweeper = loop.call_later(SWEEP_SECONDS, cls._sweep, loop)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus the raw header count and the refusals our callbacks raise (httptools
        hands those back wrapped in HttpParserCallbackError, a kind of HttpParserError)."""
        if self._closed:
            return
        self._unset_keepalive_if_required()
        if self._in_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason, cause.detail)
            else:
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:  # no websocket routes: served as plain HTTP
            self._unsupported_upgrade_warning()
        # The parser keeps a partial header line in memory until it ends: refuse by raw count,
        # so one endless header never grows past the limit plus one read.
        if (
            not self._closed
            and self._in_headers
            and self._header_bytes > self.limits.max_header_bytes
        ):
            self._reject(
                431,
                "headers_too_large",
                f"request line and headers are limited to {self.limits.max_header_bytes} bytes",
            )

    # ---- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_has_cycle = False
        self._body_bytes = 0
        if self._phase != "headers":
            self._arm("headers", self.limits.header_timeout_seconds)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        # Counted here, not per header: the byte limit already bounds how many can pile up.
        if len(self.headers) > self.limits.max_headers:
            raise _Reject(
                431, "too_many_headers", f"at most {self.limits.max_headers} headers are allowed"
            )
        for name, value in self.headers:
            # llhttp has already checked it is digits (and not beside Transfer-Encoding)
            if name == b"content-length" and int(value) > self.limits.max_body_bytes:
                raise _Reject(413, "body_too_large", self._body_detail())
        self._arm("body", self.limits.body_timeout_seconds)
        super().on_headers_complete()
        self._message_has_cycle = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            raise _Reject(413, "body_too_large", self._body_detail())
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._arm("idle", None)  # what follows is app time, then uvicorn's keep-alive timer
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._deadline = None
        super().connection_lost(exc)

    # ---- answers -------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """uvicorn's plain-text 400, as JSON."""
        self._reject(400, "bad_request", msg)

    def _bad_request(self) -> None:
        self.logger.warning("Invalid HTTP request received.")  # uvicorn's own line
        self.send_400_response("Invalid HTTP request received.")

    def _body_detail(self) -> str:
        return f"request bodies are limited to {self.limits.max_body_bytes} bytes"

    def _arm(self, phase: str, seconds: float | None) -> None:
        self._phase = phase
        self._deadline = None if seconds is None else self.loop.time() + seconds

    def _expire(self) -> None:
        if self._closed:
            return
        if self._phase == "headers":
            if self._header_bytes == 0 and self.cycle is None:
                self._reject(None, "idle_timeout", "")  # nothing sent at all: just close
            else:
                seconds = self.limits.header_timeout_seconds
                self._reject(408, "header_timeout", f"headers not received within {seconds:g} s")
        elif self._phase == "body":
            seconds = self.limits.body_timeout_seconds
            self._reject(408, "body_timeout", f"body not received within {seconds:g} s")

    def _reject(self, status: int | None, reason: str, detail: str) -> None:
        """Answer (when no response has started on this connection) and close it."""
        self._closed = True
        self._deadline = None
        self.stats.rejected[reason] += 1
        log.debug("refused %s from %s: %s", reason, self.client, detail)
        cycle = self.cycle
        if self._message_has_cycle:  # this request reached the app: answer unless it did
            answerable = not cycle.response_started
        else:  # refused before the app saw it: answer unless an earlier answer is still going
            answerable = cycle is None or cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            # The app may be waiting for the body: it now sees a disconnect, and anything it
            # sends is dropped, so our answer is the only one on the wire.
            cycle.disconnected = True
            cycle.message_event.set()
        if status is not None and answerable and not self.transport.is_closing():
            body = json.dumps({"error": reason, "detail": detail}).encode()
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head.append(name + b": " + value + b"\r\n")
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.pause_reading()
        self.transport.close()

