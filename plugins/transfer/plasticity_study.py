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
the error) and the others still run; the report covers what finished and names what failed, and
a rerun retries only the failed programs. Every arm's interventions are checked against the
algorithm's networks before anything trains. Analysis, figures and the summary:
:mod:`ctxrl_plugins.transfer.plasticity_study_report`.

Run it with ``ctxrl plasticity STUDY.yaml`` or from Python::

    from ctxrl.plugins import get_host
    from ctxrl_plugins.transfer.plasticity_study import load_study_config, run_study
    run_dir = run_study(load_study_config("study.yaml"), get_host().registry)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
import yaml
from pydantic import Field, field_validator

from ctxrl import hookimpl
from ctxrl.artifacts import remove_artifact, write_text_atomic
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import Intervention, build_interventions
from ctxrl.options import SEED_LIMIT, check_device
from ctxrl.registry import CurveOptions, EnvSpec, Registry, TransferMethodSpec
from ctxrl.schedules import ContextSchedule, schedule_from_dict
from ctxrl.yaml12 import parse_yaml
from ctxrl_plugins.transfer.studies import (
    StrictModel,
    StudyOnly,
    distinct_seeds,
    open_run_dir,
    preset_params,
    read_study_file,
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

    label: str = Field(description="the arm's name in tables and figures")
    interventions: list[InterventionEntry] = Field(min_length=1)


class ArmsConfig(StrictModel):
    """What every plasticity study has: the arms compared with no intervention, the seeds, the
    dormancy threshold, the device and where the run directory goes."""

    arms: list[str | InterventionEntry | ArmEntry] = Field(
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

    def plan_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"output_dir", "device"})
        schedule = data.get("schedule")
        if isinstance(schedule, dict) and schedule.get("kind") == "sampled":
            features = list(schedule.get("features") or [])
            if features != sorted(features):
                # drawn in the order listed before ctxrl drew them in name order: another
                # study than the one an earlier ctxrl may have left in that run directory
                data["sampled_draw_order"] = "by name"
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


class StudyConfig(ArmsConfig):
    """A plasticity study on an env's context schedule, as written in YAML."""

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

    @property
    def run_dir(self) -> Path:
        return self.config.output_dir / f"plasticity-{self.env.name}-{self.config.plan_hash()}"


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
        _check_segments(config, schedule.switch_steps(0, config.total_steps - 1), seed)
        if training:
            _check_grid(config, schedule.every, trainer.steps_per_iteration())
            where = f"schedule (seed {seed})"
            schedule.check_contexts(env.check_context, config.total_steps, where)
    labels, programs = plan_programs(config, registry)
    if training:
        check_arm_networks(config, registry, trainer, env)
    return StudyPlan(config, env, params, schedules, labels, programs)


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


