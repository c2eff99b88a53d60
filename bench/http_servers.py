"""The minimal HTTP servers the HTTP benchmark compares l8 with, each its own process:
``python -m bench.http_servers KIND --port P ...``, all on l8's own HTTP layer (runtime/http.py,
httptools) and uvloop, so the difference to l8's rows is the sidecar, not the HTTP parser.

- ``noop``: answers 204 to everything: the floor of any HTTP row;
- ``nats-get``: GET /<key> reads a NATS KV bucket directly (nats-py ``kv.get``) and answers the value;
- ``nats-publish``: POST /<topic> publishes the body to JetStream directly (``js.publish``), 204.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop

from runtime.http import HttpServer, Request, Response


async def serve(args: argparse.Namespace) -> None:
    close: Any = None
    if args.kind == "noop":

        async def route(request: Request) -> Response:
            return Response(204)

    else:
        import nats

        nc = await nats.connect(args.nats)
        js = nc.jetstream()
        close = nc.close
        if args.kind == "nats-get":
            kv = await js.key_value(args.bucket)

            async def route(request: Request) -> Response:
                entry = await kv.get(request.path.rsplit("/", 1)[1])
                return Response(
                    200, entry.value or b"", {"content-type": "application/json", "etag": str(entry.revision)}
                )

        else:

            async def route(request: Request) -> Response:
                await js.publish(f"{args.subject}.{request.path.rsplit('/', 1)[1]}", request.body)
                return Response(204)

    server = HttpServer("127.0.0.1", args.port, route)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    if close is not None:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_servers")
    parser.add_argument("kind", choices=["noop", "nats-get", "nats-publish"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--subject", default="bench.evt")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
