"""Shifting-target plasticity studies: loss of plasticity shown and repaired on the trainers'
own networks and intervention plugins, the study's outputs, resume and bad input."""

from __future__ import annotations

import json
import subprocess
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
from ctxrl_plugins.transfer.plasticity_study import failed_programs, plan_programs
from ctxrl_plugins.transfer.plasticity_targets import (
    TargetsStudyConfig,
    analyse,
    load_targets_config,
    report_targets_study,
    run_dir_of,
    run_targets_study,
    train_program,
)

Run = Callable[..., subprocess.CompletedProcess[str]]

SMALL: dict[str, Any] = {
    "shifting_targets": {
        "tasks": 4,
        "steps_per_task": 30,
        "points": 32,
        "hidden": [8, 8],
        "batch_size": 8,
        "eval_every": 10,
        "window": 2,
    },
    "arms": [
        {"name": "redo", "options": {"every": 20, "tau": 0.5}},
        {"label": "ln", "interventions": [{"name": "layer-norm"}]},
    ],
    "seeds": [0, 1],
}


def _write(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": str(tmp_path / "runs"), **changes}))
    return path


@pytest.mark.long
def test_vanilla_training_loses_plasticity_and_the_remedies_keep_it(tmp_path: Path) -> None:
    """At a high learning rate a ReLU network fits each new set of random targets worse until
    it fits nothing (error 1: the targets' mean) while its units go dormant; continual
    backprop, ReDo and Shrink & Perturb at switches keep fitting (intervals over 5 seeds)."""
    config = TargetsStudyConfig.model_validate(
        {
            "shifting_targets": {"tasks": 20},
            "arms": [
                {
                    "name": "continual-backprop",
                    "options": {"replacement_rate": 1e-3, "maturity": 100},
                },
                "redo",
                {
                    "label": "shrink-perturb-switch",
                    "interventions": [{"name": "shrink-perturb", "options": {"when": "switch"}}],
                },
            ],
            "seeds": [0, 1, 2, 3, 4],
            "output_dir": str(tmp_path),
        }
    )
    run_dir = run_targets_study(config, get_host().registry)
    data = json.loads((run_dir / "metrics.json").read_text())
    none = data["none"]["estimates"]
    assert none["plasticity_lost"]["low"] > 0.3, none["plasticity_lost"]
    assert none["late_error"]["low"] > 0.9  # fits nothing at the end
    dormant = np.asarray(data["none"]["dormant"])
    assert (dormant[:, -1] - dormant[:, 0]).min() > 0.2  # every seed's units went dormant
    for arm in ("continual-backprop", "redo", "shrink-perturb-switch"):
        versus = data[arm]["versus_none"]
        assert versus["plasticity_lost"]["high"] < 0, (arm, versus["plasticity_lost"])
        assert versus["late_error"]["high"] < -0.4, (arm, versus["late_error"])
        assert versus["dormant_end"]["high"] < 0, (arm, versus["dormant_end"])
        assert data[arm]["estimates"]["late_error"]["high"] < 0.6, arm


def test_a_study_writes_its_outputs_resumes_and_is_reported(run_ctxrl: Run, tmp_path: Path) -> None:
    study = _write(tmp_path)
    config = load_targets_config(study)
    labels, programs = plan_programs(config, get_host().registry)
    assert labels == ["none", "redo", "ln"]
    assert [(p.name, list(p.arms)) for p in programs] == [
        ("shared", ["none", "redo"]),
        ("arm-ln", ["ln"]),
    ]
    result = run_ctxrl("plasticity", str(study), check=True)
    assert "# Plasticity study: shifting targets" in result.stdout
    run_dir = run_dir_of(config)
    stored = {p: p.stat().st_mtime_ns for p in (run_dir / "programs").glob("*.safetensors")}
    assert len(stored) == 2
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(data) == {"none", "redo", "ln"}
    for label, arm in data.items():
        assert np.asarray(arm["final_error"]).shape == (2, 4), label
        assert np.asarray(arm["dormant"]).shape == (2, 4), label
        assert np.all(np.asarray(arm["final_error"]) >= 0)
    assert set(data["redo"]["versus_none"]) == set(data["none"]["estimates"])
    assert (run_dir / "figures" / "targets.png").stat().st_size > 1000
    assert (run_dir / "figures" / "targets.svg").stat().st_size > 1000

    again = run_ctxrl("plasticity", str(study), check=True)
    assert "shared:" not in again.stderr, "finished programs are not trained again"
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    # plan.yaml records each arm's options with their defaults: a study file leaves them
    # out, so its hash cannot tell when a default changed, and a resume then is refused
    plan_file = run_dir / "plan.yaml"
    recorded = yaml.safe_load(plan_file.read_text())
    assert recorded["resolved"]["arms"]["redo"] == {
        "0": {"redo": {"every": 20, "tau": 0.5, "optimizer_reset": "moments_and_step"}}
    }
    edited = yaml.safe_load(plan_file.read_text())
    edited["resolved"]["arms"]["redo"]["0"]["redo"]["optimizer_reset"] = "moments"
    plan_file.write_text(yaml.safe_dump(edited, sort_keys=False))
    refused = run_ctxrl("plasticity", str(study))
    said = " ".join(refused.stderr.split())
    assert refused.returncode != 0, said
    assert 'arms.redo.0.redo.optimizer_reset: "moments" there, "moments_and_step" now' in said
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    plan_file.write_text(yaml.safe_dump(recorded, sort_keys=False))
    (run_dir / "summary.md").unlink()
    report = run_ctxrl("report", str(run_dir), check=True)
    assert "# Plasticity study: shifting targets" in report.stdout
    assert (run_dir / "summary.md").is_file()

    # the window only the report reads: another one reports the stored programs anew (here and
    # in `ctxrl report`) and trains nothing
    wider = _write(tmp_path, shifting_targets={**SMALL["shifting_targets"], "window": 1})
    assert run_dir_of(load_targets_config(wider)) == run_dir
    rewindowed = run_ctxrl("plasticity", str(wider), check=True)
    assert "shared:" not in rewindowed.stderr
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert "first/last = mean over the first/last 1 tasks" in rewindowed.stdout
    plan = yaml.safe_load((run_dir / "plan.yaml").read_text())
    assert plan["config"]["shifting_targets"]["window"] == 1
    assert "first/last 1 tasks" in run_ctxrl("report", str(run_dir), check=True).stdout

    # a run directory named by the hash an earlier ctxrl gave the study is found and reused
    earlier = load_targets_config(wider).plan_hash(with_analysis=True)  # the window hashed in
    legacy = run_dir.with_name(f"plasticity-targets-{earlier}")
    run_dir.rename(legacy)
    plan["plan_hash"] = earlier
    (legacy / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert run_dir_of(config) == legacy
    reused = run_ctxrl("plasticity", str(wider), check=True)
    assert "shared:" not in reused.stderr and not run_dir.exists()
    assert yaml.safe_load((legacy / "plan.yaml").read_text())["plan_hash"] == config.plan_hash()

    # a different study beside it still gets a directory of its own
    other = load_targets_config(_write(tmp_path, seeds=[0]))
    assert run_dir_of(other) not in (legacy, run_dir)


def test_an_agent_in_a_batch_of_arms_equals_itself_alone(tmp_path: Path) -> None:
    registry = get_host().registry
    together = TargetsStudyConfig.model_validate({**SMALL, "arms": SMALL["arms"][:1]})
    alone = TargetsStudyConfig.model_validate({**SMALL, "arms": [], "seeds": [1]})
    program_together = plan_programs(together, registry)[1][0]
    program_alone = plan_programs(alone, registry)[1][0]
    a = train_program(together.shifting_targets, program_together, registry)
    b = train_program(alone.shifting_targets, program_alone, registry)
    row = a.agents.index(("none", 1))
    assert np.array_equal(a.errors[row], b.errors[0])
    for name, values in b.metrics.items():
        assert np.array_equal(a.metrics[name][row], values[0], equal_nan=True), name
    # and the arm changed something: ReDo recycles units at tau 0.5
    redo = a.agents.index(("redo", 1))
    assert not np.array_equal(a.errors[redo], a.errors[row])


def test_measures_are_computed_from_the_records() -> None:
    """Hand-built records: errors 0.2 then 0.8, dormant 0.1 then 0.4, per seed."""
    from ctxrl_plugins.transfer.plasticity_targets import TargetsResult

    errors = np.zeros((4, 4, 2))  # 2 arms x 2 seeds, 4 tasks, 2 records
    errors[:, :2, :] = 0.2
    errors[:, 2:, 1] = 0.8
    errors[:, 2:, 0] = 0.9
    errors[2:] -= 0.1  # the arm fits 0.1 better throughout
    dormant = np.tile(np.array([0.1, 0.1, 0.4, 0.4]), (4, 1))
    result = TargetsResult(
        [("none", 0), ("none", 1), ("arm", 0), ("arm", 1)],
        errors,
        {"dormant.probe.0": dormant, "dormant.probe.1": dormant},
    )
    _, estimates, versus = analyse(["none", "arm"], {"shared": result}, window=2)
    none = estimates["none"]
    assert none["plasticity_lost"].estimate == pytest.approx(0.6)
    assert none["late_error"].estimate == pytest.approx(0.8)
    assert none["late_auc"].estimate == pytest.approx(1 - 0.85)
    assert none["dormant_first"].estimate == pytest.approx(0.1)
    assert none["dormant_end"].estimate == pytest.approx(0.4)
    assert versus["arm"]["late_error"].estimate == pytest.approx(-0.1)
    assert versus["arm"]["plasticity_lost"].estimate == pytest.approx(0.0)


def test_a_diverged_seed_is_named_left_out_and_written_as_strict_json(tmp_path: Path) -> None:
    """A seed whose errors blew up (inf) was kept in every measure (its infinite loss of
    plasticity made the arm's mean infinite) and metrics.json held bare NaN / Infinity, which
    strict JSON readers refuse; no field said which seed diverged."""
    from ctxrl_plugins.transfer.plasticity_targets import TargetsResult
    from ctxrl_plugins.transfer.plasticity_targets_report import write_outputs

    errors = np.full((4, 4, 2), 0.5)  # 2 arms x 2 seeds, 4 tasks, 2 records
    errors[3, 2:, :] = np.inf  # ("arm", 1) diverged in its last tasks
    dormant = np.full((4, 4), 0.2)
    result = TargetsResult(
        [("none", 0), ("none", 1), ("arm", 0), ("arm", 1)], errors, {"dormant.probe.0": dormant}
    )
    _, estimates, _ = analyse(["none", "arm"], {"shared": result}, window=2)
    expected = {"plasticity_lost": 0.0, "late_error": 0.5, "dormant_end": 0.2}  # seed 0 alone
    for measure, value in expected.items():
        assert estimates["arm"][measure].n_excluded == 1, measure
        assert estimates["arm"][measure].estimate == pytest.approx(value), measure
    config = load_targets_config(_write(tmp_path, arms=["redo"]))
    write_outputs(config, ["none", "arm"], {"shared": result}, tmp_path)

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert data["arm"]["diverged_seeds"] == [1] and data["none"]["diverged_seeds"] == []
    assert data["arm"]["final_error"][1] == [0.5, 0.5, None, None]
    summary = (tmp_path / "summary.md").read_text()
    assert "left out of every measure: arm seed 1." in summary and "inf" not in summary
    errors[2, 2:, :] = np.nan  # and seed 0 too: the arm has no measure left
    write_outputs(config, ["none", "arm"], {"shared": result}, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| arm | n/a | n/a |" in summary and "nan" not in summary.replace("n/a", "")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": ["no-such-intervention"]}, r"arms\[0\].interventions\[0\].name: .*no-such"),
        ({"arms": [{"name": "redo", "options": {"taux": 1}}]}, r"arms\[0\].*options: .*taux"),
        ({"arms": ["redo", "redo"]}, "labels \\['redo'\\] repeat"),
        ({"seeds": [1, 1]}, "repeat a seed"),
        ({"device": "cuda:99"}, "device: 'cuda:99' is not available"),
        (  # failed its program after the shared one had trained (an env study refused it)
            {"arms": [{"name": "plasticity-injection", "options": {"layers": 5}}]},
            r"arms: 'plasticity-injection': .*layers 5",
        ),
    ],
)
def test_bad_studies_are_refused_before_training(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(CtxrlError, match=message):
        config = load_targets_config(_write(tmp_path, **changes))
        run_targets_study(config, get_host().registry)
    assert not (tmp_path / "runs").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"tasks": 3, "window": 2}, r"shifting_targets.window: .*at least 4 tasks"),
        ({"eval_every": 100}, r"shifting_targets.eval_every: 100"),
        ({"eval_every": 7}, r"shifting_targets.eval_every: 7 does not divide the 30 steps"),
        ({"learning_rat": 0.1}, r"shifting_targets.learning_rat: no such field"),
        # accepted before: a whole study whose summary was all nan, the seed true as 1
        ({"learning_rate": float("inf")}, r"shifting_targets.learning_rate: Input should be a"),
        ({"activation": "gelu"}, r"shifting_targets.activation"),
        # a width of 0 or below failed after the first task with a reshape error
        ({"hidden": [0]}, r"shifting_targets.hidden\[0\]: Input should be greater than or equal"),
        ({"hidden": [8, -2]}, r"shifting_targets.hidden\[1\]: Input should be greater than or"),
    ],
)
def test_bad_task_settings_name_the_file_and_field(
    tmp_path: Path, task: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, shifting_targets={**SMALL["shifting_targets"], **task})
    with pytest.raises(ConfigError, match=message) as error:
        load_targets_config(path)
    assert "study.yaml" in str(error.value)


