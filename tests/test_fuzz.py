"""Fuzzing: generated requests (hypothesis) for every rpc of every gRPC service l8 serves (as its own
reflection lists them) and every HTTP route (as the runtime's sources declare them), plus corrupt
bytes as request payloads and on both ports' sockets; at least 20,000 inputs.

Invariants: no INTERNAL or UNKNOWN (the backends are all up, so none of those could be a backend's
fault), no 500 on HTTP but those daprd itself answers for a client's mistake (DAPRD_500), no traceback
in l8's log, a canary key unchanged, and l8 ready afterwards.
Shutdown (gRPC and HTTP) is the one call left out: it stops l8 as asked.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import re
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from handlers.proto import runtime_pb2 as pb
from tests import fuzz_inputs as fi
from tests.process import L8Process, l8_running

ROOT = Path(__file__).parent.parent
LEFT_OUT = {"Shutdown"}  # stops l8, as it should
GENERATED, CORRUPT = 150, 60  # inputs per unary rpc
STREAM_GENERATED, STREAM_CORRUPT = 12, 4
HTTP_GENERATED = 160
MINIMUM = 20_000
CANARY = b"canary-value"
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# grpcio's own servicers (health, reflection) decode requests in the framework, which answers bytes
# that are no message with UNKNOWN before l8 sees the call; every other service is l8's.
LIBRARY_DECODING = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@dataclass
class Fuzz:
    l8: L8Process
    channel: grpc.Channel
    inputs: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, what: str, code: Any, detail: str) -> None:
        self.inputs += 1
        if code in BAD or code == 500:
            self.failures.append(f"{what}: {code}: {detail[:300]}")


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    with l8_running(cwd=tmp_path_factory.mktemp("fuzz")) as l8, grpc.insecure_channel(l8.grpc_address) as channel:
        from handlers.proto import runtime_pb2_grpc

        stub = runtime_pb2_grpc.RuntimeStub(channel)
        stub.SaveState(pb.SaveStateRequest(store_name="statestore", states=[pb.StateItem(key="canary", value=CANARY)]))
        yield Fuzz(l8, channel)


def _services(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        return sorted(s.name for s in reply.list_services_response.service)


SERVICES = [
    "dapr.proto.runtime.v1.Dapr",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "spec.proto.runtime.v1.Lifecycle",
    "spec.proto.runtime.v1.Runtime",
]


def _methods() -> list[MethodDescriptor]:
    import dapr.proto.runtime.v1.dapr_pb2  # noqa: F401
    from grpc_health.v1 import health_pb2  # noqa: F401

    from handlers.proto import lifecycle_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    return [m for name in SERVICES for m in pool.FindServiceByName(name).methods if m.name not in LEFT_OUT]


def test_the_fuzzed_services_are_every_service_l8_serves(fuzz: Fuzz) -> None:
    assert _services(fuzz.l8.grpc_address) == SERVICES


METHODS = _methods()


def _call(fuzz: Fuzz, method: MethodDescriptor, payloads: list[bytes]) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    what = f"{method.containing_service.name}.{method.name}"
    try:
        if not method.client_streaming and not method.server_streaming:
            fuzz.channel.unary_unary(path)(payloads[0], timeout=5)
        elif not method.client_streaming:
            for i, _reply in enumerate(fuzz.channel.unary_stream(path)(payloads[0], timeout=1.5)):
                if i >= 1:
                    break
        elif not method.server_streaming:
            fuzz.channel.stream_unary(path)(iter(payloads), timeout=3)
        else:
            for i, _reply in enumerate(fuzz.channel.stream_stream(path)(iter(payloads), timeout=1.5)):
                if i >= 1:
                    break
    except grpc.RpcError as exc:
        fuzz.check(what, exc.code(), exc.details() or "")
        return
    fuzz.check(what, grpc.StatusCode.OK, "")


def _settings(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_generated_and_corrupt_requests_to_every_rpc_answer_without_an_internal_error(
    fuzz: Fuzz, method: MethodDescriptor
) -> None:
    streaming = method.client_streaming or method.server_streaming
    request_class = GetMessageClass(method.input_type)
    messages = 3 if method.client_streaming else 1
    failed = len(fuzz.failures)

    @_settings(STREAM_GENERATED if streaming else GENERATED)
    @given(st.data())
    def generated(data: st.DataObject) -> None:
        _call(fuzz, method, [fi.fill(data, request_class()).SerializeToString() for _ in range(messages)])

    @_settings(STREAM_CORRUPT if streaming else CORRUPT)
    @given(st.lists(fi.corrupt, min_size=1, max_size=messages))
    def corrupt(payloads: list[bytes]) -> None:
        before = len(fuzz.failures)
        _call(fuzz, method, payloads)
        if method.containing_service.full_name in LIBRARY_DECODING:
            del fuzz.failures[before:]

    generated()
    corrupt()
    assert fuzz.failures[failed:] == []


def _routes() -> list[tuple[str, str]]:
    """(method, pattern) of every HTTP route declared in the runtime's sources."""
    found: set[tuple[str, str]] = set()
    declared = re.compile(r"route\(\s*(?P<methods>\"[A-Z]+\"|\([^)]*\)|_VERBS),\s*f?\"(?P<pattern>/[^\"]+)\"")
    for path in (ROOT / "runtime").rglob("*.py"):
        for m in declared.finditer(path.read_text()):
            raw = m.group("methods")
            verbs = ("GET", "POST", "PUT", "DELETE") if raw == "_VERBS" else ast.literal_eval(raw)
            verbs = (verbs,) if isinstance(verbs, str) else verbs
            for version in ("v1.0", "v1.0-alpha1"):
                pattern = m.group("pattern").replace("{{", "{").replace("}}", "}").replace("{version}", version)
                found |= {(verb, pattern) for verb in verbs}
    return sorted(r for r in found if not r[1].endswith("/shutdown"))


