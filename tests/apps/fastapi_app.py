"""An HTTP app written with FastAPI and the ``dapr`` package's own ``dapr.ext.fastapi.DaprApp``, as a
Dapr user writes one: subscriptions through ``DaprApp.subscribe``, invocations and input bindings as
plain routes. It records what reaches it (``GET /seen``) for the tests to read.

Environment: APP_PORT; TOPIC (a prefix: the app subscribes to ``<TOPIC>-ok``, ``-retry``, ``-drop``,
``-missing``, ``-fail`` and ``-dead``).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import uvicorn
from dapr.ext.fastapi import DaprApp
from fastapi import Body, FastAPI, Request, Response
from fastapi.responses import JSONResponse

Json = Annotated[dict[str, Any], Body()]
app = FastAPI()
dapr_app = DaprApp(app)
TOPIC = os.environ.get("TOPIC", "fastapi")
seen: dict[str, list[Any]] = {}
state = {"healthy": True}


def record(kind: str, value: Any) -> None:
    seen.setdefault(kind, []).append(value)


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-ok", route="/orders")
async def orders(request: Request, event: Json) -> dict[str, str]:
    record("ok", {"event": event, "content_type": request.headers.get("content-type")})
    return {"status": "SUCCESS"}


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-retry")
async def retry(event: Json) -> dict[str, str]:
    record("retry", event["id"])
    return {"status": "RETRY" if len(seen["retry"]) == 1 else "SUCCESS"}


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-drop", dead_letter_topic=f"{TOPIC}-dead")
async def drop(event: Json) -> dict[str, str]:
    record("drop", event["id"])
    return {"status": "DROP"}


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-dead")
async def dead(event: Json) -> dict[str, str]:
    record("dead", {"id": event["id"], "topic": event["topic"]})
    return {"status": "SUCCESS"}


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-missing")
async def missing(event: Json) -> Response:
    record("missing", event["id"])
    return Response(status_code=404)


@dapr_app.subscribe(pubsub="pubsub", topic=f"{TOPIC}-fail")
async def fail(event: Json) -> Response:
    record("fail", event["id"])
    if len(seen["fail"]) == 1:
        return Response(b"not now", status_code=500)
    return Response(status_code=200)  # an empty 2xx answer is SUCCESS


@app.post("/bulk-orders")
async def bulk(envelope: Json) -> dict[str, Any]:
    record("bulk", envelope)
    statuses = []
    for entry in envelope["entries"]:
        retry = entry["event"].get("data", {}).get("retry") and entry["entryId"] not in seen.get("retried", [])
        if retry:
            record("retried", entry["entryId"])
        statuses.append({"entryId": entry["entryId"], "status": "RETRY" if retry else "SUCCESS"})
    return {"statuses": statuses}


@app.post("/configuration/{store}/{key}")
async def configuration(store: str, key: str, update: Json) -> dict[str, str]:
    record("configuration", {"store": store, "key": key, "update": update})
    return {}


@app.api_route("/echo/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def echo(request: Request, rest: str) -> Response:
    body = await request.body()
    status = int(request.query_params.get("status", "200"))
    answer = {
        "verb": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "headers": dict(request.headers),
        "body": body.decode(errors="replace"),
    }
    return JSONResponse(answer, status_code=status, headers={"x-echoed": "yes"})


@app.post("/plain")
async def plain(request: Request) -> Response:
    return Response(b"plain words: " + await request.body(), media_type="text/x-words")


@app.options("/orders-in")
async def binding_options() -> Response:
    return Response(status_code=200)


@app.post("/orders-in")
async def binding_event(request: Request) -> Response:
    record("binding", {"body": (await request.body()).decode(), "headers": dict(request.headers)})
    return Response(status_code=200)


@app.get("/healthz")
async def healthz() -> Response:
    return Response(status_code=200 if state["healthy"] else 503)


@app.post("/set-health/{value}")
async def set_health(value: str) -> dict[str, bool]:
    state["healthy"] = value == "up"
    return state


@app.get("/seen")
async def get_seen() -> dict[str, list[Any]]:
    return seen


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), log_level="warning")
