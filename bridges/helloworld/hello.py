"""The ``helloworld`` hello component, as Layotto's demo has it: SayHello answers its greeting.

Metadata ``hello`` is the greeting (default ``greetings``). ``apply`` takes a new full metadata
at run time, which is what Layotto's ``Lifecycle.ApplyConfiguration`` does for this component.
"""

from __future__ import annotations

from bridges.errors import InvalidArgument
from bridges.registry import BridgeEnv

DEFAULT_GREETING = "greetings"
MAX_GREETING = 1024


class HelloWorld:
    """A ``Hello`` component; the greeting lives in this process only."""

    def __init__(self, name: str, metadata: dict[str, str], env: BridgeEnv) -> None:
        self.name = name
        self.greeting = _greeting(metadata)

    def features(self) -> frozenset[str]:
        return frozenset({"APPLY_CONFIGURATION"})

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def hello(self, name: str) -> str:
        return f"{self.greeting}, {name}" if name else self.greeting

    async def apply(self, metadata: dict[str, str]) -> None:
        self.greeting = _greeting(metadata)


def _greeting(metadata: dict[str, str]) -> str:
    unknown = sorted(set(metadata) - {"hello"})
    if unknown:
        raise InvalidArgument(f"the helloworld component takes only metadata 'hello'; got {unknown[0][:64]!r}")
    greeting = metadata.get("hello") or DEFAULT_GREETING
    if len(greeting) > MAX_GREETING:
        raise InvalidArgument(f"metadata 'hello' is {len(greeting)} characters; at most {MAX_GREETING}")
    return greeting
