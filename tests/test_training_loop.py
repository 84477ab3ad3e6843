"""The batched training loop's extension points through a user's eyes: warm starts from a
finished run directory, layer surgery, learning curves and diagnostics in the store and the
report, interventions and transfer methods in sweep configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import requires_sb3

from ctxrl.config import resolve_plan, validate_config
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.interventions import build_interventions
from ctxrl.plugins import get_host
from ctxrl.registry import CurveOptions
from ctxrl.results import check_transferable, load_policies
from ctxrl.store import Store
from ctxrl.sweep import run_sweep

PPO = {"name": "batched-ppo", "preset": "CartPole"}


def _sweep(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "env": "CartPole",
        "features": {"length": {"values": [0.5]}},
        "algorithm": PPO,
        "seeds": [0, 1],
        "train_steps": 2048,
        "eval_episodes": 2,
        "compare": [],
        "output_dir": str(tmp_path / "runs"),
    }
    data.update(changes)
    plan = resolve_plan(validate_config(data), get_host().registry)
    return run_sweep(plan).run_dir


def test_warm_start_from_a_run_directory_jumps_and_a_reinitialised_head_does_not(
    tmp_path: Path,
) -> None:
    """Sources trained on pole length 0.5 and fine-tuned on 1.0: the warm start begins at the
    source's level (the curve's step-0 point), far above scratch; with the actor's head
    re-initialised it begins near scratch again."""
    run_dir = _sweep(tmp_path, train_steps=40_960)
    sources = load_policies(run_dir)
    spec = get_host().registry.env("CartPole")
    check_transferable(sources, spec, "batched-ppo")
    target = [{"length": 1.0}] * 6
    curves = CurveOptions(every=10**9, episodes=5)  # step 0 and the end only
    init = {k: v.repeat(3, *([1] * (v.dim() - 1))) for k, v in sources.stacked_params().items()}

    def start(**options: Any) -> np.ndarray:
        algorithm = sources.algorithm
        policies = algorithm.train_many(
            spec, target, list(range(6)), total_steps=512, curves=curves, **options
        )
        return policies.log.curve()[0]  # (agents,) mean return at step 0

    scratch = start()
    warm = start(init=init)
    head = start(init=init, reinit=["actor.head"])
    assert warm.mean() > 100 and warm.mean() > 3 * scratch.mean(), (warm, scratch)
    # a random head on trained features sometimes balances by chance, mostly not
    assert head.mean() < warm.mean() / 2, (head, warm)


def test_frozen_layers_do_not_move_and_the_rest_trains() -> None:
    spec = get_host().registry.env("CartPole")
    algorithm = get_host().registry.algorithm("batched-ppo").factory({}, device="cpu", env=spec)
    first = algorithm.train_many(spec, [{}], [3], total_steps=512)
    tuned = algorithm.train_many(
        spec, [{}], [3], total_steps=1024, init=first, freeze=["actor.0", "critic"]
    )
    for name, value in tuned.params.items():
        frozen = name.startswith(("actor.0.", "critic."))
        assert torch.equal(value, first.params[name]) == frozen, name


def test_warm_start_across_spaces_is_a_clear_error(tmp_path: Path) -> None:
    registry = get_host().registry
    cartpole = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device="cpu", env=cartpole)
    source = algorithm.train_many(cartpole, [{}], [0], total_steps=512)
    acrobot = registry.env("Acrobot")
    with pytest.raises(CtxrlError, match=r"observation size 6.*'actor.0.weight'.*observation"):
        algorithm.train_many(acrobot, [{}], [0], total_steps=512, init=source)
    with pytest.raises(CtxrlError, match=r"'nothing' matches no layer; layers: actor\.0"):
        algorithm.train_many(cartpole, [{}], [0], total_steps=512, init=source, reinit=["nothing"])
    # a source of another network: its layer norms would be dropped, silently
    from ctxrl.interventions import build_interventions

    normed = algorithm.train_many(
        cartpole,
        [{}],
        [0],
        total_steps=512,
        interventions=build_interventions([{"name": "layer-norm"}], registry),
    )
    with pytest.raises(CtxrlError, match=r"has parameters this network lacks \(actor\.0\.norm"):
        algorithm.train_many(cartpole, [{}], [0], total_steps=512, init=normed)
    with pytest.raises(CtxrlError, match="would be re-initialised and frozen"):
        algorithm.train_many(
            cartpole,
            [{}],
            [0],
            total_steps=512,
            init=source,
            reinit=["actor.head"],
            freeze=["actor.head"],
        )
    with pytest.raises(CtxrlError, match="the warm-start policy has 3 agents and this program 2"):
        algorithm.train_many(
            cartpole, [{}, {}], [0, 1], total_steps=512, init=source.select([0, 0, 0])
        )
    # a role frozen is all of it: the Gaussian actor's log_std too
    pendulum = registry.env("Pendulum")
    gaussian = registry.algorithm("batched-ppo").factory({}, device="cpu", env=pendulum)
    first = gaussian.train_many(pendulum, [{}], [0], total_steps=512)
    tuned = gaussian.train_many(pendulum, [{}], [0], total_steps=1024, init=first, freeze=["actor"])
    for name, value in first.params.items():
        if name.startswith("actor."):
            assert torch.equal(tuned.params[name], value), name


def test_a_sweep_stores_learning_curves_and_diagnostics_and_reports_them(
    tmp_path: Path,
) -> None:
    run_dir = _sweep(
        tmp_path,
        features={"length": {"values": [0.5, 1.0]}},
        curves={"every": 1024, "episodes": 2},
    )
    with Store(run_dir / "store.sqlite") as store:
        curves = store.curves()
        diagnostics = store.diagnostics()
    assert len(curves) == 4  # 2 contexts x 2 seeds
    assert all([s for s, _ in points] == [0, 1024, 2048] for points in curves.values())
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert len(diagnostics[name]) == 4, name
    assert {"explained_variance", "grad_norm"} <= set(diagnostics)
    summary = (run_dir / "summary.md").read_text()
    assert "Learning curves (4 runs" in summary and "| approx_kl | 4 |" in summary
    assert (run_dir / "figures" / "learning_curves.png").is_file()
    assert (run_dir / "exports" / "curves.csv").is_file()
    assert (run_dir / "exports" / "diagnostics.csv").is_file()
    # with a transfer that trains, the curves are the sources' training: the summary says so
    tuned = _sweep(
        tmp_path / "fine-tune",
        features={"length": {"values": [0.5, 1.0]}},
        seeds=[0],
        curves={"every": 1024, "episodes": 1},
        transfer={"name": "fine-tune", "options": {"steps": 512}},
    )
    summary = " ".join((tuned / "summary.md").read_text().split())
    assert "Learning curves (2 runs, the sources' training before fine-tune, own" in summary
    # and the fine-tuning's own curves, each (source, target) pair's on its target
    (record,) = (tuned / "transfer").glob("*.json")
    recorded = json.loads(record.read_text())["details"]["curves"]
    assert recorded["env_steps"] == [0, 512]
    returns = np.asarray(recorded["mean_return"])  # (P, Q, points)
    assert returns.shape == (2, 2, 2) and np.all(returns >= 8)  # CartPole lasts 8+ steps
    assert "while fine-tuning, mean return over the pairs" in summary
    assert (tuned / "figures" / "transfer_curves.png").is_file()
    assert (
        "figures/transfer_curves.png"
        in json.loads((tuned / "exports" / "summary.json").read_text())["figures"]
    )
    # a report elsewhere (--out) draws them from the run directory's records too
    from click.testing import CliRunner

    from ctxrl.cli import cli

    copy = tmp_path / "report-copy"
    reported = CliRunner().invoke(cli, ["report", str(tuned), "--out", str(copy)])
    assert reported.exit_code == 0, reported.output
    assert (copy / "figures" / "transfer_curves.png").is_file()


def test_diagnostics_that_start_late_keep_step_with_their_records(tmp_path: Path) -> None:
    """DQN records no loss before ``learning_starts`` while an intervention (ReDo) reports
    from the first record: each name's values fell out of step with the records, and a sweep
    lost every trained run when it stored them."""
    dqn = {"name": "batched-dqn", "preset": "CartPole", "params": {"learning_starts": 500}}
    interventions = [{"name": "redo", "options": {"every": 100}}]
    run_dir = _sweep(tmp_path, algorithm={**dqn, "interventions": interventions}, train_steps=2000)
    with Store(run_dir / "store.sqlite") as store:
        assert {r.status for r in store.runs()} == {"finished"}
        diagnostics = store.diagnostics()
    redo = next(iter(diagnostics["redo.recycled"].values()))
    loss = next(iter(diagnostics["td_loss"].values()))
    assert redo[0][0] < 500 and loss[0][0] > 500  # no loss stored before learning starts
    assert all(np.isfinite(v) for _, v in loss)  # not stored as missing values
    assert {s for s, _ in loss} < {s for s, _ in redo}
    # in the log every name has a value (NaN where it had none) in every record
    algorithm = (
        get_host().registry.algorithm("batched-dqn").factory({"learning_starts": 500}, device="cpu")
    )
    spec = get_host().registry.env("CartPole")
    policies = algorithm.train_many(
        spec,
        [{"length": 0.5}],
        [0],
        total_steps=2000,
        interventions=build_interventions(interventions, get_host().registry),
    )
    log = policies.log
    assert all(len(v) == len(log.diagnostic_steps) for v in log.diagnostics.values())
    missing = log.diagnostic_missing["td_loss"]
    assert missing and all(np.isnan(log.diagnostics["td_loss"][i]).all() for i in missing)
    assert "redo.recycled" not in log.diagnostic_missing
    # a fraction no ReDo pass has measured yet is missing there, not a placeholder 0
    assert 0 in log.diagnostic_missing["redo.dormant_fraction"]
    assert log.diagnostic_records("td_loss") == [
        i for i in range(len(log.diagnostic_steps)) if i not in missing
    ]


def test_a_gradient_norm_that_is_not_finite_is_reported(tmp_path: Path) -> None:
    """At a reward scale of 1e30 every gradient norm is infinite, the clipping scales each step
    to 0 and the agents never move: the runs finished as normal rows, and the summary showed
    the diagnostics as "n/a" with nothing saying why."""
    run_dir = _sweep(
        tmp_path,
        algorithm={**PPO, "params": {"reward_scale": 1e30}},
        train_steps=512,
        seeds=[0],
    )
    summary = " ".join((run_dir / "summary.md").read_text().split())
    assert "- `grad_norm` in 1 of 1 runs (a first or last record that is not finite" in summary
    assert "makes the per-agent clipping scale the step to 0" in summary


def _config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "env": "CartPole",
        "features": {"length": {"values": [0.5, 1.0]}},
        "algorithm": PPO,
        "train_steps": 1000,
    }
    data.update(changes)
    return data


@requires_sb3
def test_interventions_on_an_algorithm_that_cannot_host_them_are_refused() -> None:
    config = validate_config(
        _config(algorithm={"name": "sb3-ppo", "interventions": [{"name": "l2"}]})
    )
    with pytest.raises(ConfigError, match=r"algorithm.interventions: 'sb3-ppo' cannot host .*'l2'"):
        resolve_plan(config, get_host().registry)


def test_unknown_interventions_transfer_methods_and_curves_are_named() -> None:
    registry = get_host().registry
    bad_name = _config(algorithm={**PPO, "interventions": [{"name": "no-such"}]})
    with pytest.raises(ConfigError, match=r"interventions\[0\].name: .*'no-such'"):
        resolve_plan(validate_config(bad_name), registry)
    with pytest.raises(ConfigError, match=r"transfer\.name: .*'distil'"):
        resolve_plan(validate_config(_config(transfer={"name": "distil"})), registry)
    with pytest.raises(ConfigError, match=r"transfer\.options: 'zero-shot'"):
        resolve_plan(validate_config(_config(transfer={"options": {"x": 1}})), registry)


@requires_sb3
def test_curves_from_an_algorithm_that_cannot_record_them_are_refused() -> None:
    sb3 = _config(algorithm={"name": "sb3-ppo"}, curves={"every": 100})
    with pytest.raises(ConfigError, match="curves: 'sb3-ppo'"):
        resolve_plan(validate_config(sb3), get_host().registry)


def test_a_twin_that_cannot_be_built_is_named_when_interventions_are_checked() -> None:
    """The interventions' check builds the env's twin: an env plugin whose twin raises was a
    traceback through the check, not an error naming the env."""
    import dataclasses

    spec = get_host().registry.env("CartPole")

    def failing_twin(num_envs: int, **kwargs: Any) -> Any:
        raise RuntimeError("no such device")

    broken = dataclasses.replace(spec, make_batched=failing_twin)
    algorithm = get_host().registry.algorithm("batched-ppo").factory({}, device="cpu")
    interventions = build_interventions([{"name": "l2"}], get_host().registry)
    with pytest.raises(CtxrlError, match=r"env 'CartPole': its torch twin cannot be built \("):
        algorithm.check_interventions(broken, interventions)


def test_an_intervention_the_networks_cannot_take_is_refused_before_training() -> None:
    """``plasticity-injection`` of more layers than the network has passed ``--dry-run`` and
    failed every batched group when it began training."""
    deep = {"name": "plasticity-injection", "options": {"layers": 50}}
    config = validate_config(_config(algorithm={**PPO, "interventions": [{"name": "l2"}, deep]}))
    with pytest.raises(ConfigError) as raised:
        resolve_plan(config, get_host().registry)
    assert str(raised.value) == (
        "algorithm.interventions[1] (plasticity-injection): plasticity-injection: layers 50 is "
        "more than the actor network's 3 layers"
    )
    dry = resolve_plan(config, get_host().registry, training=False)  # reading results: fine
    assert dry.config.algorithm.interventions[1].name == "plasticity-injection"


def test_an_intervention_whose_setup_fails_is_refused_before_training() -> None:
    """``plasticity-injection`` with a role the algorithm has no network for is refused in its
    ``setup``: that passed ``--dry-run`` and failed every batched group as it started. Now the
    plan check sets each intervention up on a one-agent training, on instances that never
    train (the sweep's own are set up again when it trains)."""
    wrong = {"name": "plasticity-injection", "options": {"roles": ["actr"]}}
    config = validate_config(_config(algorithm={**PPO, "interventions": [{"name": "l2"}, wrong]}))
    with pytest.raises(ConfigError) as raised:
        resolve_plan(config, get_host().registry)
    assert str(raised.value) == (
        "algorithm.interventions[1] (plasticity-injection): plasticity-injection: roles "
        "['actr'] are not networks of this algorithm (it has actor, critic)"
    )
    right = {"name": "plasticity-injection", "options": {"roles": ["actor"], "at_steps": [512]}}
    fine = validate_config(_config(algorithm={**PPO, "interventions": [{"name": "l2"}, right]}))
    assert (
        resolve_plan(fine, get_host().registry).config.algorithm.interventions[1]
        == (fine.algorithm.interventions[1])
    )


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"name": "reset"}, "it resets at context switches only"),
        ({"name": "shrink-perturb", "options": {"when": "switch"}}, "(when: switch)"),
        ({"name": "plasticity-injection"}, "(at_switch: True) and no at_steps"),
        (
            {"name": "plasticity-injection", "options": {"at_steps": [5000]}},
            "its at_steps [5000] come after the 1000 env steps trained",
        ),
    ],
)
def test_an_intervention_a_sweep_would_never_trigger_is_refused(
    entry: dict[str, Any], why: str
) -> None:
    """A sweep's contexts never switch: an intervention that acts only at switches (or at
    steps past the training) trained exactly as none, and was accepted silently."""
    config = validate_config(_config(algorithm={**PPO, "interventions": [entry]}))
    with pytest.raises(ConfigError) as raised:
        resolve_plan(config, get_host().registry)
    message = " ".join(str(raised.value).split())
    assert message.startswith(f"algorithm.interventions[0] ({entry['name']}): ")
    assert why in message and "a sweep's contexts never switch" in message
    every = {"name": "reset", "options": {"every": 10}}  # acts without switches: accepted
    resolve_plan(
        validate_config(_config(algorithm={**PPO, "interventions": [every]})), get_host().registry
    )