def _check_segments(config: StudyConfig, switches: list[int], seed: int) -> None:
    """The study compares the curve's segments between context switches: refuse a schedule
    that switches nowhere inside ``total_steps``, or a ``curve_every`` that leaves fewer than
    two segments with two curve points (the report skips shorter ones)."""
    if not switches:
        raise ConfigError(
            f"schedule: no context switch within total_steps {config.total_steps} (seed "
            f"{seed}); a plasticity study compares the segments between switches: make "
            "schedule.every smaller or total_steps larger"
        )
    lengths = sorted(b - a for a, b in itertools.pairwise([0, *switches, config.total_steps]))
    if config.curve_every >= lengths[-2]:
        raise ConfigError(
            f"curve_every: {config.curve_every} env steps leaves fewer than two segments "
            f"between switches (seed {seed}; the longest {lengths[-1]} and {lengths[-2]} steps) "
            f"with two curve points each; make it smaller than {lengths[-2]}"
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


# ------------------------------------------------------------------------------ results
@dataclass
class ProgramResult:
    """What one finished program recorded, per agent (``A`` agents, in ``agents`` order).

    Attributes:
        agents: (arm label, seed) per agent.
        curve_steps: ``(T,)`` env steps per agent of the learning-curve points.
        curves: ``(A, T)`` mean evaluation return in the agent's current context.
        plasticity_steps: ``(P,)`` env steps of the plasticity records.
        plasticity: ``{metric}.{layer}`` -> ``(A, P)``.
        diagnostic_steps: ``(D,)``; diagnostics: name -> ``(A, D)``.
        switches: env steps at which contexts switched (every agent of a study switches at
            the same steps: one schedule per seed, the same grid for every arm).
    """

    agents: list[tuple[str, int]]
    curve_steps: np.ndarray
    curves: np.ndarray
    plasticity_steps: np.ndarray
    plasticity: dict[str, np.ndarray]
    diagnostic_steps: np.ndarray
    diagnostics: dict[str, np.ndarray]
    switches: list[int]


@dataclass(frozen=True)
class ProgramFailure:
    """Why a program did not finish: every arm it trains is lost with it.

    Attributes:
        program: the program's name.
        arms: the arm labels it trains (``none`` among them for the shared program).
        culprit: ``(arm label, intervention name)`` whose code raised, when the traceback runs
            through one of the program's interventions; None otherwise.
        error: the error in one line (its type and message).
        details: the traceback's last lines.
    """

    program: str
    arms: list[str]
    culprit: tuple[str, str] | None
    error: str
    details: str = ""

    @classmethod
    def of(
        cls,
        program: Program,
        exc: BaseException,
        interventions: Sequence[tuple[Intervention, list[int]]] = (),
    ) -> ProgramFailure:
        """The failure of ``program`` by ``exc``, blamed on the one of ``interventions`` (with
        its agents' rows) whose own code raised: the trainer runs every intervention hook so
        that such an error arrives as a :class:`~ctxrl.errors.PluginError` carrying the
        intervention (:func:`~ctxrl_plugins.training.run.intervention_hook`), in ``exc`` or
        the errors it came from. Anything else (a full disk while checkpointing, an
        algorithm's bug) blames no intervention."""
        culprit = None
        seen: list[BaseException] = []
        error: BaseException | None = exc
        while error is not None and error not in seen:
            seen.append(error)
            raised_in = getattr(error, "intervention", None)
            for intervention, rows in interventions:
                if rows and raised_in is intervention:
                    name = intervention.name or type(intervention).__name__
                    culprit = (program.agents[rows[0]][0], name)
            error = error.__cause__ or error.__context__
        return cls(
            program.name,
            list(program.arms),
            culprit,
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            "".join(traceback.format_exception(exc))[-4000:],
        )

    def describe(self) -> str:
        """One line: the program, its arms, the intervention that raised and the error."""
        arms = ", ".join(repr(arm) for arm in self.arms)
        blamed = (
            ""
            if self.culprit is None
            else f" in intervention {self.culprit[1]!r} of arm {self.culprit[0]!r}"
        )
        return f"program {self.program!r} (arms {arms}) failed{blamed}: {self.error}"

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "arms": list(self.arms),
            "culprit": None if self.culprit is None else list(self.culprit),
            "error": self.error,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProgramFailure:
        culprit = data.get("culprit")
        return cls(
            str(data["program"]),
            [str(arm) for arm in data["arms"]],
            None if not culprit else (str(culprit[0]), str(culprit[1])),
            str(data["error"]),
            str(data.get("details", "")),
        )


class _ProgramFailed(CtxrlError):
    """Raised by :meth:`StudyRunner._train` with the failure it blames."""

    def __init__(self, failure: ProgramFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


class StudyRunner:
    """Runs (or resumes) a study in its run directory, one batched program at a time, each
    stored as it finishes. A program that raises is recorded as failed (:attr:`failures`,
    and ``programs/<name>.failed.json`` for the report) and the next one runs; a later run
    retries it (from its checkpoint when it saved one)."""

    def __init__(
        self,
        plan: StudyPlan,
        registry: Registry,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.plan, self.registry, self.progress = plan, registry, progress
        self.run_dir = run_dir or plan.run_dir
        self.failures: dict[str, ProgramFailure] = {}
        """the programs that failed in the last :meth:`run`, by name"""

    def prepare(self) -> None:
        """Create (or reopen) the run directory; refuse one that holds another study."""
        config = self.plan.config
        open_run_dir(self.run_dir, STUDY, config.plan_hash(), config.model_dump(mode="json"))

    def _file(self, program: Program) -> Path:
        return self.run_dir / "programs" / program.name

    def _failure_file(self, program: Program) -> Path:
        return self.run_dir / "programs" / f"{program.name}.failed.json"

    def load_failure(self, program: Program) -> ProgramFailure | None:
        """The recorded failure of a program that has not finished since, or None."""
        path = self._failure_file(program)
        if not path.is_file() or self._file(program).with_suffix(".safetensors").is_file():
            return None
        return ProgramFailure.from_json(json.loads(path.read_text()))

    def load(self, program: Program) -> ProgramResult | None:
        """A stored program, or None when it has not finished."""
        from ctxrl.artifacts import load_artifact

        path = self._file(program)
        if not path.with_suffix(".safetensors").is_file():
            return None
        tensors, meta = load_artifact(path)

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {
                k.removeprefix(prefix): v.double().numpy()
                for k, v in tensors.items()
                if k.startswith(prefix)
            }

        return ProgramResult(
            [(str(label), int(seed)) for label, seed in meta["agents"]],
            tensors["curve_steps"].numpy(),
            tensors["curves"].double().numpy(),
            tensors["plasticity_steps"].numpy(),
            group("plasticity."),
            tensors["diagnostic_steps"].numpy(),
            group("diagnostics."),
            [int(s) for s in meta["switches"]],
        )

    def _store(self, program: Program, result: ProgramResult) -> None:
        import torch

        from ctxrl.artifacts import save_artifact

        tensors = {
            "curve_steps": torch.as_tensor(result.curve_steps, dtype=torch.int64),
            "curves": torch.as_tensor(result.curves, dtype=torch.float64),
            "plasticity_steps": torch.as_tensor(result.plasticity_steps, dtype=torch.int64),
            "diagnostic_steps": torch.as_tensor(result.diagnostic_steps, dtype=torch.int64),
        }
        for prefix, values in (
            ("plasticity.", result.plasticity),
            ("diagnostics.", result.diagnostics),
        ):
            for name, value in values.items():
                tensors[prefix + name] = torch.as_tensor(np.ascontiguousarray(value))
        path = self._file(program)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_artifact(
            path,
            tensors,
            {"agents": [list(a) for a in result.agents], "switches": result.switches},
        )

    def run(
        self, *, on_failure: Callable[[ProgramFailure], None] | None = None
    ) -> dict[str, ProgramResult]:
        """Every program, training what is not stored yet (a failed one again); returns those
        that finished by name. One that raises an :class:`Exception` is recorded in
        :attr:`failures` and its ``.failed.json`` (``on_failure`` is told) and the others
        still run; an interruption (``KeyboardInterrupt``) stops the study, to resume."""
        self.prepare()
        results: dict[str, ProgramResult] = {}
        self.failures = {}
        for program in self.plan.programs:
            stored = self.load(program)
            if stored is None:
                try:
                    stored = self._train(program)
                    self._store(program, stored)
                except Exception as exc:
                    failure = (
                        exc.failure
                        if isinstance(exc, _ProgramFailed)
                        else ProgramFailure.of(program, exc)
                    )
                    self.failures[program.name] = failure
                    path = self._failure_file(program)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, json.dumps(failure.to_json(), indent=1))
                    if on_failure is not None:
                        on_failure(failure)
                    continue
                # only once its result is stored: a kill before that resumes the program from
                # its final state (it retrained from the start)
                remove_artifact(self.run_dir / "checkpoints" / program.name)
            self._failure_file(program).unlink(missing_ok=True)
            results[program.name] = stored
        return results

    def _train(self, program: Program) -> ProgramResult:
        from ctxrl_plugins.training.plasticity import PlasticityOptions

        plan, config = self.plan, self.plan.config
        algorithm = cast(
            Any,
            self.registry.algorithm(config.algorithm).factory(plan.params, device=config.device),
        )
        seeds = [seed for _, seed in program.agents]
        schedules = [plan.schedules[seed] for seed in seeds]
        interventions = build_arm_interventions(program, self.registry)
        checkpoint = self.run_dir / "checkpoints" / program.name
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        progress = self.progress
        try:
            policies = algorithm.train_many(
                plan.env,
                [s.context_at(0).as_dict() for s in schedules],
                seeds,
                total_steps=config.total_steps,
                checkpoint=checkpoint,
                progress=None
                if progress is None
                else lambda done, total: progress(program.name, done, total),
                interventions=interventions,
                curves=CurveOptions(config.curve_every, config.curve_episodes),
                schedules=schedules,
                plasticity=PlasticityOptions(
                    config.plasticity_every or config.curve_every, config.dormant_tau
                ),
            )
        except Exception as exc:  # blamed on the intervention whose code raised, if one did
            raise _ProgramFailed(ProgramFailure.of(program, exc, interventions)) from exc
        log = policies.log
        return ProgramResult(
            agents=list(program.agents),
            curve_steps=np.asarray(log.curve_steps, dtype=np.int64),
            curves=log.curve().T.astype(np.float64),
            plasticity_steps=np.asarray(log.plasticity_steps, dtype=np.int64),
            plasticity={k: np.stack(v).T for k, v in log.plasticity.items()},
            diagnostic_steps=np.asarray(log.diagnostic_steps, dtype=np.int64),
            diagnostics={k: np.stack(v).T for k, v in log.diagnostics.items()},
            switches=sorted({int(step) for step, _ in log.switches}),
        )


# ------------------------------------------------------------------------- entry points
def run_study(config: StudyConfig, registry: Registry, *, console: Any = None) -> Path:
    """Run (or resume) a study and write its outputs; returns its run directory. A program
    that fails is said on ``console``, recorded (:func:`failed_programs` lists it) and named
    in the summary; the others still run and are reported."""
    from rich.markup import escape

    from ctxrl_plugins.transfer.plasticity_study_report import write_outputs

    check_device(config.device)
    plan = resolve_study(config, registry)

    def progress(label: str, done: int, total: int) -> None:
        if console is not None and (done == total or done % max(1, total // 10) == 0):
            console.print(f"{label}: {done}/{total}")

    def failed(failure: ProgramFailure) -> None:
        if console is not None:
            console.print(f"[red]{escape(failure.describe())}[/]")

    runner = StudyRunner(plan, registry, progress=progress)
    results = runner.run(on_failure=failed)
    write_outputs(plan, results, runner.run_dir, failures=list(runner.failures.values()))
    return runner.run_dir


def failed_programs(run_dir: Path) -> list[str]:
    """The programs of the study in ``run_dir`` whose last training failed, by name."""
    folder = run_dir / "programs"
    names = [path.name.removesuffix(".failed.json") for path in folder.glob("*.failed.json")]
    return sorted(name for name in names if not (folder / f"{name}.safetensors").exists())


def load_results(
    run_dir: Path, registry: Registry
) -> tuple[StudyPlan, dict[str, ProgramResult], list[ProgramFailure]]:
    """A study's plan, its stored programs and the failures of those that failed (an error
    names a program that neither finished nor failed: a study stopped halfway)."""
    plan_file = run_dir / "plan.yaml"
    data = yaml.safe_load(plan_file.read_text()) or {}
    config = StudyConfig.model_validate(data["config"])
    plan = resolve_study(config, registry, training=False)
    runner = StudyRunner(plan, registry, run_dir=run_dir)
    results: dict[str, ProgramResult] = {}
    failures: list[ProgramFailure] = []
    for program in plan.programs:
        stored = runner.load(program)
        failure = runner.load_failure(program) if stored is None else None
        if failure is not None:
            failures.append(failure)
        elif stored is None:
            raise CtxrlError(
                f"{run_dir}: program {program.name!r} has not finished; rerun `ctxrl "
                "plasticity` on the study file to complete it"
            )
        else:
            results[program.name] = stored
    return plan, results, failures


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
    @click.option("--dry-run", is_flag=True, help="Validate the study; train nothing.")
    def plasticity(study: Path, dry_run: bool) -> None:
        """Run (or resume) the plasticity STUDY (a YAML file): interventions x seeds on a
        context schedule, or on shifting regression targets (a `shifting_targets` block),
        against no intervention."""
        from rich.console import Console

        from ctxrl.plugins import get_host
        from ctxrl_plugins.transfer import plasticity_targets as targets

        console = Console(stderr=True)
        registry = get_host().registry
        if targets.is_targets_study(_mapping(study)):
            _run_targets_study(study, dry_run, registry, console)
            return
        config = load_study_config(study)
        check_device(config.device)
        plan = resolve_study(config, registry)
        switches = len(_switch_steps(plan))
        console.print(
            f"{plan.env.name} ({config.algorithm}): {len(plan.labels)} arms "
            f"({', '.join(plan.labels)}) x {len(config.seeds)} seeds, {switches} switches in "
            f"{config.total_steps} steps, {len(plan.programs)} batched program(s) -> "
            f"{plan.run_dir}"
        )
        if dry_run:
            return
        run_dir = run_study(config, registry, console=console)
        click.echo((run_dir / "summary.md").read_text())
        click.echo(f"results: {run_dir}")
        failed = failed_programs(run_dir)
        if failed:  # as a sweep with failed runs: reported, then a nonzero exit
            console.print(
                f"[red]{len(failed)} of {len(plan.programs)} program(s) failed "
                f"({', '.join(failed)}); rerun the study to retry them[/]"
            )
            sys.exit(1)


def _mapping(path: Path) -> dict[str, Any]:
    """A study file's top-level mapping, or an empty one (the loaders report what is wrong)."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_targets_study(path: Path, dry_run: bool, registry: Registry, console: Any) -> None:
    import click

    from ctxrl_plugins.transfer import plasticity_targets as targets

    config = targets.load_targets_config(path)
    check_device(config.device)
    labels, programs = plan_programs(config, registry)
    task = config.shifting_targets
    run_dir = targets.run_dir_of(config)
    console.print(
        f"shifting targets: {len(labels)} arms ({', '.join(labels)}) x {len(config.seeds)} "
        f"seeds, {task.tasks} target sets x {task.steps_per_task} steps, {len(programs)} "
        f"batched program(s) -> {run_dir}"
    )
    if dry_run:
        return
    run_dir = targets.run_targets_study(config, registry, progress=console.print)
    click.echo((run_dir / "summary.md").read_text())
    click.echo(f"results: {run_dir}")


def _switch_steps(plan: StudyPlan) -> list[int]:
    """The scheduled switch steps of the first seed within the budget."""
    schedule = plan.schedules[plan.config.seeds[0]]
    return schedule.switch_steps(0, plan.config.total_steps - 1)


__all__ = [
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
    "load_results",
    "load_study_config",
    "plan_programs",
    "report_study",
    "resolve_study",
    "run_study",
]
