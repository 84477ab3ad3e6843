"""Plasticity studies: interventions x seeds on one context schedule, batched.

A study trains agents of one batched algorithm (PPO or DQN) on an env whose context switches
during training (a :mod:`ctxrl.schedules` schedule: pole length alternating every K steps,
friction redrawn log-uniformly, ...), once with no intervention (``none``, the baseline) and
once per *arm*: an intervention, or several composed, from the intervention registry. Every
(arm, seed) agent is one agent of a batched program: all arms whose interventions can apply to
a subset of a batch share one program (the agents stay independent: an agent's numbers do not
depend on the others), and an arm that changes what a batch shares (the network's shape:
LayerNorm, CReLU, plasticity injection; the optimizer: non-stationary Adam) gets a program of
its own. Seed ``s`` of every arm starts from the same initial weights and follows the same
schedule (``sampled`` schedules are drawn per seed: schedule seed + ``s``), so arms differ only
by their interventions.

Recorded on one step grid per program (:class:`~ctxrl_plugins.training.log.TrainingLog`): the
return in the agent's current context (its learning curve), the plasticity metrics per hidden
layer (on a grid and just before every switch) and the training diagnostics. Each program
checkpoints itself and is stored when it finishes (``programs/*.safetensors`` with JSON
metadata), so a killed study resumes. A program that fails (an intervention raising mid-training)
is recorded as failed (``programs/*.failed.json``: its arms, the intervention whose code raised,
the error) and the others still run; an arm whose intervention raised in the shared program is
moved into a program of its own and recorded as failed there, and the baseline and the other
arms train again without it. The report covers what finished and names what failed, and a rerun
retries only the failed programs. Every arm's interventions are checked against the
algorithm's networks before anything trains. The study file and the programs:
:mod:`~ctxrl_plugins.transfer.plasticity_plan`; running them:
:mod:`~ctxrl_plugins.transfer.plasticity_runner`; the report (exports, figures and the summary):
:mod:`ctxrl_plugins.transfer.plasticity_study_report`, its measures in
:mod:`~ctxrl_plugins.transfer.plasticity_analysis` and its ``summary.md`` in
:mod:`~ctxrl_plugins.transfer.plasticity_summary`. This module registers the study and its
command and re-exports the names of the plan and the runner modules.

Run it with ``ctxrl plasticity STUDY.yaml`` or from Python::

    from ctxrl.plugins import get_host
    from ctxrl_plugins.transfer.plasticity_study import load_study_config, run_study
    run_dir = run_study(load_study_config("study.yaml"), get_host().registry)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ctxrl import hookimpl
from ctxrl.options import check_device
from ctxrl.registry import Registry, TransferMethodSpec
from ctxrl.summary_text import counted
from ctxrl_plugins.transfer.plasticity_plan import (
    BASELINE,
    SHARED_PROGRAM,
    STUDY,
    ArmEntry,
    ArmsConfig,
    InterventionEntry,
    Program,
    StudyConfig,
    StudyPlan,
    build_arm_interventions,
    check_arm_networks,
    file_name,
    isolate_arms,
    load_study_config,
    plan_programs,
    resolve_study,
)
from ctxrl_plugins.transfer.plasticity_runner import (
    ISOLATED_FILE,
    ProgramFailure,
    ProgramResult,
    StudyRunner,
    failed_programs,
    isolated_arms,
    load_results,
    run_study,
)
from ctxrl_plugins.transfer.studies import (
    StudyOnly,
    announce,
    study_mapping,
    study_yaml,
)


def report_study(run_dir: Path) -> str:
    """Rewrite a study's exports, figures and summary from its stored programs (an env study
    or a shifting-target one)."""
    from ctxrl.plugins import get_host
    from ctxrl_plugins.transfer.plasticity_study_report import write_outputs
    from ctxrl_plugins.transfer.plasticity_targets import is_targets_study, report_targets_study

    registry = get_host().registry
    data = (yaml.safe_load((run_dir / "plan.yaml").read_text()) or {}).get("config", {})
    if is_targets_study(data):
        return report_targets_study(run_dir, data, registry)
    plan, results, failures = load_results(run_dir, registry)
    return write_outputs(plan, results, run_dir, failures=failures)


def _study() -> StudyOnly:
    return StudyOnly(
        "plasticity is a study of its own: run `ctxrl plasticity STUDY.yaml`; in a sweep "
        "put interventions under algorithm.interventions"
    )


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name=STUDY,
            factory=_study,
            batched_only=True,
            study_command="ctxrl plasticity STUDY.yaml",
            report=report_study,
            description="plasticity studies: interventions x seeds on a context schedule, "
            "per-switch metrics against no intervention (`ctxrl plasticity`)",
        )
    )


@hookimpl
def ctxrl_register_commands(cli: Any) -> None:
    import click

    @cli.command("plasticity")  # type: ignore[untyped-decorator]
    @click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Validate the study and print it as YAML with every field's default filled in (an "
        "intervention's options and the algorithm's hyperparameters as written); train nothing.",
    )
    def plasticity(study: Path, dry_run: bool) -> None:
        """Run (or resume) the plasticity STUDY (a YAML file): interventions x seeds on a
        context schedule, or on shifting regression targets (a `shifting_targets` block),
        against no intervention."""
        from rich.console import Console

        from ctxrl.plugins import get_host
        from ctxrl_plugins.transfer import plasticity_targets as targets

        console = Console(stderr=True)
        registry = get_host().registry
        if targets.is_targets_study(study_mapping(study)):
            _run_targets_study(study, dry_run, registry, console)
            return
        config = load_study_config(study)
        check_device(config.device)
        plan = resolve_study(config, registry)
        switches = len(_switch_steps(plan))
        # as a rerun will run them: with the arms that raised in programs of their own
        programs = isolate_arms(plan.programs, isolated_arms(plan.run_dir))
        announce(
            console,
            f"{plan.env.name} ({config.algorithm}): {len(plan.labels)} arms "
            f"({', '.join(plan.labels)}) x {counted(len(config.seeds), 'seed')}, "
            f"{switches} switch{'' if switches == 1 else 'es'} in {config.total_steps} steps, "
            f"{counted(len(programs), 'batched program')}",
            plan.run_dir,
        )
        if dry_run:
            click.echo(study_yaml(config, plan.resolved), nl=False)
            return
        from ctxrl.cli_common import exit_cleanly_on_sigterm

        exit_cleanly_on_sigterm()
        run_dir = run_study(config, registry, console=console)
        click.echo((run_dir / "summary.md").read_text())
        click.echo(f"results: {run_dir}")
        failed = failed_programs(run_dir)
        if failed:  # as a sweep with failed runs: reported, then a nonzero exit
            ran = isolate_arms(plan.programs, isolated_arms(run_dir))  # this run's split too
            console.print(
                f"[red]{len(failed)} of {len(ran)} program(s) failed "
                f"({', '.join(failed)}); rerun the study to retry them[/]"
            )
            sys.exit(1)


def _run_targets_study(path: Path, dry_run: bool, registry: Registry, console: Any) -> None:
    import click
    from rich.markup import escape

    from ctxrl_plugins.transfer import plasticity_targets as targets

    config = targets.load_targets_config(path)
    check_device(config.device)
    targets.check_arms_fit(config, registry)
    labels, programs = plan_programs(config, registry)
    task = config.shifting_targets
    run_dir = targets.run_dir_of(config)
    programs = isolate_arms(programs, isolated_arms(run_dir))
    announce(
        console,
        f"shifting targets: {len(labels)} arms ({', '.join(labels)}) x "
        f"{counted(len(config.seeds), 'seed')}, {task.tasks} target sets x "
        f"{task.steps_per_task} steps, {counted(len(programs), 'batched program')}",
        run_dir,
    )
    if dry_run:
        click.echo(study_yaml(config, targets.resolved_study(config, registry)), nl=False)
        return
    from ctxrl.cli_common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()

    def failed(failure: ProgramFailure) -> None:
        console.print(f"[red]{escape(failure.describe())}[/]")

    run_dir = targets.run_targets_study(config, registry, progress=console.print, on_failure=failed)
    click.echo((run_dir / "summary.md").read_text())
    click.echo(f"results: {run_dir}")
    failed_now = failed_programs(run_dir)
    if failed_now:  # as an env study: reported, then a nonzero exit
        console.print(
            f"[red]{len(failed_now)} program(s) failed ({', '.join(failed_now)}); rerun the "
            "study to retry them[/]"
        )
        sys.exit(1)


def _switch_steps(plan: StudyPlan) -> list[int]:
    """The scheduled switch steps of the first seed within the budget."""
    schedule = plan.schedules[plan.config.seeds[0]]
    return schedule.switch_steps(0, plan.config.total_steps - 1)


__all__ = [
    "BASELINE",
    "ISOLATED_FILE",
    "SHARED_PROGRAM",
    "ArmEntry",
    "ArmsConfig",
    "InterventionEntry",
    "Program",
    "ProgramFailure",
    "ProgramResult",
    "StudyConfig",
    "StudyPlan",
    "StudyRunner",
    "build_arm_interventions",
    "check_arm_networks",
    "failed_programs",
    "file_name",
    "isolate_arms",
    "isolated_arms",
    "load_results",
    "load_study_config",
    "plan_programs",
    "report_study",
    "resolve_study",
    "run_study",
]
