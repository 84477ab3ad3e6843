"""A single-agent PPO loop in plain PyTorch (``nn.Module`` networks, ``torch.optim.Adam``), the
baseline that plasticity studies are timed against: what a researcher writes to run one
(context schedule, seed, intervention) agent at a time, as the published plasticity codes do.

It follows CleanRL's ``ppo.py`` (the same algorithm and hyperparameters as ctxrl's
``batched-ppo``: ``PPOConfig``), steps the same torch twin (one agent's ``num_envs``
environments, so env stepping costs the same) and switches contexts on the same schedule. It is
a timing baseline, not part of ctxrl: it implements no intervention (an intervention adds work
to both sides) and records no plasticity metric.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ctxrl.registry import EnvSpec
from ctxrl.schedules import ContextSchedule
from ctxrl_plugins.algorithms.ppo import PPOConfig, hidden_widths
from ctxrl_plugins.training.evaluation import contexts_tensor, env_seeds


def _mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    act = nn.ReLU if activation == "relu" else nn.Tanh
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2.0**0.5)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(act())
    return nn.Sequential(*layers)


def train_one(
    env: EnvSpec,
    schedule: ContextSchedule,
    seed: int,
    config: PPOConfig,
    total_steps: int,
) -> dict[str, Any]:
    """Train one discrete-action agent; returns its wall time (s), env steps and the mean
    return of the episodes finished in the last 10 % of training."""
    torch.manual_seed(seed)
    e, device = config.num_envs, torch.device("cpu")
    twin: Any = env.make_batched(
        e,
        contexts=contexts_tensor(env, [schedule.context_at(0).as_dict()], e, device),
        device=device,
        env_seeds=env_seeds([seed], e, 0),
    )
    obs_dim, actions = twin.observation_size, int(twin.discrete_actions)
    hidden = list(hidden_widths(config))
    actor = _mlp([obs_dim, *hidden, actions], config.activation, 0.01)
    critic = _mlp([obs_dim, *hidden, 1], config.activation, 1.0)
    params = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, eps=1e-5)
    t_steps = config.num_steps
    batch = e * t_steps
    minibatch = batch // config.num_minibatches
    iterations = max(1, total_steps // batch)
    obs = twin.reset()
    buf_obs = torch.zeros(t_steps, e, obs_dim)
    buf_act = torch.zeros(t_steps, e, dtype=torch.long)
    buf_logp, buf_rew, buf_done, buf_val = (torch.zeros(t_steps, e) for _ in range(4))
    episode_return, finished = torch.zeros(e), []
    start, steps = time.perf_counter(), 0
    for iteration in range(iterations):
        lr = config.learning_rate * ((1.0 - iteration / iterations) if config.anneal_lr else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            for t in range(t_steps):
                buf_obs[t] = obs
                dist = torch.distributions.Categorical(logits=actor(obs))
                action = dist.sample()
                buf_act[t], buf_logp[t] = action, dist.log_prob(action)
                buf_val[t] = critic(obs).squeeze(-1)
                obs, reward, _, truncated, info = twin.step(action)
                final_value = critic(info["final_obs"]).squeeze(-1)
                buf_rew[t] = reward * config.reward_scale + config.gamma * final_value * truncated
                buf_done[t] = info["done"].float()
                episode_return += reward
                if steps >= 0.9 * iterations * batch:
                    finished += episode_return[info["done"]].tolist()
                episode_return = torch.where(info["done"], 0.0, episode_return)
            steps += batch
            before = steps - batch
            if schedule.switch_steps(before, steps):
                twin.set_context(schedule.context_at(steps).as_dict())
            next_value = critic(obs).squeeze(-1)
            advantages = torch.zeros_like(buf_rew)
            last = torch.zeros(e)
            for t in reversed(range(t_steps)):
                following = next_value if t == t_steps - 1 else buf_val[t + 1]
                not_done = 1.0 - buf_done[t]
                delta = buf_rew[t] + config.gamma * following * not_done - buf_val[t]
                last = delta + config.gamma * config.gae_lambda * not_done * last
                advantages[t] = last
            returns = advantages + buf_val
        b_obs, b_act, b_logp = buf_obs.reshape(batch, -1), buf_act.reshape(-1), buf_logp.reshape(-1)
        b_adv, b_ret, b_val = advantages.reshape(-1), returns.reshape(-1), buf_val.reshape(-1)
        for _ in range(config.update_epochs):
            order = torch.randperm(batch)
            for begin in range(0, batch, minibatch):
                idx = order[begin : begin + minibatch]
                dist = torch.distributions.Categorical(logits=actor(b_obs[idx]))
                new_logp, entropy = dist.log_prob(b_act[idx]), dist.entropy()
                ratio = (new_logp - b_logp[idx]).exp()
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                clipped_ratio = ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
                pg_loss = torch.max(-adv * ratio, -adv * clipped_ratio).mean()
                value = critic(b_obs[idx]).squeeze(-1)
                clipped = b_val[idx] + (value - b_val[idx]).clamp(
                    -config.clip_coef, config.clip_coef
                )
                v_loss = 0.5 * torch.max((value - b_ret[idx]) ** 2, (clipped - b_ret[idx]) ** 2)
                loss = pg_loss - config.ent_coef * entropy.mean() + config.vf_coef * v_loss.mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
    return {
        "seconds": time.perf_counter() - start,
        "env_steps": steps,
        "final_return": float(np.mean(finished)) if finished else float("nan"),
    }
