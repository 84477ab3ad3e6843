"""A plasticity study's configuration and plan: the study file's fields, the arms and the
batched programs that train them.

:class:`StudyConfig` is what ``ctxrl plasticity STUDY.yaml`` reads (every field checked, errors
naming the field and the file); :func:`resolve_study` checks it against the registry (the env
and its twin, the algorithm's hyperparameters and budget, the schedule, every arm's
interventions and whether the networks can take them) before anything trains, and
:func:`plan_programs` groups the (arm, seed) agents into batched programs: one shared by the
baseline and every arm that can apply to part of a batch, one per arm that changes what a batch
shares. :func:`isolate_arms` moves an arm that raised out of the program it shares. Running the
programs: :mod:`ctxrl_plugins.transfer.plasticity_runner`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import Discriminator, Field, Tag, field_validator

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import Intervention, build_interventions
from ctxrl.options import SEED_LIMIT
from ctxrl.registry import EnvSpec, Registry
from ctxrl.resolution import resolved_hyperparameters, resolved_options
from ctxrl.schedules import ContextSchedule, schedule_from_dict
from ctxrl_plugins.transfer.studies import (
    StrictModel,
    StudyModel,
    distinct_seeds,
    preset_params,
    read_study_file,
    study_run_dir,
)

STUDY = "plasticity"
BASELINE = "none"
SHARED_PROGRAM = "shared"


# ------------------------------------------------------------------------------ config
class InterventionEntry(StrictModel):
    name: str = Field(description="intervention registry name")
    options: dict[str, Any] = Field(default_factory=dict, description="its options")


class ArmEntry(StrictModel):
    """One arm: a label and the interventions it composes (in order)."""

    label: str = Field(min_length=1, description="the arm's name in tables and figures")
    interventions: list[InterventionEntry] = Field(min_length=1)

    @field_validator("interventions", mode="before")
    @classmethod
    def _names_alone(cls, value: Any) -> Any:
        """A bare name in the list is that intervention with its defaults, as an arm of one
        name is (``interventions: [redo, l2]``)."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value


def _arm_form(value: Any) -> str:
    """Which of the three forms an arm is written in (so that an error names the fields of
    that form alone): a name, ``{name, options}`` or ``{label, interventions}``."""
    if isinstance(value, ArmEntry) or (
        isinstance(value, dict) and ("label" in value or "interventions" in value)
    ):
        return "ArmEntry"
    if isinstance(value, InterventionEntry | dict):
        return "InterventionEntry"
    return "str"


Arm = Annotated[
    Annotated[str, Tag("str")]
    | Annotated[InterventionEntry, Tag("InterventionEntry")]
    | Annotated[ArmEntry, Tag("ArmEntry")],
    Discriminator(_arm_form),
]
"""An arm as a study file writes it."""


class ArmsConfig(StudyModel):
    """What every plasticity study has: the arms compared with no intervention, the seeds, the
    dormancy threshold, the device and where the run directory goes."""

    arms: list[Arm] = Field(
        description="interventions to compare with no intervention: a name (defaults), "
        "{name, options}, or {label, interventions: [...]} to compose several"
    )
    seeds: list[Annotated[int, Field(ge=0, lt=SEED_LIMIT, strict=True)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], min_length=1
    )
    dormant_tau: float = Field(default=0.025, ge=0.0, description="ReDo's dormancy threshold")
    device: str = Field(default="cpu")
    output_dir: Path = Field(default=Path("runs"))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        distinct_seeds(value)
        if any(s < 0 for s in value):
            raise ValueError(f"seeds {value}: seeds are integers >= 0")
        return value

    def arm_entries(self) -> list[ArmEntry]:
        """The arms in order, each with its label (the baseline ``none`` not included)."""
        out: list[ArmEntry] = []
        for arm in self.arms:
            if isinstance(arm, str):
                out.append(ArmEntry(label=arm, interventions=[InterventionEntry(name=arm)]))
            elif isinstance(arm, InterventionEntry):
                out.append(ArmEntry(label=arm.name, interventions=[arm]))
            else:
                out.append(arm)
        return out

    def plan_data(self, *, with_analysis: bool = False) -> dict[str, Any]:
        data = super().plan_data(with_analysis=with_analysis)
        schedule = data.get("schedule")
        if isinstance(schedule, dict) and schedule.get("kind") == "sampled":
            features = list(schedule.get("features") or [])
            if features != sorted(features):
                # drawn in the order listed before ctxrl drew them in name order: another
                # study than the one an earlier ctxrl may have left in that run directory
                data["sampled_draw_order"] = "by name"
        return data


