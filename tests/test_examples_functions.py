"""examples/function_dapr.py runs as written against `l8 run` with the example function configured:
its events trigger the function, and its invocation answers the count."""

from __future__ import annotations

from tests import wasm_modules as mods
from tests.process import l8_running
from tests.servers import Server
from tests.test_e2e import state_config
from tests.test_examples import run_example


def test_the_function_example_publishes_orders_the_function_counts_and_invokes_it_for_the_count(
    nats_server: Server,
) -> None:
    guests = mods.build_guests()
    base = state_config(nats_server)
    function = {
        "name": "orders-fn",
        "module": str(guests["rust"]),
        "invoke": True,
        "subscribe": [{"pubsub": "pubsub", "topic": "orders", "concurrency": 1}],
        "allow": {"state": ["statestore"], "publish": ["pubsub/order-audited"]},
    }
    components = {**base["components"], "pubsub": {"kind": "pubsub", "type": "nats.jetstream"}}
    config = {**base, "components": components, "functions": [function]}
    with l8_running(config) as l8:
        env = {"DAPR_GRPC_PORT": str(l8.grpc_port), "DAPR_HTTP_PORT": str(l8.http_port)}
        assert run_example("function_dapr.py", env).strip() == "2"