def test_the_setup_check_runs_on_the_cpu_whatever_the_trainers_device() -> None:
    """The one-agent training of the setup check is on the CPU, also for an algorithm's own
    parameters, which it makes on its device (PPO's log standard deviation): with a GPU
    trainer they met the networks' CPU parameters in the optimizer and the plan check raised
    a bare RuntimeError. ``meta`` stands in for a GPU here."""
    registry = get_host().registry
    env = registry.env("Pendulum")
    trainer = registry.algorithm("batched-ppo").factory({}, device="cpu", env=env)
    trainer.device = torch.device("meta")
    trainer.check_interventions(env, build_interventions([{"name": "l2"}], registry))


def test_a_fine_tune_that_freezes_the_whole_policy_is_refused() -> None:
    """``freeze: [actor]`` (PPO) or ``[q]`` (DQN) kept the policy as the source's: the sweep
    spent its fine-tune budget and reported the zero-shot matrix as fine-tuned. A frozen
    critic alone, or part of the actor, still trains the policy."""
    registry = get_host().registry
    for algorithm, freeze in (
        ("batched-ppo", ["actor"]),
        ("batched-ppo", ["actor", "critic"]),
        ("batched-ppo", ["actor.*"]),
        ("batched-dqn", ["q"]),
    ):
        transfer = {"name": "fine-tune", "options": {"steps": 1024, "freeze": freeze}}
        algorithm_entry = {"name": algorithm, "params": {"learning_starts": 100}}
        if algorithm == "batched-ppo":
            algorithm_entry = {"name": algorithm}
        config = _config(algorithm=algorithm_entry, transfer=transfer, train_steps=4096)
        with pytest.raises(ConfigError, match=r"keeps every parameter the policy acts with"):
            resolve_plan(validate_config(config), registry)
    for freeze in (["critic"], ["actor.0"], ["actor.head"]):
        transfer = {"name": "fine-tune", "options": {"steps": 1024, "freeze": freeze}}
        resolve_plan(validate_config(_config(transfer=transfer)), registry)


