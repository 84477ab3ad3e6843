"""The contract every intervention plugin must meet (:mod:`ctxrl.interventions`).

Subclass :class:`InterventionContract` in your plugin's tests and name the intervention::

    from ctxrl.testing import InterventionContract

    class TestMyIntervention(InterventionContract):
        intervention_name = "my-intervention"
        options = {"coef": 1e-3}

Each check trains agents of every algorithm in ``algorithms`` on CartPole with budgets of a few
hundred environment steps (about a second per training on one CPU core): it checks plumbing and
exactness, not learning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import pytest

from ctxrl.artifacts import artifact_file
from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec, InterventionSpec
from ctxrl.testing.plugin import unclashed

if TYPE_CHECKING:
    import torch


class _Killed(Exception):
    """Raised from ``progress`` to stop a training as a kill would."""


class _ParameterWatcher(Intervention):
    """A do-nothing intervention that fails the training if the parameters the trainer owns are
    rebound: the mapping ``view.params``, its names, the tensor objects and their storage
    (``data_ptr``) must stay those seen at the first :meth:`setup` call. Placed before and after
    the intervention under test, it checks around each of its calls."""

    name: ClassVar[str] = "contract-parameter-watcher"

    def __init__(self) -> None:
        self.mapping: Mapping[str, torch.Tensor] | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        self.pointers: dict[str, int] = {}
        self.checks = 0

    def _check(self, view: TrainingView, where: str) -> None:
        assert self.mapping is not None, "setup was not called before training"
        assert view.params is self.mapping, f"view.params was replaced ({where})"
        assert list(view.params) == list(self.tensors), (
            f"parameter names changed ({where}): {sorted(set(view.params) ^ set(self.tensors))}"
        )
        for name, tensor in view.params.items():
            assert tensor is self.tensors[name], f"{name} was rebound to a new tensor ({where})"
            assert tensor.data_ptr() == self.pointers[name], f"{name} moved storage ({where})"
        self.checks += 1

    def setup(self, view: TrainingView) -> None:
        if self.mapping is None:
            self.mapping = view.params
            self.tensors = dict(view.params)
            self.pointers = {name: t.data_ptr() for name, t in view.params.items()}
        else:
            self._check(view, "setup")

    def loss(self, view: TrainingView) -> torch.Tensor | None:
        self._check(view, "loss")
        return None

    def after_update(self, view: TrainingView) -> None:
        self._check(view, "after_update")


def _differing(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (or present in only one of ``a``, ``b``); NaN
    equals NaN in the same place (an intervention's "not measured yet")."""
    import torch

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not x.is_floating_point():
            return torch.equal(x, y)
        return bool(((x == y) | (x.isnan() & y.isnan())).all())

    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not same(a[n], b[n])]


