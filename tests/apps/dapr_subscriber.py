"""A subscriber app written with the Dapr SDK's ``dapr.ext.grpc.App``, unchanged from how one is
written for Dapr. Serves on $APP_PORT; appends every event it sees to $EVENTS_FILE as a JSON line.

Topics: ``orders`` succeeds; ``flaky`` asks to retry the first delivery of each event;
``poison`` drops, with dead-letter topic ``poison-dead``; ``widgets`` routes by a rule on the type.
"""

from __future__ import annotations

import json
import os
import threading

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, Rule

PUBSUB = os.environ.get("PUBSUB", "pubsub")
EVENTS = os.environ["EVENTS_FILE"]
app = App()
lock = threading.Lock()
seen: set[str] = set()


def record(handler: str, event: v1.Event, status: str) -> None:
    data = event.Data()
    line = {
        "handler": handler,
        "id": event.EventID(),
        "source": event.Source(),
        "type": event.EventType(),
        "content_type": event.ContentType(),
        "topic": event.Subject(),
        "data": data.decode() if isinstance(data, bytes) else data,
        "extensions": {k: v for k, v in event.Extensions().items() if not k.startswith("_metadata_")},
        "status": status,
    }
    with lock, open(EVENTS, "a") as f:
        f.write(json.dumps(line) + "\n")


@app.subscribe(pubsub_name=PUBSUB, topic="orders")
def orders(event: v1.Event) -> TopicEventResponse:
    record("orders", event, "success")
    return TopicEventResponse("success")


@app.subscribe(pubsub_name=PUBSUB, topic="flaky")
def flaky(event: v1.Event) -> TopicEventResponse:
    with lock:
        first = event.EventID() not in seen
        seen.add(event.EventID())
    status = "retry" if first else "success"
    record("flaky", event, status)
    return TopicEventResponse(status)


@app.subscribe(pubsub_name=PUBSUB, topic="poison", dead_letter_topic="poison-dead")
def poison(event: v1.Event) -> TopicEventResponse:
    record("poison", event, "drop")
    return TopicEventResponse("drop")


@app.subscribe(pubsub_name=PUBSUB, topic="poison-dead")
def poison_dead(event: v1.Event) -> None:
    record("poison-dead", event, "success")


@app.subscribe(pubsub_name=PUBSUB, topic="widgets", rule=Rule('event.type == "widget"', 1))
def widgets(event: v1.Event) -> None:
    record("widgets", event, "success")


@app.subscribe(pubsub_name=PUBSUB, topic="widgets", rule=Rule('event.type == "gadget" && event.source != ""', 2))
def gadgets(event: v1.Event) -> None:
    record("gadgets", event, "success")


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
