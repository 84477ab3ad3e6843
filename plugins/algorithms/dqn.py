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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import torch
from pydantic import Field

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import Activation, NetworkSpec
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl_plugins.training.compiling import check_compile_mode, compile_pays
from ctxrl_plugins.training.log import TrainingLog
from ctxrl_plugins.training.networks import Params, StackedMLP, injection_name
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.run import TrainingRun
from ctxrl_plugins.training.trainer import (
    BatchedTrainer,
    Count,
    Fraction,
    Rate,
    Steps,
    hyperparameters,
)

Tensor = torch.Tensor


DQN_CPU_COMPILE_MIN_ITERATIONS = 300_000
"""``compile: auto`` compiles batched DQN on the CPU from this many iterations (env steps per
agent and env) on: compiling saves little per DQN env step on the CPU, so the threshold sits
above every cold-cache break-even point ``benchmarks/bench_compile.py`` measured
(benchmarks/RESULTS.md, "Compiled training")."""


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters (per agent). Defaults: CleanRL's DQN for CartPole (``dqn.py``; it
    solves CartPole here: 4 of 4 seeds at 500 after 500k steps, benchmarks/RESULTS.md). The RL
    Zoo's CartPole values (lr 2.3e-3, 128 gradient steps every 256 env steps) are unstable: at
    the Zoo's 50k steps SB3's own DQN solved 2 of 4 seeds here and the batched one none.

    Where it departs from CleanRL's ``dqn.py``: gradients are clipped to a norm of 10 per
    agent by default (SB3's ``max_grad_norm``; CleanRL does not clip: ``max_grad_norm: null``),
    exploration draws one coin per environment (as SB3; CleanRL one for all its envs, the same
    at the default ``num_envs`` 1), and an iteration that updates the target network does so
    before its gradient steps (CleanRL after them: the target here is one gradient step
    older at each update)."""

    num_envs: Count = 1
    """environments per agent"""
    buffer_size: Count = 10_000
    batch_size: Count = 128
    learning_rate: Rate = 2.5e-4
    gamma: Fraction = 0.99
    learning_starts: Steps = 10_000
    """env steps per agent before learning starts"""
    train_frequency: Count = 10
    """env steps per agent between training phases, counted in whole iterations of
    ``num_envs`` steps (every ``max(1, train_frequency // num_envs)`` iterations)"""
    gradient_steps: Count = 1
    """gradient steps per training phase"""
    target_network_frequency: Count = 500
    """env steps per agent between target-network updates (as in SB3 and CleanRL), counted
    in whole iterations as ``train_frequency``"""
    tau: Annotated[float, Field(gt=0, le=1, strict=True)] = 1.0
    """target update rate in (0, 1] (1: hard copy; 0 would never update the target)"""
    exploration_fraction: Fraction = 0.5
    start_e: Fraction = 1.0
    """exploration rate at the start, decaying linearly to ``end_e`` (``start_e >= end_e``)"""
    end_e: Fraction = 0.05
    hidden: tuple[Count, ...] = (120, 84)
    double: bool = False
    dueling: bool = False
    max_grad_norm: Rate | None = 10.0
    """per-agent gradient clipping norm (SB3's 10); None: no clipping, as CleanRL"""
    huber: bool = False
    """True: Huber (smooth L1) loss as SB3; False: squared error as CleanRL"""
    activation: Activation = "relu"
    compile: str = "off"
    """``on``: each env step (greedy actions, exploration, the twin's branch-free step with
    auto-reset), the TD loss (forward and, through AOTAutograd, backward) and Adam's
    elementwise update run as ``torch.compile``-d graphs (the loss stays eager while an
    intervention records hidden activations), and so does evaluation; ``off``: eager;
    ``auto``: on where it pays (see :mod:`ctxrl_plugins.training.compiling`)."""


def network_spec(cfg: DQNConfig, actions: int) -> tuple[NetworkSpec, dict[str, tuple[int, float]]]:
    """The Q-network: an MLP with an advantage head (the Q-values without dueling) and, with
    dueling, a value head; orthogonal init with gain sqrt(2) inside, 1 at the heads."""
    heads = {"head": (actions, 1.0)}
    if cfg.dueling:
        heads["value"] = (1, 1.0)
    spec = NetworkSpec(hidden=tuple(cfg.hidden), activation=cfg.activation)
    return spec, heads


def q_values(
    net: StackedMLP,
    params: Params,
    x: Tensor,
    dueling: bool,
    record: dict[str, Tensor] | None = None,
) -> Tensor:
    """``(N, M, obs) -> (N, M, actions)``."""
    if not dueling:
        return net.outputs(params, x, ["head"], record)[0]
    advantage, value = net.outputs(params, x, ["head", "value"], record)
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


def _act_and_step(
    run: TrainingRun, params: Params, obs: Tensor, u: Tensor, epsilon: Tensor, dueling: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One epsilon-greedy env step of every agent from observations ``obs`` ``(N, E, obs)``
    with uniforms ``u`` ``(N, 2E)`` (whether to explore, which random action) and the
    exploration rate ``epsilon`` (a 0-dimensional tensor): the actions, next observations,
    rewards, ``terminated`` (float) and the final observations of finished episodes (the
    next ones elsewhere), each ``(N, E)`` or ``(N, E, obs)``. Free of data-dependent control
    flow where the twin is branch-free, so ``torch.compile`` turns it into one graph."""
    e, actions = run.num_envs, int(run.twin.discrete_actions)
    greedy = q_values(run.networks["q"], params, obs, dueling).argmax(dim=-1)
    explore = u[:, :e] < epsilon
    random_action = (u[:, e:] * actions).long().clamp(max=actions - 1)
    action = torch.where(explore, random_action, greedy)
    next_obs, reward, terminated, _, info = run.step_env(action)
    return action, next_obs, reward, terminated.float(), info["final_obs"]


def _td_loss(
    run: TrainingRun,
    online: Params,
    target: Params,
    obs: Tensor,
    next_obs: Tensor,
    action: Tensor,
    reward: Tensor,
    terminated: Tensor,
    cfg: DQNConfig,
    record: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-agent TD loss ``(N,)`` on a minibatch (observations ``(N, B, obs)``, the rest
    ``(N, B)``): squared error or Huber against ``r + gamma (1 - terminated) Q_target(s',
    a*)``, ``a*`` the target network's argmax or, with Double DQN, the online network's. Also
    returns the chosen actions' Q-values and the TD targets ``(N, B)``."""
    net = run.networks["q"]
    with torch.no_grad():
        next_target = q_values(net, target, next_obs, cfg.dueling)
        if cfg.double:
            chosen = q_values(net, online, next_obs, cfg.dueling).argmax(-1, keepdim=True)
            next_value = next_target.gather(-1, chosen).squeeze(-1)
        else:
            next_value = next_target.max(dim=-1).values
        td_target = reward + cfg.gamma * next_value * (1.0 - terminated)
    q = q_values(net, online, obs, cfg.dueling, record).gather(-1, action.unsqueeze(-1)).squeeze(-1)
    if cfg.huber:
        loss = torch.nn.functional.smooth_l1_loss(q, td_target, reduction="none")
    else:
        loss = (q - td_target) ** 2
    return loss.mean(dim=1), q, td_target


_TD_DIAGNOSTICS = ("td_loss", "td_error", "q_mean")


def _td_diagnostics(loss: Tensor, q: Tensor, td_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The per-agent TD loss, mean absolute TD error and mean Q-value ``(N,)``, detached."""
    with torch.no_grad():
        return loss.detach(), (q - td_target).abs().mean(dim=1), q.mean(dim=1)


def _fused_td_loss(
    online: Params,
    run: TrainingRun,
    target: Params,
    batch: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    cfg: DQNConfig,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """:func:`_td_loss` on the minibatch ``batch`` (what :meth:`_Replay.sample` returns) as
    :meth:`AgentAdam.fused_step` takes it: the per-agent loss and the diagnostics."""
    loss, q, td_target = _td_loss(run, online, target, *batch, cfg)
    return loss, _td_diagnostics(loss, q, td_target)


@dataclass
class QPolicies:
    """Trained Q-networks ``(N, ...)``; greedy actions."""

    params: Params
    config: DQNConfig
    env: str
    contexts: list[dict[str, float]]
    seeds: list[int]
    network: StackedMLP
    log: TrainingLog | None = None
    discrete: bool = True

    def __len__(self) -> int:
        return len(self.seeds)

    def metadata(self) -> dict[str, Any]:
        return {
            "params": asdict(self.config),
            "env": self.env,
            "contexts": self.contexts,
            "seeds": self.seeds,
            "obs_dim": self.network.in_dim,
            "networks": {"q": asdict(self.network.spec)},
        }

    def q(self, obs: Tensor) -> Tensor:
        return q_values(self.network, self.params, obs, self.config.dueling)

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
            self.network,
            None if self.log is None else self.log.select(indices),
        )


@dataclass
class _Replay:
    """DQN's per-run state: one replay buffer per agent, each tensor ``(N, capacity, E,
    ...)`` (all agents writing in lockstep), the target network and the exploration
    schedule."""

    obs: Tensor
    next_obs: Tensor
    action: Tensor
    reward: Tensor
    terminated: Tensor
    target: Params
    explore_steps: float

    def buffers(self) -> dict[str, Tensor]:
        return {
            "obs": self.obs,
            "next_obs": self.next_obs,
            "action": self.action,
            "reward": self.reward,
            "terminated": self.terminated,
        }

    def sample(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Transitions ``(obs, next_obs, action, reward, terminated)``, each ``(N, B, ...)``:
        agent ``i``'s ``b``-th is its own transition ``flat[i, b]`` (``slot * E + env``).

        One ``index_select`` per buffer on its flat view (the same values as indexing with
        ``[agents, slot, env]``, in about half the time on large buffers)."""
        n, capacity, e = self.obs.shape[:3]
        rows = (torch.arange(n, device=flat.device)[:, None] * (capacity * e) + flat).reshape(-1)
        out = []
        for buffer in (self.obs, self.next_obs, self.action, self.reward, self.terminated):
            picked = buffer.reshape(n * capacity * e, *buffer.shape[3:]).index_select(0, rows)
            out.append(picked.view(n, flat.shape[1], *buffer.shape[3:]))
        return out[0], out[1], out[2], out[3], out[4]


def _inject_target(target: Params, online: Params) -> None:
    """Carry a plasticity injection of the online network over to the target network, for the
    agents whose injection slot the online network has switched on and the target not yet:
    the target's block moves into the slot's ``old`` copy and the fresh block as the online
    network drew it comes in (trainable and ``fresh`` copy), so the target's outputs stay its
    own while its parameters line up with the online ones again. Without it a soft update
    (``tau < 1``) averaged the old block with the fresh one and the switch to a fraction: a
    target no longer of either network."""
    for switch in [k for k in online if k.endswith(".on") and ".injection" in k]:
        injected = (online[switch] != target[switch]).reshape(len(online[switch]), -1).any(1)
        if not bool(injected.any()):
            continue
        role, slot = switch.split(".")[:2]  # "{role}", "injection{j}"
        j = int(slot.removeprefix("injection"))
        block = [name for name in online if injection_name(role, j, "old", name) in online]
        for live in block:
            old, fresh = (injection_name(role, j, kind, live) for kind in ("old", "fresh"))
            target[old][injected] = target[live][injected]
            # the fresh block as it was drawn (the online one may have trained since): the
            # target's outputs are unchanged, and the soft updates move it from there
            target[live][injected] = online[fresh][injected]
            target[fresh][injected] = online[fresh][injected]
        target[switch][injected] = online[switch][injected]


class BatchedDQN(BatchedTrainer[_Replay]):
    """The algorithm object the plugin registers (see :class:`ctxrl.registry.Algorithm`)."""

    name = "batched-dqn"
    acting_roles = ("q",)
    env_seed_salt = 1
    config: DQNConfig

    def __init__(self, params: Mapping[str, Any], *, device: str = "cpu") -> None:
        super().__init__(device)
        self.config = hyperparameters(DQNConfig, params, self.name)
        if self.config.start_e < self.config.end_e:
            raise ConfigError(
                f"algorithm.params.start_e: {self.name} decays exploration from start_e to "
                f"end_e, so start_e must be >= end_e, got {self.config.start_e} < "
                f"{self.config.end_e}"
            )
        if self.config.batch_size > self.config.buffer_size:
            raise ConfigError(
                f"algorithm.params.batch_size: {self.name} draws {self.config.batch_size} "
                f"transitions per gradient step from a replay buffer of "
                f"{self.config.buffer_size} (buffer_size): a batch larger than the buffer only "
                "repeats transitions; lower batch_size or raise buffer_size"
            )
        check_compile_mode(self.name, self.config.compile)
        self._compiled_step: Callable[..., tuple[Tensor, ...]] | None = None
        self._compiled_loss: Callable[..., tuple[Tensor, ...]] | None = None

    def check_budget(self, total_steps: int) -> None:
        trained = self.trained_steps(total_steps)  # whole iterations of num_envs steps
        if self.config.learning_starts >= trained:
            raise ConfigError(
                f"algorithm.params.learning_starts: {self.name} starts learning after "
                f"{self.config.learning_starts} env steps per agent, but an agent trains "
                f"{trained}: it would never learn; lower learning_starts (the default "
                "is 10000) or train longer"
            )

    def check_env(self, env: EnvSpec) -> None:
        if env.action_space != "discrete":
            raise CtxrlError(f"batched-dqn needs discrete actions; env {env.name!r} is continuous")

    def steps_per_iteration(self) -> int:
        return self.config.num_envs

    def default_checkpoint_every(self) -> int:
        return 10_000

    def network_specs(
        self, twin: Any
    ) -> dict[str, tuple[NetworkSpec, dict[str, tuple[int, float]]]]:
        return {"q": network_spec(self.config, int(twin.discrete_actions))}

    def optimizer(self, params: Params) -> AgentAdam:
        cfg = self.config
        return AgentAdam(params, lr=cfg.learning_rate, max_grad_norm=cfg.max_grad_norm)

    def setup(self, run: TrainingRun, iterations: int) -> _Replay:
        cfg, n, e, device = self.config, run.num_agents, run.num_envs, self.device
        capacity = max(1, cfg.buffer_size // e)  # slots per agent, each holding e transitions
        self._compiled_step = self._compiled_loss = None
        if compile_pays(cfg.compile, device, iterations, DQN_CPU_COMPILE_MIN_ITERATIONS):
            run.twin.branch_free = True  # the same numbers, without data-dependent indexing
            self._compiled_step = self.compiled(_act_and_step)
            self._compiled_loss = self.compiled(_td_loss)
            run.optimizer.compile()
        return _Replay(
            obs=torch.zeros(n, capacity, e, run.obs_dim, device=device),
            next_obs=torch.zeros(n, capacity, e, run.obs_dim, device=device),
            action=torch.zeros(n, capacity, e, dtype=torch.long, device=device),
            reward=torch.zeros(n, capacity, e, device=device),
            terminated=torch.zeros(n, capacity, e, device=device),
            target={k: v.detach().clone() for k, v in run.params.items()},
            explore_steps=cfg.exploration_fraction * iterations * e,
        )

    def make_policies(
        self,
        params: Params,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        twin: Any,
        specs: Mapping[str, NetworkSpec],
    ) -> QPolicies:
        _, heads = network_spec(self.config, int(twin.discrete_actions))
        return QPolicies(
            params,
            self.config,
            env.name,
            [dict(c) for c in contexts],
            [int(s) for s in seeds],
            StackedMLP("q", specs["q"], twin.observation_size, heads),
        )

    def iterate(self, run: TrainingRun, replay: _Replay, iteration: int, iterations: int) -> None:
        cfg, online = self.config, run.params
        e = run.num_envs
        capacity = replay.obs.shape[1]
        step, env_steps = iteration, iteration * e
        epsilon = max(
            cfg.end_e,
            cfg.start_e - (cfg.start_e - cfg.end_e) * env_steps / max(replay.explore_steps, 1),
        )
        with torch.no_grad():
            u = run.rng.uniform(2 * e)
            epsilon_t = torch.tensor(epsilon, dtype=u.dtype, device=u.device)
            act_and_step = self._compiled_step or _act_and_step
            action, next_obs, reward, terminated, final_obs = act_and_step(
                run, online, run.obs, u, epsilon_t, cfg.dueling
            )
            slot = step % capacity
            replay.obs[:, slot] = run.obs
            replay.next_obs[:, slot] = final_obs
            replay.action[:, slot] = action
            replay.reward[:, slot] = reward
            replay.terminated[:, slot] = terminated
            run.obs = next_obs
        run.env_steps = env_steps + e
        learning = env_steps + e > cfg.learning_starts
        if learning and (step + 1) % max(1, cfg.target_network_frequency // e) == 0:
            with torch.no_grad():
                _inject_target(replay.target, online)
                for k, v in online.items():
                    replay.target[k].mul_(1.0 - cfg.tau).add_(cfg.tau * v)
        training = learning and (step + 1) % max(1, cfg.train_frequency // e) == 0
        filled = min(step + 1, capacity) * e
        record = run.activations if run.record_activations else None
        td_loss = (
            self._compiled_loss if self._compiled_loss is not None and record is None else _td_loss
        )
        fused = self._compiled_loss is not None and run.fusable
        for _ in range(cfg.gradient_steps if training else 0):
            flat = (run.rng.uniform(cfg.batch_size, dtype=torch.float64) * filled).long()
            batch = replay.sample(flat)
            if fused:  # the loss, its gradient, clipping and Adam as one compiled graph
                diagnostics = run.fused_step(_fused_td_loss, run, replay.target, batch, cfg)
            else:
                per_agent, q, td_target = td_loss(run, online, replay.target, *batch, cfg, record)
                run.optimize(per_agent)
                diagnostics = _td_diagnostics(per_agent, q, td_target)
            for name, value in zip(_TD_DIAGNOSTICS, diagnostics, strict=True):
                run.record(name, value)

    def state_tensors(self, replay: _Replay, iteration: int) -> dict[str, Tensor]:
        """Target weights and the filled part of every replay buffer."""
        filled_slots = min(iteration, replay.obs.shape[1])
        tensors = {f"target.{k}": v for k, v in replay.target.items()}
        for name, buffer in replay.buffers().items():
            tensors[f"buffer.{name}"] = buffer[:, :filled_slots].contiguous()
        return tensors

    def load_state_tensors(self, replay: _Replay, tensors: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for k in replay.target:
                replay.target[k].copy_(tensors[f"target.{k}"])
            filled = tensors["buffer.obs"].shape[1]
            for name, buffer in replay.buffers().items():
                buffer[:, :filled] = tensors[f"buffer.{name}"]

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> QPolicies:
        if "networks" not in metadata or "q.head.weight" not in tensors:
            raise CtxrlError(
                "this batched-dqn artifact was written by an older ctxrl (another parameter "
                "layout); retrain it"
            )
        config = hyperparameters(DQNConfig, metadata["params"], self.name)
        spec = NetworkSpec.from_dict(metadata["networks"]["q"])
        _, heads = network_spec(config, int(tensors["q.head.weight"].shape[-1]))
        return QPolicies(
            tensors,
            config,
            metadata["env"],
            metadata["contexts"],
            metadata["seeds"],
            StackedMLP("q", spec, int(metadata["obs_dim"]), heads),
        )