def test_new_fields_at_their_defaults_keep_the_plan_hash() -> None:
    """Run directories of sweeps written before transfer methods, interventions and curves
    existed keep their names (and so resume)."""
    plain = validate_config(_config())
    explicit = validate_config(
        _config(algorithm={**PPO, "interventions": []}, transfer={"name": "zero-shot"})
    )
    assert plain.plan_hash() == explicit.plan_hash()
    assert "transfer" not in plain.plan_data() and "curves" not in plain.plan_data()
    curved = validate_config(_config(curves={"every": 100}))
    assert curved.plan_hash() != plain.plan_hash()


@pytest.mark.slow
def test_a_fine_tune_sweep_trains_every_pair_and_beats_zero_shot_off_the_diagonal(
    tmp_path: Path,
) -> None:
    """Two pole lengths, sources trained briefly; fine-tuning each source on each target for
    as long again lifts the off-diagonal entries above their zero-shot values."""
    common: dict[str, Any] = {
        "features": {"length": {"values": [0.3, 2.0]}},
        "seeds": [0],
        "train_steps": 8192,
        "eval_episodes": 5,
    }
    zero = _sweep(tmp_path / "zero", **common)
    tuned = _sweep(
        tmp_path / "tuned",
        **common,
        transfer={"name": "fine-tune", "options": {"steps": 8192}},
    )
    with Store(zero / "store.sqlite") as a, Store(tuned / "store.sqlite") as b:
        contexts = resolve_plan(
            validate_config({**_config(), **common}), get_host().registry
        ).grid.contexts
        env = "CartPole"
        before = a.matrix(env=env, sources=contexts, targets=contexts, seeds=[0]).mean()
        after = b.matrix(env=env, sources=contexts, targets=contexts, seeds=[0]).mean()
    off = ~np.eye(2, dtype=bool)
    assert after.shape == (2, 2) and np.isfinite(after).all()
    assert after[off].mean() > before[off].mean(), (before, after)


