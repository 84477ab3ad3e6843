"""The torch-twin half of :class:`ctxrl.testing.EnvContract` (its base class): the twin's
protocol at the default and extreme contexts, its agreement with the gymnasium env (spaces, a
context set later acting as one built in, mean returns under random actions), per-env random
streams, auto-reset, the ``state_dict`` round trip and a batched-PPO run resumed from a
checkpoint. Every check skips an env without a twin.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest

from ctxrl.artifacts import artifact_file
from ctxrl.context import ContextFeature
from ctxrl.errors import ContextError
from ctxrl.plugins import get_host
from ctxrl.registry import BatchedAlgorithm, EnvSpec


def _extreme_contexts(spec: EnvSpec) -> list[dict[str, float]]:
    """The default context and every feature at each end of its range (others default).

    Contexts that violate a cross-feature constraint of the env are skipped."""
    contexts: list[dict[str, float]] = [{}]
    for feature in spec.context_space.features:
        contexts += [{feature.name: feature.lower}, {feature.name: feature.upper}]
    valid = []
    for context in contexts:
        try:
            env = spec.make(context)
        except ContextError:
            continue
        env.close()
        valid.append(context)
    return valid


def _changed_feature(spec: EnvSpec) -> tuple[ContextFeature, float]:
    """A feature and a non-default value at one end of its range that the env accepts."""
    for context in _extreme_contexts(spec)[1:]:
        ((name, value),) = context.items()
        if value != spec.context_space.feature(name).default:
            return spec.context_space.feature(name), value
    raise AssertionError(f"{spec.name}: no feature can leave its default")


class TwinChecks:
    """The twin checks of :class:`~ctxrl.testing.EnvContract` and the settings both halves
    read; subclass ``EnvContract``, not this."""

    check_steps: ClassVar[int] = 50
    context_effect_steps: ClassVar[int | None] = 200
    """random steps within which some context at an end of its range must change a seeded
    episode (gymnasium env and twin); None skips the check, for contexts that act only later
    (a goal random actions never reach)"""
    features_acting_later: ClassVar[Collection[str]] = ()
    """features exempt from the per-feature effect check (``"feature"``, or ``"Env.feature"``
    in a contract parametrised over several envs): ones whose effect random steps within
    ``context_effect_steps`` do not reach, such as a position bound or a goal's speed"""
    twin_return_steps: ClassVar[int] = 100
    """random-action steps (or fewer, to the episode's end) whose return the twin and the
    gymnasium env must agree on, per context"""
    twin_return_episodes: ClassVar[int] = 16
    """gymnasium episodes per context for that check (the twin runs 256 envs at once)"""
    twin_train_steps: ClassVar[int] = 256
    """env steps of the batched-PPO contract test (8 updates of 2 envs x 16 steps)"""
    twin_train_params: ClassVar[dict[str, Any]] = {
        "num_envs": 2,
        "num_steps": 16,
        "update_epochs": 2,
        "num_minibatches": 2,
        "hidden": 16,
    }

    def test_twin_agrees_with_the_gymnasium_env_on_its_spaces(self, env_spec: EnvSpec) -> None:
        """Observation size (with and without visible features), action kind and size, and
        declared ``action_bounds``, against the gymnasium env at the default context."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        from gymnasium import spaces

        names = env_spec.context_space.names
        for visible in ((), names):
            env = env_spec.make({}, visible=visible)
            try:
                twin = self._twin(env_spec, 1, {}, visible=list(visible))
            except TypeError:  # a twin without visible features (an env option it may refuse)
                if visible:
                    env.close()
                    continue
                raise
            space, actions = env.observation_space, env.action_space
            assert space.shape == (twin.observation_size,), (
                f"{env_spec.name} (visible {list(visible)}): the gymnasium env observes "
                f"{space.shape}, the twin {twin.observation_size} values"
            )
            if isinstance(actions, spaces.Discrete):
                assert twin.discrete_actions == int(actions.n), (
                    f"{env_spec.name}: {actions.n} actions in gymnasium, twin "
                    f"{twin.discrete_actions}"
                )
            else:
                assert twin.action_dim == int(np.prod(actions.shape)), (
                    f"{env_spec.name}: actions of shape {actions.shape} in gymnasium, twin "
                    f"action_dim {twin.action_dim}"
                )
                bounds = getattr(twin, "action_bounds", None)
                if bounds is not None:
                    np.testing.assert_allclose(
                        [actions.low.min(), actions.high.max()],
                        list(bounds),
                        err_msg=f"{env_spec.name}: the twin's action_bounds are not the "
                        "gymnasium action space's",
                    )
            env.close()

    def test_twin_contexts_change_what_it_does(self, env_spec: EnvSpec) -> None:
        """As for the gymnasium env: some feature at an end of its range changes the twin's
        seeded trajectory (a twin whose physics reads constants instead of ``context`` passes
        the protocol tests)."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        steps = self.context_effect_steps
        if steps is None:
            pytest.skip(f"{env_spec.name}: context_effect_steps is None (contexts act later)")
        reference = self._twin_rollout(env_spec, {}, steps)
        for context in _extreme_contexts(env_spec)[1:]:
            if self._twin_rollout(env_spec, context, steps) != reference:
                return
        raise AssertionError(
            f"{env_spec.name}: no context at the ends of its features' ranges changes the "
            f"twin's first {steps} random steps: does its step read self.context? (see "
            "context_effect_steps)"
        )

    def test_twin_set_to_a_context_acts_as_one_built_with_it(self, env_spec: EnvSpec) -> None:
        """A twin built at the default context and ``set_context`` to a feature's end follows
        a twin built at that end step for step (a twin that copies its contexts into its own
        constants when it is built ignored every later change: schedules, switches)."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        steps = self.context_effect_steps or self.check_steps
        for context in _extreme_contexts(env_spec)[1:]:
            built = self._twin(env_spec, 4, context)
            changed = self._twin(env_spec, 4, {})
            changed.set_context(dict(context))
            assert self._seeded_trace(changed, steps) == self._seeded_trace(built, steps), (
                f"{env_spec.name}: a twin set_context to {context} does not act as one built "
                "at it: does its step read self.context (not values copied when it was built)?"
            )

    def test_twin_returns_match_the_gymnasium_env_at_default_and_extremes(
        self, env_spec: EnvSpec
    ) -> None:
        """Under uniformly random actions the twin's mean return over its first
        ``twin_return_steps`` steps (fewer where the episode ends) matches the gymnasium env's
        within five standard errors (plus 0.1 % of the return bounds' range), at the default
        context and at each feature's ends: a twin that ignores a feature the env reads, or
        whose physics or reward differ, was passed by checks of spaces and protocol alone
        (batched algorithms train on the twin and never step the gymnasium env)."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        lower, upper = env_spec.return_bounds
        differing = []
        for context in _extreme_contexts(env_spec):
            twin = self._twin_returns(env_spec, context)
            env = self._gym_returns(env_spec, context)
            # the larger sample variance for both: a few episodes may all miss a rare reward
            # (a goal reached by chance) that the twin's many envs find
            spread = max(float(twin.var(ddof=1)), float(env.var(ddof=1)))
            error = float(np.sqrt(spread * (1 / len(twin) + 1 / len(env))))
            gap = abs(float(twin.mean()) - float(env.mean()))
            if gap > 5 * error + 1e-3 * (upper - lower):
                differing.append(
                    f"{context or 'default'}: twin {twin.mean():.4g}, gymnasium "
                    f"{env.mean():.4g} (+- {error:.2g})"
                )
        assert not differing, (
            f"{env_spec.name}: the twin's mean return under random actions (first "
            f"{self.twin_return_steps} steps) is not the gymnasium env's: " + "; ".join(differing)
        )

    def _twin_returns(self, env_spec: EnvSpec, context: Mapping[str, float]) -> np.ndarray:
        """Each of 256 twin envs' return over its first episode's first
        ``twin_return_steps`` steps, under uniformly random actions (continuous ones over the
        gymnasium env's action range at ``context``, as its action space samples them)."""
        import torch

        twin = self._twin(env_spec, 256, context)
        generator = torch.Generator().manual_seed(5)
        twin.reset()
        total = torch.zeros(twin.num_envs, dtype=torch.float64)
        running = torch.ones(twin.num_envs, dtype=torch.bool)
        low, high = -1.0, 1.0
        if twin.discrete_actions is None:  # the gymnasium env's action range at this context
            env = env_spec.make(context)
            space = env.action_space
            low, high = float(np.min(space.low)), float(np.max(space.high))
            env.close()
        for _ in range(self.twin_return_steps):
            if twin.discrete_actions is not None:
                action = torch.randint(
                    0, twin.discrete_actions, (twin.num_envs,), generator=generator
                )
            else:
                unit = torch.rand(twin.num_envs, twin.action_dim, generator=generator)
                action = low + (high - low) * unit
            _, reward, _, _, info = twin.step(action)
            total += torch.where(running, reward.double(), 0.0)
            running &= ~info["done"]
            if not bool(running.any()):
                break
        return total.numpy()

    def _gym_returns(self, env_spec: EnvSpec, context: Mapping[str, float]) -> np.ndarray:
        """The gymnasium env's return over each of ``twin_return_episodes`` episodes' first
        ``twin_return_steps`` steps, under its action space's uniform samples."""
        env = env_spec.make(context)
        env.action_space.seed(5)
        returns = []
        for episode in range(self.twin_return_episodes):
            env.reset(seed=1000 + episode)
            total = 0.0
            for _ in range(self.twin_return_steps):
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                if terminated or truncated:
                    break
            returns.append(total)
        env.close()
        return np.asarray(returns)

    def _seeded_trace(self, twin: Any, steps: int) -> list[Any]:
        """Observations, rewards and endings of ``steps`` seeded random steps after reset."""
        import torch

        generator = torch.Generator().manual_seed(3)
        trace: list[Any] = [twin.reset().tolist()]
        for _ in range(steps):
            out = twin.step(self._random_actions(twin, generator))
            trace.append(tuple(t.tolist() for t in out[:4]))
        return trace

    def _twin_rollout(
        self, env_spec: EnvSpec, context: Mapping[str, float], steps: int
    ) -> list[Any]:
        return self._seeded_trace(self._twin(env_spec, 1, context), steps)

    def test_twin_env_depends_on_its_own_seed_only(self, env_spec: EnvSpec) -> None:
        """Env ``i`` draws from the stream of ``env_seeds[i]`` alone: the same seed gives the
        same episode alone and as the last of three envs with other seeds and contexts (what
        lets an agent train bit for bit alone and in a batch, and shards match one program)."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        feature, value = _changed_feature(env_spec)
        default = env_spec.context_space.validate({})

        def twin(seeds: list[int], contexts: list[Mapping[str, float]]) -> Any:
            full = [env_spec.context_space.validate(c) for c in contexts]
            assert env_spec.make_batched is not None
            return env_spec.make_batched(
                len(seeds),
                contexts={
                    n: torch.tensor([c[n] for c in full]) for n in env_spec.context_space.names
                },
                device="cpu",
                env_seeds=torch.tensor(seeds, dtype=torch.int64),
            )

        alone = twin([77], [default.as_dict()])
        batch = twin([5, 6, 77], [{feature.name: value}, {}, default.as_dict()])
        generator = torch.Generator().manual_seed(4)
        first_alone, first_batch = alone.reset(), batch.reset()
        assert torch.equal(first_alone[0], first_batch[2]), (
            f"{env_spec.name}: env 2 of a batch starts elsewhere than the same seed alone: "
            "draw initial states from the env's own stream (BatchedEnv._uniform)"
        )
        for step in range(self.check_steps):
            actions = self._random_actions(batch, generator)
            out_batch, out_alone = batch.step(actions), alone.step(actions[2:])
            for a, b, what in zip(
                out_alone[:3], out_batch[:3], ("obs", "reward", "terminated"), strict=True
            ):
                assert torch.equal(a[0], b[2]), (
                    f"{env_spec.name}, step {step}: env 2 of a batch differs ({what}) from the "
                    "same seed alone: its random numbers must come from its own stream"
                )

    def _twin(
        self, env_spec: EnvSpec, num_envs: int, context: Mapping[str, float], **options: Any
    ) -> Any:
        """A twin of ``num_envs`` envs at ``context``, built as the batched trainers build
        one (every feature as a float32 tensor, one random stream per env; ``options``: env
        options, each passed only where given non-empty)."""
        import torch

        assert env_spec.make_batched is not None
        full = env_spec.context_space.validate(context)
        options = {k: v for k, v in options.items() if v}
        return env_spec.make_batched(
            num_envs,
            contexts={n: torch.full((num_envs,), full[n]) for n in env_spec.context_space.names},
            device="cpu",
            env_seeds=torch.arange(num_envs, dtype=torch.int64) * 1_000_003 + 11,
            **options,
        )

    @staticmethod
    def _random_actions(twin: Any, generator: Any) -> Any:
        """Uniform random actions: ``(B,)`` integers or ``(B, action_dim)`` in [-1, 1]."""
        import torch

        if twin.discrete_actions is not None:
            return torch.randint(0, twin.discrete_actions, (twin.num_envs,), generator=generator)
        return torch.rand(twin.num_envs, twin.action_dim, generator=generator) * 2 - 1

    def _check_step(self, twin: Any, obs_dtype: Any, out: tuple[Any, ...]) -> None:
        import torch

        b, size = twin.num_envs, twin.observation_size
        obs, reward, terminated, truncated, info = out
        assert obs.shape == (b, size) and obs.dtype == obs_dtype
        assert reward.shape == (b,) and reward.is_floating_point()
        for flags in (terminated, truncated, info["done"]):
            assert flags.shape == (b,) and flags.dtype == torch.bool
        assert info["final_obs"].shape == (b, size) and info["final_obs"].dtype == obs_dtype
        assert torch.equal(info["done"], terminated | truncated)
        assert not bool((terminated & truncated).any()), "truncated only where not terminated"
        running = ~info["done"]
        assert torch.equal(info["final_obs"][running], obs[running])
        for name, values in (("obs", obs), ("reward", reward), ("final_obs", info["final_obs"])):
            assert bool(torch.isfinite(values).all()), f"the twin's {name} is not finite: {values}"

    def test_twin_meets_the_protocol_at_default_and_extremes(self, env_spec: EnvSpec) -> None:
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        from ctxrl.twins import TorchTwin

        generator = torch.Generator().manual_seed(0)
        for context in _extreme_contexts(env_spec):
            twin = self._twin(env_spec, 3, context)
            assert isinstance(twin, TorchTwin), "make_batched must return a ctxrl.twins.TorchTwin"
            assert twin.num_envs == 3 and twin.device == torch.device("cpu")
            assert twin.discrete_actions is None or twin.discrete_actions >= 2
            assert twin.action_dim >= 1 and (twin.discrete_actions is None) == (
                env_spec.action_space == "continuous"
            )
            assert twin.discrete_actions is None or twin.action_dim == 1
            if env_spec.max_episode_steps is not None:
                assert twin.max_episode_steps == env_spec.max_episode_steps
            full = env_spec.context_space.validate(context)
            assert set(twin.context) == set(env_spec.context_space.names)
            for name, tensor in twin.context.items():
                assert tensor.shape == (3,)
                torch.testing.assert_close(tensor.float(), torch.full((3,), full[name]))
            obs = twin.reset()
            assert obs.shape == (3, twin.observation_size) and obs.is_floating_point()
            for _ in range(self.check_steps):
                self._check_step(twin, obs.dtype, twin.step(self._random_actions(twin, generator)))
        feature, _ = _changed_feature(env_spec)
        with pytest.raises(ContextError, match=feature.name):
            env_spec.make_batched(
                2, contexts={feature.name: feature.upper + abs(feature.upper) + 1}
            )

    def test_twin_resets_itself_when_an_episode_ends(self, env_spec: EnvSpec) -> None:
        """Every env runs into its time limit: ``truncated`` comes exactly
        ``max_episode_steps`` steps after the env's episode started (at ``reset`` or at its
        last ``done``), so done envs restart in the step that ends their episode."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        twin = self._twin(env_spec, 4, {})
        generator = torch.Generator().manual_seed(1)
        dtype = twin.reset().dtype
        elapsed = torch.zeros(4, dtype=torch.int64)
        ended = torch.zeros(4, dtype=torch.bool)
        for _ in range(twin.max_episode_steps + 1):
            out = twin.step(self._random_actions(twin, generator))
            self._check_step(twin, dtype, out)
            _, _, terminated, truncated, info = out
            elapsed += 1
            expected = (elapsed >= twin.max_episode_steps) & ~terminated
            assert torch.equal(truncated, expected), "truncated at the time limit, not before"
            elapsed[info["done"]] = 0
            ended |= info["done"]
        assert bool(ended.all())

    def test_twin_state_dict_round_trip(self, env_spec: EnvSpec) -> None:
        """Step, save, step on; a fresh twin that loads the save steps identically, with a
        context pool redrawing contexts at each episode start."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        feature, value = _changed_feature(env_spec)
        pool = [{}, {feature.name: value}]

        def started() -> Any:
            twin = self._twin(env_spec, 4, {})
            twin.set_context_pool(pool)
            twin.reset()
            return twin

        twin = started()
        generator = torch.Generator().manual_seed(2)
        for _ in range(self.check_steps):
            twin.step(self._random_actions(twin, generator))
        saved = twin.state_dict()
        assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in saved.values())
        actions = [self._random_actions(twin, generator) for _ in range(self.check_steps)]
        fresh = started()
        fresh.load_state_dict(saved)
        for action in actions:
            expected, got = twin.step(action), fresh.step(action)
            for a, b in zip(expected[:4], got[:4], strict=True):
                assert torch.equal(a, b), "a loaded twin must step exactly as the saved one"
            for key in ("done", "final_obs"):
                assert torch.equal(expected[4][key], got[4][key])
            for name in twin.context:
                assert torch.equal(twin.context[name], fresh.context[name])

    def test_twin_step_changes_no_tensor_it_gave_or_took(self, env_spec: EnvSpec) -> None:
        """A trainer keeps what a step returned (observations in its rollout buffer), what
        ``state_dict`` saved (a checkpoint written later) and the actions it passed: a twin
        that updates those tensors in place changes them after the fact, a rollout or a
        checkpoint of another step. Its ``_dynamics`` must return new tensors."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        feature, value = _changed_feature(env_spec)
        twin = self._twin(env_spec, 4, {})
        twin.set_context_pool([{}, {feature.name: value}])  # contexts redrawn at episode ends
        generator = torch.Generator().manual_seed(3)
        kept: dict[str, Any] = {"reset's observations": twin.reset()}
        ended = False
        for step in range(max(self.check_steps, twin.max_episode_steps + 1)):
            kept.update({f"saved {k}": v for k, v in twin.state_dict().items()})
            kept["the actions"] = self._random_actions(twin, generator)
            copies = {name: tensor.clone() for name, tensor in kept.items()}
            obs, reward, terminated, truncated, info = twin.step(kept["the actions"])
            for name, tensor in kept.items():
                assert torch.equal(tensor, copies[name]), (
                    f"{env_spec.name}, step {step}: the twin's step changed {name} in place"
                )
            ended |= bool(info["done"].any())
            kept = {"the observations": obs, "rewards": reward, "terminated": terminated}
            kept.update({"truncated": truncated, "info's done": info["done"]})
            kept["info's final_obs"] = info["final_obs"]
            if ended and step >= self.check_steps:
                break
        assert ended, f"{env_spec.name}: no episode ended in the check's steps"

    def test_twin_trains_batched_ppo_and_resumes_from_a_checkpoint(
        self, env_spec: EnvSpec, tmp_path: Path
    ) -> None:
        """A few hundred steps of batched PPO on the twin through the registry; a run killed
        after a checkpoint and started again ends with exactly the parameters of a run that
        was never interrupted; the trained agent evaluates on the twin."""
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        pytest.importorskip("torch")
        import torch

        registry = get_host().registry
        if "batched-ppo" not in registry.names("algorithm"):
            pytest.skip("batched-ppo is not available")
        algorithm_spec = registry.algorithm("batched-ppo")
        if env_spec.action_space not in algorithm_spec.action_spaces:
            pytest.skip(f"batched-ppo does not take {env_spec.action_space} actions")
        feature, value = _changed_feature(env_spec)
        contexts, seeds = [{feature.name: value}], [0]
        iterations = self.twin_train_steps // (2 * 16)

        def train(**kwargs: Any) -> Any:
            algorithm = cast(
                BatchedAlgorithm,
                algorithm_spec.factory(dict(self.twin_train_params), device="cpu", env=env_spec),
            )
            policies = algorithm.train_many(
                env_spec, contexts, seeds, total_steps=self.twin_train_steps, **kwargs
            )
            return algorithm, policies

        class Killed(Exception):
            pass

        def kill_midway(done: int, total: int) -> None:
            assert total == iterations
            if done == iterations // 2 + 1:
                raise Killed

        _, reference = train()
        checkpoint = tmp_path / "ckpt"
        with pytest.raises(Killed):
            train(checkpoint=checkpoint, checkpoint_every=1, progress=kill_midway)
        assert artifact_file(checkpoint).is_file()
        algorithm, resumed = train(checkpoint=checkpoint, checkpoint_every=1)
        for name, tensor in reference.params.items():
            assert bool(torch.isfinite(tensor).all()), name
            assert torch.equal(tensor, resumed.params[name]), f"{name} differs after resuming"
        returns = algorithm.evaluate_many(resumed, env_spec, contexts, episodes=1, seed=0)
        assert np.asarray(returns).shape == (1, 1, 1) and np.isfinite(returns).all()


__all__ = ["TwinChecks"]
