"""Config of l8's operability: ``tracing``, ``metrics``, ``flow_control``, ``dump``, ``plugins`` and
``reload`` (runtime/config.py holds them; README's config reference documents every key)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TracingConfig(_Model):
    # None: the OTEL_* variables decide (OTEL_SDK_DISABLED=false, OTEL_TRACES_EXPORTER=otlp, an endpoint).
    enabled: bool | None = None
    # The share of traces started in l8 that are sampled; a caller's decision is always kept.
    sampling: float | None = Field(default=None, ge=0.0, le=1.0)
    protocol: Literal["grpc", "http/protobuf"] | None = None
    # gRPC: host:port or http(s)://host:port; HTTP: the collector's base URL (/v1/traces is added).
    endpoint: str | None = Field(default=None, min_length=1, max_length=2048)
    service_name: str | None = Field(default=None, min_length=1, max_length=256)


class MetricsConfig(_Model):
    enabled: bool = False
    # Topics that get a label value of their own; every other topic counts as "_other".
    topics: list[str] = Field(default_factory=list, max_length=1000)


class FlowRuleConfig(_Model):
    """Layotto's rule: at most ``threshold`` calls per second of ``resource``."""

    resource: str = Field(min_length=1, max_length=1024)
    threshold: float = Field(gt=0, le=1_000_000, description="calls per second")
    burst: int | None = Field(default=None, ge=1, le=1_000_000, description="calls at once; default the threshold")
    # 0: refuse a call over the limit at once; more: let it wait up to this long for its turn.
    max_wait_ms: int = Field(default=0, ge=0, le=60_000)
    # Only in the sidecar of this app (one file may carry the rules of several apps); default every app.
    app: str | None = None

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str) -> str:
        from runtime.flow_control import parse_resource

        parse_resource(v)
        return v


class FlowControlConfig(_Model):
    rules: list[FlowRuleConfig] = Field(default_factory=list, max_length=1000)


class DumpConfig(_Model):
    """Layotto's TCP copy, as request records: windows of ``duration`` seconds every ``interval``."""

    dir: str = Field(min_length=1)
    interval: float = Field(default=60.0, ge=1, le=86_400, description="seconds between windows")
    duration: float = Field(default=10.0, gt=0, le=86_400, description="seconds a window lasts")
    sample_rate: float = Field(default=1.0, gt=0, le=1.0, description="the share of calls recorded in a window")
    # A window opens only while l8's CPU use (percent of the machine's cores) and its resident
    # memory (percent of the machine's) are under these.
    cpu_max_rate: float = Field(default=80.0, ge=0, le=100)
    mem_max_rate: float = Field(default=80.0, ge=0, le=100)
    max_file_bytes: int = Field(default=64 << 20, ge=1024, le=1 << 40)
    max_files: int = Field(default=10, ge=1, le=10_000)

    @model_validator(mode="after")
    def _window(self) -> DumpConfig:
        if self.duration > self.interval:
            raise ValueError(f"duration ({self.duration:g}s) is longer than interval ({self.interval:g}s)")
        return self


class ReloadConfig(_Model):
    # Watch the config file and apply changed components (and flow control rules) while l8 runs.
    watch: bool = False
    interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between checks of the file")


PluginSpec = str