def test_fine_tuning_keeps_the_sources_networks_and_checks_its_budget(tmp_path: Path) -> None:
    """With `layer-norm` the sources' networks have norm layers the fine-tuning networks
    lacked (every run failed after the sources trained); a DQN fine-tune shorter than
    `learning_starts` failed the whole group after the sources trained: refused first, naming
    the transfer option."""
    run_dir = _sweep(
        tmp_path,
        features={"length": {"values": [0.5, 1.0]}},
        seeds=[0],
        algorithm={**PPO, "interventions": [{"name": "layer-norm"}]},
        transfer={"name": "fine-tune", "options": {"steps": 1024}},
    )
    with Store(run_dir / "store.sqlite") as store:
        assert len(store.runs("finished")) == 2 and not store.runs("failed")
    # N / k* says that it leaves the fine-tuning's target-env steps out
    from ctxrl.summary_text import summary_markdown

    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    assert summary["transfer"][0]["target_env_steps"] == 1024
    summary["sample_efficiency"] = {
        "strategy": "mbtl-gp", "against": ["Independent"], "k_star": 1, "factor": 2.0
    }  # fmt: skip
    text = " ".join(summary_markdown(summary).split())
    assert "a factor N / k* = 2.0. It counts source trainings only" in text
    summary["sample_efficiency"] = {
        "strategy": "mbtl-gp", "against": ["Independent"], "k_match": 1, "factor_match": 2.0
    }  # fmt: skip
    text = " ".join(summary_markdown(summary).split())
    assert "N / k = 2.0. It counts source trainings only" in text
    assert summary["clipped"] == 0 and "outside the return bounds" not in text
    summary["clipped"] = 2  # said, not clipped silently (select says it too)
    assert "2 matrix entries lie outside the return bounds" in summary_markdown(summary)
    overlapping = {"name": "fine-tune", "options": {"steps": 1024, "reinit": "actor.head"}}
    overlapping["options"]["freeze"] = "actor.head"
    with pytest.raises(ConfigError, match=r"actor\.head both re-initialised"):
        resolve_plan(validate_config(_config(transfer=overlapping)), get_host().registry)
    # through patterns and roles too (passed the plan, then every run failed after training)
    for reinit, freeze in (("actor.*", "actor.0"), ("actor", "actor.head")):
        overlapping = {"name": "fine-tune", "options": {"steps": 1024, "reinit": reinit}}
        overlapping["options"]["freeze"] = freeze
        with pytest.raises(ConfigError, match=r"actor\.\w+\.bias, .* both re-initialised"):
            resolve_plan(validate_config(_config(transfer=overlapping)), get_host().registry)
    short = _config(
        algorithm={"name": "batched-dqn", "params": {"learning_starts": 2000}},
        train_steps=4000,
        transfer={"name": "fine-tune", "options": {"steps": 1000}},
    )
    with pytest.raises(
        ConfigError,
        match=r"transfer.options: 'fine-tune': steps 1000 per \(source, target\) pair: ",
    ):
        resolve_plan(validate_config(short), get_host().registry)
    for method in ("fine-tune", "distill"):  # YAML's true was taken as the offset 1
        with pytest.raises(ConfigError, match=f"{method}: seed_offset must be a whole number"):
            get_host().registry.transfer_method(method).factory(steps=1024, seed_offset=True)


