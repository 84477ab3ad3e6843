"""The plasticity interventions of issue 14: each passes InterventionContract, and unit tests on
hand-made views of small networks (with the trainers' own Adam) check each against its formula,
each test failing on a deliberately wrong implementation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
import torch

from ctxrl import ConfigError
from ctxrl.interventions import Intervention, NetworkSpec, TrainingView
from ctxrl.plugins import get_host
from ctxrl.rng import StreamRNG
from ctxrl.testing import InterventionContract
from ctxrl_plugins.interventions.common import initial_gain
from ctxrl_plugins.training.networks import StackedMLP, stack_agents
from ctxrl_plugins.training.optimizer import AgentAdam

Tensor = torch.Tensor


# ------------------------------------------------------------------------ contracts
class TestReDo(InterventionContract):
    intervention_name = "redo"
    # recycle often, with a threshold that catches units within the contract's short budgets
    options: ClassVar[dict[str, Any]] = {"every": 10, "tau": 0.5}


class TestContinualBackprop(InterventionContract):
    intervention_name = "continual-backprop"
    options: ClassVar[dict[str, Any]] = {"replacement_rate": 0.05, "maturity": 5}


class TestResetAtSwitches(InterventionContract):
    intervention_name = "reset"


class TestFullResetEveryK(InterventionContract):
    intervention_name = "reset"
    options: ClassVar[dict[str, Any]] = {"layers": "all", "every": 10, "at_switch": False}


class TestSpectralReg(InterventionContract):
    intervention_name = "spectral-reg"
    options: ClassVar[dict[str, Any]] = {"coef": 1e-2}


class TestNonStationaryAdam(InterventionContract):
    intervention_name = "ns-adam"


class TestParseval(InterventionContract):
    intervention_name = "parseval"


class TestWassersteinInit(InterventionContract):
    intervention_name = "wasserstein-init"


class TestShrinkPerturbAtSwitches(InterventionContract):
    intervention_name = "shrink-perturb"
    options: ClassVar[dict[str, Any]] = {"when": "switch"}


# ------------------------------------------------------------------------ hand-made views
def _build(name: str, **options: Any) -> Intervention:
    return cast(Intervention, get_host().registry.intervention(name).factory(**options))


def _network(
    agents: int = 2, hidden: tuple[int, ...] = (4, 4), activation: str = "relu", **spec: Any
) -> tuple[StackedMLP, dict[str, Tensor]]:
    """A ``q`` network on 3 inputs with 2 outputs, built and initialised as the trainers do."""
    net = StackedMLP(
        "q",
        NetworkSpec(hidden=hidden, activation=activation, **spec),  # type: ignore[arg-type]
        3,
        {"head": (2, 1.0)},
    )
    per_agent = [net.init_agent(torch.Generator().manual_seed(s)) for s in range(agents)]
    return net, stack_agents(per_agent, torch.device("cpu"))


def _view(
    net: StackedMLP, params: dict[str, Tensor], mask: list[float] | None = None
) -> tuple[SimpleNamespace, AgentAdam]:
    """A view over ``params`` with the trainers' Adam after two steps on random gradients (so
    every moment is non-zero)."""
    n = next(iter(params.values())).shape[0]
    initial = {k: v.clone() for k, v in params.items()}
    optimizer = AgentAdam(params, lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        optimizer.zero_grad()
        for g in optimizer.gradients().values():
            g.copy_(torch.randn(g.shape, generator=generator))
        optimizer.step()
    view = SimpleNamespace(
        params=params,
        initial_params=initial,
        layers={"q": net.layers},
        init_gains=net.init_gains,
        optimizer=optimizer,
        activations={},
        gradients=optimizer.gradients(),
        frozen={},
        mask=torch.tensor(mask if mask is not None else [1.0] * n),
        rng=StreamRNG(torch.arange(n)),
        num_agents=n,
        env_steps=0,
        iteration=0,
        device=torch.device("cpu"),
    )
    return view, optimizer


def _snapshot(view: SimpleNamespace, optimizer: AgentAdam) -> dict[str, Tensor]:
    out = {k: v.detach().clone() for k, v in view.params.items()}
    for name in view.params:
        for key, value in optimizer.moments(name).items():
            out[f"{name}.{key}"] = value.clone()
    return out


# ------------------------------------------------------------------------------ ReDo
def _dormant_activations(n: int) -> dict[str, Tensor]:
    """Activations ``(N, M, 4)`` of ``q.0`` / ``q.1`` with known dormant units: in ``q.0``
    agent 0's unit 1 is silent (score 0) and unit 3 has score 0.19; agent 1's unit 2 is silent.
    ``q.1`` has no dormant unit."""
    m = 5
    a0 = torch.ones(n, m, 4)
    a0[0, :, 1] = 0.0
    a0[0, :, 3] = 0.1  # a low score, 4 * 0.1 / 2.1, but not silent
    a0[1, :, 2] = 0.0
    return {"q.0": a0, "q.1": torch.full((n, m, 4), 0.5)}


@pytest.mark.parametrize("mode", ["none", "moments", "moments_and_step"])
def test_redo_recycles_exactly_the_dormant_units(mode: str) -> None:
    net, params = _network()
    view, optimizer = _view(net, params)
    view.activations = _dormant_activations(2)
    redo = _build("redo", every=1, tau=0.0, optimizer_reset=mode)
    redo.setup(cast(TrainingView, view))
    before = _snapshot(view, optimizer)
    redo.after_update(cast(TrainingView, view))
    after = _snapshot(view, optimizer)
    recycled = {(0, 1), (1, 2)}  # tau = 0: only the silent units (score 0 <= 0)
    for agent in range(2):
        for unit in range(4):
            hit = (agent, unit) in recycled
            incoming = after["q.0.weight"][agent, :, unit]
            assert torch.equal(incoming, before["q.0.weight"][agent, :, unit]) != hit
            outgoing = after["q.1.weight"][agent, unit]
            assert torch.equal(
                outgoing, torch.zeros(4) if hit else before["q.1.weight"][agent, unit]
            )
            # Adam: every reset elements' moments are zero unless the option is "none"
            for key in ("exp_avg", "exp_avg_sq"):
                m_in = after[f"q.0.weight.{key}"][agent, :, unit]
                m_out = after[f"q.1.weight.{key}"][agent, unit]
                zeroed = hit and mode != "none"
                assert bool((m_in == 0).all()) == zeroed, (agent, unit, key)
                assert bool((m_out == 0).all()) == zeroed, (agent, unit, key)
            assert float(after["q.0.bias"][agent, unit]) == (
                0.0 if hit else float(before["q.0.bias"][agent, unit])
            )
    # no other layer moved
    for name in ("q.head.weight", "q.head.bias", "q.1.bias"):
        assert torch.equal(after[name], before[name]), name
    # the step count restarts for the reset elements only with moments_and_step
    if mode == "moments_and_step":
        assert optimizer.steps is not None
        steps = optimizer.view(optimizer.steps, "q.0.weight")
        assert bool((steps[0, :, 1] == 0).all()) and bool((steps[0, :, 0] == 2).all())
    else:
        assert optimizer.steps is None


@pytest.mark.parametrize(("recycled", "injected"), [("q.0", 1), ("q.0", 2), ("q.1", 1), ("q.1", 2)])
def test_recycling_under_plasticity_injection_leaves_the_output_unchanged(
    recycled: str, injected: int
) -> None:
    """Injection's frozen copies of the block read the units before it too: ReDo zeroed the
    live reader's rows only, so the recycled unit's fresh signal reached the output through
    ``old - fresh`` (by up to 2.2 after the block had drifted). A unit inside the block is
    read by the copies' own layers, whose rows must stay."""
    net, params = _network(hidden=(6, 6), injections=1, injected_layers=injected)
    view, optimizer = _view(net, params)
    for name in net.frozen_names:
        optimizer.freeze(name, torch.ones(2, dtype=torch.bool))
    injection = _build("plasticity-injection", layers=injected)
    injection.setup(view)
    injection.on_context_switch(view, torch.tensor([True, True]))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the live block drifts from its fresh copy, as training moves it
        for name, value in view.params.items():
            if ".injection" not in name and name.endswith(".weight"):
                value.add_(0.3 * torch.randn(value.shape, generator=generator))
        view.params[f"{recycled}.bias"][:, 0] = -100.0  # unit 0 is dead: never active
    x = torch.randn(2, 50, 3, generator=generator)
    record: dict[str, Tensor] = {}
    with torch.no_grad():
        before = net.outputs(view.params, x, record=record)[0]
    assert float(record[recycled][:, :, 0].abs().max()) == 0.0
    view.activations = record
    redo = _build("redo", every=1, tau=0.0)
    redo.setup(view)
    redo.after_update(view)
    assert float(redo.recycled.sum()) >= 2  # unit 0 of both agents at least
    with torch.no_grad():
        after = net.outputs(view.params, x)[0]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_redo_threshold_is_inclusive_and_fresh_weights_have_the_init_scale() -> None:
    net, params = _network(hidden=(64, 4))
    view, optimizer = _view(net, params, mask=[1.0, 0.0])
    acts = torch.ones(2, 5, 64)
    acts[:, :, :8] = 0.0  # 8 silent units, score 0
    acts[:, :, 8] = 0.05  # score 0.05 / mean
    view.activations = {"q.0": acts, "q.1": torch.ones(2, 5, 4)}
    score = 0.05 / float(acts[0].mean(dim=0).mean())
    redo = _build("redo", every=2, tau=score)
    redo.setup(cast(TrainingView, view))
    before = _snapshot(view, optimizer)
    redo.after_update(cast(TrainingView, view))
    assert torch.equal(view.params["q.0.weight"], before["q.0.weight"]), "every=2: not yet"
    redo.after_update(cast(TrainingView, view))
    changed = (view.params["q.0.weight"] != before["q.0.weight"]).any(dim=1)
    # agent 0: units 0..8 (the score-tau unit included); agent 1 is masked out
    assert changed[0].tolist() == [True] * 9 + [False] * 55
    assert not changed[1].any()
    # fresh columns of an orthogonal (3, 64) matrix at gain sqrt(2): squared norm 2 * 3 / 64
    fresh = view.params["q.0.weight"][0, :, :9]
    assert abs(float(fresh.detach().square().sum(dim=0).mean()) - 2 * 3 / 64) < 0.05
    diagnostics = redo.diagnostics(cast(TrainingView, view))
    assert diagnostics["recycled"].tolist() == [9.0, 0.0]
    with pytest.raises(ConfigError, match="optimizer_reset 'all'"):
        _build("redo", optimizer_reset="all")


