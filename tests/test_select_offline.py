"""``ctxrl select`` on multi-dimensional matrices, several trials and strategy options, and
``ctxrl synth``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from ctxrl.cli import cli
from ctxrl.config import resolve_plan, validate_config
from ctxrl.plugins import get_host
from ctxrl.sweep import run_sweep


def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _json(result: Result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cube_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2 x 2 x 2 CartPole sweep (tiny budget: the matrix, not the policies, matters)."""
    out = tmp_path_factory.mktemp("cube")
    config = {
        "env": "CartPole",
        "features": {
            "length": {"values": [0.5, 1.0]},
            "masscart": {"values": [0.5, 2.0]},
            "masspole": {"values": [0.1, 0.3]},
        },
        "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
        "train_steps": 512,
        "eval_episodes": 2,
        "compare": ["random"],
        "output_dir": str(out),
    }
    return run_sweep(resolve_plan(validate_config(config), get_host().registry)).run_dir


def test_a_csv_with_grid_gives_the_run_directory_route(cube_run: Path, tmp_path: Path) -> None:
    """The exported 3-D matrix with --grid 2x2x2, with its contexts.json (read from beside the
    CSV) and with --contexts all give the run directory's G_k; without them it is 1-D."""
    args = ["--strategy", "mbtl-gp", "--strategy", "m-mbtl", "-k", "5", "--json"]
    from_run = _json(_cli("select", "--matrix", str(cube_run), *args))
    assert from_run["dims"] == 3 and "2 x 2 x 2 grid" in from_run["contexts"]
    exported = cube_run / "exports" / "matrix_seed0.csv"
    alone = tmp_path / "matrix.csv"
    alone.write_bytes(exported.read_bytes())
    bounds = ["--env", "CartPole"]
    routes = {
        "grid": _json(_cli("select", "--matrix", str(alone), "--grid", "2x2x2", *bounds, *args)),
        "beside": _json(_cli("select", "--matrix", str(exported), *args)),
        "contexts": _json(
            _cli(
                "select",
                "--matrix",
                str(alone),
                "--contexts",
                str(cube_run / "exports" / "contexts.json"),
                *bounds,
                *args,
            )
        ),
    }
    for name, result in routes.items():
        assert result["dims"] == 3, name
        for strategy in ("mbtl-gp", "m-mbtl"):
            assert (
                result["strategies"][strategy]["order"]
                == (from_run["strategies"][strategy]["order"])
            ), (name, strategy)
            np.testing.assert_allclose(
                result["strategies"][strategy]["mean"], from_run["strategies"][strategy]["mean"]
            )
    one_d = _cli("select", "--matrix", str(alone), *bounds, *args)
    assert "treating the 8 contexts as 1-D" in one_d.stderr
    assert _json(one_d)["dims"] == 1
    wrong = _cli("select", "--matrix", str(alone), "--grid", "3x3", *bounds, *args)
    assert wrong.exit_code == 2 and "--grid 3x3: 9 contexts, but the matrix has 8" in wrong.stderr


def test_a_matrix_of_equal_rows_is_said_to_measure_no_selection(tmp_path: Path) -> None:
    """A distilling sweep's matrix (one student per target in every row) replayed flat G_k
    for every strategy with no word of why; the sweep's summary said it, select did not."""
    path = tmp_path / "m.csv"
    np.savetxt(path, np.tile([100.0, 300.0, 500.0], (3, 1)), delimiter=",")
    result = _cli(
        "select", "--matrix", str(path), "--env", "CartPole", "-k", "2", "--strategy", "greedy"
    )
    assert result.exit_code == 0, result.output
    assert "source selection is not measured here" in " ".join(result.stderr.split())
    varied = tmp_path / "v.csv"
    np.savetxt(varied, np.diag([500.0, 400.0, 300.0]), delimiter=",")
    plain = _cli(
        "select", "--matrix", str(varied), "--env", "CartPole", "-k", "2", "--strategy", "greedy"
    )
    assert "not measured" not in plain.stderr


