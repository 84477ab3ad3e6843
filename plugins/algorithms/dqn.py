"""Batched DQN: N independent Q-learning agents, one per (context, seed), in one torch program.

DQN (Mnih et al. 2015) with a replay buffer and a target network, following CleanRL's
``dqn.py``; options for Double DQN (van Hasselt et al. 2016, arXiv 1509.06461: the online
network picks the next action, the target network values it) and a dueling head (Wang et al.
2016, arXiv 1511.06581: ``Q = V + A - mean(A)``). Needed by the DQN-transferability studies.

Batching follows :mod:`ctxrl_plugins.algorithms.ppo`: weights ``(N, ...)``, one replay buffer
per agent (stored as ``(N, capacity, ...)``, all agents writing in lockstep), per-agent random
streams for exploration and replay sampling, per-agent losses summed, per-agent gradient
clipping. Agent ``i``'s result does not depend on the other agents in the batch.

Shapes: observations ``(N, M, obs)``; Q-values ``(N, M, actions)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ctxrl.errors import CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl_plugins.training.evaluation import contexts_tensor, env_seeds
from ctxrl_plugins.training.networks import Params, linear, orthogonal
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.trainer import (
    BatchedTrainer,
    hyperparameters,
    restore_training_state,
    save_training_state,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters (per agent). Defaults: CleanRL's DQN for CartPole (``dqn.py``; it
    solves CartPole here: 4 of 4 seeds at 500 after 500k steps, benchmarks/RESULTS.md). The RL
    Zoo's CartPole values (lr 2.3e-3, 128 gradient steps every 256 env steps) are unstable: at
    the Zoo's 50k steps SB3's own DQN solved 2 of 4 seeds here and the batched one none."""

    num_envs: int = 1
    """environments per agent"""
    buffer_size: int = 10_000
    batch_size: int = 128
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    learning_starts: int = 10_000
    """env steps per agent before learning starts"""
    train_frequency: int = 10
    """env steps per agent between training phases"""
    gradient_steps: int = 1
    """gradient steps per training phase"""
    target_network_frequency: int = 500
    """env steps per agent between target-network updates (as in SB3 and CleanRL)"""
    tau: float = 1.0
    """target update rate (1: hard copy)"""
    exploration_fraction: float = 0.5
    start_e: float = 1.0
    end_e: float = 0.05
    hidden: tuple[int, ...] = (120, 84)
    double: bool = False
    dueling: bool = False
    max_grad_norm: float = 10.0
    huber: bool = False
    """True: Huber (smooth L1) loss as SB3; False: squared error as CleanRL"""


def init_q_params(
    seeds: Sequence[int], obs_dim: int, actions: int, cfg: DQNConfig, device: torch.device
) -> Params:
    """Stacked Q-network weights (ReLU MLP, orthogonal init), each agent from its own seed."""
    per_agent: list[Params] = []
    sizes = [obs_dim, *cfg.hidden]
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        p: Params = {}
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            p[f"q.w{layer}"] = orthogonal(fan_in, fan_out, math.sqrt(2), g)
            p[f"q.b{layer}"] = torch.zeros(fan_out)
        p["q.advantage.w"] = orthogonal(sizes[-1], actions, 1.0, g)
        p["q.advantage.b"] = torch.zeros(actions)
        if cfg.dueling:
            p["q.value.w"] = orthogonal(sizes[-1], 1, 1.0, g)
            p["q.value.b"] = torch.zeros(1)
        per_agent.append(p)
    return {k: torch.stack([p[k] for p in per_agent]).to(device) for k in per_agent[0]}


def q_values(params: Params, x: Tensor, layers: int, dueling: bool) -> Tensor:
    """``(N, M, obs) -> (N, M, actions)``."""
    h = x
    for layer in range(layers):
        h = torch.relu(linear(h, params[f"q.w{layer}"], params[f"q.b{layer}"]))
    advantage = linear(h, params["q.advantage.w"], params["q.advantage.b"])
    if not dueling:
        return advantage
    value = linear(h, params["q.value.w"], params["q.value.b"])
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