def test_redo_with_crelu_scores_both_halves() -> None:
    net, params = _network(activation="crelu")
    view, _ = _view(net, params)
    acts = torch.ones(2, 5, 8)
    acts[:, :, 1] = 0.0  # unit 1's positive half silent, its negative half not: not dormant
    acts[:, :, 2] = 0.0
    acts[:, :, 6] = 0.0  # unit 2 silent in both halves: dormant
    view.activations = {"q.0": acts, "q.1": torch.ones(2, 5, 8)}
    redo = _build("redo", every=1, tau=0.0)
    redo.setup(cast(TrainingView, view))
    redo.after_update(cast(TrainingView, view))
    outgoing = view.params["q.1.weight"]  # (N, 8, 4): rows 2 and 6 read unit 2
    zero_rows = (outgoing == 0).all(dim=2)
    assert zero_rows[0].tolist() == [False, False, True, False, False, False, True, False]


# ---------------------------------------------------------------- continual backprop
def test_continual_backprop_replaces_the_lowest_utility_mature_units_at_rate_rho() -> None:
    """Layer ``q.0`` (8 units) with equal outgoing magnitudes and constant activations
    ``0.1 (i + 1)`` (agent 1: reversed), maturity 2, rho 0.25: nothing until the units are
    older than 2; at step 3, 0.25 * 8 = 2 units (the two lowest); at step 4 six units are
    eligible, 1.5 accumulate: 1 unit, 0.5 kept; at step 5 five are (the three replaced units
    are young again), 0.5 + 1.25: 1 unit, 0.75 kept."""
    net, params = _network(hidden=(8, 4))
    view, optimizer = _view(net, params)
    with torch.no_grad():
        params["q.1.weight"].fill_(0.5)
    level = 0.1 * torch.arange(1, 9, dtype=torch.float32)
    acts = torch.stack([level, level.flip(0)])[:, None, :].expand(2, 5, 8).clone()
    view.activations = {"q.0": acts}  # q.1 unrecorded: left alone
    cbp = _build("continual-backprop", replacement_rate=0.25, maturity=2)
    cbp.setup(cast(TrainingView, view))
    replaced: list[list[list[int]]] = []
    for _ in range(5):
        before = view.params["q.0.weight"].detach().clone()
        cbp.after_update(cast(TrainingView, view))
        changed = (view.params["q.0.weight"] != before).any(dim=1)
        replaced.append([changed[a].nonzero().squeeze(1).tolist() for a in range(2)])
    assert replaced == [
        [[], []],
        [[], []],
        [[0, 1], [6, 7]],
        [[2], [5]],
        [[3], [4]],
    ]
    # the replaced units' outgoing weights are zero and their Adam state reset
    outgoing = view.params["q.1.weight"].detach()
    assert bool((outgoing[0, :4] == 0).all()) and bool((outgoing[0, 4:] == 0.5).all())
    assert bool((optimizer.moments("q.1.weight")["exp_avg"][0, :4] == 0).all())
    assert bool((optimizer.moments("q.1.weight")["exp_avg"][0, 4:] != 0).all())


