"""Builds the control-plane gRPC server: JobService, health, reflection, auth, TLS."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ironclaw_client.api.v1 import jobs_pb2, jobs_pb2_grpc
from orchestrator.grpc_api.auth import AdminTokenInterceptor
from orchestrator.grpc_api.error_mapping import UnexpectedErrorInterceptor
from orchestrator.grpc_api.reflection import enable_server_reflection
from orchestrator.grpc_api.servicer import JobServicer
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.settings import Settings

SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


@dataclass
class ControlPlane:
    server: aio.Server
    health: HealthServicer
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)


async def start_control_plane(
    settings: Settings, manager: ContainerJobManager, port: int | None = None
) -> ControlPlane:
    """Starts the gRPC server on ``settings.grpc_bind`` (port 0 picks a free one)."""
    # The catch-all first, so it also guards what the interceptors after it return.
    interceptors: list[aio.ServerInterceptor] = [UnexpectedErrorInterceptor()]  # type: ignore[type-arg]
    if settings.admin_token is not None:
        interceptors.append(AdminTokenInterceptor(settings.admin_token.reveal()))
    server = aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ],
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(manager), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = settings.grpc_bind
    address = f"[{host}]" if ":" in host and not host.startswith("[") else host
    target = f"{address}:{settings.grpc_port if port is None else port}"
    if settings.tls_cert is not None and settings.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        bound = server.add_secure_port(target, credentials)
    else:
        bound = server.add_insecure_port(target)
    await server.start()
    plane = ControlPlane(server=server, health=health_servicer, port=bound)
    await plane.set_serving(True)
    return plane
