"""Dapr's HTTP API on l8's HTTP port: one module per concern, every route forwarded to the same bus
subjects as the gRPC fronts (runtime/forward.py), so HTTP and gRPC share one path to the workers.

- router.py: routes by method and path segments, decoding each segment on its own;
- errors.py: Dapr's error body and codes (``{"errorCode", "message", "details"}``);
- body.py: reading JSON bodies and query metadata, with every field's type and size checked;
- state.py, pubsub.py, configuration.py, lock.py: the building blocks;
- metadata.py: ``/v1.0/metadata`` and ``/v1.0/shutdown``; invoke.py: ``/v1.0/invoke``.
"""