def test_a_file_mixing_the_two_kinds_of_study_is_named_so(tmp_path: Path) -> None:
    """``shifting_targets`` beside an env study's fields was refused field by field (``env: no
    such field``), which did not say why; it is named as mixing the two kinds."""
    path = _write(tmp_path, env="CartPole", schedule={"kind": "sequence", "every": 512})
    with pytest.raises(ConfigError, match=r"study\.yaml: shifting_targets makes this") as error:
        load_targets_config(path)
    assert "takes no env, schedule" in str(error.value)
    assert "one kind or the other" in str(error.value)


def test_a_failing_arm_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An intervention raising stopped the whole shifting-target study with a traceback. Now
    the arm that raised is recorded as failed in a program of its own, the baseline and the
    arm beside it train again without it (the same numbers as beside it), the summary names
    the failure, and a rerun with the plugin fixed trains only that arm."""
    registry = load_host(extra=[("boom-plugin", BoomPlugin())]).registry
    config = TargetsStudyConfig.model_validate(
        {**SMALL, "arms": [{"name": "boom"}, *SMALL["arms"]], "output_dir": str(tmp_path)}
    )
    monkeypatch.setattr(Boom, "armed", True)
    failed: list[str] = []
    run_dir = run_targets_study(
        config, registry, on_failure=lambda failure: failed.append(failure.describe())
    )
    programs = run_dir / "programs"
    assert failed_programs(run_dir) == ["arm-boom"] and len(failed) == 1
    assert "failed in intervention 'boom' of arm 'boom'" in failed[0]
    assert "(raised in program 'shared', which trained again without it)" in failed[0]
    assert sorted(p.stem for p in programs.glob("*.safetensors")) == [
        "arm-ln",
        "shared-without-boom",
    ]
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(data) == {"none", "redo", "ln"}
    assert set(data["redo"]["versus_none"]) == set(data["none"]["estimates"])
    summary = (run_dir / "summary.md").read_text()
    assert "## Failed programs" in summary and "their arms (boom) have no results" in summary

    # the baseline and redo trained without boom are the agents they were beside it
    monkeypatch.setattr(Boom, "armed", False)
    whole = run_targets_study(config.model_copy(update={"output_dir": tmp_path / "w"}), registry)
    assert (json.loads((whole / "metrics.json").read_text())["redo"]) == data["redo"]

    stored = {p: p.stat().st_mtime_ns for p in programs.glob("*.safetensors")}
    run_targets_study(config, registry)
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert failed_programs(run_dir) == []
    assert "boom" in json.loads((run_dir / "metrics.json").read_text())
    assert "Failed programs" not in (run_dir / "summary.md").read_text()


@pytest.mark.parametrize(
    ("arm", "why"),
    [
        ({"name": "boom", "options": {"error": "ctxrl"}}, "cannot go on after 2 updates"),
        ({"name": "nan-term"}, "its loss term is not finite for agents outside its mask"),
    ],
)
def test_an_arm_failing_with_a_ctxrl_error_or_a_nan_term_is_its_own_failure(
    tmp_path: Path, arm: dict[str, Any], why: str
) -> None:
    """An intervention raising one of ctxrl's own errors (a plugin using ``ctxrl.options``)
    was blamed on no arm: the shared program failed, the baseline's agents with it, at every
    rerun. A loss term of NaN for the agents outside an arm's mask made every agent of the
    shared program diverge (NaN x 0 is NaN), the report blaming ``none``. Both are now the
    arm's own failure, and the baseline and the other arm train without it."""
    registry = load_host(extra=[("boom-plugin", BoomPlugin())]).registry
    config = TargetsStudyConfig.model_validate(
        {**SMALL, "arms": [arm, SMALL["arms"][0]], "output_dir": str(tmp_path)}
    )
    failed: list[str] = []
    run_dir = run_targets_study(
        config, registry, on_failure=lambda failure: failed.append(failure.describe())
    )
    assert failed_programs(run_dir) == [f"arm-{arm['name']}"]
    assert len(failed) == 1 and why in failed[0] and "which trained again without it" in failed[0]
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(data) == {"none", "redo"}
    assert all(np.isfinite(data[label]["final_error"]).all() for label in data)