def test_continual_backprop_leaves_the_output_unchanged_at_replacement() -> None:
    """Unit 0 of a 4-unit ReLU layer outputs a constant 2 (incoming weights 0, bias 2) through
    small outgoing weights (0.01): the lowest utility. Replaced at step 4 (maturity 3, rho
    0.25), its average output moves into the head's bias (bias-corrected running mean: exactly
    2), so the network's output is unchanged; without the bias correction, or without the
    running mean's own bias correction, it moves by ~0.02."""
    net, params = _network(agents=2, hidden=(4,))
    view, _ = _view(net, params)  # (its Adam steps move every parameter: set them after)
    with torch.no_grad():
        params["q.0.weight"][:, :, 0] = 0.0
        params["q.0.bias"][:, 0] = 2.0
        params["q.0.bias"][:, 1:] = 1.0  # the other units active on the batch
        params["q.head.weight"][:, 0] = 0.01
        params["q.head.weight"][:, 1:] = params["q.head.weight"][:, 1:].sign() * 1.0
    x = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(5))
    cbp = _build("continual-backprop", replacement_rate=0.25, maturity=3)
    cbp.setup(cast(TrainingView, view))
    for step in range(4):
        record: dict[str, Tensor] = {}
        with torch.no_grad():
            y_before = net(params, x, record)
        view.activations = record
        incoming = params["q.0.weight"].detach().clone()
        cbp.after_update(cast(TrainingView, view))
        with torch.no_grad():
            y_after = net(params, x)
        replaced = (params["q.0.weight"] != incoming).any(dim=1)
        if step < 3:
            assert not replaced.any()
        else:
            assert replaced.tolist() == [[True, False, False, False]] * 2
        torch.testing.assert_close(y_after, y_before, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="replacement_rate"):
        _build("continual-backprop", replacement_rate=2.0)


# ---------------------------------------------------------------------------- resets
def _is_orthogonal(weight: Tensor, gain: float) -> bool:
    """``(in, out)`` weights as the trainers initialise them: orthonormal rows or columns
    (whichever are fewer) times ``gain``."""
    w = weight.detach() / gain
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return bool(torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5))


def test_a_reset_after_a_warm_start_draws_at_the_initialisers_gain() -> None:
    """The gain of a fresh draw was recovered from the initial weights, which after a warm
    start are the trained source's: a reset head came back at the source's scale (norm 0.40
    where a fresh PPO actor head has 0.014). It is the trainer's own gain now."""
    net, params = _network(agents=2)
    view, _ = _view(net, params)
    with torch.no_grad():  # a warm start: initial weights of another scale than the init's
        for name in view.initial_params:
            view.initial_params[name].mul_(5.0)
    reset = _build("reset")
    reset.setup(cast(TrainingView, view))
    reset.on_context_switch(cast(TrainingView, view), torch.tensor([True, True]))
    assert _is_orthogonal(view.params["q.head.weight"][0], 1.0), "the head's own gain, 1"
    for layer, gain in net.init_gains.items():  # every layer's gain as the trainer draws it
        assert torch.equal(initial_gain(cast(TrainingView, view), layer), torch.full((2,), gain))