def test_strategy_options_are_passed_and_checked(tmp_path: Path) -> None:
    n = 10
    x = np.arange(n)
    path = tmp_path / "m.csv"
    np.savetxt(path, np.clip(450 - 60 * np.abs(x[:, None] - x[None, :]), 0, 500), delimiter=",")
    base = ["select", "--matrix", str(path), "--env", "CartPole", "-k", "3", "--json"]
    plain = _json(_cli(*base, "--strategy", "sd-mbtl"))
    forced = _json(_cli(*base, "--strategy", "sd-mbtl", "--option", "structure=mountain"))
    assert forced["options"] == {"sd-mbtl": {"structure": "mountain"}}
    m_mbtl = _json(_cli(*base, "--strategy", "m-mbtl"))
    assert forced["strategies"]["sd-mbtl"]["order"] == m_mbtl["strategies"]["m-mbtl"]["order"]
    assert plain["options"] == {}
    unknown = _cli(
        *base, "--strategy", "greedy", "--strategy", "mbtl-gp", "--option", "mbtl-gp.speed=2"
    )
    assert unknown.exit_code == 2
    assert (
        "strategy 'mbtl-gp': no option 'speed' (did you mean 'spread'?); it takes acquisition"
        in unknown.stderr
    )
    # a number as the config reads it; only the option it does not take is named
    small = _json(_cli(*base, "--strategy", "mbtl-gp", "--option", "theta_per_index=5e-3"))
    assert small["options"] == {"mbtl-gp": {"theta_per_index": 0.005}}
    one_wrong = _cli(*base, "--strategy", "sd-mbtl", "--option", "min_rows=3", "--option", "fooo=1")
    assert one_wrong.exit_code == 2 and "no option 'fooo'; it takes" in one_wrong.stderr
    not_yaml = _cli(*base, "--strategy", "mbtl-gp", "--option", "c=[1")
    assert not_yaml.exit_code == 2 and "--option 'c=[1': the value is not valid YAML" in (
        not_yaml.stderr
    )
    elsewhere = _cli(*base, "--strategy", "greedy", "--option", "random.c=2")
    assert elsewhere.exit_code == 2 and "strategy 'random' is not among" in elsewhere.stderr
    malformed = _cli(*base, "--strategy", "greedy", "--option", "c")
    assert malformed.exit_code == 2 and "expected KEY=VALUE" in malformed.stderr
    # a KEY for every strategy, one of which takes no options: the scoped form is named
    shared = _cli(*base, "--strategy", "mbtl-gp", "--strategy", "random", "--option", "c=2")
    assert shared.exit_code == 2 and "give it to one as STRATEGY.KEY=VALUE" in shared.stderr
    misspelled = _cli(*base, "--strategy", "gredy")
    assert misspelled.exit_code == 2
    assert "--strategy: no plugin provides the strategy 'gredy'" in misspelled.stderr
    # a list where a name is expected said "unhashable type: 'list'"; m-mbtl given a
    # structure, "got multiple values for keyword argument 'structure'"
    listed = _cli(*base, "--strategy", "mbtl-gp", "--option", "beta=[1, 2]")
    assert listed.exit_code == 2 and "beta [1, 2] is not one of" in listed.stderr
    fixed = _cli(*base, "--strategy", "m-mbtl", "--option", "structure=gp")
    assert fixed.exit_code == 2
    assert "it is sd-mbtl with structure 'mountain' always" in fixed.stderr
    # nor does it take the options of the GP branch it never runs (they were ignored)
    ignored = _cli(*base, "--strategy", "m-mbtl", "--option", "residual=none")
    assert ignored.exit_code == 2 and "takes only the option clustering, not residual" in (
        ignored.stderr
    )


