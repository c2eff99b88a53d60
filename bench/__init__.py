"""Benchmarks of l8 against the direct clients and the gRPC floor, measured in one run."""
