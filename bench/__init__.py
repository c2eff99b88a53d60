"""Benchmarks of l8 against the direct clients and the gRPC floor, measured in one run."""

import os

# The bench forks servers while its gRPC client has threads; gRPC's fork handlers only warn then.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