def test_synth_trials_replay_with_confidence_intervals(tmp_path: Path) -> None:
    """`ctxrl synth` writes trials and their contexts.json; `select` on the folder reads them
    as 3-D trials, reports G_k with a CI over trials and adds the myopic oracle."""
    written = _cli(
        "synth", "--out", str(tmp_path), "--setting", "f=constant,g=none,h=l1", "--trials", "3"
    )
    assert written.exit_code == 0, written.output
    folder = tmp_path / "f-constant_g-none_h-l1" / "noise5"
    assert sorted(p.name for p in folder.iterdir()) == [
        "contexts.json",
        "trial000.npy",
        "trial001.npy",
        "trial002.npy",
    ]
    assert "(Mountain), noise 5" in written.stdout
    # normalised as the published tables are, by the bounds of the reference's 100 trials: a
    # trial scores the same whether 3 or 100 are written (the 3 trials' own extremes differ)
    from ctxrl.synthetic import SyntheticSetting, reference_bounds, setting_bounds

    setting = SyntheticSetting("constant", "none", "l1")
    bounds = json.loads((folder / "contexts.json").read_text())["return_bounds"]
    assert bounds == list(setting_bounds(setting, 5.0, 100))
    assert bounds != list(reference_bounds(np.stack([np.load(p) for p in folder.glob("*.npy")])))
    # two levels that would share one folder: refused before anything is written
    clash = _cli(
        "synth",
        "--out",
        str(tmp_path / "clash"),
        "--setting",
        "f=constant,g=none,h=l1",
        "--noise",
        "5",
        "--noise",
        "5.0000001",
        "--trials",
        "1",
    )
    assert clash.exit_code == 2 and "would share the folder noise5" in clash.stderr
    assert not (tmp_path / "clash").exists()
    # written again with fewer trials: the folder holds those only
    again = ["synth", "--out", str(tmp_path), "--setting", "f=constant,g=none,h=l1"]
    # a write that fails leaves the earlier trials (they were removed before anything was
    # written, and contexts.json still said 3 trials)
    (folder / "trial001.csv").mkdir()
    blocked = _cli(*again, "--trials", "2", "--format", "csv")
    assert blocked.exit_code == 2 and "trial001.csv: something other than a file" in blocked.stderr
    (folder / "trial001.csv").rmdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "contexts.json",
        *(f"trial00{t}.npy" for t in range(3)),
    ]
    saved = np.save
    calls = []

    def save_twice_then_fail(*args: Any, **kwargs: Any) -> None:  # a disk that fills up
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        saved(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "save", save_twice_then_fail)
        assert _cli(*again, "--trials", "2").exit_code != 0
    before = sorted(p.name for p in folder.iterdir())
    assert before == ["contexts.json", *(f"trial00{t}.npy" for t in range(3))]
    assert json.loads((folder / "contexts.json").read_text())["synthetic"]["trials"] == 3
    np.save(folder / "trial1000.npy", np.zeros((2, 2)))  # from a run of 1001 trials
    fewer = _cli(*again, "--trials", "1", "--format", "csv")
    assert fewer.exit_code == 0 and "removed 4 earlier trial files" in fewer.output
    assert sorted(p.name for p in folder.iterdir()) == ["contexts.json", "trial000.csv"]
    assert _cli(*again, "--trials", "3").exit_code == 0
    result = _cli("select", "--matrix", str(folder), "--strategy", "m-mbtl", "-k", "4", "--json")
    data = _json(result)
    assert data["trials"] == 3 and data["dims"] == 3 and data["n"] == 512
    assert "8 x 8 x 8 grid" in data["contexts"]
    oracle = data["strategies"]["myopic-oracle"]
    m_mbtl = data["strategies"]["m-mbtl"]
    assert len(oracle["final_per_trial"]) == 3 and all(h > 0 for h in m_mbtl["ci95"])
    assert oracle["mean"][-1] >= m_mbtl["mean"][-1]
    assert np.all(np.diff(oracle["mean"]) > 0)
    # the first strategy against every other line, trial by trial
    assert m_mbtl["mean_g"] == pytest.approx(np.mean(m_mbtl["mean"]))
    assert data["paired"]["strategy"] == "m-mbtl"
    against_oracle = data["paired"]["minus"]["myopic-oracle"]
    assert against_oracle["mean"] == pytest.approx(m_mbtl["mean_g"] - oracle["mean_g"])
    assert against_oracle["ci95"] > 0 and 0 <= against_oracle["at_or_above"] <= 3
    table = _cli("select", "--matrix", str(folder), "--strategy", "m-mbtl", "-k", "4")
    assert "paired over the 3 trials, m-mbtl's mean G_1..4 minus: myopic-oracle" in table.stdout
    two = _cli(
        "select",
        "--matrix",
        str(folder / "trial000.npy"),
        "--matrix",
        str(folder / "trial001.npy"),
        "--strategy",
        "m-mbtl",
        "-k",
        "4",
        "--json",
    )
    assert _json(two)["trials"] == 2
    one = str(folder / "trial000.npy")
    alone = _json(_cli("select", "--matrix", one, "--strategy", "m-mbtl", "-k", "4", "--json"))
    assert alone["paired"] is None and alone["strategies"]["m-mbtl"]["mean_g_ci95"] is None
    csv = _cli(
        "synth",
        "--out",
        str(tmp_path / "csv"),
        "--setting",
        "f=linear,g=linear,h=non-distance",
        "--noise",
        "0",
        "--trials",
        "1",
        "--format",
        "csv",
    )
    assert csv.exit_code == 0, csv.output
    matrix = np.loadtxt(
        tmp_path / "csv" / "f-linear_g-linear_h-non-distance" / "noise0" / "trial000.csv",
        delimiter=",",
    )
    assert matrix.shape == (512, 512) and matrix[0, 0] == 500.0
    bad = _cli("synth", "--out", str(tmp_path), "--setting", "f=cubic,g=none,h=l1")
    assert bad.exit_code == 2 and "f='cubic'" in bad.stderr
    (tmp_path / "a-file").write_text("")  # a folder cannot be made under a file
    unwritable = _cli("synth", "--out", str(tmp_path / "a-file" / "out"), "--trials", "1")
    assert unwritable.exit_code == 1 and "Traceback" not in unwritable.output
    assert f"error: {tmp_path / 'a-file' / 'out'}" in unwritable.stderr
    assert "Not a directory" in unwritable.stderr


