"""One-hot M-LIF neuron: the invariants of algorithms.md §5.8 (items 1-4, 6, 7) and the module contract."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from multispike.kernels.registry import get_kernel
from multispike.neurons.base import reset_net
from multispike.neurons.if_lif import lif_multistep
from multispike.neurons.mlif import (MLIF_SURROGATES, OneHotMLIF, mlif_closed_form, mlif_lanes, mlif_multistep,
                                     mlif_payload)
from multispike.neurons.surrogate import Sigmoid, Triangle

EXACT = dict(atol=0.0, rtol=0.0)
RESETS = [("soft", True), ("soft", False), ("hard", True)]   # (reset, reset_leak): code, paper, hard


def _shape(name, gamma=0.3, alpha=4.0):
    return Triangle(gamma=gamma, form="diet") if name == "triangle" else Sigmoid(alpha=alpha)


# ------------------------------------------------------------------------------------ a literal reference
def _lane_rule(r: float, S: int, bounds: str, fire_ge: bool) -> int:
    """Index of the fired lane (-1: none), written as the inequalities of §5.1 one lane at a time."""
    fired = r >= 1 if fire_ge else r > 1
    if not fired:
        return -1
    for s in range(S - 1):
        hi = 2.0 ** (s + 1)
        inside = (r < hi) if bounds == "floor" else (r <= hi)
        if inside:
            return s
    return S - 1


def _reference(x, S, theta, beta, reset, reset_leak, bounds="paper", fire_ge=False, scaled=False,
               decay_input=False):
    """Scalar loops over every element: the update equations of §5.2 read literally."""
    T, n = x.shape[0], x[0].numel()
    flat = x.reshape(T, n).tolist()
    unit = 2.0 ** -(S - 1) if scaled else 1.0
    out = [[0.0] * n for _ in range(T)]
    for i in range(n):
        u, prev_out = 0.0, 0.0
        for t in range(T):
            if reset == "soft" and not reset_leak:
                u = beta * u + flat[t][i] - theta * prev_out          # MLIF-P eq. (6)
            elif decay_input:
                u = u + (flat[t][i] - u) * (1 - beta)                 # SpikingJelly LIF, τ = 1/(1 − β)
            else:
                u = beta * u + flat[t][i]
            s = _lane_rule(u / (theta * unit), S, bounds, fire_ge)
            o = 0.0 if s < 0 else unit * 2.0 ** s
            out[t][i] = o
            if reset == "hard":
                u = 0.0 if s >= 0 else u
            elif reset_leak:
                u = u - theta * o
            prev_out = o
    return torch.tensor(out, dtype=x.dtype).reshape(x.shape)


@pytest.mark.parametrize("reset,reset_leak,decay_input", [(r, leak, False) for r, leak in RESETS]
                         + [("soft", True, True), ("hard", True, True)])
@pytest.mark.parametrize("S,bounds,scaled", [(1, "paper", False), (3, "paper", False), (4, "floor", False),
                                             (3, "paper", True)])
def test_dynamics_match_literal_reference(reset, reset_leak, decay_input, S, bounds, scaled):
    g = torch.Generator().manual_seed(S * 7 + len(reset))
    x = torch.randn(7, 3, 5, generator=g, dtype=torch.float64) * 1.5 + 1.0
    y, _, _ = mlif_multistep(x, lanes=S, v_threshold=0.6, leak=0.75, reset=reset, reset_leak=reset_leak,
                             lane_bounds=bounds, scaled=scaled, decay_input=decay_input)
    want = _reference(x, S, 0.6, 0.75, reset, reset_leak, bounds, scaled=scaled, decay_input=decay_input)
    assert_close(y, want, atol=1e-12, rtol=0)


def test_hand_worked_paper_and_code_forms():
    x = torch.tensor([[3.0], [3.0], [3.0]])
    # code form, β = 1: u = 3 -> o = 2, v = 1; u = 4 -> 2, v = 2; u = 5 -> 4, v = 1
    y, st_, _ = mlif_multistep(x, lanes=3, reset_leak=True)
    assert y.flatten().tolist() == [2.0, 2.0, 4.0] and st_.v.item() == 1.0
    # paper form, β = 0.5: u1 = 3 -> 2; u2 = 1.5 + 3 − 2 = 2.5 -> 2; u3 = 1.25 + 3 − 2 = 2.25 -> 2
    y, st_, _ = mlif_multistep(x, lanes=3, leak=0.5, reset_leak=False)
    assert y.flatten().tolist() == [2.0, 2.0, 2.0]
    # code form, β = 0.5: v1 = 1, m2 = 3.5 -> 2, v2 = 1.5, m3 = 3.75 -> 2
    y, _, _ = mlif_multistep(x, lanes=3, leak=0.5, reset_leak=True)
    assert y.flatten().tolist() == [2.0, 2.0, 2.0]
    # hard reset: the membrane restarts from 0 after every spike
    y, st_, _ = mlif_multistep(torch.tensor([[0.6], [0.6], [5.0]]), lanes=3, reset="hard")
    assert y.flatten().tolist() == [0.0, 1.0, 4.0] and st_.v.item() == 0.0


# ------------------------------------------------------------------------------------ §5.8 item 1: S = 1 is LIF
@pytest.mark.parametrize("reset,reset_leak", RESETS)
@pytest.mark.parametrize("beta", [1.0, 0.8])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("shape", ["triangle", "sigmoid"])
def test_single_lane_equals_lif_forward_and_backward(reset, reset_leak, beta, detach_reset, shape):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 4, 6, generator=g, dtype=torch.float64) * 1.2 + 0.6
    w = torch.randn(8, 4, 6, generator=g, dtype=torch.float64)
    wv = torch.randn(4, 6, generator=g, dtype=torch.float64)

    def run(fn):
        x = x0.clone().requires_grad_(True)
        theta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        leak = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
        y, state, v_seq = fn(x, theta, leak)
        (y * w).sum().add((state.v * wv).sum()).backward()
        return y.detach(), v_seq.detach(), x.grad, theta.grad, leak.grad

    def mlif(x, theta, leak):
        y, state, extras = mlif_multistep(x, lanes=1, v_threshold=theta, leak=leak, reset=reset,
                                          reset_leak=reset_leak, surrogate="paper_difference", shape=shape,
                                          gamma=0.3, alpha=4.0, detach_reset=detach_reset, store_v_seq=True)
        return y, state, extras.v_seq

    def lif(x, theta, leak):
        return lif_multistep(x, v_threshold=theta, leak=leak, leak_mode="post_reset",
                             v_reset=None if reset == "soft" else 0.0, reset_leak=reset_leak, fire_ge=False,
                             surrogate=_shape(shape), surrogate_form="normalized", detach_reset=detach_reset,
                             payload="spike", store_v_seq=True)

    got, want = run(mlif), run(lif)
    assert got[0].sum() > 0 and (got[0] == 0).any()          # both regimes occur
    # Bitwise equal, except that LIF's hard reset m·(1−s) + V_r·s adds a zero-valued V_r·s term whose
    # gradient changes the floating-point summation order of ∂/∂s.
    tol = dict(atol=1e-14, rtol=1e-14) if reset == "hard" and not detach_reset else EXACT
    for a, b in zip(got, want):
        assert_close(a, b, **tol)


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_single_lane_decay_input_equals_spikingjelly_lif(reset, detach_reset):
    # SDT / MLIF-C transformers: SpikingJelly LIF, τ = 2 (β = 0.5), sigmoid α = 4
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(8, 3, 5, generator=g, dtype=torch.float64) * 2 + 1
    w = torch.randn(8, 3, 5, generator=g, dtype=torch.float64)

    def run(fn):
        x = x0.clone().requires_grad_(True)
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        y = fn(x, theta)
        (w * y).sum().backward()
        return y.detach(), x.grad, theta.grad

    got = run(lambda x, th: mlif_multistep(x, lanes=1, v_threshold=th, leak=0.5, decay_input=True, reset=reset,
                                           reset_leak=True, shape="sigmoid", alpha=4.0,
                                           detach_reset=detach_reset)[0])
    want = run(lambda x, th: lif_multistep(x, v_threshold=th, tau=2.0, leak_mode="decay_input",
                                           v_reset=None if reset == "soft" else 0.0, fire_ge=False,
                                           surrogate=Sigmoid(4.0), surrogate_form="normalized",
                                           detach_reset=detach_reset)[0])
    assert got[0].sum() > 0
    tol = dict(atol=1e-14, rtol=1e-14) if reset == "hard" and not detach_reset else EXACT
    for a, b in zip(got, want):
        assert_close(a, b, **tol)


def test_single_lane_module_matches_lif_neuron_module():
    from multispike.neurons.if_lif import LIFNeuron
    x = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(0)) + 0.8
    m = OneHotMLIF(lanes=1, v_threshold=0.7, leak=0.9, reset_leak=True)
    lif = LIFNeuron(decay=0.9, leak_mode="post_reset", v_reset=None, v_threshold=0.7, fire_ge=False,
                    surrogate_function=Triangle(0.3, form="diet"), surrogate_form="normalized", step_mode="m")
    assert_close(m(x), lif(x), **EXACT)


# ------------------------------------------------------------------------------------ §5.8 item 2: payloads
@settings(max_examples=30, deadline=None)
@given(S=st.integers(1, 6), bounds=st.sampled_from(["paper", "floor"]), fire_ge=st.booleans(),
       reset=st.sampled_from(RESETS), scaled=st.booleans(), seed=st.integers(0, 10_000),
       spread=st.floats(0.5, 40.0))
def test_payload_is_zero_or_power_of_two_and_one_hot(S, bounds, fire_ge, reset, scaled, seed, spread):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 7, generator=g) * spread + spread / 4
    y, _, extras = mlif_multistep(x, lanes=S, v_threshold=0.8, reset=reset[0], reset_leak=reset[1],
                                  lane_bounds=bounds, fire_ge=fire_ge, scaled=scaled, return_lanes=True)
    unit = 2.0 ** -(S - 1) if scaled else 1.0
    allowed = torch.tensor([0.0] + [unit * 2.0 ** s for s in range(S)])
    assert torch.isin(y, allowed).all()
    lanes = extras.lanes_seq
    assert lanes.shape == (5, 3, S, 7)
    assert torch.isin(lanes, torch.tensor([0.0, 1.0])).all() and (lanes.sum(2) <= 1).all()
    weights = (unit * 2.0 ** torch.arange(S, dtype=torch.float32)).view(1, 1, S, 1)
    assert_close((lanes * weights).sum(2), y, **EXACT)


# ------------------------------------------------------------------------------------ §5.8 item 3: closed form
@pytest.mark.parametrize("S", [1, 2, 3, 5])
@pytest.mark.parametrize("bounds", ["paper", "floor"])
@pytest.mark.parametrize("fire_ge", [False, True])
def test_closed_form_equals_lane_rule_on_dense_grid(S, bounds, fire_ge):
    # multiples of 1/64 hit every edge 2^k exactly and stay >= 1/64 away from it otherwise
    r = torch.arange(-64, 64 * 2 ** (S + 1) + 1, dtype=torch.float64) / 64
    assert_close(mlif_payload(r, S, lane_bounds=bounds, fire_ge=fire_ge),
                 mlif_closed_form(r, S, lane_bounds=bounds, fire_ge=fire_ge), **EXACT)
    lanes = mlif_lanes(r, S, lane_bounds=bounds, fire_ge=fire_ge)
    expected = torch.tensor([_lane_rule(v, S, bounds, fire_ge) for v in r.tolist()])
    assert_close(lanes.argmax(1).where(lanes.sum(1) > 0, torch.tensor(-1)), expected, **EXACT)


def test_lane_boundary_conventions_at_the_edges():
    r = torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 8.0])
    assert mlif_payload(r, 3, lane_bounds="paper").tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert mlif_payload(r, 3, lane_bounds="floor").tolist() == [0.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    assert mlif_payload(r, 3, lane_bounds="floor", fire_ge=True).tolist()[0] == 1.0
    assert mlif_payload(r, 3, lane_bounds="paper", fire_ge=True).tolist()[:3] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------ §5.8 item 4: surrogates
def _g(u, theta, k, shape):
    """g_k(u) of §5.3 written directly in u and θ."""
    z = u / (2 ** k * theta) - 1
    if shape == "triangle":
        return 0.3 / (2 ** k * theta) * torch.clamp(1 - z.abs(), min=0)
    s = torch.sigmoid(4.0 * z)
    return 4.0 / (2 ** k * theta) * s * (1 - s)


def _analytic_merged(u, theta, S, surrogate, shape):
    if surrogate == "fast_unscaled":      # Σ_i c_i h'(u/θ − 2^i)/θ, c_0 = 1, c_i = 2^{i−1}
        total = torch.zeros_like(u)
        for i in range(S):
            z = u / theta - 2 ** i
            h = 0.3 * torch.clamp(1 - z.abs(), min=0) if shape == "triangle" else \
                4.0 * torch.sigmoid(4.0 * z) * (1 - torch.sigmoid(4.0 * z))
            total = total + (1.0 if i == 0 else 2.0 ** (i - 1)) * h / theta
        return total
    factor = 1.0 if surrogate == "paper_difference" else 3.0
    return _g(u, theta, 0, shape) + sum(factor * 2 ** (s - 1) * _g(u, theta, s, shape) for s in range(1, S))


@pytest.mark.parametrize("S", [2, 3, 4, 5])
@pytest.mark.parametrize("surrogate", MLIF_SURROGATES)
@pytest.mark.parametrize("shape", ["triangle", "sigmoid"])
def test_telescoped_surrogate_equals_per_lane_sum_and_analytic_curve(S, surrogate, shape):
    theta = torch.tensor(0.7, dtype=torch.float64)
    u = torch.linspace(-1.0, 2 ** (S + 1) * 0.7, 2001, dtype=torch.float64)
    kw = dict(lanes=S, surrogate=surrogate, shape=shape, gamma=0.3, alpha=4.0)
    u1 = u.clone().requires_grad_(True)
    mlif_payload(u1 / theta, **kw).sum().backward()
    u2 = u.clone().requires_grad_(True)
    lanes = mlif_lanes((u2 / theta).unsqueeze(0), **kw)[0]
    (lanes * (2.0 ** torch.arange(S, dtype=torch.float64)).view(S, 1)).sum().backward()
    assert_close(u1.grad, u2.grad, atol=1e-13, rtol=1e-13)
    assert_close(u1.grad, _analytic_merged(u, theta, S, surrogate, shape), atol=1e-13, rtol=1e-12)
    assert u1.grad.abs().max() > 0


@pytest.mark.parametrize("surrogate", ["paper_difference", "code_sum"])
def test_each_lane_has_its_window_derivative(surrogate):
    S, theta = 4, 1.3
    u = torch.linspace(-0.5, 2 ** S * theta * 1.5, 1501, dtype=torch.float64)
    for s in range(S):
        x = u.clone().requires_grad_(True)
        mlif_lanes((x / theta).unsqueeze(0), S, surrogate=surrogate)[0, s].sum().backward()
        sign = -1.0 if surrogate == "paper_difference" else 1.0
        want = _g(u, theta, s, "triangle") + (sign * _g(u, theta, s + 1, "triangle") if s < S - 1 else 0.0)
        assert_close(x.grad, want, atol=1e-13, rtol=1e-12)


def test_forward_is_identical_for_every_surrogate_choice():
    x = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(1)) * 3
    outs = [mlif_multistep(x, lanes=3, surrogate=s, shape=sh)[0] for s in MLIF_SURROGATES
            for sh in ("triangle", "sigmoid")]
    for y in outs[1:]:
        assert_close(y, outs[0], **EXACT)


# ------------------------------------------------------------------------------------ θ gradient
def _smooth_payload(r, S, surrogate, shape):
    """A smooth function whose r-derivative is the merged window derivative (primitive of each edge)."""
    sign = 1.0 if surrogate == "code_sum" else -1.0
    w = [2.0 ** s for s in range(S)]
    total = torch.zeros_like(r)
    for k in range(S):
        c = w[0] if k == 0 else w[k] + sign * w[k - 1]
        if surrogate == "fast_unscaled":
            total = total + c * shape.primitive(r - 2.0 ** k)
        else:
            total = total + c * shape.primitive(r / 2.0 ** k - 1)
    return total


@pytest.mark.parametrize("surrogate", MLIF_SURROGATES)
@pytest.mark.parametrize("shape_name", ["triangle", "sigmoid"])
def test_threshold_gradient_matches_finite_differences_of_the_window(surrogate, shape_name):
    # d/dθ of the smoothed window Σ_k c_k P_k(u/θ) must equal autograd's θ-gradient of the spike function
    S, shape = 3, _shape(shape_name)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(400, generator=g, dtype=torch.float64) * 2 ** (S + 1) - 0.5
    theta0 = 0.9
    r0 = u / theta0
    kinks = torch.tensor([0.0] + [2.0 ** k for k in range(S + 1)] + [2.0 ** k - 1 for k in range(S)]
                         + [2.0 ** k + 1 for k in range(S)], dtype=torch.float64)
    u = u[((r0.unsqueeze(1) - kinks).abs() > 1e-3).all(1)]        # away from the triangle's corners
    w = torch.randn(u.shape, generator=g, dtype=torch.float64)
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    (w * mlif_payload(u / theta, S, surrogate=surrogate, shape=shape)).sum().backward()
    h = 1e-6
    f = lambda th: (w * _smooth_payload(u / th, S, surrogate, shape)).sum()
    fd = (f(theta0 + h) - f(theta0 - h)) / (2 * h)
    assert theta.grad.abs() > 1e-3
    assert_close(theta.grad, fd, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("reset_leak", [True, False])
def test_threshold_gradient_through_reset_matches_finite_differences(reset_leak):
    # A trajectory that stays outside every window support (r >= 2^S after each input) has zero surrogate
    # terms, so the θ-gradient is the exact derivative of the forward through the soft reset.
    S = 3
    x = torch.full((6, 2, 3), 40.0, dtype=torch.float64) + torch.arange(6, dtype=torch.float64).view(6, 1, 1)
    w = torch.linspace(-1, 1, 6 * 2 * 3, dtype=torch.float64).view(6, 2, 3)

    def loss(theta):
        y, state, extras = mlif_multistep(x, lanes=S, v_threshold=theta, leak=0.9, reset_leak=reset_leak,
                                          store_v_seq=True)
        return (w * extras.v_seq).sum() + state.v.sum(), y

    theta = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    value, y = loss(theta)
    assert (y == 4.0).all()
    value.backward()
    h = 1e-5
    fd = (loss(torch.tensor(1.1 + h, dtype=torch.float64))[0] - loss(torch.tensor(1.1 - h, dtype=torch.float64))[0]) / (2 * h)
    assert_close(theta.grad, fd, atol=1e-7, rtol=1e-7)


# ------------------------------------------------------------------------------------ §5.8 item 6: T = 1
@pytest.mark.parametrize("S", [1, 2, 3, 4])
def test_single_step_layer_equals_two_to_the_c(S):
    theta = 0.75
    u = torch.arange(-64, 64 * 2 ** (S + 2), dtype=torch.float64) / 64
    nrn = OneHotMLIF(lanes=S, v_threshold=theta, learnable_threshold=False).double()
    y = nrn(u.view(1, 1, -1)).flatten()
    expected = []
    for v in u.tolist():
        if v <= theta:
            expected.append(0.0)
            continue
        x = math.ceil(math.log2(v / theta)) - 1
        expected.append(2.0 ** (S - 1 if x >= S - 1 else x))
    assert_close(y, torch.tensor(expected, dtype=torch.float64), **EXACT)


# ------------------------------------------------------------------------------------ §5.8 item 7: scaled
@pytest.mark.parametrize("S", [1, 2, 3, 4])
@pytest.mark.parametrize("reset,reset_leak", RESETS)
def test_scaled_equals_rescaled_unscaled(S, reset, reset_leak):
    g = torch.Generator().manual_seed(S)
    x0 = torch.randn(6, 3, 4, generator=g, dtype=torch.float64) * 1.5 + 0.5
    w = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    c = 2.0 ** -(S - 1)

    def run(scaled, theta_value):
        x = x0.clone().requires_grad_(True)
        theta = torch.tensor(theta_value, dtype=torch.float64, requires_grad=True)
        y, state, _ = mlif_multistep(x, lanes=S, v_threshold=theta, leak=0.8, reset=reset, reset_leak=reset_leak,
                                     scaled=scaled, return_lanes=True)
        (w * y).sum().backward()
        return y.detach(), x.grad, theta.grad

    ys, gxs, gts = run(True, 1.2)
    yu, gxu, gtu = run(False, 1.2 * c)
    assert_close(ys, c * yu, **EXACT)
    assert_close(gxs, c * gxu, atol=1e-13, rtol=1e-13)
    assert_close(gts, c * c * gtu, atol=1e-13, rtol=1e-13)
    assert ys.max() <= 1.0


# ------------------------------------------------------------------------------------ module contract
def test_dropout_mask_is_fixed_over_time_and_per_lane():
    torch.manual_seed(0)
    nrn = OneHotMLIF(lanes=3, v_threshold=1.0, leak=0.0, reset="hard", dropout=0.5, store_lanes=True)
    # no leak memory + constant input: the same lane fires at every step, so the output must be constant in t
    u = torch.tensor([0.5, 1.5, 3.0, 6.0]).repeat(16).view(1, 16, 4).expand(5, 16, 4).contiguous()
    nrn.train()
    y = nrn(u)
    assert_close(y, y[:1].expand_as(y), **EXACT)
    mask = nrn.dropout_mask
    assert mask.shape == (16, 3, 4) and torch.isin(mask, torch.tensor([0.0, 2.0])).all()
    lane = nrn.lanes_seq[0].argmax(1)                           # [16, 4]
    fired = nrn.lanes_seq[0].sum(1) > 0
    expected = torch.where(fired, 2.0 ** lane * mask.gather(1, lane.unsqueeze(1)).squeeze(1), torch.zeros(()))
    assert_close(y[0], expected, **EXACT)
    assert (y[0][fired] == 0).any() and (y[0][fired] != 0).any()
    # a second call without reset keeps the mask; reset() draws a new one; eval mode has no dropout
    y2 = nrn(u)
    assert_close(y2, y, **EXACT)
    nrn.reset()
    assert nrn.dropout_mask is None
    nrn.eval()
    assert_close(nrn(u), mlif_multistep(u, lanes=3, leak=0.0, reset="hard")[0], **EXACT)


def test_varying_lanes_use_their_own_mask_entries():
    torch.manual_seed(1)
    nrn = OneHotMLIF(lanes=3, reset="hard", dropout=0.3, store_lanes=True)
    u = torch.tensor([1.5, 3.0, 6.0, 1.5, 6.0]).view(5, 1, 1).expand(5, 64, 2).contiguous()
    y = nrn(u)
    lane = nrn.lanes_seq.argmax(2)                              # [5, 64, 2]
    mask = nrn.dropout_mask.unsqueeze(0).expand(5, 64, 3, 2)
    assert_close(y, 2.0 ** lane * mask.gather(2, lane.unsqueeze(2)).squeeze(2), **EXACT)


def test_single_step_loop_equals_multi_step_and_reset_restores_initial_state():
    x = torch.randn(6, 2, 3, 4, generator=torch.Generator().manual_seed(2)) * 2 + 1
    kw = dict(lanes=3, v_threshold=0.8, leak=0.9, dropout=0.25, v_init=0.3, store_lanes=True, store_v_seq=True)
    torch.manual_seed(7)
    m = OneHotMLIF(**kw)
    y_m = m(x)
    lanes_m, v_m = m.lanes_seq, m.v_seq
    torch.manual_seed(7)
    s = OneHotMLIF(step_mode="s", **kw)
    y_s, lanes_s, v_s = [], [], []
    for t in range(x.shape[0]):
        y_s.append(s(x[t]))
        lanes_s.append(s.lanes_seq[0])
        v_s.append(s.v_seq[0])
    assert_close(torch.stack(y_s), y_m, **EXACT)
    assert_close(torch.stack(lanes_s), lanes_m, **EXACT)
    assert_close(torch.stack(v_s), v_m, **EXACT)
    m.eval()
    reset_net(m)
    assert m.v is None and m.lanes_seq is None
    first = m(x)
    reset_net(m)
    assert_close(m(x), first, **EXACT)
    assert_close(first, mlif_multistep(x, lanes=3, v_threshold=0.8, leak=0.9, v_init=0.3)[0], **EXACT)


def test_statistics_protocol():
    x = torch.randn(4, 8, 5, generator=torch.Generator().manual_seed(3)) * 4
    for scaled in (False, True):
        nrn = OneHotMLIF(lanes=4, scaled=scaled, store_lanes=True)
        y = nrn(x)
        assert nrn.lanes == 4 and nrn.levels == 8
        events = (nrn.lanes_seq * (2.0 ** torch.arange(4.0)).view(1, 1, 4, 1)).sum(2)
        assert_close(nrn.spike_events(y), events, **EXACT)
        assert_close(nrn.active_lanes(y), nrn.lanes_seq.sum(2), **EXACT)


def test_learnable_parameters_receive_gradients_and_kernel_is_registered():
    assert get_kernel("mlif", "torch") is mlif_multistep
    nrn = OneHotMLIF(lanes=3, v_threshold=0.5, leak=0.9)
    assert isinstance(nrn.v_threshold, torch.nn.Parameter) and isinstance(nrn.leak, torch.nn.Parameter)
    x = (torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(4)) + 1).requires_grad_(True)
    nrn(x).sum().backward()
    assert nrn.v_threshold.grad.abs() > 0 and nrn.leak.grad.abs() > 0 and x.grad.abs().sum() > 0
    fixed = OneHotMLIF(learnable_threshold=False, learnable_leak=False)
    assert not list(fixed.parameters()) and "v_threshold" in dict(fixed.named_buffers())


def test_per_channel_threshold_broadcasts():
    theta = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1)
    nrn = OneHotMLIF(lanes=2, v_threshold=theta)
    x = torch.full((1, 2, 3, 2, 2), 1.5)
    assert nrn(x)[0, 0, :, 0, 0].tolist() == [2.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("lanes", [0, -1, 1.5, True, "3"])
def test_bad_lane_count_is_a_clear_error(lanes):
    with pytest.raises(ValueError, match="lanes"):
        OneHotMLIF(lanes=lanes)
    with pytest.raises(ValueError, match="lanes"):
        mlif_multistep(torch.ones(2, 3), lanes=lanes)


@pytest.mark.parametrize("kwargs,match", [
    (dict(v_threshold=0.0), "v_threshold"), (dict(v_threshold=-1.0), "v_threshold"),
    (dict(v_threshold=float("nan")), "v_threshold"), (dict(v_threshold=torch.tensor([1.0, -0.5])), "v_threshold"),
    (dict(reset="subtract"), "reset"), (dict(lane_bounds="ceil"), "lane_bounds"),
    (dict(surrogate="difference"), "surrogate"), (dict(surrogate_shape="atan"), "surrogate shape"),
    (dict(gamma=0.0), "gamma"), (dict(surrogate_shape="sigmoid", alpha=-1.0), "alpha"),
    (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"), (dict(leak=1.5), "leak"),
    (dict(step_mode="x"), "step_mode"), (dict(decay_input=True), "decay_input"),
])
def test_bad_module_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OneHotMLIF(**kwargs)


def test_bad_function_inputs():
    x = torch.ones(3, 2, 4)
    with pytest.raises(ValueError, match="v_threshold"):
        mlif_multistep(x, v_threshold=0.0)
    with pytest.raises(ValueError, match="v_threshold"):
        mlif_multistep(x, v_threshold=torch.tensor(-2.0))
    with pytest.raises(ValueError, match="reset"):
        mlif_multistep(x, reset="zero")
    with pytest.raises(ValueError, match="decay_input"):
        mlif_multistep(x, decay_input=True, reset="soft", reset_leak=False)
    with pytest.raises(ValueError, match="lane_mask"):
        mlif_multistep(x, lanes=3, lane_mask=torch.ones(2, 2, 4))
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        mlif_multistep(torch.ones(4), lanes=3)
    with pytest.raises(ValueError, match="backend"):
        OneHotMLIF(backend="nonexistent")(x)
    nrn = OneHotMLIF(dropout=0.5)
    nrn(x)
    with pytest.raises(ValueError, match="reset_net"):
        nrn(torch.ones(3, 5, 4))


# ----------------------------------------------------------------------------------------------- payload scale
@pytest.mark.parametrize("scaled", [False, True])
def test_payload_scale_multiplies_the_output_only(scaled):
    x = torch.randn(4, 16, 6, generator=torch.Generator().manual_seed(11)) * 3
    c = torch.tensor(0.37)
    bare = OneHotMLIF(lanes=3, v_threshold=0.8, scaled=scaled, backend="torch")
    paid = OneHotMLIF(lanes=3, v_threshold=0.8, scaled=scaled, payload_scale=c, backend="torch")
    y0, y1 = bare(x), paid(x)
    assert_close(y1, y0 * c, atol=0, rtol=0)
    assert_close(paid.v, bare.v, atol=0, rtol=0)               # same dynamics: the reset is still θ·o
    assert_close(paid.spike_events(y1), bare.spike_events(y0), atol=1e-6, rtol=0)
    assert_close(paid.active_lanes(y1), bare.active_lanes(y0), atol=0, rtol=0)
    assert paid.payload_unit == pytest.approx(float(c) * bare.unit)
    assert "payload_scale" in paid.state_dict() and "payload_scale" not in bare.state_dict()


def test_payload_scale_per_channel_learnable_and_its_gradient():
    x = torch.randn(1, 8, 3, 2, 2, generator=torch.Generator().manual_seed(12)) * 2
    c0 = torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1)
    n = OneHotMLIF(lanes=3, payload_scale=c0, learnable_payload_scale=True, backend="torch")
    assert isinstance(n.payload_scale, torch.nn.Parameter)
    y = n(x)
    y.sum().backward()
    bare = OneHotMLIF(lanes=3, backend="torch")(x).detach()
    # d(Σ c·o)/dc = Σ o per channel
    assert_close(n.payload_scale.grad, bare.sum(dim=(0, 1, 3, 4)).view(3, 1, 1), atol=1e-6, rtol=0)


def test_payload_scale_checkpoints_and_validation():
    src = OneHotMLIF(lanes=2, payload_scale=0.25)
    dst = OneHotMLIF(lanes=2)                                   # built bare: adopts the checkpoint's scale
    dst.load_state_dict(src.state_dict())
    assert float(dst.payload_scale) == 0.25
    old = OneHotMLIF(lanes=2)                                   # a checkpoint from before payload scales
    OneHotMLIF(lanes=2).load_state_dict(old.state_dict())
    dst.set_payload_scale(None)
    assert dst.payload_scale is None and "payload_scale" not in dst.state_dict()
    with pytest.raises(ValueError, match="payload_scale"):
        OneHotMLIF(payload_scale=0.0)
    with pytest.raises(ValueError, match="payload_scale"):
        OneHotMLIF(payload_scale=float("nan"))
    with pytest.raises(ValueError, match="learnable_payload_scale"):
        OneHotMLIF(learnable_payload_scale=True)
