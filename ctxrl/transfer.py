"""Transfer methods: how trained source policies become policies for target contexts.

A sweep trains source policies, hands them to its transfer method (``transfer: {name,
options}`` in the config, ``zero-shot`` by default) and stores what the method reports as the
transfer matrix: entry ``(p, q)`` is the performance on target ``q`` of the policy the method
made from source ``p``. Zero-shot evaluates each source as it is; fine-tuning and distillation
plugins train target policies first (with the batched trainers' warm starts) and say how many
target-env steps that took.

Register methods with ``ctxrl_register_transfer_methods`` (a
:class:`~ctxrl.registry.TransferMethodSpec` whose factory returns a :class:`TransferMethod`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from ctxrl.registry import CurveOptions, EnvSpec


@dataclass
class TransferProblem:
    """What a transfer method receives.

    Attributes:
        env: the env family (sources and targets are contexts of it).
        algorithm: the algorithm object that trained the sources (``train_many`` /
            ``evaluate_many`` for batched algorithms, ``evaluate`` for all).
        sources: the source policies: a batched policies object of P agents, or for
            per-run algorithms a list of P policy objects.
        source_contexts: the P source contexts (feature -> value).
        source_seeds: the P sources' training seeds.
        targets: the Q target contexts.
        episodes: evaluation episodes per (policy, target).
        eval_seed: seed of the evaluation episodes.
        training_options: the keyword arguments of ``train_many`` the sources trained with
            (a sweep's interventions, fresh objects): a method that trains the sources further
            passes them on, so that its networks are the sources' (``layer-norm``, ``crelu``)
            and the same interventions act on them.
        checkpoint: where a method that trains may checkpoint that training (a path without
            suffix, for ``train_many(checkpoint=...)``), so that a sweep killed during it
            continues there; None: no checkpoint. A method that trains twice names the other
            training's checkpoint after it (``{checkpoint}-proxy``: a path with a dot would
            lose its suffix). The caller removes both kinds of files when the results are
            stored.
        progress: ``progress(done, total)`` for a method that trains, as ``train_many``
            takes it (iterations done of the total): the sweep's progress bar; None: none.
        curves: the sweep's ``curves`` (``train_many(curves=...)``) for a method that trains
            and can record its own training's learning curves, in its details (``fine-tune``:
            ``details["curves"]``); None: the sweep records none.
    """

    env: EnvSpec
    algorithm: Any
    sources: Any
    source_contexts: list[dict[str, float]]
    source_seeds: list[int]
    targets: list[dict[str, float]]
    episodes: int
    eval_seed: int
    training_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    progress: Callable[[int, int], None] | None = None
    curves: CurveOptions | None = None


@dataclass
class TransferResult:
    """What a transfer method returns.

    Attributes:
        returns: ``(P, Q, E)`` episode returns of the policy made from source ``p`` on target
            ``q`` (raw, not normalised).
        target_env_steps: environment steps in target contexts the method used per (source,
            target) pair (0 for zero-shot).
        details: anything else worth storing, as JSON data.
    """

    returns: np.ndarray
    target_env_steps: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TransferMethod(Protocol):
    """Turns source policies into target policies and measures them on the targets.

    A method may also define ``check(algorithm, env) -> None``: a sweep calls it with the
    algorithm object it will train the sources with and its env before anything trains, so
    that options the algorithm cannot carry out (a layer name its networks lack, a student
    hyperparameter it refuses) raise a :class:`~ctxrl.errors.CtxrlError` then, not after the
    sources have trained. Likewise an optional ``check_contexts(sources, targets) -> None``
    receives the source and target contexts (lists of feature -> value mappings; in a sweep
    both are its grid's contexts), for what they must satisfy."""

    def transfer(self, problem: TransferProblem) -> TransferResult: ...


def evaluate_sources(
    problem: TransferProblem,
    policies: Any | None = None,
    targets: Sequence[Mapping[str, float]] | None = None,
) -> np.ndarray:
    """``(P, Q, E)`` returns of ``policies`` (default: the sources) on ``targets`` (default:
    the problem's), batched when the algorithm can."""
    import numpy as np

    from ctxrl.context import Task

    policies = problem.sources if policies is None else policies
    contexts = [dict(t) for t in (problem.targets if targets is None else targets)]
    algorithm = problem.algorithm
    if hasattr(algorithm, "evaluate_many") and not isinstance(policies, list):
        return np.asarray(
            algorithm.evaluate_many(
                policies,
                problem.env,
                contexts,
                episodes=problem.episodes,
                seed=problem.eval_seed,
            ),
            dtype=np.float64,
        )
    tasks = [Task(problem.env.name, problem.env.context_space.validate(c)) for c in contexts]
    return np.stack(
        [
            np.asarray(
                algorithm.evaluate(
                    policy,
                    problem.env,
                    tasks,
                    episodes=problem.episodes,
                    seed=problem.eval_seed + seed,
                    deterministic=True,
                ),
                dtype=np.float64,
            )
            for policy, seed in zip(policies, problem.source_seeds, strict=True)
        ]
    )


def evaluate_on_own_contexts(
    problem: TransferProblem, policies: Any, contexts: Sequence[Mapping[str, float]]
) -> np.ndarray:
    """``(N, E)`` returns of each of N policies on its own context: policy ``i`` (of
    ``policies``, a batched policies object of N agents or, for per-run algorithms, a list of N
    policy objects) on ``contexts[i]``, ``problem.episodes`` episodes each, seeded by
    ``problem.eval_seed``. What a method that trains one policy per (source, target) pair
    measures them with: in one batched rollout where the algorithm can."""
    import numpy as np

    from ctxrl.context import Task

    algorithm = problem.algorithm
    if len(policies) != len(contexts):
        raise ValueError(
            f"evaluate_on_own_contexts: {len(policies)} policies for {len(contexts)} contexts"
        )
    if hasattr(algorithm, "evaluate_many") and not isinstance(policies, list):
        if _takes(algorithm.evaluate_many, "per_policy"):
            returns = algorithm.evaluate_many(
                policies,
                problem.env,
                [[dict(c)] for c in contexts],
                episodes=problem.episodes,
                seed=problem.eval_seed,
                per_policy=True,
            )  # (N, 1, E)
            return np.asarray(returns, dtype=np.float64)[:, 0]
        # an algorithm written before per_policy: every policy on every context, the diagonal
        every = algorithm.evaluate_many(
            policies,
            problem.env,
            [dict(c) for c in contexts],
            episodes=problem.episodes,
            seed=problem.eval_seed,
        )  # (N, N, E)
        index = np.arange(len(contexts))
        return np.asarray(every, dtype=np.float64)[index, index]
    space = problem.env.context_space
    return np.stack(
        [
            np.asarray(
                algorithm.evaluate(
                    policy,
                    problem.env,
                    [Task(problem.env.name, space.validate(dict(context)))],
                    episodes=problem.episodes,
                    seed=problem.eval_seed,
                    deterministic=True,
                ),
                dtype=np.float64,
            ).reshape(problem.episodes)
            for policy, context in zip(policies, contexts, strict=True)
        ]
    )


def _takes(function: Any, name: str) -> bool:
    """Whether ``function`` takes the keyword ``name`` (or any keyword)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


__all__ = [
    "TransferMethod",
    "TransferProblem",
    "TransferResult",
    "evaluate_on_own_contexts",
    "evaluate_sources",
]
