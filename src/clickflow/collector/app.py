"""The collector (port 8001): validates events and publishes them to Kafka.

``POST /v1/events`` takes one event or a JSON array in the envelope of seed 001; see
``ingest.py`` for what happens to them and ``openapi.py`` for the documented shapes
(``/docs``, and ``/apidocs`` as the seed promised). It also serves the browser tracker
(``/js/clickflow.js``) and a demo page using it (``/demo``), and answers CORS for the
origins of ``CLICKFLOW_COLLECTOR_CORS_ORIGINS``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from opentelemetry.trace import SpanKind
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from clickflow.collector.config import CollectorConfig
from clickflow.collector.exceptions import CollectorError
from clickflow.collector.ingest import ClientGone, Ingestor, Outcome, error_outcome
from clickflow.collector.kinds import collected
from clickflow.collector.metrics import LATENCY, RATE_LIMITED, REQUESTS
from clickflow.collector.openapi import EVENTS_OPENAPI, install_openapi
from clickflow.collector.publisher import KafkaPublisher
from clickflow.collector.ratelimit import RateLimiter
from clickflow.collector.tokens import TokenVerifier
from clickflow.collector.tracker import router as tracker_router
from clickflow.config import Settings, get_settings
from clickflow.health import dependency_checks, health_router
from clickflow.kafka.config import producer_config
from clickflow.kafka.exceptions import KafkaUnavailable
from clickflow.kafka.topics import TopicSpec, ensure_topics
from clickflow.observability import tracing

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
EVENTS_PATH = "/v1/events"


@dataclass
class Services:
    ingestor: Ingestor
    limiter: RateLimiter | None
    publisher: KafkaPublisher
    redis: aioredis.Redis | None
    http: httpx.AsyncClient
    topics_task: asyncio.Task[None] | None


def topic_spec(options: CollectorConfig) -> TopicSpec:
    """The topic of the domain the collector takes events for (``domains/<d>/collect.py``),
    with its partition count; ``options.topic`` renames it."""
    spec = collected().topic()
    return TopicSpec(options.topic or spec.name, spec.partitions)


async def _ensure_topics(
    settings: Settings, options: CollectorConfig, specs: list[TopicSpec]
) -> asyncio.Task | None:
    """Create the topic now if Kafka answers within the publish timeout; otherwise keep trying
    in the background (the collector starts anyway and answers 503 until Kafka is back)."""
    first_timeout = max(0.5, options.publish_timeout_ms / 1000)
    try:
        await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, specs, first_timeout)
        return None
    except KafkaUnavailable as e:
        log.warning("Kafka unavailable at start-up, will retry creating topics: %s", e)

    async def retry() -> None:
        while True:
            await asyncio.sleep(5)
            try:
                await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, specs, 5.0)
                log.info("topics created")
                return
            except KafkaUnavailable:
                continue

    return asyncio.create_task(retry())


async def start_services(settings: Settings, options: CollectorConfig) -> Services:
    topic = topic_spec(options)
    topics_task = await _ensure_topics(settings, options, [topic])
    publisher = KafkaPublisher(
        producer_config(
            settings,
            **{"linger.ms": options.linger_ms, "message.timeout.ms": options.publish_timeout_ms},
        ),
        timeout=options.publish_timeout_ms / 1000 + 0.5,
    )
    redis = None
    if settings.redis_url:
        from clickflow.stores.redis import async_redis_client

        redis = async_redis_client(settings)
    else:
        log.warning("CLICKFLOW_REDIS_URL is not set: no rate limiting and no token cache")
    limiter = None
    if redis is not None and options.rate_per_second > 0:
        limiter = RateLimiter(redis, options.rate_per_second, options.rate_burst)
    http = httpx.AsyncClient(timeout=options.auth_timeout_seconds)
    verifier = TokenVerifier(
        settings.auth_url, settings.jwt_secret, redis, http, options.invalid_token_cache_seconds
    )
    ingestor = Ingestor(options, verifier, publisher, topic.name)
    return Services(ingestor, limiter, publisher, redis, http, topics_task)


async def stop_services(s: Services) -> None:
    if s.topics_task is not None:
        s.topics_task.cancel()
    s.publisher.close()  # flushes what is still queued (uvicorn has drained requests)
    await s.http.aclose()
    if s.redis is not None:
        await s.redis.aclose()


def client_ip(scope: Scope, headers: dict[bytes, bytes], trust_forwarded_for: bool) -> str:
    if trust_forwarded_for:
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded:
            return forwarded.split(b",", 1)[0].strip().decode("latin-1")
    client = scope.get("client")
    return client[0] if client else "unknown"


CORS_METHODS = ["GET", "POST", "OPTIONS"]
CORS_HEADERS = ["Content-Type", "Content-Encoding", "Authorization"]
CORS_EXPOSE = ["Retry-After"]  # the tracker's backoff reads it


class CorsPolicy:
    """The CORS headers of ``POST /v1/events`` answers, which bypass Starlette's middleware
    (the rest of the app, preflights included, goes through ``CORSMiddleware`` with the
    same settings)."""

    def __init__(self, origins: list[str], credentials: bool) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode("latin-1") for o in origins if o != "*")
        self.credentials = credentials

    def headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is None or not (self.any or origin in self.origins):
            return []
        expose = (b"access-control-expose-headers", ", ".join(CORS_EXPOSE).encode())
        if self.any and not self.credentials:
            return [(b"access-control-allow-origin", b"*"), expose]
        out = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), expose]
        if self.credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out


async def send_outcome(
    send: Send, outcome: Outcome, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = _json.encode(outcome.body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in outcome.headers.items()]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CollectorApp(FastAPI):
    """FastAPI, except that ``POST /v1/events`` goes straight to its handler.

    Starlette's middleware stack and FastAPI's per-request telemetry check cost about 40% of
    the CPU of a single-event request; the ingest path needs none of it (it has its own
    errors, metrics and limits). Everything else (docs, /healthz, /metrics) is plain FastAPI,
    and the route declared for /v1/events documents the endpoint and runs the same handler
    when reached through the router (e.g. when mounted under another app).
    """

    events_handler: Callable[[Scope, Receive], Awaitable[Outcome | None]] | None = None
    cors: CorsPolicy | None = None  # None: no origin configured, nothing to add

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.events_handler
        if (
            handler is not None
            and scope["type"] == "http"
            and scope["path"] == EVENTS_PATH
            and scope["method"] == "POST"
        ):
            outcome = await handler(scope, receive)
            if outcome is not None:
                cors = self.cors
                await send_outcome(send, outcome, cors.headers(scope) if cors else None)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, options: CollectorConfig | None = None) -> FastAPI:
    settings = settings or get_settings()
    options = options or CollectorConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await start_services(settings, options)
        app.state.services = services
        try:
            yield
        finally:
            await stop_services(services)

    app = CollectorApp(
        title="clickflow collector",
        version="0.1.0",
        description="Accepts user-action events of the online cinema and publishes them to "
        "Kafka. A 202 means the broker acknowledged every accepted event.",
        docs_url="/docs",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.options = options
    uses = ["kafka"] + (["redis"] if settings.redis_url else [])
    app.include_router(health_router("collector", dependency_checks(settings, uses)))
    app.include_router(tracker_router)
    if options.cors_origins:
        app.cors = CorsPolicy(options.cors_origins, options.cors_allow_credentials)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=options.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSE,
            allow_credentials=options.cors_allow_credentials,
            max_age=600,
        )
    requests_by_status: dict[int, Any] = {}

    async def ingest(scope: Scope, receive: Receive) -> Outcome:
        services: Services = app.state.services
        headers = dict(scope["headers"])
        if services.limiter is not None:
            ip = client_ip(scope, headers, options.trust_forwarded_for)
            decision = await services.limiter.take(ip)
            if not decision.allowed:
                RATE_LIMITED.inc()
                retry_after = max(1, math.ceil(decision.retry_after_ms / 1000))
                body = {"status": "rejected", "reason": "rate limit exceeded for this IP"}
                return Outcome(429, body, {"Retry-After": str(retry_after)})
        try:
            return await services.ingestor.handle(headers, receive)
        except CollectorError as e:
            return error_outcome(e)

    async def handle_events(scope: Scope, receive: Receive) -> Outcome | None:
        started = time.perf_counter()
        status = 500
        try:
            outcome = await ingest(scope, receive)
            status = outcome.status
            return outcome
        except ClientGone:
            status = 499
            return None
        finally:
            counter = requests_by_status.get(status)
            if counter is None:
                counter = requests_by_status[status] = REQUESTS.labels(str(status))
            counter.inc()
            LATENCY.observe(time.perf_counter() - started)

    async def traced_handle_events(scope: Scope, receive: Receive) -> Outcome | None:
        """The same, in a server span continuing the caller's ``traceparent`` if any."""
        parent = tracing.context_from_http(dict(scope["headers"]))
        attributes = {"http.request.method": "POST", "http.route": EVENTS_PATH}
        with tracing.span(f"POST {EVENTS_PATH}", SpanKind.SERVER, attributes, parent) as span:
            outcome = await handle_events(scope, receive)
            span.set_attribute("http.response.status_code", outcome.status if outcome else 499)
            return outcome

    # Chosen once: with tracing off, requests never see it.
    app.events_handler = traced_handle_events if tracing.ENABLED else handle_events

    @app.post(EVENTS_PATH, tags=["events"], **EVENTS_OPENAPI)
    async def post_events(request: Request) -> Response:
        outcome = await app.events_handler(request.scope, request.receive)
        if outcome is None:
            return Response(status_code=499)
        return Response(
            _json.encode(outcome.body),
            status_code=outcome.status,
            headers=outcome.headers,
            media_type="application/json",
        )

    @app.get("/apidocs", include_in_schema=False)
    @app.get("/apidocs/", include_in_schema=False)
    async def apidocs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=app.title)

    install_openapi(app)
    return app
