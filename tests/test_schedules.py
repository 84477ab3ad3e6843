"""Context schedules: their values and switch steps by hand, validation, the JSON form, and the
training loop that follows them (switch steps, the on-switch hook, independence, resume)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import yaml

from ctxrl.context import ContextFeature, ContextSpace
from ctxrl.errors import ConfigError, ContextError, CtxrlError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.plugins import get_host
from ctxrl.registry import CurveOptions
from ctxrl.schedules import (
    ContextSchedule,
    DriftSchedule,
    PeriodicSchedule,
    SampledSchedule,
    SequenceSchedule,
    schedule_from_dict,
)
from ctxrl_plugins.training.plasticity import PlasticityOptions

SPACE = ContextSpace(
    [
        ContextFeature("length", 0.5, 0.1, 2.0),
        ContextFeature("friction", 1.0, 0.01, 10.0, scale="log"),
    ],
    owner="Toy",
)


# ---------------------------------------------------------------------- by hand
def test_a_sequence_switches_every_k_steps_and_cycles_or_holds() -> None:
    contexts = [{"length": 0.5}, {"length": 1.0}, {"length": 1.5}]
    cycle = SequenceSchedule(SPACE, contexts, every=100)
    assert [cycle.context_at(t)["length"] for t in (0, 99, 100, 250, 300, 401)] == [
        0.5,
        0.5,
        1.0,
        1.5,
        0.5,
        1.0,
    ]
    assert cycle.context_at(0)["friction"] == 1.0  # missing features at their defaults
    assert cycle.switch_steps(0, 450) == [100, 200, 300, 400]
    assert cycle.switch_steps(100, 199) == [] and cycle.switch_steps(99, 100) == [100]
    hold = SequenceSchedule(SPACE, contexts, every=100, end="hold")
    assert hold.context_at(10_000)["length"] == 1.5
    assert hold.switch_steps(0, 10_000) == [100, 200]
    # a repeated context is no switch
    same = SequenceSchedule(SPACE, [{"length": 0.5}, {"length": 0.5}, {"length": 1.0}], every=10)
    assert same.switch_steps(0, 30) == [20, 30]


def test_a_sampled_schedule_draws_along_each_features_scale_from_its_seed() -> None:
    schedule = SampledSchedule(
        SPACE, {"friction": [0.02, 2.0]}, every=1000, seed=7, base={"length": 1.2}
    )
    values = np.array([schedule.context_at(k * 1000)["friction"] for k in range(4000)])
    assert values.min() >= 0.02 and values.max() <= 2.0
    # log-uniform: log10 is uniform on [log10 0.02, log10 2] = [-1.70, 0.30]: median at -0.70
    assert abs(np.median(np.log10(values)) - (-0.699)) < 0.05
    assert abs(np.mean(values < 0.2) - 0.5) < 0.05  # 0.2 is the geometric midpoint
    assert schedule.context_at(500)["length"] == 1.2
    # a pure function of (seed, segment): the same value however it is asked for
    assert schedule.context_at(3500) == schedule.context_at(3000)
    again = SampledSchedule(SPACE, {"friction": [0.02, 2.0]}, every=1000, seed=7)
    assert again.context_at(3000)["friction"] == schedule.context_at(3000)["friction"]
    other = SampledSchedule(SPACE, {"friction": [0.02, 2.0]}, every=1000, seed=8)
    assert other.context_at(0)["friction"] != schedule.context_at(0)["friction"]
    linear = SampledSchedule(SPACE, ["length"], every=1, seed=0)
    lengths = np.array([linear.context_at(k)["length"] for k in range(4000)])
    assert abs(lengths.mean() - 1.05) < 0.03  # uniform on the whole range [0.1, 2]
    assert schedule.switch_steps(0, 3000) == [1000, 2000, 3000]


def test_periodic_schedules_follow_a_sine_or_a_triangle_between_two_contexts() -> None:
    triangle = PeriodicSchedule(
        SPACE, {"length": 0.5}, {"length": 1.5}, period=400, every=100, waveform="triangle"
    )
    assert [triangle.context_at(t)["length"] for t in range(0, 900, 100)] == [
        0.5,
        1.0,
        1.5,
        1.0,
        0.5,
        1.0,
        1.5,
        1.0,
        0.5,
    ]
    sine = PeriodicSchedule(SPACE, {"length": 0.5}, {"length": 1.5}, period=800, every=100)
    for k in range(16):
        expected = 0.5 + (1 - math.cos(2 * math.pi * k / 8)) / 2
        assert sine.context_at(k * 100 + 50)["length"] == pytest.approx(expected, abs=1e-12)
    shifted = PeriodicSchedule(
        SPACE, {"length": 0.5}, {"length": 1.5}, period=800, every=100, phase=0.5
    )
    assert shifted.context_at(0)["length"] == 1.5
    # a log feature moves by equal factors: a quarter period is the geometric midpoint
    log = PeriodicSchedule(
        SPACE, {"friction": 0.1}, {"friction": 10.0}, period=400, every=100, waveform="triangle"
    )
    assert log.context_at(100)["friction"] == pytest.approx(1.0)


def test_a_drift_moves_linearly_then_holds() -> None:
    drift = DriftSchedule(SPACE, {"length": 0.5}, {"length": 1.5}, over=1000, every=250)
    assert [drift.context_at(t)["length"] for t in (0, 249, 250, 500, 999, 1000, 5000)] == [
        0.5,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        1.5,
    ]
    assert drift.switch_steps(0, 5000) == [250, 500, 750, 1000]


def test_the_module_imports_without_torch() -> None:
    code = "import sys, ctxrl.schedules; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- bad input
def test_contexts_outside_the_space_are_named_with_feature_value_and_range() -> None:
    with pytest.raises(ContextError, match=r"contexts\[1\].*'length' = 3.0.*\[0.1, 2.0\]"):
        SequenceSchedule(SPACE, [{"length": 1.0}, {"length": 3.0}], every=10)
    with pytest.raises(ContextError, match=r"no context feature 'mass'; known features"):
        DriftSchedule(SPACE, {"mass": 1.0}, {"length": 1.0}, over=10, every=1)
    with pytest.raises(ContextError, match=r"features.friction.*'friction' = 20.0.*10.0"):
        SampledSchedule(SPACE, {"friction": [0.1, 20.0]}, every=10)
    with pytest.raises(ContextError, match=r"periodic.*high.*'length' = -1.0"):
        PeriodicSchedule(SPACE, {"length": 1.0}, {"length": -1.0}, period=10, every=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"every": 10}, r"schedule.kind: unknown schedule kind None; known: sequence, sampled"),
        ({"kind": "wave", "every": 10}, r"unknown schedule kind 'wave'"),
        ({"kind": "sequence", "contexts": [{}]}, r"a 'sequence' schedule needs every"),
        (
            {"kind": "sequence", "every": 10, "contexts": [{}], "period": 3},
            r"takes no 'period'; its keys: every, contexts, end",
        ),
        ({"kind": "sequence", "every": 0, "contexts": [{}]}, r"every must be a positive"),
        ({"kind": "sequence", "every": 1.5, "contexts": [{}]}, r"every must be a positive"),
        ({"kind": "sequence", "every": 10, "contexts": []}, r"contexts is empty"),
        ({"kind": "sequence", "every": 10, "contexts": [{}], "end": "stop"}, r"'cycle' or"),
        ({"kind": "sampled", "every": 10, "features": []}, r"features is empty"),
        ({"kind": "sampled", "every": 10, "features": {"length": [2, 1]}}, r"low 2.0 > high"),
        (
            {"kind": "periodic", "every": 10, "low": {}, "high": {}, "period": 5},
            r"period 5 is shorter than every 10",
        ),
        (
            {"kind": "periodic", "every": 1, "low": {}, "high": {}, "period": 5, "phase": 1},
            r"phase must be in \[0, 1\)",
        ),
        ({"kind": "drift", "every": 1, "start": [], "end": {}, "over": 3}, r"start: a context"),
    ],
)
def test_bad_json_forms_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        schedule_from_dict(data, SPACE)


def test_every_kind_round_trips_through_json() -> None:
    schedules: list[ContextSchedule] = [
        SequenceSchedule(SPACE, [{"length": 0.3}, {"friction": 0.02}], every=50_000, end="hold"),
        SampledSchedule(SPACE, {"friction": [0.02, 2.0]}, every=2_000_000, seed=3),
        SampledSchedule(SPACE, ["length", "friction"], every=7),
        PeriodicSchedule(
            SPACE, {"length": 0.3}, {"length": 1.7}, period=1000, every=10, phase=0.25
        ),
        DriftSchedule(SPACE, {"friction": 0.1}, {"friction": 5.0}, over=10_000, every=100),
    ]
    for schedule in schedules:
        data = json.loads(json.dumps(schedule.to_dict()))
        again = schedule_from_dict(data, SPACE)
        assert again == schedule and type(again) is type(schedule)
        assert [again.context_at(t) for t in range(0, 20_000, 997)] == [
            schedule.context_at(t) for t in range(0, 20_000, 997)
        ]
    # the config form: partial contexts
    config = {"kind": "sequence", "every": 50000, "contexts": [{"length": 0.5}, {"length": 1}]}
    assert schedule_from_dict(config, SPACE).context_at(50_000)["length"] == 1.0


# ------------------------------------------------------------------ in the loop
class SwitchRecorder(Intervention):
    """Records every ``on_context_switch`` call: the step, the agents and their envs' pole
    lengths right then."""

    name: ClassVar[str] = "test-switch-recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int], list[float]]] = []

    def on_context_switch(self, view: TrainingView, agents: torch.Tensor) -> None:
        twin: Any = view.twin  # type: ignore[attr-defined]  # TrainingRun's, not the protocol's
        agents = agents & (view.mask > 0)
        lengths = twin.context["length"].view(view.num_agents, -1)
        assert bool((lengths == lengths[:, :1]).all())  # every env of an agent alike
        self.calls.append(
            (view.env_steps, torch.nonzero(agents).flatten().tolist(), lengths[:, 0].tolist())
        )


def _ppo(**params: Any) -> Any:
    spec = get_host().registry.env("CartPole")
    return get_host().registry.algorithm("batched-ppo").factory(params, device="cpu", env=spec)


def _cartpole_schedules() -> list[ContextSchedule]:
    space = get_host().registry.env("CartPole").context_space
    return [
        SequenceSchedule(space, [{"length": 0.5}, {"length": 1.0}], every=1024),
        DriftSchedule(space, {"length": 0.4}, {"length": 0.8}, over=2048, every=512),
    ]


def test_the_loop_switches_contexts_at_the_schedules_steps_and_calls_the_hook() -> None:
    """PPO iterations of 512 steps; agent 0 switches at 1024 and 2048, agent 1 (drift every
    512) at every boundary; the hook sees the new contexts, per agent."""
    spec = get_host().registry.env("CartPole")
    recorder = SwitchRecorder()
    policies = _ppo().train_many(
        spec,
        [{}, {}],
        [0, 1],
        total_steps=2048,
        schedules=_cartpole_schedules(),
        interventions=[recorder],
    )
    steps = [(step, agents) for step, agents, _ in recorder.calls]
    assert steps == [(512, [1]), (1024, [0, 1]), (1536, [1]), (2048, [0, 1])]
    lengths = [lengths for _, _, lengths in recorder.calls]
    expected = [[0.5, 0.5], [1.0, 0.6], [1.0, 0.7], [0.5, 0.8]]
    np.testing.assert_allclose(lengths, expected, atol=1e-6)  # float32 contexts in the twin
    assert policies.log.switches == steps


def test_the_hook_runs_only_for_an_interventions_agents() -> None:
    spec = get_host().registry.env("CartPole")
    recorder = SwitchRecorder()
    _ppo().train_many(
        spec,
        [{}, {}],
        [0, 1],
        total_steps=1024,
        schedules=_cartpole_schedules(),
        interventions=[(recorder, [0])],
    )
    assert [(step, agents) for step, agents, _ in recorder.calls] == [(512, []), (1024, [0])]


def test_an_agent_with_its_schedule_trains_the_same_alone_and_in_a_batch() -> None:
    spec = get_host().registry.env("CartPole")
    schedules = _cartpole_schedules()
    plasticity = PlasticityOptions(every=1024)
    alone = _ppo().train_many(
        spec, [{}], [5], total_steps=2048, schedules=[schedules[1]], plasticity=plasticity
    )
    batch = _ppo().train_many(
        spec,
        [{}, {}, {}],
        [9, 2, 5],
        total_steps=2048,
        schedules=[schedules[0], *schedules],
        plasticity=plasticity,
    )
    for name, value in alone.params.items():
        assert torch.equal(value[0], batch.params[name][2]), name
    mine = batch.log.select([2])
    assert mine.plasticity_steps == [512, 1024, 1536, 2048]  # agent 0's switches too
    for name, values in alone.log.plasticity.items():
        np.testing.assert_array_equal(np.stack(mine.plasticity[name]), np.stack(values))
    assert batch.log.switch_steps(0) == [1024, 2048] and batch.log.switch_steps(2) == [
        512,
        1024,
        1536,
        2048,
    ]
    assert (
        batch.log.select([2]).switches
        == alone.log.switches
        == [
            (512, [0]),
            (1024, [0]),
            (1536, [0]),
            (2048, [0]),
        ]
    )


def test_a_run_with_switches_resumes_bit_exactly(tmp_path: Path) -> None:
    spec = get_host().registry.env("CartPole")
    options: dict[str, Any] = {
        "total_steps": 4 * 512,
        "schedules": _cartpole_schedules(),
        "plasticity": PlasticityOptions(every=1024),
        "curves": CurveOptions(every=1024, episodes=1),
    }
    reference = _ppo().train_many(spec, [{}, {}], [0, 1], **options)

    class Killed(Exception):
        pass

    def kill_after_third(done: int, total: int) -> None:
        if done == 3:
            raise Killed

    checkpoint = tmp_path / "ckpt"
    with pytest.raises(Killed):
        _ppo().train_many(
            spec,
            [{}, {}],
            [0, 1],
            checkpoint=checkpoint,
            checkpoint_every=2 * 512,
            progress=kill_after_third,
            **options,
        )
    resumed = _ppo().train_many(
        spec, [{}, {}], [0, 1], checkpoint=checkpoint, checkpoint_every=2 * 512, **options
    )
    for name, value in reference.params.items():
        assert torch.equal(value, resumed.params[name]), name
    assert resumed.log.switches == reference.log.switches
    # the grid of 1024 and every switch (agent 1's drift switches every 512 steps)
    assert resumed.log.plasticity_steps == reference.log.plasticity_steps == [512, 1024, 1536, 2048]
    for name, values in reference.log.plasticity.items():
        np.testing.assert_array_equal(np.stack(resumed.log.plasticity[name]), np.stack(values))
    assert {"dormant.actor.0", "srank.critic.1", "distance_from_init.actor.head"} <= set(
        reference.log.plasticity
    )


def test_learning_curves_evaluate_each_agent_on_its_current_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctxrl_plugins.training.trainer as trainer

    asked: list[list[float]] = []

    def recording(policies: Any, env: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        asked.append([t[0]["length"] for t in targets])
        return np.zeros((len(targets), 1, kwargs["episodes"]))

    monkeypatch.setattr(trainer, "evaluate_policies", recording)
    spec = get_host().registry.env("CartPole")
    _ppo().train_many(
        spec,
        [{}, {}],
        [0, 1],
        total_steps=2048,
        schedules=_cartpole_schedules(),
        curves=CurveOptions(every=1024, episodes=1),
    )
    np.testing.assert_allclose(asked, [[0.5, 0.4], [1.0, 0.6], [0.5, 0.8]])


def test_dqn_follows_a_schedule_too() -> None:
    registry = get_host().registry
    spec = registry.env("CartPole")
    dqn = registry.algorithm("batched-dqn").factory(
        {"learning_starts": 64, "buffer_size": 256}, device="cpu", env=spec
    )
    recorder = SwitchRecorder()
    schedule = SequenceSchedule(spec.context_space, [{"length": 0.5}, {"length": 1.0}], every=50)
    policies = dqn.train_many(
        spec, [{}], [0], total_steps=160, schedules=schedule, interventions=[recorder]
    )
    assert policies.log.switches == [(50, [0]), (100, [0]), (150, [0])]
    assert [lengths[0] for _, _, lengths in recorder.calls] == pytest.approx([1.0, 0.5, 1.0])


def test_schedules_that_do_not_fit_the_training_are_refused() -> None:
    spec = get_host().registry.env("CartPole")
    schedules = _cartpole_schedules()
    with pytest.raises(CtxrlError, match="1 context schedules for 2 agents"):
        _ppo().train_many(spec, [{}, {}], [0, 1], total_steps=512, schedules=schedules[:1])
    with pytest.raises(CtxrlError, match="a context schedule and a mixture"):
        _ppo().train_many(spec, [{}], [0], total_steps=512, schedules=schedules[0], mixture=[{}])
    with pytest.raises(CtxrlError, match=r"built for the context features length, friction"):
        _ppo().train_many(
            spec,
            [{}],
            [0],
            total_steps=512,
            schedules=SequenceSchedule(SPACE, [{}], every=10),
        )
    # a context the env's constraints refuse, at the second segment: named before training
    # (it trained the first segment and died at the switch, naming no schedule)
    pendulum = get_host().registry.env("Pendulum")
    refused = SequenceSchedule(pendulum.context_space, [{}, {"max_speed": 0.5}], every=256)
    with pytest.raises(
        ConfigError,
        match=r"batched-ppo: schedule: segment 1 \(env steps 256-511\) has the context .*"
        r"Pendulum: context features need initial_velocity_max <= max_speed",
    ):
        _ppo().train_many(pendulum, [{}], [0], total_steps=2048, schedules=refused)


def test_sampled_features_in_any_order_are_one_schedule(tmp_path: Path) -> None:
    """A sampled schedule's draws went to its features in the order they were listed, while
    its equality and a study's plan hash ignore the order: two studies shared a run
    directory with different contexts. The features are drawn in name order."""
    ranges = {"length": [0.2, 1.8], "friction": [0.1, 5.0]}
    listed = SampledSchedule(SPACE, ranges, every=10, seed=3)
    reversed_ = SampledSchedule(SPACE, dict(reversed(ranges.items())), every=10, seed=3)
    assert listed == reversed_ and hash(listed) == hash(reversed_)
    assert [listed.segment_context(k) for k in range(5)] == [
        reversed_.segment_context(k) for k in range(5)
    ]
    # a study listing them out of name order drew other contexts before: it gets another run
    # directory than an earlier ctxrl gave it; one in name order keeps its own
    from ctxrl_plugins.transfer.plasticity_study import StudyConfig
    from ctxrl_plugins.transfer.studies import study_run_dir

    def study(features: dict[str, list[float]]) -> StudyConfig:
        schedule = {"kind": "sampled", "every": 512, "features": features}
        return StudyConfig.model_validate(
            {"env": "CartPole", "schedule": schedule, "total_steps": 4096, "arms": ["redo"],
             "curve_every": 512}
        )  # fmt: skip

    def unsalted(config: StudyConfig) -> str:  # the hash as an earlier ctxrl computed it
        data = config.model_dump(mode="json", exclude={"output_dir", "device"})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    listed_study = study({"masscart": [0.5, 2.0], "length": [0.3, 1.5]})
    in_order = study({"length": [0.3, 1.5], "masscart": [0.5, 2.0]})
    # (the hash as it was, analysis options included: the run directory is now found by it)
    assert listed_study.plan_hash(with_analysis=True) != unsalted(listed_study)
    assert in_order.plan_hash(with_analysis=True) == unsalted(in_order)
    # the run directory an earlier ctxrl gave both (one hash): holding the study listed out of
    # name order (drawn in that order), neither study finds it; holding the one in name order
    # (drawn as now), that one does
    earlier = tmp_path / f"plasticity-CartPole-{unsalted(in_order)}"
    earlier.mkdir()
    for holder, finder in ((listed_study, None), (in_order, in_order)):
        plan = {"plan_hash": unsalted(holder), "config": holder.model_dump(mode="json")}
        written = yaml.safe_dump({"study": "plasticity", **plan}, sort_keys=False)  # as ctxrl does
        (earlier / "plan.yaml").write_text(written)
        for config in (listed_study, in_order):
            found = study_run_dir(config, tmp_path, "plasticity-CartPole-")
            assert (found == earlier) == (config is finder), (holder, config)


def test_a_held_log_feature_does_not_switch() -> None:
    """Between two equal values a log feature was exp(log(a)), one ulp off for ~7 % of values
    (0.1 -> 0.10000000000000002): spurious switches and two ids for one context."""
    held = PeriodicSchedule(SPACE, {"friction": 0.1}, {"friction": 0.1}, period=100, every=25)
    assert held.switch_steps(0, 1000) == []
    assert {held.segment_context(k)["friction"] for k in range(8)} == {0.1}
    drift = DriftSchedule(SPACE, {"friction": 0.1, "length": 0.5}, {"friction": 0.1}, 100, 10)
    assert {drift.segment_context(k)["friction"] for k in range(12)} == {0.1}
