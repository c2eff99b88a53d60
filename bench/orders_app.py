"""The example function's logic as an app callback, for bench.wasm_events: a Dapr SDK ``App``
(``dapr.ext.grpc``) on $APP_PORT whose handlers use the SDK's ``DaprClient`` through the app's own
sidecar ($DAPR_GRPC_PORT), as an app written for Dapr would.

Topics ($TOPICS, comma separated ``name:concurrency``): a topic starting ``noop`` answers SUCCESS
and nothing else; any other counts the event's customer in state (``count-<customer>`` of
``statestore``) and publishes ``order-audited`` {"customer", "count"} on ``pubsub``, as the
example function (guests/) does.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent import futures

from cloudevents.sdk.event import v1
from dapr.clients import DaprClient
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App

app = App(thread_pool=futures.ThreadPoolExecutor(max_workers=32))
_local = threading.local()


def client() -> DaprClient:
    found: DaprClient | None = getattr(_local, "client", None)
    if found is None:
        found = _local.client = DaprClient()
    return found


def noop(event: v1.Event) -> TopicEventResponse:
    return TopicEventResponse("success")


def orders(event: v1.Event) -> TopicEventResponse:
    data = event.Data()
    customer = json.loads(data if isinstance(data, (bytes, str)) else json.dumps(data))["customer"]
    key = f"count-{customer}"
    dapr = client()
    stored = dapr.get_state("statestore", key).data
    count = int(stored or b"0") + 1
    dapr.save_state("statestore", key, str(count))
    dapr.publish_event(
        "pubsub",
        "order-audited",
        json.dumps({"customer": customer, "count": count}),
        data_content_type="application/json",
    )
    return TopicEventResponse("success")


for entry in os.environ["TOPICS"].split(","):
    topic, _, concurrency = entry.partition(":")
    handler = noop if topic.startswith("noop") else orders
    app.subscribe(pubsub_name="pubsub", topic=topic, metadata={"concurrency": concurrency or "32"})(handler)


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), "127.0.0.1")
