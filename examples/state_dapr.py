"""Save and read state through l8 with the official Dapr Python SDK."""

import os

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")

from dapr.clients import DaprClient

with DaprClient() as client:
    client.save_state("statestore", "order-1", '{"qty": 3}')
    item = client.get_state("statestore", "order-1")
    print(item.data.decode(), item.etag)
