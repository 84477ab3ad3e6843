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

What an algorithm supplies is declared, with its defaults, in
:class:`~ctxrl_plugins.training.trainer_interface.TrainerInterface`, the base of
:class:`BatchedTrainer`; the hyperparameter types in :mod:`ctxrl_plugins.training.hyperparameters`,
the per-agent context schedules in :mod:`ctxrl_plugins.training.agent_schedules`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxrl.artifacts import artifact_file, load_artifact, save_artifact
from ctxrl.context import Task
from ctxrl.errors import CheckpointError, CtxrlError
from ctxrl.interventions import Intervention
from ctxrl.options import check_device
from ctxrl.registry import CurveOptions, EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl.schedules import ContextSchedule
from ctxrl_plugins.training.agent_schedules import apply_schedules, per_agent_schedules
from ctxrl_plugins.training.compiling import evaluation_compiles
from ctxrl_plugins.training.evaluation import (
    Policies,
    contexts_tensor,
    env_seeds,
    evaluate_policies,
)
from ctxrl_plugins.training.hyperparameters import ConfigT as ConfigT
from ctxrl_plugins.training.hyperparameters import Count as Count
from ctxrl_plugins.training.hyperparameters import Finite as Finite
from ctxrl_plugins.training.hyperparameters import Fraction as Fraction
from ctxrl_plugins.training.hyperparameters import Rate as Rate
from ctxrl_plugins.training.hyperparameters import Steps as Steps
from ctxrl_plugins.training.hyperparameters import Weight as Weight
from ctxrl_plugins.training.hyperparameters import hyperparameters as hyperparameters
from ctxrl_plugins.training.log import TrainingLog
from ctxrl_plugins.training.networks import Params, StackedMLP, stack_agents
from ctxrl_plugins.training.plasticity import PlasticityOptions, layer_metrics
from ctxrl_plugins.training.run import TrainingRun, intervention_hook, intervention_masks
from ctxrl_plugins.training.surgery import matching, warm_start
from ctxrl_plugins.training.trainer_interface import StateT, TrainerInterface
from ctxrl_plugins.training.trainer_interface import resolve_device as resolve_device

Tensor = torch.Tensor


