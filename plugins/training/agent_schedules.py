"""Context schedules per agent in a batched training, for
:meth:`~ctxrl_plugins.training.trainer.BatchedTrainer.train_many`: one
:class:`~ctxrl.schedules.ContextSchedule` per agent, checked against the env before anything
trains, and the agents' environments (``E`` each) given their schedule's context when it
switches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ctxrl.errors import CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.schedules import ContextSchedule


def per_agent_schedules(
    schedules: ContextSchedule | Sequence[ContextSchedule] | None,
    n: int,
    env: EnvSpec,
    mixture: Sequence[Mapping[str, float]] | None,
    algorithm: str,
    total_steps: int,
) -> list[ContextSchedule] | None:
    """One schedule per agent (a single schedule is shared), checked against the env: its
    features and every context it sets within ``total_steps`` (cross-feature constraints)."""
    if schedules is None:
        return None
    if mixture is not None:
        raise CtxrlError(
            f"{algorithm}: a context schedule and a mixture both set the contexts; give one"
        )
    listed = [schedules] * n if isinstance(schedules, ContextSchedule) else list(schedules)
    if len(listed) != n:
        raise CtxrlError(f"{algorithm}: {len(listed)} context schedules for {n} agents")
    for index, schedule in enumerate(listed):
        if not isinstance(schedule, ContextSchedule):
            raise CtxrlError(
                f"{algorithm}: schedules[{index}] is a {type(schedule).__name__}, not a "
                "ctxrl.schedules.ContextSchedule"
            )
        if schedule.space.names != env.context_space.names:
            raise CtxrlError(
                f"{algorithm}: schedules[{index}] was built for the context features "
                f"{', '.join(schedule.space.names)}, not {env.name}'s "
                f"({', '.join(env.context_space.names)})"
            )
    checked: set[int] = set()
    for index, schedule in enumerate(listed):
        if id(schedule) not in checked:
            checked.add(id(schedule))
            where = f"{algorithm}: schedules[{index}]" if len(listed) > 1 else algorithm
            schedule.check_contexts(env.check_context, total_steps, f"{where}: schedule")
    return listed


def apply_schedules(
    twin: Any, schedules: Sequence[ContextSchedule], agents: Sequence[int], step: int, e: int
) -> None:
    """Give the environments of ``agents`` (``E`` each) their schedule's context at ``step``
    (one validated ``set_context`` call)."""
    contexts = [schedules[agent].context_at(step) for agent in agents]
    device = twin.device
    env_ids = torch.tensor(
        [agent * e + k for agent in agents for k in range(e)], dtype=torch.int64, device=device
    )
    values = {
        name: torch.tensor(
            [context[name] for context in contexts for _ in range(e)],
            dtype=torch.float64,
            device=device,
        )
        for name in contexts[0]
    }
    twin.set_context(values, env_ids=env_ids)
