"""Routing by method and path: the path is split as it came, then each segment is decoded on its
own, so ``%2F`` inside a key or a method never splits it (and ``%2E%2E`` is no path step)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from runtime.dapr_http.errors import HttpError, malformed
from runtime.http import Request, Response, error_response

Params = dict[str, str]
Handler = Callable[[Request, Params], Awaitable[Response]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True, frozen=True)
class Route:
    methods: frozenset[str]
    segments: tuple[str, ...]  # literals, "{name}", or a last "{name*}" taking the rest
    handler: Handler

    @property
    def rest(self) -> bool:
        return bool(self.segments) and self.segments[-1].endswith("*}")


def route(methods: Iterable[str] | str, pattern: str, handler: Handler) -> Route:
    names = {methods} if isinstance(methods, str) else set(methods)
    if "GET" in names:
        names.add("HEAD")
    return Route(frozenset(names), tuple(pattern.strip("/").split("/")), handler)


def decode(segment: str) -> str:
    try:
        value = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise malformed(f"path segment {segment[:64]!r} is not UTF-8 once decoded") from None
    if _CONTROL.search(value):
        raise malformed(f"path segment {segment[:64]!r} holds a control character")
    return value


class Router:
    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes: list[Route] = list(routes)

    def add(self, *routes: Route) -> None:
        self._routes.extend(routes)

    def wrap(self, wrap: Callable[[Route], Handler]) -> None:
        """Give every route the handler ``wrap(route)`` makes of it (the fronts' hooks, once)."""
        self._routes = [dataclasses.replace(r, handler=wrap(r)) for r in self._routes]

    def _match(self, parts: list[str], route: Route) -> Params | None:
        segments = route.segments
        if route.rest:
            fixed = segments[:-1]
            if len(parts) < len(fixed):
                return None
        else:
            fixed = segments
            if parts and parts[-1] == "" and len(parts) == len(fixed) + 1:
                parts = parts[:-1]  # a trailing slash
            if len(parts) != len(fixed):
                return None
        params: Params = {}
        for seg, part in zip(fixed, parts, strict=False):
            if seg.startswith("{"):
                params[seg[1:-1]] = part
            elif seg != part:
                return None
        if route.rest:
            params[segments[-1][1:-2]] = "/".join(parts[len(fixed) :])
        return params

    async def __call__(self, request: Request) -> Response:
        parts = request.path.lstrip("/").split("/")
        allowed: set[str] = set()
        for candidate in self._routes:
            raw = self._match(parts, candidate)
            if raw is None:
                continue
            if request.method not in candidate.methods:
                allowed |= candidate.methods
                continue
            try:
                params = {k: ("/".join(decode(p) for p in v.split("/")) if v else "") for k, v in raw.items()}
                return await candidate.handler(request, params)
            except HttpError as exc:
                return exc.response()
        if allowed:
            response = error_response(
                405, "ERR_METHOD_NOT_ALLOWED", f"{request.method[:16]} is not allowed on {request.path[:200]}"
            )
            response.headers["allow"] = ", ".join(sorted(allowed))
            return response
        return error_response(404, "ERR_NOT_FOUND", f"no route for {request.path[:200]}")
