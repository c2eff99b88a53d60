"""The example WebAssembly function (guests/, run by `l8 run` from its `functions` config) driven
with the official Dapr Python SDK, as any app is: `orders` events published here trigger it, and
invoking it answers the count it keeps."""

import json
import os
import time

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")
os.environ.setdefault("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")

from dapr.clients import DaprClient

customer = f"customer-{os.getpid()}"
with DaprClient() as client:
    for _ in range(2):
        client.publish_event(
            "pubsub", "orders", json.dumps({"customer": customer}), data_content_type="application/json"
        )
    # Events are delivered asynchronously: ask the function until it has counted both.
    deadline = time.monotonic() + 30
    while (count := client.invoke_method("orders-fn", "count", data=customer).text()) != "2":
        if time.monotonic() > deadline:
            raise SystemExit(f"the function counted {count} orders of {customer}, not 2")
        time.sleep(0.1)
    print(count)
