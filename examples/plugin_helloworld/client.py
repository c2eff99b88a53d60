"""Call the helloworld plugin's Greeter on l8's gRPC port, as any gRPC client calls a service."""

import os
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))  # the plugin's generated stubs

from l8_helloworld import helloworld_pb2, helloworld_pb2_grpc

address = f"127.0.0.1:{os.environ.get('L8_GRPC_PORT', '34904')}"
with grpc.insecure_channel(address) as channel:
    reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(helloworld_pb2.HelloRequest(name="l8"))
    print(reply.message)
