"""Catch (Sabatelli & Geurts 2021): the env contract, the rules, each variant, the torch twin's
parity with the gymnasium env, and batched DQN learning Catch-v0.

Parity: an episode is a deterministic function of its key (drawn at reset) and the actions, in
both implementations, while the keys come from different generators (gymnasium's ``np_random``,
the twin's per-env streams). So the tests check (1) that the twin's first state for the key it
drew is the gymnasium env's first state for that key, (2) that from the same state, the same
actions give the same states, observations (bit for bit), rewards and terminations in both, over
many episodes and every variant, and (3) that the keys, first balls and random-play returns
have the same distributions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ctxrl import ContextError
from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing import EnvContract
from ctxrl_envs import catch as ct
from ctxrl_envs.catch_twin import BatchedCatch, hash_bits

CONTEXTS: list[dict[str, float]] = [
    *ct.VARIANTS.values(),
    {"paddle_width": 1.0, "noise": 17.0, "swap_actions": 1.0},
    {"paddle_width": 7.0, "mirrored": 1.0, "sparse": 1.0, "noise": 255.0},
    {"paddle_width": 3.4, "noise": 99.5, "sparse": 1.0, "swap_actions": 1.0},
]


class TestCatchContract(EnvContract):
    env_name = "Catch"


@pytest.fixture
def spec() -> EnvSpec:
    return get_host().registry.env("Catch")


def _state(env: Any) -> np.ndarray:
    return np.asarray(env.unwrapped.state, dtype=np.float64)


def _landing(state: np.ndarray) -> int:
    """The column where the ball will reach the paddle's row (the rules' bounce)."""
    row, col, speed = (int(v) for v in state[:3])
    for _ in range(ct.BOTTOM - row):
        col += speed
        if col < 0 or col > ct.BOTTOM:
            col, speed = (-col if col < 0 else 2 * ct.BOTTOM - col), -speed
    return col


def _oracle(state: np.ndarray, width: int) -> int:
    """Move the paddle's centre towards the landing column: catches every ball."""
    centre = int(state[3]) + (width - 1) // 2
    return 1 + int(np.sign(_landing(state) - centre))


# ---------------------------------------------------------------------------------- rules
def test_registered_with_bounds_limit_and_gymnasium_id(spec: EnvSpec) -> None:
    import gymnasium as gym

    import ctxrl_envs  # noqa: F401  (registers the ctxrl/ ids)

    assert spec.return_bounds == (0.0, 1.0) and spec.max_episode_steps == 101
    assert spec.action_space == "discrete"
    env = gym.make("ctxrl/Catch-v0", context=ct.variant("v1"), frames=1)
    obs, info = env.reset(seed=0)
    assert obs.shape == (441,) and info["context"]["paddle_width"] == 2.0
    assert env.spec is not None and env.spec.max_episode_steps == 101


def test_variants_table() -> None:
    assert ct.variant("Catch-v2")["noise"] == 255.0
    assert ct.variant("v0") == get_host().registry.env("Catch").context_space.default().as_dict()
    assert {name: ct.variant(name)["paddle_width"] for name in ct.VARIANTS} == {
        "v0": 5.0,
        "v1": 2.0,
        "v2": 5.0,
        "v3": 5.0,
        "v4": 5.0,
    }
    with pytest.raises(ContextError, match="v9"):
        ct.variant("v9")


@pytest.mark.parametrize("flag", ["mirrored", "sparse", "swap_actions"])
def test_flags_must_be_0_or_1(spec: EnvSpec, flag: str) -> None:
    with pytest.raises(ContextError, match=f"{flag}.*0 or 1"):
        spec.make({flag: 0.5})
    with pytest.raises(ContextError, match=f"{flag}.*0 or 1"):
        spec.make_batched(2, contexts={flag: torch.tensor([0.0, 0.5])})
    with pytest.raises(ValueError, match="frames"):
        spec.make(frames=3)
    with pytest.raises(ValueError, match="frames"):
        spec.make_batched(2, frames=3)


