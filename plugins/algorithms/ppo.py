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
from typing import Any

import torch

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import Activation, NetworkSpec
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl_plugins.training.compiling import check_compile_mode, compile_pays
from ctxrl_plugins.training.hyperparameters import Widths
from ctxrl_plugins.training.log import TrainingLog
from ctxrl_plugins.training.networks import Params, StackedMLP
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.run import TrainingRun
from ctxrl_plugins.training.trainer import (
    BatchedTrainer,
    Count,
    Finite,
    Fraction,
    Rate,
    Weight,
    hyperparameters,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters (per agent)."""

    num_envs: Count = 4
    """environments per agent"""
    num_steps: Count = 128
    """steps per environment between updates"""
    update_epochs: Count = 4
    num_minibatches: Count = 4
    learning_rate: Rate = 2.5e-4
    anneal_lr: bool = True
    gamma: Fraction = 0.99
    gae_lambda: Fraction = 0.95
    clip_coef: Rate = 0.2
    clip_vloss: bool = True
    ent_coef: Weight = 0.01
    vf_coef: Weight = 0.5
    max_grad_norm: Rate = 0.5
    hidden: Widths = 64
    """width of the two hidden layers of actor and critic, or one width per hidden layer
    (``[64, 64]`` is ``64``; batched DQN takes the list form only)"""
    activation: Activation = "tanh"
    init_log_std: Finite = 0.0
    """initial log standard deviation of continuous actions"""
    reward_scale: Rate = 1.0
    """rewards are multiplied by this before learning (evaluation reports raw returns)"""
    rollout_segment: Count = 1
    """rollout steps per call of the step function; it must divide ``num_steps``. Compiled
    (``compile``), one call runs that many steps as one graph: fewer calls (on a GPU with CUDA
    graphs, fewer replays) for a graph that many times larger to compile; the same numbers.
    A gain for long runs or a filled compile cache, a loss for short runs compiled cold, so 1
    stays the default (``benchmarks/RESULTS.md``, "Rollout segments")."""
    compile: str = "off"
    """``on``: the rollout step (actor, sampling, the twin's branch-free step with auto-reset,
    critic), the minibatch loss (forward and, through AOTAutograd, backward) and Adam's
    elementwise update run as ``torch.compile``-d graphs (the loss stays eager while an
    intervention records hidden activations), and so does evaluation; ``off``: eager;
    ``auto``: on where it pays (see :mod:`ctxrl_plugins.training.compiling`)."""


# ---------------------------------------------------------------------------------- networks
def hidden_widths(cfg: PPOConfig) -> tuple[int, ...]:
    """The width of each hidden layer: ``hidden: 64`` is ``(64, 64)``, as ``[64, 64]`` is."""
    return (cfg.hidden, cfg.hidden) if isinstance(cfg.hidden, int) else tuple(cfg.hidden)


def network_specs(
    cfg: PPOConfig, out_dim: int
) -> dict[str, tuple[NetworkSpec, dict[str, tuple[int, float]]]]:
    """Separate actor and critic MLPs (CleanRL's layout): the actor's head has gain 0.01,
    the critic's a single output with gain 1."""
    spec = NetworkSpec(hidden=hidden_widths(cfg), activation=cfg.activation)
    return {"actor": (spec, {"head": (out_dim, 0.01)}), "critic": (spec, {"head": (1, 1.0)})}


def build_networks(
    specs: Mapping[str, NetworkSpec], obs_dim: int, out_dim: int
) -> dict[str, StackedMLP]:
    heads = {"actor": {"head": (out_dim, 0.01)}, "critic": {"head": (1, 1.0)}}
    return {role: StackedMLP(role, spec, obs_dim, heads[role]) for role, spec in specs.items()}


@dataclass
class BatchedPolicies:
    """Trained agents: stacked parameters ``(N, ...)`` and what is needed to act."""

    params: Params
    discrete: bool
    config: PPOConfig
    env: str
    contexts: list[dict[str, float]]
    seeds: list[int]
    networks: dict[str, StackedMLP]
    log: TrainingLog | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def metadata(self) -> dict[str, Any]:
        return {
            "params": asdict(self.config),
            "env": self.env,
            "discrete": self.discrete,
            "contexts": self.contexts,
            "seeds": self.seeds,
            "obs_dim": self.networks["actor"].in_dim,
            "networks": {role: asdict(net.spec) for role, net in self.networks.items()},
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
            self.networks,
            None if self.log is None else self.log.select(indices),
        )

    def actor(self, obs: Tensor) -> Tensor:
        """The actor's output ``(N, M, A)``: logits, or means of continuous actions."""
        return self.networks["actor"](self.params, obs)

    def act(self, obs: Tensor, deterministic: bool, rng: StreamRNG | None = None) -> Tensor:
        """Actions for observations ``(N, M, obs)`` (``N`` agents, ``M`` observations each):
        ``(N, M)`` ints or ``(N, M, dim)``; sampled ones (``deterministic=False``) need the
        agents' random streams, ``rng``."""
        if obs.dim() != 3 or obs.shape[0] != len(self):
            raise CtxrlError(
                f"act takes observations (agents, observations per agent, features) = "
                f"({len(self)}, M, {self.networks['actor'].in_dim}), got {tuple(obs.shape)}"
            )
        return self.act_from(self.actor(obs), deterministic, rng)

    def act_from(self, out: Tensor, deterministic: bool, rng: StreamRNG | None) -> Tensor:
        """Actions from the actor's output ``(N, M, A)`` (logits or means)."""
        if deterministic:
            return out.argmax(dim=-1) if self.discrete else out
        if rng is None:  # it returned the greedy actions without a word
            raise CtxrlError(
                "sampled actions (deterministic=False) need rng: the agents' random streams, "
                "ctxrl.rng.StreamRNG(seeds)"
            )
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
    params: Params, out: Tensor, actions: Tensor, discrete: bool
) -> tuple[Tensor, Tensor]:
    """Log-probability of ``actions`` and the policy's entropy, both ``(N, M)``, from the
    actor's output ``out``."""
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
def _rollout_step(
    run: TrainingRun, params: Params, obs: Tensor, noise: Tensor, gamma: float, reward_scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One rollout step of every agent from observations ``obs`` ``(N, E, obs)`` with this
    step's sampling noise ``noise`` ``(N, E, A)``: the next observations, the actions, their
    log-probabilities, the values of ``obs`` and the rewards (a truncated episode's reward
    plus the discounted value of its last observation) and ``done``, each ``(N, E)`` (actions
    ``(N, E, action_dim)`` when continuous). Free of data-dependent control flow where the twin is
    branch-free, so ``torch.compile`` turns it into one graph."""
    e = run.num_envs
    out = run.networks["actor"](params, obs)
    if run.discrete:
        action = (out + noise).argmax(dim=-1)
    else:
        action = out + params["actor.log_std"].exp()[:, None, :] * noise
    log_prob = _log_prob(params, out, action, run.discrete)
    next_obs, reward, _, truncated, info = run.step_env(action)
    # values of this step's and of the finished episodes' last observations
    both = torch.cat([obs, info["final_obs"]], dim=1)
    values = run.networks["critic"](params, both).squeeze(-1)
    value, final_value = values[:, :e], values[:, e:]
    if reward_scale != 1.0:
        reward = reward * reward_scale
    # a time limit is not a terminal state: bootstrap from the last observation
    reward = reward + gamma * final_value * truncated
    return next_obs, action, log_prob, value, reward, info["done"]


def _rollout_segment(
    run: TrainingRun, params: Params, obs: Tensor, noise: Tensor, gamma: float, reward_scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_rollout_step` ``K`` times, ``K = noise.shape[0]`` (``noise`` ``(K, N, E, A)``):
    the observations after the last step, then each step's observations, actions,
    log-probabilities, values, rewards and ``done``, stacked ``(K, ...)``. One graph when
    compiled (``K`` is static)."""
    steps = []
    for k in range(noise.shape[0]):
        next_obs, *out = _rollout_step(run, params, obs, noise[k], gamma, reward_scale)
        steps.append((obs, *out))
        obs = next_obs
    stacked = [torch.stack(values) for values in zip(*steps, strict=True)]
    return (obs, *stacked)  # type: ignore[return-value]


def _minibatch_loss(
    run: TrainingRun,
    params: Params,
    batch: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    index: Tensor,
    cfg: PPOConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """PPO's per-agent loss ``(N,)`` on the minibatch ``index`` ``(N, B)`` (each agent's own
    sample indices) of the flattened rollout ``batch``: observations ``(N, T E, obs)``,
    actions ``(N, T E)`` (``(N, T E, action_dim)`` when continuous), and the old log-probabilities,
    advantages, returns and values ``(N, T E)``. Clipped surrogate, clipped value loss,
    entropy bonus, advantages normalised per agent. Also returns the minibatch's observations
    ``(N, B, obs)`` and the actor's output on them ``(N, B, A)``, the policy and value losses,
    the entropy, the approximate KL divergence and the clip fraction ``(N,)``, for the
    diagnostics. Gathering the minibatch here puts it inside the compiled graph."""
    agents = torch.arange(index.shape[0], device=index.device)[:, None]
    obs, actions, old_log_prob, advantages, returns, old_values = (
        values[agents, index] for values in batch
    )
    record = run.activations if run.record_activations else None
    out = run.networks["actor"](params, obs, record)
    new_logp, entropy = _log_prob_entropy(params, out, actions, run.discrete)
    new_value = run.networks["critic"](params, obs, record).squeeze(-1)
    log_ratio = new_logp - old_log_prob
    ratio = log_ratio.exp()
    adv = advantages
    adv = (adv - adv.mean(dim=1, keepdim=True)) / (adv.std(dim=1, keepdim=True) + 1e-8)
    pg_loss = torch.max(
        -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
    ).mean(dim=1)
    if cfg.clip_vloss:
        clipped = old_values + (new_value - old_values).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean(dim=1)
    else:
        v_loss = 0.5 * ((new_value - returns) ** 2).mean(dim=1)
    entropy_mean = entropy.mean(dim=1)
    loss = pg_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean(dim=1)
        clip_fraction = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(dim=1)
    return loss, obs, out, pg_loss, v_loss, entropy_mean, approx_kl, clip_fraction


_LOSS_DIAGNOSTICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
"""What :func:`_minibatch_loss` returns after the loss, observations and actor output."""


def _fused_minibatch_loss(
    params: Params,
    run: TrainingRun,
    batch: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    index: Tensor,
    cfg: PPOConfig,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`_minibatch_loss` as :meth:`AgentAdam.fused_step` takes it: the per-agent loss
    and the diagnostics (detached)."""
    loss, _, _, *diagnostics = _minibatch_loss(run, params, batch, index, cfg)
    return loss, tuple(d.detach() for d in diagnostics)


@dataclass
class _Rollout:
    """PPO's per-run state: the rollout buffers, each ``(T, N, E, ...)``."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    dones: Tensor


class BatchedPPO(BatchedTrainer[_Rollout]):
    """The algorithm object the plugin registers (see :class:`ctxrl.registry.Algorithm`)."""

    name = "batched-ppo"
    acting_roles = ("actor",)
    env_seed_salt = 0
    config: PPOConfig

    def __init__(self, params: Mapping[str, Any], *, device: str = "cpu") -> None:
        super().__init__(device)
        self.config = hyperparameters(PPOConfig, params, self.name)
        check_compile_mode(self.name, self.config.compile)
        batch, minibatches = (
            self.config.num_envs * self.config.num_steps,
            self.config.num_minibatches,
        )
        if batch % minibatches:
            raise ConfigError(
                f"algorithm.params.num_minibatches: {self.name} splits each rollout of num_envs x "
                f"num_steps = {batch} samples into equal minibatches; {minibatches} does not "
                "divide it"
            )
        if batch // minibatches < 2:
            raise ConfigError(
                f"algorithm.params.num_minibatches: {minibatches} minibatches of the {batch} "
                "samples of a rollout leave one sample each; the advantages are normalised "
                "over a minibatch, which needs at least two"
            )
        segment, steps = self.config.rollout_segment, self.config.num_steps
        if not isinstance(segment, int) or segment < 1 or steps % segment:
            raise ConfigError(
                f"algorithm.params.rollout_segment: {self.name} needs a positive divisor of "
                f"num_steps ({steps}), got {segment!r}"
            )
        self._compiled_step: Callable[..., tuple[Tensor, ...]] | None = None
        self._compiled_loss: Callable[..., tuple[Tensor, ...]] | None = None

    def steps_per_iteration(self) -> int:
        return self.config.num_envs * self.config.num_steps

    def network_specs(
        self, twin: Any
    ) -> dict[str, tuple[NetworkSpec, dict[str, tuple[int, float]]]]:
        discrete = twin.discrete_actions is not None
        return network_specs(self.config, twin.discrete_actions if discrete else twin.action_dim)

    def extra_params(self, twin: Any) -> Params:
        if twin.discrete_actions is not None:
            return {}
        n = twin.num_envs // self.config.num_envs
        shape = (n, twin.action_dim)  # one standard deviation per action dimension
        return {"actor.log_std": torch.full(shape, self.config.init_log_std, device=twin.device)}

    def optimizer(self, params: Params) -> AgentAdam:
        cfg = self.config
        return AgentAdam(params, lr=cfg.learning_rate, eps=1e-5, max_grad_norm=cfg.max_grad_norm)

    def setup(self, run: TrainingRun, iterations: int) -> _Rollout:
        t, n, e, device = self.config.num_steps, run.num_agents, run.num_envs, self.device
        self._compiled_step = self._compiled_loss = None
        if compile_pays(self.config.compile, device, iterations):
            run.twin.branch_free = True  # the same numbers, without data-dependent indexing
            self._compiled_step = self.compiled(_rollout_segment)
            self._compiled_loss = self.compiled(_minibatch_loss)
            run.optimizer.compile()
        shape = (t, n, e)
        return _Rollout(
            obs=torch.zeros(*shape, run.obs_dim, device=device),
            actions=torch.zeros(
                shape if run.discrete else (*shape, run.twin.action_dim), device=device
            ),
            log_probs=torch.zeros(shape, device=device),
            values=torch.zeros(shape, device=device),
            rewards=torch.zeros(shape, device=device),
            dones=torch.zeros(shape, dtype=torch.bool, device=device),
        )

    def make_policies(
        self,
        params: Params,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        twin: Any,
        specs: Mapping[str, NetworkSpec],
    ) -> BatchedPolicies:
        discrete = twin.discrete_actions is not None
        out_dim = twin.discrete_actions if discrete else twin.action_dim
        return BatchedPolicies(
            params,
            discrete,
            self.config,
            env.name,
            [dict(c) for c in contexts],
            [int(s) for s in seeds],
            build_networks(specs, twin.observation_size, out_dim),
        )

    def iterate(self, run: TrainingRun, buf: _Rollout, iteration: int, iterations: int) -> None:
        cfg, device, params = self.config, self.device, run.params
        n, e, t_steps, discrete = run.num_agents, run.num_envs, cfg.num_steps, run.discrete
        out_dim = buf.actions.shape[-1] if not discrete else run.twin.discrete_actions
        lr = cfg.learning_rate * ((1.0 - iteration / iterations) if cfg.anneal_lr else 1.0)
        critic = run.networks["critic"]
        obs = run.obs
        # ---------------------------------------------------------------------- rollout
        with torch.no_grad():
            # the rollout's noise in one draw: the same numbers as one draw per step
            noise = sampling_noise(run.rng, t_steps, e * out_dim, discrete)
            noise = noise.view(t_steps, n, e, out_dim)
            buffers = (buf.obs, buf.actions, buf.log_probs, buf.values, buf.rewards, buf.dones)
            if self._compiled_step is not None or cfg.rollout_segment > 1:
                k, rollout = cfg.rollout_segment, self._compiled_step or _rollout_segment
                for t in range(0, t_steps, k):  # k steps per call (per graph when compiled)
                    obs, *segment = rollout(
                        run, params, obs, noise[t : t + k], cfg.gamma, cfg.reward_scale
                    )
                    for stored, values in zip(buffers, segment, strict=True):
                        stored[t : t + k] = values
            else:
                for t in range(t_steps):
                    next_obs, *step = _rollout_step(
                        run, params, obs, noise[t], cfg.gamma, cfg.reward_scale
                    )
                    for stored, value in zip(buffers, (obs, *step), strict=True):
                        stored[t] = value
                    obs = next_obs
            run.obs = obs
            run.env_steps += e * t_steps
            # ---------------------------------------------------------------------- GAE
            next_value = critic(params, obs).squeeze(-1)
            next_values = torch.cat([buf.values[1:], next_value[None]])  # (T, N, E)
            not_done = 1.0 - buf.dones.float()
            deltas = buf.rewards + cfg.gamma * next_values * not_done - buf.values
            decay = cfg.gamma * cfg.gae_lambda * not_done
            advantages = torch.empty_like(buf.rewards)
            last, scratch = torch.zeros(n, e, device=device), torch.empty(n, e, device=device)
            # the recursion only (the rest is vectorised), written into each step's row
            steps = zip(deltas.unbind(0), decay.unbind(0), advantages.unbind(0), strict=True)
            for delta, step_decay, advantage in reversed(list(steps)):
                torch.mul(step_decay, last, out=scratch)
                last = torch.add(delta, scratch, out=advantage)
            returns = advantages + buf.values
        # -------------------------------------------------------------------- update
        batch = e * t_steps
        minibatch = batch // cfg.num_minibatches

        def flat(x: Tensor) -> Tensor:
            return x.transpose(0, 1).reshape(n, batch, *x.shape[3:])

        flattened = (
            flat(buf.obs),
            flat(buf.actions),
            flat(buf.log_probs),
            flat(advantages),
            flat(returns),
            flat(buf.values),
        )
        b_ret, b_val = flattened[4], flattened[5]
        self.before_update(run, flattened[0], iteration, iterations)
        minibatch_loss = (
            self._compiled_loss
            if self._compiled_loss is not None and not run.record_activations
            else _minibatch_loss
        )
        # compiled, with nothing to add to the loss or to run around the step: the gradient
        # step, clipping and Adam as one graph
        fused = (
            self._compiled_loss is not None
            and run.fusable
            and type(self).auxiliary_loss is BatchedPPO.auxiliary_loss
        )
        for epoch in range(cfg.update_epochs):
            last_epoch = epoch == cfg.update_epochs - 1
            order = run.rng.permutations(batch)
            for begin in range(0, batch, minibatch):
                index = order[:, begin : begin + minibatch]
                if fused:
                    diagnostics = run.fused_step(
                        _fused_minibatch_loss, run, flattened, index, cfg, lr=lr
                    )
                else:
                    loss, mb_obs, out, *diagnostics = minibatch_loss(
                        run, params, flattened, index, cfg
                    )
                    extra = self.auxiliary_loss(run, mb_obs, out, iteration, iterations)
                    if extra is not None:
                        loss = loss + extra
                    run.optimize(loss, lr)
                if last_epoch:  # CleanRL logs the last epoch's statistics
                    for name, value in zip(_LOSS_DIAGNOSTICS, diagnostics, strict=True):
                        run.record(name, value)
        with torch.no_grad():
            variance = b_ret.var(dim=1)
            explained = 1 - (b_ret - b_val).var(dim=1) / variance
            run.record("explained_variance", torch.where(variance == 0, torch.nan, explained))

    def before_update(self, run: TrainingRun, obs: Tensor, iteration: int, iterations: int) -> None:
        """Called once an iteration, after its rollout and before its first gradient step,
        with the rollout's observations ``obs`` ``(N, num_envs * num_steps, obs)``: states the
        agents have not trained on (kickstarting measures its held-out agreement on them).
        Does nothing by default."""
        del run, obs, iteration, iterations

    def auxiliary_loss(
        self, run: TrainingRun, obs: Tensor, out: Tensor, iteration: int, iterations: int
    ) -> Tensor | None:
        """A per-agent loss ``(N,)`` added to PPO's at every gradient step, from the
        minibatch's observations ``obs`` ``(N, B, obs)`` and the actor's output ``out``
        ``(N, B, A)`` on them (with gradient); None (the default) adds nothing. Kickstarting
        (:mod:`ctxrl_plugins.transfer.distill`) adds its decaying distillation term here."""
        del run, obs, out, iteration, iterations
        return None

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> BatchedPolicies:
        if "networks" not in metadata or "actor.head.weight" not in tensors:
            raise CtxrlError(
                "this batched-ppo artifact was written by an older ctxrl (another parameter "
                "layout); retrain it"
            )
        specs = {role: NetworkSpec.from_dict(s) for role, s in metadata["networks"].items()}
        discrete = bool(metadata["discrete"])
        out_dim = tensors["actor.head.weight"].shape[-1]
        return BatchedPolicies(
            tensors,
            discrete,
            hyperparameters(PPOConfig, metadata["params"], self.name),
            metadata["env"],
            metadata["contexts"],
            metadata["seeds"],
            build_networks(specs, int(metadata["obs_dim"]), out_dim),
        )
