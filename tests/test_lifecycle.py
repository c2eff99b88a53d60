"""Start and stop under faults, as a user runs `l8 run`: an unreachable bus, signals while starting,
SIGTERM after the bus is gone. How long each took is printed, not asserted (the machine is shared)."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runtime.cli import _parser, config_from_args
from tests.conftest import unique
from tests.process import alive, children_of, start_l8
from tests.servers import free_port, start_nats

STATE = {"statestore": {"kind": "state", "type": "nats.kv"}}


def wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def test_an_unreachable_bus_at_start_exits_non_zero_within_its_timeout_naming_the_url(tmp_path: Path) -> None:
    port = free_port()
    config = {"app": {"id": unique("a")}, "bus": {"url": f"nats://127.0.0.1:{port}", "connect_timeout": 1}}
    began = time.monotonic()
    l8 = start_l8(config, cwd=tmp_path, wait=False)
    assert l8.proc.wait(60) == 1
    print(f"exited {time.monotonic() - began:.2f}s after start with connect_timeout 1s")
    assert f"cannot connect to the bus at nats://127.0.0.1:{port} within 1s" in l8.log()
    assert "Traceback" not in l8.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_for_the_bus_stops_l8_at_once_and_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    config = {"app": {"id": unique("a")}, "bus": {"url": f"nats://127.0.0.1:{free_port()}", "connect_timeout": 600}}
    l8 = start_l8(config, "--log-level", "debug", cwd=tmp_path, wait=False)
    wait_for(lambda: "bus error" in l8.log())
    began = time.monotonic()
    l8.proc.send_signal(sig)
    assert l8.proc.wait(30) == 0
    print(f"stopped {time.monotonic() - began:.2f}s after {sig.name}")
    assert "Traceback" not in l8.log()


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.9, 1.4])
def test_sigterm_at_any_moment_of_an_embedded_start_stops_l8_and_its_server(tmp_path: Path, delay: float) -> None:
    config = {"app": {"id": unique("a")}, "data_dir": str(tmp_path / "d"), "components": STATE}
    l8 = start_l8(config, cwd=tmp_path, wait=False)
    time.sleep(delay)  # a moment of start-up; which one does not matter, every one must stop cleanly
    children = children_of(l8.proc.pid)
    began = time.monotonic()
    l8.proc.send_signal(signal.SIGTERM)
    code = l8.proc.wait(30)
    print(f"stopped {time.monotonic() - began:.2f}s after SIGTERM at {delay}s, code {code}")
    # Before Python has installed its handlers the default action ends it (-15); after, l8 stops (0).
    assert code in (0, -signal.SIGTERM), l8.log()[-3000:]
    assert "Traceback" not in l8.log()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=30)


def test_sigterm_after_the_bus_is_lost_exits_zero_without_a_traceback(tmp_path: Path) -> None:
    nats = start_nats(tmp_path / "js")
    config = {"app": {"id": unique("a")}, "namespace": unique("ns"), "bus": {"url": nats.url}, "components": STATE,
              "health": {"interval": 0.1}}  # fmt: skip
    l8 = start_l8(config, cwd=tmp_path)
    try:
        nats.kill()

        def not_ready() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{l8.http_port}/v1.0/healthz", timeout=2)
            except urllib.error.HTTPError as exc:
                return exc.code == 500
            return False

        wait_for(not_ready)
        began = time.monotonic()
        assert l8.stop() == 0
        print(f"stopped {time.monotonic() - began:.2f}s after SIGTERM with the bus gone")
        assert "Traceback" not in l8.log(), l8.log()
    finally:
        l8.stop(signal.SIGKILL)
        nats.stop()


def test_l8_run_takes_the_concurrency_flag() -> None:
    args = _parser().parse_args(["run", "--concurrency", "8"])
    assert config_from_args(args).concurrency == 8
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--concurrency", "0"])
