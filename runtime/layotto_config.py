"""`l8 config from-layotto`: an l8 config from the runtime section of a Layotto JSON config.

Layotto's config is MOSN's: the runtime is the ``grpc`` network filter of a listener, and its
``grpc_config`` holds the app and one section per building block, each ``{name: {type, metadata}}``.
Components of types l8 has become l8 components of the same name; the rest (and settings l8 has
no equivalent for) are named in comments at the top of the output and on stderr, never dropped
silently. The output is validated as an l8 config before it is printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from pydantic import ValidationError

from runtime.config import Config, ConfigError

# Layotto's grpc_config sections, to l8's kinds.
SECTIONS = {
    "state": "state",
    "pub_subs": "pubsub",
    "config_store": "configuration",
    "lock": "lock",
    "sequencer": "sequencer",
    "hellos": "hello",
    "file": "file",
    "secret_store": "secrets",
    "bindings": "bindings",
}
# Sections l8 has no building block for.
UNSERVED = ("rpcs", "oss", "cryption", "email", "phone", "sms", "custom_component", "delay_queue", "extends")
# Layotto's state keys carry no prefix unless one is asked for (l8's default is the app id).
DEFAULT_KEY_PREFIX = {"state": "none"}


@dataclass
class Conversion:
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = ["# l8 config converted from a Layotto config by `l8 config from-layotto`."]
        head += [f"# NOTE: {note}" for note in self.notes]
        return "\n".join(head) + "\n" + yaml.safe_dump(self.config, sort_keys=False)


def _redis_url(meta: dict[str, str], notes: list[str], where: str) -> dict[str, str]:
    host = meta.pop("redisHost", "") or "127.0.0.1:6379"
    scheme = "rediss" if meta.pop("enableTLS", "false").lower() == "true" else "redis"
    user, password = meta.pop("redisUsername", ""), meta.pop("redisPassword", "")
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user or password else ""
    db = meta.pop("redisDB", "")
    out = {"url": f"{scheme}://{auth}{host}" + (f"/{db}" if db else "")}
    if "keyPrefix" in meta:
        out["keyPrefix"] = meta.pop("keyPrefix")
    if meta:
        notes.append(f"{where}: metadata l8 does not use: {', '.join(sorted(meta))}")
    return out


def _kafka(meta: dict[str, str], notes: list[str], where: str) -> dict[str, str]:
    out = {"brokers": meta.pop("brokers", "") or "127.0.0.1:9092"}
    if meta.pop("consumerGroup", None) is not None:
        notes.append(f"{where}: consumerGroup dropped: l8 groups subscribers by app id")
    if meta:
        notes.append(f"{where}: metadata l8 does not use: {', '.join(sorted(meta))}")
    return out


def _jetstream(meta: dict[str, str], notes: list[str], where: str) -> dict[str, str]:
    if meta:
        notes.append(f"{where}: runs on l8's bus; metadata l8 does not use: {', '.join(sorted(meta))}")
    return {}


def _hello(meta: dict[str, str], notes: list[str], where: str) -> dict[str, str]:
    return {"hello": meta.pop("hello")} if "hello" in meta else {}


Mapper = Callable[[dict[str, str], list[str], str], dict[str, str]]
# (l8 kind, Layotto type) -> (l8 type, metadata mapper)
TYPES: dict[tuple[str, str], tuple[str, Mapper]] = {
    ("state", "redis"): ("redis", _redis_url),
    ("lock", "redis"): ("redis", _redis_url),
    ("sequencer", "redis"): ("redis", _redis_url),
    ("pubsub", "redis"): ("redis", _redis_url),
    ("pubsub", "kafka"): ("kafka", _kafka),
    ("pubsub", "jetstream"): ("nats.jetstream", _jetstream),
    ("hello", "helloworld"): ("helloworld", _hello),
}


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def runtime_filter(raw: Any) -> tuple[dict[str, Any], str | None]:
    """The first ``grpc`` filter's config holding a ``grpc_config``, and its listener's address."""
    servers = raw.get("servers") if isinstance(raw, dict) else None
    for server in servers if isinstance(servers, list) else []:
        for listener in server.get("listeners") or [] if isinstance(server, dict) else []:
            for chain in listener.get("filter_chains") or []:
                for flt in chain.get("filters") or []:
                    cfg = flt.get("config") if isinstance(flt, dict) else None
                    if flt.get("type") == "grpc" and isinstance(cfg, dict) and isinstance(cfg.get("grpc_config"), dict):
                        return cfg["grpc_config"], listener.get("address")
    raise ConfigError("no runtime found: expected servers[].listeners[].filter_chains[].filters[] of type 'grpc'")


def convert(raw: Any) -> Conversion:
    grpc_config, address = runtime_filter(raw)
    notes: list[str] = []
    config: dict[str, Any] = {}
    app = grpc_config.get("app") or {}
    if app.get("app_id"):
        config["app"] = {"id": app["app_id"]}
    if app.get("grpc_callback_port"):
        host = app.get("grpc_callback_host") or "127.0.0.1"
        config.setdefault("app", {})["callback"] = f"{host}:{app['grpc_callback_port']}"
    if isinstance(address, str) and address.rpartition(":")[2].isdigit():
        config["server"] = {"grpc": address}
    components: dict[str, Any] = {}
    for section, value in grpc_config.items():
        if section == "app" or not value:
            continue
        kind = SECTIONS.get(section)
        if kind is None:
            why = "l8 has no such building block" if section in UNSERVED else "unknown section"
            notes.append(f"{section}: not converted ({why})")
            continue
        for name, spec in value.items() if isinstance(value, dict) else []:
            where = f"{section}.{name}"
            spec = spec if isinstance(spec, dict) else {}
            layotto_type = str(spec.get("type", ""))
            mapped = TYPES.get((kind, layotto_type))
            if mapped is None:
                notes.append(f"{where}: type {layotto_type!r} has no l8 bridge; not converted")
                continue
            meta = _strings(spec.get("metadata"))
            if kind == "hello" and "hello" in spec:
                meta.setdefault("hello", str(spec["hello"]))
            if spec.get("secret_ref"):
                notes.append(f"{where}: secret_ref is not converted; put the secret in the metadata (${{ENV}} works)")
            l8_type, mapper = mapped
            metadata = mapper(meta, notes, where)
            if kind in DEFAULT_KEY_PREFIX:
                metadata.setdefault("keyPrefix", DEFAULT_KEY_PREFIX[kind])
            bigger = spec.get("biggerThan")
            if kind == "sequencer" and isinstance(bigger, dict):
                metadata.update({f"biggerThan.{k}": str(v) for k, v in bigger.items()})
            component: dict[str, Any] = {"kind": kind, "type": l8_type}
            if metadata:
                component["metadata"] = metadata
            components[name] = component
    config["components"] = components
    try:
        Config.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"the converted config is not valid: {problems}") from None
    return Conversion(config, notes)


def convert_file(path: str) -> Conversion:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Layotto config: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return convert(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
