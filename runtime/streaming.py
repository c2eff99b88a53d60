"""Streaming subscriptions for the fronts: native SubscribeTopicEvents and Dapr's
SubscribeTopicEventsAlpha1, which have the same shape in different message sets.

The client's first message is ``initial_request{pubsub_name, topic, metadata, dead_letter_topic}``;
l8 checks it, answers an empty ``initial_response`` first (the Dapr SDK waits for it), then sends
``event_message``s; the client settles each with ``event_processed{id, status}``. Events not
settled when the stream ends go back to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from bridges.errors import Code, L8Error
from handlers.pubsub import Event
from runtime.forward import Forwarder, FrontError, abort
from runtime.subscriber import StreamSession, SubscriberManager

log = logging.getLogger("l8.runtime.streaming")


@dataclass(slots=True, frozen=True)
class Messages:
    """The message classes of one front's streaming rpc."""

    request: Any
    response: Any
    initial_response: Any
    event: Callable[[Event], Any]


def native_messages() -> Messages:
    from handlers.proto import runtime_pb2 as pb
    from runtime.app_dapr import event_fields

    def event(ev: Event) -> Any:
        msg = pb.TopicEventRequest(**event_fields(ev, "/"))
        for key, value in ev.extensions.items():
            msg.metadata[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return msg

    return Messages(
        pb.SubscribeTopicEventsRequest, pb.SubscribeTopicEventsResponse, pb.SubscribeTopicEventsResponseInitial, event
    )


def dapr_messages() -> Messages:
    from dapr.proto.runtime.v1 import pubsub_pb2 as dapr_pb2

    from runtime.app_dapr import topic_event_request

    return Messages(
        dapr_pb2.SubscribeTopicEventsRequestAlpha1,
        dapr_pb2.SubscribeTopicEventsResponseAlpha1,
        dapr_pb2.SubscribeTopicEventsResponseInitialAlpha1,
        lambda ev: topic_event_request(ev, "/"),
    )


def stream_handler(forwarder: Forwarder, manager: SubscriberManager, messages: Messages) -> grpc.RpcMethodHandler:
    async def subscribe(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if first.WhichOneof("subscribe_topic_events_request_type") != "initial_request":
            await abort(context, Code.INVALID_ARGUMENT, "the first message of a subscription must be initial_request")
        init = first.initial_request
        if not init.pubsub_name:
            await abort(context, Code.INVALID_ARGUMENT, "pubsubName is required")
        if not init.topic:
            await abort(context, Code.INVALID_ARGUMENT, "topic is required")
        try:
            pubsub = forwarder.component("pubsub", init.pubsub_name)
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        dead_letter = init.dead_letter_topic if init.HasField("dead_letter_topic") else None
        try:
            session = await manager.open_stream(pubsub, init.topic, dead_letter, dict(init.metadata))
        except L8Error as exc:
            await abort(context, exc.code, str(exc))
        reader = asyncio.create_task(_read(requests, session, manager))
        try:
            yield messages.response(initial_response=messages.initial_response())
            async for event in session.events():
                yield messages.response(event_message=messages.event(event))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await manager.close_stream(session)

    return grpc.stream_stream_rpc_method_handler(
        subscribe,
        request_deserializer=messages.request.FromString,
        response_serializer=lambda msg: msg.SerializeToString(),
    )


async def _read(requests: AsyncIterator[Any], session: StreamSession, manager: SubscriberManager) -> None:
    try:
        async for req in requests:
            kind = req.WhichOneof("subscribe_topic_events_request_type")
            if kind == "event_processed":
                await session.processed(req.event_processed.id, req.event_processed.status.status)
            elif kind == "initial_request":
                log.warning("a second initial_request on one subscription is ignored")
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        log.debug("subscription stream ended: %s", exc)
    finally:
        # The client stopped sending: it can settle nothing more, so the stream ends.
        await manager.close_stream(session)
