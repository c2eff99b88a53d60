"""Publishes with the Dapr SDK's DaprClient, unchanged (DAPR_GRPC_PORT set by the test), then reads
a topic through the streaming ``subscribe``. Prints "ok" when every check held."""

from __future__ import annotations

import json
import sys

import grpc
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError

STREAM_TOPIC = sys.argv[1]

with DaprClient() as d:
    d.publish_event("pubsub", "orders", json.dumps({"order": 1}), data_content_type="application/json")
    d.publish_event("pubsub", "orders", "plain text", data_content_type="text/plain")
    d.publish_event("pubsub", "flaky", json.dumps({"flaky": 1}), data_content_type="application/json")
    d.publish_event("pubsub", "poison", json.dumps({"poison": 1}), data_content_type="application/json")
    for kind in ("widget", "gadget"):
        event = {"specversion": "1.0", "id": f"{kind}-1", "source": "factory", "type": kind, "data": {"kind": kind}}
        d.publish_event("pubsub", "widgets", json.dumps(event), data_content_type="application/cloudevents+json")
    try:
        d.publish_event("pubsub", "", "x")
        raise AssertionError("an empty topic was accepted")
    except DaprGrpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc

    sub = d.subscribe("pubsub", STREAM_TOPIC)
    try:
        d.publish_event("pubsub", STREAM_TOPIC, json.dumps({"streamed": 1}), data_content_type="application/json")
        message = None
        while message is None:
            message = sub.next_message()
        assert message.topic() == STREAM_TOPIC, message.topic()
        assert message.pubsub_name() == "pubsub"
        assert json.loads(message.raw_data()) == {"streamed": 1}, message.raw_data()
        sub.respond_success(message)
    finally:
        sub.close()
print("ok")
