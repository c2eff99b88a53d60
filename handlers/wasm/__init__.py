"""WebAssembly functions: the ``l8/1`` ABI, the engine, instances with their limits, host calls."""
