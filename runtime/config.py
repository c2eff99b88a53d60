"""Config: pydantic models loaded from YAML, with ``${ENV:-default}`` substitution.

Every flag of the CLI has a key here; flags are applied over the file before validation, so an
error names the field whichever way it was set. This module holds the top-level model and the
loader; the sections' models live in runtime/endpoint_config.py (app, bus, server),
runtime/component_config.py (components, subscriptions), runtime/function_config.py and
runtime/ops_config.py, and are importable from here as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from handlers import limits
from runtime.component_config import (
    BackoffConfig,
    BulkConfig,
    ComponentConfig,
    RuleConfig,
    SecretRef,
    SubscriptionConfig,
)
from runtime.config_checks import ConfigError, check_token, error_message
from runtime.endpoint_config import (
    AppConfig,
    AppHealthConfig,
    BusConfig,
    BusTlsConfig,
    ServerConfig,
    ServerTlsConfig,
)
from runtime.function_config import FunctionConfig, WasmConfig
from runtime.ops_config import DumpConfig, FlowControlConfig, MetricsConfig, ReloadConfig, TracingConfig

# The names callers import from here, wherever their model lives.
__all__ = [
    "API_NAMES",
    "DEFAULT_CONFIG",
    "AppConfig",
    "AppHealthConfig",
    "BackoffConfig",
    "BulkConfig",
    "BusConfig",
    "BusTlsConfig",
    "ComponentConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "RuleConfig",
    "SecretRef",
    "ServerConfig",
    "ServerTlsConfig",
    "SubscriptionConfig",
    "load_config",
    "substitute_env",
]

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
# Building blocks whose handlers exist; grows with each capability.
API_NAMES = ("state", "configuration", "lock", "sequencer", "pubsub", "file", "secrets", "bindings", "hello")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthConfig(_Model):
    interval: float = Field(default=5.0, gt=0, le=3600, description="seconds between probes of each backend")
    timeout: float = Field(default=2.0, gt=0, le=600, description="seconds a probe may take before it counts as DOWN")


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
    health: HealthConfig = Field(default_factory=HealthConfig)
    # Seconds the whole ordered shutdown may take (calls in flight, deliveries, drains).
    shutdown_timeout: float = Field(default=20.0, gt=0, le=3600)
    # WebAssembly functions run by this sidecar (runtime/function_config.py, docs/wasm-abi.md).
    functions: list[FunctionConfig] = Field(default_factory=list)
    wasm: WasmConfig = Field(default_factory=WasmConfig)
    # Operability (runtime/ops_config.py): spans over OTLP, /metrics, rate limits, request dumps,
    # API plugins ("package.module:factory"), and applying a changed config file while l8 runs.
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    flow_control: FlowControlConfig | None = None
    dump: DumpConfig | None = None
    plugins: list[str] = Field(default_factory=list, max_length=100)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return check_token(v, "namespace", limits.NAMESPACE)

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
            check_token(name, "component name", limits.NAME)
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
            for j, trigger in enumerate(self.functions[i].subscribe):
                if trigger.pubsub not in pubsubs:
                    raise ValueError(
                        f"functions[{i}].subscribe[{j}].pubsub: {trigger.pubsub!r} is not a configured pub/sub "
                        f"component; configured: {', '.join(pubsubs) or 'none'}"
                    )
        if self.subscriptions and self.app.callback is None:
            raise ValueError("subscriptions: delivering events needs the app's callback (app.callback / --app-port)")
        return self

    @model_validator(mode="after")
    def _secret_stores(self) -> Config:
        stores = [n for n, c in self.components.items() if c.kind == "secrets"]
        for name, comp in self.components.items():
            for field, ref in comp.secret_refs.items():
                where = f"components.{name}.metadata.{field}"
                if comp.kind == "secrets":
                    raise ValueError(f"{where}: a secret store's metadata cannot come from a secret store")
                if ref.store is None and len(stores) != 1:
                    raise ValueError(
                        f"{where}: say which secret store holds {ref.name!r} (store: ...); "
                        f"configured: {', '.join(stores) or 'none'}"
                    )
                if ref.store is not None and ref.store not in stores:
                    raise ValueError(
                        f"{where}: {ref.store!r} is not a configured secret store; configured: "
                        f"{', '.join(stores) or 'none'}"
                    )
        return self

    def secret_store_of(self, ref: SecretRef) -> str:
        """The secret store a reference reads (checked when the config loaded)."""
        if ref.store is not None:
            return ref.store
        return next(n for n, c in self.components.items() if c.kind == "secrets")

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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {error_message(e)}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