def test_a_study_whose_every_program_failed_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure outside every intervention (a full disk) fails each program whole: the
    summary names both and blames no intervention, and `ctxrl report` reads it back."""
    from ctxrl_plugins.transfer import plasticity_targets

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plasticity_targets, "train_program", full_disk)
    config = TargetsStudyConfig.model_validate({**SMALL, "output_dir": str(tmp_path)})
    run_dir = run_targets_study(config, get_host().registry)
    assert failed_programs(run_dir) == ["arm-ln", "shared"]
    summary = (run_dir / "summary.md").read_text()
    assert "2 of 2 batched program(s) failed" in summary and " in intervention " not in summary
    assert json.loads((run_dir / "metrics.json").read_text()) == {}
    (run_dir / "summary.md").unlink()
    assert report_targets_study(run_dir, config.model_dump(mode="json"), get_host().registry)
    assert "OSError: [Errno 28] No space left on device" in (run_dir / "summary.md").read_text()


def test_a_study_killed_while_moving_an_arm_out_leaves_no_stale_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed just after the shared program's arm that raised was written to isolated.json,
    the shared program's failure of an earlier run stayed beside programs that no longer
    include it: `failed_programs` named it forever and the command exited 1."""
    from ctxrl_plugins.transfer import plasticity_runner, plasticity_targets

    registry = load_host(extra=[("boom-plugin", BoomPlugin())]).registry
    config = TargetsStudyConfig.model_validate(
        {**SMALL, "arms": [{"name": "boom"}], "output_dir": str(tmp_path)}
    )
    trained = plasticity_targets.train_program

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plasticity_targets, "train_program", full_disk)
    run_dir = run_targets_study(config, registry)
    assert failed_programs(run_dir) == ["shared"]  # blames no arm: the program failed whole

    monkeypatch.setattr(plasticity_targets, "train_program", trained)
    monkeypatch.setattr(Boom, "armed", True)
    write = plasticity_runner.write_text_atomic

    def killed_after_isolated(path: Path, text: str) -> None:
        write(path, text)
        if path.name == "isolated.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(plasticity_runner, "write_text_atomic", killed_after_isolated)
    with pytest.raises(KeyboardInterrupt):
        run_targets_study(config, registry)
    monkeypatch.setattr(plasticity_runner, "write_text_atomic", write)
    monkeypatch.setattr(Boom, "armed", False)  # the plugin fixed
    run_targets_study(config, registry)
    assert failed_programs(run_dir) == []
    assert sorted(p.stem for p in (run_dir / "programs").glob("*.safetensors")) == [
        "arm-boom",
        "shared-without-boom",
    ]


