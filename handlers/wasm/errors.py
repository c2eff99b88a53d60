"""Errors of running a function; each carries the status code the caller sees."""

from __future__ import annotations

from bridges.errors import Code, L8Error


class FunctionError(L8Error):
    """The function trapped or answered garbage (a bad pointer, a length past its memory)."""

    code = Code.INTERNAL


class FunctionTimeout(FunctionError):
    code = Code.DEADLINE_EXCEEDED


class FunctionLimit(FunctionError):
    """A limit stopped the call: fuel, output size, host calls."""

    code = Code.RESOURCE_EXHAUSTED


class FunctionUnavailable(FunctionError):
    """The function is not loaded (its module failed to load, or it is stopping)."""

    code = Code.UNAVAILABLE


class FunctionAnswered(FunctionError):
    """An invocation the function itself answered with a negative value: the app's error."""

    code = Code.UNKNOWN
