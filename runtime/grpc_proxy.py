"""gRPC proxying, as daprd does it: a unary call to a service this sidecar does not serve, with
metadata ``dapr-app-id: X``, goes to a sidecar of app X on the invocation subject (header
``l8-grpc-method``, runtime/invoke.py) and from there to X's own gRPC server, message bytes as they
came; the app's reply, status and initial metadata come back. The handler is registered after every
service l8 serves, so l8's own rpcs are never proxied. Streaming calls are not proxied."""

from __future__ import annotations

from typing import Any

import grpc

from runtime.forward import FrontError, abort
from runtime.invoke import Invoker, metadata_headers

APP_ID = "dapr-app-id"  # metadata that routes a gRPC call to another app (gRPC proxying)


class GrpcProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The generic handler that proxies calls carrying ``dapr-app-id``."""

    def __init__(self, invoker: Invoker) -> None:
        self._invoker = invoker
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if not any(k == APP_ID for k, _ in handler_call_details.invocation_metadata or ()):
            return None
        handler = self._handlers.get(method)
        if handler is None:
            if len(self._handlers) >= 1024:
                self._handlers.clear()
            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(self._call(method))
        return handler

    def _call(self, method: str) -> Any:
        invoker = self._invoker

        async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            pairs = context.invocation_metadata() or ()
            app_id = next((str(v) for k, v in pairs if k == APP_ID), "")
            metadata, traceparent = metadata_headers(pairs)
            try:
                result = await invoker.invoke(
                    app_id,
                    method,
                    request,
                    timeout=context.time_remaining(),
                    metadata=metadata,
                    traceparent=traceparent,
                    grpc_method=True,
                )
            except FrontError as exc:
                await abort(context, exc.code, exc.message)
            if result.metadata:
                await context.send_initial_metadata(result.metadata)
            return result.data

        return call