def test_first_frames_and_an_episode_of_v0(spec: EnvSpec) -> None:
    env = spec.make()
    obs, _ = env.reset(seed=3)
    assert obs.shape == (882,) and obs.dtype == np.float32
    previous, current = obs.reshape(2, 21, 21)
    np.testing.assert_array_equal(previous, current)  # both frames the first one at the start
    state = _state(env)
    assert state[0] == 0 and current[0, int(state[1])] == 1.0  # ball on the top row
    np.testing.assert_array_equal(np.flatnonzero(current[20]), np.arange(8, 13))  # centred paddle
    assert current.sum() == 6.0
    rewards = []
    for step in range(1, 21):
        before = current
        obs, reward, terminated, truncated, _ = env.step(_oracle(_state(env), 5))
        previous, current = obs.reshape(2, 21, 21)
        np.testing.assert_array_equal(previous, before)  # the frame shown one step earlier
        rewards.append(reward)
        assert terminated == (step == 20) and not truncated
        assert int(_state(env)[0]) == step  # one row per step
    assert rewards == [0.0] * 19 + [1.0]


def test_ball_bounces_off_the_walls(spec: EnvSpec) -> None:
    env = spec.make()
    env.reset(seed=0)
    base = env.unwrapped
    base.state = np.array([0, 1, -2, 8, 0, 1, 8, 0, 0, 7], dtype=np.float64)
    env.step(1)  # column 1 - 2 = -1 -> 1, speed +2
    assert list(_state(env)[:3]) == [1, 1, 2]
    base.state = np.array([0, 19, 2, 8, 0, 19, 8, 0, 0, 7], dtype=np.float64)
    env.step(1)  # column 21 -> 19, speed -2
    assert list(_state(env)[:3]) == [1, 19, -2]


@pytest.mark.parametrize(("width", "caught"), [(5, True), (2, False)])
def test_paddle_width(spec: EnvSpec, width: int, caught: bool) -> None:
    """A ball landing 3 cells right of the paddle's left end: under a paddle of 5, past one
    of 2; the paddle shows ``width`` cells and stops at the walls."""
    env = spec.make({"paddle_width": float(width)}, frames=1)
    obs, _ = env.reset(seed=0)
    assert obs.reshape(21, 21)[20].sum() == width
    env.unwrapped.state = np.array([19, 11, 0, 8, 19, 11, 8, 0, 19, 7], dtype=np.float64)
    _, reward, terminated, _, _ = env.step(1)
    assert terminated and reward == (1.0 if caught else 0.0)
    env.reset(seed=0)
    for _ in range(15):
        obs, *_ = env.step(2)
    assert int(_state(env)[3]) == 21 - width
    np.testing.assert_array_equal(
        np.flatnonzero(obs.reshape(21, 21)[20]), np.arange(21 - width, 21)
    )


def test_mirrored_flips_the_picture_only(spec: EnvSpec) -> None:
    plain, mirrored = spec.make(), spec.make({"mirrored": 1.0})
    obs_p, _ = plain.reset(seed=5)
    obs_m, _ = mirrored.reset(seed=5)
    first = obs_m.reshape(2, 21, 21)[1]
    assert first[0].sum() == 5 and first[20].sum() == 1  # paddle on top, ball at the bottom
    rng = np.random.default_rng(0)
    for _ in range(20):
        np.testing.assert_array_equal(obs_m.reshape(2, 21, 21), obs_p.reshape(2, 21, 21)[:, ::-1])
        np.testing.assert_array_equal(_state(mirrored), _state(plain))
        action = int(rng.integers(3))
        obs_p, r_p, t_p, *_ = plain.step(action)
        obs_m, r_m, t_m, *_ = mirrored.step(action)
        assert (r_m, t_m) == (r_p, t_p)


