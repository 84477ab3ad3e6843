"""Batched PPO: N independent agents, one per (context, seed), trained in one torch program.

PPO with clipped objective and GAE (Schulman et al. 2017, arXiv 1707.06347), following the
CleanRL / PureJaxRL recipe (separate 64-64 tanh actor and critic, orthogonal init, advantage
normalisation per minibatch, clipped value loss, gradient-norm clipping, linear learning-rate
annealing), with truncated episodes bootstrapped from the value of their last observation.

Batching: every weight carries a leading agent dimension ``N`` and layers are batched matrix
products; each agent steps ``num_envs`` environments of a torch-batched twin, all with its own
context. The loss is the sum of per-agent losses, gradient norms are clipped per agent, Adam is
elementwise, and every random number (initial weights, environment resets, actions, minibatch
order) comes from a stream seeded by the agent's own seed: agent ``i`` trains exactly as it
would alone, whatever else shares the batch.

Shapes: observations ``(N, M, obs)``; discrete logits ``(N, M, actions)``; continuous means
``(N, M, action_dim)``; values ``(N, M)``.
"""

from __future__ import annotations

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
from ctxrl_plugins.training.networks import Params, linear, orthogonal, tanh
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.trainer import (
    BatchedTrainer,
    hyperparameters,
    restore_training_state,
    save_training_state,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters (per agent)."""

    num_envs: int = 4
    """environments per agent"""
    num_steps: int = 128
    """steps per environment between updates"""
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    init_log_std: float = 0.0
    """initial log standard deviation of continuous actions"""
    reward_scale: float = 1.0
    """rewards are multiplied by this before learning (evaluation reports raw returns)"""


# ---------------------------------------------------------------------------------- networks
def init_params(
    seeds: Sequence[int],
    obs_dim: int,
    out_dim: int,
    hidden: int,
    discrete: bool,
    init_log_std: float,
    device: torch.device,
) -> Params:
    """Stacked actor and critic weights, each agent initialised from its own seed."""
    per_agent: list[Params] = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        p: Params = {}
        for net, out, gain in (("actor", out_dim, 0.01), ("critic", 1, 1.0)):
            p[f"{net}.w1"] = orthogonal(obs_dim, hidden, math.sqrt(2), g)
            p[f"{net}.w2"] = orthogonal(hidden, hidden, math.sqrt(2), g)
            p[f"{net}.w3"] = orthogonal(hidden, out, gain, g)
            p[f"{net}.b1"] = torch.zeros(hidden)
            p[f"{net}.b2"] = torch.zeros(hidden)
            p[f"{net}.b3"] = torch.zeros(out)
        if not discrete:
            p["actor.log_std"] = torch.full((out_dim,), init_log_std)
        per_agent.append(p)
    return {k: torch.stack([p[k] for p in per_agent]).to(device) for k in per_agent[0]}


def mlp(params: Params, net: str, x: Tensor) -> Tensor:
    """Two tanh layers and a linear head, batched over agents: ``(N, M, in) -> (N, M, out)``."""
    h = tanh(linear(x, params[f"{net}.w1"], params[f"{net}.b1"]))
    h = tanh(linear(h, params[f"{net}.w2"], params[f"{net}.b2"]))
    return linear(h, params[f"{net}.w3"], params[f"{net}.b3"])


@dataclass
class BatchedPolicies:
    """Trained agents: stacked parameters ``(N, ...)`` and what is needed to act."""

    params: Params
    discrete: bool
    config: PPOConfig
    env: str
    contexts: list[dict[str, float]]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.seeds)

    def metadata(self) -> dict[str, Any]:
        return {
            "params": asdict(self.config),
            "env": self.env,
            "discrete": self.discrete,
            "contexts": self.contexts,
            "seeds": self.seeds,
        }

    def select(self, indices: Sequence[int]) -> BatchedPolicies:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return BatchedPolicies(
            {k: v[index.to(v.device)] for k, v in self.params.items()},
            self.discrete,
            self.config,
            self.env,
            [self.contexts[i] for i in indices],
            [self.seeds[i] for i in indices],
        )

    def act(self, obs: Tensor, deterministic: bool, rng: StreamRNG | None = None) -> Tensor:
        """Actions for observations ``(N, M, obs)``: ``(N, M)`` ints or ``(N, M, dim)``."""
        return self.act_from(mlp(self.params, "actor", obs), deterministic, rng)

    def act_from(self, out: Tensor, deterministic: bool, rng: StreamRNG | None) -> Tensor:
        """Actions from the actor's output ``(N, M, A)`` (logits or means)."""
        if deterministic or rng is None:
            return out.argmax(dim=-1) if self.discrete else out
        noise = sampling_noise(rng, 1, out.shape[1] * out.shape[2], self.discrete)[0]
        return self.sample(out, noise.view(out.shape).to(out.dtype))

    def sample(self, out: Tensor, noise: Tensor) -> Tensor:
        """Sampled actions from the actor's output ``(N, M, A)`` and noise of the same shape
        from :func:`sampling_noise` (discrete: Gumbel-max; continuous: mean + std * noise)."""
        if self.discrete:
            return (out + noise).argmax(dim=-1)
        return out + self.params["actor.log_std"].exp()[:, None, :] * noise


def sampling_noise(rng: StreamRNG, calls: int, columns: int, discrete: bool) -> Tensor:
    """``calls`` successive draws of the agents' sampling noise at once, ``(calls, N,
    columns)``: Gumbel noise ``-log(-log(u))`` (``u`` clamped away from 0 and 1) for discrete
    actions, standard normals for continuous ones."""
    if discrete:
        uniform = rng.uniform_calls(calls, columns).clamp(1e-10, 1 - 1e-7)
        return -torch.log(-torch.log(uniform))
    return rng.normal_calls(calls, columns)


def _log_prob(params: Params, out: Tensor, actions: Tensor, discrete: bool) -> Tensor:
    """Log-probability ``(N, M)`` of ``actions`` under the actor's output ``out`` (the rollout's
    half of :func:`_log_prob_entropy`, same arithmetic)."""
    if discrete:
        return torch.log_softmax(out, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    log_std = params["actor.log_std"][:, None, :]
    var = torch.exp(2 * log_std)
    log_prob = -((actions - out) ** 2) / (2 * var) - log_std - 0.5 * math.log(2 * math.pi)
    return log_prob.sum(-1)


def _log_prob_entropy(
    params: Params, obs: Tensor, actions: Tensor, discrete: bool, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Log-probability of ``actions`` and the policy's entropy, both ``(N, M)``; ``out`` is the
    actor's output for ``obs`` when already computed."""
    out = mlp(params, "actor", obs) if out is None else out
    if discrete:
        log_probs = torch.log_softmax(out, dim=-1)
        chosen = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return chosen, entropy
    log_std = params["actor.log_std"][:, None, :]
    var = torch.exp(2 * log_std)
    log_prob = -((actions - out) ** 2) / (2 * var) - log_std - 0.5 * math.log(2 * math.pi)
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).expand_as(out)
    return log_prob.sum(-1), entropy.sum(-1)


# ---------------------------------------------------------------------------------- training
class BatchedPPO(BatchedTrainer):
    """The algorithm object the plugin registers (see :class:`ctxrl.registry.Algorithm`)."""

    name = "batched-ppo"

    def __init__(self, params: Mapping[str, Any], *, device: str = "cpu") -> None:
        super().__init__(device)
        self.config = hyperparameters(PPOConfig, params, self.name)

    # ------------------------------------------------------------------------ training
    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        checkpoint: Path | None = None,
        checkpoint_every: int = 50,
        progress: Callable[[int, int], None] | None = None,
        mixture: Sequence[Mapping[str, float]] | None = None,
    ) -> BatchedPolicies:
        """Train one agent per ``(contexts[i], seeds[i])`` for ``total_steps`` env steps each.

        With ``checkpoint``, the whole state (weights, Adam moments, environments, random
        streams, iteration) is saved every ``checkpoint_every`` updates and a later call with the
        same arguments continues from it. With ``mixture``, every environment draws its context
        uniformly from ``mixture`` at each episode start (multi-task training); ``contexts``
        then only names the agents."""
        if env.make_batched is None:
            raise CtxrlError(f"batched-ppo needs a torch-batched twin; env {env.name!r} has none")
        if len(contexts) != len(seeds) or not seeds:
            raise CtxrlError("batched-ppo: give one seed per context (and at least one)")
        cfg, device = self.config, self.device
        n, e, t_steps = len(seeds), cfg.num_envs, cfg.num_steps
        twin = env.make_batched(
            n * e,
            contexts=contexts_tensor(env, contexts, e, device),
            device=device,
            env_seeds=env_seeds(seeds, e, 0),
        )
        twin.set_context_pool(mixture)
        discrete = twin.discrete_actions is not None
        obs_dim = twin.observation_size
        out_dim = twin.discrete_actions if discrete else 1
        params = init_params(
            seeds, obs_dim, out_dim, cfg.hidden, discrete, cfg.init_log_std, device
        )
        optimizer = AgentAdam(
            params, lr=cfg.learning_rate, eps=1e-5, max_grad_norm=cfg.max_grad_norm
        )
        rng = StreamRNG(torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device))
        iterations = max(1, total_steps // (e * t_steps))
        obs = twin.reset().view(n, e, obs_dim)
        start = 0
        if checkpoint is not None and checkpoint.with_suffix(".safetensors").exists():
            start, obs, _ = restore_training_state(checkpoint, optimizer, twin, rng)
            obs = obs.view(n, e, obs_dim)
        policies = BatchedPolicies(
            params, discrete, cfg, env.name, [dict(c) for c in contexts], [int(s) for s in seeds]
        )
        batch = e * t_steps
        minibatch = batch // cfg.num_minibatches
        agents = torch.arange(n, device=device)[:, None]
        for iteration in range(start, iterations):
            lr = cfg.learning_rate * ((1.0 - iteration / iterations) if cfg.anneal_lr else 1.0)
            # ------------------------------------------------------------------ rollout
            buf_obs = torch.zeros(t_steps, n, e, obs_dim, device=device)
            buf_act = torch.zeros(
                (t_steps, n, e) if discrete else (t_steps, n, e, out_dim), device=device
            )
            buf_logp = torch.zeros(t_steps, n, e, device=device)
            buf_val = torch.zeros(t_steps, n, e, device=device)
            buf_rew = torch.zeros(t_steps, n, e, device=device)
            buf_done = torch.zeros(t_steps, n, e, dtype=torch.bool, device=device)
            with torch.no_grad():
                # the rollout's noise in one draw: the same numbers as one draw per step
                noise = sampling_noise(rng, t_steps, e * out_dim, discrete)
                noise = noise.view(t_steps, n, e, out_dim)
                for t in range(t_steps):
                    buf_obs[t] = obs
                    out = mlp(params, "actor", obs)
                    action = policies.sample(out, noise[t])
                    buf_logp[t] = _log_prob(params, out, action, discrete)
                    buf_act[t] = action
                    step_action = action.reshape(n * e) if discrete else action.reshape(n * e, -1)
                    next_obs, reward, _, truncated, info = twin.step(step_action)
                    # values of this step's and of the finished episodes' last observations
                    both = torch.cat([obs, info["final_obs"].view(n, e, obs_dim)], dim=1)
                    values = mlp(params, "critic", both).squeeze(-1)
                    buf_val[t], final_value = values[:, :e], values[:, e:]
                    reward = reward.view(n, e)
                    if cfg.reward_scale != 1.0:
                        reward = reward * cfg.reward_scale
                    # a time limit is not a terminal state: bootstrap from the last observation
                    reward = reward + cfg.gamma * final_value * truncated.view(n, e)
                    buf_rew[t] = reward
                    buf_done[t] = info["done"].view(n, e)
                    obs = next_obs.view(n, e, obs_dim)
                # ------------------------------------------------------------------ GAE
                next_value = mlp(params, "critic", obs).squeeze(-1)
                next_values = torch.cat([buf_val[1:], next_value[None]])  # (T, N, E)
                not_done = 1.0 - buf_done.float()
                deltas = buf_rew + cfg.gamma * next_values * not_done - buf_val
                decay = cfg.gamma * cfg.gae_lambda * not_done
                advantages = torch.zeros_like(buf_rew)
                last = torch.zeros(n, e, device=device)
                for t in reversed(range(t_steps)):  # the recursion only; the rest is vectorised
                    last = deltas[t] + decay[t] * last
                    advantages[t] = last
                returns = advantages + buf_val
            # ---------------------------------------------------------------- update
            flat = lambda x: x.transpose(0, 1).reshape(n, batch, *x.shape[3:])  # noqa: E731
            b_obs, b_act, b_logp = flat(buf_obs), flat(buf_act), flat(buf_logp)
            b_adv, b_ret, b_val = flat(advantages), flat(returns), flat(buf_val)
            for _ in range(cfg.update_epochs):
                order = rng.uniform(batch, dtype=torch.float64).argsort(dim=1, stable=True)
                for begin in range(0, batch, minibatch):
                    idx = order[:, begin : begin + minibatch]
                    mb_obs = b_obs[agents, idx]
                    new_logp, entropy = _log_prob_entropy(
                        params, mb_obs, b_act[agents, idx], discrete
                    )
                    new_value = mlp(params, "critic", mb_obs).squeeze(-1)
                    ratio = (new_logp - b_logp[agents, idx]).exp()
                    adv = b_adv[agents, idx]
                    adv = (adv - adv.mean(dim=1, keepdim=True)) / (
                        adv.std(dim=1, keepdim=True) + 1e-8
                    )
                    pg_loss = torch.max(
                        -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
                    ).mean(dim=1)
                    ret = b_ret[agents, idx]
                    if cfg.clip_vloss:
                        old = b_val[agents, idx]
                        clipped = old + (new_value - old).clamp(-cfg.clip_coef, cfg.clip_coef)
                        v_loss = 0.5 * torch.max((new_value - ret) ** 2, (clipped - ret) ** 2).mean(
                            dim=1
                        )
                    else:
                        v_loss = 0.5 * ((new_value - ret) ** 2).mean(dim=1)
                    loss = pg_loss - cfg.ent_coef * entropy.mean(dim=1) + cfg.vf_coef * v_loss
                    optimizer.zero_grad()
                    loss.sum().backward()  # per-agent losses: gradients never mix
                    optimizer.step(lr)
            if progress is not None:
                progress(iteration + 1, iterations)
            if checkpoint is not None and (iteration + 1) % checkpoint_every == 0:
                save_training_state(
                    checkpoint,
                    iteration + 1,
                    optimizer,
                    twin,
                    rng,
                    obs.reshape(n * e, obs_dim),
                )
        optimizer.finish()
        return policies

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> BatchedPolicies:
        return BatchedPolicies(
            tensors,
            bool(metadata["discrete"]),
            hyperparameters(PPOConfig, metadata["params"], self.name),
            metadata["env"],
            metadata["contexts"],
            metadata["seeds"],
        )
