"""A DQN transferability study's definition: its YAML config, the transfer arms and DQN
variants it compares, and the plan resolved from it (contexts, envs, (source, target) pairs,
source agents from an earlier sweep). :mod:`ctxrl_plugins.transfer.dqn_transferability` is the
study as a whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field, field_validator

from ctxrl.context import Context
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import build_interventions
from ctxrl.options import SEED_LIMIT
from ctxrl.registry import EnvSpec, Registry
from ctxrl.resolution import resolved_hyperparameters
from ctxrl.results import load_policies
from ctxrl_plugins.transfer.studies import (
    StrictModel,
    StudyModel,
    distinct_seeds,
    preset_params,
    read_study_file,
    study_run_dir,
)

Arm = Literal["scratch", "fine-tune", "only-head", "hybrid", "keep-head"]
ARMS: tuple[Arm, ...] = ("scratch", "fine-tune", "only-head", "hybrid", "keep-head")
Variant = Literal["dqn", "double", "dueling"]
_DEFAULT_VARIANTS: tuple[Variant, ...] = ("dqn",)
VARIANT_PARAMS: dict[str, dict[str, bool]] = {
    "dqn": {},
    "double": {"double": True},
    "dueling": {"dueling": True},
}
STUDY = "dqn-transferability"


class ContextEntry(StrictModel):
    name: str = Field(description="label of the context in tables (e.g. v0)")
    context: dict[str, float] = Field(default_factory=dict, description="feature -> value")
    env: str | None = Field(
        default=None,
        description="another env family for this entry (same observation and action spaces); "
        "default: the study's env",
    )


class StudyConfig(StudyModel):
    """A DQN transferability study, as written in YAML."""

    # read by the report only
    analysis_fields: ClassVar[Mapping[str, Any]] = {"threshold": True, "absent_band": True}

    env: str = Field(description="environment registry name")
    contexts: list[ContextEntry] = Field(min_length=1, description="sources = targets")
    pairs: Literal["all", "self", "cross"] = Field(
        default="all", description="which (source, target) pairs: all, self only, cross only"
    )
    algorithm: dict[str, Any] = Field(
        default_factory=dict, description="batched-dqn hyperparameters (params)"
    )
    preset: str | None = Field(default=None, description="batched-dqn preset")
    variants: list[Variant] = Field(default_factory=lambda: list(_DEFAULT_VARIANTS), min_length=1)
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS))
    seeds: list[Annotated[int, Field(ge=0, lt=SEED_LIMIT, strict=True)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], min_length=1
    )
    train_steps: int = Field(gt=0, description="env steps per agent, every arm (same grid)")
    curve_every: int = Field(gt=0, description="env steps between learning-curve points")
    curve_episodes: int = Field(default=10, ge=1, description="episodes per curve point")
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="normalised return in [0, 1] for time to threshold (default 0.9)",
    )
    absent_band: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="a pair is positive / negative only when r's whole interval lies above "
        "this / below minus this, absent otherwise; 0 (default): the interval excludes 0; "
        "Sabatelli & Geurts call |r| <= 0.05 absent",
    )
    sources_from: Path | None = Field(
        default=None,
        description="a batched-dqn sweep's run directory whose agents are the sources "
        "(matched by context and seed); default: the study's own scratch agents",
    )
    device: str = Field(default="cpu")
    output_dir: Path = Field(default=Path("runs"))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        return distinct_seeds(value)

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: list[Arm]) -> list[Arm]:
        if not set(value) - {"scratch"}:
            raise ValueError(
                "a study compares transfer arms with scratch: name at least one of "
                + ", ".join(arm for arm in ARMS if arm != "scratch")
            )
        if "hybrid" in value and not {"fine-tune", "only-head"} <= set(value):
            raise ValueError("the hybrid arm needs the fine-tune and only-head arms")
        # scratch first, hybrid after the two arms it is made of: the order they train in
        return [arm for arm in ARMS if arm in value or arm == "scratch"]


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file; errors name the field and the file."""
    return read_study_file(path, StudyConfig)


@dataclass(frozen=True)
class Pair:
    source: int
    target: int


@dataclass
class SourceAgents:
    """Source agents read from a sweep's run directory (``sources_from``).

    Attributes:
        run_dir: the sweep's run directory.
        params: its agents' parameters stacked over runs, ``(runs, ...)`` each.
        rows: (context index in the study, seed) -> the row of ``params`` holding that agent.
    """

    run_dir: Path
    params: dict[str, Any]
    rows: dict[tuple[int, int], int]


