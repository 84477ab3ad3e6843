"""The DQN-transferability study end to end at CI size (CartPole pole lengths), its resume, and
its errors for bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from study_dry_run import assert_dry_run_prints_the_study

from ctxrl.config import resolve_plan, validate_config
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.plugins import get_host
from ctxrl.results import load_policies
from ctxrl.sweep import run_sweep
from ctxrl_plugins.transfer.dqn_transferability import (
    Pair,
    StudyConfig,
    StudyRunner,
    load_study_config,
    report_study,
    resolve_study,
    run_study,
)
from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

Run = Callable[..., subprocess.CompletedProcess[str]]

STUDY: dict[str, Any] = {
    "env": "CartPole",
    "contexts": [
        {"name": "short", "context": {"length": 0.3}},
        {"name": "long", "context": {"length": 1.5}},
    ],
    "algorithm": {
        "learning_starts": 300,
        "train_frequency": 2,
        "target_network_frequency": 100,
        "exploration_fraction": 0.3,
        "buffer_size": 2000,
        "hidden": [32, 32],
    },
    "seeds": [0, 1, 2],
    "train_steps": 1500,
    "curve_every": 500,
    "curve_episodes": 2,
}


def _write(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs"), **changes}))
    return path


@pytest.mark.long
def test_a_study_writes_matrices_curves_figures_and_resumes(run_ctxrl: Run, tmp_path: Path) -> None:
    study = _write(tmp_path)
    result = run_ctxrl("transfer", "dqn", str(study), check=True)
    assert "# DQN transferability: CartPole" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "exports" / "metrics.json").read_text())
    arms = metrics["variants"]["dqn"]
    assert set(arms) == {"fine-tune", "only-head", "hybrid", "keep-head"}
    for data in arms.values():
        r = np.array(data["matrices"]["area_ratio"], dtype=float)
        assert r.shape == (2, 2, 3) and np.isfinite(r[..., 0]).all()
        low, estimate, high = r[..., 1], r[..., 0], r[..., 2]
        assert (low <= estimate + 1e-12).all() and (estimate <= high + 1e-12).all()
        assert sum(data["counts"].values()) == 4
        for s in range(2):
            for t in range(2):
                verdict = data["verdicts"][s][t]
                excludes = low[s, t] > 0 or high[s, t] < 0
                assert (verdict == "absent") == (not excludes), (verdict, low[s, t], high[s, t])
    # the performance matrix is a square CSV in [0, 1] that `ctxrl select` reads
    performance = run_dir / "exports" / "matrix_performance_dqn_fine-tune.csv"
    assert np.loadtxt(performance, delimiter=",").shape == (2, 2)
    selected = run_ctxrl(
        "select",
        "--matrix",
        str(performance),
        "--strategy",
        "greedy",
        "--budget",
        "1",
        "--bounds",
        "0",
        "1",
        check=True,
    )
    assert "greedy" in selected.stdout
    for figure in ("area_ratio_dqn.png", "curves_dqn.png"):
        assert (run_dir / "figures" / figure).is_file()
    assert (run_dir / "exports" / "pairs.csv").read_text().count("\n") > 4 * 5
    # each arm's training time is kept (summed over processes) for the study's wall time
    timing = json.loads((run_dir / "timing.json").read_text())
    assert set(timing) == {f"dqn/{arm}" for arm in ("scratch", *arms)}
    assert all(seconds > 0 for seconds in timing.values())
    # finished arms are stored: a rerun trains nothing and `ctxrl report` rewrites the summary
    again = run_ctxrl("transfer", "dqn", str(study), check=True)
    assert "scratch:" not in again.stderr
    assert json.loads((run_dir / "timing.json").read_text()) == timing
    report = run_ctxrl("report", str(run_dir), check=True)
    assert "| arm | positive | negative | absent | undetermined (no interval) | mean r |" in (
        report.stdout
    )
    # the threshold only the analysis reads: another one is reported from the stored arms
    lower = _write(tmp_path, threshold=0.5)
    rethresholded = run_ctxrl("transfer", "dqn", str(lower), check=True)
    assert "scratch:" not in rethresholded.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
    assert json.loads((run_dir / "exports" / "metrics.json").read_text())["threshold"] == 0.5
    # so is the absent band (Sabatelli & Geurts's |r| <= 0.05): a pair is positive or
    # negative only with its whole interval beyond the band
    banded = run_ctxrl("transfer", "dqn", str(_write(tmp_path, absent_band=1.0)), check=True)
    assert "scratch:" not in banded.stderr
    metrics = json.loads((run_dir / "exports" / "metrics.json").read_text())
    pairs = [pair for arm in metrics["variants"]["dqn"].values() for pair in arm["pairs"]]
    for pair in pairs:
        r = pair["area_ratio"]
        if pair["verdict"] in ("positive", "negative"):
            assert r["low"] > 1.0 or r["high"] < -1.0, pair
        elif pair["verdict"] == "absent" and pair["verdict_basis"] == "area_ratio":
            assert r["low"] <= 1.0 and r["high"] >= -1.0, pair
    assert any(pair["verdict"] == "absent" for pair in pairs)
    assert "lies entirely above 1 / below -1 (absent_band)" in (run_dir / "summary.md").read_text()
    assert json.loads((run_dir / "timing.json").read_text()) == timing


def test_arms_start_from_the_right_weights(tmp_path: Path) -> None:
    """Keep-head agents start as their source's scratch agent; only-head agents keep their
    source's hidden layers to the end (frozen), with a new head."""
    config = StudyConfig.model_validate(
        {
            **STUDY,
            "arms": ["scratch", "fine-tune", "only-head", "keep-head"],
            "seeds": [0],
            "train_steps": 600,
            "curve_every": 300,
            "output_dir": str(tmp_path),
        }
    )
    registry = get_host().registry
    runner = StudyRunner(resolve_study(config, registry), registry)
    results = runner.run()["dqn"]
    scratch, only_head = results["scratch"], results["only-head"]
    source_row = {key: i for i, (key, _) in enumerate(scratch.keys)}
    for i, (pair, _) in enumerate(only_head.keys):
        source = source_row[pair.source]  # type: ignore[union-attr]
        for name in ("q.0.weight", "q.1.bias"):
            assert np.array_equal(only_head.params[name][i], scratch.params[name][source])
        assert not np.array_equal(
            only_head.params["q.head.weight"][i], scratch.params["q.head.weight"][source]
        )
    keep = results["keep-head"]
    for i, (pair, _) in enumerate(keep.keys):
        # the zero-shot policy's curve point at step 0 is the source's own final performance
        # on the target context, so it cannot be the untrained one of scratch there
        assert keep.curves[i, 0] != pytest.approx(scratch.curves[pair.target, 0])  # type: ignore[union-attr]


