"""Bridges to HTTP servers: an output binding."""
