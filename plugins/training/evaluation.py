"""Batched evaluation of many agents on many contexts, and the per-agent seeds and context
tensors the torch twins take."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ctxrl.context import Task
from ctxrl.errors import CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl.twins import clip_actions
from ctxrl_plugins.training.compiling import CompiledFunction
from ctxrl_plugins.training.networks import Params

Tensor = torch.Tensor


class Policies(Protocol):
    """What batched evaluation and saving need from trained agents."""

    params: Params
    seeds: list[int]
    discrete: bool

    def __len__(self) -> int: ...

    def act(self, obs: Tensor, deterministic: bool, rng: StreamRNG | None = None) -> Tensor: ...

    def metadata(self) -> dict[str, Any]: ...


def contexts_tensor(
    spec: EnvSpec, contexts: Sequence[Mapping[str, float]], repeat: int, device: torch.device
) -> dict[str, Tensor]:
    full = [spec.context_space.validate(c) for c in contexts]
    return {
        name: torch.tensor(
            [c[name] for c in full], dtype=torch.float32, device=device
        ).repeat_interleave(repeat)
        for name in spec.context_space.names
    }


def context_seed(spec: EnvSpec, context: Mapping[str, float]) -> int:
    """A seed that depends on the context's values only (stable across processes)."""
    digest = Task(spec.name, spec.context_space.validate(context)).id.rsplit("-", 1)[1]
    return int(digest[:12], 16) % (1 << 40)


def env_seeds(seeds: Sequence[int], per_agent: int, salt: int) -> Tensor:
    base = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
    return (base[:, None] * 1_000_003 + salt * 7919 + torch.arange(per_agent)).reshape(-1)


def evaluate_policies(
    policies: Policies,
    env: EnvSpec,
    contexts: Sequence[Mapping[str, float]] | Sequence[Sequence[Mapping[str, float]]],
    *,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    device: torch.device,
    per_policy: bool = False,
    compile: bool = False,
) -> np.ndarray:
    """Returns of P policies on Q contexts, E episodes each, in one batched rollout:
    ``(P, Q, E)``. Episode ``k`` on a context starts from the same state for every policy.

    ``contexts`` is one list of Q contexts for all policies, or with ``per_policy`` a list of
    P lists of Q contexts, policy ``i`` evaluated on ``contexts[i]`` (its own context, for
    learning curves). A policy whose parameters are not all finite gets NaN returns
    (:func:`diverged_agents`). ``compile``: each step (policies' actions, the twin's
    branch-free step, the returns) runs as one ``torch.compile``-d graph, the same numbers up
    to rounding."""
    assert env.make_batched is not None
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 1:
        raise CtxrlError(f"evaluation: episodes must be a whole number >= 1, got {episodes!r}")
    if len(contexts) == 0:
        raise CtxrlError("evaluation: give at least one context to evaluate on")
    p = len(policies)
    lists: list[Sequence[Mapping[str, float]]] = (
        [list(c) for c in contexts]  # type: ignore[arg-type]
        if per_policy
        else [contexts] * p  # type: ignore[list-item]
    )
    if len(lists) != p or len({len(c) for c in lists}) != 1:
        raise ValueError(f"evaluate_policies: need {p} context lists of one length")
    q = len(lists[0])
    per_agent = q * episodes
    flat = [c for contexts_i in lists for c in contexts_i]
    ctx = contexts_tensor(env, flat, episodes, device)
    # episode k on a context starts from a state seeded by (context, k, seed) alone
    starts = torch.tensor(
        [
            context_seed(env, c) + 1009 * k + 1_000_003 * int(seed)
            for c in flat
            for k in range(episodes)
        ],
        dtype=torch.int64,
    )
    twin = env.make_batched(p * per_agent, contexts=ctx, device=device, env_seeds=starts)
    twin.check_actions = False  # an argmax over the policy's actions: valid, unchecked
    trained_on = policies.metadata().get("obs_dim")
    if trained_on is not None and int(trained_on) != twin.observation_size:
        raise CtxrlError(
            f"evaluation: the policies observe {trained_on} features and {env.name}'s twin "
            f"gives {twin.observation_size}: policies of another env (or other visible "
            "features) cannot act here"
        )
    rng = StreamRNG(
        torch.tensor(policies.seeds, dtype=torch.int64, device=device) + 7_777_777 * (int(seed) + 1)
    )
    obs = twin.reset()
    returns = torch.zeros(p * per_agent, dtype=torch.float64, device=device)
    finished = torch.zeros(p * per_agent, dtype=torch.bool, device=device)
    step = _evaluation_step
    if compile:
        twin.branch_free = True  # the same numbers, without data-dependent indexing
        step = CompiledFunction(_evaluation_step)  # in the mode CTXRL_TORCH_COMPILE_MODE names
    with torch.no_grad():
        for _ in range(twin.max_episode_steps):
            obs, returns, finished = step(
                policies, twin, obs, returns, finished, rng, deterministic
            )
            if bool(finished.all()):
                break
    out: np.ndarray = returns.view(p, q, episodes).cpu().numpy()
    out[diverged_agents(policies).cpu().numpy()] = np.nan
    return out


def diverged_agents(policies: Policies) -> Tensor:
    """``(P,)`` whether each agent has a parameter that is not finite (a diverged training).
    Such an agent's returns are NaN: on NaN logits its greedy action is the first one, which
    would otherwise be scored as a policy."""
    p = len(policies)
    flags = [~torch.isfinite(v.reshape(p, -1)).all(dim=1) for v in policies.params.values()]
    return torch.stack(flags).any(dim=0)


def _evaluation_step(
    policies: Policies,
    twin: Any,
    obs: Tensor,
    returns: Tensor,
    finished: Tensor,
    rng: StreamRNG,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of every evaluation env (``B = P x per_agent``): observations ``(B, obs)``
    in, the next observations, the returns ``(B,)`` (float64, each episode's rewards until it
    first ends) and whether each has ended ``(B,)`` out."""
    p, total = len(policies), obs.shape[0]
    action = policies.act(obs.view(p, total // p, -1), deterministic, rng)
    action = action.reshape(total) if policies.discrete else action.reshape(total, -1)
    obs, reward, _, _, info = twin.step(clip_actions(twin, action))
    returns = returns + torch.where(finished, 0.0, reward.double())
    return obs, returns, finished | info["done"]
