"""The ``ctxrl`` command line.

    ctxrl plugins [--json]          what is installed, what each plugin provides
    ctxrl envs [--json]             every environment and its context features
    ctxrl options KIND NAME         a plugin's options with their defaults
    ctxrl sweep [CONFIG] [--set k=v]  run (or resume) a sweep; no CONFIG = the quickstart
    ctxrl select --matrix FILE ...  replay a strategy offline on a stored matrix
    ctxrl synth --out DIR           write SD-MBTL's synthetic benchmark matrices
    ctxrl report RUN_DIR            rewrite a run's exports and summary from its store
    ctxrl transfer STUDY CONFIG     run (or resume) a transfer study a plugin provides

Plugins add commands through the ``ctxrl_register_commands`` hook.

This module holds the root group, which loads the plugins before it resolves a command, and
registers the built-in commands, which live in :mod:`ctxrl.cli_listing` (``plugins``,
``envs``), :mod:`ctxrl.cli_sweep` (``sweep``, ``report``) and :mod:`ctxrl.cli_select`
(``select``, ``synth``); :mod:`ctxrl.cli_common` holds what they share.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import Any

import click
from rich.markup import escape

from ctxrl import __version__
from ctxrl.cli_common import JSON_REQUESTED, echo_json_failure, err
from ctxrl.cli_common import out as out
from ctxrl.cli_listing import bound_text as bound_text
from ctxrl.cli_listing import envs, options, plugins
from ctxrl.cli_listing import envs_tables as envs_tables
from ctxrl.cli_listing import plugins_table as plugins_table
from ctxrl.cli_select import select, synth
from ctxrl.cli_sweep import REPORT_MARK as REPORT_MARK
from ctxrl.cli_sweep import report, sweep
from ctxrl.errors import CtxrlError, Terminated
from ctxrl.plugins import BLOCK_ENV, DISABLE_AUTOLOAD_ENV, Host, load_host, set_host


def _restore_environment(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class _Root(click.Group):
    """Loads the plugins before resolving sub-commands, so plugin commands show in --help."""

    def _ensure_host(self, ctx: click.Context) -> Host:
        ctx.ensure_object(dict)
        if "host" not in ctx.obj:
            block = ctx.params.get("block") or ()
            # workers inherit the block list through the environment, for this invocation
            # only: the variables are restored when it ends (one process may invoke cli again)
            saved = {name: os.environ.get(name) for name in (BLOCK_ENV, DISABLE_AUTOLOAD_ENV)}
            ctx.call_on_close(lambda: _restore_environment(saved))
            if block:
                current = os.environ.get(BLOCK_ENV, "")
                os.environ[BLOCK_ENV] = ",".join(p for p in [current, *block] if p)
            if ctx.params.get("no_autoload"):
                os.environ[DISABLE_AUTOLOAD_ENV] = "1"
            host = load_host()
            set_host(host)
            ctx.obj["host"] = host
            host.register_commands(self)
        return ctx.obj["host"]  # type: ignore[no-any-return]

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._ensure_host(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._ensure_host(ctx)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        # the command's own words (after its name); read before they are parsed, so that an
        # unknown option is answered in JSON too
        ctx.meta[JSON_REQUESTED] = "--json" in ctx.args
        try:
            return super().invoke(ctx)
        except CtxrlError as exc:
            # soft wrap: no line breaks inside paths and names a user copies
            # escaped: a message's own brackets ("[lower, upper]") are text, not rich markup
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            echo_json_failure(ctx, str(exc), 2)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C: what a sweep or study stored is kept
            err.print(
                "[yellow]interrupted:[/] what was stored so far is kept (a batched program's "
                "last checkpoint too); rerun the same command to continue",
                highlight=False,
            )
            echo_json_failure(ctx, "interrupted", 130)
            sys.exit(130)
        except Terminated as exc:  # SIGTERM: as Ctrl-C, what was stored is kept; exits 128 + 15
            err.print(
                "[yellow]terminated:[/] what was stored so far is kept (a batched program's "
                "last checkpoint too); rerun the same command to continue",
                highlight=False,
            )
            echo_json_failure(ctx, "terminated", int(exc.code or 143))
            raise
        except sqlite3.Error as exc:  # the results store could not be written (or read)
            name = str(getattr(exc, "sqlite_errorname", ""))
            why = (
                ". A full disk or a file-size limit is the usual cause; what was stored before "
                "is kept, and rerunning the same command continues"
                if name.startswith(("SQLITE_FULL", "SQLITE_IOERR"))
                else ""
            )
            message = f"the results store (store.sqlite in the run directory): {exc}{why}"
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            echo_json_failure(ctx, message, 1)
            sys.exit(1)
        except OSError as exc:  # a folder that cannot be made, a full disk: named, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            message = f"{where}{exc.strerror or exc}"
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            echo_json_failure(ctx, message, 1)
            sys.exit(1)
        except click.ClickException as exc:  # a usage error: click prints it, we add the JSON
            echo_json_failure(ctx, exc.format_message(), exc.exit_code)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):  # --help, ctx.exit(): no failure
            raise
        except Exception as exc:  # a bug: the traceback follows on stderr
            echo_json_failure(ctx, f"{type(exc).__name__}: {exc}", 1)
            raise


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctxrl")
@click.option(
    "--block",
    multiple=True,
    metavar="NAME",
    is_eager=True,  # read before --help lists the commands plugins add
    help="Do not load this plugin (entry-point or distribution name); repeatable. "
    f"Also read from {BLOCK_ENV}.",
)
@click.option(
    "--no-autoload",
    is_flag=True,
    is_eager=True,
    help=f"Load only plugins allow-listed in CTXRL_PLUGINS (as {DISABLE_AUTOLOAD_ENV}=1).",
)
@click.pass_context
def cli(ctx: click.Context, block: tuple[str, ...], no_autoload: bool) -> None:
    """ctxrl: train on a few source contexts, measure transfer to all of them, and choose
    which contexts are worth training on.

    Start with `ctxrl envs` to see the context families and `ctxrl sweep` to run the
    quickstart sweep (a small CartPole transfer matrix on CPU).
    """
    cli._ensure_host(ctx)


# ------------------------------------------------------------------------------ transfer
@click.group()
def transfer() -> None:
    """Transfer studies run outside a sweep, each a sub-command a transfer plugin adds
    (dqn: DQN transferability, fine-tuning arms against scratch). Plasticity studies are
    `ctxrl plasticity`; fine-tuning and distillation are a sweep's `transfer` methods."""


# the built-in commands; plugins add theirs when the root group loads the plugin host
cli.add_command(plugins)
cli.add_command(envs)
cli.add_command(options)
cli.add_command(sweep)
cli.add_command(select)
cli.add_command(synth)
cli.add_command(transfer)
cli.add_command(report)


def main() -> None:
    cli(prog_name="ctxrl")


if __name__ == "__main__":  # pragma: no cover
    main()