def test_bad_matrix_input_is_named_before_any_replay(cube_run: Path, tmp_path: Path) -> None:
    """Each problem names the file (and row, entry or field) it is in."""
    x = np.arange(4)
    matrix = np.clip(450 - 60 * np.abs(x[:, None] - x[None, :]), 0, 500).astype(float)
    good, holed = tmp_path / "trials" / "a.csv", tmp_path / "trials" / "b.csv"
    good.parent.mkdir()
    np.savetxt(good, matrix, delimiter=",")
    matrix[2, 1] = np.nan
    np.savetxt(holed, matrix, delimiter=",")
    args = ["--strategy", "random", "-k", "2"]

    nan = _cli("select", "--matrix", str(good.parent), "--bounds", "0", "500", *args)
    assert nan.exit_code == 2 and f"{holed}: 1 unobserved (NaN) entries" in nan.stderr
    assert "(source, target) (2, 1)" in nan.stderr
    twice = _cli(
        "select", "--matrix", str(good), "--matrix", str(good.parent), "--bounds", "0", "500", *args
    )
    assert twice.exit_code == 2 and f"--matrix: {good} is given twice" in twice.stderr
    reversed_bounds = _cli("select", "--matrix", str(good), "--bounds", "500", "0", *args)
    assert "bounds need finite lower < upper, got [500.0, 0.0]" in reversed_bounds.stderr
    run_dir = _cli("select", "--matrix", str(cube_run), "--negate", *args)
    assert run_dir.exit_code == 2 and "--negate and --env apply to matrix files" in run_dir.stderr

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n4,5\n6,7\n")
    rows = _cli("select", "--matrix", str(good), "--contexts", str(ragged), *args)
    assert f"{ragged}: row 3 has 1 column(s), the header 2" in rows.stderr

    beside = tmp_path / "beside"
    beside.mkdir()
    np.savetxt(beside / "m.csv", np.nan_to_num(matrix), delimiter=",")
    contexts = {"features": ["a"], "contexts": [{"a": float(v)} for v in x]}
    (beside / "contexts.json").write_text(json.dumps({**contexts, "return_bounds": [0]}))
    bad_bounds = _cli("select", "--matrix", str(beside / "m.csv"), *args)
    assert "return_bounds must be two numbers [lower, upper], got [0]" in bad_bounds.stderr
    # with --grid the coordinates come from the grid, the bounds still from contexts.json
    (beside / "contexts.json").write_text(json.dumps({**contexts, "return_bounds": [0, 500]}))
    gridded = _json(
        _cli("select", "--matrix", str(beside / "m.csv"), "--grid", "2x2", "--json", *args)
    )
    assert gridded["bounds"] == [0.0, 500.0] and gridded["dims"] == 2


def test_a_sweeps_exports_folder_replays_its_per_seed_matrices(
    cube_run: Path, tmp_path: Path
) -> None:
    """`select --matrix RUN/exports`: the folder also holds the sweep's tables (runs.csv,
    evaluations.csv, curves.csv, ...), which were read as matrices and failed ("not a
    number"); its `matrix_seed{seed}.csv` files are the trials, in seed order, with its
    contexts.json."""
    exports = tmp_path / "exports"
    exports.mkdir()
    for file in (cube_run / "exports").iterdir():
        (exports / file.name).write_bytes(file.read_bytes())
    assert (exports / "runs.csv").exists() and (exports / "evaluations.csv").exists()
    (exports / "matrix_seed10.csv").write_bytes((exports / "matrix_seed0.csv").read_bytes())
    from ctxrl.offline import matrix_files

    assert [p.name for p in matrix_files(exports)] == ["matrix_seed0.csv", "matrix_seed10.csv"]
    data = _json(
        _cli("select", "--matrix", str(exports), "--strategy", "m-mbtl", "-k", "3", "--json")
    )
    single = _json(
        _cli("select", "--matrix", str(cube_run), "--strategy", "m-mbtl", "-k", "3", "--json")
    )
    assert data["trials"] == 2 and data["dims"] == 3
    assert data["strategies"]["m-mbtl"]["mean"] == pytest.approx(
        single["strategies"]["m-mbtl"]["mean"]
    )


def test_synth_csv_reads_back_strictly_and_bounds_must_be_finite(tmp_path: Path) -> None:
    """CSV trials are written with every digit: at 10 significant digits a rounded minimum
    fell below the contexts.json bounds computed from the unrounded values, and `--strict`
    refused `synth`'s own output. Infinite `--bounds` (every entry 0, or NaN) are refused."""
    written = _cli(
        "synth",
        "--out",
        str(tmp_path),
        "--setting",
        "f=constant,g=none,h=l1",
        "--trials",
        "3",
        "--format",
        "csv",
    )
    assert written.exit_code == 0, written.output
    folder = tmp_path / "f-constant_g-none_h-l1" / "noise5"
    strict = _cli("select", "--matrix", str(folder), "--strategy", "m-mbtl", "-k", "1", "--strict")
    assert strict.exit_code == 0, strict.stderr
    trial = folder / "trial000.csv"
    for bounds in (("0", "inf"), ("-inf", "1")):
        refused = _cli(
            "select", "--matrix", str(trial), "--bounds", *bounds, "-k", "1", "--strategy", "m-mbtl"
        )
        assert refused.exit_code != 0
        assert "normalisation bounds need finite lower < upper" in refused.stderr