def test_swap_actions_exchanges_left_and_right(spec: EnvSpec) -> None:
    plain, swapped = spec.make(), spec.make({"swap_actions": 1.0})
    plain.reset(seed=2)
    swapped.reset(seed=2)
    swapped.step(0)
    assert _state(swapped)[3] == _state(plain)[3] + 1  # 0 moves right
    rng = np.random.default_rng(1)
    plain.reset(seed=4)
    swapped.reset(seed=4)
    for _ in range(20):
        action = int(rng.integers(3))
        obs_p, r_p, t_p, *_ = plain.step(action)
        obs_s, r_s, t_s, *_ = swapped.step(2 - action)
        np.testing.assert_array_equal(obs_s, obs_p)
        assert (r_s, t_s) == (r_p, t_p)


def test_noise_fills_the_background_only(spec: EnvSpec) -> None:
    env = spec.make({"noise": 255.0}, frames=1)
    clean = spec.make(frames=1)
    obs, _ = env.reset(seed=1)
    reference, _ = clean.reset(seed=1)
    shown = reference == 1.0
    assert (obs[shown] == 1.0).all()
    background = obs[~shown]
    assert 0.4 < background.mean() < 0.6  # levels 0..255 uniform: mean 0.5
    assert np.isin(background, ct.LEVELS).all() and len(np.unique(background)) > 100
    next_obs, *_ = env.step(1)
    assert not np.array_equal(next_obs[~shown], background)  # fresh noise every step
    faint = spec.make({"noise": 10.0}, frames=1)
    obs, _ = faint.reset(seed=1)
    assert obs[~shown].max() == pytest.approx(10 / 255) and (obs[~shown] > 0).mean() > 0.8


def test_sparse_rewards_only_the_fifth_catch_in_a_row(spec: EnvSpec) -> None:
    env = spec.make({"sparse": 1.0})
    env.reset(seed=0)
    rewards = []
    terminated = False
    while not terminated:
        _, reward, terminated, truncated, _ = env.step(_oracle(_state(env), 5))
        rewards.append(reward)
        assert not truncated
    assert len(rewards) == 100 and rewards == [0.0] * 99 + [1.0]
    assert int(_state(env)[7]) == 5
    # the same play, but the third ball is let go: the episode ends there with nothing
    env.reset(seed=0)
    rewards, terminated = [], False
    while not terminated:
        state = _state(env)
        action = _oracle(state, 5) if state[7] < 2 else 2 * (_landing(state) < 10)
        _, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
    assert len(rewards) == 60 and sum(rewards) == 0.0


# --------------------------------------------------------------------------- the twin
def test_hash_is_the_same_in_numpy_and_torch() -> None:
    keys = [0, 1, 12345, (1 << 24) - 1]
    for key in keys:
        for salt in (0, 99, ct.BALL_SALT + 4):
            expected = ct.hash_bits(key, salt, np.arange(441))
            got = hash_bits(torch.tensor([key]), torch.tensor([salt]), torch.arange(441))[0]
            np.testing.assert_array_equal(got.numpy(), expected)
            assert expected.min() >= 0 and expected.max() < 1 << 24


def test_twin_first_states_are_the_gymnasium_ones_for_their_keys(spec: EnvSpec) -> None:
    for context in CONTEXTS:
        twin = spec.make_batched(
            16, contexts=context, env_seeds=torch.arange(16), frames=2, dtype=torch.float64
        )
        obs = twin.reset()
        env = spec.make(context)
        env.reset(seed=0)
        base = env.unwrapped
        for i in range(16):
            state = twin.state[i].numpy()
            np.testing.assert_array_equal(state, base.initial_state(int(state[9])))
            base.state = state.copy()
            np.testing.assert_array_equal(obs[i].float().numpy(), base._observe())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_width_just_below_a_half_rounds_alike_in_both(spec: EnvSpec, dtype: torch.dtype) -> None:
    """2.4999999 is 2.5 in float32, the dtype the trainers pass contexts in: the twin made a
    paddle of 3 cells where the gymnasium env, rounding the float64 value, made one of 2."""
    for width, noise in ((2.4999999, 4.49999999), (3.5, 0.5), (6.4, 254.6)):
        context = {"paddle_width": width, "noise": noise}
        env = spec.make(context)
        twin = spec.make_batched(
            2,
            contexts={k: torch.tensor(v, dtype=torch.float32) for k, v in context.items()},
            env_seeds=torch.arange(2),
            dtype=dtype,
        )
        twin.reset()
        assert float(twin.derived["width"][0]) == env.unwrapped.paddle_width, context
        assert int(twin.derived["noise_levels"][0]) - 1 == env.unwrapped.noise, context


