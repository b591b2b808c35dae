"""IF/LIF core: the invariants of algorithms.md §1.4, step-mode equivalence, surrogates, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import multispike as ms
from multispike.layers import DirectEncoder, MeanOverTime, SeqToANNContainer, to_time_major
from multispike.neurons import IFNeuron, LIFNeuron, lif_multistep, reset_net, set_step_mode
from multispike.neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle, get_surrogate

torch.set_default_dtype(torch.float32)


def exact(a, b):
    assert_close(a, b, atol=0.0, rtol=0.0)


# ---------------------------------------------------------------- §1.4 item 1: the QCFS identity
@pytest.mark.parametrize("T", [1, 2, 3, 4, 8, 16])
def test_if_half_threshold_constant_input_counts_equal_rounded_rate(T):
    theta = 1.0
    c = torch.linspace(-0.5, 1.5, 2001, dtype=torch.float64)
    x = c.expand(T, -1).clone()
    s, _, _ = lif_multistep(x, v_threshold=theta, v_init=theta / 2, fire_ge=True)
    expected = torch.clamp(torch.floor(T * c / theta + 0.5), 0, T)
    exact(s.sum(0), expected)


@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_if_identity_with_non_unit_threshold(T):
    theta = 0.375  # dyadic grid: the test must not depend on rounding of values sitting exactly on a tie
    c = torch.arange(-512, 1537, dtype=torch.float64) / 1024 * theta
    s, _, _ = lif_multistep(c.expand(T, -1).clone(), v_threshold=theta, v_init=theta / 2)
    exact(s.sum(0), torch.clamp(torch.floor(T * c / theta + 0.5), 0, T))


# ---------------------------------------------------------------- item 2: charge conservation
@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 12), theta=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_soft_reset_charge_conservation(T, theta, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 3, 5, generator=g, dtype=torch.float64)
    v0 = torch.rand(3, 5, generator=g, dtype=torch.float64) * theta
    s, state, _ = lif_multistep(x, v_threshold=theta, v_init=v0)
    assert_close(state.v, v0 + x.sum(0) - theta * s.sum(0), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- item 3: boundedness
@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 16), theta=st.floats(0.05, 4.0), seed=st.integers(0, 10_000))
def test_soft_reset_membrane_stays_in_zero_theta(T, theta, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(T, 64, generator=g, dtype=torch.float64) * theta * 0.999
    v0 = torch.rand(64, generator=g, dtype=torch.float64) * theta * 0.999
    _, _, v_seq = lif_multistep(x, v_threshold=theta, v_init=v0, store_v_seq=True)
    assert bool((v_seq >= 0).all()) and bool((v_seq < theta).all())


def test_hard_reset_membrane_below_threshold_after_firing():
    x = torch.rand(10, 500, dtype=torch.float64) * 3
    s, _, v_seq = lif_multistep(x, v_threshold=1.0, v_reset=0.0, store_v_seq=True)
    assert bool((v_seq < 1.0).all())
    exact(v_seq[s.bool()], torch.zeros(int(s.sum()), dtype=torch.float64))


# ---------------------------------------------------------------- item 4: surrogates
SURROGATE_CASES = [
    (Rectangular(alpha=1.0), 1.0), (Rectangular(alpha=0.5), 1.0), (Triangle(form="tet"), 1.0),
    (Triangle(gamma=0.5, form="tet"), 1.0), (Triangle(gamma=0.3, form="diet"), 0.3), (Sigmoid(alpha=4.0), 1.0),
    (ATan(alpha=2.0), 1.0),
]


@pytest.mark.parametrize("sg,area", SURROGATE_CASES, ids=lambda v: repr(v))
def test_surrogate_integrates_to_stated_area(sg, area):
    x = torch.linspace(-200, 200, 4_000_001, dtype=torch.float64)
    integral = torch.trapezoid(sg.derivative(x), x).item()
    # atan' has heavy 1/x² tails beyond ±200; the rectangle's jumps cost one grid step (1e-4) at each edge
    tol = 2e-3 if isinstance(sg, ATan) else 5e-4
    assert abs(integral - area) < tol
    assert sg.area == pytest.approx(area)


@pytest.mark.parametrize("sg,area", SURROGATE_CASES, ids=lambda v: repr(v))
def test_surrogate_autograd_equals_analytic_derivative(sg, area):
    x = torch.linspace(-3, 3, 1201, dtype=torch.float64).requires_grad_()
    y = sg(x)
    exact(y.detach(), (x.detach() >= 0).double())
    (g,) = torch.autograd.grad(y.sum(), x)
    exact(g, sg.derivative(x.detach()))
    # the primitive's derivative is the surrogate (checked by autograd on the smooth function)
    xp = x.detach().clone().requires_grad_()
    (gp,) = torch.autograd.grad(sg.primitive(xp).sum(), xp)
    mask = (xp.detach().abs() - 0.5 * sg.alpha).abs() > 1e-6  # skip the rectangle's two corners
    assert_close(gp[mask], sg.derivative(x.detach())[mask], atol=1e-9, rtol=1e-9)


def test_triangle_both_argument_forms():
    m = torch.tensor([0.5, 1.0, 1.2], dtype=torch.float64)
    theta = 1.0
    tet = Triangle(gamma=1.0, form="tet").derivative(m - theta)
    exact(tet, torch.clamp(1.0 - (m - theta).abs(), min=0))
    diet = Triangle(gamma=0.3, form="diet").derivative(m / theta - 1)
    exact(diet, 0.3 * torch.clamp(1 - (m / theta - 1).abs(), min=0))


def test_forward_is_identical_for_every_surrogate():
    x = torch.randn(6, 4, 7)
    outs = [lif_multistep(x, v_threshold=0.3, surrogate=sg)[0] for sg, _ in SURROGATE_CASES]
    for o in outs[1:]:
        exact(o, outs[0])


def test_normalized_form_gives_threshold_gradient_difference_form_does_not():
    x = torch.rand(4, 10, dtype=torch.float64) * 2
    for form, expect_grad in (("normalized", True), ("difference", False)):
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        y, _, _ = lif_multistep(x, v_threshold=theta, v_reset=0.0, surrogate=Sigmoid(), surrogate_form=form,
                                detach_reset=True)
        if y.requires_grad:
            y.sum().backward()
        assert (theta.grad is not None and bool(theta.grad.abs() > 0)) == expect_grad


def test_surrogate_registry_and_errors():
    assert isinstance(get_surrogate("atan"), ATan)
    with pytest.raises(ValueError, match="unknown surrogate"):
        get_surrogate("nope")
    with pytest.raises(ValueError, match="alpha"):
        Sigmoid(alpha=-1)


# ---------------------------------------------------------------- item 5: step modes and reset
NEURON_FACTORIES = [
    lambda: IFNeuron(v_threshold=0.7, v_init=0.35),
    lambda: IFNeuron(v_threshold=1.0, v_reset=0.0, fire_ge=False),
    lambda: LIFNeuron(tau=2.0),
    lambda: LIFNeuron(tau=3.0, leak_mode="decay_state", v_reset=None),
    lambda: LIFNeuron(decay=0.5, leak_mode="post_reset", v_reset=0.0, fire_ge=False),
    lambda: LIFNeuron(decay=0.8, leak_mode="post_reset", v_reset=None, reset_leak=False),
    lambda: LIFNeuron(decay=0.9, leak_mode="post_reset", v_reset=None, learnable_leak=True, learnable_threshold=True,
                      surrogate_form="normalized", surrogate_function=Triangle(form="diet")),
]


@pytest.mark.parametrize("factory", NEURON_FACTORIES)
def test_single_step_loop_equals_multi_step_and_reset_replays(factory):
    torch.manual_seed(0)
    x = torch.randn(7, 3, 4, 5)
    multi = factory()
    multi.step_mode = "m"
    single = factory()
    single.load_state_dict(multi.state_dict())
    y_m = multi(x)
    y_s = torch.stack([single(xt) for xt in x])
    exact(y_m, y_s)
    exact(multi.v, single.v)
    # continuing from state: two half sequences equal one full sequence
    multi.reset()
    y_a = torch.cat([multi(x[:3]), multi(x[3:])])
    exact(y_a, y_m)
    multi.reset()
    exact(multi(x), y_m)
    assert multi.v is not None
    multi.reset()
    assert multi.v is None


def test_gradients_equal_between_step_modes():
    torch.manual_seed(1)
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    grads = []
    for mode in ("m", "s"):
        # the reference function in both modes: the fused kernel's gradients agree to ~1e-10, not bitwise
        n = LIFNeuron(decay=0.7, leak_mode="post_reset", v_reset=None, learnable_threshold=True,
                      surrogate_form="normalized", backend="torch").double()
        n.step_mode = mode
        xi = x.clone().requires_grad_()
        y = n(xi) if mode == "m" else torch.stack([n(t) for t in xi])
        (y * torch.arange(1, 7, dtype=torch.float64)).sum().backward()
        grads.append((xi.grad, n.v_threshold.grad))
    exact(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1], atol=1e-12, rtol=0)


def test_reset_leak_false_is_diet_paper_form():
    # u(t) = β u(t-1) + I(t) − θ s(t-1), u = pre-reset membrane
    beta, theta = 0.6, 1.0
    x = torch.rand(9, 50, dtype=torch.float64) * 1.5
    s, _, _ = lif_multistep(x, v_threshold=theta, leak=beta, reset_leak=False, fire_ge=False)
    u, s_prev, ref = torch.zeros(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64), []
    for t in range(9):
        u = beta * u + x[t] - theta * s_prev
        s_prev = (u > theta).double()
        ref.append(s_prev)
    exact(s, torch.stack(ref))


def test_decay_input_matches_spikingjelly_equation():
    tau = 2.0
    x = torch.rand(6, 20, dtype=torch.float64) * 3
    s, _, _ = lif_multistep(x, leak_mode="decay_input", tau=tau, v_reset=0.0)
    v, ref = torch.zeros(20, dtype=torch.float64), []
    for t in range(6):
        h = v + (x[t] - v) / tau
        spk = (h >= 1.0).double()
        v = h * (1 - spk)
        ref.append(spk)
    exact(s, torch.stack(ref))


def test_payload_threshold_emits_theta_times_spike():
    x = torch.rand(4, 30)
    s, _, _ = lif_multistep(x, v_threshold=0.4, payload="spike")
    y, _, _ = lif_multistep(x, v_threshold=0.4, payload="threshold")
    exact(y, 0.4 * s)


def test_neuron_state_not_in_state_dict_and_module_roundtrip():
    n = IFNeuron(v_threshold=2.0, v_init=1.0, step_mode="m")
    n(torch.rand(3, 2, 4))
    sd = n.state_dict()
    assert set(sd) == {"v_threshold", "v_init"}
    m = IFNeuron(step_mode="m")
    m.load_state_dict(sd)
    assert float(m.v_threshold) == 2.0 and float(m.v_init) == 1.0


# ---------------------------------------------------------------- shapes (property-based)
@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), T=st.integers(1, 6),
       theta=st.floats(0.05, 5.0))
def test_any_trailing_shape_and_binary_outputs(shape, T, theta):
    x = torch.randn(T, *shape)
    n = IFNeuron(v_threshold=theta, step_mode="m")
    y = n(x)
    assert y.shape == x.shape
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- containers / helpers
def test_containers_encoder_readout():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 5, 2, 6, 6)
    y = SeqToANNContainer(conv)(x)
    exact(y, torch.stack([conv(t) for t in x]))
    enc = DirectEncoder(3)(torch.randn(2, 4))
    assert enc.shape == (3, 2, 4) and bool((enc[0] == enc[2]).all())
    exact(MeanOverTime()(x), x.mean(0))
    bt = torch.randn(2, 5, 3)
    exact(to_time_major(bt, "BT"), bt.transpose(0, 1))
    with pytest.raises(ValueError, match="layout"):
        to_time_major(bt, "??")


def test_reset_net_and_set_step_mode():
    net = torch.nn.Sequential(SeqToANNContainer(torch.nn.Linear(4, 4)), IFNeuron(), LIFNeuron())
    set_step_mode(net, "m")
    assert net[1].step_mode == "m" and net[2].step_mode == "m"
    net(torch.randn(3, 2, 4))
    reset_net(net)
    assert net[1].v is None and net[2].v is None


# ---------------------------------------------------------------- bad input
def test_bad_input_errors_are_clear():
    n = IFNeuron(step_mode="m")
    with pytest.raises(ValueError, match=r"time-major \[T, B, \.\.\.\]"):
        n(torch.randn(5))
    with pytest.raises(ValueError, match="T \\(dim 0"):
        n(torch.randn(0, 3))
    with pytest.raises(ValueError, match="v_threshold"):
        IFNeuron(v_threshold=0.0)
    with pytest.raises(ValueError, match="v_threshold"):
        IFNeuron(v_threshold=float("nan"))
    with pytest.raises(ValueError, match="step_mode"):
        IFNeuron(step_mode="x")
    with pytest.raises(ValueError, match="T must be >= 1"):
        DirectEncoder(0)
    with pytest.raises(ValueError, match="leak_mode"):
        LIFNeuron(leak_mode="nope")
    with pytest.raises(ValueError, match="reset_leak=False"):
        LIFNeuron(leak_mode="decay_input", reset_leak=False, v_reset=None)
    with ms.input_checks():
        with pytest.raises(ValueError, match="non-finite"):
            n(torch.tensor([[float("nan")]]))
    n.reset()
    n(torch.tensor([[float("nan")]]))  # checks are off by default (no cost on the hot path)


def test_docstring_examples_run():
    import doctest

    import importlib
    for name in ("multispike.neurons.if_lif", "multispike.quant.qcfs"):
        m = importlib.import_module(name)
        result = doctest.testmod(m, verbose=False)
        assert result.failed == 0 and result.attempted > 0