def test_checkpointing_less_often_gives_the_same_study(tmp_path: Path) -> None:
    """``checkpoint_every`` only sets how often an arm in training is saved (its replay
    buffers are large): the arms are the same; a cadence below one step is refused."""
    registry = get_host().registry
    arms = {}
    for every in (None, 100):
        config = StudyConfig.model_validate(
            {
                **STUDY,
                "arms": ["scratch", "fine-tune"],
                "seeds": [0],
                "train_steps": 400,
                "curve_every": 200,
                "output_dir": str(tmp_path / str(every)),
            }
        )
        runner = StudyRunner(resolve_study(config, registry), registry, checkpoint_every=every)
        arms[every] = runner.run()["dqn"]
    for arm in ("scratch", "fine-tune"):
        np.testing.assert_array_equal(arms[None][arm].curves, arms[100][arm].curves)
        for name, value in arms[None][arm].params.items():
            assert np.array_equal(value, arms[100][arm].params[name]), (arm, name)
    with pytest.raises(CtxrlError, match="checkpoint_every must be >= 1 env step, got 0"):
        StudyRunner(resolve_study(config, registry), registry, checkpoint_every=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"env": "Pendulum"}, "env: DQN needs discrete actions; 'Pendulum'"),
        ({"arms": ["fine-tune", "hybrid"]}, "hybrid arm needs the fine-tune and only-head"),
        ({"arms": ["warm"]}, r"arms\[0\]"),
        ({"contexts": [{"name": "a", "context": {"length": 99.0}}]}, r"contexts\[0\].context"),
        ({"contexts": [{"name": "a"}, {"name": "a"}]}, "repeat a name"),
        (  # paddle widths 2.6 and 3 are one Catch: the env rounds the width to whole cells
            {
                "env": "Catch",
                "contexts": [
                    {"name": "w3", "context": {"paddle_width": 3}},
                    {"name": "w2.6", "context": {"paddle_width": 2.6}},
                ],
            },
            r"contexts\[1\] \('w2.6'\) is the environment of contexts\[0\] \('w3'\): Catch ",
        ),
        (
            {"contexts": [{"name": "a"}, {"name": "b", "context": {"length": 0.5}}]},
            r"contexts\[1\] \('b'\) is the environment of contexts\[0\] \('a'\)",
        ),
        ({"algorithm": {"learning_rat": 0.1}}, "no hyperparameter 'learning_rat'"),
        ({"preset": "nope"}, "preset: batched-dqn has no preset 'nope'; available: "),
        ({"seeds": [0, 0]}, "repeat a seed"),
        ({"pairs": "cross", "contexts": [{"name": "a"}]}, "leaves no pair"),
        ({"arms": ["scratch"]}, "compares transfer arms with scratch: name at least one of"),
        ({"train_steps": 300}, "learning_starts: batched-dqn starts learning after 300 env steps"),
        ({"threshold": 195}, "threshold: Input should be less than or equal to 1"),
        # trained and evaluated at whole iterations: the summary reported the steps asked for
        (
            {"algorithm": {**STUDY["algorithm"], "num_envs": 8}, "train_steps": 2001},
            r"train_steps: 2001 env steps is not a whole number of batched-dqn's iterations "
            r"\(8 env steps per agent",
        ),
        (
            {"algorithm": {**STUDY["algorithm"], "num_envs": 8}, "train_steps": 1504},
            "curve_every: 500 env steps is not a whole number",
        ),
        ({"curve_every": 3000}, r"curve_every: 3000 env steps is beyond train_steps \(1500\)"),
        (  # the study's field is `algorithm`, not the sweep's `algorithm.params`
            {"algorithm": {"learning_rate": "fast"}},
            "algorithm: batched-dqn: learning_rate: ",
        ),
        (
            {"contexts": [{"name": "a"}, {"name": "b", "env": "Acrobot"}]},
            r"2 pair\(s\) cannot transfer, e.g. a \(CartPole: observations 4, actions 2\) -> b "
            r"\(Acrobot: observations 6, actions 3\): the arms fine-tune, only-head, hybrid, "
            "keep-head are impossible",
        ),
        ({"contexts": [{"name": "a", "env": "Pendulum"}]}, r"contexts\[0\].env: DQN needs"),
    ],
)
def test_bad_studies_are_refused_before_training(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config = load_study_config(_write(tmp_path, **changes))
        resolve_study(config, get_host().registry)
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_self_pairs_one_seed_and_arms_in_any_order_give_a_report(
    run_ctxrl: Run, tmp_path: Path
) -> None:
    """``pairs: self`` leaves the matrices' other pairs empty: written as null, not a crash
    after training; the hybrid arm named before the two arms it is made of trains after them;
    ``ctxrl report --out`` writes a copy and leaves the run directory as it was."""
    tiny = {
        "algorithm": {**STUDY["algorithm"], "learning_starts": 100, "hidden": [16]},
        "seeds": [0],
        "train_steps": 300,
        "curve_every": 100,
        "curve_episodes": 1,
    }
    config = load_study_config(
        _write(tmp_path, pairs="self", arms=["hybrid", "fine-tune", "only-head"], **tiny)
    )
    assert config.arms == ["scratch", "fine-tune", "only-head", "hybrid"]
    run_dir = run_study(config, get_host().registry)
    metrics = json.loads((run_dir / "exports" / "metrics.json").read_text())
    for arm in ("fine-tune", "only-head", "hybrid"):
        area = metrics["variants"]["dqn"][arm]["matrices"]["area_ratio"]
        assert area[0][1] == area[1][0] == [None, None, None]  # not run: null
        assert area[0][0][0] is not None and area[1][1][0] is not None
    # one seed: no interval, said as such (it read "+nan [+nan, +nan]")
    table = (run_dir / "summary.md").read_text()
    assert "nan" not in table and "(no interval)" in table
    assert "The hybrid arm starts from the fine-tune and only-head arms' final weights" in " ".join(
        (run_dir / "summary.md").read_text().split()
    )
    summary = (run_dir / "summary.md").stat().st_mtime_ns
    out = tmp_path / "report"
    result = run_ctxrl("report", str(run_dir), "--out", str(out), check=True)
    assert "# DQN transferability: CartPole" in result.stdout
    assert (out / "summary.md").is_file() and (out / "exports" / "metrics.json").is_file()
    assert (run_dir / "summary.md").stat().st_mtime_ns == summary
    # the same report again into its own copy (refused before), never into other files
    run_ctxrl("report", str(run_dir), "--out", str(out), check=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    refused = run_ctxrl("report", str(run_dir), "--out", str(other))
    assert refused.returncode != 0 and f"--out: {other} is not empty" in refused.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    inside = run_dir / "sub"  # copied the study into itself, one level deeper each time
    refused = run_ctxrl("report", str(run_dir), "--out", str(inside))
    assert refused.returncode != 0 and "lies inside the run directory" in refused.stderr
    assert not inside.exists()
    copy = tmp_path / "copy-of-copy"  # a report of the --out copy, rewritten too
    for _ in range(2):
        run_ctxrl("report", str(out), "--out", str(copy), check=True)
    # a report that fails (no stored arms: the outputs of a study, not its run directory)
    # takes back the copy it made: --out is left as it was
    outputs_only = tmp_path / "outputs-only"
    shutil.copytree(run_dir, outputs_only, ignore=shutil.ignore_patterns("arms"))
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new", empty):
        failed = run_ctxrl("report", str(outputs_only), "--out", str(target))
        assert failed.returncode != 0 and "has not finished" in failed.stderr, failed.stderr
        # named as the run directory given, not as the copy just taken back
        error = failed.stderr.split("error: ", 1)[1]
        assert error.startswith(f"{outputs_only}: arm") and str(target) not in error
    # a file of the run directory that cannot be read: said, and the partial copy taken back
    (outputs_only / "notes.txt").symlink_to(tmp_path / "gone")
    failed = run_ctxrl("report", str(outputs_only), "--out", str(tmp_path / "new"))
    assert failed.returncode == 2 and f"cannot copy {outputs_only / 'notes.txt'}" in failed.stderr
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "new").exists() and not any(empty.iterdir())


def test_a_device_that_is_not_here_is_named_before_training(tmp_path: Path) -> None:
    config = load_study_config(_write(tmp_path, device="cuda:99"))
    with pytest.raises(ConfigError, match="device: 'cuda:99' is not available"):
        run_study(config, get_host().registry)
    assert not (tmp_path / "runs").exists()


def test_a_missing_study_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_study_config(tmp_path / "nope.yaml")


def _sweep_on_the_study_contexts(
    tmp_path: Path, algorithm: dict[str, Any], seeds: list[int], **changes: Any
) -> Path:
    """A small finished sweep on the study's two pole lengths (the sources to reuse)."""
    data: dict[str, Any] = {
        "env": "CartPole",
        "features": {"length": {"values": [0.3, 1.5]}},
        "algorithm": algorithm,
        "seeds": seeds,
        "train_steps": 600,
        "eval_episodes": 1,
        "compare": [],
        "output_dir": str(tmp_path / "sweeps"),
        **changes,
    }
    return run_sweep(resolve_plan(validate_config(data), get_host().registry)).run_dir


def test_sources_from_a_sweep_start_the_transfer_arms(tmp_path: Path) -> None:
    """With ``sources_from`` the transfer agents (keep-head here; fine-tune and only-head take
    the same rows) start from the sweep's agent of their source context and seed (the scratch
    arm still trains, as the baseline); a sweep of another algorithm, without a needed seed, or
    with another network is refused by name before anything is written."""
    network = {key: STUDY["algorithm"][key] for key in ("hidden",)}
    sweep = _sweep_on_the_study_contexts(
        tmp_path, {"name": "batched-dqn", "params": {**network, "learning_starts": 300}}, [0, 1]
    )
    study = {
        **STUDY,
        "algorithm": {**STUDY["algorithm"], "learning_starts": 100},
        "arms": ["scratch", "keep-head"],
        "seeds": [0, 1],
        "train_steps": 300,
        "curve_every": 300,
        "output_dir": str(tmp_path / "runs"),
    }
    registry = get_host().registry
    plan = resolve_study(
        StudyConfig.model_validate({**study, "sources_from": str(sweep)}), registry
    )
    sources = load_policies(sweep)
    assert plan.sources is not None and len(plan.sources.rows) == 4
    runner = StudyRunner(plan, registry)
    keys = [(pair, seed) for pair in plan.pairs for seed in (0, 1)]
    init = runner._initial_params("keep-head", keys, {})
    for i, (pair, seed) in enumerate(keys):
        (row,) = [
            r
            for r, (run, ctx) in enumerate(zip(sources.runs, sources.contexts, strict=True))
            if run.seed == seed and ctx["length"] == plan.contexts[pair.source]["length"]
        ]
        expected = sources.policies[row].params["q.0.weight"][0]
        assert torch.equal(init["q.0.weight"][i], expected)
    results = runner.run()
    keep = results["dqn"]["keep-head"]
    assert keep.curves.shape == (8, 2) and np.isfinite(keep.curves).all()
    write_outputs(plan, results, runner.run_dir)
    text = (runner.run_dir / "summary.md").read_text()
    assert f"Source agents: the sweep in {sweep}" in text
    assert "hybrid" not in text  # no hybrid arm, so nothing said of it
    (runner.run_dir / "summary.md").unlink()
    report_study(runner.run_dir)  # from the stored arms: the sweep's agents are not reread
    assert f"Source agents: the sweep in {sweep}" in (runner.run_dir / "summary.md").read_text()

    def refused(message: str, **changes: Any) -> None:
        out = tmp_path / "refused"
        config = StudyConfig.model_validate({**study, **changes, "output_dir": str(out)})
        with pytest.raises(ConfigError, match=message):
            resolve_study(config, registry)
        assert not out.exists()  # nothing half-written

    refused(
        r"sources_from: .*nowhere is not a run directory", sources_from=str(tmp_path / "nowhere")
    )
    refused("holds a 'dqn-transferability' study, not a sweep", sources_from=str(plan.run_dir))
    ppo = _sweep_on_the_study_contexts(tmp_path / "ppo", {"name": "batched-ppo"}, [0])
    refused("holds 'batched-ppo' agents", sources_from=str(ppo))
    refused(
        r"no finished CartPole run at context short .* with seed 2",
        sources_from=str(sweep),
        seeds=[0, 1, 2],
    )
    refused(
        r"dueling=False, the 'dueling' variant's network dueling=True",
        sources_from=str(sweep),
        variants=["dueling"],
    )
    # agents of a network an intervention changed (here with LayerNorm parameters): refused
    # here, not after the scratch arm had trained ("the warm-start policy has parameters
    # this network lacks")
    normed = _sweep_on_the_study_contexts(
        tmp_path / "ln",
        {
            "name": "batched-dqn",
            "params": {**network, "learning_starts": 300},
            "interventions": [{"name": "layer-norm"}],
        },
        [0, 1],
    )
    refused(r"trained with layer-norm, which change the network", sources_from=str(normed))
    # a sweep's multi-task agent (stored at the default context) is no source: a study context
    # at the default was started from it; agents that observed visible features do not fit
    dqn = {"name": "batched-dqn", "params": {**network, "learning_starts": 300}}
    mixed = _sweep_on_the_study_contexts(tmp_path / "mt", dqn, [0], multitask=True)
    default = [{"name": "default", "context": {}}, STUDY["contexts"][1]]
    refused(
        r"no finished CartPole run at context default",
        sources_from=str(mixed),
        seeds=[0],
        contexts=default,
    )
    shown = _sweep_on_the_study_contexts(
        tmp_path / "vis", dqn, [0, 1], env_options={"visible": ["length"]}
    )
    refused(r"observe the context features \['length'\] beside the env", sources_from=str(shown))


def test_a_damaged_stored_arm_is_named_by_report_and_trained_again_by_a_rerun(
    tmp_path: Path,
) -> None:
    """A stored arm cut short stopped every rerun and report; the study's rerun now trains it
    again, to the same numbers, and the report names the study's command."""
    config = load_study_config(
        _write(tmp_path, arms=["scratch", "fine-tune"], seeds=[0], train_steps=600, curve_every=300)
    )
    run_dir = run_study(config, get_host().registry)
    stored = run_dir / "arms" / "dqn" / "fine-tune.safetensors"
    whole = stored.read_bytes()
    stored.write_bytes(whole[:2000])
    with pytest.raises(CtxrlError, match=rf"{stored} is damaged .*rerun `ctxrl transfer dqn`"):
        report_study(run_dir)
    run_study(config, get_host().registry)
    assert stored.read_bytes() == whole
    report_study(run_dir)


def test_a_cut_timing_file_does_not_block_a_resume(tmp_path: Path) -> None:
    """timing.json (seconds per arm, rewritten every 30 s) is replaced whole; one cut short
    by a kill before that was so failed every resume with a JSONDecodeError. It is a record,
    not a result: its times start again."""
    from ctxrl_plugins.transfer.dqn_transferability_runner import StudyRunner

    runner = StudyRunner.__new__(StudyRunner)  # the timing record needs only its directory
    runner.run_dir, runner._clock = tmp_path, None
    (tmp_path / "timing.json").write_text('{\n "dqn/fine-tune": 20.6')
    assert runner.timing() == {}
    runner._tick("dqn/scratch")
    runner._tick("dqn/scratch", force=True)
    assert set(json.loads((tmp_path / "timing.json").read_text())) == {"dqn/scratch"}
    assert [p.name for p in tmp_path.iterdir()] == ["timing.json"]


def _diverged_study(tmp_path: Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """A plan of three pole lengths, seeds 0 and 1, and made-up finished arms (no training)
    where agents diverged as in a real study with an exploding learning rate: scratch on
    ``short`` seed 0 (NaN from step 1500), so every fine-tune agent from ``short`` with seed 0
    (NaN throughout), and both fine-tune agents of ``mid -> long`` (inf at step 1000)."""
    from ctxrl_plugins.transfer.dqn_transferability_runner import ArmResult

    config = StudyConfig.model_validate(
        {
            **STUDY,
            "contexts": [
                {"name": "short", "context": {"length": 0.3}},
                {"name": "mid", "context": {"length": 0.5}},
                {"name": "long", "context": {"length": 1.0}},
            ],
            "arms": ["scratch", "fine-tune"],
            "seeds": [0, 1],
            "output_dir": str(tmp_path / "runs"),
        }
    )
    plan = resolve_study(config, get_host().registry)
    steps = np.array([0, 500, 1000, 1500])
    rng = np.random.default_rng(0)
    scratch_keys: list[tuple[Any, int]] = [(c, seed) for c in range(3) for seed in (0, 1)]
    scratch = 20.0 + np.arange(4) * 40.0 + rng.uniform(0.0, 30.0, (6, 4))
    scratch[0, 3] = np.nan  # short, seed 0
    keys: list[tuple[Any, int]] = [(pair, seed) for pair in plan.pairs for seed in (0, 1)]
    fine = 60.0 + np.arange(4) * 50.0 + rng.uniform(0.0, 30.0, (len(keys), 4))
    for i, (pair, seed) in enumerate(keys):
        if pair.source == 0 and seed == 0:
            fine[i] = np.nan
        if (pair.source, pair.target) == (1, 2):
            fine[i, 2] = np.inf
    results = {
        "dqn": {
            "scratch": ArmResult(steps, scratch, {}, scratch_keys),
            "fine-tune": ArmResult(steps, fine, {}, keys),
        }
    }
    return plan, results


def test_diverged_agents_are_named_and_left_out_of_the_analysis(tmp_path: Path) -> None:
    """One diverged agent made the analysis raise "returns must be finite" after the whole
    study had trained, so nothing was reported, ever: the diverged agents are named, the
    metrics come from the other seeds, and a pair with no finite seed left has no estimate."""
    from ctxrl.transfer_metrics import LearningCurves, compare_transfer
    from ctxrl_plugins.transfer.dqn_transferability_report import analyse, normalise

    plan, results = _diverged_study(tmp_path)
    analysis = analyse(plan, results)
    diverged = analysis["diverged"]
    assert len(diverged) == 1 + 3 + 2
    assert diverged[0] == {
        "variant": "dqn",
        "arm": "scratch",
        "source": None,
        "target": "short",
        "seed": 0,
        "from_step": 1500,
    }
    named = {(a["arm"], a["source"], a["target"], a["seed"], a["from_step"]) for a in diverged}
    assert ("fine-tune", "short", "mid", 0, 0) in named
    assert {("fine-tune", "mid", "long", seed, 1000) for seed in (0, 1)} <= named
    data = analysis["variants"]["dqn"]["fine-tune"]
    pairs = {(p["source"], p["target"]): p for p in data["pairs"]}
    # nothing diverged on mid -> mid: the same comparison as before
    fine, scratch = (normalise(plan, results["dqn"][arm]) for arm in ("fine-tune", "scratch"))
    mid_to_mid = [i for i, (p, _) in enumerate(results["dqn"]["fine-tune"].keys) if p == Pair(1, 1)]
    on_mid = [i for i, (c, _) in enumerate(results["dqn"]["scratch"].keys) if c == 1]
    expected = compare_transfer(
        LearningCurves([0, 500, 1000, 1500], fine[mid_to_mid]),
        LearningCurves([0, 500, 1000, 1500], scratch[on_mid]),
        threshold=0.9,
        return_floor=0.0,
        source_steps=1500,
    )
    assert pairs[("mid", "mid")]["area_ratio"] == expected.to_json()["area_ratio"]
    # a diverged transfer seed, and a diverged scratch seed on the target: left out, counted
    for pair, counted in (
        (("short", "mid"), "n_transfer_diverged"),
        (("mid", "short"), "n_scratch_diverged"),
    ):
        entry = pairs[pair]
        assert entry["area_ratio"]["estimate"] is not None and entry[counted] == 1
        assert entry["area_ratio"]["n_excluded"] == 1 and "diverged" in entry["area_ratio"]["note"]
    # no finite seed left: null, no verdict, and why
    assert data["matrices"]["area_ratio"][1][2] == [None, None, None]
    assert data["verdicts"][1][2] == "" and pairs[("mid", "long")]["verdict"] is None
    assert "no finite seed left in the transfer arm" in pairs[("mid", "long")]["no_estimate"]
    assert sum(data["counts"].values()) == 8
    json.dumps(analysis, allow_nan=False)


def test_a_study_with_diverged_agents_is_reported(run_ctxrl: Run, tmp_path: Path) -> None:
    """`ctxrl report` of a run directory whose stored arms hold diverged agents writes the
    summary (naming them), the metrics (strict JSON, the diverged ones listed), the matrices
    and the figures."""
    plan, results = _diverged_study(tmp_path)
    runner = StudyRunner(plan, get_host().registry)
    runner.prepare()
    for arm, result in results["dqn"].items():
        runner._store_arm("dqn", arm, result)
    report = run_ctxrl("report", str(runner.run_dir), check=True)
    assert "6 diverged agent(s)" in report.stdout
    assert "- dqn: scratch on short, seed 0 (not finite from step 1,500)" in report.stdout
    assert "| fine-tune | mid -> long | n/a | n/a |" in report.stdout
    text = (runner.run_dir / "exports" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token}"))
    assert len(metrics["diverged"]) == 6
    performance = np.loadtxt(
        runner.run_dir / "exports" / "matrix_performance_dqn_fine-tune.csv", delimiter=","
    )
    assert np.isnan(performance[1, 2]) and np.isfinite(np.delete(performance, 5)).all()
    for figure in ("area_ratio_dqn.png", "curves_dqn.png"):
        assert (runner.run_dir / "figures" / figure).is_file()
    # pairs.csv has a row for every pair that ran and metric, the undefined ones empty with
    # why (they were left out, so a reader could not tell "no estimate" from "not run")
    with (runner.run_dir / "exports" / "pairs.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 9 * 5  # 3 x 3 pairs, 5 metrics, one arm
    mid_long = [r for r in rows if (r["source"], r["target"]) == ("mid", "long")]
    assert len(mid_long) == 5
    assert all(r["estimate"] == r["low"] == r["high"] == r["verdict"] == "" for r in mid_long)
    assert all("no finite seed left in the transfer arm" in r["note"] for r in mid_long)
    short_mid = next(
        r for r in rows if (r["source"], r["target"], r["metric"]) == ("short", "mid", "area_ratio")
    )
    assert float(short_mid["estimate"]) == pytest.approx(
        metrics["variants"]["dqn"]["fine-tune"]["matrices"]["area_ratio"][0][1][0], rel=1e-5
    )
    assert short_mid["verdict"] and "diverged" in short_mid["note"]


def test_a_dry_run_prints_the_study_on_stdout_and_trains_nothing(
    run_ctxrl: Run, tmp_path: Path
) -> None:
    """``--dry-run`` of a DQN transferability study: the study as YAML, nothing trained."""
    study = _write(tmp_path)
    assert_dry_run_prints_the_study(run_ctxrl, ["transfer", "dqn"], study, load_study_config)


def test_a_study_trained_with_other_defaults_is_not_resumed(tmp_path: Path) -> None:
    """The plan hash covers the study file as written; plan.yaml also records what it resolves
    to: each context in full (the features it leaves out at their defaults) and each
    variant's hyperparameters with their defaults. A run directory whose record holds
    another value (what an earlier version's default trained) is refused before anything
    trains, naming the value; one from before the record resumes and gains it."""
    config = StudyConfig.model_validate(
        {**STUDY, "variants": ["dqn", "double"], "output_dir": str(tmp_path)}
    )
    registry = get_host().registry
    StudyRunner(resolve_study(config, registry), registry).prepare()
    (run_dir,) = tmp_path.iterdir()
    plan_file = run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    resolved = yaml.safe_load(plan_file.read_text())["resolved"]  # a copy, kept unchanged
    assert resolved["contexts"]["short"]["length"] == 0.3
    assert resolved["contexts"]["short"]["masscart"] == 1.0  # left out: the default
    hyper = resolved["hyperparameters"]
    assert hyper["dqn"]["hidden"] == [32, 32] and hyper["dqn"]["gamma"] == 0.99
    assert hyper["dqn"]["double"] is False and hyper["double"]["double"] is True

    stored["resolved"]["hyperparameters"]["double"]["gamma"] = 0.98
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(CtxrlError, match=r"hyperparameters\.double\.gamma: 0\.98 there, 0\.99 now"):
        StudyRunner(resolve_study(config, registry), registry).run()
    assert not (run_dir / "arms").exists(), "refused before training"

    del stored["resolved"]  # written before the record: resumes, and records it
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    StudyRunner(resolve_study(config, registry), registry).prepare()
    assert yaml.safe_load(plan_file.read_text())["resolved"] == resolved
