"""Calls apps through l8 with the official Dapr SDK's ``DaprClient.invoke_method``, unchanged.

Run as a subprocess by the tests with DAPR_HTTP_PORT / DAPR_GRPC_PORT set, and
DAPR_API_METHOD_INVOCATION_PROTOCOL to choose HTTP (the SDK's default) or gRPC. argv[1] is a JSON
list of calls; the last line printed is ``RESULTS <json list>``, one outcome per call.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprHttpError


def call(client: DaprClient, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        resp = client.invoke_method(
            spec["app"],
            spec["method"],
            data=spec.get("data", ""),
            content_type=spec.get("content_type"),
            metadata=tuple(map(tuple, spec["metadata"])) if "metadata" in spec else None,
            http_verb=spec.get("verb"),
            http_querystring=tuple(map(tuple, spec["query"])) if "query" in spec else None,
            timeout=spec.get("timeout"),
        )
    except DaprHttpError as exc:
        return {"ok": False, "status": exc.status_code, "error_code": exc.error_code, "message": exc.message}
    except grpc.RpcError as exc:
        return {"ok": False, "code": exc.code().name, "message": exc.details()}
    return {"ok": True, "text": resp.text(), "content_type": resp.content_type}


with DaprClient() as client:
    results = [call(client, spec) for spec in json.loads(sys.argv[1])]
print("RESULTS " + json.dumps(results))
