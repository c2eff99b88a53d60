"""What every Dapr HTTP route shares: finding a component and calling its workers through the
Forwarder, as the gRPC fronts do, with failures in Dapr's HTTP form."""

from __future__ import annotations

from bus.codec import HDR_TRACEPARENT
from runtime.dapr_http.errors import HttpError
from runtime.forward import Forwarder, FrontError
from runtime.http import Request


class HttpFront:
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def component(self, api: str, name: str, error_code: str) -> str:
        try:
            return self.forwarder.component(api, name)
        except FrontError as exc:
            raise HttpError.of(exc, error_code) from None

    async def call(self, api: str, component: str, op: str, payload: bytes, request: Request, error_code: str) -> bytes:
        fwd = self.forwarder
        try:
            return await fwd.call(
                fwd.subject(api, component, op),
                payload,
                traceparent=request.headers.get(HDR_TRACEPARENT),
                what=f"{api} {component!r}",
                resource=(api, component),
            )
        except FrontError as exc:
            raise HttpError.of(exc, error_code) from None