class StudyConfig(ArmsConfig):
    """A plasticity study on an env's context schedule, as written in YAML."""

    analysis_fields: ClassVar[Mapping[str, Any]] = {"threshold": True}  # read by the report only

    env: str = Field(description="environment registry name (it needs a torch twin)")
    algorithm: Literal["batched-ppo", "batched-dqn"] = Field(default="batched-ppo")
    params: dict[str, Any] = Field(default_factory=dict, description="hyperparameters")
    preset: str | None = Field(default=None, description="the algorithm's preset")
    schedule: dict[str, Any] = Field(
        description="the context schedule (ctxrl.schedules JSON form, e.g. {kind: sequence, "
        "every: 20000, contexts: [{length: 0.5}, {length: 2.0}]}); a 'sampled' schedule is "
        "drawn per seed (its seed + the agent's seed)"
    )
    total_steps: int = Field(gt=0, description="env steps per agent")
    curve_every: int = Field(gt=0, description="env steps between learning-curve points")
    curve_episodes: int = Field(default=5, ge=1, description="episodes per curve point")
    plasticity_every: int | None = Field(
        default=None,
        gt=0,
        description="env steps between plasticity records (default: "
        "curve_every); also recorded just before every switch",
    )
    threshold: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="normalised return in [0, 1] for time to threshold after each switch",
    )


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; errors name the field and the file."""
    return read_study_file(path, StudyConfig)


# -------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Program:
    """One batched program: its agents as (arm label, seed) and the arms' interventions."""

    name: str
    agents: list[tuple[str, int]]
    arms: dict[str, list[InterventionEntry]]


@dataclass
class StudyPlan:
    """A validated study: env, algorithm parameters, one schedule per seed, the programs."""

    config: StudyConfig
    env: EnvSpec
    params: dict[str, Any]
    schedules: dict[int, ContextSchedule]
    labels: list[str]
    programs: list[Program] = field(default_factory=list)
    resolved: dict[str, Any] | None = None
    """what the study file resolves to with the installed plugins: the env's default context
    (what the schedule's contexts leave out), the hyperparameters with their defaults and
    every arm's intervention options with theirs (:func:`resolved_arms`),
    recorded in plan.yaml so that a resume after a default changed is refused
    (:func:`~ctxrl_plugins.transfer.studies.open_run_dir`)"""

    @property
    def run_dir(self) -> Path:
        return study_run_dir(self.config, self.config.output_dir, f"plasticity-{self.env.name}-")


def _seed_schedule(config: StudyConfig, env: EnvSpec, seed: int) -> ContextSchedule:
    data = dict(config.schedule)
    if data.get("kind") == "sampled":
        data["seed"] = int(data.get("seed", 0)) + seed
    return schedule_from_dict(data, env.context_space, where="schedule")


def resolve_study(config: StudyConfig, registry: Registry, *, training: bool = True) -> StudyPlan:
    """Validate everything before any training: the env and its twin, the algorithm and its
    hyperparameters, the schedule against the env's context space, every arm's interventions
    (names and options) and whether the algorithm can host them. ``training=False`` (a
    finished study's report) leaves out what only a new training needs: the learning budget,
    the schedule's contexts against the env's constraints and the iteration grid (a study
    an earlier ctxrl trained is reported as it was)."""
    try:
        env = registry.env(config.env)
    except Exception as exc:
        raise ConfigError(f"env: {exc}") from None
    if env.make_batched is None:
        raise ConfigError(f"env: {config.env!r} has no torch twin; the batched trainers need one")
    algorithm = registry.algorithm(config.algorithm)
    params = preset_params(algorithm, config.preset, config.params)
    try:
        trainer = cast(Any, algorithm.factory(params, device=config.device))
        trainer.check_env(env)
        if training:
            trainer.check_budget(config.total_steps)
    except CtxrlError as exc:
        message = str(exc).removeprefix("algorithm.params: ").replace("algorithm.params.", "")
        raise ConfigError(f"params: {message}") from None
    schedules = {seed: _seed_schedule(config, env, seed) for seed in config.seeds}
    for seed, schedule in schedules.items():
        _check_segments(config, schedule, seed)
        if training:
            _check_grid(config, schedule.every, trainer.steps_per_iteration())
            # on the grid: short segments are real
            _check_segment_points(config, schedule, seed, trainer.trained_steps(config.total_steps))
            where = f"schedule (seed {seed})"
            schedule.check_contexts(env.check_context, config.total_steps, where)
    labels, programs = plan_programs(config, registry)
    if training:
        check_arm_networks(config, registry, trainer, env)
    resolved = {  # the schedule's contexts take the env's defaults for what they leave out
        "context_defaults": env.context_space.default().as_dict(),
        "hyperparameters": resolved_hyperparameters(trainer, params),
        "arms": resolved_arms(config, registry),
    }
    return StudyPlan(config, env, params, schedules, labels, programs, resolved)


