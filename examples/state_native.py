"""Save and read state through l8's native API, Layotto's spec.proto.runtime.v1.Runtime."""

import os

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

address = f"127.0.0.1:{os.environ.get('L8_GRPC_PORT', '34904')}"
with grpc.insecure_channel(address) as channel:
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="order-1", value=b"3")]))
    got = stub.GetState(pb.GetStateRequest(store_name="statestore", key="order-1"))
    print(got.data.decode(), got.etag)