@pytest.mark.parametrize(("frames", "policy"), [(2, "random"), (1, "random"), (2, "oracle")])
def test_twin_steps_as_the_gymnasium_env(spec: EnvSpec, frames: int, policy: str) -> None:
    """Every context in one twin, 400 steps of random actions (about 20 episodes per env) or of
    the oracle's (every ball caught: sparse episodes run to the fifth catch): states,
    observations (bit for bit), rewards, terminations, truncations."""
    n = len(CONTEXTS)
    full = [spec.context_space.validate(c) for c in CONTEXTS]
    twin = spec.make_batched(
        n,
        contexts={k: torch.tensor([c[k] for c in full]) for k in spec.context_space.names},
        env_seeds=torch.arange(n) + 100,
        frames=frames,
    )
    twin.reset()
    envs = [spec.make(c, frames=frames) for c in CONTEXTS]
    episodes = [0] * n

    def restart(i: int) -> None:
        obs, _ = envs[i].reset(seed=1000 * i + episodes[i])
        twin.state[i] = torch.as_tensor(_state(envs[i]))
        twin.elapsed[i] = 0
        np.testing.assert_array_equal(twin._observe(twin._state)[i].numpy(), obs)

    for i in range(n):
        restart(i)
    rng = np.random.default_rng(0)
    total_episodes = 0
    episode_returns: list[float] = []
    for _ in range(400):
        if policy == "random":
            actions = rng.integers(0, 3, n)
        else:
            widths = [ct.round_half_up(c["paddle_width"]) for c in full]
            actions = np.array([_oracle(_state(e), w) for e, w in zip(envs, widths, strict=True)])
            # the oracle plays the picture's controls; swapped envs need the other button
            swap = np.array([c["swap_actions"] == 1.0 for c in full])
            actions = np.where(swap, 2 - actions, actions)
        _, reward, terminated, truncated, info = twin.step(torch.as_tensor(actions))
        for i, env in enumerate(envs):
            obs, r, t, tr, _ = env.step(int(actions[i]))
            np.testing.assert_array_equal(info["final_obs"][i].numpy(), obs)
            assert (float(reward[i]), bool(terminated[i]), bool(truncated[i])) == (r, t, tr)
            if t or tr:
                episode_returns.append(r)
                episodes[i] += 1
                total_episodes += 1
                restart(i)
            else:
                np.testing.assert_array_equal(twin.state[i].numpy(), _state(env))
    assert total_episodes > (60 if policy == "random" else 20)
    if policy == "oracle":
        assert sum(episode_returns) == total_episodes  # every episode ends with its reward


def test_branch_free_path_changes_nothing(spec: EnvSpec) -> None:
    """On accelerators the twin always draws noise and next balls (no host synchronisation to
    decide); with no noise and no sparse env that work must not change a thing."""
    twins = [spec.make_batched(4, env_seeds=torch.arange(4)) for _ in range(2)]
    twins[1]._noisy = twins[1]._relaunching = True
    for twin in twins:
        twin.reset()
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        action = torch.randint(0, 3, (4,), generator=generator)
        expected, got = twins[0].step(action), twins[1].step(action)
        for a, b in zip(expected[:4], got[:4], strict=True):
            assert torch.equal(a, b)
        assert torch.equal(expected[4]["final_obs"], got[4]["final_obs"])