def resolved_arms(config: ArmsConfig, registry: Registry) -> dict[str, dict[str, Any]]:
    """Every arm's interventions with their options, defaults included, by arm label and then
    position: ``{label: {"0": {name: options}, ...}}`` (a study's record of what it resolves
    to; an option one version adds or drops is then compared alone, not as the whole arm)."""
    return {
        arm.label: {
            str(index): resolved_options(registry, "intervention", entry.name, entry.options)
            for index, entry in enumerate(arm.interventions)
        }
        for arm in config.arm_entries()
    }


def check_arm_networks(config: ArmsConfig, registry: Registry, trainer: Any, env: EnvSpec) -> None:
    """Every arm's interventions against the networks ``trainer`` builds on ``env``
    (:meth:`~ctxrl_plugins.training.trainer.BatchedTrainer.check_interventions`, as a sweep
    checks its own): an option the networks cannot take (``plasticity-injection``'s ``layers``
    beyond the network's depth) is a :class:`ConfigError` naming the arm and the intervention
    before any program trains, not a failure of its program halfway through the study."""
    for index, arm in enumerate(config.arm_entries()):
        interventions = _build(arm.interventions, registry, f"arms[{index}]")
        try:
            trainer.check_interventions(env, interventions)
        except CtxrlError as exc:
            raise ConfigError(f"arms[{index}].{exc} (arm {arm.label!r})") from None


def _check_grid(config: StudyConfig, every: int, per_iteration: int) -> None:
    """The trainer switches contexts and evaluates the curve at iteration ends, and the report
    reads each segment's jumpstart at the curve point of its switch: refuse a
    ``schedule.every`` or ``curve_every`` that is not a whole number of iterations, or a
    ``curve_every`` that does not divide ``schedule.every`` (the switch's point would be taken
    an iteration or more after it, having trained in the new context)."""
    algorithm = config.algorithm
    for name, steps in (("schedule.every", every), ("curve_every", config.curve_every)):
        if steps % per_iteration:
            raise ConfigError(
                f"{name}: {steps} env steps is not a whole number of {algorithm}'s iterations "
                f"({per_iteration} env steps per agent, where it switches contexts and "
                f"evaluates the curve): make it a multiple of {per_iteration}"
            )
    if every % config.curve_every:
        raise ConfigError(
            f"curve_every: {config.curve_every} env steps does not divide schedule.every "
            f"({every}): no curve point would fall on the switches, where the report reads "
            "each segment's jumpstart"
        )


def _check_segments(config: StudyConfig, schedule: ContextSchedule, seed: int) -> None:
    """The study compares the curve's segments between context switches: refuse a schedule
    that switches nowhere inside ``total_steps`` (saying whether its segments end there but
    keep one context), or a ``curve_every`` that leaves fewer than two segments with two
    curve points (the report skips shorter ones)."""
    switches = schedule.switch_steps(0, config.total_steps - 1)
    if not switches and schedule.every < config.total_steps:
        written = config.schedule.get("contexts", schedule.context_at(0).as_dict())
        raise ConfigError(
            f"schedule: every segment within total_steps {config.total_steps} has one and the "
            f"same context ({written}; seed {seed}); a plasticity study compares the segments "
            "between switches: give the schedule at least two different contexts"
        )
    if not switches:
        raise ConfigError(
            f"schedule: no context switch within total_steps {config.total_steps} (seed "
            f"{seed}); a plasticity study compares the segments between switches: make "
            "schedule.every smaller or total_steps larger"
        )
    # the last segment always holds two points (its switch, a curve point: curve_every divides
    # schedule.every, and the trainer's final one); an earlier one when longer than curve_every
    longest = max(b - a for a, b in itertools.pairwise([0, *switches]))
    if config.curve_every >= longest:
        raise ConfigError(
            f"curve_every: {config.curve_every} env steps leaves fewer than two segments "
            f"between switches (seed {seed}; the longest before the last switch {longest} "
            f"steps) with two curve points each; make it smaller than {longest}"
        )


