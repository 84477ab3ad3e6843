"""Plugin discovery, isolation, controls and the registry."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import HAS_SB3, REPO, requires_sb3, write_distribution

from ctxrl import (
    ContextFeature,
    ContextSpace,
    DuplicateNameError,
    EnvSpec,
    StrategySpec,
    UnknownNameError,
    hookimpl,
)
from ctxrl.plugins import load_host
from ctxrl.registry import Registry

BUILTINS = {"classic_control", "baseline_strategies", "local_executor"} | (
    {"sb3"} if HAS_SB3 else set()
)
Run = Callable[..., subprocess.CompletedProcess[str]]

TOY_PLUGIN = """
from ctxrl import hookimpl, EnvSpec, ContextSpace, ContextFeature, StrategySpec

class First:
    def propose(self, state):
        return [state.untried()[0]]

@hookimpl
def ctxrl_register_envs(register):
    space = ContextSpace([ContextFeature("speed", 1.0, 0.5, 2.0)], owner="ToyEnv")
    register(EnvSpec("ToyEnv", space, make=lambda context=None, **kw: None,
                     return_bounds=(0.0, 1.0), action_space="discrete"))

@hookimpl
def ctxrl_register_strategies(register):
    register(StrategySpec("first", lambda **options: First()))
"""


def _plugins_json(run: Run, *args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    result = run(*args, "plugins", "--json", env=env, check=True)
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_builtins_are_listed_with_versions_hooks_and_provides(run_ctxrl: Run) -> None:
    plugins = _plugins_json(run_ctxrl)
    assert set(plugins) >= BUILTINS
    for name in BUILTINS:
        info = plugins[name]
        assert info["status"] == "loaded", info
        assert info["distribution"] == "ctxrl" and info["version"] == "0.1.0"
        assert info["hooks"], info
    assert "CartPole" in plugins["classic_control"]["provides"]["env"]
    assert plugins["classic_control"]["hooks"] == ["ctxrl_register_envs"]
    if HAS_SB3:
        assert "sb3-ppo" in plugins["sb3"]["provides"]["algorithm"]
    else:  # an optional extra that is not installed says what to install, and is no failure
        assert plugins["sb3"]["status"] == "unavailable"
        assert "pip install 'ctxrl[sb3]'" in plugins["sb3"]["error"]
    assert "sequential-oracle" in plugins["baseline_strategies"]["provides"]["strategy"]


def test_installed_plugin_appears_and_disappears(run_ctxrl: Run, plugin_site: Path) -> None:
    write_distribution(
        plugin_site, "ctxrl-toy", "1.2.3", "ctxrl_toy", TOY_PLUGIN, {"toy": "ctxrl_toy"}
    )
    plugins = _plugins_json(run_ctxrl)
    assert plugins["toy"]["distribution"] == "ctxrl-toy"
    assert plugins["toy"]["version"] == "1.2.3"
    assert plugins["toy"]["provides"] == {"env": ["ToyEnv"], "strategy": ["first"]}
    envs = json.loads(run_ctxrl("envs", "--json", check=True).stdout)
    toy = next(e for e in envs if e["name"] == "ToyEnv")
    assert toy["features"][0]["name"] == "speed" and toy["provider"] == "toy"
    for path in plugin_site.iterdir():  # uninstall
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    assert "toy" not in _plugins_json(run_ctxrl)


def test_broken_plugin_is_reported_and_the_rest_loads(run_ctxrl: Run, plugin_site: Path) -> None:
    write_distribution(
        plugin_site,
        "ctxrl-broken",
        "0.1",
        "ctxrl_broken",
        "raise RuntimeError('boom at import')\n",
        {"broken": "ctxrl_broken"},
    )
    plugins = _plugins_json(run_ctxrl)
    assert plugins["broken"]["status"] == "failed"
    assert "RuntimeError: boom at import" in plugins["broken"]["error"]
    assert plugins["broken"]["distribution"] == "ctxrl-broken"
    assert plugins["broken"]["entry_point"] == "ctxrl_broken"
    assert all(plugins[name]["status"] == "loaded" for name in BUILTINS)
    table = run_ctxrl("envs", check=True)
    assert "CartPole" in table.stdout and "boom at import" in table.stderr


def test_autoload_off_loads_only_the_allow_list(run_ctxrl: Run) -> None:
    plugins = _plugins_json(
        run_ctxrl, env={"CTXRL_DISABLE_PLUGIN_AUTOLOAD": "1", "CTXRL_PLUGINS": "classic_control"}
    )
    assert plugins["classic_control"]["status"] == "loaded"
    assert plugins["baseline_strategies"]["status"] == "not-allowed"
    nothing = _plugins_json(run_ctxrl, env={"CTXRL_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert {p["status"] for p in nothing.values()} == {"not-allowed"}
    allow_only = _plugins_json(
        run_ctxrl, env={"CTXRL_PLUGINS": "baseline_strategies,local_executor"}
    )
    loaded = {n for n, p in allow_only.items() if p["status"] == "loaded"}
    assert loaded == {"baseline_strategies", "local_executor"}


def test_block_by_flag_and_variable(run_ctxrl: Run) -> None:
    plugins = _plugins_json(run_ctxrl, "--block", "baseline_strategies")
    assert plugins["baseline_strategies"]["status"] == "blocked"
    plugins = _plugins_json(run_ctxrl, env={"CTXRL_BLOCK_PLUGINS": "classic_control"})
    assert plugins["classic_control"]["status"] == "blocked"
    result = run_ctxrl("--block", "classic_control", "sweep", "--dry-run")
    assert result.returncode == 2 and "no plugin provides the env 'CartPole'" in result.stderr
    listed = run_ctxrl("--block", "plasticity_study", "--help", check=True).stdout
    assert "  plasticity " not in listed and "  sweep " in listed  # its command is not listed
    assert "  plasticity " in run_ctxrl("--help", check=True).stdout


def test_a_block_or_allow_list_naming_no_plugin_is_said(run_ctxrl: Run) -> None:
    """A typo in ``--block`` or ``CTXRL_PLUGINS`` blocks or allows nothing: a warning names it
    (and the plugins there are); names that match say nothing."""
    typo = run_ctxrl("--block", "clasic_control", "plugins", check=True)
    assert "--block / CTXRL_BLOCK_PLUGINS names 'clasic_control', which no plugin" in typo.stderr
    assert "classic_control" in typo.stderr.split("the plugins:")[1]
    allowed = run_ctxrl("--no-autoload", "plugins", check=True, env={"CTXRL_PLUGINS": "batchd"})
    assert "CTXRL_PLUGINS names 'batchd'" in allowed.stderr
    matched = run_ctxrl("--block", "Classic-Control", "plugins", check=True)
    assert "names" not in matched.stderr


def test_one_process_invoking_the_cli_again_starts_from_a_clean_slate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The module-level ``cli`` outlives each invocation: a plugin blocked in one invocation
    is loaded in the next, its commands come back and go again, and the block list does not
    stay in the environment."""
    from click.testing import CliRunner

    from ctxrl.cli import cli
    from ctxrl.plugins import BLOCK_ENV

    monkeypatch.delenv(BLOCK_ENV, raising=False)
    runner = CliRunner()
    for block, shown in ((False, True), (True, False), (False, True)):
        args = ["--block", "plasticity_study"] if block else []
        listed = runner.invoke(cli, [*args, "--help"], catch_exceptions=False).output
        assert ("  plasticity " in listed) is shown, listed
        assert BLOCK_ENV not in os.environ
        listing = runner.invoke(cli, [*args, "plugins", "--json"], catch_exceptions=False)
        plugins = {p["name"]: p for p in json.loads(listing.stdout)}
        assert (plugins["plasticity_study"]["status"] == "blocked") is block
        assert BLOCK_ENV not in os.environ


