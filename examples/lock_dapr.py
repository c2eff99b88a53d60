"""Take a distributed lock with the Dapr SDK, do the work, and let the with-block unlock it."""

import os
import uuid

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")
from dapr.clients import DaprClient

me = str(uuid.uuid4())  # one owner id per would-be holder
with DaprClient() as client, client.try_lock("lockstore", "order-1", me, expiry_in_seconds=10) as lock:
    if lock.success:
        print("locked order-1; another owner now gets", client.try_lock("lockstore", "order-1", "other", 10).success)
    else:
        print("order-1 is locked by someone else")
