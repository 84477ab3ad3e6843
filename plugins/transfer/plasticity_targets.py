"""Shifting-target plasticity studies: a supervised probe on the trainers' own networks.

Loss of plasticity is easiest to see where nothing else changes: a network fits fixed inputs
to random targets, the targets are redrawn every ``steps_per_task`` gradient steps, and a
network that loses plasticity fits each new set of targets worse than the one before (Lyle et
al. 2023's random-label memorisation, as a regression). Each agent is the batched trainers'
:class:`~ctxrl_plugins.training.networks.StackedMLP` with their Adam
(:class:`~ctxrl_plugins.training.optimizer.AgentAdam`), trained through the same
:class:`~ctxrl_plugins.training.run.TrainingRun` as reinforcement learning, so every
intervention plugin applies unchanged: its network transform, loss term and after-update
operator, and ``on_context_switch`` at every target switch (the "context" is the target set).

Per agent (seed ``s``): inputs ``X`` ``(points, input_dim)`` standard normal and, for each task,
targets ``(points, 1)`` normal with standard deviation ``target_scale``, both drawn from the
agent's own generator (seed ``s``, salted): arms with the same seed see the same data and start
from the same weights, so arm - none differences are paired by seed. Minibatches of
``batch_size`` points are drawn with replacement from the same generator.

Recorded per agent and task: the **fit error**, the mean squared error on all points divided
by the variance of the task's targets (1: no better than predicting their mean; 0: a perfect
fit), every ``eval_every`` gradient steps; from it the task's **final error** and its **AUC**
(the mean of ``1 - error`` over the task's records, higher is better, the analogue of a
post-switch AUC), and the plasticity metrics of every layer at the task's end
(:func:`~ctxrl_plugins.training.plasticity.layer_metrics`: dormant fraction, ranks, norms).

Per arm, with 95 % intervals over seeds (Student's t: :mod:`ctxrl.estimates`):

- **plasticity lost**: mean final error of the last ``window`` tasks minus that of the first
  ``window`` tasks (positive: later targets are fitted worse);
- **late error**: mean final error of the last ``window`` tasks;
- **dormant** fraction (mean over hidden layers) at the end of the first task and of the last;
- against ``none``: each of those as the mean over seeds of the per-seed difference (the same
  seed's data and initial weights on both sides), a verdict only when the interval excludes 0.

A study is a YAML file for ``ctxrl plasticity``, told apart from an env study by its
``shifting_targets`` block::

    shifting_targets: {tasks: 30, steps_per_task: 400, learning_rate: 0.02}
    arms: [redo, {name: continual-backprop, options: {replacement_rate: 0.001, maturity: 100}}]
    seeds: [0, 1, 2, 3, 4]

Programs (grouped as in :mod:`ctxrl_plugins.transfer.plasticity_study`) are stored as they
finish and checkpointed after every target set, so a killed study resumes inside the program
it was training, to the numbers of a study never stopped. The measures and the outputs
are computed in :mod:`ctxrl_plugins.transfer.plasticity_targets_report`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ctxrl.artifacts import artifact_file, remove_artifact
from ctxrl.errors import CheckpointError, ConfigError, CtxrlError
from ctxrl.interventions import Intervention
from ctxrl.options import check_device
from ctxrl.registry import Registry
from ctxrl_plugins.transfer.plasticity_plan import (
    ArmsConfig,
    Program,
    StudyConfig,
    build_arm_interventions,
    isolate_arms,
    plan_programs,
    resolved_arms,
)
from ctxrl_plugins.transfer.plasticity_runner import (
    ProgramFailed,
    ProgramFailure,
    isolated_arms,
    load_programs,
    run_programs,
)
from ctxrl_plugins.transfer.plasticity_targets_report import (
    MEASURES,
    ArmRecords,
    analyse,
    per_seed_measures,
    write_outputs,
)
from ctxrl_plugins.transfer.studies import (
    StrictModel,
    load_result,
    locked_run_dir,
    open_run_dir,
    read_study_file,
    study_mapping,
    study_run_dir,
)

STUDY = "plasticity"
ROLE = "probe"
DATA_SALT = 7_919_000
"""added to an agent's seed for its data generator (its weights use the seed itself)"""


