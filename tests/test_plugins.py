"""API plugins as a user adds one: the example plugin (examples/plugin_helloworld) named in config or
found through its `l8.plugins` entry point, served on l8's port behind l8's hooks; a plugin that
cannot start stops l8 with a message naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import unique
from tests.process import L8Process, start_l8
from tests.servers import Server

PLUGIN = Path(__file__).parent.parent / "examples" / "plugin_helloworld"


def env_with(*paths: Path) -> dict[str, str]:
    found = [str(p) for p in paths]
    if os.environ.get("PYTHONPATH"):
        found.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(found)}


def config(nats_server: Server, **extra: Any) -> dict[str, Any]:
    return {
        "app": {"id": unique("plugged")},
        "namespace": unique("ns"),
        "bus": {"url": nats_server.url},
        "components": {"helloworld": {"kind": "hello", "type": "helloworld", "metadata": {"hello": "greetings"}}},
        **extra,
    }


def services(l8: L8Process) -> list[str]:
    with grpc.insecure_channel(l8.grpc_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return [s.name for a in answers for s in a.list_services_response.service]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_the_example_plugin_named_in_config_serves_its_api_through_the_bus_and_shows_everywhere(
    nats_server: Server, tmp_path: Path
) -> None:
    l8 = start_l8(config(nats_server, plugins=["l8_helloworld:plugin"], metrics={"enabled": True}), cwd=tmp_path,
                  env=env_with(PLUGIN))  # fmt: skip
    try:
        out = subprocess.run([sys.executable, str(PLUGIN / "client.py")], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "L8_GRPC_PORT": str(l8.grpc_port)})  # fmt: skip
        assert out.returncode == 0, out.stderr
        # The greeting of l8's hello component, asked over the bus.
        assert out.stdout.strip() == "greetings, l8"
        assert "helloworld.Greeter" in services(l8)
        described = get_json(f"http://127.0.0.1:{l8.http_port}/v1.0/metadata")
        assert described["plugins"] == [{"name": "helloworld", "services": ["helloworld.Greeter"], "source": "config"}]
        assert described["extended"]["l8.plugins"] == "helloworld"
        with urllib.request.urlopen(f"http://127.0.0.1:{l8.http_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "l8_plugin_helloworld_greetings_total 1.0" in metrics
        assert 'l8_grpc_server_handled_total{code="OK",method="/helloworld.Greeter/SayHello"} 1.0' in metrics
        assert "plugin helloworld serves helloworld.Greeter (config)" in l8.log()
    finally:
        l8.stop()
    assert "Traceback" not in l8.log()


def test_an_installed_plugin_is_found_through_its_entry_point(nats_server: Server, tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "l8_helloworld_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: l8-helloworld-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[l8.plugins]\nhelloworld = l8_helloworld:plugin\n")
    l8 = start_l8(config(nats_server), cwd=tmp_path, env=env_with(site, PLUGIN))
    try:
        assert "helloworld.Greeter" in services(l8)
        assert "plugin helloworld serves helloworld.Greeter (entry point of l8-helloworld-plugin)" in l8.log()
    finally:
        l8.stop()


def test_a_plugin_that_cannot_start_stops_l8_naming_it(nats_server: Server, tmp_path: Path) -> None:
    missing = start_l8(config(nats_server, plugins=["no_such_plugin.mod:factory"]), cwd=tmp_path, wait=False)
    assert missing.proc.wait(60) == 1
    assert "plugin 'no_such_plugin.mod:factory' cannot be imported: ModuleNotFoundError" in missing.log()
    (tmp_path / "failing").mkdir()
    # The example refuses to start without a hello component.
    failing = start_l8({**config(nats_server, plugins=["l8_helloworld:plugin"]), "components": {}},
                       cwd=tmp_path / "failing", env=env_with(PLUGIN), wait=False)  # fmt: skip
    assert failing.proc.wait(60) == 1
    assert "plugin 'l8_helloworld:plugin' failed to start: ValueError: the helloworld plugin answers" in failing.log()
    assert "Traceback" not in failing.log()
