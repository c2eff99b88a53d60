"""Bad input on the HTTP port: every case answers with Dapr's error body and the right status,
changes nothing, and never takes l8 down. Protocol errors are sent as raw bytes; slow clients are
real sockets that trickle or stall. One in-process sidecar with short timeouts and a small
connection cap serves the module."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import sidecar_config, unique
from tests.http_client import Answer, raw, read_answers, request
from tests.servers import Server

COMPONENTS = {
    "statestore": {"kind": "state", "type": "nats.kv"},
    "lockstore": {"kind": "lock", "type": "nats.kv"},
    "pubsub": {"kind": "pubsub", "type": "nats.jetstream"},
}
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 1.0
MAX_CONNECTIONS = 250
DEADLINE = 30.0


@pytest.fixture(scope="module")
async def sidecar(nats_server: Server) -> AsyncIterator[Sidecar]:
    config = sidecar_config(nats_server.url, COMPONENTS)
    server = config.server.model_copy(
        update={
            "http_header_timeout": HEADER_TIMEOUT,
            "http_idle_timeout": IDLE_TIMEOUT,
            "http_max_connections": MAX_CONNECTIONS,
        }
    )
    sidecar = Sidecar(config.model_copy(update={"server": server}))
    await sidecar.start()
    yield sidecar
    await sidecar.stop()


def port_of(sidecar: Sidecar) -> int:
    assert sidecar.http is not None
    return sidecar.http.port


async def stored(sidecar: Sidecar, key: str) -> bytes:
    assert sidecar.grpc is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc.port}") as channel:
        got = await runtime_pb2_grpc.RuntimeStub(channel).GetState(pb.GetStateRequest(store_name="statestore", key=key))
    return got.data


async def healthy(sidecar: Sidecar) -> bool:
    answer = await request(port_of(sidecar), "GET", "/v1.0/healthz", timeout=DEADLINE)
    return answer.status == 204


def dapr_error(answer: Answer, status: int) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    body: dict[str, Any] = json.loads(answer.body)
    assert body["errorCode"].startswith("ERR_") and body["message"], body
    return body


# ---- the protocol ----

HEAD = "host: x\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1.0/healthz HTTP/9.9\r\n\r\n", 400),
        (f"GET /v1.0/healthz HTTP/1.1\r\n{HEAD}Bad Header\r\n\r\n".encode(), 400),
        (f"GET /v1.0/healthz HTTP/1.1\r\n{HEAD}X: a\x00b\r\n\r\n".encode(), 400),
        (f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Content-Length: abc\r\n\r\n".encode(), 400),
        (f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Content-Length: -1\r\n\r\n".encode(), 400),
        (f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(), 400),
        (
            f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            "2\r\n[]\r\n0\r\n\r\n".encode(),
            400,
        ),
        (f"GET /v1.0/healthz HTTP/1.1\r\n{HEAD}X-Big: {'a' * 65536}\r\n\r\n".encode(), 431),
        (f"GET /{'a' * 65536} HTTP/1.1\r\n{HEAD}\r\n".encode(), 431),
        (f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Content-Length: {17 << 20}\r\n\r\n".encode(), 413),
    ],
    ids=[
        "request-line",
        "version",
        "header",
        "nul-in-header",
        "content-length",
        "negative-length",
        "chunk-size",
        "length-and-chunked",
        "64k-header",
        "64k-url",
        "declared-17mib",
    ],
)
async def test_a_request_l8_cannot_read_gets_an_answer_before_the_connection_closes(
    sidecar: Sidecar, data: bytes, status: int
) -> None:
    [answer] = await raw(port_of(sidecar), data)
    dapr_error(answer, status)
    assert answer.headers.get("connection") == "close"
    assert await healthy(sidecar)


async def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_saved(sidecar: Sidecar) -> None:
    key = unique("big")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sidecar))
    try:
        writer.write(f"POST /v1.0/state/statestore HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(ConnectionError):
            first = f'[{{"key":"{key}","value":"'.encode()
            writer.write(f"{len(first):x}\r\n".encode() + first + b"\r\n")
            for _ in range(17):
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
        [answer] = await read_answers(reader)
        dapr_error(answer, 413)
    finally:
        writer.close()
    assert await stored(sidecar, key) == b""


async def test_pipelined_requests_are_answered_in_order(sidecar: Sidecar) -> None:
    one = f"GET /v1.0/healthz HTTP/1.1\r\n{HEAD}\r\n"
    two = f"GET /v1.0/nothing HTTP/1.1\r\n{HEAD}\r\n"
    answers = await raw(port_of(sidecar), (one + two + one).encode(), count=3)
    assert [a.status for a in answers] == [204, 404, 204]


# ---- slow and idle clients ----


async def test_slow_clients_are_cut_off_after_the_header_timeout_while_health_keeps_answering(
    sidecar: Sidecar,
) -> None:
    port = port_of(sidecar)
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    try:
        for _, writer in slow:
            writer.write(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        for _ in range(3):
            assert await healthy(sidecar)
        # Each slow client gets 408 and its connection closes, without anyone waiting a fixed time.
        closed = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in slow)), timeout=DEADLINE + HEADER_TIMEOUT
        )
        assert all(b" 408 " in data.split(b"\r\n", 1)[0] for data in closed)
    finally:
        for _, writer in slow:
            writer.close()
    assert await healthy(sidecar)


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(sidecar: Sidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sidecar))
    try:
        writer.write(f"GET /v1.0/healthz HTTP/1.1\r\n{HEAD}\r\n".encode())
        [answer] = await read_answers(reader)
        assert answer.status == 204 and answer.headers.get("connection") != "close"
        # Kept alive, then closed by l8 once it has waited the idle timeout for a next request.
        assert await asyncio.wait_for(reader.read(), DEADLINE + IDLE_TIMEOUT) == b""
    finally:
        writer.close()


async def test_at_the_connection_cap_the_longest_waiting_connection_makes_room(sidecar: Sidecar) -> None:
    port = port_of(sidecar)
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        # Every slot is taken by a connection that sends nothing; newcomers still get in.
        newcomers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        idle += newcomers
        assert await healthy(sidecar)
        # The oldest waiting connections were closed to make room, in order.
        for reader, _ in idle[:6]:
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        assert sidecar.http is not None and sidecar.http.connections <= MAX_CONNECTIONS
    finally:
        for _, writer in idle:
            writer.close()


# ---- bodies, fields and paths ----

BAD_BODIES = [
    (b"{not json", "malformed JSON"),
    (b"", "no body"),
    (b'"a string"', "wrong top-level type"),
]
JSON_ROUTES = [
    "/v1.0/state/statestore",
    "/v1.0/state/statestore/bulk",
    "/v1.0/state/statestore/transaction",
    "/v1.0-alpha1/publish/bulk/pubsub/t",
    "/v1.0-alpha1/lock/lockstore",
    "/v1.0-alpha1/unlock/lockstore",
]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize(("body", "why"), BAD_BODIES, ids=[w for _, w in BAD_BODIES])
async def test_every_json_route_refuses_a_body_it_cannot_read_with_400(
    sidecar: Sidecar, path: str, body: bytes, why: str
) -> None:
    answer = await request(port_of(sidecar), "POST", path, body, {"content-type": "application/json"})
    dapr_error(answer, 400)


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1.0/state/statestore", [{"value": 1}], "key is missing"),
        ("/v1.0/state/statestore", [{"key": 5, "value": 1}], "key must be a string"),
        ("/v1.0/state/statestore", [{"key": "k", "etag": 3}], "etag must be a string"),
        ("/v1.0/state/statestore", [{"key": "k", "metadata": {"ttlInSeconds": 5}}], "must be a string"),
        ("/v1.0/state/statestore", [{"key": "k", "metadata": {"ttlInSeconds": "soon"}}], "ttlInSeconds"),
        ("/v1.0/state/statestore", ["k"], "must be a JSON object"),
        ("/v1.0/state/statestore", [{"key": "k" * 2000}], "at most 1024"),
        ("/v1.0/state/statestore/bulk", {"keys": "k"}, "keys must be a JSON array of strings"),
        ("/v1.0/state/statestore/bulk", {"keys": ["a"], "parallelism": "2"}, "whole number"),
        ("/v1.0/state/statestore/transaction", {"operations": {}}, "operations must be a JSON array"),
        ("/v1.0/state/statestore/transaction", {"operations": [{"request": {"key": "a"}}]}, "operation is missing"),
        ("/v1.0-alpha1/lock/lockstore", {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": "9"}, "whole number"),
        (
            "/v1.0-alpha1/lock/lockstore",
            {"resourceId": "r", "lockOwner": "o", "expiryInSeconds": 2**40},
            "out of range",
        ),
        ("/v1.0-alpha1/lock/lockstore", {"resourceId": "r", "expiryInSeconds": 5}, "lock_owner is empty"),
        ("/v1.0-alpha1/publish/bulk/pubsub/t", [{"event": "x"}], "entryId is missing"),
        ("/v1.0-alpha1/publish/bulk/pubsub/t", [{"entryId": "1", "event": {}, "contentType": "text/plain"}], "string"),
        ("/v1.0-alpha1/publish/bulk/pubsub/t", [{"entryId": "1"}], "event is missing"),
    ],
)
async def test_wrong_types_and_missing_fields_say_what_is_wrong_and_change_nothing(
    sidecar: Sidecar, path: str, body: Any, says: str
) -> None:
    answer = await request(port_of(sidecar), "POST", path, body)
    assert says in dapr_error(answer, 400)["message"]
    assert await stored(sidecar, "k") == b""


async def test_a_bad_save_among_good_items_saves_none_of_them(sidecar: Sidecar) -> None:
    good = unique("good")
    answer = await request(port_of(sidecar), "POST", "/v1.0/state/statestore", [{"key": good, "value": 1}, {"key": 1}])
    dapr_error(answer, 400)
    assert await stored(sidecar, good) == b""


@pytest.mark.parametrize(
    "path",
    [
        "/v1.0/state/statestore/a%00b",
        "/v1.0/state/statestore/a%0D%0Ab",
        "/v1.0/state/statestore/%FF%FE",
        "/v1.0/state/statestore/k?metadata.x=%FF",
    ],
    ids=["nul", "crlf", "not-utf8", "query-not-utf8"],
)
async def test_control_characters_and_bad_encodings_in_the_path_are_refused(sidecar: Sidecar, path: str) -> None:
    dapr_error(await request(port_of(sidecar), "GET", path), 400)