class InterventionContract:
    """Contract for an intervention plugin.

    Class attributes:
        intervention_name: the registry name.
        options: keyword options of the factory (``registry.intervention(name).factory``).
        algorithms: the batched algorithms to check it with.
        env_name: the environment (a discrete-action one for DQN).
        algorithm_params: per algorithm, small hyperparameters for quick checks.
        total_steps: per algorithm, environment steps per agent of each training.

    Every training switches contexts (``switches``): each agent alternates between its own
    context and the far end of the first feature's range, every 96 env steps (128 for the
    default context, so that the agents of a batch switch at different steps), so what the
    intervention does at a switch (``on_context_switch``) is checked as the rest is.

    For every algorithm it checks that with the intervention on: (a) an agent trains bit for
    bit the same alone and in a batch of three with other contexts and seeds; (b) a training
    killed after a checkpoint and resumed ends bit for bit as one never interrupted, the
    intervention's ``state_dict`` included; (c) the trainer's parameters are edited in place,
    never rebound; (d) the trained parameters differ from a training without it; (e) an agent its
    mask leaves out trains bit for bit as without it; (h) warm-started with the first layers
    frozen, those layers end as the source's. And once:
    (f) an unknown option is an error naming it; (g) it is registered and builds an
    :class:`~ctxrl.interventions.Intervention` whose ``name`` is its registry name.
    """

    intervention_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    algorithms: ClassVar[tuple[str, ...]] = ("batched-ppo", "batched-dqn")
    env_name: ClassVar[str] = "CartPole"
    algorithm_params: ClassVar[dict[str, dict[str, Any]]] = {
        # 8 iterations of 2 envs x 32 steps, 4 gradient steps each
        "batched-ppo": {
            "num_envs": 2,
            "num_steps": 32,
            "update_epochs": 2,
            "num_minibatches": 2,
            "hidden": 16,
        },
        # learning from step 100, 4 gradient steps every 16 env steps: 75 updates in 400 steps
        "batched-dqn": {
            "buffer_size": 1000,
            "batch_size": 32,
            "learning_starts": 100,
            "train_frequency": 16,
            "gradient_steps": 4,
            "target_network_frequency": 100,
            "hidden": [16, 16],
        },
    }
    total_steps: ClassVar[dict[str, int]] = {"batched-ppo": 512, "batched-dqn": 400}
    switches: ClassVar[bool] = True
    """Whether the trainings switch contexts (see above); False for an intervention that
    refuses context schedules."""

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Every check that takes ``algorithm_name`` runs once per entry of ``algorithms``."""
        if "algorithm_name" in metafunc.fixturenames:
            metafunc.parametrize("algorithm_name", list(self.algorithms))

    # ------------------------------------------------------------------------ helpers
    @pytest.fixture
    def intervention_spec(self) -> InterventionSpec:
        return get_host().registry.intervention(unclashed("intervention", self.intervention_name))

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(unclashed("env", self.env_name))

    def build(self, spec: InterventionSpec) -> Intervention:
        """A fresh intervention from the registry's factory with ``options``."""
        return cast(Intervention, spec.factory(**self.options))

    def train(
        self,
        algorithm_name: str,
        env_spec: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        interventions: Sequence[Intervention | tuple[Intervention, Sequence[int]]],
        **kwargs: Any,
    ) -> Any:
        """The policies of a short training (``total_steps[algorithm_name]`` per agent), on
        switching contexts (:meth:`schedules`) unless ``switches`` is False or ``schedules``
        are given."""
        if self.switches and "schedules" not in kwargs:
            kwargs["schedules"] = self.schedules(env_spec, contexts)
        algorithm_spec = get_host().registry.algorithm(algorithm_name)
        # Any: the BatchedAlgorithm protocol does not declare the batched trainers' keywords
        algorithm: Any = algorithm_spec.factory(
            dict(self.algorithm_params.get(algorithm_name, {})), device="cpu", env=env_spec
        )
        return algorithm.train_many(
            env_spec,
            contexts,
            seeds,
            total_steps=self.total_steps.get(algorithm_name, 512),
            interventions=list(interventions),
            **kwargs,
        )

    @staticmethod
    def schedules(env_spec: EnvSpec, contexts: Sequence[Mapping[str, float]]) -> list[Any]:
        """Per agent, a schedule alternating between its context and the far end of the first
        feature's range, every 96 env steps (128 for the feature's default value)."""
        from ctxrl.schedules import SequenceSchedule

        feature = env_spec.context_space.features[0]
        schedules = []
        for context in contexts:
            value = context[feature.name]
            other = feature.lower if value == feature.upper else feature.upper
            every = 128 if value == feature.default else 96
            schedules.append(
                SequenceSchedule(
                    env_spec.context_space, [dict(context), {feature.name: other}], every=every
                )
            )
        return schedules

    @staticmethod
    def _contexts(env_spec: EnvSpec) -> list[dict[str, float]]:
        """Three contexts: the default in the middle, a feature at each end around it."""
        feature = env_spec.context_space.features[0]
        return [
            {feature.name: feature.lower},
            {feature.name: feature.default},
            {feature.name: feature.upper},
        ]

    # ------------------------------------------------------------------------- checks
    def test_is_registered_and_builds_an_intervention(
        self, intervention_spec: InterventionSpec
    ) -> None:
        registry = get_host().registry
        assert registry.intervention(self.intervention_name) is intervention_spec
        assert intervention_spec.name == self.intervention_name
        intervention = self.build(intervention_spec)
        assert isinstance(intervention, Intervention)
        assert intervention.name == self.intervention_name, (
            "the class attribute name is the registry name (it prefixes the diagnostics)"
        )
        assert intervention_spec.description, (
            "give the InterventionSpec a one-line description (ctxrl plugins lists it)"
        )

    def test_unknown_option_is_an_error_naming_it(
        self, intervention_spec: InterventionSpec
    ) -> None:
        with pytest.raises((TypeError, ConfigError), match="no_such_option"):
            intervention_spec.factory(**self.options, no_such_option=1)
            pytest.fail(
                f"{self.intervention_name}'s factory took an option it does not have "
                "(no_such_option=1) without an error naming it"
            )

    def test_agents_stay_independent(
        self, algorithm_name: str, intervention_spec: InterventionSpec, env_spec: EnvSpec
    ) -> None:
        """Agent (default context, seed 3) alone and at index 1 of a batch of three."""
        contexts = self._contexts(env_spec)
        alone = self.train(
            algorithm_name, env_spec, contexts[1:2], [3], [self.build(intervention_spec)]
        )
        batch = self.train(
            algorithm_name, env_spec, contexts, [11, 3, 12], [self.build(intervention_spec)]
        )
        import torch

        for name, value in alone.params.items():
            assert torch.equal(value[0], batch.params[name][1]), (
                f"{name}: agent 1 of a batch of 3 differs from the same agent trained alone; "
                "what the intervention does to an agent must depend on that agent only"
            )

    def test_agents_it_leaves_out_train_as_without_it(
        self, algorithm_name: str, intervention_spec: InterventionSpec, env_spec: EnvSpec
    ) -> None:
        """Applied to agent 0 of two, agent 1 ends bit for bit as the same agent trained with no
        intervention: an intervention must not touch the parameters, optimizer state or random
        stream of an agent its mask leaves out (studies put several arms in one batch)."""
        intervention = self.build(intervention_spec)
        if intervention.changes_network or intervention.whole_batch:
            pytest.skip(f"{self.intervention_name} applies to every agent of a batch")
        contexts = self._contexts(env_spec)
        plain = self.train(algorithm_name, env_spec, contexts[1:2], [3], [])
        masked = self.train(algorithm_name, env_spec, contexts[:2], [11, 3], [(intervention, [0])])
        import torch

        for name, value in plain.params.items():
            assert torch.equal(value[0], masked.params[name][1]), (
                f"{name}: an agent the intervention leaves out differs from the same agent "
                "trained without it (does it draw from or edit every agent's state?)"
            )

    def test_checkpoint_round_trip(
        self,
        algorithm_name: str,
        intervention_spec: InterventionSpec,
        env_spec: EnvSpec,
        tmp_path: Path,
    ) -> None:
        """Killed three quarters in (after the checkpoint at half-way), a training resumed by
        the same call ends with the parameters and intervention state of one never killed."""
        contexts, seeds = self._contexts(env_spec)[:2], [0, 1]
        reference_intervention = self.build(intervention_spec)
        reference = self.train(algorithm_name, env_spec, contexts, seeds, [reference_intervention])
        checkpoint = tmp_path / "checkpoint"
        stored = artifact_file(checkpoint)
        half = self.total_steps.get(algorithm_name, 512) // 2

        def kill_after_the_checkpoint(done: int, total: int) -> None:
            if stored.exists() and done >= 3 * total // 4:
                raise _Killed

        with pytest.raises(_Killed):
            self.train(
                algorithm_name,
                env_spec,
                contexts,
                seeds,
                [self.build(intervention_spec)],
                checkpoint=checkpoint,
                checkpoint_every=half,
                progress=kill_after_the_checkpoint,
            )
        resumed_intervention = self.build(intervention_spec)
        resumed = self.train(
            algorithm_name,
            env_spec,
            contexts,
            seeds,
            [resumed_intervention],
            checkpoint=checkpoint,
            checkpoint_every=half,
        )
        differing = _differing(reference.params, resumed.params)
        assert not differing, f"parameters differ after resuming: {differing}"
        differing = _differing(
            reference_intervention.state_dict(), resumed_intervention.state_dict()
        )
        assert not differing, f"intervention state differs after resuming: {differing}"

    def test_edits_parameters_in_place(
        self, algorithm_name: str, intervention_spec: InterventionSpec, env_spec: EnvSpec
    ) -> None:
        """The parameter mapping, its names, tensors and storage stay the trainer's from setup
        to the last update, checked before and after each of the intervention's calls."""
        watcher = _ParameterWatcher()
        policies = self.train(
            algorithm_name,
            env_spec,
            self._contexts(env_spec)[:2],
            [0, 1],
            [watcher, self.build(intervention_spec), watcher],
        )
        assert watcher.checks > 0, "no update happened: the budget is too small"
        assert list(policies.params) == list(watcher.tensors)

    def test_leaves_a_warm_starts_frozen_layers_alone(
        self, algorithm_name: str, intervention_spec: InterventionSpec, env_spec: EnvSpec
    ) -> None:
        """Warm-started with every network's first layer frozen (``freeze=["*.0"]``, as a
        fine-tuning sweep may ask), those layers end as the source's: an after-update
        operator, a reset or an injection leaves ``view.frozen`` layers alone."""
        import torch

        contexts, seeds = self._contexts(env_spec)[:2], [0, 1]
        source = self.train(
            algorithm_name, env_spec, contexts, seeds, [self.build(intervention_spec)]
        )
        tuned = self.train(
            algorithm_name,
            env_spec,
            contexts,
            seeds,
            [self.build(intervention_spec)],
            init=source,
            freeze=["*.0"],
        )
        frozen = [n for n in source.params if n.split(".")[1:2] == ["0"]]
        assert frozen, "no layer named <role>.0 to freeze"
        for name in frozen:
            assert torch.equal(tuned.params[name], source.params[name]), (
                f"{name} was frozen by the warm start and changed (does it read view.frozen?)"
            )

    def test_changes_training(
        self, algorithm_name: str, intervention_spec: InterventionSpec, env_spec: EnvSpec
    ) -> None:
        """Trained parameters differ from those trained without it (an intervention that
        changes nothing is a bug); its diagnostics are per agent ``(N,)``, and every name in
        the log has one entry per record, the algorithm's own beside it included."""
        contexts, seeds = self._contexts(env_spec)[:2], [0, 1]
        plain = self.train(algorithm_name, env_spec, contexts, seeds, [])
        changed = self.train(
            algorithm_name, env_spec, contexts, seeds, [self.build(intervention_spec)]
        )
        import torch

        assert all(bool(torch.isfinite(t).all()) for t in changed.params.values())
        assert _differing(plain.params, changed.params), (
            f"{self.intervention_name} left training unchanged"
        )
        prefix = f"{self.intervention_name}."
        for name, records in changed.log.diagnostics.items():
            assert len(records) == len(changed.log.diagnostic_steps), name
            if name.startswith(prefix):
                assert all(r.shape == (len(seeds),) for r in records), name


__all__ = ["InterventionContract"]