def test_head_reset_reinitialises_the_switched_agents_heads_only() -> None:
    net, params = _network(agents=3)
    view, optimizer = _view(net, params, mask=[1.0, 1.0, 0.0])
    reset = _build("reset")
    reset.setup(cast(TrainingView, view))
    before = _snapshot(view, optimizer)
    reset.after_update(cast(TrainingView, view))  # no periodic reset by default
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(view, optimizer).items())
    # agents 0 and 2 switch; agent 2 is masked out
    reset.on_context_switch(cast(TrainingView, view), torch.tensor([True, False, True]))
    after = _snapshot(view, optimizer)
    head = after["q.head.weight"][0]
    assert _is_orthogonal(head, 1.0), "a fresh orthogonal head at its gain (1)"
    assert not torch.equal(head, view.initial_params["q.head.weight"][0]), "fresh, not initial"
    assert bool((after["q.head.bias"][0] == 0).all())
    for key in ("exp_avg", "exp_avg_sq"):
        assert bool((after[f"q.head.weight.{key}"][0] == 0).all())
        assert bool((after[f"q.head.weight.{key}"][1:] != 0).all())
    assert optimizer.steps is not None
    steps = optimizer.view(optimizer.steps, "q.head.weight")
    assert bool((steps[0] == 0).all()) and bool((steps[1:] == 2).all())
    for name, value in after.items():
        if not name.startswith("q.head"):
            assert torch.equal(value, before[name]), f"{name}: only the heads are reset"
        assert torch.equal(value[1:], before[name][1:]), f"{name}: agents 1, 2 stay"
    assert reset.diagnostics(cast(TrainingView, view))["resets"].tolist() == [1.0, 0.0, 0.0]


def test_full_reset_every_k_updates_reinitialises_every_layer() -> None:
    net, params = _network(agents=2)
    view, optimizer = _view(net, params)
    reset = _build("reset", layers="all", every=3, at_switch=False, optimizer_reset="moments")
    reset.setup(cast(TrainingView, view))
    reset.on_context_switch(cast(TrainingView, view), torch.tensor([True, True]))
    before = _snapshot(view, optimizer)
    for _ in range(2):
        reset.after_update(cast(TrainingView, view))
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(view, optimizer).items())
    reset.after_update(cast(TrainingView, view))
    for agent in range(2):
        assert _is_orthogonal(view.params["q.0.weight"][agent], 2**0.5)
        assert _is_orthogonal(view.params["q.1.weight"][agent], 2**0.5)
        assert _is_orthogonal(view.params["q.head.weight"][agent], 1.0)
    for name in ("q.0.bias", "q.1.bias", "q.head.bias"):
        assert bool((view.params[name] == 0).all())
    assert all(bool((m == 0).all()) for m in optimizer.moments("q.0.weight").values())
    assert optimizer.steps is None, "moments: the step count is kept"
    with pytest.raises(ConfigError, match="layers 'encoder'"):
        _build("reset", layers="encoder")


def test_shrink_perturb_at_a_switch_mixes_in_a_fresh_network() -> None:
    net, params = _network(agents=2)
    view, optimizer = _view(net, params)
    sp = _build("shrink-perturb", when="switch")
    sp.setup(cast(TrainingView, view))
    before = _snapshot(view, optimizer)
    sp.after_update(cast(TrainingView, view))  # the switch form does nothing per step
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(view, optimizer).items())
    sp.on_context_switch(cast(TrainingView, view), torch.tensor([False, True]))
    for name, value in view.params.items():
        assert torch.equal(value[0], before[name][0]), f"{name}: agent 0 did not switch"
        # the defaults 0.5 / 0.5: p = 0.5 p_old + 0.5 p_fresh
        fresh = (value[1].detach() - 0.5 * before[name][1]) / 0.5
        if name.endswith("bias"):
            assert torch.allclose(fresh, torch.zeros_like(fresh), atol=1e-6), name
        else:
            gain = 1.0 if name.startswith("q.head") else 2**0.5
            assert _is_orthogonal(fresh, gain), name
    # the optimizer state is kept
    moments = optimizer.moments("q.0.weight")["exp_avg"]
    assert torch.equal(moments, before["q.0.weight.exp_avg"])
    with pytest.raises(ConfigError, match="when 'always'"):
        _build("shrink-perturb", when="always")


def test_shrink_perturb_at_a_switch_can_rebuild_the_optimizer_as_juliani_and_ash() -> None:
    """Juliani and Ash rebuild the optimizer at each shift; the switch form kept Adam's state
    with no way to do otherwise. ``optimizer_reset`` resets it for the switched agents only."""
    net, params = _network(agents=2)
    view, optimizer = _view(net, params)
    sp = _build("shrink-perturb", when="switch", optimizer_reset="moments_and_step")
    sp.setup(cast(TrainingView, view))
    before = _snapshot(view, optimizer)
    sp.on_context_switch(cast(TrainingView, view), torch.tensor([False, True]))
    for name in ("q.0.weight", "q.head.bias"):
        moments = optimizer.moments(name)
        for key in ("exp_avg", "exp_avg_sq"):
            assert bool((moments[key][1] == 0).all()), (name, key)
            assert torch.equal(moments[key][0], before[f"{name}.{key}"][0]), (name, key)
    with pytest.raises(ConfigError, match="acts at switches"):
        _build("shrink-perturb", optimizer_reset="moments")


