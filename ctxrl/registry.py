"""What plugins register, and the registry the host keeps of it.

Each spec is a frozen dataclass with a ``name``. The :class:`Registry` keeps, per kind, the spec
and the plugin that provided it; registering a name twice raises a
:class:`~ctxrl.errors.DuplicateNameError` that names both providers.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from ctxrl.context import Context, ContextSpace, Task
from ctxrl.errors import CtxrlError, DuplicateNameError, PluginError, UnknownNameError

if TYPE_CHECKING:
    from ctxrl.selection import Strategy

ActionSpaceKind = Literal["discrete", "continuous"]
Kind = Literal["env", "algorithm", "strategy", "transfer_method", "intervention", "executor"]
KINDS: tuple[Kind, ...] = (
    "env",
    "algorithm",
    "strategy",
    "transfer_method",
    "intervention",
    "executor",
)


def _check_spec_fields(kind: str, spec: Any, callables: Sequence[str]) -> None:
    """The fields every spec shares: a non-empty string ``name`` and callables where the host
    will call them (a plugin's mistake fails that plugin when it registers, naming the field,
    instead of a command that lists every plugin later)."""
    if not isinstance(spec.name, str) or not spec.name:
        raise PluginError(f"{kind} spec: name must be a non-empty string, got {spec.name!r}")
    for field_name in callables:
        value = getattr(spec, field_name)
        if not callable(value):
            raise PluginError(f"{kind} {spec.name!r}: {field_name} must be callable, got {value!r}")


@dataclass(frozen=True)
class EnvSpec:
    """A contextual environment family.

    Attributes:
        name: registry name, e.g. ``CartPole``; the gymnasium id is ``ctxrl/{name}-v{n}``.
        context_space: the features a context may set, with defaults and bounds.
        make: ``make(context=None, *, visible=(), render_mode=None, **kwargs) -> gymnasium.Env``.
            ``context`` is a partial mapping validated by ``context_space``; ``visible`` names the
            features appended (normalised to [0, 1]) to the observation.
        return_bounds: ``(lower, upper)`` episode returns used to normalise performance.
        action_space: ``discrete`` or ``continuous``.
        make_batched: optional torch twin (a :class:`ctxrl.twins.TorchTwin`),
            ``make_batched(num_envs, *, contexts=None, device="cpu", env_seeds=None,
            **env_options)`` where ``contexts`` maps features to tensors of shape
            ``(num_envs,)`` or to single values and ``env_seeds`` ``(num_envs,)`` int64 seeds
            each env's random stream.
        max_episode_steps: the time limit applied by ``make``.
        gym_id: the id registered with gymnasium, if any.
        description: one line for ``ctxrl envs``.
        concurrent_instances: whether several of its envs may be open at once in one process
            (``False`` for SUMO under libsumo, which runs one simulation per process: an
            algorithm then plays its evaluation episodes one after another).
        check_context: ``check_context(context)`` raises a
            :class:`~ctxrl.context.ContextError` when the features of a full context (every
            feature set, as ``context_space`` validates it) contradict each other, e.g.
            Pendulum's initial speed above its ``max_speed``; a sweep checks every grid point
            with it before anything trains.
    """

    name: str
    context_space: ContextSpace
    make: Callable[..., Any]
    return_bounds: tuple[float, float]
    action_space: ActionSpaceKind
    make_batched: Callable[..., Any] | None = None
    max_episode_steps: int | None = None
    gym_id: str | None = None
    description: str = ""
    concurrent_instances: bool = True
    check_context: Callable[[Context], None] | None = None

    def __post_init__(self) -> None:
        _check_spec_fields("env", self, ["make"])
        for optional in ("make_batched", "check_context"):
            if getattr(self, optional) is not None and not callable(getattr(self, optional)):
                raise PluginError(f"env {self.name!r}: {optional} must be callable or None")
        if not isinstance(self.context_space, ContextSpace):
            raise PluginError(
                f"env {self.name!r}: context_space must be a ctxrl.ContextSpace, got "
                f"{type(self.context_space).__name__}"
            )
        if self.action_space not in ("discrete", "continuous"):
            raise PluginError(
                f"env {self.name!r}: action_space must be 'discrete' or 'continuous', got "
                f"{self.action_space!r}"
            )
        steps = self.max_episode_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise PluginError(
                f"env {self.name!r}: max_episode_steps must be a positive int or None, "
                f"got {steps!r}"
            )
        try:
            lower, upper = (float(bound) for bound in self.return_bounds)
        except (TypeError, ValueError):
            raise PluginError(
                f"env {self.name!r}: return_bounds must be two numbers, got {self.return_bounds!r}"
            ) from None
        if not (np.isfinite(lower) and np.isfinite(upper) and lower < upper):
            raise PluginError(
                f"env {self.name!r}: return_bounds {self.return_bounds} need lower < upper"
            )

    def task(self, context: Mapping[str, object] | None = None) -> Task:
        """A validated :class:`Task` of this env (missing features at their defaults)."""
        return Task(self.name, self.context_space.validate(context))

    def normalise(self, returns: np.ndarray | float) -> np.ndarray:
        """``(returns - lower) / (upper - lower)`` clipped to [0, 1]; NaN stays NaN."""
        lower, upper = self.return_bounds
        return np.clip((np.asarray(returns, dtype=np.float64) - lower) / (upper - lower), 0.0, 1.0)

    def normalise_curves(self, returns: np.ndarray) -> np.ndarray:
        """:meth:`normalise` for learning curves, where a return that is not finite marks a
        diverged training: it is NaN, not clipped to a bound (``+inf`` would read as a
        perfect score)."""
        values = np.asarray(returns, dtype=np.float64)
        finite = np.isfinite(values)
        return np.where(finite, self.normalise(np.where(finite, values, 0.0)), np.nan)


@runtime_checkable
class Algorithm(Protocol):
    """What an algorithm plugin's factory returns.

    ``train`` returns a policy object that only the same algorithm needs to understand;
    ``evaluate`` returns episode returns of shape ``(len(tasks), episodes)``.

    Optionally ``hyperparameters() -> dict``: every hyperparameter it trains with, its defaults
    included (a run directory's plan.yaml records it, and a resume that resolves the same
    config to other values is refused; without it, the params as given are recorded).
    """

    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any: ...

    def evaluate(
        self,
        policy: Any,
        env: EnvSpec,
        tasks: Sequence[Task],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray: ...

    def save(self, policy: Any, path: Path) -> None: ...

    def load(self, path: Path, env: EnvSpec) -> Any: ...


@dataclass(frozen=True)
class CurveOptions:
    """Learning curves requested from a batched training: a deterministic evaluation at step 0,
    at the end of the first iteration at or past each multiple of ``every`` env steps per
    agent, and at the end, ``episodes`` episodes on each of ``contexts`` (None: the agent's
    own context). Both counts are whole numbers >= 1 (:class:`CtxrlError` otherwise)."""

    every: int
    episodes: int = 5
    contexts: tuple[Mapping[str, float], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("every", "episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise CtxrlError(f"curves.{name} must be a whole number >= 1, got {value!r}")

    def describe(self) -> dict[str, Any]:
        """The settings as JSON data (what a checkpoint records, to resume only a training
        that asks for the same curves)."""
        contexts = (
            None
            if self.contexts is None
            else [{str(k): float(v) for k, v in c.items()} for c in self.contexts]
        )
        return {"every": int(self.every), "episodes": int(self.episodes), "contexts": contexts}


@runtime_checkable
class BatchedAlgorithm(Algorithm, Protocol):
    """An algorithm that trains many (context, seed) agents in one program.

    ``train_many`` trains one agent per ``(contexts[i], seeds[i])``, or with ``mixture`` agents
    whose environments draw a context from ``mixture`` at every episode start (multi-task); it
    returns a policies object with ``select(indices)`` (a subset, itself
    usable by ``save`` / ``evaluate``); ``evaluate_many`` returns episode returns of shape
    ``(len(policies), len(contexts), episodes)``, or with ``per_policy=True`` (``contexts`` then
    one list of Q contexts per policy, policy ``i`` evaluated on ``contexts[i]``) of shape
    ``(len(policies), Q, episodes)``."""

    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        checkpoint: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
        mixture: Sequence[Mapping[str, float]] | None = None,
    ) -> Any:
        """Algorithms that declare ``interventions=True`` (the built-in batched trainers)
        also take ``checkpoint_every`` (env steps), ``init`` / ``reinit`` / ``freeze`` (warm
        starts and layer surgery), ``interventions`` and ``curves`` (:class:`CurveOptions`),
        and return policies with a ``log`` (learning curve and diagnostics)."""
        ...

    def evaluate_many(
        self,
        policies: Any,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]] | Sequence[Sequence[Mapping[str, float]]],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
        per_policy: bool = False,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class AlgorithmSpec:
    """A training algorithm.

    Attributes:
        name: registry name used in configs (``ppo``, ``sb3-dqn``).
        factory: ``factory(params: Mapping[str, Any], *, device: str, env: EnvSpec) ->
            Algorithm``; unknown keys in ``params`` must raise an error naming them.
        action_spaces: the action-space kinds it supports.
        batched: True when the factory returns a :class:`BatchedAlgorithm`: a sweep then trains
            all sources of a step in one program (when the env has a batched twin).
        presets: named hyperparameter sets, e.g. per env family.
        interventions: True when ``train_many`` takes ``interventions=`` (and warm starts,
            layer surgery and learning curves: the batched training loop of the built-in
            trainers); sweeps refuse interventions for other algorithms.
        description: one line for ``ctxrl plugins``.
    """

    name: str
    factory: Callable[..., Algorithm]
    action_spaces: frozenset[ActionSpaceKind] = frozenset({"discrete", "continuous"})
    batched: bool = False
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    interventions: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_spec_fields("algorithm", self, ["factory"])
        unknown = set(self.action_spaces) - {"discrete", "continuous"}
        if unknown or not self.action_spaces:
            raise PluginError(
                f"algorithm {self.name!r}: action_spaces must be a non-empty set of 'discrete' "
                f"and 'continuous', got {sorted(self.action_spaces)}"
            )


@dataclass(frozen=True)
class StrategySpec:
    """A source-task selection strategy.

    Attributes:
        name: registry name (``mbtl-gp``, ``random``).
        factory: ``factory(**options) -> Strategy``; unknown options raise an error naming them.
        requires_full_matrix: True for oracles that read the whole transfer matrix (offline only).
        stochastic: True when the order depends on the seed (replayed over several seeds).
        description: one line for ``ctxrl plugins``.
        one_dimensional: True for strategies defined on one varied feature only (a sweep
            over several refuses them before training).

    The strategy may report options through ``resolved_options()``, as
    :class:`InterventionSpec` says.
    """

    name: str
    factory: Callable[..., Strategy]
    requires_full_matrix: bool = False
    stochastic: bool = False
    description: str = ""
    one_dimensional: bool = False

    def __post_init__(self) -> None:
        _check_spec_fields("strategy", self, ["factory"])


@dataclass(frozen=True)
class TransferMethodSpec:
    """How source policies become target policies (``zero-shot``, fine-tuning, distillation).

    Attributes:
        name: registry name used in configs (``transfer: {name: zero-shot}``).
        factory: ``factory(**options) -> TransferMethod`` (see :mod:`ctxrl.transfer`);
            unknown options raise an error naming them.
        batched_only: True when the method trains (fine-tuning, distillation) and so needs a
            batched algorithm; zero-shot works with every algorithm.
        joint: True when one source's result depends on the others (distillation's students
            learn from every source as teachers): the sources of a sweep must be transferred
            together, so such a method needs one program per sweep (``executor.shards: 1``,
            ``mode: full``).
        report: for methods that run studies of their own (``ctxrl transfer ...``):
            ``report(run_dir) -> markdown``, rewriting the study's exports and figures from
            its run directory; ``ctxrl report`` calls it for such directories.
        study_command: for such a study, the command that runs it (``ctxrl plasticity
            STUDY.yaml``): a sweep's ``transfer.name`` refuses the method before anything
            trains and names the command.
        description: one line for ``ctxrl plugins``.

    The method may report options through ``resolved_options()``, as
    :class:`InterventionSpec` says.
    """

    name: str
    factory: Callable[..., Any]
    batched_only: bool = True
    joint: bool = False
    report: Callable[[Path], str] | None = None
    description: str = ""
    study_command: str | None = None

    def __post_init__(self) -> None:
        _check_spec_fields("transfer_method", self, ["factory"])
        for flag in ("batched_only", "joint"):  # "false" would read as true
            if not isinstance(getattr(self, flag), bool):
                raise PluginError(
                    f"transfer_method {self.name!r}: {flag} must be True or False, got "
                    f"{getattr(self, flag)!r}"
                )


@dataclass(frozen=True)
class InterventionSpec:
    """A training-time modifier of the batched trainers (architecture, loss term, after-update
    operator).

    Attributes:
        name: registry name used in ``algorithm.interventions: [{name, options}]``.
        factory: ``factory(**options) -> Intervention`` (see :mod:`ctxrl.interventions`);
            unknown options raise an error naming them.
        description: one line for ``ctxrl plugins``.

    An intervention, strategy or transfer method may report the options it runs with through
    an optional ``resolved_options() -> dict`` method of the object its factory returns:
    those its signature cannot say (a default of ``None`` that another option decides; the
    defaults a wrapper gives what it forwards), ``None`` for one without effect. A run
    directory's record of what its config resolved to (:mod:`ctxrl.resolution`) holds those
    values, so a resume after one changed is refused.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_spec_fields("intervention", self, ["factory"])


