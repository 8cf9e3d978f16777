"""Collector errors: each maps to one HTTP status in ``app.py``."""

from __future__ import annotations


class CollectorError(Exception):
    """Base class; ``status`` is the HTTP status the request gets."""

    status = 400

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class PayloadTooLarge(CollectorError):
    status = 413


class UnsupportedMediaType(CollectorError):
    status = 415


class MalformedBody(CollectorError):
    status = 400


class InvalidToken(CollectorError):
    status = 401


class PublishFailed(CollectorError):
    """Kafka did not acknowledge in time (or refused): nothing may be reported as stored."""

    status = 503


class CollectedDomainError(Exception):
    """At start-up: no domain, or more than one, declares what the collector takes
    (``domains/<d>/collect.py``). Not a request's error: the collector does not start."""
