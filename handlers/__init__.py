"""Handlers: one module per building block. They decode requests, apply the API's semantics and
call their bridge through its Protocol. They know no gRPC and no NATS."""
