"""`l8 config from-layotto`: Layotto's JSON config becomes an l8 config that `l8 run` serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import yaml

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.config import Config, ConfigError
from runtime.layotto_config import convert
from tests.process import L8, l8_running
from tests.servers import Server


def layotto_config(redis_host: str = "localhost:6379") -> dict[str, Any]:
    """Layotto's sample config (configs/config.json of its repo), trimmed, with its usual demo parts."""
    grpc_config = {
        "hellos": {"helloworld": {"type": "helloworld", "hello": "greetings"}},
        "state": {"state_demo": {"type": "redis", "metadata": {"redisHost": redis_host, "redisPassword": ""}}},
        "lock": {"lock_demo": {"type": "in-memory", "metadata": {}}},
        "pub_subs": {"pub_subs_demo": {"type": "redis", "metadata": {"redisHost": redis_host, "consumerID": "1"}}},
        "sequencer": {
            "sequencer_demo": {"type": "redis", "metadata": {"redisHost": redis_host}, "biggerThan": {"order": 1000}}
        },
        "config_store": {"config_demo": {"type": "etcd", "address": ["127.0.0.1:2379"], "timeout": "10"}},
        "oss": {"oss_demo": {"type": "aws.oss", "metadata": {}}},
        "app": {"app_id": "app1", "grpc_callback_port": 9999},
    }
    runtime = {"type": "grpc", "config": {"server_name": "runtime", "grpc_config": grpc_config}}
    return {
        "servers": [
            {
                "default_log_path": "stdout",
                "listeners": [
                    {"name": "grpc", "address": "127.0.0.1:34904", "filter_chains": [{"filters": [runtime]}]},
                ],
            }
        ],
        "metrics": {"sinks": [{"type": "prometheus", "config": {"port": 34903}}]},
    }


def test_the_types_l8_has_are_converted_and_the_others_are_named() -> None:
    conversion = convert(layotto_config())
    config = conversion.config
    assert config["app"] == {"id": "app1", "callback": "127.0.0.1:9999"}
    assert config["server"] == {"grpc": "127.0.0.1:34904"}
    assert config["components"] == {
        "helloworld": {"kind": "hello", "type": "helloworld", "metadata": {"hello": "greetings"}},
        # Layotto's state keys have no prefix unless asked; l8's would, so the conversion says so.
        "state_demo": {
            "kind": "state",
            "type": "redis",
            "metadata": {"url": "redis://localhost:6379", "keyPrefix": "none"},
        },
        "pub_subs_demo": {"kind": "pubsub", "type": "redis", "metadata": {"url": "redis://localhost:6379"}},
        "sequencer_demo": {
            "kind": "sequencer",
            "type": "redis",
            "metadata": {"url": "redis://localhost:6379", "biggerThan.order": "1000"},
        },
    }
    notes = "\n".join(conversion.notes)
    assert "lock.lock_demo: type 'in-memory' has no l8 bridge" in notes
    assert "config_store.config_demo: type 'etcd' has no l8 bridge" in notes
    assert "oss: not converted (l8 has no such building block)" in notes
    assert "pub_subs.pub_subs_demo: metadata l8 does not use: consumerID" in notes
    Config.model_validate(yaml.safe_load(conversion.render()))


def test_redis_credentials_tls_and_database_make_one_url() -> None:
    raw = layotto_config()
    meta = {"redisHost": "db:6380", "redisUsername": "u", "redisPassword": "p@ss", "redisDB": "2", "enableTLS": "true"}
    raw["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["grpc_config"]["state"] = {
        "s": {"type": "redis", "metadata": meta}
    }
    assert convert(raw).config["components"]["s"]["metadata"]["url"] == "rediss://u:p%40ss@db:6380/2"


def test_the_converted_config_runs_and_serves_the_layotto_components(tmp_path: Path, redis_server: Server) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps(layotto_config(f"127.0.0.1:{redis_server.port}")))
    out = subprocess.run([L8, "config", "from-layotto", str(source)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "in-memory" in out.stderr and out.stdout.startswith("# l8 config converted")
    config = yaml.safe_load(out.stdout)
    config["app"].pop("callback")  # no app in this test
    with l8_running(config) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        assert stub.SayHello(pb.SayHelloRequest(service_name="helloworld")).hello == "greetings"
        stub.SaveState(pb.SaveStateRequest(store_name="state_demo", states=[pb.StateItem(key="from-l8", value=b"v")]))
        assert stub.GetState(pb.GetStateRequest(store_name="state_demo", key="from-l8")).data == b"v"
        next_id = stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer_demo", key="order"))
        assert next_id.next_id > 1000
    # Stored where Layotto's Redis store keeps it: the bare key, a hash with the value in `data`.
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.hget("from-l8", "data") == b"v"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"servers": [{"listeners": []}]}), "no runtime found"),
        (json.dumps([1, 2]), "no runtime found"),
    ],
    ids=["json", "no-runtime", "list"],
)
def test_a_file_that_is_not_a_layotto_config_is_refused_with_a_reason(tmp_path: Path, text: str, says: str) -> None:
    source = tmp_path / "config.json"
    source.write_text(text)
    out = subprocess.run([L8, "config", "from-layotto", str(source)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and says in out.stderr and not out.stdout


def test_a_component_name_l8_cannot_use_is_refused() -> None:
    raw = layotto_config()
    raw["servers"][0]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["grpc_config"]["hellos"] = {
        "hello.world": {"type": "helloworld"}
    }
    with pytest.raises(ConfigError, match=r"component name 'hello\.world'"):
        convert(raw)
