"""Bridges reach the backends. Each backend is a package; each building block a module in it."""