class _DuplicateCartPole:
    @hookimpl
    def ctxrl_register_envs(self, register):
        space = ContextSpace([ContextFeature("x", 0.0, -1.0, 1.0)])
        register(
            EnvSpec("CartPole", space, make=print, return_bounds=(0, 1), action_space="discrete")
        )


def test_duplicate_names_are_an_error_naming_both_providers() -> None:
    host = load_host(extra=[("my-cartpole", _DuplicateCartPole())])
    info = host.plugins["my-cartpole"]
    assert info.status == "failed"
    assert "'CartPole'" in info.error and "'classic_control'" in info.error
    assert "'my-cartpole'" in info.error
    assert host.registry.provider("env", "CartPole") == "classic_control"
    registry = Registry()
    registry.add("strategy", StrategySpec("s", dict), "a")
    with pytest.raises(DuplicateNameError, match="both plugin 'a' and plugin 'b'"):
        registry.add("strategy", StrategySpec("s", dict), "b")


def test_a_contract_of_a_name_two_plugins_register_fails_naming_both() -> None:
    """The refused plugin may be the one under test: its contract must not pass on the other
    plugin's env."""
    from ctxrl.plugins import using_host
    from ctxrl.testing.plugin import unclashed

    class Twice:
        @hookimpl
        def ctxrl_register_strategies(self, register):
            register(StrategySpec("twice", dict))
            register(StrategySpec("twice", dict))

    host = load_host(extra=[("twice", Twice())])
    assert "plugin 'twice' registers the strategy 'twice' twice" in host.plugins["twice"].error
    assert host.registry.clashes == []  # no other plugin's strategy to test instead
    with using_host(load_host(extra=[("my-cartpole", _DuplicateCartPole())])):
        with pytest.raises(pytest.fail.Exception, match="both plugin 'classic_control' and "):
            unclashed("env", "CartPole")  # what every contract's spec fixture asks first
        assert unclashed("env", "Pendulum") == "Pendulum"


