"""Sweep configuration: a YAML file validated by its pydantic schema
(:class:`~ctxrl.sweep_config.SweepConfig`, re-exported here), ``--set`` overrides, and the
checks against the loaded plugins that turn a config into a :class:`SweepPlan`.

Errors name the field path (``features.masscart.num``), the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import (
    ValidationError,
)

from ctxrl.context import ContextGrid, GridAxis
from ctxrl.errors import ConfigError, ContextError, CtxrlError, UnknownNameError
from ctxrl.field_errors import validation_problems
from ctxrl.interventions import build_interventions
from ctxrl.options import (
    UNEXPECTED_KEYWORD,
    check_device,
    check_options,
    option_names,
    resolved_device,
    without_repeated_label,
)
from ctxrl.registry import AlgorithmSpec, EnvSpec, Registry, StrategySpec
from ctxrl.resolution import resolved_values
from ctxrl.sweep_config import (
    MAX_CONTEXTS,
    AlgorithmConfig,
    AxisConfig,
    CurvesConfig,
    ExecutorConfig,
    InterventionEntry,
    StrategyConfig,
    SweepConfig,
    TransferConfig,
    WholeNumber,
)
from ctxrl.yaml12 import parse_yaml


def default_config_path() -> Path:
    """The embedded quickstart config (a small CartPole sweep on CPU)."""
    return Path(str(resources.files("ctxrl").joinpath("defaults/quickstart.yaml")))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``1e-3``, ``[1, 2]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. features.length.num=10")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        _set_dotted(data, key.strip(), value)
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a YAML config (the embedded default when ``path`` is None) and validate it."""
    source = Path(path) if path is not None else default_config_path()
    if not source.is_file():
        raise ConfigError(f"config file {source} does not exist")
    try:
        data = parse_yaml(source.read_text(encoding="utf-8"), str(source)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    described = str(source)
    if overrides:
        described += " with " + " ".join(f"--set {item}" for item in overrides)
    return validate_config(apply_overrides(data, overrides), source=described)


def validate_config(data: Mapping[str, Any], source: str = "config") -> SweepConfig:
    try:
        return SweepConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"  {problem}" for problem in validation_problems(exc, SweepConfig)]
        raise ConfigError(f"{source} is not a valid sweep config:\n" + "\n".join(lines)) from None


@dataclass(frozen=True)
class SweepPlan:
    """A config checked against the loaded plugins: every name resolved, the grid built.

    ``location`` is an existing run directory of the same plan found under another name (one
    named by the plan hash of an earlier ctxrl, see :func:`ctxrl.run_dirs.locate_run_dir`);
    None means the directory named by ``plan_hash``. ``trained_steps`` is what a model of
    ``train_steps`` trains, as the algorithm counts (whole iterations or rollouts; None where
    it does not say, or for a plan resolved to read a run directory). ``resolved`` is what
    the installed plugins make of the config (:func:`resolved_values`; None for a plan
    resolved to read a run directory)."""

    config: SweepConfig
    env: EnvSpec
    algorithm: AlgorithmSpec
    strategy: StrategySpec | None
    grid: ContextGrid
    plan_hash: str
    location: Path | None = None
    trained_steps: int | None = None
    resolved: dict[str, Any] | None = None

    @property
    def run_name(self) -> str:
        return f"{self.env.name}-{'-'.join(self.grid.features)}-{self.plan_hash[:10]}"

    @property
    def run_dir(self) -> Path:
        if self.location is not None:
            return self.location
        return self.config.output_dir / self.run_name


