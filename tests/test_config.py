"""Config loading and the CLI's answers to bad config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime.config import DEFAULT_CONFIG, ConfigError, load_config
from tests.process import L8

REPO = Path(__file__).parent.parent


def run_l8(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([L8, *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def test_the_packaged_default_is_the_default_in_configs() -> None:
    assert DEFAULT_CONFIG.read_text() == (REPO / "configs" / "default.yaml").read_text()
    config = load_config()
    assert config.bus.embedded
    assert config.server.grpc == "127.0.0.1:34904" and config.server.http == "127.0.0.1:34999"
    assert config.components["statestore"].type == "nats.kv"


def test_every_shipped_config_loads() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_env_references_are_substituted_with_their_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "app: {id: '${L8_TEST_APP}'}\n"
        "components:\n  s: {kind: state, type: redis, metadata: {url: '${L8_TEST_URL:-redis://h:1}', n: 3}}\n"
    )
    monkeypatch.setenv("L8_TEST_APP", "from-env")
    monkeypatch.delenv("L8_TEST_URL", raising=False)
    config = load_config(path)
    assert config.app.id == "from-env"
    assert config.components["s"].metadata == {"url": "redis://h:1", "n": "3"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("servr: {grpc: '127.0.0.1:1'}\n", "servr: unknown field"),
        ("components:\n  s: {kind: state, type: mongo}\n", "components.s.type: unknown state type 'mongo'"),
        ("components:\n  s: {kind: stat, type: redis}\n", "components.s.kind: unknown kind 'stat'"),
        ("server: {grpc: '127.0.0.1:99999'}\n", "server.grpc"),
        ("server: {http: 'nohost'}\n", "server.http"),
        ("bus: {url: 'http://x'}\n", "bus.url"),
        ("workers: [state, nope]\n", "workers"),
        ("app: {id: 'a b'}\n", "app.id"),
        ("app: {protocol: soap}\n", "app.protocol"),
        ("app: {health_check: {path: 'healthz'}}\n", "app.health_check.path"),
        ("app: {health_check: {threshold: 0}}\n", "app.health_check.threshold"),
    ],
)
def test_bad_config_names_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--config", "missing.yaml"], "missing.yaml: cannot read the config file"),
        (["run", "--config", "bad.yaml"], "bad.yaml: components.s.type: unknown state type 'nope'"),
        (["run", "--grpc-port", "70000"], "--grpc-port: '70000' is not a port number"),
        (["run", "--workers", "nope"], "workers: unknown api 'nope'"),
        (["worker"], "a worker joins an existing bus"),
        (["run", "--app-protocol", "soap"], "invalid choice: 'soap'"),
        (["run", "--app-health-probe-timeout", "0"], "--app-health-probe-timeout: '0' is not a whole number"),
    ],
)
def test_l8_exits_non_zero_at_once_on_bad_config(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "bad.yaml").write_text("components:\n  s: {kind: state, type: nope}\n")
    out = run_l8(*args, cwd=tmp_path)
    assert out.returncode != 0
    assert needle in out.stderr
    assert not (tmp_path / ".l8").exists(), "nothing started"


def test_a_taken_port_stops_l8_with_a_message_naming_the_setting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_l8(
            "run", "--http-port", str(port), "--grpc-port", "0", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
        )
    assert out.returncode != 0
    assert "server.http: cannot listen on" in out.stderr


def test_the_app_flags_set_the_protocol_and_the_health_check_in_daprs_units() -> None:
    from runtime.cli import _parser, config_from_args

    args = _parser().parse_args(
        [
            "run",
            "--app-port",
            "3000",
            "--app-protocol",
            "http",
            "--enable-app-health-check",
            "--app-health-check-path",
            "/ready",
            "--app-health-probe-interval",
            "2",
            "--app-health-probe-timeout",
            "250",
            "--app-health-threshold",
            "4",
        ]
    )
    app = config_from_args(args).app
    assert (app.callback, app.protocol) == ("127.0.0.1:3000", "http")
    check = app.health_check
    assert (check.enabled, check.path, check.interval, check.timeout, check.threshold) == (True, "/ready", 2, 0.25, 4)
    assert config_from_args(_parser().parse_args(["run"])).app.protocol is None
