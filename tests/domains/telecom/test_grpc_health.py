"""gRPC health (grpc.health.v1) and server reflection, asked by a real gRPC client."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from clickflow.config import Settings
from clickflow.domains.telecom.grpc_server import SERVICE_NAME, start_server
from clickflow.grpc_services import start_domain_services
from clickflow.runtime.ports import free_port


def test_health_serving_then_not_serving_on_stop(tc_settings: Settings) -> None:
    settings = tc_settings.model_copy(update={"api_token": "secret-token"})
    port = free_port()
    server = start_server(settings, port=port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):  # no token needed for health checks
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.health.enter_graceful_shutdown()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    finally:
        channel.close()
        server.stop(grace=None)


def test_reflection_lists_and_describes_the_service(tc_settings: Settings) -> None:
    """On the shared server `serve` starts for every domain."""
    port = free_port()
    server = start_domain_services(tc_settings, port=port)
    assert server is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
        pool = DescriptorPool(db)
        svc = pool.FindServiceByName(SERVICE_NAME)
        assert {m.name for m in svc.methods} == {"GetUserDetail", "GetGlobalAgg"}
        request = pool.FindMessageTypeByName(
            f"{svc.methods_by_name['GetUserDetail'].input_type.full_name}"
        )
        assert "user_id" in request.fields_by_name
    finally:
        channel.close()
        server.stop(grace=None)
