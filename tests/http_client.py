"""A plain HTTP/1.1 client on asyncio sockets, for the HTTP tests: it sends exactly the bytes a test
gives (bad requests included) and reads the answer with httptools' response parser."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


class _Reader:
    def __init__(self) -> None:
        self.answers: list[Answer] = [Answer()]
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True
        self.answers.append(Answer())


async def read_answers(reader: asyncio.StreamReader, count: int = 1, timeout: float = 30.0) -> list[Answer]:
    """Up to ``count`` answers; fewer if the server closes the connection first."""
    state = _Reader()
    async with asyncio.timeout(timeout):
        while sum(a.complete for a in state.answers) < count:
            data = await reader.read(65536)
            if not data:
                break
            state.parser.feed_data(data)
    return [a for a in state.answers if a.complete]


async def raw(port: int, data: bytes, count: int = 1, timeout: float = 30.0) -> list[Answer]:
    """Send ``data`` as it is on a new connection; the answers that came before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_answers(reader, count, timeout)
    finally:
        writer.close()


async def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | Any = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
        headers = {"content-type": "application/json", **(headers or {})}
    data = body.encode() if isinstance(body, str) else body
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close", f"content-length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    answers = await raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + data, 1, timeout)
    assert answers, f"no answer to {method} {path}"
    return answers[0]
