"""`l8 subscriptions`: every subscription announced on the bus, with what its workers report.

It reads the registry the pub/sub workers keep (a leased board, ``l8_<ns>_subscriptions``): each
sidecar instance's announcement and each worker's status of its delivery loops, joined per
(app, component, target, topic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from bus import Bus
from bus.board import Board
from runtime.config import Config


def bus_servers(config: Config) -> list[str]:
    """The bus to read: the configured one, or the embedded one a running `l8 run` wrote down."""
    if not config.bus.embedded:
        return config.bus.servers
    path = Path(config.data_dir) / "bus-url"
    try:
        return [path.read_text().strip()]
    except OSError:
        raise LookupError(
            f"no running `l8 run` with the embedded bus writes {path}; pass --bus nats://host:port"
        ) from None


def rows_of(notices: dict[str, bytes]) -> list[dict[str, Any]]:
    declared: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    instances: dict[tuple[str, str, str, str], set[str]] = {}
    reports: dict[tuple[str, str, str, str], list[tuple[str, dict[str, Any]]]] = {}
    for key, value in notices.items():
        parts = key.split(".")
        if len(parts) != 4:
            continue
        kind, app, pubsub, owner = parts
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if kind == "decl":
            for spec in body.get("specs", []):
                k = (app, pubsub, spec.get("target", "app"), spec.get("topic", ""))
                declared.setdefault(k, spec)
                instances.setdefault(k, set()).add(owner)
        elif kind == "status":
            for loop in (body.get("loops") or {}).values():
                k = (app, pubsub, loop.get("target", "app"), loop.get("topic", ""))
                reports.setdefault(k, []).append((owner, loop))
    rows = []
    for k in sorted(set(declared) | set(reports)):
        app, pubsub, target, topic = k
        spec = declared.get(k, {})
        loops = reports.get(k, [])
        failing = [loop for _w, loop in loops if loop.get("state") in ("failing", "unreachable")]
        if not loops:
            state, reason = ("announced", "no worker delivers it yet") if spec else ("stale", "no longer announced")
        elif failing:
            state, reason = str(failing[0].get("state")), str(failing[0].get("reason", ""))
        else:
            state, reason = str(loops[0][1].get("state", "")), ""
        rows.append(
            {
                "app": app,
                "pubsub": pubsub,
                "topic": topic,
                "target": target,
                "origin": spec.get("origin", ""),
                "state": state,
                "reason": reason,
                "instances": sorted(instances.get(k, ())),
                "workers": sorted(w for w, _ in loops),
            }
        )
    return rows


async def collect(config: Config) -> list[dict[str, Any]]:
    from runtime import bus_identity

    servers = bus_servers(config)
    identity = bus_identity.of(config, bus_identity.CLI)
    auth = await bus_identity.auth_for(config, identity, servers)
    bus = Bus(servers, name="l8-subscriptions", connect_timeout=3.0, auth=auth, inbox_prefix=identity.inbox)
    await bus.start()
    try:
        board = Board(bus, f"l8_{config.namespace}_subscriptions")
        return rows_of(await board.snapshot(">"))
    finally:
        await bus.stop()


def render(rows: list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return "no subscriptions are announced"
    head = ("APP", "PUBSUB", "TOPIC", "TARGET", "ORIGIN", "STATE", "WORKERS", "REASON")
    table = [head] + [
        (
            r["app"],
            r["pubsub"],
            r["topic"],
            r["target"],
            r["origin"],
            r["state"],
            str(len(r["workers"])),
            r["reason"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in table
    ).rstrip()