def resolve_plan(config: SweepConfig, registry: Registry, *, training: bool = True) -> SweepPlan:
    """Check every name, option and hyperparameter in ``config`` against ``registry`` and build
    the context grid. ``training=False`` reads the plan of an existing run directory: the
    device it trained on, its executor, its interventions and its transfer method (their
    plugins) need not exist here."""
    try:
        env = registry.env(config.env)
    except UnknownNameError as exc:
        raise ConfigError(f"env: {exc}") from None
    try:
        algorithm = registry.algorithm(config.algorithm.name)
    except UnknownNameError as exc:
        raise ConfigError(f"algorithm.name: {exc}") from None
    if env.action_space not in algorithm.action_spaces:
        raise ConfigError(
            f"algorithm.name: {algorithm.name!r} supports {sorted(algorithm.action_spaces)} "
            f"actions but env {env.name!r} has {env.action_space} actions"
        )
    if config.algorithm.preset is not None and config.algorithm.preset not in algorithm.presets:
        raise ConfigError(
            f"algorithm.preset: {algorithm.name!r} has no preset {config.algorithm.preset!r}; "
            f"available: {', '.join(sorted(algorithm.presets)) or 'none'}"
        )
    space = env.context_space
    sizes = {
        name: axis.num if axis.num is not None else len(axis.values or ()) or 1
        for name, axis in config.features.items()
    }
    if math.prod(sizes.values()) > MAX_CONTEXTS:
        product = " x ".join(f"{n} ({name})" for name, n in sizes.items())
        raise ConfigError(
            f"features: a grid of {product} = {math.prod(sizes.values()):,} contexts is more "
            f"than {MAX_CONTEXTS:,}; give fewer points (features.<name>.num)"
        )
    axes = []
    for name, axis in config.features.items():
        values = tuple(axis.values) if axis.values is not None else None
        axes.append(GridAxis(name, axis.num, axis.low, axis.high, axis.scale, values))
        try:
            space.axis(axes[-1])
        except ContextError as exc:
            raise ConfigError(f"features.{name}: {exc}") from None
    for name, value in config.context.items():
        try:
            space.validate({name: value})
        except ContextError as exc:
            raise ConfigError(f"context.{name}: {exc}") from None
    try:
        fixed = space.validate(config.context)
        grid = space.grid(axes)
    except ContextError as exc:
        raise ConfigError(f"features: {exc}") from None
    if config.context:
        varied = set(grid.features) & set(config.context)
        if varied:
            raise ConfigError(f"context: {sorted(varied)} are varied in features and fixed here")
        grid = _with_fixed(grid, fixed.as_dict(), config.context)
    if env.check_context is not None:
        for context in grid.contexts:
            try:
                env.check_context(context)
            except ContextError as exc:
                point = {name: context[name] for name in grid.features}
                raise ConfigError(f"features: the grid point {point}: {exc}") from None
    if (config.multitask or config.mode == "multitask") and not (
        algorithm.batched and env.make_batched is not None
    ):
        raise ConfigError(
            f"multitask: the multi-task baseline needs a batched algorithm and an env with a "
            f"batched twin; {algorithm.name!r} on {env.name!r} is not"
        )
    if training:  # reading a run directory needs none of its training's plugins (a colleague's)
        _check_training_options(config, registry, algorithm)
    # the local executor's `gpus` and Ray's `num_gpus` give each job one GPU, which the job
    # sees as cuda:0 (CUDA_VISIBLE_DEVICES): a device naming another index exists in none
    options = config.executor.options
    if (
        (options.get("gpus") or _positive_number(options.get("num_gpus")))
        and config.device.startswith("cuda:")
        and config.device != "cuda:0"
    ):
        raise ConfigError(
            f"device: {config.device!r} names one GPU, but executor.options gives each job a "
            "GPU of its own (seen as cuda:0 in the job); use device: cuda or auto"
        )
    if training:
        check_device(config.device)
    config = _strategies_for_grid(config, registry, grid)
    # the strategy trains the sources in mode select and is replayed on the matrix for the
    # report in mode full: a bad name or option must stop the sweep before training either way
    try:
        strategy: StrategySpec | None = registry.strategy(config.strategy.name)
    except UnknownNameError as exc:
        raise ConfigError(f"strategy.name: {exc}") from None
    assert strategy is not None
    _check_strategy_options(strategy, config.strategy.options)
    if config.mode == "select" and strategy.requires_full_matrix:
        raise ConfigError(
            f"strategy.name: {strategy.name!r} needs the full matrix; use it with "
            "`ctxrl select` on a finished full sweep"
        )
    budget = config.strategy.budget
    too_many = budget is not None and budget > len(grid)
    # a full run stored before this check is still read (its summary replays at most N)
    if (config.mode == "select" and (budget is None or too_many)) or (training and too_many):
        raise ConfigError(
            f"strategy.budget: K = {budget} must be set and at most N = {len(grid)} contexts"
            if config.mode == "select"
            else f"strategy.budget: K = {budget} is more sources than the N = {len(grid)} "
            f"contexts (the report's G_1..K); give one of at most N, e.g. --set "
            f"strategy.budget={len(grid)}"
        )
    for name in config.compare:
        try:
            registry.strategy(name)
        except UnknownNameError as exc:
            raise ConfigError(f"compare: {exc}") from None
    if training:  # reading a run directory needs no executor (a Ray run's, without Ray)
        try:
            executor = registry.executor(config.executor.name)
        except UnknownNameError as exc:
            raise ConfigError(f"executor.name: {exc}") from None
        _check_executor_options(executor.factory, config.executor.options, executor.name)
        _check_job_gpus(config)
    if config.env_options:
        env = _with_options(env, config.env_options, grid, algorithm.batched)
    if config.return_bounds is not None:  # every normalisation of the run reads the env's
        env = replace(env, return_bounds=config.return_bounds)
    trained_steps = resolved = None
    if config.mode != "select":
        strategy = None
    if training:
        built = _check_hyperparameters(config, algorithm, env)
        _check_interventions_fit(config, registry, built, env)
        _check_transfer_fits(config, registry, built, env, grid)
        counted = getattr(built, "trained_steps", None)
        trained_steps = int(counted(config.train_steps)) if callable(counted) else None
        resolved = resolved_values(
            config,
            registry,
            grid,
            built,
            algorithm_params(config, algorithm),
            env.context_space.default().as_dict(),
        )
    return SweepPlan(
        config,
        env,
        algorithm,
        strategy,
        grid,
        config.plan_hash(),
        trained_steps=trained_steps,
        resolved=resolved,
    )