# ---------------------------------------------------------------------- loss terms
def _single_layer(weight: Tensor) -> tuple[SimpleNamespace, dict[str, Tensor]]:
    """A view of one layer ``q.head`` with weights ``weight`` ``(N, in, out)`` (trainable)."""
    n = weight.shape[0]
    params = {
        "q.head.weight": weight.clone().requires_grad_(True),
        "q.head.bias": torch.zeros(n, weight.shape[2]),
    }
    view = SimpleNamespace(
        params=params,
        initial_params={k: v.detach().clone() for k, v in params.items()},
        layers={"q": ["q.head"]},
        mask=torch.ones(n),
        rng=StreamRNG(torch.arange(n)),
        num_agents=n,
        device=torch.device("cpu"),
    )
    return view, params


def _with_singular_values(values: list[float], rows: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=generator))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=generator))
    return cast(Tensor, u @ torch.diag(torch.tensor(values)) @ v.T)


def test_spectral_reg_drives_the_top_singular_value_to_its_target() -> None:
    """Two agents, singular values (3, 2.5, 0.5, 0.2) and (0.4, 0.3, 0.2, 0.1): gradient
    descent on the penalty alone brings sigma_max to 1 from above and from below, and leaves the
    other directions alone (a Frobenius-norm penalty would not: it would shrink them all)."""
    weight = torch.stack(
        [
            _with_singular_values([3.0, 2.5, 0.5, 0.2], 6, 0),
            _with_singular_values([0.4, 0.3, 0.2, 0.1], 6, 1),
        ]
    )
    view, params = _single_layer(weight)
    reg = _build("spectral-reg", coef=1.0)
    reg.setup(cast(TrainingView, view))
    w = params["q.head.weight"]
    for _ in range(300):
        loss = reg.loss(cast(TrainingView, view))
        assert loss is not None and loss.shape == (2,)
        (grad,) = torch.autograd.grad(loss.sum(), w)
        with torch.no_grad():
            w -= 0.01 * grad
    sigma = torch.linalg.svdvals(w.detach())
    assert torch.allclose(sigma[:, 0], torch.ones(2), atol=0.02), sigma
    # agent 0: 2.5 is the top direction once 3 came down to it and both go to 1; the small
    # directions hardly moved (one power-iteration step per update leaks a little)
    assert torch.allclose(sigma[0, 2:], torch.tensor([0.5, 0.2]), atol=0.02), sigma
    assert torch.allclose(sigma[1, 1:], torch.tensor([0.3, 0.2, 0.1]), atol=0.02), sigma
    # the gradient is coef * 2 (s^2 - 1) * 2 s * u v^T (power iteration converged)
    w2 = torch.stack([_with_singular_values([2.0, 0.5, 0.1], 4, 2)])
    view, params = _single_layer(w2)
    reg = _build("spectral-reg", coef=1.0, iterations=20)
    reg.setup(cast(TrainingView, view))
    loss = reg.loss(cast(TrainingView, view))
    assert loss is not None
    torch.testing.assert_close(loss, torch.tensor([(4.0 - 1.0) ** 2]))
    (grad,) = torch.autograd.grad(loss.sum(), params["q.head.weight"])
    u, _, vh = torch.linalg.svd(w2[0])
    expected = 2 * 3.0 * 2 * 2.0 * torch.outer(u[:, 0], vh[0])
    torch.testing.assert_close(grad[0], expected, atol=1e-4, rtol=1e-4)
    assert set(reg.state_dict()) == {"v.q.head.weight", "sigma"}


def test_parseval_is_the_units_gram_matrix_against_scale_times_identity() -> None:
    """Hidden layer ``q.0`` (3 inputs, 4 units) only: ``||W^T W - s I||^2`` with W ``(in,
    out)``, the 4 x 4 Gram matrix of the units' incoming weights (the 3 x 3 one, ``W W^T``,
    would give another value)."""
    net, params = _network()
    view, _ = _view(net, params)
    parseval = _build("parseval", coef=0.5, scale=2.0)
    parseval.setup(cast(TrainingView, view))
    w = params["q.0.weight"].detach()
    w1 = params["q.1.weight"].detach()
    expected = 0.5 * sum(
        (x.transpose(1, 2) @ x - 2.0 * torch.eye(4)).square().sum(dim=(1, 2)) for x in (w, w1)
    )
    loss = parseval.loss(cast(TrainingView, view))
    assert loss is not None
    torch.testing.assert_close(loss, expected)
    with_heads = _build("parseval", include_heads=True)
    with_heads.setup(cast(TrainingView, view))
    more = with_heads.loss(cast(TrainingView, view))
    head = params["q.head.weight"].detach()
    head_term = 1e-3 * (head.transpose(1, 2) @ head - torch.eye(2)).square().sum(dim=(1, 2))
    assert more is not None
    hidden_terms = sum(
        (x.transpose(1, 2) @ x - torch.eye(4)).square().sum(dim=(1, 2)) for x in (w, w1)
    )
    torch.testing.assert_close(more, 1e-3 * hidden_terms + head_term)


