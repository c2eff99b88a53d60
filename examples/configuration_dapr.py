"""Read and watch configuration with the Dapr SDK; write it with l8's native API (Dapr has no
rpc for writing configuration)."""

import os
import queue

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")
import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._response import ConfigurationResponse

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

native = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(f"127.0.0.1:{os.environ['DAPR_GRPC_PORT']}"))


def save(key: str, content: str) -> None:
    item = pb.ConfigurationItem(key=key, content=content)
    native.SaveConfiguration(pb.SaveConfigurationRequest(store_name="configstore", items=[item]))


changes: queue.Queue[tuple[str, str]] = queue.Queue()


def on_change(_sub_id: str, resp: ConfigurationResponse) -> None:
    for key, item in resp.items.items():
        changes.put((key, item.value))  # a delete arrives as an empty value


with DaprClient() as client:
    save("feature.checkout", "off")
    print(client.get_configuration("configstore", ["feature.checkout"]).items["feature.checkout"].value)
    sub_id = client.subscribe_configuration("configstore", ["feature.checkout"], on_change)
    save("feature.checkout", "on")
    print(changes.get(timeout=30))
    client.unsubscribe_configuration("configstore", sub_id)