def test_trials_from_folders_with_other_contexts_are_refused(
    cube_run: Path, tmp_path: Path
) -> None:
    """Only the first trial's folder gave the contexts (and bounds): a second folder whose
    contexts.json says otherwise was replayed on the first's coordinates, silently."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        for name in ("matrix_seed0.csv", "contexts.json"):
            (folder / name).write_bytes((cube_run / "exports" / name).read_bytes())
    args = ["--strategy", "m-mbtl", "-k", "2", "--json"]
    same = [str(first / "matrix_seed0.csv"), str(second / "matrix_seed0.csv")]
    assert _json(_cli("select", "--matrix", same[0], "--matrix", same[1], *args))["trials"] == 2
    info = json.loads((second / "contexts.json").read_text())
    info["contexts"][0]["length"] = 0.25
    (second / "contexts.json").write_text(json.dumps(info))
    for order in (same, same[::-1]):  # either order
        refused = _cli("select", "--matrix", order[0], "--matrix", order[1], *args)
        assert refused.exit_code != 0
        assert "the trials' folders disagree on their contexts" in " ".join(refused.stderr.split())
    # coordinates given: the files' contexts are not read, only their bounds must agree
    gridded = _cli("select", "--matrix", same[1], "--matrix", same[0], "--grid", "2x2x2", *args)
    assert _json(gridded)["trials"] == 2
    # return bounds that differ: refused with the grid alone, replayed on --bounds given
    info = json.loads((second / "contexts.json").read_text())
    info["return_bounds"] = [0.0, 1000.0]
    (second / "contexts.json").write_text(json.dumps(info))
    grid = ["--grid", "2x2x2"]
    refused = _cli("select", "--matrix", same[0], "--matrix", same[1], *grid, *args)
    assert "disagree on their return bounds" in " ".join(refused.stderr.split())
    bounds = ["--bounds", "0", "500"]
    bounded = _cli("select", "--matrix", same[0], "--matrix", same[1], *grid, *bounds, *args)
    assert bounded.exit_code == 0 and _json(bounded)["trials"] == 2, bounded.output
    (second / "contexts.json").unlink()  # one folder with, one without
    for order in (same, same[::-1]):
        refused = _cli("select", "--matrix", order[0], "--matrix", order[1], *args)
        message = " ".join(refused.stderr.split())
        assert "disagree on their contexts" in message
        # the folder without one named by its matrix, not as a bare "contexts.json"
        assert f"is absent (beside {second / 'matrix_seed0.csv'})" in message
        # coordinates given, bounds not: the folder without them is not normalised by the
        # other's bounds in one order and refused in the other
        refused = _cli("select", "--matrix", order[0], "--matrix", order[1], *grid, *args)
        message = " ".join(refused.stderr.split())
        assert refused.exit_code == 2 and "disagree on their return bounds" in message
        assert "is absent" in message


def test_damaged_files_and_conflicting_flags_are_named(tmp_path: Path) -> None:
    """Each was a traceback (UnicodeDecodeError, a string array, an empty contexts.json),
    click's "Aborted!" (an empty .npy: numpy's EOFError read as Ctrl-D), an unusable benchmark
    (`synth --noise inf`), or silently one of two flags (--env beside --bounds, an option
    given twice with two values)."""
    good = tmp_path / "good.csv"
    np.savetxt(good, np.eye(3) * 100, delimiter=",")
    args = ["--strategy", "random", "-k", "1", "--bounds", "0", "500"]
    undecodable = tmp_path / "m.csv"
    undecodable.write_bytes(b"\xff\xfe1,2\n")
    empty, strings = tmp_path / "e.npy", tmp_path / "s.npy"
    empty.write_bytes(b"")
    np.save(strings, np.array([["a", "b"], ["c", "d"]]))
    # a complex array lost its imaginary part with numpy's warning; a 0 x 0 one failed on -k
    complex_, nothing = tmp_path / "z.npy", tmp_path / "0.npy"
    np.save(complex_, np.eye(3) * (1 + 2j))
    np.save(nothing, np.zeros((0, 0)))
    for path, message in [
        (undecodable, "not UTF-8 text"),
        (empty, "not a numeric .npy array (EOFError"),
        (strings, "not a numeric .npy array (TypeError: its values are <U1, not real numbers"),
        (complex_, "not a numeric .npy array (TypeError: its values are complex128"),
        (nothing, "the matrix is empty (shape (0, 0))"),
    ]:
        result = _cli("select", "--matrix", str(path), *args)
        assert result.exit_code == 2 and f"{path}: {message}" in result.stderr, result.output
    no_features = tmp_path / "c.json"
    no_features.write_text(json.dumps({"features": [], "contexts": [{}, {}, {}]}))
    undecodable_contexts = tmp_path / "c.csv"
    undecodable_contexts.write_bytes(b"\xff\xfe")
    # no header: its first value was taken for a feature's name ("3 contexts, but the matrix
    # has 4 rows"); a bad cell's message named neither its row nor its column
    headerless, bad_cell = tmp_path / "h.csv", tmp_path / "b.csv"
    headerless.write_text("0.5\n1.0\n1.5\n")
    bad_cell.write_text("length\n0.5\nlong\n1.5\n")
    for contexts, message in [
        (no_features, "no features or no contexts"),
        (undecodable_contexts, "not UTF-8 text"),
        (headerless, "its first row (0.5) is numbers; a contexts CSV starts with a header"),
        (bad_cell, "row 3, column 'length': 'long' is not a number"),
    ]:
        result = _cli("select", "--matrix", str(good), "--contexts", str(contexts), *args)
        assert (
            result.exit_code == 2
            and f"{contexts}: " in result.stderr
            and message in (result.stderr)
        )
    both = _cli("select", "--matrix", str(good), "--env", "CartPole", *args)
    assert both.exit_code == 2 and "--env and --bounds both give" in both.stderr
    twice = _cli("select", "--matrix", str(good), *args, "--option", "x=1", "--option", "x=2")
    assert twice.exit_code == 2 and "random's x is already given as 1" in twice.stderr
    from ctxrl.offline import parse_options
    from ctxrl.plugins import get_host

    specs = {n: get_host().registry.strategy(n) for n in ("mbtl-gp", "sd-mbtl")}
    # a strategy's own value overrides the one for every strategy, in either order
    for items in (["beta=log", "sd-mbtl.beta=sqrt-log"], ["sd-mbtl.beta=sqrt-log", "beta=log"]):
        assert parse_options(items, specs) == {
            "mbtl-gp": {"beta": "log"},
            "sd-mbtl": {"beta": "sqrt-log"},
        }
    for noise in ("inf", "nan"):
        result = _cli("synth", "--out", str(tmp_path / "s"), "--noise", noise, "--trials", "1")
        assert result.exit_code == 2 and "not a finite noise level" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_grid_that_disagrees_with_the_contexts_file_beside_is_said(tmp_path: Path) -> None:
    """`--grid 64x8` over a folder whose contexts.json is an 8 x 8 x 8 grid replaced the
    coordinates silently (the order and G_k changed); it still does, and says so where the
    coordinates' source is printed. A grid that agrees reads as before."""
    from ctxrl.offline import coords_from_grid, resolve_coordinates

    coords = coords_from_grid((2, 2))
    contexts = {
        "features": ["a", "b"],
        "contexts": [{"a": float(a), "b": float(b)} for a, b in coords],
        "return_bounds": [0, 1],
    }
    (tmp_path / "contexts.json").write_text(json.dumps(contexts))
    located, bounds = resolve_coordinates(4, contexts=None, grid="4", beside=tmp_path)
    assert located.source == f"--grid, not the 2 x 2 grid of {tmp_path / 'contexts.json'}"
    assert bounds == (0.0, 1.0)
    agreeing, _ = resolve_coordinates(4, contexts=None, grid="2x2", beside=tmp_path)
    assert agreeing.source == "--grid"