def test_wasserstein_init_compares_sorted_weights() -> None:
    """Zero for any permutation of the initial weights (L2-Init would not be), and the sum of
    squared differences of the sorted weights otherwise."""
    weight = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    view, params = _single_layer(weight)
    w2 = _build("wasserstein-init", coef=0.1)
    w2.setup(cast(TrainingView, view))
    with torch.no_grad():
        permuted = weight.reshape(2, -1)[:, torch.randperm(12)].reshape(2, 3, 4)
        params["q.head.weight"].copy_(permuted)
    torch.testing.assert_close(w2.loss(cast(TrainingView, view)), torch.zeros(2))
    with torch.no_grad():
        params["q.head.weight"][1].mul_(2.0)  # every weight doubled: sorted order kept
    expected = 0.1 * weight[1].square().sum()
    torch.testing.assert_close(
        w2.loss(cast(TrainingView, view)), torch.stack([0 * expected, expected])
    )


def test_ns_adam_sets_the_batch_betas_and_refuses_a_partial_mask() -> None:
    net, params = _network()
    view, optimizer = _view(net, params)
    _build("ns-adam").setup(cast(TrainingView, view))
    assert optimizer.betas == (0.99, 0.99)
    view.mask = torch.tensor([1.0, 0.0])
    with pytest.raises(ConfigError, match="every agent"):
        _build("ns-adam", beta1=0.9).setup(cast(TrainingView, view))


def test_resets_leave_frozen_layers_alone_and_restore_layer_norm() -> None:
    """A warm start froze ``q.1`` for agent 0: ReDo recycles neither its units nor (since it
    reads them) ``q.0``'s for that agent; agent 1's recycled ``q.0`` unit gets LayerNorm gain 1
    and bias 0 back. A full reset leaves agent 0's ``q.1`` as it was."""
    net, params = _network(norm="layernorm")
    view, optimizer = _view(net, params)
    view.frozen = {
        "q.1.weight": torch.tensor([True, False]),
        "q.1.bias": torch.tensor([True, False]),
    }
    acts = torch.ones(2, 5, 4)
    acts[:, :, 0] = 0.0
    view.activations = {"q.0": acts, "q.1": torch.ones(2, 5, 4)}
    before = _snapshot(view, optimizer)
    redo = _build("redo", every=1, tau=0.0)
    redo.setup(cast(TrainingView, view))
    redo.after_update(cast(TrainingView, view))
    for name in ("q.0.weight", "q.1.weight", "q.0.norm.weight", "q.head.weight"):
        assert torch.equal(view.params[name][0], before[name][0]), name
    assert not torch.equal(view.params["q.0.weight"][1], before["q.0.weight"][1])
    assert float(view.params["q.0.norm.weight"][1, 0].detach()) == 1.0
    assert float(view.params["q.0.norm.bias"][1, 0].detach()) == 0.0
    assert bool((view.params["q.1.weight"][1, 0] == 0).all()), "outgoing row of unit 0"
    reset = _build("reset", layers="all")
    reset.setup(cast(TrainingView, view))
    kept = view.params["q.1.weight"][0].detach().clone()
    reset.on_context_switch(cast(TrainingView, view), torch.tensor([True, True]))
    assert torch.equal(view.params["q.1.weight"][0], kept)
    assert not torch.equal(view.params["q.1.weight"][1], before["q.1.weight"][1])


def test_plasticity_injection_leaves_a_warm_starts_frozen_layers_alone() -> None:
    """Injection replaces the block's trainable weights with fresh ones: an agent whose block
    holds a layer a warm start froze (``freeze=['actor.1']``) is not injected, so the frozen
    layer stays the source's (it became a random draw that never trained)."""
    from ctxrl.interventions import build_interventions

    registry = get_host().registry
    env = registry.env("CartPole")

    def ppo() -> Any:
        return registry.algorithm("batched-ppo").factory({"num_steps": 64}, device="cpu")

    source = ppo().train_many(env, [{}], [0], total_steps=512)
    injection = {"at_switch": False, "at_steps": [256], "layers": 2}
    tuned = ppo().train_many(
        env,
        [{}],
        [0],
        total_steps=1024,
        init=source,
        freeze=["actor.1"],
        interventions=build_interventions(
            [{"name": "plasticity-injection", "options": injection}], registry
        ),
    )
    assert torch.equal(tuned.params["actor.1.weight"], source.params["actor.1.weight"])
    assert float(tuned.params["actor.injection0.on"].sum()) == 0.0  # not injected


def test_a_warm_start_from_an_injected_policy_keeps_its_injections() -> None:
    """Warm-started from a policy injected once, a new injection overwrote slot 0 (the setup
    counted from 0): the source's frozen copies were lost and the critic's outputs jumped by
    up to 1.7; now the used slot counts and the next injection takes slot 1. A role with a
    re-initialised layer drops the source's injections (its switch stayed on, adding the
    source's h(old) - h(fresh_0) to a fresh head)."""
    from ctxrl.interventions import build_interventions

    registry = get_host().registry
    env = registry.env("CartPole")

    def ppo() -> Any:
        return registry.algorithm("batched-ppo").factory({"num_steps": 64}, device="cpu")

    def injection(step: int) -> list[Any]:
        options = {"at_switch": False, "at_steps": [step], "max_injections": 2}
        return build_interventions([{"name": "plasticity-injection", "options": options}], registry)

    source = ppo().train_many(env, [{}], [0], total_steps=512, interventions=injection(256))
    assert float(source.params["critic.injection0.on"].sum()) == 1.0
    tuned = ppo().train_many(
        env, [{}], [0], total_steps=512, init=source, interventions=injection(256)
    )
    for name, value in source.params.items():
        if ".injection0." in name:  # the source's injection, kept
            assert torch.equal(tuned.params[name], value), name
    assert float(tuned.params["critic.injection1.on"].sum()) == 1.0  # the new one: slot 1
    fresh_head = ppo().train_many(
        env,
        [{}],
        [0],
        total_steps=512,
        init=source,
        reinit=["critic.head"],
        interventions=injection(100_000),  # never injects here
    )
    assert float(fresh_head.params["critic.injection0.on"].sum()) == 0.0
    assert float(fresh_head.params["actor.injection0.on"].sum()) == 1.0  # untouched role