def test_twin_draws_keys_and_balls_uniformly() -> None:
    """First balls of 4200 episodes: every column and speed about equally often, as in the
    gymnasium env; keys spread over [0, 2**24)."""
    twin = BatchedCatch(4200, env_seeds=torch.arange(4200))
    twin.reset()
    state = twin.state
    columns = torch.bincount(state[:, 1].long(), minlength=21).numpy()
    speeds = torch.bincount(state[:, 2].long() + 2, minlength=5).numpy()
    assert columns.min() > 140 and columns.max() < 260  # expected 200 each
    assert speeds.min() > 760 and speeds.max() < 920  # expected 840 each
    keys = state[:, 9].numpy()
    assert keys.min() >= 0 and keys.max() < 1 << 24 and len(np.unique(keys)) > 4150
    assert 0.45 < keys.mean() / (1 << 24) < 0.55
    env = get_host().registry.env("Catch").make()
    gym_columns = np.zeros(21, dtype=int)
    for seed in range(2100):
        env.reset(seed=seed)
        gym_columns[int(_state(env)[1])] += 1
    assert gym_columns.min() > 60 and gym_columns.max() < 140  # expected 100 each


def _random_play(spec: EnvSpec, context: dict[str, float], episodes: int) -> tuple[float, float]:
    """Mean return of uniform random actions, on the twin and on the gymnasium env."""
    twin = spec.make_batched(episodes, contexts=context, env_seeds=torch.arange(episodes))
    twin.reset()
    generator = torch.Generator().manual_seed(0)
    returns = torch.zeros(episodes)
    finished = torch.zeros(episodes, dtype=torch.bool)
    while not bool(finished.all()):
        _, reward, terminated, truncated, _ = twin.step(
            torch.randint(0, 3, (episodes,), generator=generator)
        )
        returns += torch.where(finished, 0.0, reward)
        finished |= terminated | truncated
    env = spec.make(context)
    rng = np.random.default_rng(0)
    total = 0.0
    for seed in range(episodes):
        env.reset(seed=seed)
        done = False
        while not done:
            _, r, t, tr, _ = env.step(int(rng.integers(3)))
            total += r
            done = t or tr
    return float(returns.mean()), total / episodes


@pytest.mark.parametrize(("context", "expected"), [({}, 0.24), ({"paddle_width": 2.0}, 0.10)])
def test_random_play_scores_the_same_in_both(
    spec: EnvSpec, context: dict[str, float], expected: float
) -> None:
    twin, gym_env = _random_play(spec, context, 1500)
    assert twin == pytest.approx(expected, abs=0.04)
    assert gym_env == pytest.approx(expected, abs=0.04)


# --------------------------------------------------------------------------- learning
DQN = {
    "num_envs": 8,
    "hidden": [64],
    "learning_rate": 1e-3,
    "batch_size": 128,
    "buffer_size": 20_000,
    "learning_starts": 1000,
    "train_frequency": 8,
    "gradient_steps": 1,
    "target_network_frequency": 200,
    "exploration_fraction": 0.3,
}
"""Batched DQN shortened for Catch: a gradient step every 8 env steps per agent, target copies
every 200, exploration over the first 30 %. Measured on Catch-v0 (greedy, seeds 0 and 1): 0.40
and 0.46 caught after 50k steps (200 episodes each; about 60 s of CPU), 0.84 and 0.87 after 200k
(100 episodes); random play 0.24."""


def _dqn_returns(spec: EnvSpec, total_steps: int) -> np.ndarray:
    """Greedy returns of two agents trained on Catch-v0, averaged over 200 episodes each."""
    algorithm = get_host().registry.algorithm("batched-dqn").factory(DQN, device="cpu", env=spec)
    policies = algorithm.train_many(spec, [{}] * 2, [0, 1], total_steps=total_steps)
    returns = algorithm.evaluate_many(policies, spec, [{}], episodes=200, seed=0)
    return np.asarray(returns).mean(axis=(1, 2))


@pytest.mark.slow
def test_batched_dqn_learns_catch_v0(spec: EnvSpec) -> None:
    """Slow-marked (about a minute of CPU): two agents, 50k env steps each, catch clearly more
    balls than random play (0.24, measured above)."""
    means = _dqn_returns(spec, 50_000)
    assert means.mean() > 0.38 and means.min() > 0.3, means


@pytest.mark.slow
def test_batched_dqn_masters_catch_v0(spec: EnvSpec) -> None:
    """Two agents, 200k env steps each, catch most balls."""
    means = _dqn_returns(spec, 200_000)
    assert means.min() > 0.7, means
