"""What the transfer studies (DQN transferability, plasticity) share: the strict config base and
the plan hash that names a study's run directory (its analysis options left out), reading a
study file with errors that name the file, the field and, for another command's file, that
command; finding and opening a run directory that refuses another study's results, and the lock
one process at a time trains under; an algorithm's parameters from a preset and the study's own;
the study a ``--dry-run`` prints; and the transfer-method object of a study that runs from its
own command."""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from ctxrl.artifacts import write_text_atomic
from ctxrl.config import merge_params
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.field_errors import validation_problems
from ctxrl.registry import AlgorithmSpec
from ctxrl.resolution import (
    FORMAT_KEY,
    RESOLVED_FORMAT,
    RESOLVED_KEY,
    check_resolved_alike,
    merge_resolved,
)
from ctxrl.yaml12 import parse_yaml

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """A frozen config model that refuses unknown keys, infinite and NaN numbers, and YAML's
    ``true`` / ``false`` where a whole number is expected (a lax ``int`` takes them as 1 / 0:
    ``seeds: [true]`` ran seed 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        wanted = str(field.annotation) if field is not None else ""
        if "bool" in wanted or not any(t in wanted for t in ("int", "float")):
            return value
        if isinstance(value, dict):
            values = list(value.values())
        else:
            values = list(value) if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, bool) for v in values):
            raise ValueError(f"a number is expected, got {value!r}")
        return value


class StudyModel(StrictModel):
    """A study file's model, with the hash that names its run directory (:meth:`plan_hash`).

    The hash leaves out where and on what the study runs (``output_dir``, ``device``) and the
    :attr:`analysis_fields`, the options only its report reads (a threshold, a window): a rerun
    with another of them finds the trained results and reports them anew instead of training
    again."""

    analysis_fields: ClassVar[Mapping[str, Any]] = {}
    """The options no training reads, as ``model_dump``'s ``exclude`` takes them: ``{name:
    True}``, or ``{section: {name, ...}}`` for nested ones."""

    def plan_data(self, *, with_analysis: bool = False) -> dict[str, Any]:
        """What determines the trained results, hashed into the run directory's name (with
        ``with_analysis``, the analysis options too: the data of the hash an earlier ctxrl
        named the run directory by)."""
        exclude = {"output_dir": True, "device": True}
        if not with_analysis:
            exclude.update(self.analysis_fields)
        return self.model_dump(mode="json", exclude=exclude)

    def plan_hash(self, *, with_analysis: bool = False) -> str:
        data = self.plan_data(with_analysis=with_analysis)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def study_run_dir(config: StudyModel, output_dir: Path, prefix: str) -> Path:
    """Where study ``config`` keeps its results: ``{output_dir}/{prefix}{plan hash}``, or else
    an existing directory of the same prefix whose plan.yaml holds the same study by this
    version's hash (named by the hash an earlier ctxrl gave it, before the hash left out the
    analysis options, or by a run with other analysis options), so that its results are reused,
    not trained again."""
    named = output_dir / f"{prefix}{config.plan_hash()}"
    if named.exists():
        return named
    for plan_file in sorted(output_dir.glob(f"{glob.escape(prefix)}*/plan.yaml")):
        if _stored_plan_hash(plan_file, type(config)) == config.plan_hash():
            return plan_file.parent
    return named


def _stored_plan_hash(plan_file: Path, model: type[StudyModel]) -> str | None:
    """The plan hash, as this version defines it, of the study a run directory's plan.yaml
    records; None when it records none that ``model`` validates, or when the hash it was
    written under is not this study's by this version's definition, with or without the
    analysis options (an earlier ctxrl that gave two different studies one hash: the
    directory holds the other one's results)."""
    try:
        stored = yaml.safe_load(plan_file.read_text(encoding="utf-8"))
        config = model.model_validate(stored["config"])
        written_as = stored.get("plan_hash")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError, ValidationError):
        return None
    if written_as not in (config.plan_hash(), config.plan_hash(with_analysis=True)):
        return None
    return config.plan_hash()


def read_study_file(path: str | Path, model: type[ModelT]) -> ModelT:
    """Read and validate a study file as ``model``; a missing file, invalid YAML, a document
    that is not a mapping and the first invalid field are :class:`ConfigError` naming the
    file (and the field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:  # as sweep configs are read: YAML 1.2 numbers (1e-3), a key given twice refused
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study is a YAML mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, model))
        raise ConfigError(f"{path}: {problems}{_kind_hint(data, model)}") from None


def study_mapping(path: Path) -> dict[str, Any]:
    """A study file's top-level mapping, or an empty one where it is none (a missing file,
    invalid YAML: :func:`read_study_file` reports what is wrong)."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


