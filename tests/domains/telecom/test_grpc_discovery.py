"""`clickflow serve` finds gRPC services by convention (domains/<d>/grpc_server.py: register)."""

from __future__ import annotations

import inspect

import grpc
import pytest

from clickflow import cli
from clickflow.config import Settings
from clickflow.domains import DOMAINS
from clickflow.domains.telecom.proto import telecom_pb2 as pb
from clickflow.domains.telecom.proto import telecom_pb2_grpc as pb_grpc
from clickflow.grpc_services import start_domain_services
from clickflow.runtime.ports import free_port


def test_the_cli_names_no_domain() -> None:
    source = inspect.getsource(cli)
    assert [d for d in DOMAINS if f'"{d}"' in source] == []


def test_no_server_when_no_domain_can_serve() -> None:
    # Telecom, the one domain with gRPC services, needs PostgreSQL.
    assert start_domain_services(Settings(postgres_url=None)) is None


def test_telecom_is_found_and_answers(tc_settings: Settings) -> None:
    port = free_port()
    server = start_domain_services(tc_settings, port=port)
    assert server is not None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TelecomUsageStub(channel)
            answer = stub.GetGlobalAgg(pb.GlobalAggRequest(granularity="day"), timeout=30)
            assert list(answer.rows) == []  # a fresh database: nothing aggregated yet
    finally:
        server.stop(grace=None)


def test_a_domain_that_declines_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from clickflow import grpc_services

    calls: list[str] = []

    class Declines:
        @staticmethod
        def register(_server: grpc.Server, _settings: Settings) -> bool:
            calls.append("asked")
            return False

    monkeypatch.setattr(grpc_services, "domain_module", lambda _d, _p: Declines)
    assert start_domain_services(Settings(), ["a", "b"]) is None
    assert calls == ["asked", "asked"]
