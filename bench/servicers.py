"""The comparison gRPC servers, each run as its own process: ``python -m bench.servicers KIND ...``.

- ``noop``: a unary method that returns empty bytes; generic handler, raw bytes, no protobuf work.
- ``nats``: GetState that reads a NATS KV bucket directly per call (nats-py ``kv.get``).
- ``redis``: GetState that reads Redis directly per call (redis.asyncio ``GET``).

The state servicers take l8's own ``GetStateRequest`` and answer ``GetStateResponse``, so they do
the protobuf work an app's own servicer would. All run on uvloop, like ``l8 run``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvloop

from handlers.proto import runtime_pb2 as pb

NOOP_SERVICE = "bench.Noop"
NOOP_METHOD = f"/{NOOP_SERVICE}/Call"
STATE_SERVICE = "bench.DirectState"
STATE_METHOD = f"/{STATE_SERVICE}/GetState"
_OPTIONS = [("grpc.so_reuseport", 0)]


def _noop_handler() -> grpc.GenericRpcHandler:
    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return b""

    return grpc.method_handlers_generic_handler(NOOP_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)})


def _state_handler(
    read: Callable[[str], Awaitable[pb.GetStateResponse]],
) -> grpc.GenericRpcHandler:
    async def get_state(request: pb.GetStateRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await read(request.key)

    method = grpc.unary_unary_rpc_method_handler(
        get_state,
        request_deserializer=pb.GetStateRequest.FromString,
        response_serializer=pb.GetStateResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(STATE_SERVICE, {"GetState": method})


async def _nats_reader(url: str, bucket: str) -> tuple[Callable[[str], Awaitable[pb.GetStateResponse]], Any]:
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(bucket)

    async def read(key: str) -> pb.GetStateResponse:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return pb.GetStateResponse()
        return pb.GetStateResponse(data=entry.value or b"", etag=str(entry.revision))

    return read, nc.close


async def _redis_reader(url: str) -> tuple[Callable[[str], Awaitable[pb.GetStateResponse]], Any]:
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5)
    client = aioredis.Redis(connection_pool=pool)
    await client.ping()

    async def read(key: str) -> pb.GetStateResponse:
        value = await client.get(key)
        return pb.GetStateResponse(data=value.encode() if isinstance(value, str) else value or b"")

    return read, client.aclose


async def serve(args: argparse.Namespace) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    close: Any = None
    if args.kind == "noop":
        server.add_generic_rpc_handlers((_noop_handler(),))
    elif args.kind == "nats":
        read, close = await _nats_reader(args.nats, args.bucket)
        server.add_generic_rpc_handlers((_state_handler(read),))
    else:
        read, close = await _redis_reader(args.redis)
        server.add_generic_rpc_handlers((_state_handler(read),))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    if close is not None:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servicers")
    parser.add_argument("kind", choices=["noop", "nats", "redis"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
