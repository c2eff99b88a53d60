"""The lock and sequencer examples in examples/ run as written against l8 on its default config."""

from __future__ import annotations

from tests.process import l8_running
from tests.test_examples import run_example


def test_the_lock_and_sequencer_examples_run_against_the_default_config() -> None:
    with l8_running() as l8:
        env = {
            "DAPR_GRPC_PORT": str(l8.grpc_port),
            "DAPR_HTTP_PORT": str(l8.http_port),
            "L8_GRPC_PORT": str(l8.grpc_port),
        }
        assert run_example("lock_dapr.py", env).strip() == "locked order-1; another owner now gets False"
        first, second, third = map(int, run_example("sequencer_native.py", env).split())
        assert first == 1 and first < second < third
