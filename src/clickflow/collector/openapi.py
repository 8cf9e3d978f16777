"""OpenAPI for ``POST /v1/events``, generated from the collected ``KINDS``: a new kind's
Struct shows up in the docs with no change here. The route reads the raw body itself (msgspec
is faster than pydantic), so the request and response shapes are declared here instead."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from clickflow.collector.envelope import schemas
from clickflow.collector.ingest import BatchResult

REF = "#/components/schemas/{name}"


class EventAccepted(msgspec.Struct):
    status: Literal["accepted"]
    event: str
    event_id: str


class EventRejected(msgspec.Struct):
    status: Literal["rejected"]
    field: str
    reason: str


class EventsFailed(msgspec.Struct):
    status: Literal["failed"]
    reason: str


def _build() -> tuple[dict[str, Any], dict[str, Any]]:
    envelopes = list(schemas().by_kind.values())
    refs, components = msgspec.json.schema_components(
        [*envelopes, BatchResult, EventAccepted, EventRejected, EventsFailed], ref_template=REF
    )
    one_event = {"oneOf": refs[: len(envelopes)], "discriminator": {"propertyName": "event"}}
    batch_result, accepted, rejected, failed = refs[len(envelopes) :]

    def content(*schemas: dict[str, Any]) -> dict[str, Any]:
        schema = schemas[0] if len(schemas) == 1 else {"oneOf": list(schemas)}
        return {"content": {"application/json": {"schema": schema}}}

    example = {
        "event": "element_click",
        "token": None,
        "data": {"element_type": "movie", "page_type": "category"},
    }
    route = {
        "summary": "Send one event or a batch",
        "description": (
            "The body is one event or a JSON array of events (gzip allowed with "
            "`Content-Encoding: gzip`; `text/plain` accepted for `navigator.sendBeacon`). "
            'A non-null `token` is verified and replaced by `user_id` ("anonymous" without '
            "one). The server adds `timestamp` and `event_id` (a client `event_id` is kept, "
            "for deduplication of retries).\n\n"
            "A single event gets 202, or 422 (invalid; `field` names it), 401 (bad token), "
            "503 (Kafka did not acknowledge: retry). A batch gets a verdict per event: 202 "
            "when any was accepted and all accepted ones are stored, 503 when any valid one "
            "is not stored, else 422 (or 401 when only tokens were wrong). 413: body or "
            "batch too large; 429: rate limit per IP, see Retry-After."
        ),
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"oneOf": [one_event, {"type": "array", "items": one_event}]},
                        "example": example,
                    },
                    "text/plain": {"schema": {"type": "string"}},
                },
            }
        },
        "status_code": 202,
        "responses": {
            202: {"description": "Stored in Kafka", **content(accepted, batch_result)},
            400: {"description": "Malformed body", **content(rejected)},
            401: {"description": "Invalid token", **content(rejected, batch_result)},
            413: {"description": "Body or batch too large", **content(rejected)},
            415: {"description": "Unsupported content type or encoding", **content(rejected)},
            422: {"description": "Invalid event(s)", **content(rejected, batch_result)},
            429: {"description": "Rate limited: see Retry-After", **content(rejected)},
            503: {"description": "Kafka unavailable: retry", **content(failed, batch_result)},
        },
    }
    return route, components


EVENTS_OPENAPI, COMPONENTS = _build()


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
