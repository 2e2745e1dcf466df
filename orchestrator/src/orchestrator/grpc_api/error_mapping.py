"""The control plane's catch-all: an exception no servicer mapped ends the RPC as ``INTERNAL``.

Left alone, grpc.aio answers such an exception with ``UNKNOWN`` and the exception's text as the
status detail, which can carry anything (a path, a token, an engine's message) to the caller.
Here the caller gets one fixed sentence and the orchestrator's log gets the traceback, once,
through the logging setup that masks secrets. The HTTP worker API's ``error_middleware`` does
the same for its door.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from orchestrator.logging import get_logger

log = get_logger(__name__)

INTERNAL_MESSAGE = "internal error; see the orchestrator log"

Context = aio.ServicerContext[Any, Any]
Behavior = Callable[..., Any]


class UnexpectedErrorInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every method (unary and streaming) so an unmapped exception becomes INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return guarded_handler(handler, handler_call_details.method or "?")


def guarded_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behaviour wrapped by the catch-all."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary(handler.unary_unary, method), deserializer, serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _guard_unary(handler.stream_unary, method), deserializer, serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(handler.unary_stream, method), deserializer, serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream(handler.stream_stream, method), deserializer, serializer
        )
    return handler


def _guard_unary(behavior: Behavior, method: str) -> Callable[[Any, Context], Awaitable[Any]]:
    async def guarded(request: Any, context: Context) -> Any:
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except aio.AbortError:
            raise  # the servicer (or the auth check) chose the status already
        except Exception:
            await _abort_internal(context, method)

    return guarded


def _guard_stream(behavior: Behavior, method: str) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):  # a servicer that writes with context.write()
                await result
            elif result is not None:
                for item in result:
                    yield item
        except aio.AbortError:
            raise
        except Exception:
            await _abort_internal(context, method)

    return guarded


async def _abort_internal(context: Context, method: str) -> None:
    # Called inside the except block: log.exception renders this traceback (masked).
    log.exception("unexpected error in an RPC", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
