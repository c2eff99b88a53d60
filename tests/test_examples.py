"""The examples in examples/ run as written against a running l8."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import unique
from tests.process import l8_running
from tests.servers import Server, free_port
from tests.test_e2e import state_config

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_state_examples_save_and_read_state(nats_server: Server) -> None:
    with l8_running(state_config(nats_server)) as l8:
        env = {
            "DAPR_GRPC_PORT": str(l8.grpc_port),
            "DAPR_HTTP_PORT": str(l8.http_port),
            "L8_GRPC_PORT": str(l8.grpc_port),
        }
        assert run_example("state_dapr.py", env).startswith('{"qty": 3} ')
        assert run_example("state_native.py", env).startswith("3 ")


def test_the_configuration_example_reads_and_watches_an_item(nats_server: Server) -> None:
    config = {**state_config(nats_server), "components": {"configstore": {"kind": "configuration", "type": "nats.kv"}}}
    with l8_running(config) as l8:
        env = {"DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port)}
        assert run_example("configuration_dapr.py", env).splitlines()[:2] == ["off", "('feature.checkout', 'on')"]


def test_the_pubsub_example_publishes_orders_its_app_takes_every_one(nats_server: Server) -> None:
    port = free_port()
    config = {**state_config(nats_server), "components": {"pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}}
    with l8_running(config, "--app-port", str(port)) as l8:
        env = {"DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port), "APP_PORT": str(port)}
        out = run_example("pubsub_dapr.py", env)
    lines = out.splitlines()  # the SDK may print its own notices too
    assert [line for line in lines if line.startswith("order ")] == ["order 0", "order 1", "order 2"]
    assert lines[-1] == "3 orders delivered"


def test_the_invoke_example_calls_its_app_by_id_through_the_sidecar(nats_server: Server) -> None:
    port = free_port()
    app_id = unique("greeter")
    with l8_running({**state_config(nats_server), "app": {"id": app_id}}, "--app-port", str(port)) as l8:
        env = {"DAPR_HTTP_PORT": str(l8.http_port), "APP_PORT": str(port), "APP_ID": app_id}
        assert run_example("invoke_dapr.py", env).strip() == "hello, ada"


def test_the_readme_quickstart_shows_the_examples_as_they_are() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    for name in ("state_dapr.py", "state_native.py"):
        assert f"# examples/{name}\n{(EXAMPLES / name).read_text().strip()}\n```" in readme, name