@dataclass
class QPolicies:
    """Trained Q-networks ``(N, ...)``; greedy actions."""

    params: Params
    config: DQNConfig
    env: str
    contexts: list[dict[str, float]]
    seeds: list[int]
    discrete: bool = True

    def __len__(self) -> int:
        return len(self.seeds)

    def metadata(self) -> dict[str, Any]:
        return {
            "params": asdict(self.config),
            "env": self.env,
            "contexts": self.contexts,
            "seeds": self.seeds,
        }

    def q(self, obs: Tensor) -> Tensor:
        return q_values(self.params, obs, len(self.config.hidden), self.config.dueling)

    def act(self, obs: Tensor, deterministic: bool, rng: StreamRNG | None = None) -> Tensor:
        """Greedy actions ``(N, M)`` (evaluation is greedy: a Q-policy has no other)."""
        del deterministic, rng
        return self.q(obs).argmax(dim=-1)

    def select(self, indices: Sequence[int]) -> QPolicies:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return QPolicies(
            {k: v[index.to(v.device)] for k, v in self.params.items()},
            self.config,
            self.env,
            [self.contexts[i] for i in indices],
            [self.seeds[i] for i in indices],
        )


class BatchedDQN(BatchedTrainer):
    """The algorithm object the plugin registers (see :class:`ctxrl.registry.Algorithm`)."""

    name = "batched-dqn"

    def __init__(self, params: Mapping[str, Any], *, device: str = "cpu") -> None:
        super().__init__(device)
        self.config = hyperparameters(DQNConfig, params, self.name)

    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        checkpoint: Path | None = None,
        checkpoint_every: int = 10_000,
        progress: Callable[[int, int], None] | None = None,
        mixture: Sequence[Mapping[str, float]] | None = None,
    ) -> QPolicies:
        """Train one agent per ``(contexts[i], seeds[i])`` for ``total_steps`` env steps each.

        With ``checkpoint``, the whole state (online and target weights, Adam moments, the
        filled part of every replay buffer, environments, random streams, step) is saved every
        ``checkpoint_every`` env steps per agent and a later call with the same arguments
        continues from it, bit-exactly. With ``mixture``, every environment draws its context
        from ``mixture`` at each episode start (multi-task training)."""
        if env.make_batched is None:
            raise CtxrlError(f"batched-dqn needs a torch-batched twin; env {env.name!r} has none")
        if env.action_space != "discrete":
            raise CtxrlError(f"batched-dqn needs discrete actions; env {env.name!r} is continuous")
        if len(contexts) != len(seeds) or not seeds:
            raise CtxrlError("batched-dqn: give one seed per context (and at least one)")
        cfg, device = self.config, self.device
        n, e = len(seeds), cfg.num_envs
        twin = env.make_batched(
            n * e,
            contexts=contexts_tensor(env, contexts, e, device),
            device=device,
            env_seeds=env_seeds(seeds, e, 1),
        )
        twin.set_context_pool(mixture)  # multi-task: a context per episode from the mixture
        actions, obs_dim = int(twin.discrete_actions), twin.observation_size
        layers = len(cfg.hidden)
        online = init_q_params(seeds, obs_dim, actions, cfg, device)
        target = {k: v.clone() for k, v in online.items()}
        optimizer = AgentAdam(online, lr=cfg.learning_rate, max_grad_norm=cfg.max_grad_norm)
        rng = StreamRNG(torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device))
        capacity = max(1, cfg.buffer_size // e)  # slots per agent, each holding e transitions
        buf_obs = torch.zeros(n, capacity, e, obs_dim, device=device)
        buf_next = torch.zeros(n, capacity, e, obs_dim, device=device)
        buf_act = torch.zeros(n, capacity, e, dtype=torch.long, device=device)
        buf_rew = torch.zeros(n, capacity, e, device=device)
        buf_term = torch.zeros(n, capacity, e, device=device)
        agents = torch.arange(n, device=device)[:, None]
        obs = twin.reset().view(n, e, obs_dim)
        iterations = max(1, total_steps // e)
        explore_steps = cfg.exploration_fraction * iterations * e
        start = 0
        if checkpoint is not None and checkpoint.with_suffix(".safetensors").exists():
            start, last_obs, extra = restore_training_state(checkpoint, optimizer, twin, rng)
            obs = last_obs.view(n, e, obs_dim)
            with torch.no_grad():
                for k in target:
                    target[k].copy_(extra[f"target.{k}"])
                filled = extra["buffer.obs"].shape[1]
                for name, buffer in self._buffers(
                    buf_obs, buf_next, buf_act, buf_rew, buf_term
                ).items():
                    buffer[:, :filled] = extra[f"buffer.{name}"]
        save_every = max(1, checkpoint_every // e)
        report_every = max(1, iterations // 1000)  # progress about a thousand times per run
        for step in range(start, iterations):
            env_steps = step * e
            epsilon = max(
                cfg.end_e,
                cfg.start_e - (cfg.start_e - cfg.end_e) * env_steps / max(explore_steps, 1),
            )
            with torch.no_grad():
                greedy = q_values(online, obs, layers, cfg.dueling).argmax(dim=-1)
                u = rng.uniform(2 * e)
                explore = u[:, :e] < epsilon
                random_action = (u[:, e:] * actions).long().clamp(max=actions - 1)
                action = torch.where(explore, random_action, greedy)
                next_obs, reward, terminated, _, info = twin.step(action.reshape(n * e))
                slot = step % capacity
                buf_obs[:, slot] = obs
                buf_next[:, slot] = info["final_obs"].view(n, e, obs_dim)
                buf_act[:, slot] = action
                buf_rew[:, slot] = reward.view(n, e)
                buf_term[:, slot] = terminated.view(n, e).float()
                obs = next_obs.view(n, e, obs_dim)
            learning = env_steps + e > cfg.learning_starts
            if learning and (step + 1) % max(1, cfg.target_network_frequency // e) == 0:
                with torch.no_grad():
                    for k, v in online.items():
                        target[k].mul_(1.0 - cfg.tau).add_(cfg.tau * v)
            training = learning and (step + 1) % max(1, cfg.train_frequency // e) == 0
            filled = min(step + 1, capacity) * e
            for _ in range(cfg.gradient_steps if training else 0):
                flat = (rng.uniform(cfg.batch_size, dtype=torch.float64) * filled).long()
                slots, envs = flat // e, flat % e
                o = buf_obs[agents, slots, envs]
                o2 = buf_next[agents, slots, envs]
                with torch.no_grad():
                    next_target = q_values(target, o2, layers, cfg.dueling)
                    if cfg.double:
                        chosen = q_values(online, o2, layers, cfg.dueling).argmax(-1, keepdim=True)
                        next_value = next_target.gather(-1, chosen).squeeze(-1)
                    else:
                        next_value = next_target.max(dim=-1).values
                    td_target = buf_rew[agents, slots, envs] + cfg.gamma * next_value * (
                        1.0 - buf_term[agents, slots, envs]
                    )
                q = (
                    q_values(online, o, layers, cfg.dueling)
                    .gather(-1, buf_act[agents, slots, envs].unsqueeze(-1))
                    .squeeze(-1)
                )
                if cfg.huber:
                    loss = torch.nn.functional.smooth_l1_loss(q, td_target, reduction="none")
                else:
                    loss = (q - td_target) ** 2
                optimizer.zero_grad()
                loss.mean(dim=1).sum().backward()  # per-agent losses: gradients never mix
                optimizer.step()
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == iterations):
                progress(step + 1, iterations)
            if checkpoint is not None and (step + 1) % save_every == 0 and step + 1 < iterations:
                filled_slots = min(step + 1, capacity)
                extra = {f"target.{k}": v for k, v in target.items()}
                for name, buffer in self._buffers(
                    buf_obs, buf_next, buf_act, buf_rew, buf_term
                ).items():
                    extra[f"buffer.{name}"] = buffer[:, :filled_slots].contiguous()
                save_training_state(
                    checkpoint,
                    step + 1,
                    optimizer,
                    twin,
                    rng,
                    obs.reshape(n * e, obs_dim),
                    extra,
                )
        optimizer.finish()
        return QPolicies(
            online, cfg, env.name, [dict(c) for c in contexts], [int(s) for s in seeds]
        )

    @staticmethod
    def _buffers(
        obs: Tensor, next_obs: Tensor, action: Tensor, reward: Tensor, terminated: Tensor
    ) -> dict[str, Tensor]:
        """The replay buffers by checkpoint name, each ``(N, capacity, envs, ...)``."""
        return {
            "obs": obs,
            "next_obs": next_obs,
            "action": action,
            "reward": reward,
            "terminated": terminated,
        }

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> QPolicies:
        return QPolicies(
            tensors,
            hyperparameters(DQNConfig, metadata["params"], self.name),
            metadata["env"],
            metadata["contexts"],
            metadata["seeds"],
        )
