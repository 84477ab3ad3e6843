"""``scratch``: a transfer method that ignores the sources and trains a fresh agent on each
target, the baseline every transfer method that trains is measured against.

Entry ``(p, q)`` of the sweep's matrix is a new agent, seeded from source ``p``'s seed, trained
``steps`` env steps on target ``q`` and evaluated there. Put a ``fine-tune`` sweep and a
``scratch`` sweep with the same ``steps`` side by side and the difference of their matrices is
what starting from a source is worth at that target budget (the jumpstart of transfer studies).

It shows the parts of ctxrl's transfer API a method that trains uses: ``problem.algorithm``
(the batched algorithm that trained the sources: ``train_many`` and ``trained_steps``),
``problem.training_options`` (the sweep's interventions, passed on so the new agents are the
sources' kind of network), ``problem.checkpoint`` (a sweep killed during the training resumes
it) and :func:`ctxrl.transfer.evaluate_on_own_contexts`.
"""

from __future__ import annotations

from typing import Any

from ctxrl import CtxrlError
from ctxrl.transfer import TransferProblem, TransferResult, evaluate_on_own_contexts

SEED_OFFSET = 2_000_003
"""Added to a source's seed for the new agents' seeds, so that a ``scratch`` agent is not the
source's own training over again when a target is the source's context."""


class Scratch:
    """A fresh agent per (source, target) pair, trained on the target alone.

    Args:
        steps: env steps per agent in its target context (> 0).
    """

    def __init__(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise CtxrlError(f"scratch: steps must be a whole number > 0, got {steps!r}")
        self.steps = steps

    def check(self, algorithm: Any, env: Any) -> None:
        """Called by a sweep before any source trains: an agent of ``algorithm`` must be able to
        learn in ``steps`` (e.g. DQN's ``learning_starts``)."""
        del env
        check_budget = getattr(algorithm, "check_budget", None)
        if check_budget is not None:
            check_budget(self.steps)

    def transfer(self, problem: TransferProblem) -> TransferResult:
        p, q = len(problem.source_contexts), len(problem.targets)
        # agent p * Q + j: source p's seed, target j
        contexts = [dict(target) for _ in range(p) for target in problem.targets]
        seeds = [seed + SEED_OFFSET for seed in problem.source_seeds for _ in range(q)]
        policies = problem.algorithm.train_many(
            problem.env,
            contexts,
            seeds,
            total_steps=self.steps,
            checkpoint=problem.checkpoint,
            progress=problem.progress,  # the sweep's progress bar
            **problem.training_options,
        )
        returns = evaluate_on_own_contexts(problem, policies, contexts)  # (P * Q, E)
        return TransferResult(
            returns.reshape(p, q, problem.episodes),
            target_env_steps=problem.algorithm.trained_steps(self.steps),
            details={"steps": self.steps, "seed_offset": SEED_OFFSET},
        )
