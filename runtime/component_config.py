"""Config of components (``components: {name: {kind, type, metadata}}``, with metadata taken from
secret stores) and of the subscriptions declared in config (``subscriptions: [...]``).
runtime/config.py holds them and checks what refers across them (a subscription's pub/sub, a
reference's secret store)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bridges import registry
from runtime.config_checks import error_message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {error_message(e)}" for e in exc.errors())
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