def test_contexts_that_cannot_be_placed_are_refused_and_constant_features_do_not_count(
    tmp_path: Path,
) -> None:
    """A non-finite coordinate (placed at one end by the sort before) and two rows at one
    point changed G_k silently; a feature the contexts share was counted as a dimension."""
    x = np.arange(4)
    matrix = tmp_path / "m.csv"
    np.savetxt(matrix, np.clip(450 - 60 * np.abs(x[:, None] - x[None, :]), 0, 500), delimiter=",")
    args = ["--strategy", "greedy", "-k", "2", "--bounds", "0", "500"]
    for rows, message in [
        (["1", "nan", "3", "4"], "context 1 has a = nan: every value must be a finite number"),
        (["1", "2", "inf", "4"], "context 2 has a = inf"),
        (["1", "2", "1", "4"], "contexts 0 and 2 are the same (a=1)"),
    ]:
        contexts = tmp_path / "c.csv"
        contexts.write_text("a\n" + "\n".join(rows) + "\n")
        result = _cli("select", "--matrix", str(matrix), "--contexts", str(contexts), *args)
        assert result.exit_code == 2 and f"{contexts}: {message}" in result.stderr, result.stderr
    # a feature every context shares is not a dimension; a byte-order mark is not a name
    shared = tmp_path / "shared.csv"
    shared.write_bytes("\ufeffa,b\n1,5\n2,5\n3,5\n4,5\n".encode())
    replayed = _json(
        _cli("select", "--matrix", str(matrix), "--contexts", str(shared), "--json", *args)
    )
    assert replayed["dims"] == 1 and f"{shared}: a; constant: b" in replayed["contexts"]


def test_select_refuses_before_replaying_what_it_cannot_finish(tmp_path: Path) -> None:
    """A 1-D strategy on 2-D contexts failed only after the strategies named before it had
    replayed; a matrix whose every entry was clipped was replayed as all zeros; a strategy
    named twice was merged into one column."""
    matrix = tmp_path / "m.csv"
    np.savetxt(matrix, np.full((4, 4), 300.0), delimiter=",")

    def select(*args: str, bounds: bool = True) -> Result:
        return _cli("select", "--matrix", str(matrix), *(["--bounds", "0", "500"] * bounds), *args)

    two_d = select("--grid", "2x2", "-k", "2", "--strategy", "mbtl-gp", "--strategy", "greedy")
    assert two_d.exit_code == 2
    assert "--strategy greedy: works on one varied feature; these contexts vary 2" in two_d.stderr
    assert "G_k" not in two_d.stdout
    negated = select("--negate", "-k", "1", "--strategy", "random")
    assert negated.exit_code == 2
    assert "every entry lies outside the normalisation bounds [0.0, 500.0]" in negated.stderr
    assert "(the entries run from -300 to -300)" in negated.stderr
    twice = select("-k", "1", "--strategy", "random", "--strategy", "random")
    assert twice.exit_code == 2 and "--strategy random is given twice" in twice.stderr
    unknown = select("-k", "1", "--env", "NoSuch", "--strategy", "random", bounds=False)
    assert unknown.exit_code == 2 and "--env: " in unknown.stderr
    # a baseline's options are named by its registered name; sd-mbtl lists what it passes on
    greedy = select("-k", "1", "--strategy", "greedy", "--option", "greedy.beta=1")
    assert greedy.exit_code == 2 and "no option 'beta'; it takes no options" in greedy.stderr
    assert "GreedyStrategy" not in greedy.stderr
    sd = select("-k", "1", "--strategy", "sd-mbtl", "--option", "sd-mbtl.betta=log")
    assert sd.exit_code == 2 and "did you mean 'beta'?" in sd.stderr


