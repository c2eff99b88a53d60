"""An app written with the Dapr SDK's ``dapr.ext.grpc.App``, invoked through l8 by the tests.

Serves its AppCallback on APP_PORT. ``relay`` calls another app through this app's own sidecar
(DAPR_HTTP_PORT / DAPR_GRPC_PORT, and DAPR_API_METHOD_INVOCATION_PROTOCOL to pick HTTP or gRPC).
"""

from __future__ import annotations

import json
import os
import time
from concurrent import futures
from typing import Any

from dapr.clients.grpc._request import InvokeMethodRequest
from dapr.clients.grpc._response import InvokeMethodResponse
from dapr.ext.grpc import App

APP_ID = os.environ.get("APP_ID", "")
app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=32))


def _metadata(request: InvokeMethodRequest) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, values in request.metadata.items():
        found[key] = [v.hex() if isinstance(v, bytes) else v for v in values]
    return found


@app.method("echo")
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    body = {
        "app": APP_ID,
        "pid": os.getpid(),
        "data": request.text(),
        "content_type": request.content_type,
        "metadata": _metadata(request),
    }
    # Response headers travel back to the caller as gRPC initial metadata or HTTP headers.
    return InvokeMethodResponse(json.dumps(body).encode(), "application/json", headers=(("x-echo-app", APP_ID),))


@app.method("relay")
def relay(request: InvokeMethodRequest) -> InvokeMethodResponse:
    from dapr.clients import DaprClient
    from dapr.conf import settings

    ask = json.loads(request.text())
    # The SDK picks HTTP or gRPC for invoke_method from this setting when the client is made.
    settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = ask.get("protocol", "http")
    with DaprClient() as client:
        answer = client.invoke_method(ask["app"], ask["method"], data=ask.get("data", ""), content_type="text/plain")
    protocol = settings.DAPR_API_METHOD_INVOCATION_PROTOCOL
    body = {"via": APP_ID, "protocol": protocol, "answer": json.loads(answer.text())}
    return InvokeMethodResponse(json.dumps(body).encode(), "application/json")


@app.method("fail")
def fail(request: InvokeMethodRequest) -> InvokeMethodResponse:
    raise ValueError(f"boom: {request.text()}")


@app.method("slow")
def slow(request: InvokeMethodRequest) -> InvokeMethodResponse:
    time.sleep(float(request.text()))
    return InvokeMethodResponse(b"done", "text/plain")


@app.method("empty")
def empty(request: InvokeMethodRequest) -> None:
    return None


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), "127.0.0.1")
