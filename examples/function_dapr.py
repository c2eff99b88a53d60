"""Invoke the example WebAssembly function (guests/, run by `l8 run` from its `functions` config)
with the official Dapr Python SDK, as any app is invoked."""

import os

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")
os.environ.setdefault("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")

from dapr.clients import DaprClient

with DaprClient() as client:
    # The function answers how many orders of this customer it has counted.
    print(client.invoke_method("orders-fn", "count", data="customer-1").text())