def test_an_intervention_on_some_agents_leaves_the_others_as_they_were() -> None:
    """One batch compares with and without: agent 0 without L2 equals a run without it, agent 1
    with L2 equals a run of it alone with L2, bit for bit."""
    registry = get_host().registry
    spec = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device="cpu", env=spec)
    l2 = registry.intervention("l2").factory(coef=0.05)

    def train(seeds: list[int], interventions: Any) -> dict[str, torch.Tensor]:
        contexts = [{"length": 0.5 + s / 4} for s in seeds]
        return algorithm.train_many(  # type: ignore[no-any-return]
            spec, contexts, seeds, total_steps=1024, interventions=interventions
        ).params

    batch = train([0, 1], [(l2, [1])])
    plain = train([0], [])
    alone = train([1], [l2])
    for name in batch:
        assert torch.equal(batch[name][0], plain[name][0]), name
        assert torch.equal(batch[name][1], alone[name][0]), name
    layer_norm = registry.intervention("layer-norm").factory()
    with pytest.raises(CtxrlError, match="'layer-norm' changes the network"):
        train([0, 1], [(layer_norm, [0])])


def test_shrink_and_perturb_leaves_frozen_layers_alone() -> None:
    registry = get_host().registry
    spec = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device="cpu", env=spec)
    first = algorithm.train_many(spec, [{}], [0], total_steps=512)
    shrink = registry.intervention("shrink-perturb").factory()
    tuned = algorithm.train_many(
        spec, [{}], [0], total_steps=1024, init=first, freeze=["actor.0"], interventions=[shrink]
    )
    assert torch.equal(tuned.params["actor.0.weight"], first.params["actor.0.weight"])
    assert not torch.equal(tuned.params["actor.1.weight"], first.params["actor.1.weight"])