@dataclass
class StudyPlan:
    """A validated study: the env, its contexts and the pairs."""

    config: StudyConfig
    env: EnvSpec
    contexts: list[dict[str, float]]
    names: list[str]
    pairs: list[Pair]
    params: dict[str, Any]
    envs: list[EnvSpec]
    """each context's env family (the study's env unless an entry names another)"""
    sources: SourceAgents | None = None
    """the source agents when ``sources_from`` is given (else the scratch arm's)"""
    resolved: dict[str, Any] | None = None
    """what the study file resolves to with the installed plugins: each context in full
    (``contexts``, by name: the features it leaves out at their defaults) and each variant's
    hyperparameters with their defaults (``hyperparameters``, by variant), recorded in
    plan.yaml so that a resume after a default changed is refused
    (:func:`~ctxrl_plugins.transfer.studies.open_run_dir`)"""

    @property
    def run_dir(self) -> Path:
        return study_run_dir(self.config, self.config.output_dir, f"dqn-transfer-{self.env.name}-")


def resolve_study(
    config: StudyConfig, registry: Registry, *, load_sources: bool = True
) -> StudyPlan:
    """Check names, contexts and hyperparameters before anything trains; with
    ``load_sources`` also read and check the agents of ``sources_from`` (a report of the
    finished arms does not need them)."""
    env = _dqn_env(registry, config.env, "env")
    contexts, envs = [], []
    for index, entry in enumerate(config.contexts):
        entry_env = (
            env if entry.env is None else _dqn_env(registry, entry.env, f"contexts[{index}].env")
        )
        try:
            contexts.append(entry_env.context_space.validate(entry.context).as_dict())
        except CtxrlError as exc:
            raise ConfigError(f"contexts[{index}].context: {exc}") from None
        envs.append(entry_env)
    names = [entry.name for entry in config.contexts]
    if len(set(names)) != len(names):
        raise ConfigError(f"contexts: names {names} repeat a name")
    seen: dict[tuple[str, Context], int] = {}
    for index, (entry_env, context) in enumerate(zip(envs, contexts, strict=True)):
        key = (entry_env.name, entry_env.context_space.env_context(context))
        if key in seen:
            first = seen[key]
            raise ConfigError(
                f"contexts[{index}] ({names[index]!r}) is the environment of contexts[{first}] "
                f"({names[first]!r}): {entry_env.name} {key[1].as_dict()} (integer features "
                "rounded); a study compares different contexts"
            )
        seen[key] = index
    algorithm = registry.algorithm("batched-dqn")
    params = preset_params(algorithm, config.preset, config.algorithm)
    hyperparameters: dict[str, Any] = {}
    for variant in config.variants:
        variant_params = {**params, **VARIANT_PARAMS[variant]}
        try:
            built = algorithm.factory(variant_params, device=config.device)
            cast(Any, built).check_budget(config.train_steps)  # every arm trains train_steps
        except CtxrlError as exc:  # the study's field is `algorithm`, its parameters
            message = str(exc).removeprefix("algorithm.params: ").replace("algorithm.params.", "")
            raise ConfigError(f"algorithm: {message}") from None
        _check_grid(config, cast(Any, built).steps_per_iteration())
        hyperparameters[variant] = resolved_hyperparameters(built, variant_params)
    resolved = {
        "contexts": dict(zip(names, contexts, strict=True)),
        "hyperparameters": hyperparameters,
    }
    n = len(contexts)
    pairs = [
        Pair(s, t)
        for s in range(n)
        for t in range(n)
        if config.pairs == "all" or (config.pairs == "self") == (s == t)
    ]
    if not pairs:
        raise ConfigError(f"pairs: {config.pairs!r} leaves no pair among {n} contexts")
    _check_spaces(config, envs, names, pairs)
    sources = (
        _sweep_sources(config, registry, contexts, envs, names, pairs, params)
        if load_sources
        else None
    )
    return StudyPlan(config, env, contexts, names, pairs, params, envs, sources, resolved)


def _check_grid(config: StudyConfig, per_iteration: int) -> None:
    """The trainer evaluates the curve at iteration ends and trains whole iterations: refuse a
    ``train_steps`` or ``curve_every`` that is not a whole number of them (the curve was taken
    at other steps than the summary said, and the agents trained more), and a ``curve_every``
    beyond ``train_steps`` (no point at it: the curve is its two ends)."""
    for name, steps in (("train_steps", config.train_steps), ("curve_every", config.curve_every)):
        if steps % per_iteration:
            raise ConfigError(
                f"{name}: {steps} env steps is not a whole number of batched-dqn's iterations "
                f"({per_iteration} env steps per agent, where it evaluates the curve): make it "
                f"a multiple of {per_iteration}"
            )
    if config.curve_every > config.train_steps:
        raise ConfigError(
            f"curve_every: {config.curve_every} env steps is beyond train_steps "
            f"({config.train_steps}): the curve would be its start and end alone; make it at "
            "most train_steps"
        )


def _dqn_env(registry: Registry, name: str, field: str) -> EnvSpec:
    try:
        env = registry.env(name)
    except CtxrlError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if env.action_space != "discrete":
        raise ConfigError(f"{field}: DQN needs discrete actions; {env.name!r} is continuous")
    if env.make_batched is None:
        raise ConfigError(f"{field}: {env.name!r} has no torch twin; batched-dqn needs one")
    return env


