"""A plain asyncio AppCallback server for the durability tests. Serves on $APP_PORT, takes $DELAY
seconds per event, and appends to $EVENTS_FILE a "started" line when an event arrives and a
"success" line just before it answers SUCCESS, so a test can tell in-flight events from done ones."""

from __future__ import annotations

import asyncio
import json
import os

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as ac
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as ac_grpc

EVENTS = os.environ["EVENTS_FILE"]
DELAY = float(os.environ.get("DELAY", "0"))


def record(status: str, request: ac.TopicEventRequest) -> None:
    line = {"status": status, "id": request.id, "topic": request.topic, "data": json.loads(request.data)}
    with open(EVENTS, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()


class App(ac_grpc.AppCallbackServicer):
    async def OnTopicEvent(self, request: ac.TopicEventRequest, context: object) -> ac.TopicEventResponse:
        record("started", request)
        if DELAY:
            await asyncio.sleep(DELAY)
        record("success", request)
        return ac.TopicEventResponse(status=ac.TopicEventResponse.SUCCESS)


async def main() -> None:
    server = grpc.aio.server()
    ac_grpc.add_AppCallbackServicer_to_server(App(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['APP_PORT']}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
