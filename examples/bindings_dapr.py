"""Send to output bindings with the Dapr SDK: write and read a file through a local directory
binding, and ask a question over a NATS subject. The components, in l8's config:

    components:
      outbox: {kind: bindings, type: local.dir, metadata: {root: /var/lib/app/outbox}}
      quotes: {kind: bindings, type: nats, metadata: {subject: quotes.price}}
"""

import os

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")

from dapr.clients import DaprClient

with DaprClient() as client:
    client.invoke_binding("outbox", "create", data='{"order": 7}', binding_metadata={"fileName": "orders/7.json"})
    saved = client.invoke_binding("outbox", "get", binding_metadata={"fileName": "orders/7.json"})
    price = client.invoke_binding("quotes", "request", data="ACME")
    print(saved.text(), price.text())
