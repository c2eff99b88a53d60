"""Read secrets with the Dapr SDK from the default config's `secretstore`: environment variables of
l8's process whose names start with SECRET_ (`SECRET_DB_PASSWORD=... l8 run`)."""

import os

os.environ.setdefault("DAPR_GRPC_PORT", "34904")
os.environ.setdefault("DAPR_HTTP_PORT", "34999")

from dapr.clients import DaprClient

with DaprClient() as client:
    password = client.get_secret("secretstore", "SECRET_DB_PASSWORD").secret["SECRET_DB_PASSWORD"]
    names = sorted(client.get_bulk_secret("secretstore").secrets)
    print(len(password), names)