FILE_KINDS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("a plasticity study", "ctxrl plasticity", frozenset({"schedule", "shifting_targets"})),
    (
        "a DQN transferability study",
        "ctxrl transfer dqn",
        frozenset({"pairs", "variants", "sources_from", "contexts"}),
    ),
    (
        "a sweep config",
        "ctxrl sweep",
        frozenset({"features", "strategy", "mode", "executor", "compare", "transfer"}),
    ),
)
"""What each command's files are told apart by: top-level keys only one kind has."""


def _kind_of(keys: set[str]) -> int | None:
    """The index in :data:`FILE_KINDS` of the one kind whose keys ``keys`` share most."""
    shared = [len(keys & kind_keys) for _, _, kind_keys in FILE_KINDS]
    best = max(shared)
    return shared.index(best) if best and shared.count(best) == 1 else None


def _kind_hint(data: dict[str, Any], model: type[BaseModel]) -> str:
    """`` (this file looks like a ...: run it with ...)`` when ``data``'s keys are another
    command's file than ``model``'s (a sweep config given to ``ctxrl plasticity``), else
    empty: a list of field errors alone does not say the command is wrong."""
    mine, theirs = _kind_of(set(model.model_fields)), _kind_of({str(k) for k in data})
    if theirs is None or theirs == mine:
        return ""
    what, command, _ = FILE_KINDS[theirs]
    return f" (this file looks like {what}: run it with `{command}`)"


def announce(console: Any, plan: str, run_dir: Path) -> None:
    """A study's plan in one line on ``console`` (standard error): ``plan -> run_dir``, never
    folded, so that the run directory's path stays whole in a log."""
    console.print(f"{plan} -> {run_dir}", soft_wrap=True, highlight=False)


def study_yaml(config: BaseModel, resolved: Mapping[str, Any] | None = None) -> str:
    """A validated study as YAML, every field's default filled in (an intervention's options
    and the algorithm's hyperparameters as written): what ``--dry-run`` prints on
    standard output (as ``ctxrl sweep --dry-run`` prints its plan), the summary line going to
    standard error. What the study ``resolved`` to with the installed plugins (the record
    :func:`open_run_dir` keeps: hyperparameters and options with their defaults) follows as
    YAML comments, so that the output still reads back as the study."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if resolved is None:
        return text
    record = yaml.safe_dump({RESOLVED_KEY: dict(resolved)}, sort_keys=False)
    lines = [
        "# what the study resolves to with the installed plugins (plan.yaml records it; a",
        "# resume that resolves it otherwise is refused):",
        *(f"# {line}" for line in record.splitlines()),
    ]
    return text + "\n".join(lines) + "\n"


@contextmanager
def locked_run_dir(run_dir: Path, command: str) -> Iterator[None]:
    """Create (or reopen) a study's ``run_dir`` and hold its lock (the lock a sweep holds on
    its run directory: :func:`ctxrl.run_dirs.run_dir_lock`) while the study trains and writes
    there: a second ``command`` on the same study meanwhile stops with a :class:`CtxrlError`
    naming the directory and the process holding it, before it trains or writes anything.
    An OS file lock, released however the process ends; ``ctxrl report`` takes none."""
    from ctxrl.run_dirs import run_dir_lock

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CtxrlError(
            f"output_dir: cannot create the run directory {run_dir} ({exc.strerror}); "
            "choose another output_dir"
        ) from None
    with run_dir_lock(run_dir, what=f"{command} run of this study", can_wait=False):
        yield


def unfinished(run_dir: Path, what: str, command: str) -> str:
    """Why a study's ``what`` (``program 'shared'``) has no stored result yet, for
    ``ctxrl report``: the study is running there (the process holding its lock), or it
    stopped and ``command`` on the study file completes it."""
    from ctxrl.run_dirs import sweep_holding

    running = sweep_holding(run_dir)
    return f"{run_dir}: {what} has not finished; " + (
        f"the study is running there ({running}): report it when it ends"
        if running
        else f"rerun `{command}` on the study file to complete it"
    )


class DamagedResult(CtxrlError):
    """A study's stored result that cannot be read whole (cut short, a changed byte): a rerun
    of the study sets it aside and trains it again (:func:`set_aside`); a report names it."""

    def __init__(self, stem: Path, problem: str, command: str) -> None:
        self.stem, self.problem = stem, problem
        super().__init__(
            f"stored result {problem}: rerun `{command}` on the study file to train it again"
        )


def load_result(stem: Path, command: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A study's stored result at ``stem`` (``load_artifact``'s tensors and metadata), None
    when there is none; :class:`DamagedResult` (naming the file and ``command``) when it is
    damaged."""
    from ctxrl.artifacts import artifact_file, load_artifact, verify_artifact

    if not artifact_file(stem).is_file():
        return None
    problem = verify_artifact(stem)
    if problem is not None:
        raise DamagedResult(stem, problem, command)
    return load_artifact(stem)