# -------------------------------------------------------------------------- checkpoints
def _prefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _unprefixed(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    start = f"{prefix}."
    return {k.removeprefix(start): v for k, v in tensors.items() if k.startswith(start)}


def _training_identity(
    config: Any,
    params: Mapping[str, Tensor],
    frozen: Sequence[str],
    contexts: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    total_steps: int,
    mixture: Sequence[Mapping[str, float]] | None,
    interventions: Sequence[Intervention],
) -> str:
    """A digest of what decides a training: its hyperparameters (``compile`` aside: the same
    numbers to rounding), contexts, seeds, budget, mixture, interventions, frozen parameters
    and the initial parameters (after the warm start and re-initialisation)."""
    settings = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "compile"}
    described = {
        "config": settings,
        "contexts": [dict(c) for c in contexts],
        "seeds": [int(s) for s in seeds],
        "total_steps": int(total_steps),
        "mixture": None if mixture is None else [dict(c) for c in mixture],
        "interventions": [i.name for i in interventions],
        "frozen": sorted(frozen),
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _curves_said(curves: Any) -> str:
    """Learning-curve settings as a checkpoint records them (:meth:`CurveOptions.describe`,
    or ``"none"``), in words."""
    if not isinstance(curves, dict):
        return "no learning curves"
    where = "their own contexts" if curves.get("contexts") is None else "given contexts"
    return (
        f"learning curves every {curves.get('every')} env steps, {curves.get('episodes')} "
        f"episodes on {where}"
    )


# -------------------------------------------------------------------------- the trainer
class BatchedTrainer(TrainerInterface[StateT]):
    """Base of the batched algorithms: the training loop (:meth:`train_many`), single-task
    ``train`` / ``evaluate`` on top of it, batched cross-evaluation and safetensors artifacts.

    A subclass sets ``name``, ``config``, ``env_seed_salt`` and implements the methods under
    "what an algorithm supplies"."""

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
        """Train one agent per ``(contexts[i], seeds[i])`` for ``total_steps`` env steps each,
        in whole iterations (:meth:`steps_per_iteration`): ``total_steps`` is rounded down to
        a multiple of an iteration's steps, at least one iteration.

        Args:
            checkpoint: a path (without suffix); the whole state (weights, optimizer state,
                environments, random streams, the algorithm's buffers, the interventions'
                state, the log so far) is saved every ``checkpoint_every`` env steps per agent
                (rounded down to whole iterations, at least one) and after the last iteration,
                and a later call with the same arguments continues from it, bit-exactly (from
                the final save: no training, the same policies). The caller deletes it.
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
        check_device(str(self.device))  # a CUDA device missing here is named before any work
        if env.make_batched is None:
            raise CtxrlError(f"{self.name} needs a torch-batched twin; env {env.name!r} has none")
        if isinstance(seeds, str) or not all(
            isinstance(seed, int | np.integer) and not isinstance(seed, bool) for seed in seeds
        ):
            raise CtxrlError(f"{self.name}: seeds must be whole numbers, got {seeds!r}")
        seeds = [int(seed) for seed in seeds]  # a numpy array's truth value is ambiguous
        if len(contexts) != len(seeds) or not seeds:
            raise CtxrlError(
                f"{self.name}: give one seed per context (and at least one): {len(contexts)} "
                f"contexts, {len(seeds)} seeds"
            )
        self.check_env(env)
        self.check_budget(total_steps)
        device, n, e = self.device, len(seeds), self.num_envs
        interventions, masks = intervention_masks(interventions, n, device)
        agent_schedules = per_agent_schedules(schedules, n, env, mixture, self.name, total_steps)
        twin = env.make_batched(
            n * e,
            contexts=contexts_tensor(env, contexts, e, device),
            device=device,
            env_seeds=env_seeds(seeds, e, self.env_seed_salt),
        )
        twin.check_actions = False  # an argmax over the policy's actions: valid, unchecked
        twin.set_context_pool(mixture)
        if agent_schedules is not None:
            apply_schedules(twin, agent_schedules, list(range(n)), 0, e)
        # ---------------------------------------------------------------- networks
        networks: dict[str, StackedMLP] = {}
        for role, (spec, heads) in self.network_specs(twin).items():
            for intervention in interventions:
                with intervention_hook(intervention, "network"):
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
        untrained = [name for net in networks.values() for name in net.frozen_names]
        if init is not None:
            warm_start(self.name, params, init, layers, reinit, env, twin, optional=untrained)
        elif reinit:
            raise CtxrlError(f"{self.name}: reinit {list(reinit)} needs a warm start (init=...)")
        frozen = matching(freeze, layers, params, "freeze")
        # what a checkpoint must have been written for: a caller that trains twice into one
        # path (another warm start, other frozen layers) would resume the first training
        self._curves = None if curves is None else curves.describe()
        self._identity = (
            None
            if checkpoint is None
            else _training_identity(
                self.config, params, frozen, contexts, seeds, total_steps, mixture, interventions
            )
        )
        both = sorted(set(frozen) & set(matching(reinit, layers, params, "reinit")))
        if both:
            raise CtxrlError(
                f"{self.name}: {', '.join(both)} would be re-initialised and frozen: a fresh "
                "draw that never trains; reinit or freeze it, not both"
            )
        optimizer = self.optimizer(params)
        for name in [*frozen, *untrained]:
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
            with intervention_hook(intervention, "setup"):
                intervention.setup(run)
        iterations = self.trained_steps(total_steps) // self.steps_per_iteration()
        self.compiling, self.compile_s, self._compiled_functions = False, 0.0, []
        # wall-clock seconds of training in earlier processes (a resumed checkpoint's), and
        # when this one started: saved with each checkpoint, so a sweep's run times count them
        self.earlier_train_s, self._train_started = 0.0, time.monotonic()
        state = self.setup(run, iterations)
        run.obs = twin.reset().view(n, e, run.obs_dim)
        log = TrainingLog(
            curve_contexts=None
            if curves is None or curves.contexts is None
            else [dict(c) for c in curves.contexts]
        )
        start = 0
        if checkpoint is not None and artifact_file(checkpoint).exists():
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
                compile=evaluation_compiles(str(getattr(self.config, "compile", "off")), device),
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
                    log.add_diagnostics(run.env_steps, values, run.num_agents)
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
                apply_schedules(twin, agent_schedules, switched, run.env_steps, e)
                agents = torch.zeros(n, dtype=torch.bool, device=device)
                agents[switched] = True
                for intervention in run.each_intervention():
                    with intervention_hook(intervention, "on_context_switch"):
                        intervention.on_context_switch(run, agents)
                log.switches.append((run.env_steps, switched))
            if (
                curves is not None
                and next_curve is not None
                and (run.env_steps >= next_curve or done == iterations)
            ):
                evaluate_curve()
                next_curve = (run.env_steps // curves.every + 1) * curves.every
            # the last iteration too: a caller killed while it evaluates or transfers the
            # trained agents continues from their final state, not from the last periodic save;
            # saved before the progress line, so a kill after a line never repeats its work
            if checkpoint is not None and (done % every == 0 or done == iterations):
                self._save(checkpoint, done, run, state, interventions, log)
            if progress is not None and (done % report_every == 0 or done == iterations):
                progress(done, iterations)
        self.compile_s = sum(f.compile_s for f in self._compiled_functions) + optimizer.compile_s
        optimizer.finish()
        policies.params = dict(params)
        policies.log = log
        return policies

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
        # the diagnostics' running sums since the last record, so the next record after a
        # resume averages the same iterations
        sums, counts = run.pending_diagnostics()
        tensors.update(_prefixed("diagnostic_sums", sums))
        save_artifact(
            path,
            {k: v.contiguous() for k, v in tensors.items()},
            {
                "iteration": iteration,
                "env_steps": run.env_steps,
                "algorithm": self.name,
                "diagnostic_counts": counts,
                # random streams and rounding are the device's: resumed on its kind only
                "device": self.device.type,
                "training": getattr(self, "_identity", None),
                # the curves it records: a resume asking for others would mix two grids
                "curves": getattr(self, "_curves", None) or "none",
                "train_s": self.earlier_train_s + time.monotonic() - self._train_started,
            },
        )

    def _restore(
        self,
        path: Path,
        run: TrainingRun,
        state: StateT,
        interventions: Sequence[Intervention],
        log: TrainingLog,
    ) -> tuple[int, TrainingLog]:
        """Load a checkpoint of :meth:`_save`; :class:`CheckpointError` naming it when it does
        not fit this training (another algorithm's, another version's, other shapes)."""
        try:
            return self._load_checkpoint(path, run, state, interventions, log)
        except (CheckpointError, torch.OutOfMemoryError, MemoryError):
            raise  # not the checkpoint's fault: it is kept for the next try
        except (CtxrlError, KeyError, RuntimeError, ValueError, TypeError) as exc:
            if "out of memory" in str(exc).lower():
                raise
            detail = f"{type(exc).__name__}: {exc}"
            raise CheckpointError(f"checkpoint {path} cannot be restored ({detail})") from None

    def _load_checkpoint(
        self,
        path: Path,
        run: TrainingRun,
        state: StateT,
        interventions: Sequence[Intervention],
        log: TrainingLog,
    ) -> tuple[int, TrainingLog]:
        tensors, meta = load_artifact(path, device=str(self.device))
        if meta.get("algorithm") not in (None, self.name):
            raise CheckpointError(
                f"checkpoint {path} was written by {meta.get('algorithm')!r}, not {self.name}"
            )
        identity = getattr(self, "_identity", None)
        if meta.get("training") not in (None, identity):  # None: an earlier ctxrl's
            raise CheckpointError(
                f"checkpoint {path} was written for another training (other contexts, seeds, "
                "budget, hyperparameters, warm start or frozen layers)"
            )
        curves = getattr(self, "_curves", None) or "none"
        if meta.get("curves") not in (None, curves):  # None: an earlier ctxrl's
            raise CheckpointError(
                f"checkpoint {path} was written for {_curves_said(meta['curves'])}, and this "
                f"training asks for {_curves_said(curves)}: resume it with the same curves, "
                "or remove the checkpoint to train from the start"
            )
        run.optimizer.load_state_tensors(_unprefixed("adam", tensors), path)
        run.twin.load_state_dict(_unprefixed("env", tensors))
        run.obs = tensors["obs"].view(run.num_agents, run.num_envs, run.obs_dim).clone()
        run.rng.load_state_dict(_unprefixed("rng", tensors))
        self.load_state_tensors(state, _unprefixed("algorithm", tensors))
        for index, intervention in enumerate(interventions):
            intervention.load_state_dict(_unprefixed(f"intervention{index}", tensors))
        run.env_steps = int(meta.get("env_steps", 0))
        self.earlier_train_s = float(meta.get("train_s", 0.0))
        run.restore_pending_diagnostics(
            _unprefixed("diagnostic_sums", tensors), meta.get("diagnostic_counts", {})
        )
        restored = TrainingLog.from_tensors(_unprefixed("log", tensors), log.curve_contexts)
        return int(meta["iteration"]), restored

    # ------------------------------------------------------------ the algorithm object
    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any:
        return self.train_many(env, [task.context.as_dict()], [seed], total_steps=total_steps)

    def evaluate_many(
        self,
        policies: Policies,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]] | Sequence[Sequence[Mapping[str, float]]],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
        per_policy: bool = False,
    ) -> np.ndarray:
        """Returns ``(P, Q, E)`` of P policies on Q contexts, or with ``per_policy`` of policy
        ``i`` on its own list ``contexts[i]`` (see :func:`evaluate_policies`), compiled where
        the trainer's ``compile`` option says so."""
        mode = str(getattr(self.config, "compile", "off"))
        return evaluate_policies(
            policies,
            env,
            contexts,
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            device=self.device,
            per_policy=per_policy,
            compile=evaluation_compiles(mode, self.device),
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
        """Returns ``(len(tasks), episodes)`` of a policies object of one agent (the
        :class:`~ctxrl.registry.Algorithm` protocol's shape); of several agents, ``(agents,
        len(tasks), episodes)``, as :meth:`evaluate_many` gives it."""
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
