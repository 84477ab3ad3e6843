"""What the ``ctxrl`` commands share: the consoles they print to (``out``: results on stdout;
``err``: progress, warnings and errors on stderr), the plugin host the root group loads (in
:mod:`ctxrl.cli`), and the warnings about plugins that failed to load.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from ctxrl.plugins import Host

out = Console()
err = Console(stderr=True)


def _host(ctx: click.Context) -> Host:
    host: Host = ctx.obj["host"]
    return host


def _warn_failed(host: Host) -> None:
    """Plugins that failed to load, and block or allow lists that name no plugin."""
    for info in host.failed():
        err.print(
            f"[yellow]warning:[/] plugin {escape(repr(info.name))} "
            f"({escape(info.distribution or 'inline')}) failed to load: {escape(info.error or '')}",
            highlight=False,
            soft_wrap=True,
        )
    _warn_unmatched_controls(host)


def _warn_unmatched_controls(host: Host) -> None:
    for message in host.unmatched_controls():
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
