"""The runtime's edges: config, CLI, gRPC and HTTP servers, app callbacks and lifecycle."""

__version__ = "0.1.0"
