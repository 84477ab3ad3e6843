"""The public torch-twin interface: every built-in twin meets :class:`ctxrl.twins.TorchTwin`,
and ``state_dict`` / ``load_state_dict`` capture everything needed to continue bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ctxrl.artifacts import load_artifact, save_artifact
from ctxrl.context import ContextFeature, ContextSpace
from ctxrl.errors import ContextError, CtxrlError
from ctxrl.plugins import get_host
from ctxrl.twins import BatchedEnv, TorchTwin
from ctxrl_envs.classic_control_twins import TWINS

NUM_ENVS = 6


def _pool(name: str) -> list[dict[str, float]]:
    """Three contexts of an env: the default and its first feature half-way to each bound."""
    feature = get_host().registry.env(name).context_space.features[0]
    return [
        {},
        {feature.name: (feature.default + feature.lower) / 2},
        {feature.name: (feature.default + feature.upper) / 2},
    ]


def _actions(twin: TorchTwin, steps: int, seed: int) -> list[torch.Tensor]:
    """A fixed sequence of random actions for ``twin``, ``steps`` x ``(B,)`` or ``(B, dim)``."""
    g = torch.Generator().manual_seed(seed)
    if twin.discrete_actions is not None:
        return [
            torch.randint(0, twin.discrete_actions, (twin.num_envs,), generator=g)
            for _ in range(steps)
        ]
    return [torch.rand(twin.num_envs, twin.action_dim, generator=g) * 2 - 1 for _ in range(steps)]


def _rollout(twin: TorchTwin, actions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Everything ``step`` returns along ``actions``, with the contexts after each step."""
    out: list[torch.Tensor] = []
    for action in actions:
        obs, reward, terminated, truncated, info = twin.step(action)
        out += [obs, reward, terminated, truncated, info["done"], info["final_obs"]]
        out += [v.clone() for v in twin.context.values()]
    return out


def _assert_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and torch.equal(x, y), f"output {i} differs"


def _make(name: str, env_seeds: bool, **kwargs: Any) -> Any:
    seeds = torch.arange(NUM_ENVS, dtype=torch.int64) * 7 + 3 if env_seeds else None
    return (
        get_host()
        .registry.env(name)
        .make_batched(NUM_ENVS, seed=5, env_seeds=seeds, visible=[_first_feature(name)], **kwargs)
    )


def _first_feature(name: str) -> str:
    return get_host().registry.env(name).context_space.features[0].name


@pytest.mark.parametrize("name", sorted(TWINS))
def test_every_builtin_twin_is_a_torch_twin(name: str) -> None:
    twin = get_host().registry.env(name).make_batched(3, env_seeds=torch.arange(3))
    assert isinstance(twin, TorchTwin)
    assert twin.num_envs == 3 and twin.device == torch.device("cpu")
    assert twin.action_dim == 1
    assert twin.max_episode_steps == get_host().registry.env(name).max_episode_steps


