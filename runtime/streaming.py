"""Streaming subscriptions for the fronts: native SubscribeTopicEvents and Dapr's
SubscribeTopicEventsAlpha1, which have the same shape in different message sets.

The client's first message is ``initial_request{pubsub_name, topic, metadata, dead_letter_topic}``;
l8 checks it, answers an empty ``initial_response`` first (the Dapr SDK waits for it), then sends
``event_message``s; the client settles each with ``event_processed{id, status}``. Events not
settled when the stream ends go back to the broker.

A stream is announced as a subscription of the app (target ``stream``) for the pub/sub workers to
deliver; its events reach this sidecar through the event server (runtime/event_server.py). At most
``maxInFlight`` (initial request metadata, default 100) wait for their answer at once.
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
from handlers.pubsub_envelope import Event
from handlers.pubsub_specs import MAX_CONCURRENCY, SpecError, metadata_int
from runtime.event_server import EventServer, StreamSession
from runtime.forward import Forwarder, FrontError, abort
from runtime.subscriptions import Announcer

DEFAULT_MAX_IN_FLIGHT = 100

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


@dataclass(slots=True)
class Streams:
    """What a streaming subscription needs of the sidecar: its announcement and its event route."""

    announcer: Announcer
    events: EventServer

    async def open(self, pubsub: str, topic: str, dead_letter: str | None, metadata: dict[str, str]) -> Any:
        try:
            max_in_flight = metadata_int(metadata, "maxInFlight", DEFAULT_MAX_IN_FLIGHT, 1, MAX_CONCURRENCY)
        except SpecError as exc:
            raise FrontError(Code.INVALID_ARGUMENT, str(exc)) from None
        assert max_in_flight is not None
        spec = self.announcer.open_stream(pubsub, topic, dead_letter, max_in_flight)
        try:
            session = await self.events.open_stream(pubsub, topic, max_in_flight)
        except BaseException:
            self.announcer.close_stream(spec)
            raise
        return spec, session

    async def close(self, spec: Any, session: StreamSession) -> None:
        self.announcer.close_stream(spec)
        await self.events.close_stream(session)


def stream_handler(forwarder: Forwarder, streams: Streams, messages: Messages) -> grpc.RpcMethodHandler:
    async def subscribe(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            first = _decode(messages.request, await anext(requests))
        except StopAsyncIteration:
            return
        except Exception:  # protobuf's DecodeError; the message classes are untyped
            await abort(context, Code.INVALID_ARGUMENT, _UNDECODABLE)
        if first.WhichOneof("subscribe_topic_events_request_type") != "initial_request":
            await abort(context, Code.INVALID_ARGUMENT, "the first message of a subscription must be initial_request")
        init = first.initial_request
        if not init.pubsub_name:
            await abort(context, Code.INVALID_ARGUMENT, "pubsubName is required")
        if not init.topic:
            await abort(context, Code.INVALID_ARGUMENT, "topic is required")
        dead_letter = init.dead_letter_topic if init.HasField("dead_letter_topic") else None
        try:
            pubsub = forwarder.component("pubsub", init.pubsub_name)
            spec, session = await streams.open(pubsub, init.topic, dead_letter or None, dict(init.metadata))
        except FrontError as exc:
            await abort(context, exc.code, exc.message)
        except L8Error as exc:
            await abort(context, exc.code, str(exc))
        reader = asyncio.create_task(_read(requests, session, messages.request))
        try:
            yield messages.response(initial_response=messages.initial_response())
            async for event in session.events():
                yield messages.response(event_message=messages.event(event))
            if reader.done() and not reader.cancelled() and reader.result():
                await abort(context, Code.INVALID_ARGUMENT, _UNDECODABLE)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await streams.close(spec, session)

    return grpc.stream_stream_rpc_method_handler(
        subscribe,
        # Bytes in, decoded here: a message that is not one answers INVALID_ARGUMENT, where the
        # framework's own decoding would answer UNKNOWN.
        request_deserializer=None,
        response_serializer=lambda msg: msg.SerializeToString(),
    )


_UNDECODABLE = "a message of the subscription is not a valid SubscribeTopicEventsRequest"


def _decode(request: Any, raw: bytes) -> Any:
    return request.FromString(raw)


async def _read(requests: AsyncIterator[bytes], session: StreamSession, request: Any) -> bool:
    """Read the client's acknowledgements; True when one could not be decoded (the stream ends)."""
    try:
        async for raw in requests:
            try:
                req = _decode(request, raw)
            except Exception:  # protobuf's DecodeError
                return True
            kind = req.WhichOneof("subscribe_topic_events_request_type")
            if kind == "event_processed":
                session.processed(req.event_processed.id, req.event_processed.status.status)
            elif kind == "initial_request":
                log.warning("a second initial_request on one subscription is ignored")
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
        log.debug("subscription stream ended: %s", exc)
    finally:
        # The client stopped sending: it can settle nothing more, so the stream ends.
        session.close()
    return False
