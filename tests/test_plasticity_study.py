"""The plasticity study (`ctxrl plasticity`) end to end at CI size: programs, resume, outputs,
`ctxrl report`, and its errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from raising_intervention import Boom, BoomPlugin
from study_dry_run import assert_dry_run_prints_the_study

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.plugins import get_host, load_host
from ctxrl_plugins.transfer.plasticity_study import (
    ProgramResult,
    StudyConfig,
    StudyRunner,
    failed_programs,
    file_name,
    load_results,
    load_study_config,
    report_study,
    resolve_study,
    run_study,
)
from ctxrl_plugins.transfer.plasticity_study_report import direction_verdict, gather, write_outputs
from ctxrl_plugins.transfer.studies import open_run_dir

Run = Callable[..., subprocess.CompletedProcess[str]]

STUDY: dict[str, Any] = {
    "env": "CartPole",
    "algorithm": "batched-ppo",
    "params": {
        "num_envs": 2,
        "num_steps": 64,
        "update_epochs": 2,
        "num_minibatches": 2,
        "hidden": 8,
        "activation": "relu",
    },
    "schedule": {"kind": "sequence", "every": 1024, "contexts": [{"length": 0.5}, {"length": 2.0}]},
    "arms": [
        {"name": "redo", "options": {"every": 4, "tau": 0.5}},
        {"label": "inject", "interventions": [{"name": "plasticity-injection"}]},
    ],
    "seeds": [0, 1],
    "total_steps": 4096,
    "curve_every": 256,
    "curve_episodes": 1,
}


def _write(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs"), **changes}))
    return path


def _tiny_study(tmp_path: Path, arms: list[Any], seeds: list[int] | None = None) -> StudyConfig:
    """A study of ``arms`` over 1024 steps with one switch, seed 0 unless ``seeds``."""
    return load_study_config(
        _write(
            tmp_path,
            arms=arms,
            seeds=seeds or [0],
            total_steps=1024,
            schedule={**STUDY["schedule"], "every": 512},
        )
    )


@pytest.mark.long
def test_a_study_trains_its_programs_writes_its_outputs_and_resumes(
    run_ctxrl: Run, tmp_path: Path
) -> None:
    study = _write(tmp_path)
    config = load_study_config(study)
    registry = get_host().registry
    plan = resolve_study(config, registry)
    # redo shares the baseline's program; injection changes the network: a program of its own
    assert [(p.name, list(p.arms)) for p in plan.programs] == [
        ("shared", ["none", "redo"]),
        ("arm-inject", ["inject"]),
    ]

    # killed in the second program: the first is stored, the second resumes from its checkpoint
    # (an interruption, not an error: a program that raises an error is recorded as failed)
    class Killed(BaseException):
        pass

    def kill(label: str, done: int, total: int) -> None:
        if label == "arm-inject" and done >= total // 2:
            raise Killed

    runner = StudyRunner(plan, registry, progress=kill)
    with pytest.raises(Killed):
        runner.run()
    shared = runner.run_dir / "programs" / "shared.safetensors"
    stored_at = shared.stat().st_mtime_ns
    assert not (runner.run_dir / "programs" / "arm-inject.safetensors").exists()

    result = run_ctxrl("plasticity", str(study), check=True)
    assert shared.stat().st_mtime_ns == stored_at, "a finished program is not trained again"
    assert "shared:" not in result.stderr and "arm-inject:" in result.stderr
    assert "# Plasticity study: CartPole, batched-ppo" in result.stdout
    run_dir = runner.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["switches"] == [1024, 2048, 3072]
    assert set(metrics["arms"]) == {"none", "redo", "inject"}
    for label, data in metrics["arms"].items():
        for measure, values in data["per_seed"].items():
            assert len(values) == 2, (label, measure)
        auc = data["estimates"]["post_switch_auc"]
        assert 0.0 <= auc["estimate"] <= 1.0
    assert set(metrics["arms"]["redo"]["versus_none"]) == set(metrics["arms"]["none"]["per_seed"])
    # recycling half the units every 4 updates changes the post-switch curves
    assert metrics["arms"]["redo"]["per_seed"]["post_switch_auc"] != pytest.approx(
        metrics["arms"]["none"]["per_seed"]["post_switch_auc"]
    )
    curves = (run_dir / "curves.csv").read_text().splitlines()
    assert curves[0] == "arm,seed,step,normalised_return"
    assert len(curves) == 1 + 3 * 2 * 17  # arms x seeds x points (0, 256, ..., 4096)
    plasticity = (run_dir / "plasticity.csv").read_text()
    assert "none,0," in plasticity and ",dormant,actor.0," in plasticity
    for figure in ("returns.png", "plasticity.png", "returns.svg", "plasticity.svg"):
        assert (run_dir / "figures" / figure).stat().st_size > 1000
    summary = (run_dir / "summary.md").read_text()
    assert "| inject |" in summary and "Does the baseline lose plasticity?" in summary

    report = run_ctxrl("report", str(run_dir), check=True)
    assert "# Plasticity study: CartPole, batched-ppo" in report.stdout


def test_arms_of_one_program_match_the_same_agents_trained_apart(tmp_path: Path) -> None:
    """The baseline agents of the shared program equal a study with no other arm: arms in one
    batch do not disturb each other."""
    registry = get_host().registry
    small = {**STUDY, "total_steps": 1024, "curve_every": 256, "output_dir": str(tmp_path)}
    small["schedule"] = {**STUDY["schedule"], "every": 512}
    with_arms = StudyConfig.model_validate(
        {**small, "arms": [{"name": "shrink-perturb"}, {"name": "l2"}]}
    )
    alone = StudyConfig.model_validate({**small, "arms": [], "output_dir": str(tmp_path / "b")})
    together = StudyRunner(resolve_study(with_arms, registry), registry).run()["shared"]
    apart = StudyRunner(resolve_study(alone, registry), registry).run()["shared"]
    rows = [i for i, (arm, _) in enumerate(together.agents) if arm == "none"]
    assert np.array_equal(together.curves[rows], apart.curves)
    for name, values in apart.plasticity.items():
        assert np.array_equal(together.plasticity[name][rows], values, equal_nan=True), name


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"arms": ["no-such-intervention"]},
            r"arms\[0\].interventions\[0\].name: .*no-such-intervention",
        ),
        (
            {"arms": [{"name": "redo", "options": {"taux": 1}}]},
            r"arms\[0\].interventions\[0\].options: .*taux",
        ),
        ({"arms": ["redo", {"name": "redo"}]}, "labels \\['redo'\\] repeat"),
        ({"arms": ["none"]}, "labels \\['none'\\] repeat"),
        ({"algorithm": "sb3-ppo"}, "algorithm: Input should be 'batched-ppo' or 'batched-dqn'"),
        ({"env": "Pendulum", "algorithm": "batched-dqn", "params": {}}, "params: .*discrete"),
        ({"env": "NoSuchEnv"}, "env: "),
        (
            {"schedule": {"kind": "sequence", "every": 512, "contexts": [{"length": 99.0}]}},
            "schedule.*length.*99",
        ),
        ({"schedule": {"kind": "sequence", "contexts": [{}]}}, "schedule: .*needs every"),
        ({"params": {"learning_rat": 0.1}}, "no hyperparameter 'learning_rat'"),
        ({"seeds": [1, 1]}, "repeat a seed"),
        # YAML's true ran as seed 1; a seed past int64 failed after the study started
        ({"seeds": [True]}, r"seeds: a number is expected, got \[True\]"),
        ({"seeds": [2**63]}, r"seeds\[0\]: Input should be less than"),
        ({"dormant_tau": float("inf")}, "dormant_tau: Input should be a finite number"),
        ({"preset": "nope"}, "preset: batched-ppo has no preset 'nope'"),
        ({"curve_evry": 512}, "curve_evry: no such field; did you mean 'curve_every'"),
        (  # a nameless row in every table
            {"arms": [{"label": "", "interventions": [{"name": "l2"}]}]},
            r"arms\[0\].ArmEntry.label: String should have at least 1 character",
        ),
        (
            {"arms": [{"name": "redo", "optons": {}}]},
            r"arms\[0\].InterventionEntry.optons: no such field; did you mean 'options'",
        ),
        (  # only the form the arm is written in is reported, not every member of the union
            {"arms": [{"labl": "y", "interventions": [{"name": "l2"}]}]},
            r": arms\[0\].ArmEntry.label: Field required; arms\[0\].ArmEntry.labl: no such field; "
            r"did you mean 'label'\? \(got 'y'\)$",
        ),
        ({"threshold": 195}, "threshold: Input should be less than or equal to 1"),
        (
            {"schedule": {**STUDY["schedule"], "every": 100_000}},
            "schedule: no context switch within total_steps 4096",
        ),
        (  # it said "make schedule.every smaller", which no every could mend
            {"schedule": {**STUDY["schedule"], "contexts": [{"length": 0.5}] * 2}},
            r"schedule: every segment within total_steps 4096 has one and the same context "
            r"\(\[\{'length': 0.5\}, \{'length': 0.5\}\]; seed 0\)",
        ),
        ({"curve_every": 1024}, "curve_every: 1024 env steps leaves fewer than two segments"),
        # switches and curve points fall at iteration ends (128 env steps here): a jumpstart
        # read off the grid was an iteration late, in the new context, with no warning
        (
            {"schedule": {**STUDY["schedule"], "every": 1000}},
            r"schedule.every: 1000 env steps is not a whole number of batched-ppo's iterations "
            r"\(128 env steps per agent",
        ),
        ({"curve_every": 200}, "curve_every: 200 env steps is not a whole number"),
        ({"curve_every": 384}, r"curve_every: 384 env steps does not divide schedule.every"),
        (  # DQN's learning budget, before training (it was refused only when the run began)
            {"algorithm": "batched-dqn", "params": {}},
            "params: learning_starts: batched-dqn starts learning after 10000 env steps",
        ),
        (  # passed --dry-run, then stopped the study after its shared program had trained
            {"arms": ["redo", {"name": "plasticity-injection", "options": {"layers": 50}}]},
            r"arms\[1\].interventions\[0\] \(plasticity-injection\): plasticity-injection: "
            r"layers 50 is more than the actor network's 3 layers \(arm 'plasticity-injection'\)",
        ),
    ],
)
def test_bad_studies_are_refused_before_training(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(CtxrlError, match=message):
        resolve_study(load_study_config(_write(tmp_path, **changes)), get_host().registry)
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_a_study_file_is_read_as_sweep_configs_are(tmp_path: Path) -> None:
    """Study files were read by PyYAML's own rules: a key given twice kept the last (another
    study than the one planned), ``1e-3`` was text and refused as a learning rate, and a
    damaged file was a traceback; an unknown key in an arm named the wrong alternative."""
    path = _write(tmp_path)
    text = path.read_text()
    path.write_text(text + "total_steps: 999999\n")
    with pytest.raises(ConfigError, match="total_steps' is given twice"):
        load_study_config(path)
    path.write_text(text.replace("params:\n", "params:\n  learning_rate: 1e-3\n", 1))
    assert load_study_config(path).params["learning_rate"] == 0.001
    path.write_bytes(b"\xff\xfe" + text.encode())
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_study_config(path)
    with pytest.raises(ConfigError, match=r"arms\[0\].ArmEntry.bogus: no such field"):
        load_study_config(_write(tmp_path, arms=[{"label": "x", "bogus": 1}]))
    from pydantic import ValidationError

    from ctxrl_plugins.transfer.dqn_transferability_plan import ContextEntry

    with pytest.raises(ValidationError, match="a number is expected"):  # in a mapping too
        ContextEntry.model_validate({"name": "a", "context": {"length": True}})


def test_arm_labels_that_differ_in_a_dot_get_programs_of_their_own(tmp_path: Path) -> None:
    """``ns-adam-0.9`` and ``ns-adam-0.5`` (the optimizer's arms: a program each) are stored in
    two files (a dot starts a file's suffix: both were ``arm-ns-adam-0``)."""
    arms = [
        {"label": f"ns-adam-{beta}", "interventions": [{"name": "ns-adam"}]}
        for beta in ("0.9", "0.5")
    ]
    plan = resolve_study(load_study_config(_write(tmp_path, arms=arms)), get_host().registry)
    names = [program.name for program in plan.programs]
    assert names[0] == "shared" and len(set(names)) == 3
    assert all("." not in name and "/" not in name for name in names)
    assert names[1].startswith("arm-ns-adam-0_9-") and names[2].startswith("arm-ns-adam-0_5-")
    assert file_name("redo_2-a") == "redo_2-a"  # a plain label keeps its files


def test_segments_end_before_the_switch_point_measured_in_the_next_context(
    tmp_path: Path,
) -> None:
    """A curve that is 1 in the first context and 0 in the second at every step loses no
    plasticity: the point at a switch step is evaluated after the switch, so it opens the next
    segment (with it in the segment before, each visit of the first context ended on a 0)."""
    config = load_study_config(
        _write(
            tmp_path,
            arms=[],
            total_steps=3840,
            curve_every=256,
            schedule={**STUDY["schedule"], "every": 1024},
        )
    )
    plan = resolve_study(config, get_host().registry)
    steps = np.arange(0, 3841, 256)
    first = np.array(
        [plan.schedules[0].context_at(int(s)).as_dict()["length"] == 0.5 for s in steps]
    )
    curve = np.where(first, 500.0, 0.0)  # CartPole's bounds: normalised 1 and 0
    result = ProgramResult(
        agents=[("none", 0), ("none", 1)],
        curve_steps=steps,
        curves=np.stack([curve, curve]),
        plasticity_steps=steps,
        plasticity={},
        diagnostic_steps=np.array([], dtype=np.int64),
        diagnostics={},
        switches=[1024, 2048, 3072],
    )
    per_seed = gather(plan, {"shared": result}).per_seed["none"]
    np.testing.assert_allclose(per_seed["plasticity_lost"], 0.0)
    np.testing.assert_allclose(per_seed["late_auc"], 0.5)  # the last visits: 1 and 0
    np.testing.assert_allclose(per_seed["post_switch_auc"], 1 / 3)  # segments 0, 1, 0
    # after the switches: never (1024 steps to the next switch), at once (0), never (768 to
    # the end); a missed segment counted its last point's offset (768, 0, 512), one curve
    # interval short, as if reached there
    np.testing.assert_allclose(per_seed["time_to_threshold"], (1024 + 0 + 768) / 3)


def test_a_device_that_is_not_here_is_named_before_training(tmp_path: Path) -> None:
    config = load_study_config(_write(tmp_path, device="cuda:99"))
    with pytest.raises(ConfigError, match="device: 'cuda:99' is not available"):
        run_study(config, get_host().registry)
    assert not (tmp_path / "runs").exists()


def test_a_missing_or_malformed_study_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such study file"):
        load_study_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: a study is a YAML mapping"):
        load_study_config(bad)
    with pytest.raises(ConfigError, match="total_steps"):
        load_study_config(_write(tmp_path, total_steps=0))


@pytest.mark.long
def test_vanilla_ppo_loses_units_across_switches_and_the_remedies_keep_them(
    tmp_path: Path,
) -> None:
    """CartPole pole length 0.5 <-> 2.0 m every 8192 steps, ReLU PPO at a high learning rate,
    5 seeds (about a minute on one core): with no intervention the dormant fraction rises from
    the first switch to the end (0.20 -> 0.36 when measured), and continual backprop, ReDo and
    Shrink & Perturb at switches end with fewer dormant units than no intervention, each
    difference's 95 % interval below 0. (Returns do not show a loss in this setting: pole
    lengths transfer positively; see benchmarks/RESULTS.md.)"""
    from ctxrl.transfer_metrics import bootstrap_estimate, difference_of_means

    config = StudyConfig.model_validate(
        {
            "env": "CartPole",
            "params": {
                "activation": "relu",
                "hidden": 32,
                "learning_rate": 0.005,
                "update_epochs": 8,
                "anneal_lr": False,
            },
            "schedule": {
                "kind": "sequence",
                "every": 8192,
                "contexts": [{"length": 0.5}, {"length": 2.0}],
            },
            "arms": [
                {
                    "name": "continual-backprop",
                    "options": {"replacement_rate": 5e-4, "maturity": 200},
                },
                {"name": "redo", "options": {"every": 160}},
                {"name": "shrink-perturb", "options": {"when": "switch"}},
            ],
            "seeds": [0, 1, 2, 3, 4],
            "total_steps": 65536,
            "curve_every": 4096,
            "curve_episodes": 1,
            "output_dir": str(tmp_path),
        }
    )
    registry = get_host().registry
    plan = resolve_study(config, registry)
    results = StudyRunner(plan, registry).run()
    from ctxrl_plugins.transfer.plasticity_study_report import gather

    tables = gather(plan, results)
    none = tables.per_seed["none"]
    rise = bootstrap_estimate(
        [none["dormant_end"], none["dormant_first_switch"]], difference_of_means
    )
    assert rise.low > 0, f"no intervention: dormant fraction should rise, got {rise}"
    for arm in ("continual-backprop", "redo", "shrink-perturb"):
        fewer = tables.versus[arm]["dormant_end"]
        assert fewer.high < 0, f"{arm}: {fewer}"


def test_the_run_directory_is_named_by_what_trains_not_by_the_threshold(tmp_path: Path) -> None:
    """``threshold`` is read by the analysis alone: a study that differs in it alone has the
    same run directory (its programs are reported anew, not trained again); one that trains
    otherwise, or a run directory that holds another study, does not."""
    registry = get_host().registry
    base = resolve_study(load_study_config(_write(tmp_path)), registry)
    lower = resolve_study(load_study_config(_write(tmp_path, threshold=0.5)), registry)
    longer = resolve_study(load_study_config(_write(tmp_path, total_steps=8192)), registry)
    assert lower.config.plan_hash() == base.config.plan_hash() and lower.run_dir == base.run_dir
    assert longer.config.plan_hash() != base.config.plan_hash()
    open_run_dir(base.run_dir, "plasticity", base.config)
    open_run_dir(lower.run_dir, "plasticity", lower.config)  # plan.yaml now records 0.5
    stored = yaml.safe_load((base.run_dir / "plan.yaml").read_text())
    assert stored["config"]["threshold"] == 0.5
    with pytest.raises(CtxrlError, match="holds a different study"):
        open_run_dir(base.run_dir, "plasticity", longer.config)


def test_a_study_trained_with_other_defaults_is_not_resumed(tmp_path: Path) -> None:
    """The plan hash covers the study file as written; plan.yaml also records what it resolves
    to: the hyperparameters and every arm's intervention options, defaults included. A run
    directory whose record holds another value (what an earlier version's default trained)
    is refused, naming it by arm, position and option; an option on one side only (added
    or dropped since) resumes and stays recorded; a plan.yaml from before the record gains
    it."""
    registry = get_host().registry
    plan = resolve_study(load_study_config(_write(tmp_path)), registry)
    StudyRunner(plan, registry).prepare()
    plan_file = plan.run_dir / "plan.yaml"
    stored = yaml.safe_load(plan_file.read_text())
    resolved = yaml.safe_load(plan_file.read_text())["resolved"]  # a copy, kept unchanged
    hyper = resolved["hyperparameters"]
    assert hyper["hidden"] == 8 and hyper["ent_coef"] == 0.01  # given, and a default
    assert resolved["arms"]["redo"] == {
        "0": {"redo": {"every": 4, "tau": 0.5, "optimizer_reset": "moments_and_step"}}
    }
    injection = resolved["arms"]["inject"]["0"]["plasticity-injection"]
    assert injection["layers"] == 2 and injection["at_switch"] is True  # its defaults

    stored["resolved"]["arms"]["inject"]["0"]["plasticity-injection"]["retired_option"] = 1
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    StudyRunner(resolve_study(plan.config, registry), registry).prepare()
    kept = yaml.safe_load(plan_file.read_text())["resolved"]
    assert kept["arms"]["inject"]["0"]["plasticity-injection"]["retired_option"] == 1

    stored["resolved"]["arms"]["inject"]["0"]["plasticity-injection"]["layers"] = 1
    stored["resolved"]["hyperparameters"]["ent_coef"] = 0.0
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(
        CtxrlError,
        match=r"\(arms\.inject\.0\.plasticity-injection\.layers: 1 there, 2 now; "
        r"hyperparameters\.ent_coef: 0\.0 there, 0\.01 now\)",
    ):
        StudyRunner(resolve_study(plan.config, registry), registry).run()
    assert not (plan.run_dir / "programs").exists(), "refused before training"

    del stored["resolved"]
    plan_file.write_text(yaml.safe_dump(stored, sort_keys=False))
    StudyRunner(resolve_study(plan.config, registry), registry).prepare()
    assert yaml.safe_load(plan_file.read_text())["resolved"] == resolved


def test_a_switch_whose_segment_holds_one_curve_point_is_refused(tmp_path: Path) -> None:
    """A sequence repeating a context merged two segments, so two segments held two curve
    points and the study ran; the switch whose segment held one was left out of the
    jumpstart, post-switch AUC and loss of plasticity without a word."""
    schedule = {
        "kind": "sequence",
        "every": 1024,
        "contexts": [{"length": 0.5}, {"length": 0.5}, {"length": 2.0}],
    }
    config = load_study_config(
        _write(tmp_path, schedule=schedule, total_steps=6144, curve_every=1024)
    )
    with pytest.raises(
        ConfigError, match=r"the segment after the switch at step 2048 \(seed 0\) ends at 3072"
    ):
        resolve_study(config, get_host().registry)


def test_a_short_last_segment_holds_two_points(tmp_path: Path) -> None:
    """The trainer takes a curve point when it ends and every switch is a curve point, so the
    last segment holds two however short it is; one curve_every long (3584) was refused,
    while a longer budget the trainer rounds down to the same steps was accepted."""
    for total in (3584, 3328):  # the last switch at 3072
        config = load_study_config(
            _write(tmp_path, total_steps=total, curve_every=512, seeds=[0], arms=["redo"])
        )
        assert resolve_study(config, get_host().registry).config.total_steps == total
    # 3100 trains 3072 steps (24 iterations of 128): the switch at 3072 is its last point
    short = load_study_config(_write(tmp_path, total_steps=3100, curve_every=512))
    with pytest.raises(ConfigError, match=r"switch at step 3072 \(seed 0\) ends at 3072, 0 env"):
        resolve_study(short, get_host().registry)


def test_a_study_an_earlier_ctxrl_trained_off_the_grid_is_still_reported(tmp_path: Path) -> None:
    """The iteration-grid, budget and context checks refuse new trainings only: a finished
    study's report (``training=False``) reads a config an earlier ctxrl accepted."""
    config = load_study_config(_write(tmp_path, schedule={**STUDY["schedule"], "every": 1000}))
    with pytest.raises(ConfigError, match=r"schedule\.every: 1000 env steps is not a whole"):
        resolve_study(config, get_host().registry)
    plan = resolve_study(config, get_host().registry, training=False)
    assert plan.schedules[0].every == 1000


def test_a_study_killed_before_storing_a_program_resumes_it_from_its_final_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program's checkpoint was deleted before its result was stored: a kill between
    the two retrained the whole program from the start."""

    class Killed(BaseException):
        pass

    def killed(self: Any, program: Any, result: Any) -> None:
        raise Killed

    config = load_study_config(_write(tmp_path, arms=["redo"], seeds=[0]))
    monkeypatch.setattr(StudyRunner, "_store", killed)
    with pytest.raises(Killed):
        run_study(config, get_host().registry)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list((run_dir / "checkpoints").glob("*.safetensors")), "the checkpoint is kept"
    run_study(config, get_host().registry)
    assert not list((run_dir / "checkpoints").glob("*.safetensors"))


def test_a_damaged_stored_program_is_named_by_report_and_trained_again_by_a_rerun(
    tmp_path: Path,
) -> None:
    """A stored program cut short stopped every rerun and report with "a rerun of its sweep
    trains it again", which it never did: the study's rerun sets it aside and trains it again
    (the same numbers), and the report names the study's command."""
    config = _tiny_study(tmp_path, ["redo"])
    run_dir = run_study(config, get_host().registry)
    (stored,) = (run_dir / "programs").glob("*.safetensors")
    whole = stored.read_bytes()
    stored.write_bytes(whole[:3000])
    with pytest.raises(CtxrlError, match=rf"{stored} is damaged .*rerun `ctxrl plasticity`"):
        report_study(run_dir)
    run_study(config, get_host().registry)
    assert stored.read_bytes() == whole
    report_study(run_dir)


def test_a_failing_program_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An intervention raising in the shared program took the baseline, the other arms and
    every later program with it, as a traceback with no summary; later it took the baseline
    and every arm sharing its program. Now the arm that raised is moved into a program of its
    own and recorded as failed there (naming the arm and the intervention), the baseline and
    the arms beside it train again without it, as do the other programs, and a rerun retries
    only the failed arm."""
    registry = load_host(extra=[("boom-plugin", BoomPlugin())]).registry
    config = _tiny_study(tmp_path, [{"name": "boom"}, {"name": "l2"}, {"name": "layer-norm"}])
    monkeypatch.setattr(Boom, "armed", True)
    run_dir = run_study(config, registry)
    programs = run_dir / "programs"
    layer_norm = programs / "arm-layer-norm.safetensors"
    shared = programs / "shared-without-boom.safetensors"
    assert layer_norm.is_file() and shared.is_file()
    assert not (programs / "shared.safetensors").exists()
    assert not (programs / "shared.failed.json").exists()
    assert failed_programs(run_dir) == ["arm-boom"]
    failure = json.loads((programs / "arm-boom.failed.json").read_text())
    assert failure["arms"] == ["boom"] and failure["culprit"] == ["boom", "boom"]
    assert failure["moved_from"] == "shared"
    assert "boom after 2 updates" in failure["error"]
    summary = (run_dir / "summary.md").read_text()
    assert "program 'arm-boom' (arms 'boom') failed in intervention 'boom' of arm 'boom'" in summary
    assert "boom after 2 updates (raised in program 'shared', which trained again without it)" in (
        summary
    )
    assert "| layer-norm |" in summary and "| none |" in summary and "| l2 |" in summary
    assert "| boom |" not in summary
    assert "## Each intervention against no intervention" in summary
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["arms"]) == ["none", "l2", "layer-norm"]
    assert [f["program"] for f in metrics["failed"]] == ["arm-boom"]
    # `ctxrl report` reads the same: the finished programs and the failure
    _, results, failures = load_results(run_dir, registry)
    assert sorted(results) == ["arm-layer-norm", "shared-without-boom"]
    assert [f.program for f in failures] == ["arm-boom"]
    # the baseline and l2 trained without boom are the agents they were beside it
    monkeypatch.setattr(Boom, "armed", False)
    whole = run_study(config.model_copy(update={"output_dir": tmp_path / "whole"}), registry)
    _, together, _ = load_results(whole, registry)
    for label in ("none", "l2"):
        alone, beside = results["shared-without-boom"], together["shared"]
        row_alone = alone.agents.index((label, 0))
        row_beside = beside.agents.index((label, 0))
        np.testing.assert_array_equal(alone.curves[row_alone], beside.curves[row_beside])

    stored_at = {path: path.stat().st_mtime_ns for path in (layer_norm, shared)}
    run_study(config, registry)  # the plugin fixed: the rerun trains `arm-boom` alone
    for path, mtime in stored_at.items():
        assert path.stat().st_mtime_ns == mtime, "a finished program is not retrained"
    assert failed_programs(run_dir) == [] and not (programs / "arm-boom.failed.json").exists()
    summary = (run_dir / "summary.md").read_text()
    assert "Failed programs" not in summary and "| boom |" in summary


def test_a_failing_arm_alone_in_its_program_fails_that_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the baseline beside the arm that raised: the baseline trains again alone; a
    second run with the arm still raising records the same failure and trains nothing else."""
    registry = load_host(extra=[("boom-plugin", BoomPlugin())]).registry
    config = _tiny_study(tmp_path, [{"name": "boom"}])
    monkeypatch.setattr(Boom, "armed", True)
    run_dir = run_study(config, registry)
    programs = run_dir / "programs"
    assert failed_programs(run_dir) == ["arm-boom"]
    baseline = programs / "shared-without-boom.safetensors"
    stored_at = baseline.stat().st_mtime_ns
    run_study(config, registry)
    assert baseline.stat().st_mtime_ns == stored_at
    failure = json.loads((programs / "arm-boom.failed.json").read_text())
    assert failure["moved_from"] is None and failure["culprit"] == ["boom", "boom"]
    assert json.loads((programs / "isolated.json").read_text()) == ["boom"]


def test_a_failure_outside_every_intervention_blames_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while checkpointing was blamed on the last intervention of the program
    (its loop variable was still in the trainer's frame): "failed in intervention
    'layer-norm' of arm 'layer-norm': OSError: No space left on device"."""
    from ctxrl_plugins.training.trainer import BatchedTrainer

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BatchedTrainer, "_save", full_disk)
    config = _tiny_study(tmp_path, [{"name": "layer-norm"}])
    run_dir = run_study(config, get_host().registry)
    for program in ("shared", "arm-layer-norm"):
        failure = json.loads((run_dir / "programs" / f"{program}.failed.json").read_text())
        assert failure["culprit"] is None
        assert failure["error"] == "OSError: [Errno 28] No space left on device"


def test_diverged_seeds_are_left_out_named_and_never_read_as_results(tmp_path: Path) -> None:
    """A seed whose curve went NaN counted as never reaching the threshold: an arm whose every
    seed diverged read "512 [512, 512]" steps to threshold, "0 [0, 0] (no difference)" from
    ``none``, with numpy's warnings and bare NaN in metrics.json. Diverged seeds are left out
    of every metric and named; an arm with no finite seed has NaN estimates with a note."""
    arms = [
        {"label": "half", "interventions": [{"name": "shrink-perturb"}]},
        {"label": "gone", "interventions": [{"name": "shrink-perturb"}]},
    ]
    config = load_study_config(
        _write(tmp_path, arms=arms, total_steps=2048, schedule={**STUDY["schedule"], "every": 512})
    )
    plan = resolve_study(config, get_host().registry)
    steps = np.arange(0, 2049, 256)
    agents = [(label, seed) for label in ("none", "half", "gone") for seed in (0, 1)]
    curves = np.tile(np.linspace(100.0, 200.0, len(steps)), (6, 1))
    # half, seed 0: diverged mid-training, to an infinite return (normalising clips to
    # [0, 1], which read it as a perfect score)
    curves[2, 5:] = np.inf
    curves[4:] = np.nan  # gone: both seeds from the start
    dormant = np.full((6, len(steps)), 0.25)
    dormant[[2, 4, 5]] = np.nan
    result = ProgramResult(
        agents=agents,
        curve_steps=steps,
        curves=curves,
        plasticity_steps=steps,
        plasticity={"dormant.actor.0": dormant},
        diagnostic_steps=np.array([], dtype=np.int64),
        diagnostics={},
        switches=[512, 1024, 1536],
    )
    (tmp_path / "out").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" and the like
        summary = write_outputs(plan, {"shared": result}, tmp_path / "out")
        tables = gather(plan, {"shared": result})
    half = tables.per_seed["half"]
    assert np.isnan(half["time_to_threshold"][0]) and not np.isnan(half["time_to_threshold"][1])
    assert half["post_switch_auc"][1] == pytest.approx(
        tables.per_seed["none"]["post_switch_auc"][1]
    )
    assert tables.missed["half"] == 3  # the finite seed's 3 segments, not the diverged one's
    for measure, estimate in tables.estimates["gone"].items():
        assert np.isnan(estimate.estimate), measure
        assert "diverged: seed(s) 0, 1 of 2" in estimate.note and "no finite seed" in estimate.note
        assert np.isnan(tables.versus["gone"][measure].estimate), measure
    assert "diverged: seed(s) 0 of 2" in tables.estimates["half"]["jumpstart"].note

    def no_nan(token: str) -> None:
        raise AssertionError(f"bare {token} in metrics.json")

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=no_nan)
    assert metrics["diverged"] == [
        {"arm": "half", "seed": 0},
        {"arm": "gone", "seed": 0},
        {"arm": "gone", "seed": 1},
    ]
    assert metrics["arms"]["gone"]["diverged_seeds"] == [0, 1]
    assert metrics["arms"]["gone"]["per_seed"]["time_to_threshold"] == [None, None]
    assert metrics["arms"]["gone"]["estimates"]["time_to_threshold"]["estimate"] is None
    assert metrics["arms"]["half"]["per_seed"]["time_to_threshold"][0] is None
    assert "**half diverged**: seed(s) 0 (1 of 2)" in summary
    assert "**gone diverged**: seed(s) 0, 1 (2 of 2)" in summary and "no finite seed" in summary
    gone_rows = [line for line in summary.splitlines() if line.startswith("| gone |")]
    assert len(gone_rows) == 2 and all(set(row.split("|")[2:-1]) == {" n/a "} for row in gone_rows)


def test_arms_are_compared_with_none_seed_by_seed(tmp_path: Path) -> None:
    """Seed s of every arm follows the same schedule (and, with the same network, starts from
    the same weights), so arm - none is taken seed by seed: a small effect shared by every seed
    is found however far apart the seeds' own levels lie (an unpaired difference of means
    buried it under the seeds' spread), and a seed missing from one side drops its pair."""
    arms = [{"label": "lift", "interventions": [{"name": "shrink-perturb"}]}]
    config = load_study_config(
        _write(
            tmp_path,
            arms=arms,
            seeds=[0, 1, 2],
            total_steps=2048,
            schedule={**STUDY["schedule"], "every": 512},
        )
    )
    plan = resolve_study(config, get_host().registry)
    steps = np.arange(0, 2049, 256)
    levels = np.array([100.0, 250.0, 400.0])  # the seeds' own luck, shared by both arms
    lifted = levels + np.array([5.0, 6.0, 7.0])  # the arm: 5-7 higher on every seed
    agents = [(label, seed) for label in ("none", "lift") for seed in (0, 1, 2)]
    curves = np.repeat(np.concatenate([levels, lifted])[:, None], len(steps), axis=1)
    result = ProgramResult(
        agents=agents,
        curve_steps=steps,
        curves=curves,
        plasticity_steps=steps,
        plasticity={"dormant.actor.0": np.full((6, len(steps)), 0.25)},
        diagnostic_steps=np.array([], dtype=np.int64),
        diagnostics={},
        switches=[512, 1024, 1536],
    )
    tables = gather(plan, {"shared": result})
    versus = tables.versus["lift"]["post_switch_auc"]
    span = plan.env.return_bounds[1] - plan.env.return_bounds[0]
    assert versus.estimate == pytest.approx(6.0 / span)
    assert versus.low > 0 and versus.per_seed == pytest.approx([5 / span, 6 / span, 7 / span])
    assert direction_verdict(versus, +1) == "better"
    # seed 2 of the arm diverged: the pair of seed 2 is left out, and counted
    curves[5, 3:] = np.nan
    tables = gather(plan, {"shared": result})
    versus = tables.versus["lift"]["post_switch_auc"]
    assert versus.n_excluded == 1 and versus.estimate == pytest.approx(5.5 / span)
    # seeds only one side has (a study's arms share its seeds; a caller's own tables need
    # not): no pair, counted
    from ctxrl_plugins.transfer.plasticity_analysis import _paired_difference

    lone = _paired_difference(lifted, levels, [(0, 0), (1, 1)], "", unmatched=2)
    assert lone.n_excluded == 2 and lone.estimate == pytest.approx(5.5)


def test_an_arm_that_never_acted_is_said_to_have_trained_as_none(tmp_path: Path) -> None:
    """ReDo every 1000 updates in a study of a few dozen: its row equalled none's to every
    digit, reported as an ordinary "no difference"."""
    config = _tiny_study(
        tmp_path, [{"name": "redo", "options": {"every": 100_000}}, {"name": "l2"}], seeds=[0, 1]
    )
    summary = (run_study(config, get_host().registry) / "summary.md").read_text()
    assert "redo trained exactly as none: every record is equal" in summary
    assert "l2 trained exactly" not in summary and "l2, " not in summary


def test_the_summary_gives_the_steps_trained(tmp_path: Path) -> None:
    """total_steps 1000 trains 7 iterations of 128 env steps: the summary said 1000."""
    config = load_study_config(
        _write(
            tmp_path,
            arms=[{"name": "l2"}],
            seeds=[0],
            total_steps=1000,
            schedule={**STUDY["schedule"], "every": 512},
        )
    )
    summary = (run_study(config, get_host().registry) / "summary.md").read_text()
    assert "896 env steps per agent (total_steps 1000 in whole iterations)" in summary


def test_a_one_seed_study_says_it_has_no_intervals(tmp_path: Path) -> None:
    """With one seed a difference read "(no difference)" and the baseline "no loss shown: the
    interval does not lie below 0", as if an interval had held 0."""
    config = _tiny_study(tmp_path, [{"name": "l2"}])
    summary = (run_study(config, get_host().registry) / "summary.md").read_text()
    assert "(no interval: one seed says nothing either way)" in summary
    assert "(no interval)" in summary and "(no difference)" not in summary


def test_a_dry_run_prints_the_study_on_stdout_and_trains_nothing(
    run_ctxrl: Run, tmp_path: Path
) -> None:
    """``--dry-run`` of an env study: the study as YAML on stdout, nothing trained."""
    assert_dry_run_prints_the_study(run_ctxrl, ["plasticity"], _write(tmp_path), load_study_config)


def test_a_file_of_another_command_is_named_as_such(tmp_path: Path) -> None:
    """A sweep config or a DQN study given to ``ctxrl plasticity`` (and a plasticity study to
    ``ctxrl transfer dqn``) was a long list of field errors and a 'did you mean' for the
    wrong file; the error now ends by naming the command the file is for."""
    from ctxrl_plugins.transfer import dqn_transferability_plan

    root = Path(__file__).resolve().parents[1]
    for path, command in (
        (root / "ctxrl" / "defaults" / "quickstart.yaml", "ctxrl sweep"),
        (root / "examples" / "studies" / "catch-dqn-transfer.yaml", "ctxrl transfer dqn"),
    ):
        with pytest.raises(ConfigError, match=f"run it with `{command}`\\)$"):
            load_study_config(path)
    plasticity = root / "benchmarks" / "studies" / "plasticity-cartpole.yaml"
    with pytest.raises(ConfigError, match="looks like a plasticity study: run it with"):
        dqn_transferability_plan.load_study_config(plasticity)
    with pytest.raises(ConfigError) as raised:  # its own kind, written wrong: no hint
        load_study_config(_write(tmp_path, seeds="many"))
    assert "looks like" not in str(raised.value)


def test_a_composed_arm_takes_bare_names_as_an_arm_of_one_does() -> None:
    """``interventions: [redo]`` inside a composed arm was refused ("Input should be a valid
    dictionary") where ``arms: [redo]`` and a sweep's ``algorithm.interventions`` take it."""
    bare = StudyConfig.model_validate(
        {**STUDY, "arms": [{"label": "both", "interventions": ["redo", {"name": "l2"}]}]}
    )
    written = StudyConfig.model_validate(
        {
            **STUDY,
            "arms": [{"label": "both", "interventions": [{"name": "redo"}, {"name": "l2"}]}],
        }
    )
    assert bare.arm_entries() == written.arm_entries()
    assert bare.plan_data() == written.plan_data()


def test_time_to_threshold_never_reached_by_either_arm_is_said_so(tmp_path: Path) -> None:
    """Every segment of both arms censored at its length read "0 [0, 0] (no difference)" for
    the time to threshold: both sides were the segments' lengths, which says nothing."""
    config = _tiny_study(tmp_path, [{"name": "l2"}], seeds=[0, 1])
    config = config.model_copy(update={"threshold": 1.0})  # a perfect return: never reached
    summary = (run_study(config, get_host().registry) / "summary.md").read_text()
    _, versus_none = [line for line in summary.splitlines() if line.startswith("| l2 |")]
    assert "n/a (neither reached the threshold)" in versus_none


def test_a_terminated_study_exits_143_saying_what_is_kept(tmp_path: Path) -> None:
    """SIGTERM (a scheduler's) ended a study by the signal itself (status -15, no word of
    what was kept), where a sweep says so and exits 143; now a study does as a sweep."""
    import signal
    import subprocess
    import sys
    import time

    study = tmp_path / "study.yaml"
    long = {**STUDY, "total_steps": 400_000, "output_dir": str(tmp_path / "runs")}
    study.write_text(yaml.safe_dump(long))
    process = subprocess.Popen(
        [sys.executable, "-m", "ctxrl", "plasticity", str(study)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.stderr is not None
    started = time.monotonic()
    for line in process.stderr:  # the plan line: the study is under way
        if "batched program" in line or time.monotonic() - started > 60:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    said = process.stderr.read()
    assert process.wait(timeout=60) == 143, said
    assert "terminated: what was stored so far is kept" in said
