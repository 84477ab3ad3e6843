"""Config validation, overrides and the select / envs commands."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import requires_box2d, requires_ray, requires_sb3

from ctxrl import ConfigError, Context, TransferMatrix
from ctxrl.config import apply_overrides, load_config, resolve_plan
from ctxrl.errors import PluginUnavailable
from ctxrl.plugins import get_host

Run = Callable[..., subprocess.CompletedProcess[str]]


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _plan(*overrides: str):
    return resolve_plan(load_config(None, overrides), get_host().registry)


def test_embedded_default_is_a_small_cartpole_sweep() -> None:
    plan = _plan()
    assert plan.env.name == "CartPole" and plan.grid.features == ("length",)
    assert len(plan.grid) == 20 and plan.algorithm.name == "batched-ppo"
    assert plan.config.strategy.name == "mbtl-gp"
    assert plan.run_dir.name.startswith("CartPole-length-")


def test_overrides_are_parsed_as_yaml() -> None:
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2e-3", "a.c=[1, 2]", "d.e=text"])
    assert data == {"a": {"b": 2e-3, "c": [1, 2]}, "d": {"e": "text"}}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])


def test_plan_hash_ignores_where_and_how_jobs_run() -> None:
    base = _plan()
    assert _plan("executor.workers=1", "output_dir=/tmp/elsewhere").plan_hash == base.plan_hash
    assert _plan("train_steps=1000").plan_hash != base.plan_hash
    # one visible feature named alone or as a list of one trains the same runs
    one = _plan("env_options.visible=length").plan_hash
    assert one == _plan("env_options.visible=[length]").plan_hash != base.plan_hash
    # the seeds in another order are another plan: a select sweep's strategy is seeded by
    # the first, and group checkpoints are named in seed order
    assert _plan("seeds=[1, 0]").plan_hash != _plan("seeds=[0, 1]").plan_hash


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["features={masscartt: {num: 3}}"], "no context feature 'masscartt'"),
        (
            ["features.length.num=0"],
            "features.length.num: Input should be greater than or equal to 1",
        ),
        (["features.length={values: []}"], "grid for 'length' has no values"),
        (["features={}"], "features: name at least one varied feature"),
        (
            ["features.length.high=50"],
            "'length' = 50.0 is outside the allowed range [0.05, 5.0]",
        ),
        (
            ["mode=select", "strategy.name=nope", "strategy.budget=2"],
            "strategy.name: no plugin provides the strategy 'nope'",
        ),
        (["mode=select", "strategy.budget=21"], "K = 21 must be set and at most N = 20"),
        (["strategy.budget=50"], "strategy.budget: K = 50 is more sources than the N = 20"),
        (
            ["transfer={name: distill, options: {mode: dagger}}"],
            "transfer.options: 'distill': the option 'steps' must be given",
        ),
        (
            ["mode=select", "strategy.name=sequential-oracle", "strategy.budget=2"],
            "needs the full matrix",
        ),
        pytest.param(
            ["algorithm.name=sb3-sac"],
            "supports ['continuous'] actions but env 'CartPole' has discrete",
            marks=requires_sb3,
        ),
        (["algorithm.preset=Walker"], "has no preset 'Walker'"),
        (["env=Nope"], "env: no plugin provides the env 'Nope'"),
        pytest.param(
            ["algorithm.name=sb3-ppo", "multitask=true"],
            "the multi-task baseline needs a batched algorithm",
            marks=requires_sb3,
        ),
        (["compare=[random, nope]"], "compare: no plugin provides the strategy 'nope'"),
        (
            ["mode=multitask", "transfer={name: fine-tune, options: {steps: 1024}}"],
            "transfer.name: mode: multitask trains only the multi-task baseline",
        ),
        (["mode=multitask", "curves={every: 1024}"], "curves: mode: multitask records no"),
        (["features.length={num: 1, low: 1, high: 2}"], "num: 1 is one point, at low; high 2.0"),
        (["env_options.visible=[length, length]"], "visible: 'length' is listed twice"),
        (["train_steps=-5"], "train_steps: Input should be greater than 0"),
        (["device=tpu"], "device 'tpu' is not cpu, cuda, cuda:N or auto"),
        (
            ["device=cuda:1", "executor.options={gpus: [0, 1]}"],
            "device: 'cuda:1' names one GPU, but executor.options gives each job a GPU of its own",
        ),
        (
            ["device=cpu", "executor.options={gpus: [0]}"],
            "executor.options.gpus: [0] gives each job a GPU, but device: 'cpu' trains on the CPU",
        ),
        pytest.param(
            ["device=cpu", "executor={name: ray, options: {num_gpus: 0.5}}"],
            "executor.options.num_gpus: 0.5 gives each job a GPU, but device: 'cpu' trains on",
            marks=requires_ray,
        ),
        pytest.param(  # `address: local` starts a cluster here, which would wait forever
            ["device=auto", "executor={name: ray, options: {address: local, num_gpus: 1}}"],
            "executor.options.num_gpus: 1 gives each job a GPU, but torch sees no GPU on this "
            "machine",
            marks=[requires_ray, pytest.mark.skipif(_cuda_available(), reason="a GPU is here")],
        ),
        pytest.param(
            ["device=auto", "executor.options={gpus: [0]}"],
            "executor.options.gpus: [0] gives each job a GPU, but torch sees no GPU on this "
            "machine, where the jobs run (device: 'auto' trains on the CPU here)",
            marks=pytest.mark.skipif(_cuda_available(), reason="a GPU is here"),
        ),
        (["seedz=[1]"], "seedz: no such field; did you mean 'seeds'? (got [1])"),
        (["train_step=100"], "train_step: no such field; did you mean 'train_steps'? (got 100)"),
        (["strategy.budgt=3"], "strategy.budgt: no such field; did you mean 'budget'? (got 3)"),
        (["features.length.nmu=3"], "features.length.nmu: no such field; did you mean 'num'?"),
        (
            ["algorithm.interventions=[{nmae: l2}]"],
            "algorithm.interventions[0].nmae: no such field; did you mean 'name'?",
        ),
        (["curves={evry: 10, episodes: 2}"], "curves.evry: no such field; did you mean 'every'?"),
        (["env_options.foo=1"], "env_options: CartPole takes no option 'foo'"),
        (
            ["algorithm.interventions=[{name: l2, options: {coeff: 1}}]"],
            "algorithm.interventions[0].options: intervention 'l2': no option 'coeff'",
        ),
        (["env_options.visible=[nosuch]"], "env_options: CartPole has no context feature 'nosuch'"),
        # every name and option is checked before anything trains, whatever the mode
        (["strategy.name=mbtl-gpp"], "strategy.name: no plugin provides the strategy 'mbtl-gpp'"),
        (
            ["strategy.options.betta=2"],
            "strategy.options: 'mbtl-gp': no option 'betta' (did you mean 'beta'?); it takes",
        ),
        (
            ["strategy.options.c=abc"],
            "strategy.options: 'mbtl-gp': c must be a number >= 0, got 'abc'",
        ),
        (
            ["strategy.name=sd-mbtl", "strategy.options.min_rows=abc"],
            "strategy.options: 'sd-mbtl': min_rows must be a whole number, got 'abc'",
        ),
        (
            [
                "transfer.name=distill",
                "transfer.options.steps=100",
                "transfer.options.temperature=x",
            ],
            "transfer.options: 'distill': temperature must be a number > 0, got 'x'",
        ),
        (
            ["transfer={name: distill, options: {steps: 100, temperature: .nan}}"],
            "'distill': temperature must be a finite number > 0, got nan",
        ),
        (
            ["transfer={name: distill, options: {steps: 100, mode: kickstart, half_life: 0}}"],
            "'distill': half_life must be a finite number > 0, got 0",
        ),
        (
            ["transfer={name: distill, options: {steps: 100, student: {learning_rat: 0.1}}}"],
            "transfer.options: 'distill': student: batched-ppo has no hyperparameter "
            "'learning_rat'",
        ),
        (
            ["transfer={name: fine-tune, options: {steps: 100, reinit: actor.hed}}"],
            "transfer.options: 'fine-tune': reinit: 'actor.hed' matches no layer; layers: "
            "actor.0, actor.1, actor.head, critic.0",
        ),
        (
            ["transfer.name=plasticity"],
            "transfer.name: 'plasticity' is a study of its own: run `ctxrl plasticity "
            "STUDY.yaml`; a sweep takes distill, fine-tune, zero-shot",
        ),
        (
            ["transfer.name=dqn-transferability"],
            "is a study of its own: run `ctxrl transfer dqn STUDY.yaml`",
        ),
        (
            ["transfer.name=zero-shoot"],
            "transfer.name: no plugin provides the transfer method 'zero-shoot'; a sweep takes "
            "distill, fine-tune, zero-shot",
        ),
        (
            ["transfer={name: distill, options: {steps: 100}}", "executor.shards=2"],
            "transfer.name: 'distill' transfers the sweep's sources together (each target "
            "learns from all of them), and executor.shards: 2 splits them into programs",
        ),
        (
            ["transfer={name: distill, options: {steps: 100}}", "mode=select", "strategy.budget=2"],
            "and mode: select trains them a step at a time",
        ),
        (
            [
                "transfer={name: distill, options: {steps: 100, start: best-teacher, "
                "student: {hidden: 32}}}"
            ],
            "start 'best-teacher' copies a source into the student, whose hidden 32 differs",
        ),
        (
            [
                "transfer={name: distill, options: {steps: 100, start: best-teacher, "
                "weights: uniform}}"
            ],
            "with weights 'uniform' they all weigh the same",
        ),
        (
            ["transfer={name: fine-tune, options: {steps: true}}"],
            "'fine-tune': steps must be a whole number of env steps, got True",
        ),
        (
            ["executor.options.start_methd=fork"],
            "executor.options: 'local' has no option ['start_methd']; it takes gpus,",
        ),
        (
            ["algorithm.params.learning_rate=abc"],
            "algorithm.params: batched-ppo: learning_rate: Input should be a valid number",
        ),
        (["seeds=[-1]"], "seeds[0]: Input should be greater than or equal to 0 (got -1)"),
        (["seeds=[true]"], "seeds[0]: Input should be a valid integer (got True)"),
        (["train_steps=true"], "train_steps: a boolean is not a number (got True)"),
        (["eval_episodes=true"], "eval_episodes: a boolean is not a number (got True)"),
        (
            ["algorithm.params.num_envs=0"],
            "algorithm.params: batched-ppo: num_envs: Input should be greater than or equal to 1",
        ),
        (
            [
                "algorithm.params.num_envs=1",
                "algorithm.params.num_steps=64",
                "algorithm.params.num_minibatches=64",
            ],
            "algorithm.params.num_minibatches: 64 minibatches of the 64 samples of a rollout "
            "leave one",
        ),
        (
            ["algorithm.params.num_minibatches=1000"],
            "algorithm.params.num_minibatches: batched-ppo splits each rollout",
        ),
        (
            ["features.length.low=0.5", "features.length.high=0.5"],
            "grid for 'length' repeats contexts (20 points from 0.5 to 0.5)",
        ),
        (["seeds=0"], "quickstart.yaml with --set seeds=0 is not a valid sweep config"),
        (
            ["env=Pendulum", "features={max_speed: {values: [0.5, 8.0]}}"],
            "features: the grid point {'max_speed': 0.5}: Pendulum: context features need "
            "initial_velocity_max <= max_speed",
        ),
        (["compare=[greedy, nope]"], "compare: no plugin provides the strategy 'nope'"),
        (
            ["algorithm.params.learning_rat=1e-3"],
            "algorithm.params: batched-ppo has no hyperparameter 'learning_rat'",
        ),
        (
            ["algorithm.params.activation=relu6"],
            "batched-ppo: activation: Input should be 'tanh', 'relu' or 'crelu' (got 'relu6')",
        ),
        (
            ["algorithm={name: batched-dqn, params: {learning_starts: 200000}}"],
            "algorithm.params.learning_starts: batched-dqn starts learning after 200000 env steps "
            "per agent, but an agent trains",
        ),
        (
            ["algorithm.params.num_envs=true"],
            "algorithm.params: batched-ppo: num_envs: Value error, a boolean is not a number "
            "(got True)",
        ),
        (
            ["algorithm.params.learning_rate=.inf"],
            "learning_rate: Input should be a finite number",
        ),
        (
            ["algorithm={name: batched-dqn, params: {activation: sigmoid}}"],
            "batched-dqn: activation: Input should be 'tanh', 'relu' or 'crelu' (got 'sigmoid')",
        ),
        pytest.param(
            ["algorithm={name: sb3-ppo, params: {learning_rat: 0.001}}", "curves=null"],
            "algorithm.params: sb3-ppo has no hyperparameter 'learning_rat'",
            marks=requires_sb3,
        ),
        (["context={masscart: -1.0}"], "context.masscart: CartPole: context feature 'masscart'"),
        (["context={massicart: 1.0}"], "context.massicart: CartPole has no context feature"),
        (["features.length.high=50"], "features.length: CartPole: context feature 'length'"),
        (["seeds=[0, 1, 0]"], "seeds: seed 0 is listed twice"),
        (  # Catch rounds its paddle width to whole cells: 10 points on 1..7 repeat an env
            ["env=Catch", "features={paddle_width: {num: 10}}", "algorithm={name: batched-dqn}"],
            "features.paddle_width: Catch: grid for 'paddle_width': its 10 points from 1.0 to "
            "7.0 make one environment twice (1.66667 and 2.33333 both give 2",
        ),
        (["features.length={values: [0.5, 0.5]}"], "features.length.values: 0.5 is listed twice"),
        (
            ["features.length={values: [0.5, 1.0], num: 3, low: 0.1}"],
            "features.length: num, low are ignored when values are given",
        ),
        (
            ["env_options.render_mode=rgb_array"],
            "env_options: ['render_mode'] do not apply to the torch twin of 'CartPole'",
        ),
    ],
)
def test_bad_config_is_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        _plan(*overrides)
    assert message in str(excinfo.value)


def test_a_feature_of_one_point_does_not_make_a_grid_of_two_features() -> None:
    """``num: 1`` (what the grid's own error suggests for a fixed value) keeps the quickstart's
    one-feature comparisons; a second feature of two points does not."""
    plan = _plan("features.masscart={num: 1, low: 1.5}")
    assert plan.grid.shape == (20, 1)
    assert {"greedy", "equidistant"} <= set(plan.config.compare)
    with pytest.raises(ConfigError, match=r"this grid varies 2 \(length, masscart\)"):
        _plan("features.masscart={num: 2, low: 1.0, high: 1.5}")


@pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA")
def test_an_unavailable_device_is_named() -> None:
    with pytest.raises(ConfigError, match="device: 'cuda' is not available"):
        _plan("device=cuda")
    with pytest.raises(ConfigError, match="device: 'cuda:3' is not available"):
        _plan("device=cuda:3")
    assert _plan("device=auto").config.device == "auto"


def test_dry_run_catches_what_only_training_would_find(run_ctxrl: Run) -> None:
    """Names, options and hyperparameters are checked by ``--dry-run``, naming the field."""
    for override, message in [
        ("strategy.name=mbtl-gpp", "strategy.name: no plugin provides the strategy 'mbtl-gpp'"),
        ("algorithm.params.learning_rat=1e-3", "has no hyperparameter 'learning_rat'"),
    ]:
        result = run_ctxrl("sweep", "--dry-run", "--set", override)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_a_study_given_to_sweep_is_sent_to_its_own_command() -> None:
    """A plasticity study is not a sweep config: the error lists its fields and the
    commands (a plugin's, found among the loaded ones) that take a STUDY file."""
    from click.testing import CliRunner

    from ctxrl.cli import cli

    study = Path(__file__).parents[1] / "benchmarks" / "studies" / "plasticity-cartpole.yaml"
    result = CliRunner().invoke(cli, ["sweep", str(study), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "arms: no such field" in result.stderr
    assert f"ctxrl plasticity {study}" in result.stderr
    assert f"ctxrl transfer dqn {study}" in result.stderr
    # a sweep config with a misspelt field gets no such hint
    result = CliRunner().invoke(cli, ["sweep", "--dry-run", "--set", "seedz=1"])
    assert "seedz: no such field" in result.stderr and "its own command" not in result.stderr


def test_dry_run_lists_every_plugin_option_with_its_default() -> None:
    """The options each intervention, the transfer method and the strategy will run with:
    their factories' defaults, the config's own values over them."""
    from click.testing import CliRunner

    from ctxrl.cli import cli

    overrides = [
        "mode=select",
        "strategy.name=mbtl-gp",
        "strategy.options.beta=log",
        "algorithm.interventions=[redo, {name: l2, options: {coef: 0.001}}]",
        "transfer={name: fine-tune, options: {steps: 1000}}",
    ]
    args = ["sweep", "--dry-run", *[f"--set={item}" for item in overrides]]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    comments = result.stdout.split("# what it resolves to")[1]
    resolved = yaml.safe_load("\n".join(line[2:] for line in comments.splitlines()[1:]))
    assert resolved["interventions"][0]["redo"]["every"] == 1000  # a default
    assert resolved["interventions"][1] == {"l2": {"coef": 0.001, "include": "weights"}}
    assert resolved["transfer options"]["fine-tune"]["steps"] == 1000
    assert resolved["transfer options"]["fine-tune"]["reinit"] == []
    assert resolved["strategy options"]["mbtl-gp"]["beta"] == "log"
    assert resolved["strategy options"]["mbtl-gp"]["c"] == 1.0
    # --json: the same plan and the same resolved options as one JSON object
    as_json = CliRunner().invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    planned = json.loads(as_json.stdout)
    assert planned["resolved"] == resolved
    assert planned["config"]["strategy"]["options"] == {"beta": "log"}
    assert planned["plan_hash"].startswith(planned["run_dir"].rsplit("-", 1)[1])


def test_json_commands_answer_a_failure_in_json(tmp_path: Path) -> None:
    """Given --json, a command that fails still prints one JSON object on stdout, the error
    and the exit code, whatever failed: a config ctxrl refuses (2), a usage error click
    refuses (2) (and a store SQLite refuses, 1: the test below); the message stays on stderr.
    Without --json, stdout stays empty."""
    from click.testing import CliRunner

    from ctxrl.cli import cli

    def failure(*args: str) -> tuple[dict[str, object], str]:
        result = CliRunner().invoke(cli, list(args))
        answer = json.loads(result.stdout)
        assert answer["exit_code"] == result.exit_code, result.output
        return answer, result.stderr

    answer, stderr = failure("sweep", "--dry-run", "--set", "seedz=1", "--json")
    assert answer["exit_code"] == 2 and "seedz: no such field" in str(answer["error"])
    assert "seedz: no such field" in stderr
    answer, stderr = failure("select", "--json", "--bogus")  # before the options are read
    assert answer["exit_code"] == 2 and "No such option '--bogus'" in str(answer["error"])
    missing = tmp_path / "missing.csv"
    answer, _ = failure("select", "--matrix", str(missing), "--json")
    assert answer["exit_code"] == 2 and "does not exist" in str(answer["error"])
    answer, _ = failure("report", str(tmp_path), "--json")
    assert answer["exit_code"] == 2 and "not a run directory" in str(answer["error"])
    plain = CliRunner().invoke(cli, ["sweep", "--dry-run", "--set", "seedz=1"])
    assert plain.exit_code == 2 and plain.stdout == ""
    helped = CliRunner().invoke(cli, ["sweep", "--json", "--help"])  # not a failure
    assert helped.exit_code == 0 and not helped.stdout.strip().splitlines()[-1].startswith("{")


def test_a_results_store_the_disk_refuses_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's errors (a full disk under the store) reach the user as a line naming the
    store and what to do, not a traceback (the sweep's own failure stands in here)."""
    from click.testing import CliRunner

    import ctxrl.sweep
    from ctxrl.cli import cli

    def full(*args: object, **kwargs: object) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorname = "SQLITE_FULL"  # as SQLite's own carries it
        raise error

    monkeypatch.setattr(ctxrl.sweep, "run_sweep", full)
    monkeypatch.setattr("ctxrl.cli_sweep.exit_cleanly_on_sigterm", lambda: None)  # this process
    result = CliRunner().invoke(cli, ["sweep", "--set", f"output_dir={tmp_path}"])
    assert result.exit_code == 1, result.output
    printed = " ".join(result.stderr.split())
    assert "the results store (store.sqlite in the run directory): database or disk is full" in (
        printed
    )
    assert "A full disk or a file-size limit is the usual cause" in printed
    assert "Traceback" not in result.output and result.stdout == ""
    as_json = CliRunner().invoke(cli, ["sweep", "--set", f"output_dir={tmp_path}", "--json"])
    answer = json.loads(as_json.stdout)  # the failure as a script reading stdout sees it
    assert as_json.exit_code == answer["exit_code"] == 1
    assert "database or disk is full" in answer["error"]

    def locked(*args: object, **kwargs: object) -> None:  # not a full disk: no such hint
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ctxrl.sweep, "run_sweep", locked)
    result = CliRunner().invoke(cli, ["sweep", "--set", f"output_dir={tmp_path}"])
    assert result.exit_code == 1 and "database is locked" in result.stderr
    assert "full disk" not in result.stderr


def test_a_terminated_command_says_what_is_kept_and_exits_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (turned into ``Terminated`` by ``ctxrl sweep``) ends the command as Ctrl-C does:
    a line that what was stored is kept and how to continue, and status 128 + 15."""
    from click.testing import CliRunner

    import ctxrl.sweep
    from ctxrl.cli import cli
    from ctxrl.errors import Terminated

    def terminated(*args: object, **kwargs: object) -> None:
        raise Terminated(143)

    monkeypatch.setattr(ctxrl.sweep, "run_sweep", terminated)
    monkeypatch.setattr("ctxrl.cli_sweep.exit_cleanly_on_sigterm", lambda: None)  # this process
    result = CliRunner().invoke(cli, ["sweep", "--set", f"output_dir={tmp_path}"])
    assert result.exit_code == 143
    assert "terminated: what was stored so far is kept" in result.stderr


def test_env_options_reach_the_gymnasium_env_and_the_torch_twin() -> None:
    plan = _plan("env_options.visible=[length]")
    assert plan.env.make({"length": 2.0}).observation_space.shape == (5,)
    assert plan.env.make_batched is not None
    twin = plan.env.make_batched(3, contexts={"length": 2.0})
    assert twin.observation_size == 5 and twin.reset().shape == (3, 5)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as excinfo:
        load_config(bad)
    # the syntax error's position is in the file, not in "<unicode string>"
    assert f'in "{bad}", line 2' in str(excinfo.value) and "unicode string" not in str(
        excinfo.value
    )
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("env: CartPole  # M\xfcnchen\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text"):
        load_config(latin)


def test_cli_reports_config_errors_without_traceback(run_ctxrl: Run, tmp_path: Path) -> None:
    result = run_ctxrl("sweep", "--dry-run", "--set", "features.length.high=50")
    assert result.returncode == 2
    assert "error:" in result.stderr and "'length' = 50.0" in result.stderr
    assert "Traceback" not in result.stderr
    ok = run_ctxrl("sweep", "--dry-run", check=True)
    assert "env: CartPole" in ok.stdout
    assert "warning" not in ok.stderr
    assert "100000 steps per model (99840 trained: whole rollouts or iterations)" in " ".join(
        ok.stderr.split()
    )  # batched PPO's whole iterations of 512 steps, rounded down (SB3's, up)
    other = run_ctxrl("sweep", "--dry-run", "--set", "algorithm.preset=Pendulum", check=True)
    assert "algorithm.preset: 'Pendulum' is Pendulum's preset" in " ".join(other.stderr.split())
    # the plan as it will run, which loads back: on two features the strategy becomes mbtl-gp
    config = tmp_path / "two.yaml"
    config.write_text(
        "env: CartPole\nfeatures: {length: {num: 3}, masscart: {num: 3}}\n"
        "algorithm: {name: batched-ppo, preset: CartPole}\ntrain_steps: 1000\n"
    )
    two = run_ctxrl("sweep", str(config), "--dry-run", check=True)
    assert "name: mbtl-gp" in two.stdout and "- greedy" not in two.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(two.stdout)
    assert load_config(printed).strategy.name == "mbtl-gp"
    # and, as comments, the grid values and every hyperparameter the preset resolves to
    assert "#   length: [0.05, " in two.stdout and "#   masscart: [" in two.stdout
    assert "num_minibatches: 4" in two.stdout and "clip_coef: 0.2" in two.stdout


def test_envs_json_lists_features_with_bounds(run_ctxrl: Run) -> None:
    envs = {e["name"]: e for e in json.loads(run_ctxrl("envs", "--json", check=True).stdout)}
    assert {"CartPole", "Pendulum", "MountainCar", "MountainCarContinuous", "Acrobot"} <= set(envs)
    masscart = next(f for f in envs["CartPole"]["features"] if f["name"] == "masscart")
    assert masscart == {
        "name": "masscart",
        "default": 1.0,
        "lower": 0.1,
        "upper": 10.0,
        "scale": "linear",
        "unit": "kg",
        "description": "mass of the cart",
        "integer": False,
    }
    width = next(f for f in envs["Catch"]["features"] if f["name"] == "paddle_width")
    assert width["integer"] is True
    assert envs["CartPole"]["return_bounds"] == [0.0, 500.0]
    assert envs["Pendulum"]["return_bounds"] == [-2200.0, -500.0]
    assert envs["CartPole"]["batched"] is True


def test_select_replays_strategies_on_a_reference_csv(run_ctxrl: Run, tmp_path: Path) -> None:
    n = 12
    x = np.arange(n)
    raw = np.clip(450 - 60 * np.abs(x[:, None] - x[None, :]), 0, 500).astype(float)
    contexts = tuple(Context({"index": float(i)}) for i in range(n))
    path = tmp_path / "cartpole_masscart_0_transfer_result.csv"
    TransferMatrix(contexts, contexts, raw).to_reference_csv(path)
    result = run_ctxrl(
        "select",
        "--matrix",
        str(path),
        "--strategy",
        "sequential-oracle",
        "--strategy",
        "random",
        "--strategy",
        "greedy",
        "--budget",
        "4",
        "--env",
        "CartPole",
        "--json",
        check=True,
    )
    data = json.loads(result.stdout)
    assert data["independent"] == pytest.approx(0.9)
    oracle = data["strategies"]["sequential-oracle"]
    assert len(oracle["mean"]) == 4 and oracle["std"] == [0.0] * 4
    assert np.all(np.diff(oracle["mean"]) >= 0)
    assert np.all(
        np.array(oracle["mean"]) >= np.array(data["strategies"]["random"]["mean"]) - 1e-12
    )
    assert data["strategies"]["random"]["std"][0] > 0  # 100 random orders
    table = run_ctxrl(
        "select",
        "--matrix",
        str(path),
        "--strategy",
        "greedy",
        "-k",
        "3",
        "--bounds",
        "0",
        "500",
        check=True,
    )
    assert "greedy" in table.stdout and "mean" in table.stdout
    too_many = run_ctxrl(
        "select", "--matrix", str(path), "--strategy", "greedy", "-k", "13", "--env", "CartPole"
    )
    assert too_many.returncode == 2 and "K = 13 must be between 1 and N = 12" in too_many.stderr
    no_bounds = run_ctxrl("select", "--matrix", str(path), "--strategy", "greedy", "-k", "2")
    assert no_bounds.returncode == 2 and "--env NAME or --bounds" in no_bounds.stderr
    unknown = run_ctxrl(
        "select", "--matrix", str(path), "--strategy", "nope", "-k", "2", "--env", "CartPole"
    )
    assert unknown.returncode == 2 and "strategy 'nope'" in unknown.stderr


def test_envs_and_plugins_never_truncate_names_users_type() -> None:
    """Piped, at the default 80 columns: every feature, env and plugin name printed whole
    (one row per line); on a narrow terminal the name columns keep their width."""
    from click.testing import CliRunner
    from rich.console import Console

    from ctxrl.cli import cli, envs_tables, plugins_table

    host = get_host()
    features = {f.name for e in host.registry.envs() for f in e.context_space.features}
    provided = {n for p in host.plugins.values() for names in p.provides.values() for n in names}
    for command, names in (("envs", features), ("plugins", provided | set(host.plugins))):
        output = CliRunner().invoke(cli, [command], env={"COLUMNS": "80"}).stdout
        assert "…" not in output, command
        words = set(output.replace(",", " ").replace("│", " ").replace(";", " ").split())
        assert names <= words, (command, sorted(names - words))
    narrow = Console(width=80, force_terminal=True, file=io.StringIO(), color_system=None)
    for table in [*envs_tables(host), plugins_table(host)]:
        narrow.print(table)
    text = narrow.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    assert all(name in text for name in features)


SWEEP_CONFIGS = sorted((Path(__file__).parents[1] / "benchmarks" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=[p.stem for p in SWEEP_CONFIGS])
def test_every_benchmark_sweep_config_resolves_to_a_plan(path: Path) -> None:
    """The sweeps RESULTS.md cites stay runnable as the config schema and plugins change."""
    try:
        plan = resolve_plan(load_config(path), get_host().registry)
    except PluginUnavailable as missing:  # an optional extra (sumo, box2d) not installed
        pytest.skip(str(missing))
    except ConfigError as missing:  # its env or algorithm's plugin is unavailable here
        if "is unavailable:" not in str(missing):
            raise
        pytest.skip(str(missing))
    assert len(plan.grid) >= 2 and plan.config.train_steps > 0


def test_values_a_user_writes_are_read_as_meant(tmp_path: Path) -> None:
    """Signed leading-dot numbers, a single name where a list goes, ``~`` in paths; a key
    given twice and a value that is not YAML are errors naming them."""
    from ctxrl.yaml12 import parse_yaml

    assert parse_yaml("[-.5, +.25, .5]") == [-0.5, 0.25, 0.5]
    # YAML 1.2 numbers: no octal by a leading zero, no base 60, no dates; grouped digits kept
    assert parse_yaml("[010, 1:30, 1:30.5, 2026-12-05, 1_000_000, 0x1F, 0o17, 1e5, -.inf]") == [
        10,
        "1:30",
        "1:30.5",
        "2026-12-05",
        1_000_000,
        31,
        15,
        100000.0,
        float("-inf"),
    ]
    with pytest.raises(ConfigError, match="seeds"):
        load_config(None, ["seeds=[1:30]"])  # text where a seed goes: named, not ninety
    # past int64 (with the offsets added to it) a seed failed after training had started
    with pytest.raises(ConfigError, match=r"seeds\[0\]: Input should be less than 2305843009213"):
        load_config(None, ["seeds=[9223372036854775808]"])
    for method in ("fine-tune", "distill"):
        with pytest.raises(ConfigError, match=f"{method}: seed_offset must be < 2305843009213"):
            get_host().registry.transfer_method(method).factory(steps=100, seed_offset=1e19)
    plan = _plan("env_options.visible=masscart", "output_dir=~/ctxrl-runs")
    assert plan.env.make_batched(1).visible == ("masscart",)
    assert plan.config.output_dir == Path.home() / "ctxrl-runs"
    fine_tune = (
        get_host().registry.transfer_method("fine-tune").factory(steps=100, reinit="actor.head")
    )
    assert fine_tune.reinit == ["actor.head"]
    twice = tmp_path / "twice.yaml"
    twice.write_text("env: CartPole\ntrain_steps: 10\ntrain_steps: 20\n")
    with pytest.raises(ConfigError, match="the key 'train_steps' is given twice"):
        load_config(twice)
    with pytest.raises(ConfigError, match=r"--set 'seeds=\[0, 1': the value is not valid YAML"):
        load_config(None, ["seeds=[0, 1"])


@pytest.mark.parametrize("device", ["cuda:7", "mps", "bogus"])
def test_the_python_api_checks_the_device_too(device: str) -> None:
    """Only the config path checked the device: batched-ppo failed at its first tensor, and
    sb3-ppo trained on the CPU without a word when CUDA was asked for and missing."""
    from ctxrl.plugins import get_host

    registry = get_host().registry
    names = ["batched-ppo"] + (["sb3-ppo"] if "sb3-ppo" in registry.names("algorithm") else [])
    for name in names:
        env = registry.env("CartPole")
        with pytest.raises(ConfigError, match=rf"device: '{device}' is not"):
            algorithm = registry.algorithm(name).factory({}, device=device, env=env)
            algorithm.train(env, env.task(), seed=0, total_steps=512)


def test_a_torch_device_is_a_device_and_a_missing_gpu_is_named_when_training_starts() -> None:
    """Reading what a GPU trained (a study's report rebuilds its algorithm with the study's
    device) works on a CPU-only machine; training there names the device."""
    import torch

    from ctxrl.plugins import get_host

    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device=torch.device("cpu"), env=env)
    algorithm.train(env, env.task(), seed=0, total_steps=512)
    if torch.cuda.is_available():
        return
    on_gpu = registry.algorithm("batched-ppo").factory({}, device="cuda", env=env)  # no error
    with pytest.raises(ConfigError, match=r"device: 'cuda' is not available"):
        on_gpu.train(env, env.task(), seed=0, total_steps=512)


@requires_box2d
def test_a_batched_algorithm_on_an_env_without_a_twin_is_refused_before_training() -> None:
    """It passed --dry-run, then every run failed ("batched-ppo needs a torch-batched twin")."""
    from ctxrl.config import resolve_plan, validate_config

    config = validate_config(
        {
            "env": "LunarLander",
            "features": {"gravity_y": {"num": 2}},
            "algorithm": {"name": "batched-ppo"},
            "train_steps": 1000,
        }
    )
    with pytest.raises(ConfigError, match="'batched-ppo' trains on a torch twin, and env"):
        resolve_plan(config, get_host().registry)


def test_a_grid_too_large_is_refused_before_it_is_built() -> None:
    """A grid of 10^8 points ran out of memory in a dry run (and 10^6 took 9 s and 0.9 GB just
    to validate); the limit names the field, and for a product grid every axis."""
    with pytest.raises(ConfigError, match=r"features.length.num: Input should be less than"):
        load_config(None, ["features.length.num=100000000"])
    with pytest.raises(ConfigError, match=r"1000 \(length\) x 1000 \(masscart\) = 1,000,000"):
        _plan(
            "features.length.num=1000",
            "features.masscart={num: 1000, low: 0.5, high: 2.0}",
        )


def test_a_run_directory_is_read_without_its_training_plugins() -> None:
    """A colleague's run directory trained with a third-party intervention or transfer
    method could not be reported or replayed without that plugin installed (the executor
    was already exempt); a sweep that would train with them still refuses."""
    from ctxrl.config import resolve_plan, validate_config

    data = load_config(None).model_dump(mode="json")
    data["algorithm"]["interventions"] = [{"name": "their-intervention", "options": {}}]
    data["transfer"] = {"name": "their-method", "options": {"steps": 10}}
    config = validate_config(data)
    plan = resolve_plan(config, get_host().registry, training=False)
    assert plan.config.transfer.name == "their-method"
    with pytest.raises(ConfigError, match="their-intervention"):
        resolve_plan(config, get_host().registry)


def test_a_bound_is_shown_rounded_into_its_range() -> None:
    """Acrobot's velocity bounds (4 pi, 9 pi) showed as 125.664 / 282.743, values the
    feature refuses; each shown bound is now one the feature accepts."""
    from ctxrl.cli import bound_text

    space = get_host().registry.env("Acrobot").context_space
    for feature in space.features:
        for bound, upper in ((feature.lower, False), (feature.upper, True)):
            shown = float(bound_text(bound, upper=upper))
            assert feature.lower <= shown <= feature.upper, (feature.name, bound, shown)
            space.validate({feature.name: shown})
    assert bound_text(40 * math.pi, upper=True) == "125.663"
    assert bound_text(-40 * math.pi, upper=False) == "-125.663"
    assert bound_text(0.5, upper=True) == "0.5"


def test_python_dash_m_ctxrl_is_the_ctxrl_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ctxrl", "plugins"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "batched-ppo" in result.stdout


@requires_ray
def test_gpus_of_a_cluster_elsewhere_are_not_checked_here() -> None:
    """A Ray cluster at an address has GPUs this machine may lack; another executor's options
    are its own (``gpus`` is only the local executor's option, refused by Ray by name)."""
    plan = _plan(
        "device=auto", "executor={name: ray, options: {address: 'ray://head:10001', num_gpus: 1}}"
    )
    assert plan.config.executor.options["num_gpus"] == 1
    with pytest.raises(ConfigError, match=r"executor.options: 'ray' has no option \['gpus'\]"):
        _plan("device=cpu", "executor={name: ray, options: {gpus: [0]}}")


def test_an_intervention_may_be_named_alone_as_a_study_arm_is() -> None:
    plan = _plan("algorithm.interventions=[layer-norm, {name: l2, options: {coef: 0.001}}]")
    names = [(e.name, e.options) for e in plan.config.algorithm.interventions]
    assert names == [("layer-norm", {}), ("l2", {"coef": 0.001})]
    spelled_out = _plan(
        "algorithm.interventions=[{name: layer-norm}, {name: l2, options: {coef: 0.001}}]"
    )
    assert plan.plan_hash == spelled_out.plan_hash  # one training, one run directory