@pytest.mark.parametrize(
    ("transfer", "saved_files"),
    [
        ({"name": "fine-tune", "options": {"steps": 1024}}, ["transfer"]),
        ({"name": "distill", "options": {"steps": 1024}}, ["transfer"]),
        (
            {"name": "distill", "options": {"steps": 1024, "mode": "proxy", "proxy_steps": 1024}},
            ["transfer", "transfer-proxy"],
        ),
    ],
    ids=["fine-tune", "distill", "distill-proxy"],
)
def test_a_sweep_killed_after_its_transfer_trained_continues_from_the_transfers_checkpoint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transfer: dict[str, Any],
    saved_files: list[str],
) -> None:
    """A transfer that trains (fine-tuning, distillation's students and proxy) checkpoints
    itself beside the group (it was redone whole after a kill): killed before its runs were
    stored, the rerun continues from its final state and stores what a sweep never killed
    stores; a damaged one is named and the transfer redone; no checkpoint is left behind."""
    import ctxrl.batched_programs as batched_programs
    from ctxrl.artifacts import artifact_metadata

    class Killed(BaseException):
        pass

    def killed(*args: Any) -> None:
        raise Killed

    changes: dict[str, Any] = {
        "features": {"length": {"values": [0.5, 1.0]}},
        "seeds": [0],
        "transfer": transfer,
    }
    never = _sweep(tmp_path / "never", **changes)
    for damaged in (False, True):
        out = tmp_path / f"killed-{damaged}"
        monkeypatch.setattr(batched_programs, "store_trained", killed)
        with pytest.raises(Killed):
            _sweep(out, **changes)
        monkeypatch.undo()
        for name in saved_files:
            (file,) = (out / "runs").glob(f"*/checkpoints/batch-*-{name}.safetensors")
            # 1024 / 512: all
            assert (
                artifact_metadata(file.with_name(file.name[: -len(".safetensors")]))["iteration"]
                == 2
            )
        (saved,) = (out / "runs").glob("*/checkpoints/batch-*-transfer.safetensors")
        if damaged:
            saved.write_bytes(saved.read_bytes()[:100])
        run_dir = _sweep(out, **changes)
        assert not list((run_dir / "checkpoints").iterdir())
        if transfer["name"] == "fine-tune":  # the diagonal is not the sources' own training
            text = (run_dir / "summary.md").read_text()
            assert "(all 2 models, each after fine-tune on its own context)" in text
        with Store(run_dir / "store.sqlite") as a, Store(never / "store.sqlite") as b:
            assert [a.returns(r.run_id) for r in a.runs()] == [
                b.returns(r.run_id) for r in a.runs()
            ]


