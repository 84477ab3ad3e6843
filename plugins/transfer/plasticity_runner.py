"""Running a plasticity study's programs and reading back what they recorded.

:class:`StudyRunner` trains the programs of a :class:`~ctxrl_plugins.transfer.plasticity_plan.
StudyPlan` one at a time in the study's run directory, each checkpointed and stored as it
finishes (``programs/<name>.safetensors``: :class:`ProgramResult`, per-agent learning curves,
plasticity metrics and diagnostics), so a killed study resumes. A program that raises is
recorded as a :class:`ProgramFailure` (``programs/<name>.failed.json``) and the others still
run; an arm whose intervention raised in a program it shares is moved into a program of its own
(``programs/isolated.json``) and the others train again without it. :func:`run_study` runs a
study and writes its report; :func:`load_results` reads a finished one back.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import yaml

from ctxrl.artifacts import remove_artifact, write_text_atomic
from ctxrl.errors import CtxrlError
from ctxrl.interventions import Intervention
from ctxrl.options import check_device
from ctxrl.registry import CurveOptions, Registry
from ctxrl_plugins.transfer.plasticity_plan import (
    STUDY,
    Program,
    StudyConfig,
    StudyPlan,
    build_arm_interventions,
    file_name,
    isolate_arms,
    resolve_study,
)
from ctxrl_plugins.transfer.studies import (
    DamagedResult,
    load_result,
    locked_run_dir,
    open_run_dir,
    set_aside,
    unfinished,
)

ResultT = TypeVar("ResultT")
"""What a program's training stores: a study's own result type."""


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
        moved_from: the program the arm raised in, when it was moved out of it into a program
            of its own (:func:`isolate_arms`) and the others trained again without it.
    """

    program: str
    arms: list[str]
    culprit: tuple[str, str] | None
    error: str
    details: str = ""
    moved_from: str | None = None

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
        moved = (
            ""
            if self.moved_from is None
            else f" (raised in program {self.moved_from!r}, which trained again without it)"
        )
        return f"program {self.program!r} (arms {arms}) failed{blamed}: {self.error}{moved}"

    def alone(self, arm: str) -> ProgramFailure:
        """This failure as that of ``arm``'s own program, the arm moved out of this one."""
        return replace(
            self,
            program=f"arm-{file_name(arm)}",
            arms=[arm],
            moved_from=self.moved_from or self.program,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "arms": list(self.arms),
            "culprit": None if self.culprit is None else list(self.culprit),
            "error": self.error,
            "details": self.details,
            "moved_from": self.moved_from,
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
            None if data.get("moved_from") is None else str(data["moved_from"]),
        )


class ProgramFailed(CtxrlError):
    """Raised by a program's training with the failure it blames: ``ProgramFailure.of`` with
    the program's interventions, so that the one whose code raised is named."""

    def __init__(self, failure: ProgramFailure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


ISOLATED_FILE = "isolated.json"
"""In ``programs/``: the arms moved out of the shared program after their intervention raised
there (:func:`isolate_arms`), so that a rerun and the report find the programs as they ran."""


def isolated_arms(run_dir: Path) -> list[str]:
    """The arms a study in ``run_dir`` moved into programs of their own after they raised."""
    path = run_dir / "programs" / ISOLATED_FILE
    return [str(label) for label in json.loads(path.read_text())] if path.is_file() else []


def failure_file(run_dir: Path, program: str) -> Path:
    return run_dir / "programs" / f"{program}.failed.json"


def load_failure(run_dir: Path, program: Program) -> ProgramFailure | None:
    """The recorded failure of a program that has not finished since, or None."""
    path = failure_file(run_dir, program.name)
    if not path.is_file() or (run_dir / "programs" / f"{program.name}.safetensors").is_file():
        return None
    return ProgramFailure.from_json(json.loads(path.read_text()))


def run_programs(
    planned: Sequence[Program],
    run_dir: Path,
    *,
    load: Callable[[Program], ResultT | None],
    train: Callable[[Program], ResultT],
    store: Callable[[Program, ResultT], None],
    on_failure: Callable[[ProgramFailure], None] | None = None,
) -> tuple[list[Program], dict[str, ResultT], dict[str, ProgramFailure]]:
    """Every program of a study in ``run_dir``, training (``train``, then ``store``) what
    ``load`` does not find stored, a failed one again. One that raises an :class:`Exception`
    is recorded (``programs/<name>.failed.json``; ``on_failure`` is told) and the others still
    run; an interruption (``KeyboardInterrupt``) stops the study, to resume. When an arm's
    intervention raised in a program it shares with others (the baseline's), that arm alone is
    recorded as failed, in a program of its own, and the others train again without it
    (:func:`isolate_arms`; saved in ``programs/isolated.json`` first, so a kill from there on
    resumes the programs as they will run). Returns the programs as they ran, the results of
    those that finished and the failures of the others, by name."""
    isolated = isolated_arms(run_dir)
    programs = isolate_arms(planned, isolated)
    names = {program.name for program in programs}
    for path in (run_dir / "programs").glob("*.failed.json"):  # of a program split since
        if path.name.removesuffix(".failed.json") not in names:
            path.unlink()
    results: dict[str, ResultT] = {}
    failures: dict[str, ProgramFailure] = {}
    done: set[str] = set()
    while pending := [p for p in programs if p.name not in done]:
        program = pending[0]
        done.add(program.name)
        try:
            stored = load(program)
        except DamagedResult as damaged:  # trained again
            set_aside(damaged)
            stored = None
        if stored is None:
            try:
                stored = train(program)
                store(program, stored)
            except Exception as exc:
                failure = (
                    exc.failure
                    if isinstance(exc, ProgramFailed)
                    else ProgramFailure.of(program, exc)
                )
                if failure.culprit is not None and len(program.arms) > 1:
                    # this batch will not run again: its checkpoint and an earlier failure go,
                    # first (killed before isolated.json is written, the rerun trains it whole)
                    remove_artifact(run_dir / "checkpoints" / program.name)
                    failure_file(run_dir, program.name).unlink(missing_ok=True)
                    isolated.append(failure.culprit[0])  # the others train again without it
                    path = run_dir / "programs" / ISOLATED_FILE
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, json.dumps(isolated))
                    programs = isolate_arms(planned, isolated)
                    failure = failure.alone(failure.culprit[0])
                    done.add(failure.program)
                failures[failure.program] = failure
                path = failure_file(run_dir, failure.program)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(failure.to_json(), indent=1))
                if on_failure is not None:
                    on_failure(failure)
                continue
        # only once its result is stored (a kill before that resumes the program from its
        # final state; it retrained from the start), and again when it was found stored (a
        # kill between the two left it)
        remove_artifact(run_dir / "checkpoints" / program.name)
        failure_file(run_dir, program.name).unlink(missing_ok=True)
        results[program.name] = stored
    return programs, results, failures


