"""The ``fine-tune`` transfer method: every source policy trained further on every target.

For P sources and Q targets, P x Q agents start from their source's weights (layers named in
``reinit`` freshly initialised, layers in ``freeze`` not trained), train ``steps`` env steps on
their target in one batched program, and are evaluated there: entry ``(p, q)`` of the sweep's
matrix is source ``p`` fine-tuned on target ``q``. ``steps`` target-env steps are spent per
pair; source training is not counted. Needs a batched algorithm (``train_many(init=...)``).
A sweep with ``curves`` gets each pair's learning curve on its target (``details["curves"]``:
``env_steps`` ``(points,)`` and ``mean_return`` ``(P, Q, points)``, raw returns), drawn in
``figures/transfer_curves``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ctxrl import hookimpl
from ctxrl.context import name_list
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.options import SEED_LIMIT, count_option, steps_option
from ctxrl.registry import EnvSpec, TransferMethodSpec
from ctxrl.transfer import TransferProblem, TransferResult, evaluate_on_own_contexts


class FineTune:
    """Warm-started training of every (source, target) pair, then evaluation on the target.

    Args:
        steps: env steps per (source, target) agent in the target context.
        reinit: layer names or patterns re-initialised before training (e.g. ``actor.head``,
            ``q.head``).
        freeze: layer names or patterns kept as the source's (e.g. ``q.0``).
        seed_offset: added to the source's seed for the target agent's random streams.
    """

    def __init__(
        self,
        steps: int,
        reinit: str | Sequence[str] = (),
        freeze: str | Sequence[str] = (),
        seed_offset: int = 1_000_003,
    ) -> None:
        self.steps = steps_option(steps, "fine-tune: steps")
        self.reinit, self.freeze = name_list(reinit), name_list(freeze)
        self.seed_offset = count_option(
            seed_offset, "fine-tune: seed_offset", minimum=0, maximum=SEED_LIMIT
        )

    def check(self, algorithm: Any, env: EnvSpec) -> None:
        """Every ``reinit`` and ``freeze`` pattern names a layer of the networks ``algorithm``
        trains on ``env``, and an agent can learn in ``steps`` (DQN's ``learning_starts``);
        checked before the sources train."""
        check_layers = getattr(algorithm, "check_layers", None)
        both = sorted(set(self.reinit) & set(self.freeze))
        if check_layers is not None:  # patterns and roles too: `actor.*` and `actor.0`
            reinit = check_layers(env, self.reinit, "reinit") or []
            freeze = check_layers(env, self.freeze, "freeze") or []
            both = both or sorted(set(reinit) & set(freeze))
            self._check_policy_trains(algorithm, env, freeze)
        if both:  # the trainer refuses it too, but only after the sources trained
            raise ConfigError(
                f"fine-tune: {', '.join(both)} both re-initialised (reinit "
                f"{self.reinit}) and frozen (freeze {self.freeze}): a frozen layer keeps the "
                "source's weights; name it in one of them"
            )
        check_budget = getattr(algorithm, "check_budget", None)
        if check_budget is not None:
            try:
                check_budget(self.steps)
            except CtxrlError as exc:
                raise ConfigError(f"steps {self.steps} per (source, target) pair: {exc}") from None

    def _check_policy_trains(self, algorithm: Any, env: EnvSpec, frozen: list[str]) -> None:
        """Refuse a ``freeze`` that keeps every parameter of the roles that act (the
        algorithm's ``acting_roles``; PPO's actor): the fine-tuned policy would be the source's,
        its ``steps`` spent for a zero-shot matrix."""
        if not frozen:
            return
        roles = getattr(algorithm, "acting_roles", None)
        acting = [
            name
            for name in algorithm.check_layers(env, ["*"], "freeze")
            if roles is None or name.split(".", 1)[0] in roles
        ]
        if acting and set(acting) <= set(frozen):
            raise ConfigError(
                f"fine-tune: freeze {self.freeze} keeps every parameter the policy acts with "
                f"({', '.join(sorted({n.split('.', 1)[0] + '.*' for n in acting}))}) as the "
                "source's: fine-tuning could not change the policy and would give the zero-shot "
                "matrix; leave a layer of the policy out of freeze"
            )

    def transfer(self, problem: TransferProblem) -> TransferResult:
        import torch

        sources = problem.sources
        p, q = len(problem.source_contexts), len(problem.targets)
        rows = torch.arange(p).repeat_interleave(q)  # agent p * q + j starts from source p
        init = {k: v[rows.to(v.device)] for k, v in sources.params.items()}
        contexts = [dict(t) for _ in range(p) for t in problem.targets]
        seeds = [s + self.seed_offset for s in problem.source_seeds for _ in range(q)]
        tuned = problem.algorithm.train_many(
            problem.env,
            contexts,
            seeds,
            total_steps=self.steps,
            init=init,
            reinit=self.reinit,
            freeze=self.freeze,
            checkpoint=problem.checkpoint,  # a sweep killed while fine-tuning continues there
            progress=problem.progress,
            **problem.training_options,  # the sources' interventions: the same networks
            **({} if problem.curves is None else {"curves": problem.curves}),
        )
        returns = evaluate_on_own_contexts(problem, tuned, contexts)  # (P * Q, E)
        details: dict[str, Any] = {"reinit": self.reinit, "freeze": self.freeze}
        log = getattr(tuned, "log", None)
        if problem.curves is not None and log is not None and log.curve_steps:
            curve = log.curve()  # (points, P * Q): mean return on its target
            details["curves"] = {
                "env_steps": [int(step) for step in log.curve_steps],
                "mean_return": curve.T.reshape(p, q, -1).tolist(),  # (P, Q, points)
            }
            details["summary"] = (
                f"while fine-tuning, mean return over the pairs {curve[0].mean():.1f} at step 0 "
                f"-> {curve[-1].mean():.1f} at {log.curve_steps[-1]:,} steps (drawn in "
                "figures/transfer_curves)"
            )
        return TransferResult(
            returns.reshape(p, q, problem.episodes),
            # the steps trained: whole iterations of the algorithm
            target_env_steps=problem.algorithm.trained_steps(self.steps),
            details=details,
        )


def _fine_tune(
    steps: int,
    reinit: str | Sequence[str] = (),
    freeze: str | Sequence[str] = (),
    seed_offset: int = 1_000_003,
) -> FineTune:
    return FineTune(steps, reinit, freeze, seed_offset)


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name="fine-tune",
            factory=_fine_tune,
            batched_only=True,
            description="each source trained further on each target (options: steps, reinit, "
            "freeze)",
        )
    )
