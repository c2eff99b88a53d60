"""examples/function_dapr.py runs as written against `l8 run` with the example function configured."""

from __future__ import annotations

from tests import wasm_modules as mods
from tests.process import l8_running
from tests.servers import Server
from tests.test_e2e import state_config
from tests.test_examples import run_example


def test_the_function_example_invokes_the_example_function(nats_server: Server) -> None:
    guests = mods.build_guests()
    config = {
        **state_config(nats_server),
        "functions": [
            {"name": "orders-fn", "module": str(guests["rust"]), "invoke": True, "allow": {"state": ["statestore"]}}
        ],
    }
    with l8_running(config) as l8:
        env = {"DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port)}
        assert run_example("function_dapr.py", env).strip() == "0"