@pytest.mark.parametrize("env_seeds", [True, False], ids=["env-seeds", "shared-generator"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_load_state_dict_continues_bit_for_bit_with_a_context_pool(
    name: str, env_seeds: bool
) -> None:
    """Step, save, step k more, load, step the same k again: identical outputs, in the same
    twin and in a fresh one. The saved point sits a few steps before the time limit, so the k
    steps cross episode ends: fresh initial states and contexts drawn from the pool."""
    twin = _make(name, env_seeds)
    twin.set_context_pool(_pool(name))
    twin.reset()
    before = twin.max_episode_steps - 5
    _rollout(twin, _actions(twin, before, seed=1))
    saved = twin.state_dict()
    after = _actions(twin, 20, seed=2)
    reference = _rollout(twin, after)
    assert any(bool(x.any()) for x in reference[4 :: 6 + len(twin.context)]), "no episode ended"

    twin.load_state_dict(saved)
    _assert_identical(_rollout(twin, after), reference)

    fresh = _make(name, env_seeds)  # no pool set: the state dict brings it
    fresh.load_state_dict(saved)
    _assert_identical(_rollout(fresh, after), reference)


@pytest.mark.parametrize("name", [*sorted(TWINS), "Catch"])
def test_a_loaded_state_keeps_the_memory_layout_a_reset_twin_has(name: str) -> None:
    """A compiled rollout is specialised to its inputs' strides: the state a checkpoint
    restored was contiguous where reset() and step() leave it transposed, so a resumed
    compiled run recompiled, ran another kernel and did not end as the uninterrupted one."""
    twin = _make(name, True)
    twin.reset()
    _rollout(twin, _actions(twin, 3, seed=1))
    saved = twin.state_dict()
    fresh = _make(name, True)
    fresh.reset()  # as the trainer does before it restores a checkpoint
    fresh.load_state_dict(saved)
    assert fresh._state.stride() == twin._state.stride()
    torch.testing.assert_close(fresh._state, twin._state, rtol=0, atol=0)
    unreset = _make(name, True)  # its state contiguous: the saved layout wins
    unreset.load_state_dict(saved)
    assert unreset._state.stride() == twin._state.stride()
    earlier = {k: v for k, v in saved.items() if k != "state_strides"}  # an older checkpoint
    fresh.load_state_dict(earlier)
    torch.testing.assert_close(fresh._state, twin._state, rtol=0, atol=0)


@pytest.mark.parametrize("name", [*sorted(TWINS), "Catch"])
def test_the_branch_free_step_gives_the_same_numbers(name: str) -> None:
    """``branch_free`` (no data-dependent indexing, for compiled and graph-captured code) draws
    fresh states and pool contexts for every env but advances only the finished envs'
    streams: every output, bit for bit, as the step that draws for the finished envs only,
    across many episode ends (random actions end CartPole and Catch episodes often; the
    others end at their time limit)."""
    if name == "Catch":
        registry = get_host().registry
        seeds = torch.arange(NUM_ENVS, dtype=torch.int64) * 7 + 3
        twins = [registry.env("Catch").make_batched(NUM_ENVS, env_seeds=seeds) for _ in "ab"]
    else:
        twins = [_make(name, env_seeds=True) for _ in "ab"]
        for twin in twins:
            twin.set_context_pool(_pool(name))
    sparse, branch_free = twins
    branch_free.branch_free = True
    actions = _actions(sparse, 2 * sparse.max_episode_steps + 7, seed=3)
    for twin in twins:
        twin.reset()
    reference = _rollout(sparse, actions)
    assert sum(int(x.sum()) for x in reference[4 :: 6 + len(sparse.context)]) >= NUM_ENVS
    _assert_identical(_rollout(branch_free, actions), reference)
    # the same numbers; the memory layout of the state may differ between the two steps
    numbers = [{k: v for k, v in t.state_dict().items() if k != "state_strides"} for t in twins]
    _assert_identical(list(numbers[1].values()), list(numbers[0].values()))


@pytest.mark.parametrize("branch_free", [False, True])
def test_final_obs_shows_the_finished_episodes_visible_context(branch_free: bool) -> None:
    """With visible features and a context pool, ``final_obs`` of a finished episode carries
    that episode's context columns, not those of the episode drawn to replace it."""
    twin = (
        get_host()
        .registry.env("CartPole")
        .make_batched(4, env_seeds=torch.arange(4), visible=["length"])
    )
    twin.branch_free = branch_free
    twin.set_context_pool([{"length": 0.05}, {"length": 5.0}])
    running = twin.reset()[:, -1].clone()  # each env's running episode's visible length
    finished = changed = 0
    for _ in range(400):
        obs, _, _, _, info = twin.step(torch.ones(4, dtype=torch.long))
        done = info["done"]
        assert torch.equal(info["final_obs"][done, -1], running[done])
        assert torch.equal(info["final_obs"][~done], obs[~done])
        finished += int(done.sum())
        changed += int((obs[done, -1] != running[done]).sum())
        running = obs[:, -1].clone()
    assert finished > 50 and changed > 10  # many episodes ended, many under a new context


def test_state_dict_keys_are_documented_and_copies() -> None:
    twin = _make("CartPole", env_seeds=True)
    twin.set_context_pool(_pool("CartPole"))
    twin.reset()
    state = twin.state_dict()
    features = get_host().registry.env("CartPole").context_space.names
    assert set(state) == {
        "state",
        "state_strides",
        "elapsed",
        "generator",
        "rng.seeds",
        "rng.counters",
        *(f"context.{f}" for f in features),
        *(f"pool.{f}" for f in features),
    }
    assert state["state"].shape == (NUM_ENVS, 4) and state["elapsed"].dtype == torch.int64
    assert all(v.is_contiguous() for v in state.values())
    copy = {k: v.clone() for k, v in state.items()}
    _rollout(twin, _actions(twin, 30, seed=0))
    _assert_identical(list(state.values()), list(copy.values()))
    twin.set_context_pool(None)
    assert not any(k.startswith("pool.") for k in twin.state_dict())
    plain = _make("CartPole", env_seeds=False).state_dict()
    assert not any(k.startswith("rng.") for k in plain)


def test_state_dict_survives_safetensors(tmp_path: Path) -> None:
    twin = _make("Acrobot", env_seeds=True)
    twin.set_context_pool(_pool("Acrobot"))
    twin.reset()
    _rollout(twin, _actions(twin, 10, seed=0))
    save_artifact(tmp_path / "twin", twin.state_dict(), {})
    tensors, _ = load_artifact(tmp_path / "twin")
    after = _actions(twin, 10, seed=1)
    reference = _rollout(twin, after)
    fresh = _make("Acrobot", env_seeds=True)
    fresh.load_state_dict(tensors)
    _assert_identical(_rollout(fresh, after), reference)


def test_load_state_dict_rejects_what_does_not_fit() -> None:
    twin = _make("CartPole", env_seeds=True)
    state = twin.state_dict()
    missing = {k: v for k, v in state.items() if k != "context.masscart"}
    with pytest.raises(ValueError, match=r"no 'context\.masscart'"):
        twin.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"state_dict\['elapsed'\]"):
        twin.load_state_dict({**state, "elapsed": state["elapsed"][:2]})
    with pytest.raises(ValueError, match=r"unexpected keys \['velocity'\]"):
        twin.load_state_dict({**state, "velocity": torch.zeros(NUM_ENVS)})
    without_streams = {k: v for k, v in state.items() if not k.startswith("rng.")}
    with pytest.raises(ValueError, match=r"no 'rng\.seeds'"):
        twin.load_state_dict(without_streams)
    smaller = get_host().registry.env("CartPole").make_batched(2)
    with pytest.raises(ValueError, match=r"expected torch\.float32 \(2, 4\)"):
        smaller.load_state_dict(state)


class _Drifting(BatchedEnv):
    """A minimal twin with extra state: a position that drifts by a per-episode offset."""

    name = "Drifting"
    space = ContextSpace([ContextFeature("speed", 1.0, 0.0, 2.0)], owner="Drifting")
    obs_dim = state_dim = 1
    discrete_actions = 2
    max_episode_steps = 7

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        super().__init__(num_envs, **kwargs)
        self.steps_taken = torch.zeros((), dtype=torch.int64)

    def _initial_state(self, env_ids: torch.Tensor | None) -> torch.Tensor:
        n = self.num_envs if env_ids is None else int(env_ids.numel())
        return self._uniform(-1.0, 1.0, (1, n), env_ids)

    def _dynamics(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.steps_taken += 1
        next_state = state + self.context["speed"] * (action.to(self.dtype) - 0.5)
        return next_state, -next_state[0].abs(), next_state[0].abs() > 3

    def _extra_state(self) -> dict[str, torch.Tensor]:
        return {"steps_taken": self.steps_taken.clone()}

    def _load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.steps_taken = state.pop("steps_taken").clone()
        super()._load_extra_state(state)


def test_a_subclass_adds_its_own_state() -> None:
    twin = _Drifting(4, env_seeds=torch.arange(4))
    assert isinstance(twin, TorchTwin)
    twin.reset()
    _rollout(twin, _actions(twin, 5, seed=0))
    saved = twin.state_dict()
    assert int(saved["steps_taken"]) == 5
    after = _actions(twin, 12, seed=1)
    reference = _rollout(twin, after)
    fresh = _Drifting(4, env_seeds=torch.arange(4))
    fresh.load_state_dict(saved)
    _assert_identical(_rollout(fresh, after), reference)
    assert int(fresh.steps_taken) == 17


def test_importing_ctxrl_does_not_import_torch() -> None:
    code = "import sys, ctxrl, ctxrl.contextual; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_library_functions_are_public_and_imported_when_first_used() -> None:
    """A library user needed ``ctxrl.plugins.get_host``, ``ctxrl.sweep.run_sweep``,
    ``ctxrl.summary.sweep_matrix`` (undocumented) and more from private-looking modules: each
    name of ``ctxrl.__all__`` is there, the heavy ones imported on first use only."""
    code = (
        "import sys, ctxrl\n"
        "before = 'ctxrl.sweep' in sys.modules or 'torch' in sys.modules\n"
        "names = [n for n in ctxrl.__all__ if getattr(ctxrl, n) is None]\n"
        "from ctxrl import run_sweep, sweep_matrix, get_host, load_policies\n"
        "print(before, names, run_sweep.__module__, sweep_matrix.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "[]", "ctxrl.sweep", "ctxrl.summary"]


def test_a_twins_constraint_error_gives_the_values_and_where() -> None:
    """As the gymnasium env's: the features, their values and which context (the twins said
    only "need start_position_high <= max_position")."""
    spec = get_host().registry.env("MountainCar")
    with pytest.raises(
        ContextError,
        match=r"MountainCar: context features need start_position_high <= max_position, got "
        r"start_position_high = 0\.55, max_position = 0\.5 \(context 1 of the batch or pool\)",
    ):
        spec.make_batched(
            2, contexts={"start_position_high": torch.tensor([0.0, 0.55]), "max_position": 0.5}
        )
    twin = spec.make_batched(1)
    bad = {"min_position": -0.45, "goal_position": -0.45, "start_position_low": -0.4}
    with pytest.raises(
        ContextError, match=r"min_position < goal_position, got min_position = -0\.45"
    ):
        twin.set_context_pool([{}, {**bad, "start_position_high": -0.4}])


def test_an_out_of_range_context_names_its_env_or_pool_entry() -> None:
    """A batch of contexts or a pool with one bad value said which feature and value, not
    which of the envs or pool entries held it."""
    spec = get_host().registry.env("CartPole")
    with pytest.raises(
        ContextError, match=r"'length' = 50\.0 \(env 2\) is outside the allowed range"
    ):
        spec.make_batched(3, contexts={"length": torch.tensor([0.5, 1.0, 50.0])})
    twin = spec.make_batched(4)
    with pytest.raises(ContextError, match=r"'length' = -1\.0 \(env 3\) is outside"):
        twin.set_context({"length": torch.tensor([0.5, -1.0])}, env_ids=[1, 3])
    # one value for every env: no env of its own to name
    with pytest.raises(ContextError, match=r"'length' = 50\.0 is outside"):
        twin.set_context({"length": 50.0})
    with pytest.raises(
        ContextError,
        match=r"^CartPole: context 1 of the pool: context feature 'length' = 50\.0 is outside",
    ):
        twin.set_context_pool([{"length": 0.5}, {"length": 50.0}])


def test_a_twin_takes_numpy_numbers_as_the_gymnasium_env_does() -> None:
    import numpy as np

    twin = get_host().registry.env("CartPole").make_batched(2)
    twin.set_context({"masscart": np.float32(2.0), "length": np.int64(1)})
    assert twin.context["masscart"].tolist() == [2.0, 2.0] and twin.context["length"][0] == 1.0


class _LogScaled(_Drifting):
    """_Drifting with a log-scale feature."""

    name = "LogScaled"
    space = ContextSpace([ContextFeature("speed", 1.0, 0.01, 10.0, scale="log")], owner="LogScaled")


def test_visible_features_are_normalised_on_the_device_as_the_space_does() -> None:
    """Visible features are normalised in torch (a context pool renews them at every step,
    and a copy to the host each time is a synchronisation on an accelerator): the same
    float32 values as the space's own ``to_unit``, log scale included."""
    import numpy as np

    values = [0.01, 0.0123, 0.1, 0.5, 1.0, 3.3, 10.0]
    twin = _LogScaled(len(values), visible=["speed"], contexts={"speed": torch.tensor(values)})
    stored = twin.context["speed"].double().numpy()  # the twin keeps contexts in its dtype
    expected = _LogScaled.space.feature("speed").to_unit(stored).astype(np.float32)
    assert np.array_equal(twin._context_obs()[:, 0].numpy(), expected)
    linear = _Drifting(3, visible=["speed"], contexts={"speed": torch.tensor([0.0, 0.3, 2.0])})
    assert linear._context_obs()[:, 0].tolist() == [
        0.0,
        float(np.float32(np.float32(0.3) / 2)),
        1.0,
    ]


@pytest.mark.parametrize("name", ["CartPole", "MountainCar", "Acrobot", "Catch"])
def test_a_twin_refuses_discrete_actions_its_env_does_not_have(name: str) -> None:
    """Gymnasium asserts a discrete action is one of the env's; the twins took any number
    (MountainCar's action 7 pushed 6 times the force, CartPole's 5 was left), floats and the
    wrong shape without a word."""
    twin = get_host().registry.env(name).make_batched(2, seed=0)
    twin.reset()
    n = twin.discrete_actions
    for action, message in (
        (torch.tensor([0, n + 4]), rf"{name}: discrete actions must be in 0\.\.{n - 1}, got \["),
        (torch.tensor([-1, 0]), r"must be in 0\.\.\d, got \[-1\]"),
        (torch.tensor([0.0, 1.0]), "must be integers, got torch.float32"),
        (torch.tensor([[0], [1]]), r"must be \(2,\), one per env, got \(2, 1\)"),
    ):
        with pytest.raises(CtxrlError, match=message):
            twin.step(action)
    twin.step(torch.tensor([0, n - 1]))  # the env's own actions step as before


@pytest.mark.parametrize("name", ["CartPole", "Pendulum", "Acrobot"])
def test_a_reset_seed_gives_its_own_episodes_with_per_env_streams(name: str) -> None:
    """With ``env_seeds``, ``reset(seed=s)`` rewound the per-env streams whatever ``s``: every
    seed started the same episodes. Now each seed has its own, the same seed the same, and an
    env still depends on its own entry of ``env_seeds`` only."""
    spec = get_host().registry.env(name)
    twin = spec.make_batched(3, env_seeds=torch.tensor([4, 5, 6]))
    five, six, five_again = twin.reset(seed=5), twin.reset(seed=6), twin.reset(seed=5)
    assert torch.equal(five, five_again) and not torch.equal(five, six)
    alone = spec.make_batched(1, env_seeds=torch.tensor([5]))
    assert torch.equal(alone.reset(seed=5)[0], five[1])
