"""What the ``ctxrl`` commands share: the consoles they print to (``out``: results on stdout;
``err``: progress, warnings and errors on stderr), the plugin host the root group loads (in
:mod:`ctxrl.cli`), and the warnings about plugins that failed to load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from ctxrl.plugins import Host

out = Console()
err = Console(stderr=True, soft_wrap=True)  # a line is one line in a log: paths unbroken

JSON_REQUESTED = "ctxrl.json"
"""Key in the root context's ``meta``: the command line holds ``--json`` (set by the root
group before the command's options are read, so that a usage error is answered in JSON too)."""

_Command = TypeVar("_Command", bound=Callable[..., Any])


def json_option(help: str) -> Callable[[_Command], _Command]:
    """A command's ``--json`` flag (``as_json``): the command prints one JSON document on
    stdout. Whatever fails, a script reading stdout still gets one: the root group prints
    ``{"error": MESSAGE, "exit_code": CODE}`` there (:func:`echo_json_failure`), the message
    going to stderr as always."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json_failure(ctx: click.Context, message: str, exit_code: int) -> None:
    """Print ``{"error": message, "exit_code": exit_code}`` on stdout when the command line
    asked for JSON (:data:`JSON_REQUESTED`); nothing otherwise."""
    if ctx.find_root().meta.get(JSON_REQUESTED):
        click.echo(json.dumps({"error": message, "exit_code": exit_code}))


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


def _print_tables(tables: list[Table]) -> None:
    """Print ``tables`` to stdout: fitted to a terminal, or, piped, one line per row at
    whatever width that takes (for grep, and nothing is cut short at 80 columns). A table
    that cannot fit the terminal without dropping columns is printed at its full width too,
    for the terminal to wrap."""
    wide = Console(width=100_000, highlight=False, force_terminal=out.is_terminal)
    for table in tables:
        unbounded = out.options.update(max_width=100_000)
        fits = Measurement.get(out, unbounded, table).minimum <= out.width
        (out if out.is_terminal and fits else wide).print(table)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's or ``kill``'s) into SystemExit (:class:`Terminated`), so
    that a sweep's or study's executors stop their workers and the store closes as on
    Ctrl-C, and the command exits 143 saying so; finished runs are kept either way. Called by
    the commands that train (``sweep`` and the studies a plugin adds), once they start to."""
    import signal

    from ctxrl.errors import Terminated

    def stop(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, stop)
