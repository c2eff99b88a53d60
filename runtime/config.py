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
from bus.auth import BusAuth, redact
from bus.subjects import TOKEN
from handlers import limits
from runtime.function_config import FunctionConfig, WasmConfig
from runtime.ops_config import DumpConfig, FlowControlConfig, MetricsConfig, ReloadConfig, TracingConfig

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
# Building blocks whose handlers exist; grows with each capability.
API_NAMES = ("state", "configuration", "lock", "sequencer", "pubsub", "file", "secrets", "bindings", "hello")


class ConfigError(Exception):
    """A config that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _secret(path: str | None, field: str) -> str | None:
    """The content of a secret file, stripped; a file that cannot be read is a ConfigError."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def _token(value: str, what: str, limit: int) -> str:
    if not TOKEN.match(value):
        raise ValueError(f"{what} {value[:64]!r} may use only letters, digits, '_' and '-'")
    if len(value) > limit:
        raise ValueError(f"{what} {value[:64]!r}… is {len(value)} characters; at most {limit} are allowed")
    return value


def _address(value: str, field: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} of {field} is not a number from 0 to 65535")
    return value


class AppHealthConfig(_Model):
    """Dapr's app health check: probe the app, and hold its events and calls while it fails."""

    enabled: bool = False
    path: str = Field(default="/healthz", min_length=1, max_length=1024, description="an HTTP app's probe path")
    interval: float = Field(default=5.0, gt=0, le=3600, description="seconds between probes")
    timeout: float = Field(default=0.5, gt=0, le=600, description="seconds one probe may take")
    threshold: int = Field(default=3, ge=1, le=1000, description="failed probes in a row that make it unhealthy")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "?# ") or not v.isprintable():
            raise ValueError(f"{v[:64]!r} is not a path (it starts with '/' and holds no '?', '#' or spaces)")
        return v


class AppConfig(_Model):
    id: str = "l8-app"
    # The app's server, host:port (Dapr's or Layotto's AppCallback over gRPC, or HTTP); l8 calls it
    # for events and invocations.
    callback: str | None = None
    # grpc (Dapr's AppCallback), layotto (Layotto's AppCallback) or http; unset, l8 learns it from the app.
    protocol: Literal["grpc", "layotto", "http"] | None = None
    health_check: AppHealthConfig = Field(default_factory=AppHealthConfig)
    # Sent to the app as metadata dapr-api-token on every callback; unset, APP_API_TOKEN.
    api_token_file: str | None = None

    def api_token(self) -> str | None:
        return _secret(self.api_token_file, "app.api_token_file") or os.environ.get("APP_API_TOKEN") or None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _token(v, "app id", limits.APP_ID)

    @field_validator("callback")
    @classmethod
    def _callback(cls, v: str | None) -> str | None:
        return None if v is None else _address(v, "app.callback")


class BusTlsConfig(_Model):
    ca_file: str | None = None  # CA that signed the servers' certificates (else the system's)
    cert_file: str | None = None  # client certificate, for servers that verify clients
    key_file: str | None = None
    server_name: str | None = None  # the name the servers' certificates carry, if not the URL's host


class BusConfig(_Model):
    # "embedded" starts a nats-server for this process; else NATS URLs separated by commas.
    url: str = "embedded"
    port: int | None = Field(default=None, ge=0, le=65535, description="embedded server client port; free if unset")
    monitor_port: int | None = Field(default=None, ge=0, le=65535)
    request_timeout: float = Field(default=5.0, gt=0, description="seconds, for calls that carry no deadline")
    connect_timeout: float = Field(default=10.0, gt=0, le=3600, description="seconds to reach the bus at start")
    # Requests for a handler that runs in this same process skip the server round trip (a third
    # of the latency of a GetState); the queue group still serves every other process's requests.
    local_dispatch: bool = True
    # Replicas of l8's own buckets on the bus (the subscription registry): 3 on a 3-node cluster.
    replicas: int = Field(default=1, ge=1, le=5)
    # The embedded server requires the credentials l8 generates in the data dir (nats/credentials.json).
    embedded_auth: bool = True
    # External servers: secrets come from files (or ${ENV} in the config), never from flags.
    user: str | None = None
    password: str | None = Field(default=None, repr=False)  # e.g. ${NATS_PASSWORD}; or password_file
    password_file: str | None = None
    token: str | None = Field(default=None, repr=False)
    token_file: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls: BusTlsConfig = Field(default_factory=BusTlsConfig)

    def auth(self) -> BusAuth:
        """The credentials for an external bus, secrets read from their files now."""
        tls = self.tls
        return BusAuth(
            user=self.user,
            password=self.password or _secret(self.password_file, "bus.password_file"),
            token=self.token or _secret(self.token_file, "bus.token_file"),
            nkey_seed=_secret(self.nkey_seed_file, "bus.nkey_seed_file"),
            creds_file=self.creds_file,
            tls_ca_file=tls.ca_file,
            tls_cert_file=tls.cert_file,
            tls_key_file=tls.key_file,
            tls_server_name=tls.server_name,
        )

    @property
    def has_auth(self) -> bool:
        return any((self.user, self.token, self.token_file, self.nkey_seed_file, self.creds_file))

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
                raise ValueError(f"{redact(u.strip())!r} is not a NATS URL (nats://host:port) nor 'embedded'")
        return v


