"""The pytest plugin behind ``ctxrl.testing`` (entry point ``pytest11: ctxrl``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from ctxrl.plugins import Host, get_host, load_host, using_host
from ctxrl.registry import Kind


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


def unclashed(kind: Kind, name: str) -> str:
    """``name``, the name of the ``kind`` of plugin a contract tests, when no two plugins
    registered it: otherwise a contract failure naming both (the second plugin, refused at
    load, may be the plugin under test, and the checks would pass on the other's)."""
    for clash_kind, clashed, kept, refused in get_host().registry.clashes:
        if (clash_kind, clashed) == (kind, name):
            pytest.fail(
                f"the {kind.replace('_', ' ')} {name!r} is registered by both plugin {kept!r} "
                f"and plugin {refused!r}, and {refused!r} failed to load: this contract would "
                f"test {kept!r}'s; block one of them (CTXRL_BLOCK_PLUGINS) or rename yours",
                pytrace=False,
            )
    return name
