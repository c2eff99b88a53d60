"""A subscriber in a process of its own, for the tests that kill one.

Usage: python -m tests.pubsub_subscriber SPEC_JSON TOPIC GROUP COUNT — takes COUNT messages
without settling them, prints ``holding COUNT``, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.test_pubsub_bridges import Spec, open_pubsub


async def main(spec_json: str, topic: str, group: str, count: int) -> None:
    spec = Spec(**json.loads(spec_json))
    pubsub, env_close = await open_pubsub(spec)
    sub = await pubsub.subscribe(topic, group, max_in_flight=count)
    held: list[object] = []
    while len(held) < count:
        held += await sub.fetch(count - len(held), 1.0)
    print(f"holding {len(held)}", flush=True)
    await asyncio.Event().wait()
    await env_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
