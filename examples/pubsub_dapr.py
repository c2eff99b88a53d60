"""Publish events and take them as an app, with the Dapr SDK: the App subscribes to `orders` on the
`pubsub` component, the client publishes three orders, and the App prints each one l8 pushes to it.
Start it beside `l8 run --app-port 50051` (APP_PORT picks another port).

A handler that returns normally acknowledges its event; one that raises has l8 deliver it again.
"""

import json
import os
import threading
import uuid

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")  # the SDK waits for the sidecar's health there

from dapr.clients import DaprClient
from dapr.ext.grpc import App, SubscriptionMessage

run = uuid.uuid4().hex[:8]  # the orders of this run, apart from any an earlier run left
got: set[int] = set()
lock = threading.Lock()
all_in = threading.Event()
app = App()


@app.subscribe(pubsub_name="pubsub", topic="orders")
def order(message: SubscriptionMessage) -> None:
    data = message.data()  # parsed: the event is application/json
    if isinstance(data, dict) and data.get("run") == run:
        with lock:  # the App runs handlers on several threads at once
            got.add(data["n"])
            if len(got) == 3:
                all_in.set()


port = int(os.environ.get("APP_PORT", "50051"))
threading.Thread(target=app.run, args=(port, "127.0.0.1"), daemon=True).start()
with DaprClient() as client:
    for n in range(3):
        body = json.dumps({"run": run, "n": n})
        client.publish_event("pubsub", "orders", body, data_content_type="application/json")
# Events are pushed asynchronously (l8 first asks the app what it subscribes to).
if not all_in.wait(60):
    raise SystemExit(f"the app got orders {sorted(got)} of 0, 1, 2")
app.stop()
for n in sorted(got):
    print("order", n)
print("3 orders delivered")