def test_an_arm_that_never_acted_is_said_to_have_trained_as_none(tmp_path: Path) -> None:
    config = TargetsStudyConfig.model_validate(
        {
            **SMALL,
            "arms": [
                {
                    "label": "idle",
                    "interventions": [{"name": "redo", "options": {"every": 100_000}}],
                },
                SMALL["arms"][0],
            ],
            "output_dir": str(tmp_path),
        }
    )
    summary = (run_targets_study(config, get_host().registry) / "summary.md").read_text()
    assert "idle trained exactly as none: every record is equal" in summary
    assert "redo trained exactly" not in summary  # every 20 updates: it acted


def test_a_dry_run_prints_the_study_on_stdout_and_trains_nothing(
    run_ctxrl: Run, tmp_path: Path
) -> None:
    """``--dry-run`` of a shifting-target study: the study as YAML, nothing trained."""
    study = _write(tmp_path)
    assert_dry_run_prints_the_study(run_ctxrl, ["plasticity"], study, load_targets_config)


def test_a_program_says_how_far_it_has_trained(tmp_path: Path) -> None:
    """A program of many target sets said only its name and agents until it finished (38 s of
    silence on a small study); it now reports the target sets trained, about every tenth."""
    config = TargetsStudyConfig.model_validate({**SMALL, "output_dir": str(tmp_path)})
    said: list[str] = []
    run_targets_study(config, get_host().registry, progress=said.append)
    assert said == [
        "shared: 4 agents",
        *(f"shared: {done} of 4 target sets trained" for done in range(1, 5)),
        "arm-ln: 2 agents",
        *(f"arm-ln: {done} of 4 target sets trained" for done in range(1, 5)),
    ]