def test_every_contract_module_shows_the_values_its_asserts_compared(tmp_path: Path) -> None:
    """pytest rewrites the asserts of the modules ctxrl.testing registers (an editable install
    lists no module files for pytest to find): a contract module left out failed with a bare
    AssertionError. Checked in a plugin author's pytest run, outside this repository's config."""
    (tmp_path / "test_rewritten.py").write_text(
        textwrap.dedent(
            """
            import importlib, pathlib, pkgutil
            import ctxrl.testing

            def test_contract_modules_are_rewritten():
                for module in pkgutil.iter_modules(ctxrl.testing.__path__):
                    path = pathlib.Path(ctxrl.testing.__path__[0], module.name + ".py")
                    if "    assert " in path.read_text():
                        loaded = importlib.import_module("ctxrl.testing." + module.name)
                        assert "@py_builtins" in vars(loaded), module.name
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_rewritten.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]


class _HalfBroken:
    """Registers a strategy, then fails in another hook: everything it registered is undone."""

    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("half", dict))

    @hookimpl
    def ctxrl_register_envs(self, register):
        raise ValueError("cannot build my env")


def test_a_plugin_failing_in_registration_is_rolled_back() -> None:
    host = load_host(extra=[("half-broken", _HalfBroken())])
    info = host.plugins["half-broken"]
    assert info.status == "failed" and "ValueError: cannot build my env" in info.error
    assert "half" not in host.registry.names("strategy")
    assert host.registry.names("env")  # the rest still loaded


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq=True

    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("unhashable", dict))


class _MisspelledHook:
    @hookimpl
    def ctxrl_register_env(self, register):  # ctxrl_register_envs
        raise AssertionError("never called")


class _ReplacesACommand:
    @hookimpl
    def ctxrl_register_commands(self, cli):
        cli.add_command(click.Command("plugins", callback=lambda: None))


class _AddsToAGroupThenFails:
    @hookimpl
    def ctxrl_register_commands(self, cli):
        cli.commands["transfer"].add_command(click.Command("half", callback=lambda: None))
        raise RuntimeError("boom")


def test_a_plugin_object_the_host_cannot_keep_fails_alone() -> None:
    """An unhashable object, a misspelled hook, a name already in use, a replaced command and
    a failure after adding a sub-command fail that plugin only; the rest is untouched, and
    registering twice changes nothing."""
    from ctxrl.cli import cli

    host = load_host(
        extra=[
            ("unhashable", _Unhashable()),
            ("typo", _MisspelledHook()),
            ("catch", _MisspelledHook()),
            ("replaces", _ReplacesACommand()),
            ("adds-then-fails", _AddsToAGroupThenFails()),
        ]
    )
    assert "is an unhashable _Unhashable object" in host.plugins["unhashable"].error
    assert "unknown hook(s) ['ctxrl_register_env']" in host.plugins["typo"].error
    with pytest.raises(UnknownNameError, match=r"the env 'Spring'.*plugin 'typo' failed"):
        host.registry.env("Spring")  # what the author of a failed plugin looks up
    assert host.plugins["catch"].status == "loaded" and "Catch" in host.registry.names("env")
    assert "already used" in host.plugins["catch (added)"].error
    assert {"CartPole", "Catch"} <= set(host.registry.names("env"))
    before = {p.name for p in host.failed()}
    host.register_all()
    assert {p.name for p in host.failed()} == before
    listing = cli.commands["plugins"]
    host.register_commands(cli)
    assert "replaces the command(s) ['cli plugins']" in host.plugins["replaces"].error
    assert "RuntimeError: boom" in host.plugins["adds-then-fails"].error
    assert cli.commands["plugins"] is listing and "half" not in cli.commands["transfer"].commands


def test_blocking_a_distribution_ignores_how_its_name_is_spelled() -> None:
    host = load_host(block=["Baseline-Strategies"])
    assert host.plugins["baseline_strategies"].status == "blocked"


def test_register_checks_the_type_and_unknown_names_list_alternatives() -> None:
    class WrongType:
        @hookimpl
        def ctxrl_register_envs(self, register):
            register(StrategySpec("oops", dict))

    host = load_host(extra=[("wrong", WrongType())])
    assert "registered a StrategySpec as an env" in host.plugins["wrong"].error
    with pytest.raises(UnknownNameError, match=r"no plugin provides the strategy 'nope'.*random"):
        host.registry.strategy("nope")
    # a misspelling is answered with the name meant and the plugins that failed, without
    # those missing an optional dependency
    with pytest.raises(UnknownNameError, match=r"did you mean 'CartPole'\?; plugin 'wrong' fail"):
        host.registry.env("Cartpole")
    host.registry.unavailable.append(("box9000", "pip install box9000"))
    with pytest.raises(UnknownNameError) as unknown:
        host.registry.env("Cartpole")
    assert "box9000" not in str(unknown.value)
    with pytest.raises(UnknownNameError, match="box9000"):
        host.registry.env("SomethingElse")

    class NoContext:
        @hookimpl
        def ctxrl_register_envs(self, register):
            register(EnvSpec("Bare", ContextSpace([]), dict, (0.0, 1.0), "discrete"))

    host = load_host(extra=[("bare", NoContext())])
    assert "registered the env 'Bare' without context features" in host.plugins["bare"].error


def test_hookimpl_with_unknown_argument_is_rejected() -> None:
    class BadSignature:
        @hookimpl
        def ctxrl_register_envs(self, register, extra):
            pass

    host = load_host(extra=[("bad-signature", BadSignature())])
    assert host.plugins["bad-signature"].status == "failed"
    assert "extra" in host.plugins["bad-signature"].error


def test_every_hook_is_documented() -> None:
    from ctxrl import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("ctxrl_")]
    assert len(names) == 10
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_plugin_listing_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from ctxrl.plugins import load_host; load_host();"
        "print(sorted(m for m in ('torch', 'stable_baselines3', 'gpytorch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


def test_plugin_template_installed_with_pip_is_discovered(
    run_ctxrl: Run, plugin_site: Path, tmp_path: Path
) -> None:
    """The template distribution, built and installed by pip, appears; removed, it is gone.
    Built from a copy, as an author makes one (setuptools builds in the source folder)."""
    template = tmp_path / "plugin-template"
    shutil.copytree(
        REPO / "examples" / "plugin-template",
        template,
        ignore=shutil.ignore_patterns("build", "*.egg-info"),
    )
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(plugin_site),
            str(template),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    plugins = _plugins_json(run_ctxrl)
    assert plugins["template"]["distribution"] == "ctxrl-template"
    assert plugins["template"]["provides"] == {
        "env": ["Spring"],
        "strategy": ["farthest-first"],
        "intervention": ["weight-clip"],
        "transfer_method": ["scratch"],
    }
    envs = json.loads(run_ctxrl("envs", "--json", check=True).stdout)
    assert any(e["name"] == "Spring" for e in envs)
    shutil.rmtree(plugin_site)  # uninstall: the distribution is gone from the path
    assert "template" not in _plugins_json(run_ctxrl)
    envs = json.loads(run_ctxrl("envs", "--json", check=True).stdout)
    assert not any(e["name"] == "Spring" for e in envs)


BROKEN_COMMANDS = """
import click
from ctxrl import hookimpl, StrategySpec

@hookimpl
def ctxrl_register_strategies(register):
    register(StrategySpec("half-commands", dict))

@hookimpl
def ctxrl_register_commands(cli):
    cli.add_command(click.Command("half", callback=lambda: print("half")))
    raise RuntimeError("no command for you")
"""

GOOD_COMMANDS = """
import click
from ctxrl import hookimpl

@hookimpl
def ctxrl_register_commands(cli):
    cli.add_command(click.Command("hello", callback=lambda: print("hello from a plugin")))
"""


def test_a_plugin_failing_to_add_commands_is_isolated(run_ctxrl: Run, plugin_site: Path) -> None:
    """The plugin is failed and rolled back (its strategy and its half-added command); every
    other command, a plugin's included, still works."""
    write_distribution(
        plugin_site,
        "ctxrl-bad-cmd",
        "0.1",
        "ctxrl_bad_cmd",
        BROKEN_COMMANDS,
        {"bad": "ctxrl_bad_cmd"},
    )
    write_distribution(
        plugin_site, "ctxrl-hello", "0.1", "ctxrl_hello", GOOD_COMMANDS, {"hello": "ctxrl_hello"}
    )
    envs = run_ctxrl("envs")
    assert envs.returncode == 0, envs.stderr
    assert "CartPole" in envs.stdout and "no command for you" in envs.stderr
    plugins = _plugins_json(run_ctxrl)
    assert plugins["bad"]["status"] == "failed" and plugins["bad"]["provides"] == {}
    assert "ctxrl_register_commands: RuntimeError: no command for you" in plugins["bad"]["error"]
    assert plugins["hello"]["status"] == "loaded"
    assert run_ctxrl("hello", check=True).stdout == "hello from a plugin\n"
    assert run_ctxrl("half").returncode == 2  # no such command
    assert "half-commands" not in run_ctxrl("plugins", check=True).stdout


class _Logger:
    def __init__(self) -> None:
        self.started: list[Path] = []

    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("logged", dict))

    @hookimpl
    def ctxrl_register_commands(self, cli):
        cli.add_command(click.Command("logs", callback=print))

    @hookimpl
    def ctxrl_sweep_start(self, run_dir):
        self.started.append(run_dir)


class _RaisingLogger:
    @hookimpl
    def ctxrl_sweep_start(self, plan, run_dir):
        raise OSError("disk full")


def test_every_hook_call_is_traced(
    run_ctxrl: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CTXRL_TRACE_PLUGINS=1 traces registration, command and lifecycle hooks, naming the
    plugin called; isolation is unchanged (a raising logger is reported, the others run)."""
    result = run_ctxrl("envs", "--json", env={"CTXRL_TRACE_PLUGINS": "1"}, check=True)
    assert "ctxrl_register_envs (classic_control)" in result.stderr
    assert "ctxrl_register_strategies (baseline_strategies)" in result.stderr
    monkeypatch.setenv("CTXRL_TRACE_PLUGINS", "1")
    logger = _Logger()
    host = load_host(extra=[("logger", logger), ("raising", _RaisingLogger())])
    assert "ctxrl_register_strategies (logger)" in capsys.readouterr().err
    group = click.Group()
    host.register_commands(group)
    assert set(group.commands) == {"logs", "plasticity"}  # the built-in study adds its own
    assert "ctxrl_register_commands (logger)" in capsys.readouterr().err
    errors = host.notify("ctxrl_sweep_start", plan={}, run_dir=Path("run"))
    assert logger.started == [Path("run")] and len(errors) == 1 and "disk full" in errors[0]
    trace = capsys.readouterr().err
    assert "ctxrl_sweep_start (logger)" in trace and "ctxrl_sweep_start (raising)" in trace
    assert "OSError: disk full" in trace
    assert host.plugins["raising"].status == "loaded"  # lifecycle errors are never fatal


class _ExitsInRegistration:
    @hookimpl
    def ctxrl_register_envs(self, register):
        sys.exit("optional dependency foo missing: pip install foo")


class _ExitsInCommandsAndLifecycle:
    @hookimpl
    def ctxrl_register_commands(self, cli):
        sys.exit("no commands today")

    @hookimpl
    def ctxrl_sweep_start(self, plan, run_dir):
        sys.exit(3)


class _Terminated:
    @hookimpl
    def ctxrl_sweep_start(self, plan, run_dir):
        from ctxrl.errors import Terminated

        raise Terminated(143)  # SIGTERM arrived while the hook ran


def test_a_plugin_calling_sys_exit_in_a_hook_fails_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``sys.exit`` in a hook (an author's habit for a missing dependency) stopped the host
    (``ctxrl plugins`` printed nothing and exited 1); it is the plugin's failure, as at import.
    SIGTERM, turned into :class:`~ctxrl.errors.Terminated` by ``ctxrl sweep``, still ends
    the command."""
    from ctxrl.errors import Terminated

    logger = _Logger()
    host = load_host(
        extra=[
            ("exits", _ExitsInRegistration()),
            ("exits-later", _ExitsInCommandsAndLifecycle()),
            ("logger", logger),
        ]
    )
    assert host.plugins["exits"].status == "failed"
    assert "SystemExit: optional dependency foo missing" in host.plugins["exits"].error
    assert "CartPole" in host.registry.names("env")  # the rest still loaded
    group = click.Group()
    host.register_commands(group)
    assert "ctxrl_register_commands: SystemExit: no commands today" in (
        host.plugins["exits-later"].error
    )
    assert "logs" in group.commands and host.plugins["logger"].status == "loaded"
    errors = host.notify("ctxrl_sweep_start", plan={}, run_dir=Path("run"))
    assert errors == [] and logger.started == [Path("run")]  # failed plugins are not called
    kept = load_host(extra=[("exits-later", _ExitsInCommandsAndLifecycle()), ("logger", logger)])
    errors = kept.notify("ctxrl_sweep_start", plan={}, run_dir=Path("again"))
    assert len(errors) == 1 and "SystemExit: 3" in errors[0]
    assert logger.started[-1] == Path("again")
    capsys.readouterr()
    stopping = load_host(extra=[("terminated", _Terminated())])
    with pytest.raises(Terminated):
        stopping.notify("ctxrl_sweep_start", plan={}, run_dir=Path("run"))


@requires_sb3
def test_a_sweep_finds_the_plugins_of_the_host_it_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run in this process, a sweep's jobs look plugins up in the host passed to
    ``run_sweep`` (an env from a plugin object added in a script), not in a new one."""
    from ctxrl.config import resolve_plan, validate_config
    from ctxrl.sweep import run_sweep

    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin-template" / "src"))
    from ctxrl_template import plugin as template

    class Inline:
        @hookimpl
        def ctxrl_register_envs(self, register):
            spec = next(iter(_registered(template.ctxrl_register_envs)))
            register(dataclasses.replace(spec, name="InlineSpring"))

    host = load_host(extra=[("inline-spring", Inline())])
    config = {
        "env": "InlineSpring",
        "features": {"stiffness": {"values": [0.5, 5.0]}},
        "algorithm": {
            "name": "sb3-ppo",
            "params": {"n_steps": 32, "batch_size": 32, "n_epochs": 1},
        },
        "executor": {"name": "inline"},
        "train_steps": 64,
        "eval_episodes": 1,
        "compare": ["random"],
        "output_dir": str(tmp_path),
    }
    outcome = run_sweep(resolve_plan(validate_config(config), host.registry), host=host)
    assert outcome.trained == 2 and not outcome.failed


def _registered(hook: Callable[..., None]) -> list[Any]:
    specs: list[Any] = []
    hook(register=specs.append)
    return specs


def test_a_blocked_distribution_that_reuses_a_name_is_blocked_not_a_clash(
    run_ctxrl: Run, plugin_site: Path
) -> None:
    """Blocking (by its distribution name, spelled any way) the plugin that reuses a loaded
    plugin's entry-point name, or one that exits at import, leaves the loaded one as it is."""
    write_distribution(plugin_site, "my-sb3", "1.0", "my_sb3", "", {"sb3": "my_sb3"})
    source = "raise SystemExit('needs libfoo')\n"
    write_distribution(plugin_site, "exiter", "1.0", "exiter_mod", source, {"exiter": "exiter_mod"})
    listed = run_ctxrl("--block", "My_SB3", "plugins", "--json", check=True).stdout
    statuses = {(p["name"], p["distribution"]): p["status"] for p in json.loads(listed)}
    assert statuses[("sb3", "my-sb3")] == "blocked"
    assert statuses[("sb3", "ctxrl")] in ("loaded", "unavailable")
    assert statuses[("exiter", "exiter")] == "failed"


class _MalformedEnv:
    """An env spec with a list where the ContextSpace goes and a capitalised action space."""

    @hookimpl
    def ctxrl_register_envs(self, register):
        feature = ContextFeature("speed", 1.0, 0.5, 2.0)
        register(
            EnvSpec(
                "Malformed", [feature], make=dict, return_bounds=(0, 1), action_space="discrete"
            )
        )  # type: ignore[arg-type]


class _CapitalisedActions:
    @hookimpl
    def ctxrl_register_envs(self, register):
        space = ContextSpace([ContextFeature("speed", 1.0, 0.5, 2.0)], owner="Caps")
        register(EnvSpec("Caps", space, make=dict, return_bounds=(0, 1), action_space="Discrete"))  # type: ignore[arg-type]


class _NotCallable:
    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("not-callable", factory="random"))  # type: ignore[arg-type]


def test_a_malformed_spec_fails_its_plugin_when_it_registers() -> None:
    """Fields of the wrong kind were accepted as loaded, then broke `ctxrl envs` for every
    plugin (or surfaced as a mismatch much later): the plugin fails, naming the field."""
    host = load_host(
        extra=[
            ("malformed", _MalformedEnv()),
            ("caps", _CapitalisedActions()),
            ("not-callable", _NotCallable()),
        ]
    )
    assert "context_space must be a ctxrl.ContextSpace, got list" in host.plugins["malformed"].error
    assert "action_space must be 'discrete' or 'continuous', got 'Discrete'" in (
        host.plugins["caps"].error
    )
    assert "strategy 'not-callable': factory must be callable" in host.plugins["not-callable"].error
    assert {"Malformed", "Caps"}.isdisjoint(host.registry.names("env"))
    assert "CartPole" in host.registry.names("env")


UNAVAILABLE_AT_IMPORT = """
from ctxrl.errors import PluginUnavailable
raise PluginUnavailable("needs its extra: pip install 'ctxrl-extra[gpu]'")
"""


def test_an_extra_missing_at_import_is_unavailable_and_its_hint_is_printed_whole(
    run_ctxrl: Run, plugin_site: Path
) -> None:
    """A plugin raising PluginUnavailable at import was 'failed' (and warned about by every
    command); and rich read the install hint's ``[gpu]`` as markup and dropped it."""
    write_distribution(
        plugin_site,
        "ctxrl-extra",
        "0.1",
        "ctxrl_extra",
        UNAVAILABLE_AT_IMPORT,
        {"extra": "ctxrl_extra"},
    )
    plugins = _plugins_json(run_ctxrl)
    assert plugins["extra"]["status"] == "unavailable"
    assert plugins["extra"]["error"] == "needs its extra: pip install 'ctxrl-extra[gpu]'"
    table = run_ctxrl("plugins", check=True)
    assert "pip install 'ctxrl-extra[gpu]'" in table.stdout
    assert "failed to load" not in table.stderr


class _TwoImplementations:
    """Two implementations of one hook (pluggy's ``specname``): both run, once."""

    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("two-a", dict))

    @hookimpl(specname="ctxrl_register_strategies")
    def more_strategies(self, register):
        register(StrategySpec("two-b", dict))


