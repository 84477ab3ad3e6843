"""The pytest plugin behind ``ctxrl.testing`` (entry point ``pytest11: ctxrl``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ctxrl.plugins import Host, get_host, load_host


@pytest.fixture(scope="session")
def ctxrl_host() -> Host:
    """The process-wide plugin host (entry points loaded with the environment's controls)."""
    return get_host()


@pytest.fixture
def ctxrl_inline_plugin() -> Iterator[Callable[[object, str], Host]]:
    """``add(plugin, name) -> Host``: a fresh host with the entry points plus ``plugin``.

    The host is private to the test, so nothing leaks into other tests."""

    def add(plugin: object, name: str = "inline-test-plugin") -> Host:
        return load_host(extra=[(name, plugin)])

    yield add