def _check_segment_points(
    config: StudyConfig, schedule: ContextSchedule, seed: int, trained: int
) -> None:
    """Every switch's segment must hold two curve points: the report skips shorter ones, and
    their switches dropped out of its measures without a word (a sequence repeating a
    context, whose merged segments passed the two-segment check above). ``trained``: the env
    steps the trainer takes for ``total_steps`` (whole iterations), where it takes its last
    curve point."""
    switches = schedule.switch_steps(0, config.total_steps - 1)
    bounds = [*switches, max(trained, switches[-1])]
    for start, end in itertools.pairwise(bounds):
        # a segment's points: its switch (a curve point: curve_every divides schedule.every)
        # and another before the next switch or, for the last segment, the trainer's final one
        last = end == bounds[-1]
        if end - start > config.curve_every or (last and end > start):
            continue
        fix = (
            f"end total_steps past the last switch (it trains {trained} env steps: whole "
            "iterations)"
            if last
            else f"make curve_every smaller than {end - start} or the schedule's segments longer"
        )
        raise ConfigError(
            f"curve_every: the segment after the switch at step {start} (seed {seed}) ends at "
            f"{end}, {end - start} env steps, and holds one curve point at curve_every "
            f"{config.curve_every}: the report would leave that switch out of the jumpstart, "
            f"post-switch AUC and loss of plasticity; {fix}"
        )


def file_name(label: str) -> str:
    """``label`` as a file name: itself when it holds only letters, digits, ``-`` and ``_``;
    otherwise those characters of it (the rest as ``_``) and a hash of the whole label, so that
    labels differing in a dot (``ns-adam-0.9``, ``ns-adam-0.5``: a dot starts a file's suffix)
    or a slash get files of their own."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", label):
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', label)}-{digest}"


def plan_programs(config: ArmsConfig, registry: Registry) -> tuple[list[str], list[Program]]:
    """The arm labels (``none`` first) and the batched programs that train them: one shared
    program for ``none`` and every arm that can apply to part of a batch, one program per arm
    that changes what a batch shares (the network's shape, the optimizer). Every arm's
    interventions are built here, so an unknown name or option fails before any training."""
    arms = config.arm_entries()
    labels = [BASELINE, *(arm.label for arm in arms)]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(
            f"arms: the labels {duplicates} repeat (or name the baseline {BASELINE!r}); give "
            "each arm its own label"
        )
    shared: dict[str, list[InterventionEntry]] = {BASELINE: []}
    programs: list[Program] = []
    for index, arm in enumerate(arms):
        interventions = _build(arm.interventions, registry, f"arms[{index}]")
        if any(i.changes_network or i.whole_batch for i in interventions):
            programs.append(
                Program(
                    f"arm-{file_name(arm.label)}",
                    [(arm.label, seed) for seed in config.seeds],
                    {arm.label: arm.interventions},
                )
            )
        else:
            shared[arm.label] = arm.interventions
    agents = [(label, seed) for label in shared for seed in config.seeds]
    programs.insert(0, Program(SHARED_PROGRAM, agents, shared))
    return labels, programs


def build_arm_interventions(
    program: Program, registry: Registry
) -> list[tuple[Intervention, list[int]]]:
    """Fresh interventions of every arm of ``program`` with the rows of its agents."""
    out: list[tuple[Intervention, list[int]]] = []
    for label, entries in program.arms.items():
        rows = [i for i, (arm, _) in enumerate(program.agents) if arm == label]
        for intervention in _build(entries, registry, f"arm {label!r}"):
            out.append((intervention, rows))
    return out


def _build(
    entries: Sequence[InterventionEntry], registry: Registry, where: str
) -> list[Intervention]:
    try:
        return build_interventions([e.model_dump() for e in entries], registry)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{str(exc).removeprefix('algorithm.')}") from None


def isolate_arms(programs: Sequence[Program], labels: Sequence[str]) -> list[Program]:
    """``programs`` with the arms ``labels`` taken out of the programs they share, each into a
    program of its own (``arm-<label>``, the name an arm that changes the network gets): what
    a study runs after an arm's intervention raised in the shared program, so that the
    baseline and the arms beside it still train (an agent's numbers do not depend on its
    batch). A program that lost arms is renamed ``<name>-without-<labels>``: its checkpoint
    and results are not those of the whole batch."""
    out: list[Program] = []
    for program in programs:
        moved = [label for label in program.arms if label in labels]
        if not moved or len(moved) == len(program.arms):
            out.append(program)
            continue
        kept = {label: entries for label, entries in program.arms.items() if label not in moved}
        suffix = "-".join(file_name(label) for label in moved)
        if len(suffix) > 64:  # a file name's length is limited
            suffix = hashlib.sha256("\n".join(moved).encode()).hexdigest()[:12]
        out.append(
            Program(
                f"{program.name}-without-{suffix}",
                [agent for agent in program.agents if agent[0] in kept],
                kept,
            )
        )
        out += [
            Program(
                f"arm-{file_name(label)}",
                [agent for agent in program.agents if agent[0] == label],
                {label: program.arms[label]},
            )
            for label in moved
        ]
    return out
