"""The pytest plugin behind ``ctxrl.testing`` (entry point ``pytest11: ctxrl``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from ctxrl.plugins import Host, get_host, load_host, using_host


@pytest.fixture(scope="session")
def ctxrl_host() -> Host:
    """The process-wide plugin host (entry points loaded with the environment's controls)."""
    return get_host()


@pytest.fixture
def ctxrl_inline_plugin() -> Iterator[Callable[[object, str], Host]]:
    """``add(plugin, name) -> Host``: a fresh host with the entry points plus ``plugin``.

    For the rest of the test it is the process-wide host (what the contracts, sweeps and
    trainers find by name, as :func:`ctxrl.plugins.get_host` returns it); the host before it is
    restored when the test ends, so nothing leaks into other tests."""
    with contextlib.ExitStack() as hosts:

        def add(plugin: object, name: str = "inline-test-plugin") -> Host:
            return hosts.enter_context(using_host(load_host(extra=[(name, plugin)])))

        yield add