class _Killed(Exception):
    pass


def test_a_program_killed_between_target_sets_resumes_to_the_same_numbers(
    tmp_path: Path,
) -> None:
    """A shifting-target program was stored only when it finished, so a kill lost all of its
    training. It is checkpointed after every target set (weights, Adam, random streams, the
    data generators, ReDo's and continual backprop's state, the records so far): killed after
    two of four sets and run again, it ends with the numbers of a program never stopped; a
    damaged checkpoint is named and set aside."""
    registry = get_host().registry
    arms = [
        {"name": "redo", "options": {"every": 20, "tau": 0.5}},
        {"name": "continual-backprop", "options": {"replacement_rate": 0.05, "maturity": 5}},
    ]
    config = TargetsStudyConfig.model_validate({**SMALL, "arms": arms})
    program = plan_programs(config, registry)[1][0]
    task = config.shifting_targets
    whole = train_program(task, program, registry)

    def kill_after_two(done: int, tasks: int) -> None:
        if done == 2:
            raise _Killed

    checkpoint = tmp_path / "checkpoint"
    with pytest.raises(_Killed):
        train_program(task, program, registry, checkpoint=checkpoint, on_task=kill_after_two)
    assert checkpoint.with_suffix(".safetensors").is_file()
    resumed_from: list[int] = []
    resumed = train_program(
        task, program, registry, checkpoint=checkpoint, on_task=lambda d, t: resumed_from.append(d)
    )
    assert resumed_from == [3, 4]  # the first two sets were not trained again
    assert np.array_equal(resumed.errors, whole.errors)
    assert set(resumed.metrics) == set(whole.metrics)
    for name, values in whole.metrics.items():
        assert np.array_equal(resumed.metrics[name], values, equal_nan=True), name
    # another program's checkpoint (other seeds) is refused, not continued
    other = plan_programs(config.model_copy(update={"seeds": [5, 6]}), registry)[1][0]
    with pytest.raises(CtxrlError, match="was saved for another program"):
        train_program(task, other, registry, checkpoint=checkpoint)
    # a damaged one, inside a study: named, set aside, and the program trains from the start
    study = TargetsStudyConfig.model_validate(
        {**SMALL, "arms": arms[:1], "output_dir": str(tmp_path / "runs")}
    )
    run_dir = run_dir_of(study)
    name = plan_programs(study, registry)[1][0].name
    with pytest.raises(_Killed):
        train_program(
            study.shifting_targets,
            plan_programs(study, registry)[1][0],
            registry,
            checkpoint=run_dir / "checkpoints" / name,
            on_task=kill_after_two,
        )
    weights = run_dir / "checkpoints" / f"{name}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    said: list[str] = []
    run_targets_study(study, registry, progress=said.append)
    assert any("is damaged" in line and "training it from the start" in line for line in said)
    reference = TargetsStudyConfig.model_validate(
        {**SMALL, "arms": arms[:1], "output_dir": str(tmp_path / "reference")}
    )
    run_targets_study(reference, registry)
    a = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads((run_dir_of(reference) / "metrics.json").read_text())
    assert a == b
    assert not list((run_dir / "checkpoints").glob("*.safetensors"))  # gone once stored
