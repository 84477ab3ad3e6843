"""DQN transferability studies (Sabatelli and Geurts 2021, arXiv 2110.02639), for any env family.

A study takes a list of contexts (Catch v0-v3, CartPole pole lengths, ...), trains batched DQN
agents from scratch on each (these are both the sources and the scratch baselines), then, for
every (source, target) pair and transfer arm, trains target agents warm-started from the source
agents and compares their learning curves with scratch on the target:

- ``scratch``: no transfer (the baseline every other arm is measured against);
- ``fine-tune``: all layers copied, the Q head(s) re-initialised, everything trained;
- ``only-head``: hidden layers copied and frozen, a new head trained;
- ``hybrid``: hidden layers from the fine-tuned agent and the head from the only-head agent,
  then everything trained (it starts where those two arms ended: its target-env steps are the
  arm's own budget on top of theirs, which the summary states);
- ``keep-head``: every layer copied, nothing re-initialised (the zero-shot policy, trained on).

Every arm of a variant (plain, Double, Dueling DQN) is one batched program over all (pair,
seed) agents, on one step grid; each program checkpoints itself, and finished arms are stored,
so a killed study resumes. Metrics (:mod:`ctxrl.transfer_metrics`): jumpstart, asymptote, AUC,
transfer ratio, the paper's area ratio on returns normalised to [0, 1] by the env's return
bounds, time to threshold, with 95 % intervals over seeds (Student's t and Welch's for means and
their differences, a bootstrap for the ratios) and a verdict per pair.
Source training time is not counted (as in the paper): a transfer curve starts at the target's
step 0. An agent that diverged (a NaN or inf return on its curve) is left out of the metrics and
named in the summary and ``metrics.json``; the rest is reported. ``sources_from`` takes the
source agents from an earlier ``ctxrl sweep`` of batched-dqn instead (the run whose context and
seed match each source's); the scratch arm still trains on every context, as every target's
baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ctxrl import hookimpl
from ctxrl.errors import CtxrlError
from ctxrl.options import check_device
from ctxrl.registry import Registry, TransferMethodSpec
from ctxrl.summary_text import counted
from ctxrl_plugins.transfer.dqn_transferability_plan import (
    ARMS,
    STUDY,
    VARIANT_PARAMS,
    Arm,
    Pair,
    StudyConfig,
    StudyPlan,
    load_study_config,
    resolve_study,
)
from ctxrl_plugins.transfer.dqn_transferability_runner import ArmResult, StudyRunner
from ctxrl_plugins.transfer.studies import (
    StudyOnly,
    announce,
    locked_run_dir,
    study_yaml,
    unfinished,
)

__all__ = [
    "ARMS",
    "STUDY",
    "VARIANT_PARAMS",
    "Arm",
    "ArmResult",
    "Pair",
    "StudyConfig",
    "StudyPlan",
    "StudyRunner",
    "load_study_config",
    "report_study",
    "resolve_study",
    "run_study",
]


# ------------------------------------------------------------------------- entry points
def run_study(config: StudyConfig, registry: Registry, *, console: Any = None) -> Path:
    """Run (or resume) a study and write its outputs; returns its run directory."""
    check_device(config.device)
    plan = resolve_study(config, registry)

    def progress(label: str, done: int, total: int) -> None:
        if console is not None and (done == total or done % max(1, total // 10) == 0):
            console.print(f"{label}: {done}/{total}")

    from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

    runner = StudyRunner(plan, registry, progress=progress)
    with locked_run_dir(runner.run_dir, "ctxrl transfer dqn"):
        results = runner.run()
        write_outputs(plan, results, runner.run_dir)
    return runner.run_dir


def report_study(run_dir: Path) -> str:
    """Rewrite a study's exports, figures and summary from its stored arms."""
    from ctxrl.plugins import get_host
    from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

    plan_file = run_dir / "plan.yaml"
    data = yaml.safe_load(plan_file.read_text())
    config = StudyConfig.model_validate(data["config"])
    registry = get_host().registry
    plan = resolve_study(config, registry, load_sources=False)
    runner = StudyRunner(plan, registry)
    runner.run_dir = run_dir
    results: dict[str, dict[str, ArmResult]] = {}
    for variant in config.variants:
        results[variant] = {}
        for arm in config.arms:
            stored = runner.load_arm(variant, arm)
            if stored is None:
                raise CtxrlError(
                    unfinished(run_dir, f"arm {arm!r} of {variant!r}", "ctxrl transfer dqn")
                )
            results[variant][arm] = stored
    return write_outputs(plan, results, run_dir)


def _study() -> StudyOnly:
    return StudyOnly(
        "dqn-transferability is a study of its own: run `ctxrl transfer dqn STUDY.yaml`; "
        "in a sweep use transfer: {name: fine-tune}"
    )


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name=STUDY,
            factory=_study,
            batched_only=True,
            study_command="ctxrl transfer dqn STUDY.yaml",
            report=report_study,
            description="DQN transferability studies: fine-tune / only-head / hybrid / "
            "keep-head arms against scratch on every pair (`ctxrl transfer dqn`)",
        )
    )


@hookimpl
def ctxrl_register_commands(cli: Any) -> None:
    import click

    group = cli.commands.get("transfer")
    if group is None:
        return

    @group.command("dqn")  # type: ignore[untyped-decorator]
    @click.argument("study", type=click.Path(dir_okay=False, path_type=Path))
    @click.option(
        "--dry-run",
        is_flag=True,
        help="Validate the study and print it as YAML with every field's default filled in (the "
        "algorithm's hyperparameters as written); train nothing.",
    )
    def dqn(study: Path, dry_run: bool) -> None:
        """Run (or resume) the DQN transferability STUDY (a YAML file)."""
        from rich.console import Console

        from ctxrl.plugins import get_host

        console = Console(stderr=True)
        config = load_study_config(study)
        registry = get_host().registry
        check_device(config.device)
        plan = resolve_study(config, registry)
        agents = len(plan.pairs) * len(config.seeds)
        announce(
            console,
            f"{plan.env.name}: {len(plan.contexts)} contexts, {counted(len(plan.pairs), 'pair')}, "
            f"{counted(len(config.variants), 'variant')} x {counted(len(config.arms), 'arm')}, "
            f"{counted(agents, 'agent')} per transfer arm",
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