# ------------------------------------------------------------------------------ config
class ShiftingTargets(StrictModel):
    """The supervised task and the network that learns it."""

    tasks: int = Field(default=30, ge=2, description="target sets, one after another")
    steps_per_task: int = Field(default=400, ge=1, description="gradient steps per target set")
    points: int = Field(default=256, ge=2, description="fixed inputs to fit")
    input_dim: int = Field(default=4, ge=1, description="input features")
    target_scale: float = Field(default=1.0, gt=0.0, description="targets' standard deviation")
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 32], min_length=1, description="hidden layer widths"
    )
    activation: Literal["relu", "tanh"] = Field(default="relu")
    learning_rate: float = Field(default=0.02, gt=0.0, description="Adam's learning rate")
    batch_size: int = Field(default=64, ge=1, description="points per gradient step")
    eval_every: int = Field(default=20, ge=1, description="gradient steps between fit records")
    window: int = Field(default=5, ge=1, description="tasks averaged at the start and the end")


class TargetsStudyConfig(ArmsConfig):
    """A shifting-target plasticity study, as written in YAML."""

    analysis_fields: ClassVar[Mapping[str, Any]] = {
        "shifting_targets": {"window"}
    }  # read by the report only

    shifting_targets: ShiftingTargets = Field(description="the task and the network")


def is_targets_study(data: Mapping[str, Any]) -> bool:
    """Whether a study file's mapping is a shifting-target study."""
    return "shifting_targets" in data


def load_targets_config(path: str | Path) -> TargetsStudyConfig:
    """Read and validate a study file; errors name the field and the file, and a file that
    mixes in the fields of a study on an env's schedule is named as mixing the two kinds."""
    try:
        config = read_study_file(path, TargetsStudyConfig)
    except ConfigError:
        data = study_mapping(Path(path))
        mixed = sorted(set(StudyConfig.model_fields) - set(TargetsStudyConfig.model_fields))
        found = [name for name in mixed if name in data]
        if not found:
            raise
        raise ConfigError(
            f"{path}: shifting_targets makes this a study on shifting regression targets, which "
            f"takes no {', '.join(found)} (fields of a study on an env's context schedule): a "
            "plasticity study is one kind or the other; remove shifting_targets or those fields"
        ) from None
    task = config.shifting_targets
    if 2 * task.window > task.tasks:
        raise ConfigError(
            f"{path}: shifting_targets.window: {task.window} tasks at the start and at the end "
            f"need at least {2 * task.window} tasks, not {task.tasks}"
        )
    if task.steps_per_task % task.eval_every:
        raise ConfigError(
            f"{path}: shifting_targets.eval_every: {task.eval_every} does not divide the "
            f"{task.steps_per_task} steps of a task: the error at a task's end is its last "
            "record, so the records must end there"
        )
    return config


# ------------------------------------------------------------------------------ training
@dataclass
class TargetsResult:
    """One program's records (``A`` agents in ``agents`` order, ``T`` tasks, ``R`` fit records
    per task).

    Attributes:
        errors: ``(A, T, R)`` fit error (normalised MSE) after every ``eval_every`` steps.
        metrics: ``{metric}.{layer}`` -> ``(A, T)`` at the end of each task.
    """

    agents: list[tuple[str, int]]
    errors: np.ndarray
    metrics: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Inputs:
    """What :class:`~ctxrl_plugins.training.run.TrainingRun` reads of a twin: the input size,
    and no discrete actions."""

    observation_size: int
    discrete_actions: None = None