class StudyRunner:
    """Runs (or resumes) a study in its run directory, one batched program at a time, each
    stored as it finishes. A program that raises is recorded as failed (:attr:`failures`,
    and ``programs/<name>.failed.json`` for the report) and the next one runs; a later run
    retries it (from its checkpoint when it saved one). When an arm's intervention raised in
    a program it shares with others (the baseline's), that arm alone is recorded as failed,
    in a program of its own, and the others train again without it (:func:`isolate_arms`);
    :attr:`plan` then lists the programs as they ran."""

    def __init__(
        self,
        plan: StudyPlan,
        registry: Registry,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.run_dir = run_dir or plan.run_dir
        self.planned = plan.programs
        self.plan = replace(plan, programs=isolate_arms(plan.programs, isolated_arms(self.run_dir)))
        self.registry, self.progress = registry, progress
        self.failures: dict[str, ProgramFailure] = {}
        """the programs that failed in the last :meth:`run`, by name"""

    def prepare(self) -> None:
        """Create (or reopen) the run directory; refuse one that holds another study."""
        open_run_dir(self.run_dir, STUDY, self.plan.config, self.plan.resolved)

    def _file(self, program: Program) -> Path:
        return self.run_dir / "programs" / program.name

    def load_failure(self, program: Program) -> ProgramFailure | None:
        """The recorded failure of a program that has not finished since, or None."""
        return load_failure(self.run_dir, program)

    def load(self, program: Program) -> ProgramResult | None:
        """A stored program, or None when it has not finished."""
        loaded = load_result(self._file(program), "ctxrl plasticity")
        if loaded is None:
            return None
        tensors, meta = loaded

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
        """Every program, training what is not stored yet (a failed one again), as
        :func:`run_programs` runs them; returns those that finished by name, the failures in
        :attr:`failures`."""
        self.prepare()
        programs, results, self.failures = run_programs(
            self.planned,
            self.run_dir,
            load=self.load,
            train=self._train,
            store=self._store,
            on_failure=on_failure,
        )
        self.plan = replace(self.plan, programs=programs)
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
            raise ProgramFailed(ProgramFailure.of(program, exc, interventions)) from exc
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

    with locked_run_dir(plan.run_dir, "ctxrl plasticity"):
        # the runner reads the arms isolated so far: only once no other process writes them
        runner = StudyRunner(plan, registry, progress=progress)
        results = runner.run(on_failure=failed)
        write_outputs(runner.plan, results, runner.run_dir, failures=list(runner.failures.values()))
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
    plan = runner.plan  # with the arms it moved into programs of their own
    results, failures = load_programs(run_dir, plan.programs, runner.load)
    return plan, results, failures


def load_programs(
    run_dir: Path, programs: Sequence[Program], load: Callable[[Program], ResultT | None]
) -> tuple[dict[str, ResultT], list[ProgramFailure]]:
    """The stored results of ``programs`` (``load``) by name and the failures of those that
    failed; an error names a program that neither finished nor failed (a study stopped
    halfway)."""
    results: dict[str, ResultT] = {}
    failures: list[ProgramFailure] = []
    for program in programs:
        stored = load(program)
        failure = load_failure(run_dir, program) if stored is None else None
        if failure is not None:
            failures.append(failure)
        elif stored is None:
            raise CtxrlError(unfinished(run_dir, f"program {program.name!r}", "ctxrl plasticity"))
        else:
            results[program.name] = stored
    return results, failures
