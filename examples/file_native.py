"""Upload, read, list and delete a file through l8's File API (Layotto's rpcs), on the default
config's `filestore` (a NATS Object Store bucket)."""

import os

import grpc

from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc

address = f"127.0.0.1:{os.environ.get('L8_GRPC_PORT', '34904')}"
with grpc.insecure_channel(address) as channel:
    stub = runtime_pb2_grpc.RuntimeStub(channel)
    report = b"quarterly numbers\n" * 20_000  # 360 KB: four messages of Layotto's 100 KiB

    def upload():
        # The first message names the store, the file and its metadata; the rest carry data.
        yield pb.PutFileRequest(store_name="filestore", name="reports/q3.txt", metadata={"owner": "finance"})
        for i in range(0, len(report), 102400):
            yield pb.PutFileRequest(data=report[i : i + 102400])

    stub.PutFile(upload())
    data = b"".join(
        chunk.data for chunk in stub.GetFile(pb.GetFileRequest(store_name="filestore", name="reports/q3.txt"))
    )
    meta = stub.GetFileMeta(
        pb.GetFileMetaRequest(request=pb.FileRequest(store_name="filestore", name="reports/q3.txt"))
    )
    listed = stub.ListFile(pb.ListFileRequest(request=pb.FileRequest(store_name="filestore", name="reports")))
    stub.DelFile(pb.DelFileRequest(request=pb.FileRequest(store_name="filestore", name="reports/q3.txt")))
    print(data == report, meta.size, [f.file_name for f in listed.files], list(meta.response.metadata["owner"].value))
