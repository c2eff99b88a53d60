"""Get ids from l8's sequencer through the native API: WEAK (the default) and STRONG."""

import os

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

address = f"127.0.0.1:{os.environ.get('L8_GRPC_PORT', '34904')}"
with grpc.insecure_channel(address) as channel:
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    strong = pb.SequencerOptions(increment=pb.SequencerOptions.STRONG)
    ids = [stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key="invoice", options=strong)).next_id]
    ids += [stub.GetNextId(pb.GetNextIdRequest(store_name="sequencer", key="invoice")).next_id for _ in range(2)]
    print(*ids)