class Executor(Protocol):
    """What an executor's factory returns. It may also have a ``close()`` method, which a
    sweep calls once when it ends (however it ends), for what it holds across ``map`` calls
    (a sweep in ``mode: select`` calls ``map`` once per step), e.g. a cluster it started."""

    def map(
        self, fn: Callable[[dict[str, Any]], None], jobs: Iterable[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], BaseException | None]]:
        """Run ``fn(job)`` for every job (JSON data); yield ``(job, None)`` or
        ``(job, error)`` as each ends."""
        ...


@dataclass(frozen=True)
class ExecutorSpec:
    """A way to run the training/evaluation jobs of a sweep.

    ``factory(workers: int, timeout_s: float | None, log_dir: Path | None, **options)``
    (every sweep passes the first three: jobs at a time, a job's wall-clock limit in seconds,
    where job logs go; ``options`` are ``executor.options``) returns an object with
    ``map(fn, jobs) -> Iterator[(job, None | BaseException)]`` yielding every job once, as it
    finishes, with ``None`` or its error (a job never yielded, or yielded done without its run
    stored, is recorded as failed, naming the executor). It may have ``close()``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_spec_fields("executor", self, ["factory"])


Spec = EnvSpec | AlgorithmSpec | StrategySpec | TransferMethodSpec | InterventionSpec | ExecutorSpec

SPEC_TYPES: dict[Kind, type] = {
    "env": EnvSpec,
    "algorithm": AlgorithmSpec,
    "strategy": StrategySpec,
    "transfer_method": TransferMethodSpec,
    "intervention": InterventionSpec,
    "executor": ExecutorSpec,
}


@dataclass(frozen=True)
class Registered:
    spec: Any
    provider: str


class Registry:
    """Specs by kind and name, each with the plugin that provided it."""

    def __init__(self) -> None:
        self._entries: dict[Kind, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.unavailable: list[tuple[str, str]] = []
        """(plugin, reason) of plugins that are missing an optional dependency."""
        self.failed: list[tuple[str, str]] = []
        """plugins that failed to load or register, and why (named when a lookup fails)"""
        self.clashes: list[tuple[Kind, str, str, str]] = []
        """(kind, name, plugin that has it, plugin refused) of each name two plugins
        registered: the second plugin fails, so a contract test of its ``name`` would test
        the first plugin's (:mod:`ctxrl.testing` says so)."""

    def add(self, kind: Kind, spec: Any, provider: str) -> None:
        expected = SPEC_TYPES[kind]
        if not isinstance(spec, expected):
            article = "an" if kind[0] in "aeiou" else "a"
            raise PluginError(
                f"plugin {provider!r} registered a {type(spec).__name__} as {article} "
                f"{kind.replace('_', ' ')}; expected {expected.__name__}"
            )
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {provider!r} registered a {kind} without a name")
        if isinstance(spec, EnvSpec) and len(spec.context_space) == 0:
            raise PluginError(
                f"plugin {provider!r} registered the env {name!r} without context features "
                "(its context_space is empty)"
            )
        existing = self._entries[kind].get(name)
        if existing is not None and existing.provider == provider:
            raise DuplicateNameError(f"plugin {provider!r} registers the {kind} {name!r} twice")
        if existing is not None:
            self.clashes.append((kind, name, existing.provider, provider))
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by both plugin {existing.provider!r} "
                f"and plugin {provider!r}; block one of them (--block NAME)"
            )
        self._entries[kind][name] = Registered(spec, provider)

    def remove_provider(self, provider: str) -> None:
        """Forget everything ``provider`` registered (used when a plugin fails half-way)."""
        for entries in self._entries.values():
            for name in [n for n, r in entries.items() if r.provider == provider]:
                del entries[name]

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._entries[kind])

    def get(self, kind: Kind, name: str) -> Any:
        try:
            return self._entries[kind][name].spec
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            spellings = {n.lower(): n for n in self.names(kind)}
            close = difflib.get_close_matches(name.lower(), spellings, n=2, cutoff=0.7)
            if close:  # a misspelling: plugins missing a dependency are beside the point
                hint = f"; did you mean {' or '.join(repr(spellings[c]) for c in close)}?"
            else:
                hint = "".join(
                    f"; plugin {p!r} is unavailable: {why}" for p, why in self.unavailable
                )
            hint += "".join(f"; plugin {p!r} failed: {why}" for p, why in self.failed)
            raise UnknownNameError(
                f"no plugin provides the {kind.replace('_', ' ')} {name!r}; available: {known}"
                f"{hint}"
            ) from None

    def provider(self, kind: Kind, name: str) -> str:
        self.get(kind, name)
        return self._entries[kind][name].provider

    def provided_by(self, provider: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for kind, entries in self._entries.items():
            names = sorted(n for n, r in entries.items() if r.provider == provider)
            if names:
                out[kind] = names
        return out

    # Typed accessors --------------------------------------------------------------------
    def env(self, name: str) -> EnvSpec:
        spec: EnvSpec = self.get("env", name)
        return spec

    def algorithm(self, name: str) -> AlgorithmSpec:
        spec: AlgorithmSpec = self.get("algorithm", name)
        return spec

    def strategy(self, name: str) -> StrategySpec:
        spec: StrategySpec = self.get("strategy", name)
        return spec

    def transfer_method(self, name: str) -> TransferMethodSpec:
        spec: TransferMethodSpec = self.get("transfer_method", name)
        return spec

    def intervention(self, name: str) -> InterventionSpec:
        spec: InterventionSpec = self.get("intervention", name)
        return spec

    def executor(self, name: str) -> ExecutorSpec:
        spec: ExecutorSpec = self.get("executor", name)
        return spec

    def envs(self) -> list[EnvSpec]:
        return [self.env(n) for n in self.names("env")]


def default_task(env: EnvSpec) -> Task:
    return Task(env.name, env.context_space.default())


__all__ = [
    "KINDS",
    "Algorithm",
    "AlgorithmSpec",
    "Context",
    "EnvSpec",
    "ExecutorSpec",
    "InterventionSpec",
    "Registry",
    "StrategySpec",
    "TransferMethodSpec",
]