def test_a_broken_contexts_file_beside_the_matrix_does_not_block_given_coordinates(
    tmp_path: Path,
) -> None:
    """With --grid (or --contexts) the contexts.json beside the matrix is read for its bounds
    only; unreadable, it is said where the coordinates' source is printed, not fatal."""
    np.savetxt(tmp_path / "m.csv", np.eye(4) * 100, delimiter=",")
    (tmp_path / "contexts.json").write_text("{not json")
    result = _json(
        _cli(
            "select",
            "--matrix",
            str(tmp_path / "m.csv"),
            "--grid",
            "4",
            "--bounds",
            "0",
            "500",
            "--strategy",
            "random",
            "-k",
            "1",
            "--json",
        )
    )
    assert f"{tmp_path / 'contexts.json'} not read: " in result["contexts"]
    # two files of one seed in a sweep's exports folder: which is the trial is not guessed
    exports = tmp_path / "exports"
    exports.mkdir()
    for name in ("matrix_seed0.csv", "matrix_seed00.csv"):
        np.savetxt(exports / name, np.eye(4), delimiter=",")
    both = _cli(
        "select", "--matrix", str(exports), "--bounds", "0", "1", "--strategy", "random", "-k", "1"
    )
    assert both.exit_code == 2 and "are both seed 0's matrix; keep one" in both.stderr


def test_a_folder_s_trials_are_read_in_number_order_and_sizes_named(tmp_path: Path) -> None:
    """``trial999`` before ``trial1000`` (text order put 1000 between 100 and 101, and so
    gave the trials other seeds); matrices of several sizes name a file of each."""
    from ctxrl.offline import matrix_files

    for t in (1000, 999, 100, 101, 2):
        np.save(tmp_path / f"trial{t:03d}.npy", np.eye(3))
    names = [p.name for p in matrix_files(tmp_path)]
    assert names == [f"trial{t:03d}.npy" for t in (2, 100, 101, 999, 1000)]
    np.save(tmp_path / "trial1001.npy", np.eye(4))
    args = ["--strategy", "random", "-k", "2", "--bounds", "0", "1"]
    mixed = _cli("select", "--matrix", str(tmp_path), *args)
    message = " ".join(mixed.stderr.split())
    assert mixed.exit_code == 2 and "differ in shape: (3, 3) (" in message
    assert f"(4, 4) ({tmp_path / 'trial1001.npy'} ...)" in message
    no_budget = _cli("select", "--matrix", str(tmp_path), "--strategy", "random", "-k", "0")
    assert no_budget.exit_code == 2 and "0 is not in the range x>=1" in no_budget.stderr


def test_synth_refuses_what_it_would_write_twice_or_into_no_folder(tmp_path: Path) -> None:
    """A repeated noise level or setting wrote one folder twice; a setting's repeated part
    was read as its last value; ``--out ""`` wrote into the current folder."""
    out = tmp_path / "s"
    one = "f=constant,g=none,h=l1"
    for args, message in [
        (["--noise", "5", "--noise", "5.0"], "--noise 5 is given twice"),
        (["--setting", one, "--setting", "h=l1,g=none,f=constant"], f"--setting {one} is given"),
        (["--setting", f"{one},f=linear"], "f is given twice"),
    ]:
        result = _cli("synth", "--out", str(out), "--trials", "1", *args)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    nowhere = _cli("synth", "--out", "", "--trials", "1")
    assert nowhere.exit_code == 2 and "--out: name the folder" in nowhere.stderr
    assert not out.exists()