def set_aside(damaged: DamagedResult, say: Callable[[str], None] | None = None) -> None:
    """Remove a damaged stored result so that the study trains it again, saying so on
    ``say`` (default: standard error)."""
    from ctxrl.artifacts import remove_artifact

    remove_artifact(damaged.stem)
    message = f"{damaged.problem}: its result is trained again"
    if say is not None:
        say(message)
    else:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[yellow]{escape(message)}[/]")


def open_run_dir(
    run_dir: Path, study: str, config: StudyModel, resolved: Mapping[str, Any] | None = None
) -> None:
    """Create (or reopen) a study's run directory with its ``plan.yaml`` (``study``,
    ``plan_hash``, ``config``: what ``ctxrl report`` reads); refuse one that holds another
    study. Reopened with other analysis options (or by a study an earlier ctxrl hashed
    otherwise), plan.yaml records this run's, which its report reads from then on.

    ``resolved`` is what the study file resolves to with the installed plugins beyond what it
    says (every hyperparameter with its defaults, each intervention's options with theirs:
    the study plan's ``resolved``), recorded under ``resolved``: the plan hash covers the file
    as written, so a run directory whose results trained when a default was another is
    refused, naming the values (:func:`ctxrl.resolution.check_resolved_alike`), rather than
    mixed with new ones. A plan.yaml from before the record gains it; the values of the old
    record this version no longer has are kept (:func:`ctxrl.resolution.merge_resolved`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = run_dir / "plan.yaml"
    data: dict[str, Any] = {
        "study": study,
        "plan_hash": config.plan_hash(),
        "config": config.model_dump(mode="json"),
    }
    stored: Any = None
    recorded: Any = None
    current = None if resolved is None else {FORMAT_KEY: RESOLVED_FORMAT, **resolved}
    if plan_file.exists():
        stored = yaml.safe_load(plan_file.read_text()) or {}
        same = stored.get("plan_hash") == data["plan_hash"]
        if not (same or _stored_plan_hash(plan_file, type(config)) == data["plan_hash"]):
            raise CtxrlError(f"{plan_file} holds a different study; refusing to mix results")
        recorded = stored.get(RESOLVED_KEY)
        check_resolved_alike(
            recorded,
            current,
            f"{plan_file}: its results trained with other values than this installation "
            "resolves the same study to",
            "a default or preset changed since. Refusing to mix results: resume with the "
            "versions that trained them, or give another output_dir to train the study anew",
        )
    if current is not None:
        data[RESOLVED_KEY] = (
            merge_resolved(recorded, current) if isinstance(recorded, dict) else current
        )
    elif isinstance(recorded, dict):  # a caller that resolves nothing leaves the record
        data[RESOLVED_KEY] = recorded
    if stored == data:
        return
    write_text_atomic(plan_file, yaml.safe_dump(data, sort_keys=False))


def distinct_seeds(seeds: list[int]) -> list[int]:
    """``seeds`` unchanged when no seed repeats; a ``ValueError`` naming them otherwise (for a
    study model's ``seeds`` validator)."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed")
    return seeds


def preset_params(
    algorithm: AlgorithmSpec, preset: str | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """The algorithm's parameters for a study: its ``preset``'s (none when None), updated with
    the study's own ``params``. An unknown preset is a :class:`ConfigError` naming the field
    and the presets there are."""
    if preset is not None and preset not in algorithm.presets:
        raise ConfigError(
            f"preset: {algorithm.name} has no preset {preset!r}; available: "
            f"{', '.join(sorted(algorithm.presets)) or 'none'}"
        )
    return merge_params({} if preset is None else algorithm.presets[preset], params)


class StudyOnly:
    """The transfer-method object of a study that runs from its own command, not in a sweep:
    ``transfer`` raises ``message`` (which says what to run instead)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def transfer(self, problem: Any) -> Any:
        del problem
        raise CtxrlError(self.message)
