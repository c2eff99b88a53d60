"""One conformance suite for the File API (Layotto's rpcs through the native stubs), against every
bridge: the NATS Object Store and a local directory."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from handlers.file import CHUNK
from handlers.proto import runtime_pb2 as pb
from handlers.proto import runtime_pb2_grpc
from runtime.sidecar import Sidecar
from tests.conftest import SidecarFactory, native_stub, sidecar_config
from tests.servers import Server

BRIDGES = ["nats.objectstore", "local.dir"]
STORE = "files"
LAYOTTO_CHUNK = 102400  # what Layotto's clients send per message


@dataclass
class Env:
    bridge: str
    sidecar: Sidecar
    stub: runtime_pb2_grpc.RuntimeStub
    root: Path | None

    @property
    def bucket(self) -> str:
        return f"l8_{self.sidecar.config.namespace}_{STORE}"


def file_components(bridge: str, root: Path, **metadata: str) -> dict[str, Any]:
    meta = dict(metadata)
    if bridge == "local.dir":
        meta["root"] = str(root)
    return {STORE: {"kind": "file", "type": bridge, "metadata": meta}}


@pytest.fixture(params=BRIDGES)
async def env(
    request: pytest.FixtureRequest, nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> AsyncIterator[Env]:
    metadata = getattr(request, "param_metadata", {})
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, file_components(request.param, tmp_path / "root", **metadata))
    )
    channel, stub = native_stub(sidecar)
    yield Env(request.param, sidecar, stub, tmp_path / "root" if request.param == "local.dir" else None)
    await channel.close()


def requests(
    name: str, data: bytes, metadata: dict[str, str] | None = None, *, chunk: int = LAYOTTO_CHUNK, repeat: bool = False
) -> Iterator[pb.PutFileRequest]:
    """PutFileRequests: the first names the store and file; ``repeat`` resends them (as Layotto's demo does)."""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    for i, piece in enumerate(pieces):
        if i == 0 or repeat:
            yield pb.PutFileRequest(store_name=STORE, name=name, data=piece, metadata=metadata or {})
        else:
            yield pb.PutFileRequest(data=piece)


async def put(stub: runtime_pb2_grpc.RuntimeStub, name: str, data: bytes, **kw: Any) -> None:
    await stub.PutFile(requests(name, data, **kw))


async def chunks_of(stub: runtime_pb2_grpc.RuntimeStub, name: str, store: str = STORE) -> list[bytes]:
    return [r.data async for r in stub.GetFile(pb.GetFileRequest(store_name=store, name=name))]


async def get(stub: runtime_pb2_grpc.RuntimeStub, name: str) -> bytes:
    return b"".join(await chunks_of(stub, name))


async def meta(stub: runtime_pb2_grpc.RuntimeStub, name: str) -> pb.GetFileMetaResponse:
    return await stub.GetFileMeta(pb.GetFileMetaRequest(request=pb.FileRequest(store_name=STORE, name=name)))


async def listing(
    stub: runtime_pb2_grpc.RuntimeStub, directory: str = "", page_size: int = 0, marker: str = ""
) -> pb.ListFileResp:
    return await stub.ListFile(
        pb.ListFileRequest(request=pb.FileRequest(store_name=STORE, name=directory), page_size=page_size, marker=marker)
    )


async def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def absent(stub: runtime_pb2_grpc.RuntimeStub, name: str) -> bool:
    try:
        await meta(stub, name)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return True
        raise
    return False


async def test_a_file_put_in_chunks_reads_back_whole_in_fixed_chunks(env: Env) -> None:
    data = os.urandom(10 * LAYOTTO_CHUNK + 123)
    await put(env.stub, "docs/report.bin", data)
    chunks = await chunks_of(env.stub, "docs/report.bin")
    assert b"".join(chunks) == data
    assert all(len(c) == CHUNK for c in chunks[:-1]) and 0 < len(chunks[-1]) <= CHUNK


async def test_an_empty_file_and_a_one_byte_file_round_trip(env: Env) -> None:
    await put(env.stub, "empty", b"")
    await put(env.stub, "one", b"x")
    assert await chunks_of(env.stub, "empty") == []
    assert await get(env.stub, "one") == b"x"
    assert (await meta(env.stub, "empty")).size == 0


async def test_layotto_clients_that_resend_the_store_name_and_metadata_in_every_message_are_served(env: Env) -> None:
    data = os.urandom(3 * LAYOTTO_CHUNK)
    await put(env.stub, "resent", data, metadata={"owner": "me"}, repeat=True)
    assert await get(env.stub, "resent") == data


async def test_get_file_meta_reports_size_last_modified_and_metadata(env: Env) -> None:
    before = time.time()
    await put(env.stub, "a/b.txt", b"hello", metadata={"content-type": "text/plain", "owner": "ops"})
    got = await meta(env.stub, "a/b.txt")
    assert got.size == 5
    modified = time.mktime(time.strptime(got.last_modified, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 2 <= modified <= time.time() + 2
    assert {k: list(v.value) for k, v in got.response.metadata.items()} == {
        "content-type": ["text/plain"],
        "owner": ["ops"],
    }


async def test_a_missing_file_is_not_found_for_get_meta_and_delete(env: Env) -> None:
    code, message = await error_of(meta(env.stub, "nope"))
    assert code is grpc.StatusCode.NOT_FOUND and "nope" in message
    code, _ = await error_of(get(env.stub, "nope"))
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = await error_of(env.stub.DelFile(pb.DelFileRequest(request=pb.FileRequest(store_name=STORE, name="nope"))))
    assert code is grpc.StatusCode.NOT_FOUND


async def test_list_file_pages_through_a_directory_in_name_order_with_a_marker(env: Env) -> None:
    for name in ("dir/b", "dir/a", "dir/sub/c", "other/x", "dirt"):
        await put(env.stub, name, name.encode(), metadata={"n": name.replace("/", "-")})
    first = await listing(env.stub, "dir", page_size=2)
    assert [f.file_name for f in first.files] == ["dir/a", "dir/b"]
    assert first.is_truncated and first.marker == "dir/b"
    assert first.files[0].size == 5 and first.files[0].metadata == {"n": "dir-a"} and first.files[0].last_modified
    second = await listing(env.stub, "dir/", page_size=2, marker=first.marker)
    assert [f.file_name for f in second.files] == ["dir/sub/c"]
    assert not second.is_truncated and second.marker == ""
    everything = await listing(env.stub)
    assert [f.file_name for f in everything.files] == ["dir/a", "dir/b", "dir/sub/c", "dirt", "other/x"]
    assert [f.file_name for f in (await listing(env.stub, "nothing-here")).files] == []


async def test_del_file_removes_a_file_from_get_meta_and_list(env: Env) -> None:
    await put(env.stub, "gone/soon", b"1")
    await env.stub.DelFile(pb.DelFileRequest(request=pb.FileRequest(store_name=STORE, name="gone/soon")))
    assert await absent(env.stub, "gone/soon")
    assert [f.file_name for f in (await listing(env.stub, "gone")).files] == []
    await put(env.stub, "gone/soon", b"2")  # the name can be used again
    assert await get(env.stub, "gone/soon") == b"2"


async def test_of_two_uploads_of_one_name_the_one_that_completes_last_wins(env: Env) -> None:
    first_data, second_data = os.urandom(4 * LAYOTTO_CHUNK), os.urandom(2 * LAYOTTO_CHUNK)
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[pb.PutFileRequest]:
        pieces = list(requests("shared", first_data, {"v": "first"}))
        yield pieces[0]
        await gate.wait()
        for piece in pieces[1:]:
            yield piece

    started = asyncio.ensure_future(env.stub.PutFile(slow()))
    await put(env.stub, "shared", second_data, metadata={"v": "second"})
    assert await get(env.stub, "shared") == second_data
    gate.set()
    await started
    assert await get(env.stub, "shared") == first_data
    assert list((await meta(env.stub, "shared")).response.metadata["v"].value) == ["first"]


async def test_an_upload_cancelled_midway_leaves_no_file_and_keeps_the_previous_one(env: Env) -> None:
    await put(env.stub, "kept", b"version 1")
    sent = asyncio.Event()

    async def broken(name: str) -> AsyncIterator[pb.PutFileRequest]:
        for i, piece in enumerate(requests(name, os.urandom(20 * LAYOTTO_CHUNK))):
            yield piece
            if i == 3:
                sent.set()
                await asyncio.Event().wait()  # the client stalls; then it is cancelled

    for name in ("kept", "fresh"):
        sent.clear()
        call = env.stub.PutFile(broken(name))
        task = asyncio.ensure_future(call)
        await sent.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await get(env.stub, "kept") == b"version 1"
    assert await absent(env.stub, "fresh")
    await wait_for_no_leftovers(env, live=1)


async def test_uploads_refused_midway_leave_no_chunks_even_with_chunks_in_flight(env: Env) -> None:
    # A bad message after many good ones: the worker gives the upload up with chunks still on
    # their way to the store, and everything they wrote must go however they race the clean-up.
    def refused(name: str) -> Iterator[pb.PutFileRequest]:
        yield from requests(name, os.urandom(24 * LAYOTTO_CHUNK))
        yield pb.PutFileRequest(store_name=STORE, name="another", data=b"x")

    for i in range(6):
        code, _ = await error_of(env.stub.PutFile(refused(f"refused-{i}")))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert await absent(env.stub, f"refused-{i}")
    await wait_for_no_leftovers(env, live=0)


async def wait_for_no_leftovers(env: Env, live: int, timeout: float = 30.0) -> None:
    """Poll until the bridge holds nothing but the ``live`` files' data (temporary uploads are gone).

    Before each look JetStream stores a message of the test on the bucket's stream, so every chunk
    published before it is stored too: a chunk that a clean-up overtook shows as a leftover."""
    deadline = time.monotonic() + timeout
    while True:
        if env.root is not None:
            leftovers = sorted(p.name for p in (env.root / ".l8-tmp").iterdir())
        else:
            nc = env.sidecar.bus.nc if env.sidecar.bus else None
            assert nc is not None
            js, stream, chunks = nc.jetstream(), f"OBJ_{env.bucket}", f"$O.{env.bucket}.C"
            await js.publish(f"{chunks}.barrier", b"")
            await js.purge_stream(stream, subject=f"{chunks}.barrier")
            info = await js.stream_info(stream, subjects_filter=f"{chunks}.>")
            subjects = info.state.subjects or {}
            leftovers = sorted(subjects)[live:] if len(subjects) > live else []
        if not leftovers:
            return
        assert time.monotonic() < deadline, f"an aborted upload left {leftovers}"
        await asyncio.sleep(0.05)


async def test_a_second_header_message_is_refused_and_writes_nothing(env: Env) -> None:
    def two_headers() -> Iterator[pb.PutFileRequest]:
        yield pb.PutFileRequest(store_name=STORE, name="one", data=b"a" * 10)
        yield pb.PutFileRequest(store_name=STORE, name="two", data=b"b" * 10)

    code, message = await error_of(env.stub.PutFile(two_headers()))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "message 1" in message
    assert await absent(env.stub, "one") and await absent(env.stub, "two")

    def new_metadata() -> Iterator[pb.PutFileRequest]:
        yield pb.PutFileRequest(store_name=STORE, name="one", data=b"a", metadata={"k": "1"})
        yield pb.PutFileRequest(data=b"b", metadata={"k": "2"})

    code, _ = await error_of(env.stub.PutFile(new_metadata()))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert await absent(env.stub, "one")
    await wait_for_no_leftovers(env, live=0)


async def test_a_put_file_stream_without_a_message_is_invalid(env: Env) -> None:
    code, message = await error_of(env.stub.PutFile(iter(())))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "no message" in message


BAD_NAMES = [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("a/../b", "'..'"),
    ("..", "'..'"),
    ("a//b", "empty"),
    ("./a", "'.'"),
    ("dir/", "empty"),
    ("x\x00y", "control"),
    ("a\nb", "control"),
    (".l8-tmp/x", "reserves"),
    (".l8-meta", "reserves"),
    ("n" * 1100, "1024 bytes"),
    ("s" * 300 + "/x", "255 bytes"),
]


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
async def test_a_bad_name_is_invalid_argument_for_every_rpc_and_nothing_is_written(
    env: Env, name: str, why: str
) -> None:
    file_request = pb.FileRequest(store_name=STORE, name=name)
    calls = [
        env.stub.PutFile(requests(name, b"data")),
        get(env.stub, name),
        meta(env.stub, name),
        env.stub.DelFile(pb.DelFileRequest(request=file_request)),
    ]
    for call in calls:
        code, message = await error_of(call)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, message
        assert why in message, message
        assert len(message) < 300, "the error quotes at most a short prefix of the name"
    assert (await listing(env.stub)).files == []


async def test_a_bad_directory_or_page_is_invalid_argument(env: Env) -> None:
    for directory in ("../up", "/abs", "a/./b"):
        code, _ = await error_of(listing(env.stub, directory))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    for page_size in (-1, 1001):
        code, message = await error_of(listing(env.stub, page_size=page_size))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "page_size" in message


async def test_bad_metadata_is_invalid_argument_and_writes_nothing(env: Env) -> None:
    for metadata in ({f"k{i}": "v" for i in range(33)}, {"bad key": "v"}, {"k": "x" * 2000}, {"k": "a\nb"}):
        code, _ = await error_of(put(env.stub, "meta-bad", b"1", metadata=metadata))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert await absent(env.stub, "meta-bad")


async def test_an_empty_or_unknown_store_is_invalid_argument_naming_the_configured_ones(env: Env) -> None:
    for store in ("", "missing"):
        code, message = await error_of(
            env.stub.GetFileMeta(pb.GetFileMetaRequest(request=pb.FileRequest(store_name=store, name="x")))
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "configured: files" in message
        code, message = await error_of(chunks_of(env.stub, "x", store=store))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "configured: files" in message

    def elsewhere() -> Iterator[pb.PutFileRequest]:
        yield pb.PutFileRequest(store_name="missing", name="x", data=b"1")

    code, message = await error_of(env.stub.PutFile(elsewhere()))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "configured: files" in message


@pytest.mark.parametrize("bridge", BRIDGES)
async def test_a_file_over_max_file_bytes_is_refused_and_nothing_is_written(
    bridge: str, nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    sidecar = await make_sidecar(
        sidecar_config(nats_server.url, file_components(bridge, tmp_path / "root", maxFileBytes="250000"))
    )
    channel, stub = native_stub(sidecar)
    async with channel:
        await put(stub, "fits", os.urandom(250_000))
        code, message = await error_of(put(stub, "too-big", os.urandom(250_001)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "over 250000 bytes" in message
        assert await absent(stub, "too-big")
        assert len(await get(stub, "fits")) == 250_000


async def test_a_symlink_out_of_the_root_is_refused(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not serve me")
    sidecar = await make_sidecar(sidecar_config(nats_server.url, file_components("local.dir", root)))
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "leak").symlink_to(outside / "secret")
    channel, stub = native_stub(sidecar)
    async with channel:
        for call in (get(stub, "out/secret"), get(stub, "leak"), meta(stub, "leak"), put(stub, "out/new", b"x")):
            code, message = await error_of(call)
            assert code is grpc.StatusCode.INVALID_ARGUMENT and "symlink" in message
        assert not (outside / "new").exists()
        assert [f.file_name for f in (await listing(stub)).files] == []
        (root / "inside").write_text("fine")
        (root / "alias").symlink_to(root / "inside")
        assert await get(stub, "alias") == b"fine", "a link that stays inside the root is followed"


async def test_files_are_shared_with_the_nats_object_store_client_in_its_format(
    nats_server: Server, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    import nats

    sidecar = await make_sidecar(sidecar_config(nats_server.url, file_components("nats.objectstore", tmp_path)))
    bucket = f"l8_{sidecar.config.namespace}_{STORE}"
    channel, stub = native_stub(sidecar)
    nc = await nats.connect(nats_server.url)
    try:
        async with channel:
            data = os.urandom(700_000)
            await put(stub, "from/l8", data, metadata={"by": "l8"})
            store = await nc.jetstream().object_store(bucket)
            got = await store.get("from/l8")  # checks the digest itself
            assert got.data == data and got.info.size == len(data)
            theirs = os.urandom(300_000)
            await store.put("from/nats", theirs)
            assert await get(stub, "from/nats") == theirs
            assert (await meta(stub, "from/nats")).size == len(theirs)
    finally:
        await nc.close()