def test_a_run_directory_of_several_seeds_is_replayed_as_its_summary_scores_it(
    tmp_path: Path,
) -> None:
    """A run directory was replayed as its seed-mean matrix, clipped after averaging, where
    the sweep's summary scores each seed's matrix: Independent and Oracle differed (0.33
    against 0.43 on a reviewer's MountainCarContinuous sweep). Its seeds are now the trials,
    as its exports' matrix_seed*.csv are read."""
    config = {
        "env": "CartPole",
        "features": {"length": {"values": [0.3, 1.0, 2.5]}},
        "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
        "train_steps": 512,
        "eval_episodes": 2,
        "seeds": [0, 1],
        "compare": ["random", "greedy"],
        "output_dir": str(tmp_path),
    }
    run_dir = run_sweep(resolve_plan(validate_config(config), get_host().registry)).run_dir
    args = ["--strategy", "greedy", "--strategy", "random", "-k", "3", "--json"]
    from_run = _json(_cli("select", "--matrix", str(run_dir), *args))
    from_exports = _json(_cli("select", "--matrix", str(run_dir / "exports"), *args))
    assert from_run["trials"] == 2
    for key in ("independent", "oracle_transfer"):
        assert from_run[key] == pytest.approx(from_exports[key]), key
    for strategy in ("greedy", "random"):
        assert from_run["strategies"][strategy]["mean"] == pytest.approx(
            from_exports["strategies"][strategy]["mean"]
        )
    summary = json.loads((run_dir / "exports" / "summary.json").read_text())
    for key in ("independent", "oracle_transfer"):  # the summary's per-seed estimates
        assert from_run[key] == pytest.approx(summary[f"{key}_seeds"]["mean"]), key
    for strategy in ("greedy", "random"):  # random replayed as often (20 against 100 before)
        assert from_run["strategies"][strategy]["mean"] == pytest.approx(
            summary["curves"][strategy]["seed_mean"]
        ), strategy
    # a seed missing a run (failed, or a killed sweep's): the seed-mean matrix, one trial, as
    # the summary falls back to it (each seed a trial refused its unobserved entries)
    import sqlite3

    with sqlite3.connect(run_dir / "store.sqlite") as db:
        db.execute(
            "UPDATE runs SET status = 'failed' WHERE run_id = "
            "(SELECT run_id FROM runs WHERE seed = 1 AND kind = 'source' LIMIT 1)"
        )
    partial = _json(_cli("select", "--matrix", str(run_dir), *args))
    assert partial["trials"] == 1 and partial["matrices"] == [f"{run_dir} (seed-mean)"]


def test_random_draws_its_own_orders_on_every_trial() -> None:
    """Every trial replayed Random with the same seeds: on identical trial matrices each trial
    got the same orders, so their shared error was out of the interval over trials (0 wide
    here, and 0.6965 +- 0.0001 against the true 0.6957 on SD-MBTL's synthetic trials). Trial
    0 keeps the seeds a single matrix is replayed with."""
    from ctxrl.offline import replay_trials
    from ctxrl.selection import replay

    rng = np.random.default_rng(3)
    matrix = rng.uniform(size=(12, 12))
    coords = np.linspace(0.0, 1.0, 12)[:, None]
    spec = get_host().registry.strategy("random")
    lines = replay_trials(np.stack([matrix] * 4), coords, {"random": spec}, 5, repeats=1)
    curves = lines["random"]["curves"]  # (4 trials, K)
    assert len({tuple(np.round(c, 12)) for c in curves}) == 4
    alone = replay(spec.factory(), matrix, coords, 5, seed=0)
    assert np.array_equal(curves[0], alone.curve)


def test_options_lists_what_each_option_runs_with() -> None:
    """`ctxrl options`: the values a plugin's options take when a config leaves them out, as
    a run directory records them; an option another decides once that one is set."""
    from ctxrl.plugins import get_host

    m_mbtl = _json(_cli("options", "strategy", "m-mbtl", "--json"))
    assert m_mbtl == {
        "kind": "strategy",
        "name": "m-mbtl",
        "options": {"clustering": "reference"},
        "required": [],
    }
    assert _json(_cli("options", "strategy", "mbtl-gp", "--json"))["options"]["noise_std"] == "rows"
    reference = _cli("options", "strategy", "mbtl-gp", "--set", "gp=reference", "--json")
    assert _json(reference)["options"]["noise_std"] == "learned"
    # distill needs its steps to be built: listed as required, what its mode decides null
    bare = _json(_cli("options", "transfer", "distill", "--json"))
    assert bare["required"] == ["steps"] and bare["options"]["coef"] is None
    assert "(required)" in _cli("options", "transfer", "distill").stdout
    kickstart = ["--set", "steps=1000", "--set", "mode=kickstart", "--json"]
    resolved = _json(_cli("options", "transfer", "distill", *kickstart))["options"]
    assert (resolved["steps"], resolved["coef"], resolved["decay"]) == (1000, 1.0, "linear")
    preset_args = ["algorithm", "batched-ppo", "--preset", "CartPole", "--json"]
    preset = _json(_cli("options", *preset_args))["options"]
    for key, value in get_host().registry.algorithm("batched-ppo").presets["CartPole"].items():
        assert preset[key] == value
    local = _json(_cli("options", "executor", "local", "--json"))["options"]
    assert local["start_method"] == "spawn" and "workers" not in local  # a field of its own
    table = _cli("options", "intervention", "shrink-perturb")
    assert table.exit_code == 0 and "optimizer_reset" in table.stdout
    for args, said in [
        (["strategy", "mbtl-gps"], "did you mean 'mbtl-gp'?"),
        (["transfer", "distill", "--set", "stepz=1"], "has no option 'stepz'"),
        (["intervention", "redo", "--set", "tau=-1"], "tau must be a finite number"),
        (["strategy", "random", "--preset", "CartPole"], "presets are an algorithm's"),
        (["algorithm", "batched-ppo", "--preset", "Nope"], "no preset 'Nope'"),
        (["executor", "local", "--set", "workers=3"], "a field of a config's executor"),
        (["executor", "local", "--set", "pol_s=1"], "has no option 'pol_s'"),
    ]:
        failed = _cli("options", *args)
        assert failed.exit_code == 2 and said in failed.stderr, (args, failed.stderr)
