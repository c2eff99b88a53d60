"""`l8 asyncapi`: an AsyncAPI 3.0 document of the configured pub/sub components, topics and
subscriptions, built with FastStream's specification generator.

FastStream describes here; it does not consume: l8's delivery loop needs explicit settling after
an app's gRPC answer, a dead-letter step and handing back on shutdown, which FastStream's
subscriber (ack policy around a handler) does not model; see handlers/pubsub_delivery.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from runtime.config import Config

if TYPE_CHECKING:
    from runtime.app_channel import AppSubscription


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope l8 puts around a published payload."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    source: str = Field(description="the publisher's app id")
    type: str = "com.dapr.event.sent"
    specversion: str = "1.0"
    datacontenttype: str = "text/plain"
    data: Any = None
    data_base64: str | None = None
    topic: str
    pubsubname: str
    time: str
    traceparent: str
    expiration: str | None = Field(default=None, description="set from ttlInSeconds")


def _subject(config: Config, pubsub: str, topic: str) -> str:
    from bridges.nats.pubsub import event_subject, topic_token

    comp = config.components[pubsub]
    if comp.type == "nats.jetstream":
        return event_subject(config.namespace, pubsub, topic_token(topic))
    return f"{pubsub}/{topic}"  # a broker outside the bus: named by component and topic


def document(config: Config, app_subscriptions: list[AppSubscription] | None = None) -> dict[str, Any]:
    from faststream.nats import NatsBroker
    from faststream.specification import AsyncAPI

    from runtime.subscriptions import spec_from_app, spec_from_config

    servers = ["nats://127.0.0.1:4222"] if config.bus.embedded else config.bus.servers
    broker = NatsBroker(servers)
    app_id, timeout = config.app.id, config.delivery_timeout
    specs = [spec_from_config(s, app_id, timeout) for s in config.subscriptions]
    specs += [spec_from_app(s, app_id, timeout) for s in app_subscriptions or []]

    async def _handler(body: CloudEvent) -> None:  # describes the payload; never called
        return None

    for name, comp in config.components_of("pubsub").items():
        broker.publisher(
            f"l8.{config.namespace}.evt.{name}.>" if comp.type == "nats.jetstream" else f"{name}/*",
            title=f"publish:{name}",
            description=f"events published through pub/sub component {name!r} ({comp.type}), enveloped",
            schema=CloudEvent,
        )
    for spec in specs:
        routes = [f"{r.match} -> {r.path}" for r in spec.routes.rules]
        if spec.routes.default is not None:
            routes.append(f"default -> {spec.routes.default!r}")
        details = [
            f"delivered to app {config.app.id!r} by OnTopicEvent" + (" (bulk)" if spec.bulk else ""),
            f"declared by the {spec.origin}",
            f"concurrency {spec.concurrency}" + (" (ordered)" if spec.ordered else ""),
            f"routes: {'; '.join(routes)}",
        ]
        if spec.dead_letter_topic:
            details.append(f"dead-letter topic {spec.dead_letter_topic!r}")
        if spec.max_deliveries:
            details.append(f"at most {spec.max_deliveries} deliveries")
        broker.subscriber(
            _subject(config, spec.pubsub, spec.topic),
            title=f"subscribe:{spec.pubsub}/{spec.topic}",
            description="; ".join(details),
        )(_handler)
    spec_doc = AsyncAPI(
        broker,
        title=f"l8 app {config.app.id}",
        version="1.0.0",
        description=f"pub/sub of namespace {config.namespace!r}",
        schema_version="3.0.0",
    )
    result: dict[str, Any] = spec_doc.to_specification().to_jsonable()
    return result


async def app_subscriptions(config: Config, timeout: float = 2.0) -> list[AppSubscription]:
    """The app's declared subscriptions, when its callback is configured and answers in time."""
    if config.app.callback is None:
        return []
    from runtime.app_channel import AppCallError, open_app

    channel = open_app(config.app.callback, protocol=config.app.protocol)
    try:
        return await channel.list_subscriptions(timeout=timeout) or []
    except AppCallError:
        return []
    finally:
        await channel.close()


def render(config: Config, ask_app: bool) -> str:
    listed = asyncio.run(app_subscriptions(config)) if ask_app else []
    return json.dumps(document(config, listed), indent=2)
