"""Grad mode: whether operations on tensors that require grad are recorded (per thread)."""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from ._tape import thread_state

F = TypeVar("F", bound=Callable[..., Any])


def is_grad_enabled() -> bool:
    """True when operations in this thread are recorded for differentiation."""
    return thread_state.grad_enabled


class _GradMode:
    """Sets grad mode for a ``with`` block (or a decorated function) and restores it after."""

    _mode: bool

    def __enter__(self) -> None:
        self._prev = thread_state.grad_enabled
        thread_state.grad_enabled = self._mode

    def __exit__(self, *exc: object) -> None:
        thread_state.grad_enabled = self._prev

    def __call__(self, fn: F) -> F:
        mode = self._mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = thread_state.grad_enabled
            thread_state.grad_enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                thread_state.grad_enabled = prev

        return wrapper  # type: ignore[return-value]


class no_grad(_GradMode):
    """Context manager (or decorator) under which nothing is recorded.

    >>> import tapediff as td
    >>> w = td.tensor([1.0, 2.0], requires_grad=True)
    >>> with td.no_grad():
    ...     y = w * 2
    >>> y.requires_grad
    False
    """

    _mode = False


class enable_grad(_GradMode):
    """Context manager (or decorator) that turns recording back on, e.g. inside ``no_grad``."""

    _mode = True


class set_grad_enabled(_GradMode):
    """Set grad mode to ``mode`` now; used as a context manager, restore the previous mode on exit.

    >>> import tapediff as td
    >>> with td.set_grad_enabled(False):
    ...     td.is_grad_enabled()
    False
    """

    def __init__(self, mode: bool) -> None:
        self._mode = bool(mode)
        self._prev = thread_state.grad_enabled
        thread_state.grad_enabled = self._mode

    def __enter__(self) -> None:  # the mode was already set by the constructor
        pass

    def __call__(self, fn: F) -> F:
        thread_state.grad_enabled = self._prev  # as a decorator it applies only inside ``fn``
        return super().__call__(fn)