class _Unmarked:
    def ctxrl_register_strategies(self, register):  # no @hookimpl: pluggy never calls it
        register(StrategySpec("unmarked", dict))


class _NeedsAnInstance:
    @hookimpl
    def ctxrl_register_strategies(self, register):
        register(StrategySpec("class-not-instance", dict))


class _StaticHooks:
    @staticmethod
    @hookimpl
    def ctxrl_register_strategies(register):
        register(StrategySpec("static-hooks", dict))


def test_plugins_registered_in_unusual_but_clear_ways_load_or_say_why_not() -> None:
    """Two implementations of one hook were called twice and refused as a duplicate of the
    plugin itself; a hook without @hookimpl loaded as a plugin providing nothing; a class
    given for its instance failed with a missing 'register' argument."""
    host = load_host(
        extra=[
            ("two", _TwoImplementations()),
            ("unmarked", _Unmarked()),
            ("a-class", _NeedsAnInstance),
            ("static", _StaticHooks),
        ]
    )
    assert host.plugins["two"].status == "loaded", host.plugins["two"].error
    assert {"two-a", "two-b"} <= set(host.registry.names("strategy"))
    assert "ctxrl_register_strategies not marked as hook implementation" in (
        host.plugins["unmarked"].error
    )
    assert "is the class _NeedsAnInstance, not an instance of it" in host.plugins["a-class"].error
    assert host.plugins["static"].status == "loaded" and "static-hooks" in (
        host.registry.names("strategy")
    )


def test_a_name_a_failed_plugin_gave_up_is_not_held_against_another() -> None:
    """Plugin A registers an env and then fails in a later hook (rolled back); plugin B
    registers the same env: B failed as a duplicate of A, and then nobody provided it."""
    shared = dataclasses.replace(load_host().registry.env("CartPole"), name="SharedEnv")

    class RegistersThenFails:
        @hookimpl
        def ctxrl_register_envs(self, register):
            register(shared)

        @hookimpl
        def ctxrl_register_strategies(self, register):
            raise RuntimeError("half-way")

    class Registers:
        @hookimpl
        def ctxrl_register_envs(self, register):
            register(shared)

    host = load_host(extra=[("first", RegistersThenFails()), ("second", Registers())])
    assert host.plugins["first"].status == "failed"
    assert "RuntimeError: half-way" in host.plugins["first"].error
    assert host.plugins["second"].status == "loaded", host.plugins["second"].error
    assert host.registry.provider("env", "SharedEnv") == "second"
