"""Server reflection that also resolves method names.

``grpcurl describe ironclaw.orchestrator.v1.JobService.CreateJob`` asks the server for the file
containing that symbol. grpcio-reflection answers from the descriptor pool's
``FindFileContainingSymbol``, which in the upb protobuf runtime (the default since protobuf 4)
finds services, messages, fields and enums but not a service's methods, so the answer was
"Symbol not found". A method's file is its service's file: look the method up by name instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_reflection.v1alpha._base import _file_descriptor_response


class MethodAwareReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, with ``file_containing_symbol`` for method names."""

    def __init__(
        self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        super().__init__(service_names, pool=pool)
        self._symbol_pool = pool or descriptor_pool.Default()

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            method = self._symbol_pool.FindMethodByName(fully_qualified_name)
        except KeyError:
            return super()._file_containing_symbol(request, fully_qualified_name)
        return _file_descriptor_response(method.containing_service.file, request)


def enable_server_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    """Serves reflection for ``service_names`` on ``server``."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(service_names), server
    )
