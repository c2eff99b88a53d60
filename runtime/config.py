"""Config: pydantic models loaded from YAML, with ``${ENV:-default}`` substitution.

Every flag of the CLI has a key here; flags are applied over the file before validation, so an
error names the field whichever way it was set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bridges import registry
from bus.subjects import TOKEN
from runtime.function_config import FunctionConfig, WasmConfig

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
# Building blocks whose handlers exist; grows with each capability.
API_NAMES = ("state", "configuration", "lock", "sequencer", "pubsub")


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _address(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {field} is not a number from 0 to 65535")
    return value


class AppConfig(_Model):
    id: str = "l8-app"
    # The app's AppCallback gRPC server, host:port; l8 calls it for events and invocations.
    callback: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not TOKEN.match(v):
            raise ValueError(f"app id {v!r} may use only letters, digits, '_' and '-'")
        return v

    @field_validator("callback")
    @classmethod
    def _callback(cls, v: str | None) -> str | None:
        return None if v is None else _address(v, "app.callback")


class BusConfig(_Model):
    # "embedded" starts a nats-server for this process; else NATS URLs separated by commas.
    url: str = "embedded"
    port: int | None = Field(default=None, ge=0, le=65535, description="embedded server client port; free if unset")
    monitor_port: int | None = Field(default=None, ge=0, le=65535)
    request_timeout: float = Field(default=5.0, gt=0, description="seconds, for calls that carry no deadline")
    # Requests for a handler that runs in this same process skip the server round trip (a third
    # of the latency of a GetState); the queue group still serves every other process's requests.
    local_dispatch: bool = True

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v == "embedded":
            return v
        for u in v.split(","):
            if not re.match(r"^(nats|tls)://[^\s]+$", u.strip()):
                raise ValueError(f"{u.strip()!r} is not a NATS URL (nats://host:port) nor 'embedded'")
        return v


class ServerConfig(_Model):
    grpc: str = "127.0.0.1:34904"
    http: str = "127.0.0.1:34999"
    max_message_bytes: int = Field(default=16 << 20, gt=0)

    @field_validator("grpc", "http")
    @classmethod
    def _addr(cls, v: str, info: ValidationInfo) -> str:
        return _address(v, f"server.{info.field_name}")


class ComponentConfig(_Model):
    kind: str
    type: str
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("metadata", mode="before")
    @classmethod
    def _scalars(cls, v: Any) -> Any:
        # YAML turns `port: 6379` into an int; component metadata is strings, as in Dapr.
        if isinstance(v, dict):
            return {
                k: (str(x).lower() if isinstance(x, bool) else str(x)) if x is not None else "" for k, x in v.items()
            }
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in registry.KINDS:
            raise ValueError(f"unknown kind {v!r}; kinds: {', '.join(registry.KINDS)}")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind is not None and not registry.is_registered(kind, v):
            known = ", ".join(registry.types_for(kind)) or "none yet"
            raise ValueError(f"unknown {kind} type {v!r}; known types: {known}")
        return v


class BulkConfig(_Model):
    enabled: bool = False
    maxMessages: int = Field(default=100, ge=1, le=10000)
    maxAwaitMs: int = Field(default=1000, ge=1)


class RuleConfig(_Model):
    match: str
    path: str


class BackoffConfig(_Model):
    initial: float = Field(default=0.2, gt=0, description="seconds before the first redelivery")
    max: float = Field(default=5.0, gt=0, description="the longest wait between redeliveries")


class SubscriptionConfig(_Model):
    """A subscription declared in config; the app's ListTopicSubscriptions adds its own."""

    pubsub: str
    topic: str
    route: str = ""
    rules: list[RuleConfig] = Field(default_factory=list)
    deadLetterTopic: str | None = None
    bulk: BulkConfig = Field(default_factory=BulkConfig)
    concurrency: int = Field(default=32, ge=1, le=10000, description="events delivered at once; 1 keeps order")
    maxDeliveries: int = Field(default=0, ge=0, description="then dead-letter; 0 is unlimited")
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the topic is empty")
        return v

    @model_validator(mode="after")
    def _rules(self) -> SubscriptionConfig:
        from handlers.pubsub_rules import Rule, RuleError

        for i, rule in enumerate(self.rules):
            try:
                Rule.compile(rule.match, rule.path)
            except RuleError as exc:
                raise ValueError(f"rules[{i}]: {exc}") from None
        return self


class Config(_Model):
    app: AppConfig = Field(default_factory=AppConfig)
    namespace: str = "default"
    bus: BusConfig = Field(default_factory=BusConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    # Which handlers run in this process: all, none, or a list of apis.
    workers: Literal["all", "none"] | list[str] = "all"
    concurrency: int = Field(default=256, gt=0, description="requests a worker host runs at once")
    data_dir: str = ".l8"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    components: dict[str, ComponentConfig] = Field(default_factory=dict)
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    # Seconds l8 waits for the app to answer one OnTopicEvent / OnBulkTopicEvent call.
    delivery_timeout: float = Field(default=60.0, gt=0)
    # WebAssembly functions run by this sidecar (runtime/function_config.py, docs/wasm-abi.md).
    functions: list[FunctionConfig] = Field(default_factory=list)
    wasm: WasmConfig = Field(default_factory=WasmConfig)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not TOKEN.match(v):
            raise ValueError(f"namespace {v!r} may use only letters, digits, '_' and '-'")
        return v

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("all", "none"):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list):
            unknown = [a for a in v if a not in API_NAMES]
            if unknown:
                raise ValueError(f"unknown api {unknown[0]!r}; apis: {', '.join(API_NAMES)}")
        return v

    @field_validator("components")
    @classmethod
    def _names(cls, v: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        for name in v:
            if not TOKEN.match(name):
                raise ValueError(f"component name {name!r} may use only letters, digits, '_' and '-'")
        return v

    @model_validator(mode="after")
    def _subscriptions(self) -> Config:
        pubsubs = [n for n, c in self.components.items() if c.kind == "pubsub"]
        for i, sub in enumerate(self.subscriptions):
            if sub.pubsub not in pubsubs:
                raise ValueError(
                    f"subscriptions[{i}].pubsub: {sub.pubsub!r} is not a configured pub/sub component; "
                    f"configured: {', '.join(pubsubs) or 'none'}"
                )
        names = [f.name for f in self.functions]
        for i, name in enumerate(names):
            if name in names[:i] or name == self.app.id:
                raise ValueError(f"functions[{i}].name: {name!r} is already the name of the app or of a function")
            if not self.functions[i].module:
                raise ValueError(f"functions[{i}].module: the path of the .wasm file is empty")
        if self.subscriptions and self.app.callback is None:
            raise ValueError("subscriptions: delivering events needs the app's callback (app.callback / --app-port)")
        return self

    def apis(self) -> list[str]:
        """The apis whose handlers run in this process."""
        if self.workers == "all":
            return list(API_NAMES)
        if self.workers == "none":
            return []
        return list(self.workers)

    def components_of(self, kind: str) -> dict[str, ComponentConfig]:
        return {name: c for name, c in self.components.items() if c.kind == kind}


def substitute_env(value: Any) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: substitute_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v) for v in value]
    return value


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, substitute, override and validate; any problem raises ConfigError naming the field."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    data = _merge(substitute_env(raw), overrides or {})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {_msg(e)}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def _msg(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")