def test_a_checkpoint_of_another_training_is_not_resumed(tmp_path: Path) -> None:
    """A caller training twice into one checkpoint path (a transfer method with two stages)
    got the first training's final state back for the second: only the algorithm's name was
    checked. Another warm start, other frozen layers or another budget is refused by name."""
    from ctxrl.errors import CheckpointError

    registry = get_host().registry
    env = registry.env("CartPole")

    def ppo() -> Any:
        params = {"num_envs": 2, "num_steps": 32, "hidden": 16}
        return registry.algorithm("batched-ppo").factory(params, device="cpu")

    checkpoint = tmp_path / "stage"
    first = ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=checkpoint)
    again = ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=checkpoint)
    for name, value in first.params.items():  # the same training: resumed from its end
        assert torch.equal(again.params[name], value), name
    for changes in ({"init": first}, {"freeze": ["actor.0"]}, {"total_steps": 1024}):
        options: dict[str, Any] = {"total_steps": 512, **changes}
        with pytest.raises(CheckpointError, match="written for another training"):
            ppo().train_many(env, [{}], [0], checkpoint=checkpoint, **options)
    # curves asked for on resume were recorded from there on (no step-0 point), on two grids
    # when ``every`` changed, and a changed ``episodes`` failed in numpy while saving
    curves = CurveOptions(every=128, episodes=2)
    with pytest.raises(
        CheckpointError,
        match="written for no learning curves, and this training asks for learning curves "
        "every 128 env steps, 2 episodes on their own contexts",
    ):
        ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=checkpoint, curves=curves)
    recorded = tmp_path / "curves"
    first = ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=recorded, curves=curves)
    again = ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=recorded, curves=curves)
    assert again.log.curve_steps == first.log.curve_steps == [0, 128, 256, 384, 512]
    # numpy's whole numbers are the same settings (they were written to the checkpoint as text)
    same = CurveOptions(every=np.int64(128), episodes=np.int32(2))
    ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=recorded, curves=same)
    for other in (CurveOptions(every=256, episodes=2), CurveOptions(every=128, episodes=3), None):
        with pytest.raises(CheckpointError, match="learning curves every 128 env steps, 2"):
            ppo().train_many(env, [{}], [0], total_steps=512, checkpoint=recorded, curves=other)
    for bad in ({"every": 0}, {"every": -5}, {"every": 1.5}, {"every": 10, "episodes": 0}):
        with pytest.raises(CtxrlError, match=r"curves\.(every|episodes) must be a whole number"):
            CurveOptions(**bad)