class ServerTlsConfig(_Model):
    cert_file: str | None = None  # set both to serve gRPC and HTTP over TLS
    key_file: str | None = None
    client_ca_file: str | None = None  # also require client certificates signed by this CA (mTLS)

    @model_validator(mode="after")
    def _pair(self) -> ServerTlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


class ServerConfig(_Model):
    grpc: str = "127.0.0.1:34904"
    http: str = "127.0.0.1:34999"
    max_message_bytes: int = Field(default=16 << 20, gt=0)
    # When set, every gRPC call needs metadata dapr-api-token and every HTTP route (health
    # excepted) the header; unset, DAPR_API_TOKEN or L8_API_TOKEN from the environment.
    api_token_file: str | None = None
    tls: ServerTlsConfig = Field(default_factory=ServerTlsConfig)
    # Where `l8 worker` serves its health probes (--http-port); none by default.
    worker_http: str | None = None
    # The HTTP port's bounds: the request head's size and time to arrive, an idle connection's life,
    # and how many connections may be open (a new one past the cap takes the place of the oldest
    # waiting one). Bodies are bounded by max_message_bytes.
    http_max_header_bytes: int = Field(default=16 << 10, ge=1024, le=1 << 20)
    http_header_timeout: float = Field(default=10.0, gt=0, le=3600)
    http_idle_timeout: float = Field(default=60.0, gt=0, le=86400)
    http_max_connections: int = Field(default=1024, ge=1, le=100_000)

    @field_validator("grpc", "http", "worker_http")
    @classmethod
    def _addr(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _address(v, f"server.{info.field_name}")

    def api_token(self) -> str | None:
        token = _secret(self.api_token_file, "server.api_token_file")
        return token or os.environ.get("DAPR_API_TOKEN") or os.environ.get("L8_API_TOKEN") or None


class HealthConfig(_Model):
    interval: float = Field(default=5.0, gt=0, le=3600, description="seconds between probes of each backend")
    timeout: float = Field(default=2.0, gt=0, le=600, description="seconds a probe may take before it counts as DOWN")


class SecretRef(_Model):
    """A metadata value taken from a secret at start: the value ``key`` (default: ``name``) of secret
    ``name`` in secret store ``store`` (default: the only configured secret store)."""

    name: str = Field(min_length=1)
    key: str | None = None
    store: str | None = None


def _secret_ref(field: str, value: dict[str, Any]) -> SecretRef:
    if len(value) != 1 or next(iter(value)) not in ("secretKeyRef", "secretRef"):
        raise ValueError(f"metadata {field}: a mapping value must be {{secretKeyRef: ...}} or {{secretRef: ...}}")
    kind, ref = next(iter(value.items()))
    if kind == "secretRef" and isinstance(ref, str):
        ref = {"name": ref}
    if kind == "secretRef" and isinstance(ref, dict) and "key" in ref:
        raise ValueError(f"metadata {field}: secretRef names a whole secret; use secretKeyRef to pick a key")
    if not isinstance(ref, dict):
        raise ValueError(f"metadata {field}: {kind} takes {{name, key, store}}")
    try:
        return SecretRef.model_validate(ref)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {_msg(e)}" for e in exc.errors())
        raise ValueError(f"metadata {field}.{kind}: {problems}") from None


class ComponentConfig(_Model):
    kind: str
    type: str
    metadata: dict[str, str] = Field(default_factory=dict)
    # Metadata values to read from secret stores at start; taken out of ``metadata`` as it loads.
    secret_refs: dict[str, SecretRef] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _refs(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("metadata"), dict):
            metadata = dict(v["metadata"])
            refs = dict(v.get("secret_refs") or {})
            for field, value in v["metadata"].items():
                if isinstance(value, dict):
                    refs[field] = _secret_ref(str(field), value)
                    del metadata[field]
            v = {**v, "metadata": metadata, "secret_refs": refs}
        return v

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
    maxDeliveries: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="then dead-letter; 0 is unlimited; default 5 with a deadLetterTopic",
    )
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
        return _token(v, "namespace", limits.NAMESPACE)

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
            _token(name, "component name", limits.NAME)
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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {_msg(e)}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None


def _msg(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")