def _check_spaces(
    config: StudyConfig, envs: Sequence[EnvSpec], names: Sequence[str], pairs: Sequence[Pair]
) -> None:
    """Every warm-started arm needs a source whose network fits the target: the same
    observation size and number of actions (checked on the twins, which the agents use)."""
    shapes = {}
    for env in {e.name: e for e in envs}.values():
        assert env.make_batched is not None
        twin = env.make_batched(1)
        shapes[env.name] = (int(twin.observation_size), twin.discrete_actions)
    transfer_arms = [arm for arm in config.arms if arm != "scratch"]
    misfits = [p for p in pairs if shapes[envs[p.source].name] != shapes[envs[p.target].name]]
    if misfits and transfer_arms:
        first = misfits[0]
        source, target = envs[first.source], envs[first.target]
        raise ConfigError(
            f"contexts: {len(misfits)} pair(s) cannot transfer, e.g. {names[first.source]} "
            f"({source.name}: observations {shapes[source.name][0]}, actions "
            f"{shapes[source.name][1]}) -> {names[first.target]} ({target.name}: observations "
            f"{shapes[target.name][0]}, actions {shapes[target.name][1]}): the arms "
            f"{', '.join(transfer_arms)} are impossible for them; use envs with the same "
            "spaces, or pairs: self"
        )


def _sweep_sources(
    config: StudyConfig,
    registry: Registry,
    contexts: Sequence[dict[str, float]],
    envs: Sequence[EnvSpec],
    names: Sequence[str],
    pairs: Sequence[Pair],
    params: Mapping[str, Any],
) -> SourceAgents | None:
    """The agents of ``sources_from``, checked before anything trains: a batched-dqn sweep
    whose network is every variant's, with a finished run for each (source context, seed)."""
    run_dir = config.sources_from
    if run_dir is None or not any(arm != "scratch" for arm in config.arms):
        return None
    field = f"sources_from: {run_dir}"
    try:  # the sweep's sources only: its multi-task agents are stored at the default context
        loaded = load_policies(
            run_dir, algorithm="batched-dqn", where=lambda row: row.kind == "source"
        )
    except CtxrlError as exc:
        raise ConfigError(f"sources_from: {exc}") from None
    visible = loaded.plan.config.env_options.get("visible")
    if visible:  # the study's agents observe the env alone: the weights would not fit
        raise ConfigError(
            f"{field}: its agents observe the context features {visible} beside the env "
            "(env_options.visible), the study's agents the env alone; give a sweep trained "
            "without visible features"
        )
    entries = [
        {"name": e.name, "options": e.options} for e in loaded.plan.config.algorithm.interventions
    ]
    try:  # reading a run directory no longer needs its interventions' plugins; this does
        built = build_interventions(entries, registry)
    except CtxrlError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    reshaped = [i.name for i in built if i.changes_network]
    if reshaped:
        raise ConfigError(
            f"{field}: its agents were trained with {', '.join(reshaped)}, which change the "
            "network (the study's arms start from plain ones: their parameters would not fit); "
            "give a sweep trained without them"
        )
    trained = cast(Any, loaded.algorithm).config
    factory = registry.algorithm("batched-dqn").factory
    for variant in config.variants:
        wanted = cast(Any, factory({**params, **VARIANT_PARAMS[variant]}, device="cpu")).config
        for key in ("hidden", "dueling", "activation"):
            if getattr(trained, key) != getattr(wanted, key):
                raise ConfigError(
                    f"{field}: its agents have {key}={getattr(trained, key)!r}, the "
                    f"{variant!r} variant's network {key}={getattr(wanted, key)!r}"
                )
    source_contexts = sorted({pair.source for pair in pairs})
    rows: dict[tuple[int, int], int] = {}
    for row, (run, context) in enumerate(zip(loaded.runs, loaded.contexts, strict=True)):
        for c in source_contexts:
            if run.env == envs[c].name and _same_context(envs[c], context, contexts[c]):
                rows.setdefault((c, run.seed), row)
    for c in source_contexts:
        for seed in config.seeds:
            if (c, seed) not in rows:
                raise ConfigError(
                    f"{field}: no finished {envs[c].name} run at context {names[c]} "
                    f"({contexts[c]}) with seed {seed}; the sweep holds {len(loaded)} finished "
                    f"run(s) of {loaded.env.name}"
                )
    return SourceAgents(run_dir, loaded.stacked_params(), rows)


def _same_context(env: EnvSpec, stored: Mapping[str, float], wanted: Mapping[str, float]) -> bool:
    """Whether a sweep run's context is the study context ``wanted`` (both completed with the
    env's defaults; values equal to float tolerance)."""
    try:
        full = env.context_space.validate(dict(stored)).as_dict()
    except CtxrlError:
        return False
    return full.keys() == wanted.keys() and all(
        np.isclose(full[k], wanted[k], rtol=1e-9, atol=0.0) for k in full
    )