def merge_params(preset: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A preset updated with ``params``, key by key: a value given replaces the preset's
    whole, a mapping too (``policy_kwargs: {log_std_init: -2}`` on a preset with
    ``policy_kwargs: {net_arch: [64, 64]}`` gives SB3's default ``net_arch``: repeat the
    preset's keys you keep; ``policy_kwargs: {}`` drops them all). Runs already trained in a
    run directory were trained with this rule, which its plan hash does not record."""
    return {**preset, **params}


def algorithm_params(config: SweepConfig, algorithm: AlgorithmSpec) -> dict[str, Any]:
    """The hyperparameters the algorithm's factory gets: its preset, then ``params``
    (:func:`merge_params`)."""
    preset = {} if config.algorithm.preset is None else algorithm.presets[config.algorithm.preset]
    return merge_params(preset, config.algorithm.params)


def _check_hyperparameters(config: SweepConfig, algorithm: AlgorithmSpec, env: EnvSpec) -> Any:
    """Build the algorithm once, so that a hyperparameter it does not take (a typo) stops the
    sweep now, not in every run after the others trained (and, where the algorithm has
    ``check_budget``, whether an agent can learn in ``train_steps``). Factories only check and
    store their options; nothing trains here. Returns the algorithm object."""
    try:
        built = algorithm.factory(
            algorithm_params(config, algorithm), device=config.device, env=env
        )
        if getattr(built, "needs_twin", False) and env.make_batched is None:
            raise ConfigError(
                f"algorithm.name: {algorithm.name!r} trains on a torch twin, and env "
                f"{env.name!r} has none: use an algorithm that trains on the gymnasium env "
                "(sb3-ppo, sb3-dqn, ...)"
            )
        if getattr(built, "needs_twin", False):  # the batched trainers' check of the env
            cast(Any, built).check_env(env)
        check_budget = getattr(built, "check_budget", None)
        if check_budget is not None:
            check_budget(config.train_steps)
        return built
    except (CtxrlError, TypeError, ValueError) as exc:
        message = str(exc)
        if not message.startswith("algorithm."):
            message = f"algorithm.params: {algorithm.name!r}: {message}"
        raise ConfigError(message) from None


def _check_interventions_fit(
    config: SweepConfig, registry: Registry, algorithm: Any, env: EnvSpec
) -> None:
    """The interventions against the networks the algorithm object builds on ``env`` (its
    optional ``check_interventions``: the batched trainers'), before anything trains."""
    entries = config.algorithm.interventions
    check = getattr(algorithm, "check_interventions", None)
    if not entries or check is None:
        return
    built = build_interventions([{"name": e.name, "options": e.options} for e in entries], registry)
    try:
        check(env, built)
    except CtxrlError as exc:
        text = str(exc)  # an intervention's problem is the algorithm's field, the env's its own
        raise ConfigError(text if text.startswith("env ") else f"algorithm.{text}") from None
    for index, intervention in enumerate(built):  # a sweep's contexts never switch
        why = intervention.inert_without_switches(config.train_steps)
        if why is not None:
            raise ConfigError(
                f"algorithm.interventions[{index}] ({intervention.name}): {why}, and a sweep's "
                "contexts never switch: it would train exactly as without it (use a plasticity "
                "study for context switches, or the option that makes it act during training)"
            )


def _check_transfer_fits(
    config: SweepConfig, registry: Registry, algorithm: Any, env: EnvSpec, grid: ContextGrid
) -> None:
    """The transfer method's own checks against the algorithm object and env (its optional
    ``check(algorithm, env)``, :class:`ctxrl.transfer.TransferMethod`: e.g. fine-tuning's
    layer names) and against the grid's contexts (its optional ``check_contexts(sources,
    targets)``: e.g. a context-conditioned student needs contexts that differ), before the
    sources train."""
    method = registry.transfer_method(config.transfer.name)
    where = f"transfer.options: {method.name!r}"
    built = check_options(method.factory, config.transfer.options, where)
    check = getattr(built, "check", None)
    check_contexts = getattr(built, "check_contexts", None)
    contexts = [c.as_dict() for c in grid.contexts]
    try:
        if check is not None:
            check(algorithm, env)
        if check_contexts is not None:  # a sweep's sources and targets are its grid's contexts
            check_contexts(contexts, contexts)
    except CtxrlError as exc:
        raise ConfigError(f"{where}: {without_repeated_label(str(exc), where)}") from None


MULTI_DIMENSIONAL_STRATEGY = "mbtl-gp"


def _strategies_for_grid(config: SweepConfig, registry: Registry, grid: ContextGrid) -> SweepConfig:
    """On a grid of several varied features: the default strategy and comparisons that work
    on one feature only are replaced (the strategy by ``mbtl-gp``) or left out; one named in
    the config is an error naming it, before any training."""
    varied_features = [f for f, points in zip(grid.features, grid.shape, strict=True) if points > 1]
    dims = len(varied_features)  # an axis of one point (num: 1) varies nothing
    if dims < 2:
        return config
    varied = ", ".join(varied_features)

    def one_dimensional(name: str) -> bool:
        try:
            return registry.strategy(name).one_dimensional
        except UnknownNameError:
            return False  # reported with its field below

    strategy = config.strategy
    if one_dimensional(strategy.name):
        if "name" in strategy.model_fields_set:
            raise ConfigError(
                f"strategy.name: {strategy.name!r} works on one varied feature; this grid "
                f"varies {dims} ({varied})"
            )
        strategy = strategy.model_copy(update={"name": MULTI_DIMENSIONAL_STRATEGY})
    compare = [n for n in config.compare if not one_dimensional(n)]
    if "compare" in config.model_fields_set and len(compare) < len(config.compare):
        dropped = [n for n in config.compare if one_dimensional(n)]
        raise ConfigError(
            f"compare: {dropped} work on one varied feature; this grid varies {dims} ({varied})"
        )
    return config.model_copy(update={"strategy": strategy, "compare": compare})


def _check_executor_options(
    factory: Callable[..., Any], options: Mapping[str, Any], name: str
) -> None:
    """The executor's factory takes ``options`` besides what every sweep passes (checked on its
    signature: building an executor may start workers)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind_partial(workers=1, timeout_s=None, log_dir=None)
    except TypeError:
        raise ConfigError(
            f"executor: {name!r}'s factory must take workers, timeout_s and log_dir, which "
            "every sweep passes (ctxrl.registry.ExecutorSpec)"
        ) from None
    try:
        signature.bind(workers=1, timeout_s=None, log_dir=None, **options)
    except TypeError:
        takes = option_names(factory) - {"workers", "timeout_s", "log_dir"}
        unknown = sorted(set(options) - takes) if takes else sorted(options)
        listed = f"; it takes {', '.join(sorted(takes))}" if takes else ""
        raise ConfigError(f"executor.options: {name!r} has no option {unknown}{listed}") from None


def _check_strategy_options(strategy: StrategySpec, options: Mapping[str, Any]) -> None:
    check_options(strategy.factory, options, f"strategy.options: {strategy.name!r}")


JOB_GPU_OPTIONS = {"local": "gpus", "ray": "num_gpus"}
"""The built-in executors' options that give each job a GPU."""


def _check_job_gpus(config: SweepConfig) -> None:
    """GPUs given to the jobs (the local executor's ``gpus``, Ray's ``num_gpus``) are used:
    not with ``device: cpu`` (every job would train on the CPU beside an idle GPU), and not
    on a machine without one where the jobs run here (the local executor, or a Ray cluster it
    starts here, which would wait for a GPU forever): ``device: auto`` picks the CPU there.
    Other executors' options are theirs to check."""
    options = config.executor.options
    field = JOB_GPU_OPTIONS.get(config.executor.name)
    value = None if field is None else options.get(field)
    if not (value if field == "gpus" else _positive_number(value)):
        return
    given = f"executor.options.{field}: {value!r} gives each job a GPU"
    if config.device == "cpu":
        raise ConfigError(
            f"{given}, but device: 'cpu' trains on the CPU; use device: cuda or auto, or "
            f"leave {field} out"
        )
    runs_here = field == "gpus" or options.get("address") in (None, "local")
    if runs_here and resolved_device(config.device) == "cpu":
        raise ConfigError(
            f"{given}, but torch sees no GPU on this machine, where the jobs run "
            f"(device: {config.device!r} trains on the CPU here); leave {field} out"
        )


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _check_training_options(
    config: SweepConfig, registry: Registry, algorithm: AlgorithmSpec
) -> None:
    """Interventions, learning curves and the transfer method exist, take their options and
    fit the algorithm: checked before anything trains."""
    entries = config.algorithm.interventions
    if entries and not algorithm.interventions:
        names = ", ".join(repr(e.name) for e in entries)
        raise ConfigError(
            f"algorithm.interventions: {algorithm.name!r} cannot host interventions ({names}); "
            "use a batched algorithm (batched-ppo, batched-dqn)"
        )
    build_interventions([{"name": e.name, "options": e.options} for e in entries], registry)
    if config.mode == "multitask":  # its one policy per seed is neither a source nor curved
        if config.transfer.name != TransferConfig().name:
            raise ConfigError(
                f"transfer.name: mode: multitask trains only the multi-task baseline, evaluated "
                f"on every context as it is; {config.transfer.name!r} transfers the sources of "
                "mode: full or select (multitask: true trains the baseline beside them)"
            )
        if config.curves is not None:
            raise ConfigError(
                "curves: mode: multitask records no learning curves (they follow each source "
                "on its own context); drop curves, or use mode: full"
            )
    if config.curves is not None and not algorithm.interventions:
        raise ConfigError(
            f"curves: {algorithm.name!r} does not record learning curves; use a batched "
            "algorithm (batched-ppo, batched-dqn)"
        )
    sweep_methods = [
        name
        for name in registry.names("transfer_method")
        if registry.transfer_method(name).study_command is None
    ]
    try:
        method = registry.transfer_method(config.transfer.name)
    except UnknownNameError:
        raise ConfigError(
            f"transfer.name: no plugin provides the transfer method {config.transfer.name!r}; "
            f"a sweep takes {', '.join(sweep_methods)}"
        ) from None
    if method.study_command is not None:
        raise ConfigError(
            f"transfer.name: {method.name!r} is a study of its own: run `{method.study_command}`; "
            f"a sweep takes {', '.join(sweep_methods)}"
        )
    if method.batched_only and not algorithm.batched:
        raise ConfigError(
            f"transfer.name: {method.name!r} trains target policies and needs a batched "
            f"algorithm; {algorithm.name!r} is not"
        )
    check_options(method.factory, config.transfer.options, f"transfer.options: {method.name!r}")
    if method.joint and (config.executor.shards > 1 or config.mode == "select"):
        why = (
            f"executor.shards: {config.executor.shards} splits them into programs"
            if config.executor.shards > 1
            else "mode: select trains them a step at a time"
        )
        raise ConfigError(
            f"transfer.name: {method.name!r} transfers the sweep's sources together (each "
            f"target learns from all of them), and {why}; use executor.shards: 1 and mode: full"
        )


def _with_options(
    env: EnvSpec, options: dict[str, Any], grid: ContextGrid, batched: bool
) -> EnvSpec:
    """``env`` whose factories take ``options`` (``env_options``): the gymnasium env always,
    the torch twin too (e.g. ``visible: [masscart]`` shows a feature to batched agents).
    Options the twin does not take are an error for a batched algorithm; other algorithms
    never use the twin, so it is dropped."""
    make = functools.partial(env.make, **options)
    try:
        make(grid.contexts[0].as_dict()).close()
    except TypeError as exc:
        unknown = UNEXPECTED_KEYWORD.search(str(exc))
        if unknown is None:
            raise ConfigError(f"env_options: {env.name}: {exc}") from None
        raise ConfigError(f"env_options: {env.name} takes no option {unknown.group(1)!r}") from None
    except CtxrlError as exc:
        raise ConfigError(f"env_options: {exc}") from None
    twin = None
    if env.make_batched is not None:
        twin = functools.partial(env.make_batched, **options)
        try:
            twin(1)
        except (TypeError, ValueError, CtxrlError) as exc:
            if batched:
                raise ConfigError(
                    f"env_options: {sorted(options)} do not apply to the torch twin of "
                    f"{env.name!r} that a batched algorithm trains on: {exc}"
                ) from None
            twin = None
    return dataclasses.replace(env, make=make, make_batched=twin)


def _with_fixed(
    grid: ContextGrid, full: dict[str, float], fixed: Mapping[str, float]
) -> ContextGrid:
    from ctxrl.context import Context

    contexts = tuple(Context({**c.as_dict(), **{k: full[k] for k in fixed}}) for c in grid.contexts)
    return ContextGrid(grid.features, grid.axis_values, contexts)


__all__ = [
    "MAX_CONTEXTS",
    "AlgorithmConfig",
    "AxisConfig",
    "CurvesConfig",
    "ExecutorConfig",
    "InterventionEntry",
    "StrategyConfig",
    "SweepConfig",
    "SweepPlan",
    "TransferConfig",
    "WholeNumber",
    "algorithm_params",
    "apply_overrides",
    "default_config_path",
    "load_config",
    "merge_params",
    "resolve_plan",
    "validate_config",
]