def test_a_time_limit_a_batched_sweep_in_one_process_cannot_apply_is_said(
    tmp_path: Path,
) -> None:
    """``executor.timeout_s`` bounds executor jobs; a batched sweep with ``shards: 1`` trains
    in the sweep's process, where the limit was silently not applied."""
    from io import StringIO

    from rich.console import Console

    data = {
        "env": "CartPole",
        "features": {"length": {"values": [0.5]}},
        "algorithm": PPO,
        "seeds": [0],
        "train_steps": 512,
        "eval_episodes": 1,
        "compare": [],
        "executor": {"timeout_s": 600},
        "output_dir": str(tmp_path / "runs"),
    }
    said = StringIO()
    plan = resolve_plan(validate_config(data), get_host().registry)
    run_sweep(plan, console=Console(file=said, width=300))
    assert "executor.timeout_s: 600 s bounds the executor's jobs" in said.getvalue()


def test_a_resumed_training_counts_the_time_trained_before_the_kill(tmp_path: Path) -> None:
    """A run's duration in runs.csv lost the killed process's training time: the checkpoint
    now carries it (``earlier_train_s`` of the resumed training)."""
    import time

    spec = get_host().registry.env("CartPole")

    def algorithm() -> Any:
        params = {"num_envs": 2, "num_steps": 16, "update_epochs": 1, "hidden": 8}
        return get_host().registry.algorithm("batched-ppo").factory(params, device="cpu")

    checkpoint = tmp_path / "checkpoint"

    class Killed(Exception):
        pass

    def kill_after_the_first_checkpoint(done: int, total: int) -> None:
        time.sleep(0.01)  # some time to count
        if checkpoint.with_suffix(".safetensors").exists():
            raise Killed

    first = algorithm()
    started = time.monotonic()
    with pytest.raises(Killed):
        first.train_many(
            spec,
            [{}],
            [0],
            total_steps=640,
            checkpoint=checkpoint,
            checkpoint_every=320,
            progress=kill_after_the_first_checkpoint,
        )
    killed_after = time.monotonic() - started
    resumed = algorithm()
    resumed.train_many(spec, [{}], [0], total_steps=640, checkpoint=checkpoint)
    assert 0.05 < resumed.earlier_train_s <= killed_after
    fresh = algorithm()
    fresh.train_many(spec, [{}], [0], total_steps=64)
    assert fresh.earlier_train_s == 0.0


def test_a_training_killed_at_its_last_progress_line_is_not_trained_again(
    tmp_path: Path,
) -> None:
    """The final checkpoint is saved before the last progress line: a caller killed once it
    has said "done" resumes with nothing left to train, to the same weights."""
    spec = get_host().registry.env("CartPole")
    params = {"num_envs": 2, "num_steps": 16, "update_epochs": 1, "hidden": 8}

    def train(**options: Any) -> Any:
        algorithm = get_host().registry.algorithm("batched-ppo").factory(params, device="cpu")
        return algorithm.train_many(spec, [{}], [0], total_steps=320, **options)

    class Killed(Exception):
        pass

    def kill_when_done(done: int, total: int) -> None:
        if done == total:
            raise Killed

    checkpoint = tmp_path / "checkpoint"
    with pytest.raises(Killed):
        train(checkpoint=checkpoint, checkpoint_every=10_000, progress=kill_when_done)
    lines: list[tuple[int, int]] = []
    resumed = train(checkpoint=checkpoint, progress=lambda done, total: lines.append((done, total)))
    assert lines == []  # no iteration left to train
    whole = train()
    for name, value in whole.params.items():
        torch.testing.assert_close(resumed.params[name], value, rtol=0, atol=0)
