"""The one batched training loop, and what the batched algorithms plug into it.

:meth:`BatchedTrainer.train_many` owns everything that is not the algorithm: the twin, seeding,
the networks (built from each role's :class:`~ctxrl.interventions.NetworkSpec`, after the
interventions' network transforms), warm starts and layer surgery, the optimizer, checkpoints
and resume, progress, learning curves on a step grid, training diagnostics, and the call sites
of interventions. An algorithm (:mod:`ctxrl_plugins.algorithms.ppo`,
:mod:`ctxrl_plugins.algorithms.dqn`) supplies only what differs, as in Stable-Baselines3's
``collect_rollouts`` / ``train`` split: its network roles, its own state (replay buffers,
target networks), one iteration of collecting and updating (:meth:`BatchedTrainer.iterate`,
which calls :meth:`TrainingRun.optimize` for every gradient step) and its policies object.

Everything here keeps agents independent: an agent's numbers never depend on the others in
the batch (see :mod:`ctxrl.rng` and :func:`ctxrl_plugins.training.networks.linear`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from ctxrl.artifacts import load_artifact, save_artifact
from ctxrl.context import Task
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import Intervention, NetworkSpec
from ctxrl.registry import CurveOptions, EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl.schedules import ContextSchedule
from ctxrl_plugins.training.evaluation import (
    Policies,
    contexts_tensor,
    env_seeds,
    evaluate_policies,
)
from ctxrl_plugins.training.networks import Params, StackedMLP, stack_agents
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.plasticity import PlasticityOptions, layer_metrics

Tensor = torch.Tensor
ConfigT = TypeVar("ConfigT")
StateT = TypeVar("StateT")


def hyperparameters(
    config_class: type[ConfigT], params: Mapping[str, Any], algorithm: str
) -> ConfigT:
    """A frozen hyperparameter dataclass from config ``params``; unknown keys are an error that
    names them and lists the known ones. Lists become tuples (the dataclasses are hashable)."""
    known = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"algorithm.params: {algorithm} has no hyperparameter "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return config_class(**values)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ------------------------------------------------------------------------------ records
@dataclass
class TrainingLog:
    """What a training recorded besides the weights.

    Attributes:
        curve_steps: env steps per agent at each learning-curve point ``(points,)``.
        curve_returns: deterministic evaluation returns at each point ``(points, N, Q, E)``
            (Q contexts: the agent's own context, or the given evaluation contexts).
        curve_contexts: the Q evaluation contexts (None: each agent's own context).
        diagnostic_steps: env steps per agent at each diagnostics record ``(records,)``.
        diagnostics: name -> ``(records, N)``: per-agent means over the updates since the
            previous record (losses, approx KL, clip fraction, explained variance, TD error,
            gradient norm, entropy, and what interventions report).
        switches: the context switches a schedule made: ``(env step per agent, the agents that
            switched then)``, in order; cut the curves there for per-switch metrics.
        plasticity_steps: env steps per agent at each plasticity record ``(records,)`` (the
            ``plasticity.every`` grid and every switch step, just before the switch).
        plasticity: ``{metric}.{layer}`` -> ``(records, N)`` (see
            :func:`ctxrl_plugins.training.plasticity.layer_metrics`).
    """

    curve_steps: list[int] = field(default_factory=list)
    curve_returns: list[np.ndarray] = field(default_factory=list)
    curve_contexts: list[dict[str, float]] | None = None
    diagnostic_steps: list[int] = field(default_factory=list)
    diagnostics: dict[str, list[np.ndarray]] = field(default_factory=dict)
    switches: list[tuple[int, list[int]]] = field(default_factory=list)
    plasticity_steps: list[int] = field(default_factory=list)
    plasticity: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def select(self, indices: Sequence[int]) -> TrainingLog:
        """The log of agents ``indices`` only (switches renumbered, those of other agents
        dropped)."""
        index = list(indices)
        position = {agent: new for new, agent in enumerate(index)}
        switches = [
            (step, [position[a] for a in agents if a in position]) for step, agents in self.switches
        ]
        return TrainingLog(
            list(self.curve_steps),
            [r[index] for r in self.curve_returns],
            self.curve_contexts,
            list(self.diagnostic_steps),
            {k: [v[index] for v in values] for k, values in self.diagnostics.items()},
            [(step, agents) for step, agents in switches if agents],
            list(self.plasticity_steps),
            {k: [v[index] for v in values] for k, values in self.plasticity.items()},
        )

    def switch_steps(self, agent: int) -> list[int]:
        """The env steps at which agent ``agent``'s context switched (where its curve is cut
        into per-context segments)."""
        return [step for step, agents in self.switches if agent in agents]

    def curve(self) -> np.ndarray:
        """Mean return per point and agent ``(points, N)`` (over contexts and episodes)."""
        if not self.curve_returns:
            return np.zeros((0, 0))
        return np.stack([r.mean(axis=(1, 2)) for r in self.curve_returns])

    def tensors(self) -> dict[str, Tensor]:
        """The log as tensors (for checkpoints and safetensors exports)."""
        out: dict[str, Tensor] = {}
        if self.curve_steps:
            out["curve.steps"] = torch.tensor(self.curve_steps, dtype=torch.int64)
            out["curve.returns"] = torch.from_numpy(np.stack(self.curve_returns))
        if self.diagnostic_steps:
            out["diagnostics.steps"] = torch.tensor(self.diagnostic_steps, dtype=torch.int64)
            for name, values in self.diagnostics.items():
                out[f"diagnostics.{name}"] = torch.from_numpy(np.stack(values))
        if self.switches:
            out["switches.steps"] = torch.tensor([s for s, _ in self.switches], dtype=torch.int64)
            # (switches, N) as 0/1: the agents that switched at each step
            count = 1 + max(a for _, agents in self.switches for a in agents)
            agents = torch.zeros(len(self.switches), count, dtype=torch.uint8)
            for row, (_, switched) in enumerate(self.switches):
                agents[row, switched] = 1
            out["switches.agents"] = agents
        if self.plasticity_steps:
            out["plasticity.steps"] = torch.tensor(self.plasticity_steps, dtype=torch.int64)
            for name, values in self.plasticity.items():
                out[f"plasticity.{name}"] = torch.from_numpy(np.stack(values))
        return out

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, Tensor], curve_contexts: list[dict[str, float]] | None = None
    ) -> TrainingLog:
        log = cls(curve_contexts=curve_contexts)
        if "curve.steps" in tensors:
            log.curve_steps = [int(s) for s in tensors["curve.steps"]]
            log.curve_returns = list(tensors["curve.returns"].cpu().numpy())
        if "diagnostics.steps" in tensors:
            log.diagnostic_steps = [int(s) for s in tensors["diagnostics.steps"]]
            for key, value in tensors.items():
                if key.startswith("diagnostics.") and key != "diagnostics.steps":
                    log.diagnostics[key.removeprefix("diagnostics.")] = list(value.cpu().numpy())
        if "switches.steps" in tensors:
            rows = tensors["switches.agents"].cpu()
            log.switches = [
                (int(step), [int(a) for a in torch.nonzero(row).flatten()])
                for step, row in zip(tensors["switches.steps"].cpu(), rows, strict=True)
            ]
        if "plasticity.steps" in tensors:
            log.plasticity_steps = [int(s) for s in tensors["plasticity.steps"]]
            for key, value in tensors.items():
                if key.startswith("plasticity.") and key != "plasticity.steps":
                    log.plasticity[key.removeprefix("plasticity.")] = list(value.cpu().numpy())
        return log


# ------------------------------------------------------------------------------ the run
class TrainingRun:
    """A batched training in progress: what the algorithm's :meth:`BatchedTrainer.iterate`
    works on, and the :class:`~ctxrl.interventions.TrainingView` interventions see.

    Shapes: ``N`` agents, ``E`` environments each; the twin holds ``N * E`` environments,
    agent ``i`` owning environments ``i * E .. i * E + E - 1``."""

    def __init__(
        self,
        *,
        twin: Any,
        networks: dict[str, StackedMLP],
        params: Params,
        optimizer: AgentAdam,
        rng: StreamRNG,
        interventions: Sequence[Intervention],
        num_envs: int,
        device: torch.device,
        masks: Sequence[Tensor] | None = None,
    ) -> None:
        self.twin, self.networks, self.params = twin, networks, params
        self.optimizer, self.rng, self.device = optimizer, rng, device
        self.interventions = list(interventions)
        ones = torch.ones(len(rng.seeds), device=device)
        self.masks = list(masks) if masks is not None else [ones] * len(self.interventions)
        self.num_agents = len(rng.seeds)
        self.num_envs = num_envs
        self.obs_dim: int = twin.observation_size
        self.discrete: bool = twin.discrete_actions is not None
        self.initial_params = {k: v.detach().clone() for k, v in params.items()}
        self.layers = {role: net.layers for role, net in networks.items()}
        self.activations: dict[str, Tensor] = {}
        self.record_activations = any(i.needs_activations for i in interventions)
        self.mask = torch.ones(self.num_agents, device=device)
        self.iteration = 0
        self.env_steps = 0
        self.obs: Tensor = torch.empty(0)
        """the last observations ``(N, E, obs)``"""
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    # ----------------------------------------------------------------- for the algorithms
    @property
    def gradients(self) -> dict[str, Tensor]:
        return self.optimizer.gradients()

    @property
    def frozen(self) -> dict[str, Tensor]:
        """Per frozen parameter, the agents ``(N,)`` (bool) for which it is not trained."""
        return {name: keep == 0 for name, keep in self.optimizer.grad_mask.items()}

    def each_intervention(self) -> Iterator[Intervention]:
        """The interventions in order, with ``mask`` set to each one's agents while it runs."""
        for intervention, mask in zip(self.interventions, self.masks, strict=True):
            self.mask = mask
            yield intervention

    def forward(self, role: str, x: Tensor, *, training: bool = False) -> Tensor:
        """Network ``role`` on ``x`` ``(N, M, in)``; during updates (``training``), hidden
        activations are recorded for the interventions that read them."""
        record = self.activations if training and self.record_activations else None
        return self.networks[role](self.params, x, record)

    def optimize(self, loss: Tensor, lr: float | None = None) -> None:
        """One gradient step on per-agent losses ``(N,)``: the interventions' loss terms are
        added, gradients computed (summed over agents: they never mix), frozen parameters
        held, gradients clipped per agent, Adam stepped, then the interventions' after-update
        operators run."""
        for intervention in self.each_intervention():
            term = intervention.loss(self)
            if term is not None:
                loss = loss + term * self.mask
        self.optimizer.zero_grad()
        torch.autograd.backward(loss.sum())  # Tensor.backward is untyped
        self.optimizer.step(lr)
        self.record("grad_norm", self.optimizer.grad_norm)
        for intervention in self.each_intervention():
            intervention.after_update(self)

    def record(self, name: str, value: Tensor) -> None:
        """Add a per-agent diagnostic ``(N,)`` to the running mean logged at the next record
        point (no device synchronisation until then)."""
        value = value.detach()
        if name in self._sums:
            self._sums[name] = self._sums[name] + value
            self._counts[name] += 1
        else:
            self._sums[name], self._counts[name] = value.clone(), 1

    def flush_diagnostics(self) -> dict[str, np.ndarray]:
        """The running means since the last flush, per agent ``(N,)``, and reset them."""
        out = {k: (v / self._counts[k]).float().cpu().numpy() for k, v in self._sums.items()}
        for intervention in self.each_intervention():
            for name, value in intervention.diagnostics(self).items():
                out[f"{intervention.name}.{name}"] = value.detach().float().cpu().numpy()
        self._sums, self._counts = {}, {}
        return out

    # ----------------------------------------------------------------------- env helpers
    def step_env(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Step the twin with per-agent actions ``(N, E)`` or ``(N, E, dim)``; returns the
        next observations ``(N, E, obs)``, rewards, ``terminated``, ``truncated`` ``(N, E)``
        and ``info`` with ``done`` ``(N, E)`` and ``final_obs`` ``(N, E, obs)``."""
        n, e = self.num_agents, self.num_envs
        flat = action.reshape(n * e) if self.discrete else action.reshape(n * e, -1)
        obs, reward, terminated, truncated, info = self.twin.step(flat)
        info = {
            "done": info["done"].view(n, e),
            "final_obs": info["final_obs"].view(n, e, self.obs_dim),
        }
        return (
            obs.view(n, e, self.obs_dim),
            reward.view(n, e),
            terminated.view(n, e),
            truncated.view(n, e),
            info,
        )


# -------------------------------------------------------------------------- checkpoints
def _prefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    start = f"{prefix}."
    return {k.removeprefix(start): v for k, v in tensors.items() if k.startswith(start)}


# -------------------------------------------------------------------------- the trainer
class BatchedTrainer(Generic[StateT]):
    """Base of the batched algorithms: the training loop (:meth:`train_many`), single-task
    ``train`` / ``evaluate`` on top of it, batched cross-evaluation and safetensors artifacts.

    A subclass sets ``name``, ``config``, ``env_seed_salt`` and implements the methods under
    "what an algorithm supplies"."""

    name: ClassVar[str]
    env_seed_salt: ClassVar[int] = 0
    """mixed into the twins' per-env seeds, so that two algorithms do not share episodes"""
    config: Any

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)

    # -------------------------------------------------------- what an algorithm supplies
    def check_env(self, env: EnvSpec) -> None:
        """Raise a :class:`~ctxrl.errors.CtxrlError` when the algorithm cannot train ``env``."""

    @property
    def num_envs(self) -> int:
        """Environments per agent."""
        return int(self.config.num_envs)

    def steps_per_iteration(self) -> int:
        """Environment steps per agent in one :meth:`iterate`."""
        raise NotImplementedError

    def default_checkpoint_every(self) -> int:
        """Env steps per agent between checkpoints when the caller does not say: every 50
        iterations."""
        return 50 * self.steps_per_iteration()

    def network_specs(
        self, twin: Any
    ) -> dict[str, tuple[NetworkSpec, dict[str, tuple[int, float]]]]:
        """Per network role: its description and output heads (name -> (width, init gain))."""
        raise NotImplementedError

    def extra_params(self, twin: Any) -> Params:
        """Per-agent parameters outside the networks (e.g. a log standard deviation)."""
        del twin
        return {}

    def optimizer(self, params: Params) -> AgentAdam:
        raise NotImplementedError

    def setup(self, run: TrainingRun, iterations: int) -> StateT:
        """The algorithm's own state (buffers, target networks, schedules)."""
        raise NotImplementedError

    def iterate(self, run: TrainingRun, state: StateT, iteration: int, iterations: int) -> None:
        """Collect experience and update: advance ``run.obs`` and ``run.env_steps`` by
        :meth:`steps_per_iteration`; call ``run.optimize(loss)`` for each gradient step and
        ``run.record(name, value)`` for diagnostics."""
        raise NotImplementedError

    def state_tensors(self, state: StateT, iteration: int) -> dict[str, Tensor]:
        """The algorithm's state for a checkpoint."""
        del state, iteration
        return {}

    def load_state_tensors(self, state: StateT, tensors: Mapping[str, Tensor]) -> None:
        del state, tensors

    def make_policies(
        self,
        params: Params,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        twin: Any,
        specs: Mapping[str, NetworkSpec],
    ) -> Any:
        raise NotImplementedError

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> Any:
        """Rebuild trained agents from a saved artifact."""
        raise NotImplementedError

    # -------------------------------------------------------------------- the loop
    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        checkpoint: Path | None = None,
        checkpoint_every: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        mixture: Sequence[Mapping[str, float]] | None = None,
        init: Any = None,
        reinit: Sequence[str] = (),
        freeze: Sequence[str] = (),
        interventions: Sequence[Intervention | tuple[Intervention, Sequence[int]]] = (),
        curves: CurveOptions | None = None,
        diagnostics_every: int | None = None,
        schedules: ContextSchedule | Sequence[ContextSchedule] | None = None,
        plasticity: PlasticityOptions | None = None,
    ) -> Any:
        """Train one agent per ``(contexts[i], seeds[i])`` for ``total_steps`` env steps each.

        Args:
            checkpoint: a path (without suffix); the whole state (weights, optimizer state,
                environments, random streams, the algorithm's buffers, the interventions'
                state, the log so far) is saved every ``checkpoint_every`` env steps per agent
                (rounded down to whole iterations, at least one) and a later call with the same
                arguments continues from it, bit-exactly.
            progress: called with ``(iterations done, iterations)``.
            mixture: every environment draws its context uniformly from ``mixture`` at each
                episode start (multi-task training); ``contexts`` then only names the agents.
            init: warm start: a policies object (or agent-stacked parameters ``(N, ...)`` or
                ``(1, ...)``) of the same algorithm whose weights the agents start from.
            reinit: layer names or patterns (``actor.head``, ``q.*``) that keep their fresh
                initialisation instead of the warm start's weights.
            freeze: layer names or patterns that are not trained.
            interventions: training-time modifiers (:class:`~ctxrl.interventions.Intervention`),
                applied in order to every agent, or as ``(intervention, agent indices)`` to
                those agents only (so one batch can compare interventions; one that changes
                the network applies to every agent).
            curves: learning curves on a step grid (:class:`CurveOptions`); without evaluation
                contexts, each agent is evaluated on the context in force at that step.
            diagnostics_every: env steps per agent between diagnostics records (default: about
                200 records per run).
            schedules: context schedules (:mod:`ctxrl.schedules`), one for every agent or one
                per agent: agent ``i`` trains on ``schedules[i].context_at(step)`` from step 0
                (``contexts`` then only names the agents, as with ``mixture``). At the end of
                each iteration, the agents whose schedule switched between its first and last
                step get the context in force at the last one (their environments' physics
                change at once, mid-episode), every intervention's ``on_context_switch`` runs
                for them, and ``log.switches`` records the step.
            plasticity: plasticity metrics per agent and hidden layer
                (:class:`~ctxrl_plugins.training.plasticity.PlasticityOptions`) on a step grid
                and just before every switch, in ``log.plasticity``.

        Returns the algorithm's policies object, with the :class:`TrainingLog` as ``.log``.
        """
        if env.make_batched is None:
            raise CtxrlError(f"{self.name} needs a torch-batched twin; env {env.name!r} has none")
        if len(contexts) != len(seeds) or not seeds:
            raise CtxrlError(f"{self.name}: give one seed per context (and at least one)")
        self.check_env(env)
        device, n, e = self.device, len(seeds), self.num_envs
        interventions, masks = _intervention_masks(interventions, n, device)
        agent_schedules = _agent_schedules(schedules, n, env, mixture, self.name)
        twin = env.make_batched(
            n * e,
            contexts=contexts_tensor(env, contexts, e, device),
            device=device,
            env_seeds=env_seeds(seeds, e, self.env_seed_salt),
        )
        twin.set_context_pool(mixture)
        if agent_schedules is not None:
            _apply_schedules(twin, agent_schedules, list(range(n)), 0, e)
        # ---------------------------------------------------------------- networks
        networks: dict[str, StackedMLP] = {}
        for role, (spec, heads) in self.network_specs(twin).items():
            for intervention in interventions:
                spec = intervention.network(role, spec)
            networks[role] = StackedMLP(role, spec, twin.observation_size, heads)
        per_agent: list[Params] = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            agent: Params = {}
            for net in networks.values():
                agent.update(net.init_agent(generator))
            per_agent.append(agent)
        params = stack_agents(per_agent, device)
        params.update(self.extra_params(twin))
        layers = [layer for net in networks.values() for layer in net.layers]
        if init is not None:
            self._warm_start(params, init, layers, reinit, env, twin)
        elif reinit:
            raise CtxrlError(f"{self.name}: reinit {list(reinit)} needs a warm start (init=...)")
        optimizer = self.optimizer(params)
        for name in _matching(freeze, layers, params, "freeze"):
            optimizer.freeze(name, torch.ones(n, dtype=torch.bool, device=device))
        rng = StreamRNG(torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device))
        run = TrainingRun(
            twin=twin,
            networks=networks,
            params=params,
            optimizer=optimizer,
            rng=rng,
            interventions=interventions,
            num_envs=e,
            device=device,
            masks=masks,
        )
        run.record_activations = run.record_activations or plasticity is not None
        for intervention in run.each_intervention():
            intervention.setup(run)
        iterations = max(1, total_steps // self.steps_per_iteration())
        state = self.setup(run, iterations)
        run.obs = twin.reset().view(n, e, run.obs_dim)
        log = TrainingLog(
            curve_contexts=None
            if curves is None or curves.contexts is None
            else [dict(c) for c in curves.contexts]
        )
        start = 0
        if checkpoint is not None and checkpoint.with_suffix(".safetensors").exists():
            start, log = self._restore(checkpoint, run, state, interventions, log)
        policies = self.make_policies(
            params, env, contexts, seeds, twin, {r: net.spec for r, net in networks.items()}
        )
        steps = self.steps_per_iteration()
        every = max(1, (checkpoint_every or self.default_checkpoint_every()) // steps)
        log_every = max(1, (diagnostics_every or max(1, total_steps // 200)) // steps)
        report_every = max(1, iterations // 1000)

        def evaluate_curve() -> None:
            assert curves is not None
            own = (
                [list(mixture)] * n
                if mixture is not None
                else [[dict(c)] for c in contexts]
                if agent_schedules is None
                else [[s.context_at(run.env_steps).as_dict()] for s in agent_schedules]
            )
            targets = own if curves.contexts is None else [list(curves.contexts)] * n
            returns = evaluate_policies(
                policies,
                env,
                targets,
                episodes=curves.episodes,
                seed=20_000,
                device=device,
                per_policy=True,
            )
            log.curve_steps.append(run.env_steps)
            log.curve_returns.append(returns)

        if curves is not None and start == 0:
            evaluate_curve()
        next_curve = None if curves is None else (run.env_steps // curves.every + 1) * curves.every
        next_plasticity = (
            None
            if plasticity is None
            else (run.env_steps // plasticity.every + 1) * plasticity.every
        )
        for iteration in range(start, iterations):
            run.iteration = iteration
            before = run.env_steps
            self.iterate(run, state, iteration, iterations)
            done = iteration + 1
            if done % log_every == 0 or done == iterations:
                values = run.flush_diagnostics()
                if values:
                    log.diagnostic_steps.append(run.env_steps)
                    for name, value in values.items():
                        log.diagnostics.setdefault(name, []).append(value)
            switched = (
                []
                if agent_schedules is None
                else [
                    i
                    for i, schedule in enumerate(agent_schedules)
                    if schedule.switch_steps(before, run.env_steps)
                ]
            )
            if (
                plasticity is not None
                and next_plasticity is not None
                and (switched or run.env_steps >= next_plasticity or done == iterations)
            ):
                metrics = layer_metrics(
                    networks, params, run.initial_params, run.activations, plasticity
                )
                log.plasticity_steps.append(run.env_steps)
                for name, metric in metrics.items():
                    log.plasticity.setdefault(name, []).append(metric.float().cpu().numpy())
                next_plasticity = (run.env_steps // plasticity.every + 1) * plasticity.every
            if switched and agent_schedules is not None:
                _apply_schedules(twin, agent_schedules, switched, run.env_steps, e)
                agents = torch.zeros(n, dtype=torch.bool, device=device)
                agents[switched] = True
                for intervention in run.each_intervention():
                    intervention.on_context_switch(run, agents)
                log.switches.append((run.env_steps, switched))
            if (
                curves is not None
                and next_curve is not None
                and (run.env_steps >= next_curve or done == iterations)
            ):
                evaluate_curve()
                next_curve = (run.env_steps // curves.every + 1) * curves.every
            if progress is not None and (done % report_every == 0 or done == iterations):
                progress(done, iterations)
            if checkpoint is not None and done % every == 0 and done < iterations:
                self._save(checkpoint, done, run, state, interventions, log)
        optimizer.finish()
        policies.params = dict(params)
        policies.log = log
        return policies

    # ------------------------------------------------------------------ warm starts
    def _warm_start(
        self,
        params: Params,
        init: Any,
        layers: list[str],
        reinit: Sequence[str],
        env: EnvSpec,
        twin: Any,
    ) -> None:
        """Copy ``init``'s weights into ``params`` except the ``reinit`` layers."""
        source: Mapping[str, Tensor] = init.params if hasattr(init, "params") else init
        source_env = getattr(init, "env", None)
        missing = sorted(set(params) - set(source))
        if missing:
            raise CtxrlError(
                f"{self.name}: the warm-start policy has no parameter {missing[0]!r} (a "
                "different algorithm or network); its parameters: "
                f"{', '.join(sorted(source)[:8])}"
            )
        keep = set(_matching(reinit, layers, params, "reinit"))
        n = next(iter(params.values())).shape[0]
        with torch.no_grad():
            for name, value in params.items():
                if name in keep:
                    continue
                weights = source[name].to(value.device, value.dtype)
                if weights.shape[0] == 1 and n > 1:
                    weights = weights.expand(n, *weights.shape[1:])
                if weights.shape != value.shape:
                    what = (
                        "observation"
                        if name.endswith(".0.weight")
                        else "action"
                        if ".head." in name
                        else "network"
                    )
                    raise CtxrlError(
                        f"{self.name}: cannot warm-start {env.name} (observation size "
                        f"{twin.observation_size}, actions {twin.discrete_actions or 'continuous'}"
                        f") from a policy of {source_env or 'another env'}: parameter "
                        f"{name!r} has shape {tuple(weights.shape)}, expected "
                        f"{tuple(value.shape)} (the {what} spaces differ)"
                    )
                value.copy_(weights)

    # ------------------------------------------------------------------ checkpoints
    def _save(
        self,
        path: Path,
        iteration: int,
        run: TrainingRun,
        state: StateT,
        interventions: Sequence[Intervention],
        log: TrainingLog,
    ) -> None:
        """Everything a batched training needs to continue bit-exactly after a kill: weights
        and optimizer state, the environments' state (physics, step counters, contexts, random
        streams), the agents' random streams, the last observations, the algorithm's state,
        the interventions' state, the log and the env-step counter. safetensors + JSON,
        written atomically by :func:`ctxrl.artifacts.save_artifact`."""
        tensors = _prefixed("adam", run.optimizer.state_tensors())
        tensors.update(_prefixed("env", run.twin.state_dict()))
        tensors["obs"] = run.obs
        tensors.update(_prefixed("rng", run.rng.state_dict()))
        tensors.update(_prefixed("algorithm", self.state_tensors(state, iteration)))
        for index, intervention in enumerate(interventions):
            tensors.update(_prefixed(f"intervention{index}", intervention.state_dict()))
        tensors.update(_prefixed("log", log.tensors()))
        save_artifact(
            path,
            {k: v.contiguous() for k, v in tensors.items()},
            {"iteration": iteration, "env_steps": run.env_steps, "algorithm": self.name},
        )

    def _restore(
        self,
        path: Path,
        run: TrainingRun,
        state: StateT,
        interventions: Sequence[Intervention],
        log: TrainingLog,
    ) -> tuple[int, TrainingLog]:
        tensors, meta = load_artifact(path, device=str(self.device))
        if meta.get("algorithm") not in (None, self.name):
            raise CtxrlError(f"checkpoint {path} was written by {meta.get('algorithm')!r}")
        run.optimizer.load_state_tensors(_unprefixed("adam", tensors), path)
        run.twin.load_state_dict(_unprefixed("env", tensors))
        run.obs = tensors["obs"].view(run.num_agents, run.num_envs, run.obs_dim).clone()
        run.rng.load_state_dict(_unprefixed("rng", tensors))
        self.load_state_tensors(state, _unprefixed("algorithm", tensors))
        for index, intervention in enumerate(interventions):
            intervention.load_state_dict(_unprefixed(f"intervention{index}", tensors))
        run.env_steps = int(meta.get("env_steps", 0))
        restored = TrainingLog.from_tensors(_unprefixed("log", tensors), log.curve_contexts)
        return int(meta["iteration"]), restored

    # ------------------------------------------------------------ the algorithm object
    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any:
        return self.train_many(env, [task.context.as_dict()], [seed], total_steps=total_steps)

    def evaluate_many(
        self,
        policies: Policies,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        """Returns ``(P, Q, E)`` of P policies on Q contexts (see :func:`evaluate_policies`)."""
        return evaluate_policies(
            policies,
            env,
            contexts,
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            device=self.device,
        )

    def evaluate(
        self,
        policy: Policies,
        env: EnvSpec,
        tasks: Sequence[Task],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        out = self.evaluate_many(
            policy,
            env,
            [t.context.as_dict() for t in tasks],
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
        )
        return out[0] if len(policy) == 1 else out

    def save(self, policy: Policies, path: Path) -> None:
        save_artifact(path, policy.params, {"algorithm": self.name, **policy.metadata()})

    def load(self, path: Path, env: EnvSpec) -> Any:
        tensors, metadata = load_artifact(path, device=str(self.device))
        if metadata.get("algorithm") != self.name:
            raise CtxrlError(
                f"{path} holds a {metadata.get('algorithm')!r} policy, not {self.name}"
            )
        return self.policies_from(tensors, metadata)


def _agent_schedules(
    schedules: ContextSchedule | Sequence[ContextSchedule] | None,
    n: int,
    env: EnvSpec,
    mixture: Sequence[Mapping[str, float]] | None,
    algorithm: str,
) -> list[ContextSchedule] | None:
    """One schedule per agent (a single schedule is shared), checked against the env."""
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
    return listed


def _apply_schedules(
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


def _intervention_masks(
    entries: Sequence[Intervention | tuple[Intervention, Sequence[int]]],
    n: int,
    device: torch.device,
) -> tuple[list[Intervention], list[Tensor]]:
    """Interventions and their agent masks ``(N,)`` (float, 1 where it applies)."""
    interventions, masks = [], []
    for entry in entries:
        intervention, agents = entry if isinstance(entry, tuple) else (entry, range(n))
        mask = torch.zeros(n, device=device)
        index = [int(a) for a in agents]
        if any(not 0 <= a < n for a in index):
            raise CtxrlError(
                f"intervention {intervention.name!r}: agents {index} not in 0..{n - 1}"
            )
        mask[index] = 1.0
        if intervention.changes_network and len(set(index)) != n:
            raise CtxrlError(
                f"intervention {intervention.name!r} changes the network, which all agents of a "
                "batch share: apply it to every agent (or train the others apart)"
            )
        interventions.append(intervention)
        masks.append(mask)
    return interventions, masks


def _matching(
    patterns: Sequence[str], layers: Sequence[str], params: Mapping[str, Tensor], option: str
) -> list[str]:
    """Parameter names of the layers matched by ``patterns`` (a layer name, a role, or an
    fnmatch pattern); a pattern that matches nothing is an error listing the layers."""
    names: list[str] = []
    for pattern in patterns:
        matched = [
            layer
            for layer in layers
            if fnmatch.fnmatchcase(layer, pattern) or layer.split(".")[0] == pattern
        ]
        extra = [p for p in params if fnmatch.fnmatchcase(p, pattern) or p == pattern]
        if not matched and not extra:
            raise CtxrlError(f"{option}: {pattern!r} matches no layer; layers: {', '.join(layers)}")
        for layer in matched:
            names += [p for p in params if p.startswith(f"{layer}.")]
        names += extra
    return list(dict.fromkeys(names))
