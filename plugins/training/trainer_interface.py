"""What a batched algorithm supplies to the one training loop, with the defaults.

:class:`TrainerInterface` is the base of :class:`~ctxrl_plugins.training.trainer.BatchedTrainer`:
the trainer's device and compiled functions, and the methods an algorithm implements or may
override (its network roles, its own state, one iteration of collecting and updating, its
policies object), together with the checks built on them that a sweep runs before anything
trains (:meth:`~TrainerInterface.check_layers`, :meth:`~TrainerInterface.check_interventions`).
The loop that calls them is :meth:`~ctxrl_plugins.training.trainer.BatchedTrainer.train_many`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import torch

from ctxrl.errors import CtxrlError
from ctxrl.interventions import Intervention, NetworkSpec
from ctxrl.options import resolved_device
from ctxrl.registry import EnvSpec
from ctxrl_plugins.training.compiling import CompiledFunction
from ctxrl_plugins.training.networks import Params, StackedMLP
from ctxrl_plugins.training.optimizer import AgentAdam
from ctxrl_plugins.training.run import TrainingRun
from ctxrl_plugins.training.surgery import matching

Tensor = torch.Tensor
StateT = TypeVar("StateT")


def resolve_device(device: str) -> torch.device:
    """The torch device of ``device``, whose name is checked here and whose existence when
    training starts (:func:`ctxrl.options.check_device`): results a GPU wrote are read
    anywhere."""
    return torch.device(resolved_device(device))


class TrainerInterface(Generic[StateT]):
    """The device, the compiled functions and what an algorithm supplies to the training loop
    of :class:`~ctxrl_plugins.training.trainer.BatchedTrainer`, its subclass."""

    name: ClassVar[str]
    env_seed_salt: ClassVar[int] = 0
    """mixed into the twins' per-env seeds, so that two algorithms do not share episodes"""
    needs_twin: ClassVar[bool] = True
    """it trains on an env's torch twin only (a sweep refuses an env without one up front)"""
    acting_roles: ClassVar[tuple[str, ...] | None] = None
    """the network roles whose parameters (``role.*``) decide the policy's actions (PPO's
    ``actor``, not its critic); None: every role. A fine-tune that freezes all of them cannot
    change the policy and is refused."""
    config: Any

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)
        self.compiling = False
        """whether :meth:`setup` chose compiled code for the current training"""
        self.compile_s = 0.0
        """seconds the last :meth:`train_many` spent compiling its training functions (0 when
        eager): per function made by :meth:`compiled`, and Adam's update, the first call's
        time beyond the second's"""
        self._compiled_functions: list[CompiledFunction] = []

    def compiled(self, fn: Callable[..., Any]) -> CompiledFunction:
        """``fn`` compiled for this training (call from :meth:`setup`), its compile time
        counted in :attr:`compile_s`; marks the training as compiling."""
        self.compiling = True
        function = CompiledFunction(fn)
        self._compiled_functions.append(function)
        return function

    # -------------------------------------------------------- what an algorithm supplies
    def check_env(self, env: EnvSpec) -> None:
        """Raise a :class:`~ctxrl.errors.CtxrlError` when the algorithm cannot train ``env``."""

    def check_budget(self, total_steps: int) -> None:
        """Raise a :class:`~ctxrl.errors.ConfigError` naming the hyperparameter when an agent
        cannot learn in ``total_steps`` env steps (a sweep checks ``train_steps`` with it
        before anything trains)."""

    def hyperparameters(self) -> dict[str, Any]:
        """Every hyperparameter an agent trains with, defaults included (the config
        dataclass's fields)."""
        return dataclasses.asdict(self.config)

    @property
    def num_envs(self) -> int:
        """Environments per agent."""
        return int(self.config.num_envs)

    def steps_per_iteration(self) -> int:
        """Environment steps per agent in one :meth:`iterate`."""
        raise NotImplementedError

    def trained_steps(self, total_steps: int) -> int:
        """The env steps per agent :meth:`train_many` trains for ``total_steps``: whole
        iterations, rounded down, at least one."""
        per_iteration = self.steps_per_iteration()
        return max(1, total_steps // per_iteration) * per_iteration

    def default_checkpoint_every(self) -> int:
        """Env steps per agent between checkpoints when the caller does not say: every 50
        iterations."""
        return 50 * self.steps_per_iteration()

    def network_specs(
        self, twin: Any
    ) -> dict[str, tuple[NetworkSpec, dict[str, tuple[int, float]]]]:
        """Per network role: its description and output heads (name -> (width, init gain))."""
        raise NotImplementedError

    def check_layers(self, env: EnvSpec, patterns: Sequence[str], option: str) -> list[str]:
        """Raise a :class:`~ctxrl.errors.CtxrlError` naming ``option`` (``reinit``,
        ``freeze``) and the layers when a pattern matches no layer of the networks this
        algorithm trains on ``env`` (one agent's shapes are built, nothing is drawn); returns
        the parameter names the patterns match."""
        if not patterns:
            return []
        if env.make_batched is None:
            raise CtxrlError(f"{self.name}: env {env.name!r} has no torch twin")
        twin = env.make_batched(1)
        params: Params = dict(self.extra_params(twin))
        layers: list[str] = []
        for role, (spec, heads) in self.network_specs(twin).items():
            net = StackedMLP(role, spec, twin.observation_size, heads)
            params.update(net.init_agent(torch.Generator(), zeros=True))
            layers += net.layers
        return matching(patterns, layers, params, option)

    def check_interventions(self, env: EnvSpec, interventions: Sequence[Intervention]) -> None:
        """Raise a :class:`~ctxrl.errors.CtxrlError` naming the intervention (``interventions[i]``
        and its name) when the networks this algorithm trains on ``env`` cannot take it: each
        role's description through the interventions' :meth:`~ctxrl.interventions.Intervention.
        network` transforms in order, as training applies them, then the networks built for one
        agent on the CPU, with their optimizer, and each intervention's
        :meth:`~ctxrl.interventions.Intervention.setup` called on that agent's training. E.g.
        ``plasticity-injection``'s ``layers`` beyond the network's depth or its ``roles`` naming
        a network the algorithm does not have, found before anything trains rather than when
        every group starts. The interventions given are set up on a throwaway training: pass
        instances that will not train."""
        if not interventions or env.make_batched is None:
            return
        try:
            twin = env.make_batched(self.num_envs)
        except Exception as exc:  # the env plugin's failure, named before anything trains
            raise CtxrlError(
                f"env {env.name!r}: its torch twin cannot be built ({_one_line(exc)})"
            ) from None
        networks: dict[str, StackedMLP] = {}
        for role, (spec, heads) in self.network_specs(twin).items():
            for index, intervention in enumerate(interventions):
                try:
                    spec = intervention.network(role, spec)
                except Exception as exc:
                    raise CtxrlError(
                        f"interventions[{index}] ({intervention.name}): {_one_line(exc)}"
                    ) from None
            try:
                networks[role] = StackedMLP(role, spec, twin.observation_size, heads)
                networks[role].init_agent(torch.Generator(), zeros=True)
            except Exception as exc:
                names = ", ".join(i.name for i in interventions)
                raise CtxrlError(
                    f"interventions ({names}) make a {role} network that cannot be built: "
                    f"{_one_line(exc)}"
                ) from None
        self._check_setup(twin, networks, interventions)

    def _check_setup(
        self, twin: Any, networks: dict[str, StackedMLP], interventions: Sequence[Intervention]
    ) -> None:
        """Each intervention's ``setup`` on a one-agent training of ``networks`` (seed 0, the
        CPU); an error there names the intervention."""
        from ctxrl.rng import StreamRNG
        from ctxrl_plugins.training.networks import stack_agents

        cpu = torch.device("cpu")
        agent: Params = {}
        for net in networks.values():
            agent.update(net.init_agent(torch.Generator().manual_seed(0)))
        params = stack_agents([agent], cpu)
        params.update(self.extra_params(twin))  # on the twin's device: the CPU here
        try:
            run = TrainingRun(
                twin=twin,
                networks=networks,
                params=params,
                optimizer=self.optimizer(params),
                rng=StreamRNG(torch.zeros(1, dtype=torch.int64)),
                interventions=interventions,
                num_envs=self.num_envs,
                device=cpu,
            )
        except Exception as exc:
            names = ", ".join(i.name for i in interventions)
            raise CtxrlError(
                f"{self.name}: its training with interventions ({names}) cannot be set up: "
                f"{_one_line(exc)}"
            ) from None
        for index, intervention in enumerate(run.each_intervention()):
            try:
                intervention.setup(run)
            except Exception as exc:
                raise CtxrlError(
                    f"interventions[{index}] ({intervention.name}): {_one_line(exc)}"
                ) from None

    def extra_params(self, twin: Any) -> Params:
        """Per-agent parameters outside the networks (e.g. a log standard deviation), on the
        twin's device (the trainer's in training, the CPU in :meth:`check_interventions`)."""
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


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: a ctxrl error's message, otherwise its type and message."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CtxrlError) else f"{type(exc).__name__}: {text}"
