"""The ``distill`` transfer method of sweeps (:class:`Distill`): a strategy's K sources become
the teachers of one student per target context (or of one context-conditioned student), all
trained in one batched program; registered by :mod:`ctxrl_plugins.transfer.distill`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.options import SEED_LIMIT, count_option, number_option, steps_option
from ctxrl.transfer import TransferProblem, TransferResult, evaluate_sources
from ctxrl_plugins.algorithms.ppo import BatchedPPO, hidden_widths
from ctxrl_plugins.transfer.distill_core import (
    Decay,
    Mode,
    Start,
    check_start,
    decay_schedule,
    distill_conditioned,
    distill_proxy,
    distill_students,
)
from ctxrl_plugins.transfer.distill_teachers import (
    distance_weights,
    stack_teachers,
    teacher_temperature,
    transfer_weights,
)


# ------------------------------------------------------------------ the transfer method
class Distill:
    """Every target context gets one student taught by all the problem's sources.

    The sweep's matrix has a row per source; a student here is made from all K sources at
    once, so every row ``p`` holds the same student's returns on target ``q`` (the details
    say so, and hold the teachers' zero-shot returns and best-of-K next to the students').

    ``mode: conditioned`` trains one context-conditioned student for all targets instead
    (:func:`distill_conditioned`, the targets as its pool): its ``steps`` are spread over the
    targets, and ``target_env_steps`` reports them whole. ``mode: proxy`` first distils the
    sources into one context-conditioned proxy policy in the source contexts
    (``proxy_steps`` source-env steps, default ``steps``), which then teaches a student per
    target (:func:`distill_proxy`); only the students' steps are target-env steps.

    With several seeds, each seed's sources teach that seed's students (their seeds:
    :func:`student_seed`) and each seed's rows hold its students: the seeds stay independent
    replicates, and the details hold each seed's record under ``seeds``.

    Args: see :func:`distill_students`.
    """

    def __init__(
        self,
        steps: int,
        mode: Mode = "dagger",
        temperature: float | None = None,
        weights: str | None = None,
        scale: float | None = None,
        coef: float | None = None,
        decay: Decay | None = None,
        half_life: float | None = None,
        student: Mapping[str, Any] | None = None,
        seed_offset: int = 2_000_003,
        proxy_steps: int | None = None,
        start: Start = "scratch",
    ) -> None:
        steps = steps_option(steps, "distill: steps")
        if mode not in ("dagger", "kickstart", "conditioned", "proxy"):
            raise ConfigError(
                "distill: mode must be 'dagger', 'kickstart', 'conditioned' or 'proxy', got "
                f"{mode!r}"
            )
        # an option the mode does not use is an error, not silently without effect
        given = {
            "weights": weights,
            "scale": scale,
            "coef": coef,
            "decay": decay,
            "half_life": half_life,
            "proxy_steps": proxy_steps,
        }
        unused = {"coef", "decay", "half_life"} if mode != "kickstart" else set()
        if mode == "kickstart" and decay != "exponential":
            unused.add("half_life")  # the linear schedule has none
        if mode == "proxy":
            unused |= {"weights", "scale"}  # the proxy teaches; the sources are not weighted
        else:
            unused.add("proxy_steps")
        if weights == "uniform":
            unused.add("scale")
        self._without_effect = frozenset(unused)  # for resolved_options()
        named = [name for name in given if name in unused and given[name] is not None]
        # refused by check() and transfer(), not here: a run directory written before this
        # check is still read (ctxrl report builds the method, never transfers)
        self._unused_options = (
            ""
            if not named
            else f"distill: {', '.join(named)} {'has' if len(named) == 1 else 'have'} no "
            f"effect with mode {mode!r}"
            + (" and weights 'uniform'" if weights == "uniform" else "")
            + (" and decay 'linear'" if mode == "kickstart" and "half_life" in named else "")
            + " (coef, decay, half_life: kickstart; half_life: decay 'exponential'; "
            "proxy_steps: proxy; weights, scale: not proxy; scale: weights 'distance' or "
            "'transfer'); remove " + ("it" if len(named) == 1 else "them")
        )
        weights = "distance" if weights is None else weights
        scale = 0.1 if scale is None else scale
        coef = 1.0 if coef is None else coef
        decay = "linear" if decay is None else decay
        half_life = 0.1 if half_life is None else half_life
        if proxy_steps is not None:
            proxy_steps = steps_option(proxy_steps, "distill: proxy_steps")
        self.proxy_steps = int(steps if proxy_steps is None else proxy_steps)
        if weights not in ("distance", "uniform", "transfer"):
            raise ConfigError(
                f"distill: weights must be 'distance', 'uniform' or 'transfer', got {weights!r}"
            )
        if temperature is not None:  # None: by the teachers (teacher_temperature)
            temperature = number_option(temperature, "distill: temperature")
        scale = number_option(scale, "distill: scale")
        coef = number_option(coef, "distill: coef", positive=False)
        half_life = number_option(half_life, "distill: half_life")
        decay_schedule(decay, 0.0, half_life)
        check_start(start, weights)
        if start != "scratch" and mode not in ("dagger", "kickstart"):
            raise ConfigError(f"distill: start {start!r} needs mode 'dagger' or 'kickstart'")
        self.start: Start = start
        self.steps, self.mode = int(steps), mode
        self.temperature = None if temperature is None else float(temperature)
        self.weights, self.scale, self.coef = weights, float(scale), float(coef)
        self.decay, self.half_life = decay, float(half_life)
        self.student = dict(student or {})
        # the student's hyperparameters: with PPO sources they complete the sources' (what
        # check() validates, before any source trains), else PPO's defaults
        self._student_error: str | None = None
        try:
            BatchedPPO(self.student)
        except CtxrlError as exc:
            if "has no hyperparameter" in str(exc):  # a misspelt name: wrong whatever completes it
                raise ConfigError(f"distill: student: {_without_prefix(exc)}") from None
            self._student_error = _without_prefix(exc)
        self.seed_offset = count_option(
            seed_offset, "distill: seed_offset", minimum=0, maximum=SEED_LIMIT
        )

    def resolved_options(self) -> dict[str, Any]:
        """The options whose default the mode decides, as this method runs with them; one its
        mode (or ``weights``, ``decay``) leaves without effect stays ``None``, and so does
        ``temperature`` left to the teachers (what a run directory records,
        :mod:`ctxrl.resolution`)."""
        decided = {
            "weights": self.weights,
            "scale": self.scale,
            "coef": self.coef,
            "decay": self.decay,
            "half_life": self.half_life,
            "proxy_steps": self.proxy_steps,
        }
        return {k: None if k in self._without_effect else v for k, v in decided.items()}

    def check(self, algorithm: Any, env: Any) -> None:
        """``start: best-teacher`` copies a source into the student: the sources must be
        batched-ppo's and their networks (widths, activation) the student's (checked before
        the sources train). Such a student trains with the sources' interventions too."""
        del env
        if self._unused_options:
            raise ConfigError(self._unused_options)
        try:
            trainer = self._students_trainer(algorithm)
        except CtxrlError as exc:
            raise ConfigError(f"distill: student: {_without_prefix(exc)}") from None
        if self._student_error is not None and not isinstance(algorithm, BatchedPPO):
            raise ConfigError(f"distill: student: {self._student_error}")
        if self.start != "best-teacher":
            return
        if not isinstance(algorithm, BatchedPPO):
            name = getattr(algorithm, "name", type(algorithm).__name__)
            raise ConfigError(
                f"distill: start 'best-teacher' copies a source's actor and critic into the "
                f"student: it needs batched-ppo sources, not {name!r} ones (use start "
                "'scratch': any batched policies teach)"
            )
        student, source = trainer.config, algorithm.config
        for name, mine, theirs in (
            ("hidden", hidden_widths(student), hidden_widths(source)),  # 64 is [64, 64]
            ("activation", student.activation, source.activation),
        ):
            if mine != theirs:
                raise ConfigError(
                    f"distill: start 'best-teacher' copies a source into the student, whose "
                    f"{name} {getattr(student, name)!r} differs from the sources' "
                    f"{getattr(source, name)!r} (student: {{{name}: ...}})"
                )

    def check_contexts(
        self, sources: Sequence[Mapping[str, float]], targets: Sequence[Mapping[str, float]]
    ) -> None:
        """A context-conditioned policy (``conditioned``'s student, ``proxy``'s proxy) learns
        how acting changes with the context: refuse, before the sources train, contexts that
        do not differ (the proxy's sources; the conditioned student's sources and targets)."""
        if self.mode not in ("conditioned", "proxy"):
            return
        seen = list(sources) if self.mode == "proxy" else [*sources, *targets]
        if len({tuple(sorted(dict(c).items())) for c in seen}) < 2:
            which = "proxy's sources" if self.mode == "proxy" else "sources and targets"
            where = ", ".join(f"{f}={v:g}" for f, v in dict(seen[0] if seen else {}).items())
            raise ConfigError(
                f"distill: mode {self.mode!r} trains a context-conditioned policy, which needs "
                f"contexts that differ; the {which} are one context ({where}): vary a feature, "
                "or use mode 'dagger' or 'kickstart'"
            )

    def _student_params(self, algorithm: Any) -> dict[str, Any]:
        """The students' hyperparameters: PPO sources' own, where the options do not say
        otherwise; the options alone with other sources."""
        if isinstance(algorithm, BatchedPPO):
            return {**asdict(algorithm.config), **self.student}
        return dict(self.student)

    def _students_trainer(self, algorithm: Any) -> BatchedPPO:
        """A trainer with the students' hyperparameters (what their networks and iterations
        are: the sources' where the options are silent, with PPO sources)."""
        return BatchedPPO(self._student_params(algorithm))

    def transfer(self, problem: TransferProblem) -> TransferResult:
        if self._unused_options:
            raise ConfigError(self._unused_options)
        sources = problem.sources
        if isinstance(sources, list):  # sources trained one run at a time
            sources = stack_teachers(sources)
        if not problem.source_seeds:
            raise CtxrlError("distillation needs at least one teacher (got no source)")
        # the teachers' zero-shot returns: best-of-K next to the students, and the
        # "transfer" weights (their episodes are target-env steps too, counted below)
        zero_shot = evaluate_sources(problem)  # (P, Q, E)
        groups: dict[int, list[int]] = {}  # seed -> its sources' rows
        for row, seed in enumerate(problem.source_seeds):
            groups.setdefault(int(seed), []).append(row)
        p, q = len(problem.source_contexts), len(problem.targets)
        returns = np.empty((p, q, problem.episodes), dtype=np.float64)
        per_seed: dict[int, dict[str, Any]] = {}
        for seed, rows in groups.items():
            # a seed's students are taught by that seed's sources only: the seeds stay
            # independent replicates of the whole experiment
            checkpoint = problem.checkpoint
            if checkpoint is not None and len(groups) > 1:
                checkpoint = checkpoint.with_name(f"{checkpoint.name}-seed{seed}")
            own, per_seed[seed] = self._distill_seed(
                problem,
                dataclasses.replace(
                    sources.select(rows),
                    contexts=[dict(problem.source_contexts[i]) for i in rows],
                ),
                seed,
                zero_shot[rows],
                checkpoint,
            )
            returns[rows] = own[None]
        details = next(iter(per_seed.values()))
        if len(per_seed) > 1:
            shared = ("mode", "start", "students", "proxy_source_env_steps", "steps_per_student")
            details = {
                **{key: details[key] for key in (*shared, "temperature")},
                "rows": "each seed's rows hold the same student per target, made from that "
                "seed's sources",
                "zero_shot_target_env_steps": details["zero_shot_target_env_steps"],
                "seeds": {str(seed): d for seed, d in per_seed.items()},
                "summary": "; ".join(f"seed {s}: {d['summary']}" for s, d in per_seed.items()),
            }
            for d in per_seed.values():
                for key in (*shared, "rows", "temperature", "zero_shot_target_env_steps"):
                    d.pop(key)
        # per student: its training, plus the teachers' episodes on its target when they
        # chose the weights (an upper bound: every episode counted at its time limit)
        trained = self._students_trainer(problem.algorithm).trained_steps(self.steps)
        zero_shot_steps = details["zero_shot_target_env_steps"]
        used = trained + (zero_shot_steps if self.weights == "transfer" else 0)
        if self.weights == "transfer":
            details["target_env_steps_at_most"] = True
        return TransferResult(returns, target_env_steps=used, details=details)

    def _distill_seed(
        self,
        problem: TransferProblem,
        teachers: Any,
        seed: int,
        zero_shot: np.ndarray,
        checkpoint: Path | None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The students of one seed, taught by ``teachers`` (that seed's K sources, with
        their contexts) whose zero-shot returns on the targets are ``zero_shot`` ``(K, Q,
        E)``; ``checkpoint``: where their training checkpoints. Returns each student's returns
        on its own target ``(Q, E)`` and the seed's details."""
        from ctxrl_plugins.training.evaluation import evaluate_policies

        k, q = len(teachers), len(problem.targets)
        student = self._student_params(problem.algorithm)
        device = str(problem.algorithm.device)
        targets = [dict(t) for t in problem.targets]
        seeds = [student_seed(seed, self.seed_offset, j) for j in range(q)]
        if self.mode == "proxy":
            weights = None  # the proxy teaches; the sources are not weighted
        elif self.weights == "distance":
            weights = distance_weights(problem.env, targets, teachers.contexts, scale=self.scale)
        elif self.weights == "transfer":
            weights = transfer_weights(problem.env, zero_shot.mean(axis=2), scale=self.scale)
        else:
            weights = np.full((q, k), 1.0 / k)

        def on_own_targets(students: Any) -> np.ndarray:
            """Student ``q`` on target ``q``: ``(Q, E)`` returns."""
            returns = evaluate_policies(
                students,
                problem.env,
                [[t] for t in targets],
                episodes=problem.episodes,
                seed=problem.eval_seed,
                device=students.params["actor.0.weight"].device,
                per_policy=True,
            )
            return np.asarray(returns[:, 0])

        # a sweep killed while the students train continues from their checkpoint
        saving: dict[str, Any] = {} if checkpoint is None else {"checkpoint": checkpoint}
        saving["progress"] = problem.progress  # the students' training, on the sweep's bar
        if self.mode == "conditioned":
            assert weights is not None
            # one student for every target, the target visible, in one program
            students, student_env = distill_conditioned(
                problem.env,
                teachers,
                targets,
                seeds[:1],
                steps=self.steps,
                weights=weights,
                **saving,
                temperature=self.temperature,
                student=student,
                device=device,
            )
            own = evaluate_policies(
                students,
                student_env,
                targets,
                episodes=problem.episodes,
                seed=problem.eval_seed,
                device=students.params["actor.0.weight"].device,
            )[0]  # (Q, E)
        elif self.mode == "proxy":
            students, _ = distill_proxy(
                problem.env,
                teachers,
                targets,
                seeds,
                steps=self.steps,
                proxy_steps=self.proxy_steps,
                temperature=self.temperature,
                student=student,
                device=device,
                **saving,
            )
            own = on_own_targets(students)
        else:
            assert weights is not None
            students = distill_students(
                problem.env,
                teachers,
                targets,
                seeds,
                steps=self.steps,
                mode=self.mode,
                weights=weights,
                temperature=self.temperature,
                coef=self.coef,
                decay=self.decay,
                half_life=self.half_life,
                student=student,
                device=device,
                start=self.start,
                **saving,
                # a student that starts as its teacher continues the teacher's network and its
                # training (the sweep's interventions: layer-norm, crelu, ...), as fine-tune does
                **(problem.training_options if self.start == "best-teacher" else {}),
            )
            own = on_own_targets(students)
        limit = problem.env.max_episode_steps or 0
        log = students.log
        diagnostics = {
            name: np.asarray(log.diagnostics[name][-1], dtype=np.float64).tolist()
            for name in ("heldout_kl", "heldout_agreement", "distill_kl")
            if log is not None and name in log.diagnostics
        }
        details: dict[str, Any] = {
            "mode": self.mode,
            "start": self.start,
            "rows": "every row holds the same student per target (one student from all sources)",
            "students": 1 if self.mode == "conditioned" else q,
            "proxy_source_env_steps": self.proxy_steps if self.mode == "proxy" else 0,
            # what each student trained: whole iterations, at least one (not `steps` as given)
            "steps_per_student": self._students_trainer(problem.algorithm).trained_steps(
                self.steps
            ),
            "student_mean": own.mean(axis=1).tolist(),
            "zero_shot_mean": zero_shot.mean(axis=2).tolist(),
            "best_of_k_zero_shot": zero_shot.mean(axis=2).max(axis=0).tolist(),
            "teacher_weights": None if weights is None else weights.tolist(),
            "temperature": teacher_temperature(teachers, self.temperature),
            # the proxy (a policy) teaches the students at its own
            **(
                {"proxy_temperature": 1.0 if self.temperature is None else self.temperature}
                if self.mode == "proxy"
                else {}
            ),
            "final_diagnostics": diagnostics,
            "zero_shot_target_env_steps": k * problem.episodes * limit,  # all on one target
        }
        details["summary"] = self._summary(own, zero_shot, diagnostics.get("heldout_agreement"))
        return own, details

    def _summary(
        self, own: np.ndarray, zero_shot: np.ndarray, agreement: list[float] | None
    ) -> str:
        """One line: the students' mean return on their targets (``own``: ``(Q, E)``) against
        best-of-P zero-shot (``zero_shot``: ``(P, Q, E)``) and their held-out action
        agreement (one value per student), over the students whose returns are finite: a
        diverged student's agreement (argmax of NaN) is no measure of anything."""
        q, p = own.shape[0], zero_shot.shape[0]
        finite = np.isfinite(own).all(axis=1)  # (Q,): per target, its student's returns
        best = zero_shot.mean(axis=2).max(axis=0)  # (Q,)
        if not finite.any():
            return f"all {q} {self.mode} students diverged (returns not finite)"
        text = (
            f"{self.mode} students' mean return {own[finite].mean():.1f} on {q} targets against "
            f"best-of-{p} zero-shot {best.mean():.1f}"
            if finite.all()
            else f"{q - int(finite.sum())} of {q} {self.mode} students diverged (returns not "
            f"finite); the other {int(finite.sum())}: mean return {own[finite].mean():.1f} "
            f"against best-of-{p} zero-shot {best[finite].mean():.1f}"
        )
        if agreement is not None:
            values = np.asarray(agreement, dtype=np.float64)
            if values.size == q:  # one student per target
                values = values[finite]
            elif not finite.all():  # one student for every target, and it diverged somewhere
                values = values[:0]
            if values.size and np.isfinite(values).all():
                text += f", held-out action agreement {float(values.mean()):.2f}"
        return text


STUDENT_SEED_STRIDE = 2**32
"""How far apart the seeds of one source seed's students are (:func:`student_seed`)."""


def student_seed(seed: int, offset: int, target: int) -> int:
    """The seed of the student for target index ``target`` made from the sources of seed
    ``seed``: ``seed + offset + target * 2**32``. Its own for every (seed, target) of a sweep
    whose seeds are below 2**32 (``seed + offset + target`` gave seed 0's student for target 1
    the seed of seed 1's for target 0), and a function of its seed alone, so a seed's students
    do not depend on the sweep's other seeds."""
    return int(seed) + int(offset) + int(target) * STUDENT_SEED_STRIDE


def _without_prefix(exc: Exception) -> str:
    return str(exc).removeprefix("algorithm.params: ")


__all__ = ["Distill"]
