"""Config of the endpoints of one l8 process: the app it serves (``app``), the bus it joins
(``bus``) and its own gRPC and HTTP servers (``server``). runtime/config.py holds them."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from bus.auth import BusAuth, redact
from handlers import limits
from runtime.config_checks import check_address, check_token, read_secret


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
        return read_secret(self.api_token_file, "app.api_token_file") or os.environ.get("APP_API_TOKEN") or None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_token(v, "app id", limits.APP_ID)

    @field_validator("callback")
    @classmethod
    def _callback(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v, "app.callback")


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
            password=self.password or read_secret(self.password_file, "bus.password_file"),
            token=self.token or read_secret(self.token_file, "bus.token_file"),
            nkey_seed=read_secret(self.nkey_seed_file, "bus.nkey_seed_file"),
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
        return None if v is None else check_address(v, f"server.{info.field_name}")

    def api_token(self) -> str | None:
        token = read_secret(self.api_token_file, "server.api_token_file")
        return token or os.environ.get("DAPR_API_TOKEN") or os.environ.get("L8_API_TOKEN") or None
