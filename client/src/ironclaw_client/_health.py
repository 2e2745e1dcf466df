"""The standard gRPC health check (grpc.health.v1.Health/Check) without the
grpcio-health-checking package: its two messages are one field each, encoded here by hand so
the client depends on grpcio and protobuf only."""

from __future__ import annotations

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited."""
    raw = service.encode()
    if not raw:
        return b""
    if len(raw) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(raw)]) + raw


def decode_response(data: bytes) -> str:
    """HealthCheckResponse{status}: field 1, a varint; absent means UNKNOWN."""
    if len(data) >= 2 and data[0] == 0x08:
        return _STATUSES.get(data[1], "UNKNOWN")
    return "UNKNOWN"