# ---------------------------------------------------------------- plasticity injection
class TestPlasticityInjection(InterventionContract):
    intervention_name = "plasticity-injection"
    options: ClassVar[dict[str, Any]] = {"max_injections": 2}


class TestPlasticityInjectionAtSteps(InterventionContract):
    intervention_name = "plasticity-injection"
    options: ClassVar[dict[str, Any]] = {"at_switch": False, "at_steps": [128], "layers": 1}


def _injected_network(agents: int = 3, **options: Any) -> tuple[StackedMLP, Intervention]:
    injection = _build("plasticity-injection", **options)
    spec = injection.network("q", NetworkSpec(hidden=(4, 4), activation="relu"))
    net = StackedMLP("q", spec, 3, {"head": (2, 1.0), "value": (1, 1.0)})
    return net, injection


def test_plasticity_injection_keeps_predictions_and_the_trainable_parameter_count() -> None:
    net, injection = _injected_network(max_injections=2)
    per_agent = [net.init_agent(torch.Generator().manual_seed(s)) for s in range(3)]
    params = stack_agents(per_agent, torch.device("cpu"))
    view, optimizer = _view(net, params, mask=[1.0, 1.0, 0.0])
    with torch.no_grad():  # the view's two random Adam steps moved every parameter
        for name in net.frozen_names:
            optimizer.freeze(name, torch.ones(3, dtype=torch.bool))
            view.params[name].zero_()
            for moment in optimizer.moments(name).values():
                moment.zero_()
    injection.setup(cast(TrainingView, view))
    x = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(5))

    def outputs() -> list[Tensor]:
        with torch.no_grad():
            return net.outputs(view.params, x)

    plain = StackedMLP("q", NetworkSpec(hidden=(4, 4), activation="relu"), 3, net.heads)
    trainable = sum(v.numel() for v in plain.init_agent(torch.Generator()).values())
    frozen = set(net.frozen_names)
    assert sum(v[0].numel() for k, v in view.params.items() if k not in frozen) == trainable
    for switch in range(3):
        before, live_before = outputs(), view.params["q.1.weight"].detach().clone()
        encoder = view.params["q.0.weight"].detach().clone()
        # agents 0 and 2 switch; agent 2 is masked out
        injection.on_context_switch(cast(TrainingView, view), torch.tensor([True, False, True]))
        after = outputs()
        for b, a in zip(before, after, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # unchanged at injection
        live = view.params["q.1.weight"].detach()
        if switch < 2:
            assert not torch.equal(live[0], live_before[0]), "a fresh block for agent 0"
            assert _is_orthogonal(live[0], 2.0**0.5)
            assert torch.equal(view.params[f"q.injection{switch}.fresh.1.weight"][0], live[0]), (
                "the fresh copy is the new trainable block"
            )
            assert bool((optimizer.moments("q.1.weight")["exp_avg"][0] == 0).all())
        else:
            assert torch.equal(live, live_before), "no slot left: nothing changes"
        assert torch.equal(live[1:], live_before[1:]), "agents 1 and 2 are left alone"
        assert torch.equal(view.params["q.0.weight"], encoder), "the encoder is not injected"
        # train one step: only the trainable parameters move, the outputs then change
        frozen_before = {k: view.params[k].detach().clone() for k in frozen}
        optimizer.zero_grad()
        loss = sum(o.square().sum(dim=(1, 2)) for o in net.outputs(view.params, x))
        torch.autograd.backward(cast(Tensor, loss).sum())
        optimizer.step()
        assert all(torch.equal(view.params[k], v) for k, v in frozen_before.items())
        assert not torch.equal(outputs()[0], after[0])
    assert injection.diagnostics(cast(TrainingView, view))["injections"].tolist() == [2, 0, 0]


def test_plasticity_injection_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="never inject"):
        _build("plasticity-injection", at_switch=False)
    with pytest.raises(ConfigError, match="layers 4 is more than"):
        _build("plasticity-injection", layers=4).network("q", NetworkSpec(hidden=(4, 4)))
    with pytest.raises(ConfigError, match="max_injections"):
        _build("plasticity-injection", max_injections=0)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "reset",
            {"every": True},
            "reset: every (gradient steps) must be a whole number, got True",
        ),
        ("reset", {"every": 2.5}, "must be a whole number, got 2.5"),
        ("reset", {"at_switch": "false"}, "reset: at_switch must be true or false, got 'false'"),
        ("reset", {"at_switch": False}, "it would never reset"),
        ("l2", {"coef": float("nan")}, "l2: coef must be a finite number >= 0, got nan"),
        ("l2", {"coef": "0.1"}, "l2: coef must be a number >= 0, got '0.1'"),
        ("l2-init", {"coef": float("inf")}, "l2-init: coef must be a finite number"),
        ("redo", {"tau": float("nan")}, "redo: tau must be a finite number >= 0, got nan"),
        ("redo", {"every": True}, "redo: every (gradient steps) must be a whole number"),
        ("spectral-reg", {"iterations": 1.9}, "spectral-reg: iterations must be a whole number"),
        ("parseval", {"include_heads": "no"}, "parseval: include_heads must be true or false"),
        ("wasserstein-init", {"coef": float("nan")}, "wasserstein-init: coef must be a finite"),
        ("shrink-perturb", {"perturb": float("nan")}, "shrink-perturb: perturb must be a finite"),
        ("continual-backprop", {"maturity": 2.9}, "maturity must be a whole number, got 2.9"),
        ("continual-backprop", {"replacement_rate": True}, "replacement_rate must be a number"),
        ("continual-backprop", {"replacement_rate": 1.5}, "replacement_rate must be in [0, 1]"),
        ("plasticity-injection", {"max_injections": True}, "max_injections must be a whole"),
        ("plasticity-injection", {"at_steps": 500}, "at_steps must be a list, got 500"),
        # these trained every agent to NaN, injected into nothing, or failed with Python's
        # own comparison error naming no option
        ("spectral-reg", {"target": float("nan")}, "spectral-reg: target must be a finite"),
        ("spectral-reg", {"power": float("inf")}, "spectral-reg: power must be a finite"),
        ("spectral-reg", {"power": True}, "spectral-reg: power must be a number > 0"),
        ("spectral-reg", {"target": "1"}, "spectral-reg: target must be a number >= 0"),
        ("ns-adam", {"beta1": "0.9"}, "ns-adam: beta1 must be a number >= 0"),
        ("continual-backprop", {"decay": "0.9"}, "continual-backprop: decay must be a number"),
        ("shrink-perturb", {"when": ["step"]}, "shrink-perturb: when ['step']: expected"),
        ("plasticity-injection", {"roles": []}, "plasticity-injection: roles is empty"),
    ],
)
def test_intervention_options_of_the_wrong_kind_are_named(
    name: str, options: dict[str, Any], message: str
) -> None:
    """YAML's true is not a count, .nan passes a ``< 0`` check, ``bool("false")`` is True:
    each is refused, naming the option."""
    with pytest.raises(ConfigError) as error:
        _build(name, **options)
    assert message in str(error.value)


