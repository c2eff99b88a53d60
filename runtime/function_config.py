"""Config of WebAssembly functions: ``functions: [...]`` and ``wasm: {...}`` (runtime/config.py holds them).

The same ``FunctionConfig`` is what ``l8 wasm deploy`` stores in KV for the fleet, without ``module``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bus.subjects import TOKEN
from handlers.limits import NAME as MAX_NAME

if TYPE_CHECKING:
    # Imported when a function is built, not when config loads: wasmtime is large to load.
    from handlers.functions import Allow, FunctionSpec, Limits
    from handlers.pubsub_specs import Spec

MAX_ENTRY = 256  # characters of one allow-list entry
MAX_ENTRIES = 256


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionLimitsConfig(_Model):
    memoryMb: int = Field(default=64, ge=1, le=2047, description="linear memory cap, MiB")
    timeoutMs: int = Field(default=1000, ge=1, le=600_000, description="wall-clock deadline of one call")
    fuel: int | None = Field(default=None, ge=1, le=1 << 62, description="instructions budget of one call; none")
    maxOutputKb: int = Field(default=1024, ge=1, le=65536, description="largest output of one call, KiB")
    concurrency: int = Field(default=4, ge=1, le=256, description="calls at once, one thread and instance each")
    maxHostCalls: int = Field(default=100, ge=0, le=100_000, description="l8.call/l8.log calls in one call")

    def limits(self) -> Limits:
        from handlers.functions import Limits

        return Limits(
            memory_mb=self.memoryMb,
            timeout_ms=self.timeoutMs,
            fuel=self.fuel,
            max_output_kb=self.maxOutputKb,
            concurrency=self.concurrency,
            max_host_calls=self.maxHostCalls,
        )


class FunctionAllowConfig(_Model):
    """Empty denies: a function with no ``allow`` may only log."""

    state: list[str] = Field(default_factory=list)
    publish: list[str] = Field(default_factory=list)  # pubsub/topic patterns
    invoke: list[str] = Field(default_factory=list)
    sequencer: list[str] = Field(default_factory=list)
    configuration: list[str] = Field(default_factory=list)

    @field_validator("state", "publish", "invoke", "sequencer", "configuration")
    @classmethod
    def _entries(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_ENTRIES:
            raise ValueError(f"at most {MAX_ENTRIES} entries; got {len(v)}")
        for entry in v:
            if not entry.strip() or len(entry) > MAX_ENTRY:
                raise ValueError(f"entry {entry[:40]!r} must be 1 to {MAX_ENTRY} characters")
        return v

    @field_validator("publish")
    @classmethod
    def _topics(cls, v: list[str]) -> list[str]:
        for entry in v:
            if "/" not in entry:
                raise ValueError(f"entry {entry[:40]!r} is not PUBSUB/TOPIC (patterns may use * and ?)")
        return v

    def allow(self) -> Allow:
        from handlers.functions import Allow

        return Allow(
            state=tuple(self.state),
            publish=tuple(self.publish),
            invoke=tuple(self.invoke),
            sequencer=tuple(self.sequencer),
            configuration=tuple(self.configuration),
        )


class FunctionSubscribeConfig(_Model):
    """A topic whose events run the function's ``l8_on_event``; its answer settles each event as an
    app's ``OnTopicEvent`` answer does."""

    pubsub: str
    topic: str
    deadLetterTopic: str | None = None
    maxDeliveries: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="then dead-letter; 0 is unlimited; default 5 with a deadLetterTopic",
    )
    concurrency: int = Field(default=32, ge=1, le=10_000, description="events delivered at once; 1 keeps order")
    timeoutMs: int = Field(
        default=30_000, ge=1, le=3_600_000, description="how long a delivery waits for the function's answer"
    )

    @field_validator("pubsub")
    @classmethod
    def _pubsub(cls, v: str) -> str:
        if not TOKEN.match(v) or len(v) > MAX_NAME:
            raise ValueError(f"pub/sub name {v[:40]!r} must be 1 to {MAX_NAME} letters, digits, '_' and '-'")
        return v


class FunctionConfig(_Model):
    name: str
    module: str = ""  # path of the .wasm file (sidecar config); empty in a fleet deploy's spec
    subscribe: list[FunctionSubscribeConfig] = Field(default_factory=list)
    invoke: bool = False
    limits: FunctionLimitsConfig = Field(default_factory=FunctionLimitsConfig)
    allow: FunctionAllowConfig = Field(default_factory=FunctionAllowConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOKEN.match(v) or len(v) > 128:
            raise ValueError(f"function name {v[:40]!r} must be 1 to 128 letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _triggers(self) -> FunctionConfig:
        if not self.invoke and not self.subscribe:
            raise ValueError("the function has no trigger: set invoke: true or subscribe to a topic")
        seen: set[tuple[str, str]] = set()
        for i, sub in enumerate(self.subscribe):
            if (sub.pubsub, sub.topic) in seen:
                raise ValueError(f"subscribe[{i}]: topic {sub.topic[:64]!r} of {sub.pubsub!r} is subscribed twice")
            seen.add((sub.pubsub, sub.topic))
            try:
                _spec(self.name, sub)
            except ValueError as exc:  # SpecError: what the pub/sub workers would refuse
                raise ValueError(f"subscribe[{i}]: {exc}") from None
        return self

    def spec(self) -> FunctionSpec:
        from handlers.functions import FunctionSpec

        return FunctionSpec(
            self.name,
            invoke=self.invoke,
            events=bool(self.subscribe),
            limits=self.limits.limits(),
            allow=self.allow.allow(),
        )

    def event_specs(self) -> list[Spec]:
        """The function's subscriptions as it announces them: under its name as app id, so its
        events come on that app id's event subject, shared by every process serving it."""
        return [_spec(self.name, sub) for sub in self.subscribe]


def _spec(name: str, sub: FunctionSubscribeConfig) -> Spec:
    from handlers.pubsub_specs import Spec, dead_letter_default

    return Spec(
        app=name,
        pubsub=sub.pubsub,
        topic=sub.topic,
        dead_letter_topic=sub.deadLetterTopic or None,
        concurrency=sub.concurrency,
        max_deliveries=dead_letter_default(sub.maxDeliveries, sub.deadLetterTopic),
        timeout=sub.timeoutMs / 1000,
        origin="function",
    )


class WasmConfig(_Model):
    # Compiled modules; default the user's cache on this host, which its l8 processes share.
    cache_dir: str = ""
    reload_interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between module file checks")
    # Fuel an inline call may use (handlers/functions.py's INLINE_FUEL); 0 runs every call on a lane.
    inline_fuel: int = Field(default=100_000, ge=0, le=10_000_000, description="inline calls' fuel budget")

    def cache_path(self) -> Path:
        """``cache_dir``, or ``$XDG_CACHE_HOME/l8/wasm`` (``~/.cache/l8/wasm``): one per user and host,
        so a module compiles once on a host, whichever process loads it first (the deploy command,
        a worker, a sidecar)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "l8" / "wasm"