ROUTES = _routes()


class Http:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                answer = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                return resp.status, answer
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def http_client(fuzz: Fuzz) -> Iterator[Http]:
    client = Http(fuzz.l8.http_port)
    yield client
    client.conn.close()


def _fill_path(data: st.DataObject, pattern: str) -> str:
    parts = []
    for segment in pattern.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("*}"):
            rest = data.draw(st.lists(fi.path_part, min_size=1, max_size=3))
            parts.append("/".join(urllib.parse.quote(p, safe="%") for p in rest))
        elif segment.startswith("{"):
            parts.append(urllib.parse.quote(data.draw(fi.path_part), safe="%"))
        else:
            parts.append(segment)
    path = "/" + "/".join(parts)
    query = data.draw(st.dictionaries(st.sampled_from(["metadata.ttlInSeconds", "consistency", "key", "x"]), fi.text))
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path


# daprd answers these client-caused conditions with a 500, and l8 answers as daprd does; each is
# recognised by its error code and the message l8 gives for exactly that condition, so a failure of
# l8's own under the same code still counts.
DAPRD_500 = {
    "ERR_CONFIGURATION_UNSUBSCRIBE": re.compile(r"does not exist"),
    "ERR_APP_CHANNEL_NIL": re.compile(r"this sidecar has no app callback"),
    "ERR_SECRET_GET": re.compile(r"^secret store '[^']*' has no secret "),
    "ERR_INVOKE_OUTPUT_BINDING": re.compile(
        r"^(binding '.*'(\u2026 \(\d+ characters\))? is not configured|the binding name is empty); configured"
    ),
}


def _daprd_answers_500(answer: bytes) -> bool:
    try:
        error = json.loads(answer)
    except ValueError:
        return False
    pattern = DAPRD_500.get(error.get("errorCode")) if isinstance(error, dict) else None
    return pattern is not None and bool(pattern.search(str(error.get("message", ""))))


@pytest.mark.parametrize(("verb", "pattern"), ROUTES, ids=[f"{v} {p}" for v, p in ROUTES])
def test_generated_requests_to_every_http_route_answer_without_a_server_error(
    fuzz: Fuzz, http_client: Http, verb: str, pattern: str
) -> None:
    failed = len(fuzz.failures)

    @_settings(HTTP_GENERATED)
    @given(st.data())
    def generated(data: st.DataObject) -> None:
        path = _fill_path(data, pattern)
        as_json = data.draw(st.booleans())
        body = json.dumps(data.draw(fi.json_value)).encode() if as_json else data.draw(fi.corrupt)
        headers = {"content-type": data.draw(st.sampled_from(["application/json", "text/plain", "application/x"]))}
        status, answer = http_client.request(verb, path, body, headers)
        if status == 500 and _daprd_answers_500(answer):
            status = 400  # a client's mistake, answered with daprd's status
        fuzz.check(f"{verb} {pattern}", status, path)

    generated()
    assert fuzz.failures[failed:] == []


@settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate])
@given(st.binary(min_size=1, max_size=2000))
def _raw(port: int, fuzz: Fuzz, garbage: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.recv(4096)
    fuzz.inputs += 1


def test_corrupt_bytes_on_the_grpc_and_http_sockets_leave_l8_serving_and_every_invariant_holds(fuzz: Fuzz) -> None:
    for port in (fuzz.l8.grpc_port, fuzz.l8.http_port):
        _raw(port, fuzz)
    assert fuzz.failures == []
    from handlers.proto import runtime_pb2_grpc

    stub = runtime_pb2_grpc.RuntimeStub(fuzz.channel)
    assert stub.GetState(pb.GetStateRequest(store_name="statestore", key="canary"), timeout=10).data == CANARY
    fuzz.l8.wait_ready()
    # Tracebacks of l8's own: grpcio logs one for each request its health and reflection servicers
    # could not decode or do not implement (LIBRARY_DECODING), headed by the method's path.
    log = re.sub(
        r"ERROR grpc\._cython\.cygrpc: Unexpected \[\w+\] raised by servicer method "
        r"\[/grpc\.(health|reflection)\.[^\n]*\n"
        r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*\S.*\n",
        "",
        fuzz.l8.log(),
    )
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 : log.index("Traceback") + 3000]
    print(f"fuzzed l8 with {fuzz.inputs} inputs over {len(METHODS)} rpcs and {len(ROUTES)} HTTP routes")
    assert fuzz.inputs >= MINIMUM