def test_an_injection_role_given_alone_is_one_role() -> None:
    injection = _build("plasticity-injection", roles="actor")
    assert injection.roles == ["actor"]  # type: ignore[attr-defined]


def test_continual_backprop_keeps_no_autograd_graph_in_its_state() -> None:
    """Its utilities read the live parameters; state that required grad would chain every
    update's graph (memory and time growing with training)."""
    net, params = _network(agents=2)
    view, _ = _view(net, params)
    view.activations = {
        "q.0": torch.rand(2, 5, 4, requires_grad=False),
        "q.1": torch.rand(2, 5, 4, requires_grad=False),
    }
    cbp = _build("continual-backprop", replacement_rate=0.5, maturity=0)
    cbp.setup(cast(TrainingView, view))
    for _ in range(3):
        cbp.after_update(cast(TrainingView, view))
    assert not any(value.requires_grad for value in cbp.state_dict().values())


def test_continual_backprop_keeps_a_dqn_agent_equal_to_itself_alone() -> None:
    """Its bias corrections ``eta ** age`` went through torch's ``pow(scalar, tensor)``, which
    rounds an ulp apart once a layer has 32 elements (two agents of 16 units): the agent's
    units ranked and its readers' biases differed alone and in a batch."""
    from ctxrl.interventions import build_interventions

    registry = get_host().registry
    spec = registry.env("CartPole")
    params = {
        "learning_starts": 32, "train_frequency": 4, "gradient_steps": 2, "buffer_size": 100,
        "batch_size": 16, "hidden": [16, 16], "target_network_frequency": 20,
    }  # fmt: skip
    options = {"maturity": 0, "replacement_rate": 0.5}

    def train(contexts: list[dict[str, float]], seeds: list[int]) -> Any:
        entries = [{"name": "continual-backprop", "options": options}]
        return registry.algorithm("batched-dqn").factory(params, device="cpu").train_many(
            spec, contexts, seeds, total_steps=400,
            interventions=build_interventions(entries, registry),
        )  # fmt: skip

    alone = train([{"masscart": 1.0}], [3])
    batch = train([{"masscart": 3.0}, {"masscart": 1.0}], [7, 3])
    for name, value in alone.params.items():
        assert torch.equal(value[0], batch.params[name][1]), name


def test_two_instances_of_one_intervention_keep_their_own_diagnostics() -> None:
    """Two ReDo arms with other options on different agents of one program (a study's
    shared batch) wrote one ``redo.*`` key, the last instance's values for every agent: agent
    0's recycled units were reported as the other arm's. On disjoint agents they share the
    key, each agent's value its own arm's; on the same agents the second gets its own key."""
    from ctxrl.interventions import build_interventions

    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({"num_steps": 64}, device="cpu")

    def redo(**options: Any) -> Any:
        (built,) = build_interventions([{"name": "redo", "options": options}], registry)
        return built

    first, second = redo(every=2, tau=0.5), redo(every=4, tau=0.3)
    trained = algorithm.train_many(
        env, [{}, {}], [0, 1], total_steps=1024, interventions=[(first, [0]), (second, [1])]
    )
    assert trained.log is not None
    logged = trained.log.diagnostics["redo.recycled"][-1]
    own = [
        float(first.diagnostics(None)["recycled"][0]),
        float(second.diagnostics(None)["recycled"][1]),
    ]
    assert [float(v) for v in logged] == own and own[0] != own[1]
    both = algorithm.train_many(
        env, [{}], [0], total_steps=512, interventions=[redo(every=2), redo(every=4)]
    )
    assert both.log is not None
    assert {"redo.recycled", "redo-2.recycled"} <= set(both.log.diagnostics)
