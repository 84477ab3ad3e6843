"""The sweep commands: ``ctxrl sweep`` (run or resume a sweep) and ``ctxrl report`` (rewrite a
run directory's exports and summary from its store, or a transfer study's report).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from ctxrl.cli_common import _host, _warn_failed, err, exit_cleanly_on_sigterm, json_option
from ctxrl.config import load_config, resolve_plan
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.run_dirs import check_output_dir, locate_run_dir


# --------------------------------------------------------------------------------- sweep
def _resolved_as_comments(resolved: dict[str, Any]) -> str:
    """What a plan resolves to (:func:`ctxrl.config.resolved_values`) as YAML comments below
    the config (the output stays a config ``ctxrl sweep`` reads)."""
    text = yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=96)
    lines = ["what it resolves to (comments: not part of the config)", *text.splitlines()]
    return "\n".join(f"# {line}" for line in lines)


def _study_hint(ctx: click.Context, config: Path | None) -> str:
    """For a file that is not a sweep config at all (no ``features``, as a study of a
    transfer plugin's own command has none): the commands that take a STUDY file, found
    among the loaded commands (plugins add theirs), so the user learns where it goes."""
    if config is None:
        return ""
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    if not isinstance(data, dict) or "features" in data:
        return ""
    root = ctx.find_root()
    found: list[str] = []

    def walk(group: click.Group, path: list[str]) -> None:
        for name in group.list_commands(root):
            command = group.get_command(root, name)
            if isinstance(command, click.Group):
                walk(command, [*path, name])
            elif command is not None and any(
                isinstance(p, click.Argument) and p.name == "study" for p in command.params
            ):
                found.append(" ".join(["ctxrl", *path, name, str(config)]))

    if isinstance(root.command, click.Group):
        walk(root.command, [])
    if not found:
        return ""
    lines = "".join(f"\n    {line}" for line in found)
    return f"  it has no `features`; if it is a study, run it with its own command:{lines}"


@click.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set features.length.num=10 "
    "--set algorithm.params.learning_rate=1e-3; repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; train nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="If another sweep is running in the same run directory, wait for it to finish "
    "(default: stop with an error naming it).",
)
@json_option(
    "Print, instead of summary.md and the results line, one JSON object: run_dir, the "
    "counts (trained, resumed, skipped), the failed and kept run ids, and summary (the "
    "run directory's exports/summary.json, every key present, null where it does not "
    "apply). With --dry-run: run_dir, plan_hash, config (the plan as it will run) and "
    'resolved (what --dry-run lists as comments). On a failure: {"error": MESSAGE, '
    '"exit_code": CODE}. Progress stays on stderr.',
)
@click.pass_context
def sweep(
    ctx: click.Context,
    config: Path | None,
    overrides: tuple[str, ...],
    dry_run: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Run or resume the sweep in CONFIG (YAML). Without CONFIG: the embedded quickstart,
    a small CartPole sweep on CPU.

    Rerunning the same config continues where a killed run stopped (same plan hash) and
    skips every finished run. The run directory (printed) holds store.sqlite, the policies,
    exports/ (matrices per seed, runs and evaluations as CSV, summary.json) and summary.md,
    which stdout shows at the end (or --json). Exits 2 on an error ctxrl names (bad input is
    found before any work); 1 when a run failed or a damaged policy could not be trained
    again (the rest of the sweep is kept; a rerun tries those again); 130 / 143 when
    interrupted or terminated.
    """
    from ctxrl.sweep import run_sweep

    host = _host(ctx)
    _warn_failed(host)
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        hint = _study_hint(ctx, config)
        raise ConfigError(f"{exc}\n{hint}" if hint else str(exc)) from None
    plan = locate_run_dir(resolve_plan(cfg, host.registry))
    check_output_dir(cfg.output_dir)
    steps = f"{cfg.train_steps} steps per model"
    if plan.trained_steps is not None and plan.trained_steps != cfg.train_steps:
        # SB3 finishes the rollout it started (up); the batched trainers whole iterations
        steps += f" ({plan.trained_steps} trained: whole rollouts or iterations)"
    err.print(
        f"plan {plan.plan_hash[:10]}: {plan.env.name}, {len(plan.grid)} contexts over "
        f"{', '.join(plan.grid.features)}, {plan.algorithm.name}, seeds {cfg.seeds}, "
        f"{steps}, mode {cfg.mode}; run dir {plan.run_dir}"
    )
    preset = cfg.algorithm.preset
    if preset is not None and preset != plan.env.name and preset in host.registry.names("env"):
        err.print(
            f"[yellow]warning:[/] algorithm.preset: {preset!r} is {preset}'s preset and this "
            f"sweep trains on {plan.env.name}; its hyperparameters (gamma, reward scale, ...) "
            "were tuned there",
            highlight=False,
        )
    if dry_run:
        # the plan as it will run: a grid of several features may have changed the strategy
        config_json, resolved = plan.config.model_dump(mode="json"), plan.resolved or {}
        if as_json:
            result: dict[str, Any] = {
                "run_dir": str(plan.run_dir.resolve()),
                "plan_hash": plan.plan_hash,
                "config": config_json,
                "resolved": resolved,
            }
            click.echo(json.dumps(result, indent=2, allow_nan=False))
        else:
            click.echo(yaml.safe_dump(config_json, sort_keys=False))
            click.echo(_resolved_as_comments(resolved))
        return
    exit_cleanly_on_sigterm()
    outcome = run_sweep(plan, host=host, argv=["ctxrl", *sys.argv[1:]], console=err, wait=wait)
    resumed = f" ({outcome.resumed} resumed from a checkpoint)" if outcome.resumed else ""
    kept = (
        f"kept {len(outcome.kept)} whose retrain failed (their earlier results stand), "
        if outcome.kept
        else ""
    )
    err.print(
        f"trained {outcome.trained}{resumed}, {kept}already finished {outcome.skipped}, "
        f"failed {len(outcome.failed)}"
    )
    if as_json:
        summary = json.loads((outcome.run_dir / "exports" / "summary.json").read_text())
        result = {
            "run_dir": str(outcome.run_dir.resolve()),
            "trained": outcome.trained,
            "resumed": outcome.resumed,
            "skipped": outcome.skipped,
            "failed": list(outcome.failed),
            "kept": list(outcome.kept),
            "summary": summary,
        }
        click.echo(json.dumps(result, indent=2, allow_nan=False))
    else:
        click.echo((outcome.run_dir / "summary.md").read_text())
        click.echo(f"results: {outcome.run_dir}")
    if outcome.failed or outcome.kept:  # a kept run's damaged policy is still damaged
        sys.exit(1)


# -------------------------------------------------------------------------------- report
REPORT_MARK = ".ctxrl-report.json"
"""In a directory given to ``ctxrl report --out``: the run directory reported there."""


def _take_back(out: Path, existed: bool) -> None:
    """Remove the copy a study's report made in ``out``: ``out`` as it was (empty, or not
    there)."""
    shutil.rmtree(out, ignore_errors=True)
    if existed:
        out.mkdir(exist_ok=True)


def _check_report_target(out: Path, run_dir: Path) -> None:
    """``--out`` must be a new or empty directory outside ``run_dir``, or one an earlier report
    of the same run directory wrote (marked with :data:`REPORT_MARK`): a report into another
    run's directory replaced its summary and left a mix of the two runs' files, and a study
    reported into its own subdirectory was copied into itself, one level deeper each time."""
    mark = out / REPORT_MARK
    if out.resolve().is_relative_to(run_dir.resolve()):  # copied into itself, deeper each time
        raise CtxrlError(
            f"--out: {out} lies inside the run directory {run_dir}; give a directory outside "
            "it (or no --out, to report in the run directory itself)"
        )
    if out.exists() and not out.is_dir():
        raise CtxrlError(f"--out: {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        try:
            reported = json.loads(mark.read_text())["run_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            reported = None
        if reported != str(run_dir.resolve()):
            raise CtxrlError(
                f"--out: {out} is not empty and holds no earlier report of {run_dir}"
                + (f" (it reports {reported})" if reported else "")
                + "; give a new or empty directory"
            )
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"run_dir": str(run_dir.resolve())}))


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the exports, figures and summary.md here instead of RUN_DIR (for a run "
    "directory you cannot write): a new or empty folder, or an earlier report of the same "
    "run; a transfer study's run directory is copied here and reported in the copy.",
)
@json_option(
    "A sweep's run directory: print, instead of summary.md and the exports line, one "
    "JSON object: run_dir, exports (the folder written) and summary (its summary.json).",
)
@click.pass_context
def report(ctx: click.Context, run_dir: Path, out: Path | None, as_json: bool) -> None:
    """Rewrite RUN_DIR's exports (matrices, tables, selection curves), figures and summary.md
    from its store (a sweep's) or its programs' results (a transfer study's). Nothing stored
    is changed; a sweep's run directory without a store is refused, never reported as
    empty."""
    from ctxrl.results import open_store
    from ctxrl.run_dirs import PLAN_FILE, exports_lock, read_plan_file, stored_config, sweep_holding
    from ctxrl.summary import STORE_FILE, sweep_matrix, trained_order, write_exports

    host = _host(ctx)
    stored = read_plan_file(run_dir)
    if "study" in stored:
        # a transfer study's run directory: its transfer method writes the report
        if as_json:
            raise CtxrlError(
                f"--json: {run_dir} is a transfer study's run directory ({stored['study']}), "
                "whose report is its summary.md; --json is for a sweep's run directory"
            )
        spec = host.registry.transfer_method(str(stored["study"]))
        if spec.report is None:
            raise CtxrlError(f"transfer method {spec.name!r} writes no report ({run_dir})")
        if out is not None and out.resolve() != run_dir.resolve():
            # a study's report is written into its run directory: report a copy of it (into
            # a new or empty directory, or the copy an earlier report of it made)
            existed = out.exists()
            fresh = not existed or (out.is_dir() and not any(out.iterdir()))
            # not the copy's own mark, if RUN_DIR is itself an --out copy: the mark says what
            # was copied here
            ignore = shutil.ignore_patterns(REPORT_MARK)
            try:
                _check_report_target(out, run_dir)
                shutil.copytree(run_dir, out, dirs_exist_ok=True, ignore=ignore)
            except OSError as exc:
                if fresh:  # what was copied is taken back: --out is as it was
                    _take_back(out, existed)
                if isinstance(exc, shutil.Error):  # files of RUN_DIR that could not be read
                    source, _, why = exc.args[0][0]
                    raise CtxrlError(f"cannot copy {source} into --out {out}: {why}") from None
                raise CtxrlError(
                    f"cannot write the report into {out} ({exc.strerror}: {exc.filename}); "
                    "give another --out DIR"
                ) from None
            err.print(f"copied {run_dir} to {out} for its report", highlight=False)
            copy = out.resolve()  # absolute: its name in an error is told apart from words
            try:
                click.echo(spec.report(copy))
            except CtxrlError as exc:  # about the copy, which is taken back: name RUN_DIR
                if fresh:
                    _take_back(out, existed)
                pattern = rf"{re.escape(str(copy))}(?![\w.-])"
                exc.args = (re.sub(pattern, lambda _: str(run_dir), str(exc)),)
                raise
            except BaseException:
                if fresh:  # the copy this report made is taken back: --out is as it was
                    _take_back(out, existed)
                raise
            return
        click.echo(spec.report(run_dir))
        return
    cfg = stored_config(stored, run_dir / PLAN_FILE)
    plan = resolve_plan(cfg, host.registry, training=False)
    target = out or run_dir
    running = sweep_holding(run_dir)
    with open_store(run_dir) as store:
        if not store.runs():
            policies = len(list((run_dir / "artifacts").glob("*.safetensors")))
            # policies saved and no run committed: a sweep killed while storing its first
            # group (its checkpoint kept: a rerun resumes it), or a store lost since
            if policies and not running and any((run_dir / "checkpoints").glob("*.safetensors")):
                raise CtxrlError(
                    f"{run_dir}: its store holds no run yet (the sweep was stopped while "
                    f"storing its first group: artifacts/ holds {policies} saved "
                    f"polic{'y' if policies == 1 else 'ies'}, checkpoints/ what resumes them): "
                    "rerun `ctxrl sweep` on its config to resume it. Nothing was written"
                )
            if policies and not running:  # stored, then lost: not a sweep that stopped early
                raise CtxrlError(
                    f"{run_dir}: its store holds no run, though its artifacts/ holds {policies} "
                    f"saved polic{'y' if policies == 1 else 'ies'}: the store was emptied or "
                    f"replaced (or copied without its {STORE_FILE}-wal, where "
                    "SQLite keeps what it has not yet written into the file); restore it from a "
                    "copy, or rerun `ctxrl sweep` on its config to train the runs again. "
                    "Nothing was written"
                )
            stopped = (
                f"a sweep is running there ({running})"
                if running
                else "the sweep stopped before any run finished or failed"
            )
            raise CtxrlError(
                f"{run_dir}: its store holds no run yet ({stopped}): nothing to report, "
                "nothing was written"
            )
        if running:
            err.print(
                f"[yellow]warning:[/] a sweep is running in {run_dir} ({running}): this "
                "report shows the runs stored so far; the sweep writes its own when it ends",
                highlight=False,
            )
        elsewhere = out is not None and out.resolve() != run_dir.resolve()
        try:
            if out is not None and elsewhere:
                _check_report_target(out, run_dir)
            target.mkdir(parents=True, exist_ok=True)
            # in RUN_DIR: read and written in turn with a running sweep's final exports
            with contextlib.nullcontext() if elsewhere else exports_lock(run_dir):
                matrix = sweep_matrix(plan, store)
                order = trained_order(plan, store)
                if cfg.mode == "select" and not order:
                    err.print(
                        f"[yellow]warning:[/] {run_dir} stores no trained selection step (a "
                        "sweep stopped in its first step, or from a ctxrl before selection "
                        "steps were stored): no G_k along the trained order"
                    )
                exports = write_exports(plan, store, matrix, target, order=order)
        except OSError as exc:
            raise CtxrlError(
                f"cannot write the report into {target} ({exc.strerror}: {exc.filename}); "
                + (
                    "give another --out DIR"
                    if out is not None
                    else "pass --out DIR to write it elsewhere"
                )
            ) from None
    summary = json.loads((exports / "summary.json").read_text())
    damaged = summary.get("damaged") or []
    if damaged:
        one = len(damaged) == 1
        count = f"{len(damaged)} saved {'policy is' if one else 'policies are'}"
        err.print(
            f"[yellow]warning:[/] {count} damaged: "
            + "; ".join(d["problem"] for d in damaged)
            + f"; rerun `ctxrl sweep` to train {'it' if one else 'them'} again",
            highlight=False,
            soft_wrap=True,
        )
    if as_json:
        result = {
            "run_dir": str(run_dir.resolve()),
            "exports": str(exports.resolve()),
            "summary": summary,
        }
        click.echo(json.dumps(result, indent=2, allow_nan=False))
        return
    click.echo((target / "summary.md").read_text())
    click.echo(f"exports: {exports}")