def _program_run(
    task: ShiftingTargets,
    program: Program,
    registry: Registry,
    where: Any,
    interventions: Sequence[tuple[Intervention, list[int]]] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """The program's training before its first step: ``(run, network, params, optimizer)``,
    its interventions' network transforms applied and their ``setup`` called (an option the
    network cannot take raises here)."""
    import torch

    from ctxrl.interventions import NetworkSpec
    from ctxrl.rng import StreamRNG
    from ctxrl_plugins.training.networks import StackedMLP, stack_agents
    from ctxrl_plugins.training.optimizer import AgentAdam
    from ctxrl_plugins.training.run import TrainingRun, intervention_hook, intervention_masks

    seeds = [seed for _, seed in program.agents]
    n = len(seeds)
    if interventions is None:
        interventions = build_arm_interventions(program, registry)
    hosted, masks = intervention_masks(interventions, n, where)
    spec = NetworkSpec(hidden=tuple(task.hidden), activation=task.activation)
    for intervention in hosted:
        spec = intervention.network(ROLE, spec)
    network = StackedMLP(ROLE, spec, task.input_dim, {"head": (1, 1.0)})
    params = stack_agents(
        [network.init_agent(torch.Generator().manual_seed(seed)) for seed in seeds], where
    )
    optimizer = AgentAdam(params, lr=task.learning_rate)
    everyone = torch.ones(n, dtype=torch.bool, device=where)
    for name in network.frozen_names:
        optimizer.freeze(name, everyone)
    run = TrainingRun(
        twin=_Inputs(task.input_dim),
        networks={ROLE: network},
        params=params,
        optimizer=optimizer,
        rng=StreamRNG(torch.tensor(seeds, dtype=torch.int64, device=where)),
        interventions=hosted,
        num_envs=1,
        device=where,
        masks=masks,
    )
    run.record_activations = True
    for intervention in run.each_intervention():
        with intervention_hook(intervention, "setup"):
            intervention.setup(run)
    return run, network, params, optimizer


def check_arms_fit(config: TargetsStudyConfig, registry: Registry) -> None:
    """Every arm's interventions against the probe network, before anything trains (as an
    env study checks its arms): each program built for one seed on the CPU and its
    interventions set up, so an option the network cannot take (``plasticity-injection``'s
    ``layers`` beyond its depth) is a :class:`ConfigError` naming the arm, not a failure of
    its program after the others trained."""
    import torch

    _, planned = plan_programs(config, registry)
    seed = config.seeds[0]
    for program in planned:
        for label in program.arms:
            one = Program(program.name, [(label, seed)], {label: program.arms[label]})
            try:
                _program_run(config.shifting_targets, one, registry, torch.device("cpu"))
            except CtxrlError as exc:
                raise ConfigError(f"arms: {label!r}: {exc}") from None


def train_program(
    task: ShiftingTargets,
    program: Program,
    registry: Registry,
    *,
    device: str = "cpu",
    dormant_tau: float = 0.025,
    interventions: Sequence[tuple[Intervention, list[int]]] | None = None,
    on_task: Callable[[int, int], None] | None = None,
    checkpoint: Path | None = None,
) -> TargetsResult:
    """Train every agent of ``program`` on the shifting targets, one batched program;
    ``interventions`` (default: built from the program's arms) with their agents' rows;
    ``on_task(done, tasks)`` after each target set. With ``checkpoint`` (a path without
    suffix) the whole state is saved after every target set and a saved one is continued
    from, to the same numbers as a program never stopped; one that is damaged or was saved for
    another program (other agents, arms, task or device) is a :class:`CheckpointError` (the
    study sets it aside and trains the program from the start)."""
    import torch

    from ctxrl_plugins.training.plasticity import PlasticityOptions, layer_metrics
    from ctxrl_plugins.training.run import intervention_hook
    from ctxrl_plugins.training.trainer import resolve_device

    where = resolve_device(device)  # "auto": a GPU when there is one
    run, network, params, optimizer = _program_run(task, program, registry, where, interventions)
    seeds = [seed for _, seed in program.agents]
    n = len(seeds)
    everyone = torch.ones(n, dtype=torch.bool, device=where)
    generators = [torch.Generator().manual_seed(seed + DATA_SALT) for seed in seeds]
    inputs = torch.stack(
        [torch.randn(task.points, task.input_dim, generator=g) for g in generators]
    ).to(where)
    rows = torch.arange(n, device=where)[:, None]
    records = task.steps_per_task // task.eval_every
    errors = torch.empty(n, task.tasks, records)
    metrics: dict[str, list[Any]] = {}
    identity = _program_identity(task, program, dormant_tau, where.type)
    start = 0
    if checkpoint is not None and artifact_file(checkpoint).is_file():
        start = _restore(checkpoint, identity, run, generators, errors, metrics)
    for index in range(start, task.tasks):
        targets = torch.stack(
            [torch.randn(task.points, 1, generator=g) * task.target_scale for g in generators]
        ).to(where)
        variance = targets.var(dim=(1, 2), unbiased=False).clamp_min(1e-12)
        batches = torch.stack(
            [
                torch.randint(task.points, (task.steps_per_task, task.batch_size), generator=g)
                for g in generators
            ],
            dim=1,
        ).to(where)  # (steps, N, B)
        if index > 0:
            for intervention in run.each_intervention():
                with intervention_hook(intervention, "on_context_switch"):
                    intervention.on_context_switch(run, everyone)
        for step in range(task.steps_per_task):
            chosen = batches[step]
            prediction = run.forward(ROLE, inputs[rows, chosen], training=True)
            loss = (prediction - targets[rows, chosen]).square().mean(dim=(1, 2))
            run.optimize(loss / variance)
            run.iteration += 1
            run.env_steps += task.batch_size
            if (step + 1) % task.eval_every == 0 and (step + 1) // task.eval_every <= records:
                with torch.no_grad():
                    fit = (network(params, inputs) - targets).square().mean(dim=(1, 2))
                errors[:, index, (step + 1) // task.eval_every - 1] = (fit / variance).cpu()
        values = layer_metrics(
            {ROLE: network},
            params,
            run.initial_params,
            run.activations,
            PlasticityOptions(every=1, dormant_tau=dormant_tau),
        )
        for name, value in values.items():
            metrics.setdefault(name, []).append(value.float().cpu().numpy())
        if checkpoint is not None and index + 1 < task.tasks:  # the last is stored instead
            _save(checkpoint, identity, index + 1, run, generators, errors, metrics)
        if on_task is not None:
            on_task(index + 1, task.tasks)
    optimizer.finish()
    return TargetsResult(
        list(program.agents),
        errors.double().numpy(),
        {k: np.stack(v, axis=1).astype(np.float64) for k, v in metrics.items()},
    )


# ------------------------------------------------------------------------ checkpoints
def _program_identity(
    task: ShiftingTargets, program: Program, dormant_tau: float, device: str
) -> str:
    """A digest of what decides a program's numbers (the report's ``window`` aside)."""
    described = {
        "task": task.model_dump(exclude={"window"}),
        "agents": [list(agent) for agent in program.agents],
        "arms": {label: [e.model_dump() for e in arm] for label, arm in program.arms.items()},
        "dormant_tau": dormant_tau,
        "device": device,  # random streams and rounding are the device's
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save(
    path: Path,
    identity: str,
    tasks_done: int,
    run: Any,
    generators: Sequence[Any],
    errors: Any,
    metrics: Mapping[str, Sequence[np.ndarray]],
) -> None:
    """Everything the program needs to continue after ``tasks_done`` target sets: weights
    and Adam's state, the agents' random streams and data generators, the interventions'
    state, and the errors and layer metrics recorded so far (safetensors + JSON)."""
    import torch

    from ctxrl.artifacts import save_artifact

    tensors = {f"adam.{k}": v for k, v in run.optimizer.state_tensors().items()}
    tensors.update({f"rng.{k}": v for k, v in run.rng.state_dict().items()})
    tensors["data_generators"] = torch.stack([g.get_state() for g in generators])
    for index, intervention in enumerate(run.each_intervention()):
        tensors.update(
            {f"intervention{index}.{k}": v for k, v in intervention.state_dict().items()}
        )
    tensors["errors"] = errors[:, :tasks_done]
    for name, values in metrics.items():
        tensors[f"metrics.{name}"] = torch.as_tensor(np.stack(values))
    save_artifact(
        path,
        {k: v.detach().contiguous() for k, v in tensors.items()},
        {
            "identity": identity,
            "tasks_done": tasks_done,
            "iteration": run.iteration,
            "env_steps": run.env_steps,
        },
    )


def _restore(
    path: Path,
    identity: str,
    run: Any,
    generators: Sequence[Any],
    errors: Any,
    metrics: dict[str, list[np.ndarray]],
) -> int:
    """Load what :func:`_save` wrote into the program's fresh state; returns the target sets
    done. A :class:`CheckpointError` naming the file when it is damaged or was saved for
    another program (other agents, arms, task or device)."""
    import torch

    from ctxrl.artifacts import load_artifact, verify_artifact

    problem = verify_artifact(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {problem}")
    tensors, meta = load_artifact(path, device=str(run.device))
    if meta.get("identity") != identity:
        raise CheckpointError(
            f"checkpoint {path} was saved for another program (agents, arms, task or device)"
        )
    try:
        return _load_state(path, tensors, meta, run, generators, errors, metrics)
    except (torch.OutOfMemoryError, MemoryError):
        raise  # not the checkpoint's fault: it is kept for the next try
    except (CtxrlError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be restored ({exc})") from None


def _load_state(
    path: Path,
    tensors: Mapping[str, Any],
    meta: Mapping[str, Any],
    run: Any,
    generators: Sequence[Any],
    errors: Any,
    metrics: dict[str, list[np.ndarray]],
) -> int:
    run.optimizer.load_state_tensors(_unprefixed("adam", tensors), path)
    run.rng.load_state_dict(_unprefixed("rng", tensors))
    for generator, state in zip(generators, tensors["data_generators"].cpu(), strict=True):
        generator.set_state(state.clone())
    for index, intervention in enumerate(run.each_intervention()):
        intervention.load_state_dict(_unprefixed(f"intervention{index}", tensors))
    done = int(meta["tasks_done"])
    errors[:, :done] = tensors["errors"].cpu()
    for name, values in _unprefixed("metrics", tensors).items():
        metrics[name] = list(values.cpu().numpy())
    run.iteration, run.env_steps = int(meta["iteration"]), int(meta["env_steps"])
    return done


def _unprefixed(prefix: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
    start = f"{prefix}."
    return {k.removeprefix(start): v for k, v in tensors.items() if k.startswith(start)}


# ------------------------------------------------------------------------------ the study
def run_dir_of(config: TargetsStudyConfig) -> Path:
    return study_run_dir(config, config.output_dir, "plasticity-targets-")


def resolved_study(config: TargetsStudyConfig, registry: Registry) -> dict[str, Any]:
    """What the study resolves to beyond its file: every arm's intervention options with
    their defaults (:func:`resolved_arms`; the task's own fields are in the file, defaults
    filled in). plan.yaml records it and ``--dry-run`` prints it."""
    return {"arms": resolved_arms(config, registry)}


def run_targets_study(
    config: TargetsStudyConfig,
    registry: Registry,
    *,
    progress: Callable[[str], None] | None = None,
    run_dir: Path | None = None,
    on_failure: Callable[[ProgramFailure], None] | None = None,
) -> Path:
    """Run (or resume) a shifting-target study and write its outputs; returns its run
    directory. A program that fails is recorded and named in the summary (an arm whose
    intervention raised in the shared program alone, the others trained again without it),
    and ``on_failure`` is told; the others still run (:func:`run_programs`)."""
    check_device(config.device)
    check_arms_fit(config, registry)
    labels, planned = plan_programs(config, registry)
    run_dir = run_dir or run_dir_of(config)

    def train(program: Program) -> TargetsResult:
        if progress is not None:
            progress(f"{program.name}: {len(program.agents)} agents")

        def tasks_done(done: int, tasks: int) -> None:  # about every tenth of the program
            if progress is not None and (done * 10 // tasks > (done - 1) * 10 // tasks):
                progress(f"{program.name}: {done} of {tasks} target sets trained")

        checkpoint = run_dir / "checkpoints" / program.name
        checkpoint.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> TargetsResult:
            interventions = build_arm_interventions(program, registry)
            try:
                return train_program(
                    config.shifting_targets,
                    program,
                    registry,
                    device=config.device,
                    dormant_tau=config.dormant_tau,
                    interventions=interventions,
                    on_task=tasks_done,
                    checkpoint=checkpoint,
                )
            except CheckpointError:
                raise
            except Exception as exc:  # blamed on the intervention whose code raised, if any
                raise ProgramFailed(ProgramFailure.of(program, exc, interventions)) from exc

        try:
            return attempt()
        except CheckpointError as exc:  # damaged, or another program's: set aside
            if progress is not None:
                progress(f"{program.name}: {exc}; training it from the start")
            remove_artifact(checkpoint)
        return attempt()

    with locked_run_dir(run_dir, "ctxrl plasticity"):  # one process at a time trains here
        open_run_dir(run_dir, STUDY, config, resolved_study(config, registry))
        programs, results, failures = run_programs(
            planned,
            run_dir,
            load=lambda program: _load(run_dir, program),
            train=train,
            store=lambda program, result: _store(run_dir, program, result),
            on_failure=on_failure,
        )
        write_outputs(
            config,
            labels,
            results,
            run_dir,
            failures=list(failures.values()),
            programs=len(programs),
        )
    return run_dir


def report_targets_study(run_dir: Path, data: Mapping[str, Any], registry: Registry) -> str:
    """Rewrite a finished study's outputs from its stored programs (``data``: its plan's
    config) and the failures of those that failed."""
    config = TargetsStudyConfig.model_validate(data)
    labels, planned = plan_programs(config, registry)
    programs = isolate_arms(planned, isolated_arms(run_dir))
    results, failures = load_programs(run_dir, programs, lambda program: _load(run_dir, program))
    return write_outputs(
        config, labels, results, run_dir, failures=failures, programs=len(programs)
    )


def _file(run_dir: Path, program: Program) -> Path:
    return run_dir / "programs" / program.name


def _load(run_dir: Path, program: Program) -> TargetsResult | None:
    loaded = load_result(_file(run_dir, program), "ctxrl plasticity")
    if loaded is None:
        return None
    tensors, meta = loaded
    return TargetsResult(
        [(str(label), int(seed)) for label, seed in meta["agents"]],
        tensors["errors"].double().numpy(),
        {
            k.removeprefix("metrics."): v.double().numpy()
            for k, v in tensors.items()
            if k.startswith("metrics.")
        },
    )


def _store(run_dir: Path, program: Program, result: TargetsResult) -> None:
    import torch

    from ctxrl.artifacts import save_artifact

    tensors = {"errors": torch.as_tensor(result.errors)}
    for name, value in result.metrics.items():
        tensors[f"metrics.{name}"] = torch.as_tensor(np.ascontiguousarray(value))
    path = _file(run_dir, program)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_artifact(path, tensors, {"agents": [list(a) for a in result.agents]})


__all__ = [
    "MEASURES",
    "ArmRecords",
    "ShiftingTargets",
    "TargetsResult",
    "TargetsStudyConfig",
    "analyse",
    "is_targets_study",
    "load_targets_config",
    "per_seed_measures",
    "report_targets_study",
    "run_targets_study",
    "train_program",
]
