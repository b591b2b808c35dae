"""LM-HT / M-HT neurons: the invariants of algorithms.md §2.9 items 1, 2, 5, 6, step modes, layouts, errors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

import multispike.neurons.lmht as lmht_mod
from multispike.kernels.registry import get_kernel
from multispike.layers import DirectEncoder, MeanOverTime, SeqToANNContainer
from multispike.neurons import lif_multistep, reset_net, set_step_mode
from multispike.neurons.lmht import (LMHTNeuron, MHTNeuron, ReparameterizedIF, expand_tgim, lmht_multistep,
                                     mht_multistep, multilevel_fire, tgim_leak, tgim_omega, window_start_leak)
from multispike.neurons.registry import make_neuron


def exact(a, b):
    assert_close(a, b, atol=0.0, rtol=0.0)


def dyadic(gen, shape, lo, hi, denom):
    """Random multiples of 1/denom in [lo, hi]: every sum and product below stays exact in float64."""
    return torch.randint(int(lo * denom), int(hi * denom) + 1, shape, generator=gen).double() / denom


# ------------------------------------------------------------- §2.9 item 1: L = 1, Ω = I, λ = 1 is IF
@pytest.mark.parametrize("T", [1, 3, 8])
def test_single_level_identity_tgim_unit_leak_equals_if_soft_reset(T):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, 4, 3, 5, generator=g) * 2
    theta = 0.7
    v0 = torch.rand(4, 3, 5, generator=g) * theta
    y, state, v_seq = lmht_multistep(x, levels=1, omega=torch.eye(T), leak=1.0, v_threshold=theta, v_init=v0,
                                     store_v_seq=True)
    y_if, state_if, v_if = lif_multistep(x, v_threshold=theta, v_init=v0, leak=1.0, fire_ge=True, payload="threshold",
                                         store_v_seq=True)
    exact(y, y_if)
    exact(v_seq, v_if)
    exact(state.v, state_if.v)


def test_single_level_module_equals_if_module():
    from multispike.neurons import IFNeuron
    x = torch.randn(6, 8, 4, generator=torch.Generator().manual_seed(1))
    lm = LMHTNeuron(T=6, levels=1, v_threshold=0.5, v_init=0.25, tgim="identity", learnable_leak=False)
    ref = IFNeuron(v_threshold=0.5, v_init=0.25, payload="threshold", step_mode="m")
    exact(lm(x), ref(x))
    # a frozen μ with -1e4 off the diagonal gives Ω = diag(1/2) exactly (σ(-1e4) underflows to 0)
    lm_fixed = LMHTNeuron(T=2, levels=1, v_threshold=1.0, tgim="fixed", learnable_leak=False)
    lm_fixed.tgim_mu.copy_(torch.tensor([[0.0, -1e4], [-1e4, 0.0]]))   # Ω = diag(1/2, 1/2) (σ(-1e4) = 0)
    x2 = torch.rand(2, 100) * 3
    exact(lm_fixed(x2), lif_multistep(x2 / 2, v_threshold=1.0, payload="threshold")[0])


# ------------------------------------------------------------- §2.9 item 2: Lemma 4.1 (window-start leak)
def _if_windows(current, L, T, theta, lam, v0):
    """Reference: L·T IF steps with current I(t)/L per sub-step and λ at window starts (core lif_multistep)."""
    state, counts, v_ends = None, [], []
    sub = current.repeat_interleave(L, dim=0) / L
    for j in range(L * T):
        s, state, _ = lif_multistep(sub[j:j + 1], state, v_threshold=theta, v_init=v0,
                                    leak=lam if j % L == 0 else 1.0, fire_ge=True, payload="spike")
        counts.append(s[0])
        if j % L == L - 1:
            v_ends.append(state.v)
    return torch.stack(counts).view(T, L, *current.shape[1:]).sum(1), torch.stack(v_ends)


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_lemma_4_1_mht_step_equals_L_if_steps(L, T):
    g = torch.Generator().manual_seed(100 * L + T)
    theta = 1.0
    n = 1500
    q = dyadic(g, (T, n), 0, 3, 64)                  # I(t)/L on a dyadic grid, I(t) up to 3Lθ (beyond saturation)
    current = q * L
    lam = dyadic(g, (n,), 0.5 + 1 / 16, 1.5 - 1 / 16, 16)   # λ ∈ (0.5, 1.5) per neuron
    v0 = dyadic(g, (n,), 0, theta - 1 / 64, 64)      # v(0) ∈ [0, θ)
    y, _, v_seq = mht_multistep(current, levels=L, v_threshold=theta, leak=lam, v_init=v0, store_v_seq=True)
    counts_if, v_if = _if_windows(current, L, T, theta, lam, v0)
    exact(y / theta, counts_if)
    exact(v_seq, v_if)


def test_lemma_fails_for_negative_currents_as_the_spec_says():
    current = torch.tensor([[10.0], [-8.0]], dtype=torch.float64)
    y, _, _ = mht_multistep(current, levels=2, v_threshold=1.0)
    counts_if, _ = _if_windows(current, 2, 2, 1.0, 1.0, 0.0)
    assert y.flatten().tolist() == [2.0, 0.0]
    assert counts_if.flatten().tolist() == [2.0, 1.0]


@pytest.mark.parametrize("L,T", [(1, 4), (2, 3), (4, 4), (3, 2)])
def test_theorem_4_2_ii_constant_input_total_count(L, T):
    theta = 0.5
    c = torch.arange(-64, 64 * L + 64, dtype=torch.float64) / 128   # dyadic, covers < 0, [0, Lθ) and > Lθ
    v0 = 0.25
    y, _, _ = mht_multistep(c.expand(T, -1).clone(), levels=L, v_threshold=theta, v_init=v0)
    expected = torch.clamp(torch.floor((v0 + T * c) / theta), 0, L * T)
    exact((y / theta).sum(0), expected)


# ------------------------------------------------------------- §2.9 item 6: outputs in {0, θ, …, Lθ}
@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 6), T=st.integers(1, 5), theta=st.floats(0.05, 4.0), scale=st.floats(0.1, 20.0),
       rank=st.integers(0, 2), seed=st.integers(0, 10_000))
def test_outputs_are_multiples_of_theta_up_to_L(L, T, theta, scale, rank, seed):
    g = torch.Generator().manual_seed(seed)
    shape = [(T, 3, 4), (T, 2, 3, 4), (T, 2, 2, 3, 3)][rank]
    nrn = LMHTNeuron(T=T, levels=L, v_threshold=theta, v_init=float(torch.rand(1, generator=g)) * theta)
    with torch.no_grad():
        nrn.tgim_mu.normal_(generator=g)
        nrn.leak_a.normal_(generator=g)
    y = nrn(torch.randn(*shape, generator=g) * scale).detach()
    s = nrn.spike_events(y)
    assert float(s.min()) >= 0 and float(s.max()) <= L
    exact(y, s * nrn.v_threshold)                     # y is exactly θ·s with an integer s ∈ {0..L}
    exact(s, torch.floor(s))


def test_direct_training_init_threshold_is_two_over_L():
    for L in (1, 2, 4, 5):
        nrn = LMHTNeuron(T=2, levels=L)
        assert float(nrn.v_threshold) == pytest.approx(2.0 / L)
        y = nrn(torch.full((2, 3), 100.0))
        assert_close(y, torch.full((2, 3), 2.0))          # top level Lθ = 2
        exact(nrn.omega.detach(), torch.full((2, 2), 0.5))  # μ = 0 -> Ω = 1/T
        assert float(nrn.leak.detach()) == 1.0 and float(nrn.v_init) == 0.0


def test_multilevel_fire_staircase_and_ge_semantics():
    m = torch.tensor([-0.5, 0.0, 0.99, 1.0, 1.5, 2.0, 2.99, 3.0, 7.0])
    exact(multilevel_fire(m, 1.0, levels=3), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))


# ------------------------------------------------------------- T-GIM layouts and parameterisation
@pytest.mark.parametrize("shape", [(3, 2, 4, 5, 5), (3, 2, 7, 6), (3, 2, 6)])
def test_tgim_einsum_mixes_time_for_every_layout(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 3, generator=g, dtype=torch.float64)
    omega = tgim_omega(mu)
    y, _, v = lmht_multistep(x, levels=3, omega=omega, v_threshold=0.4, store_v_seq=True)
    current = torch.stack([sum(omega[t, j] * x[j] for j in range(3)) for t in range(3)])
    y_ref, _, v_ref = lmht_multistep(current, levels=3, omega=None, v_threshold=0.4, store_v_seq=True)
    exact(y, y_ref)                                   # random float64 data: no value sits on a threshold
    assert_close(v, v_ref, atol=1e-12, rtol=0)        # membranes agree to rounding of the mixing sum


def test_parameterisations_and_ranges():
    mu = torch.tensor([[-50.0, 0.0], [3.0, 50.0]])
    om = tgim_omega(mu)
    assert float(om.min()) >= 0 and float(om.max()) <= 2 / 2 and float(om[0, 1]) == 0.5
    assert float(tgim_leak(torch.tensor(0.0))) == 1.0
    assert 0.5 <= float(tgim_leak(torch.tensor(-30.0))) < 0.51 and 1.49 < float(tgim_leak(torch.tensor(30.0))) <= 1.5
    nrn = LMHTNeuron(T=4, levels=2)
    learnable = sum(p.numel() for p in nrn.parameters() if p.requires_grad)
    assert learnable == 4 * 4 + 1                                    # §2.8: T² + 1 per layer
    assert not nrn.v_threshold.requires_grad and "v_threshold" in dict(nrn.named_buffers())
    fixed = LMHTNeuron(T=4, levels=2, tgim="fixed", learnable_leak=False)
    assert sum(p.numel() for p in fixed.parameters()) == 0
    fixed.load_state_dict(nrn.state_dict())                          # same keys: a trained μ can be frozen
    exact(LMHTNeuron(T=3, tgim="uniform").omega, torch.full((3, 3), 1 / 3))
    assert LMHTNeuron(T=3, tgim="identity").omega is None


def test_expand_tgim_and_window_leak():
    om = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    big = expand_tgim(om, 3)
    assert big.shape == (6, 6)
    exact(big[0:3, 3:6], torch.full((3, 3), 0.8 / 3, dtype=torch.float64))
    assert_close(big.sum(1), om.sum(1).repeat_interleave(3))       # each row keeps the window's total weight
    exact(window_start_leak(0.75, 2, 3), torch.tensor([0.75, 1, 1, 0.75, 1, 1]))


# ------------------------------------------------------------- §2.9 item 5: gradients of ω and λ
def _closed_form_grads(x, mu, a, theta, L, v0, in_scale, w, width=0.5):
    """Eq. (9) with the sigmoid chain factors, from the forward membranes."""
    T = x.shape[0]
    omega, lam = tgim_omega(mu), tgim_leak(a)
    xs = in_scale * x
    with torch.no_grad():
        y, _, v_seq = lmht_multistep(x, levels=L, omega=omega, leak=lam, v_threshold=theta, v_init=v0,
                                     in_scale=in_scale, store_v_seq=True)
        m = v_seq + y
        window = ((m >= (1 - width) * theta) & (m <= (L + width) * theta)).double()
        g_m = w * window                                        # ∂𝓛/∂m(t) (nothing flows along the membrane)
        v_prev = torch.cat([torch.zeros_like(v_seq[:1]) + v0, v_seq[:-1]])
        d_lam = (g_m * v_prev).sum()
        d_omega = torch.einsum("i...,j...->ij", g_m, xs)
        d_x = in_scale * torch.einsum("tj,t...->j...", omega, g_m)
        sig_mu, sig_a = torch.sigmoid(mu), torch.sigmoid(a)
    return d_omega * 2 * sig_mu * (1 - sig_mu) / T, d_lam * sig_a * (1 - sig_a), d_x


@pytest.mark.parametrize("L,T,in_scale", [(1, 2, 1.0), (2, 3, 1.0), (4, 4, 2.0)])
def test_autograd_matches_closed_form_eq9(L, T, in_scale):
    g = torch.Generator().manual_seed(7 * L + T)
    theta = 0.5
    x = (torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64) * L * theta).requires_grad_()
    mu = torch.randn(T, T, generator=g, dtype=torch.float64).requires_grad_()
    a = torch.randn((), generator=g, dtype=torch.float64).requires_grad_()
    v0 = torch.rand(3, 4, 5, generator=g, dtype=torch.float64) * theta
    w = torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64)
    y, _, _ = lmht_multistep(x, levels=L, omega=tgim_omega(mu), leak=tgim_leak(a), v_threshold=theta, v_init=v0,
                             in_scale=in_scale)
    (y * w).sum().backward()
    d_mu, d_a, d_x = _closed_form_grads(x.detach(), mu.detach(), a.detach(), theta, L, v0, in_scale, w)
    assert float(d_a.abs()) > 0 and float(d_mu.abs().sum()) > 0      # the test exercises non-trivial terms
    assert_close(mu.grad, d_mu, atol=1e-12, rtol=1e-12)
    assert_close(a.grad, d_a, atol=1e-12, rtol=1e-12)
    assert_close(x.grad, d_x, atol=1e-12, rtol=1e-12)


def test_finite_differences_with_staircase_replaced_by_identity(monkeypatch):
    """§2.9 item 5 literally: staircase -> identity, then autograd (eq. 9 graph) == float64 finite differences."""
    monkeypatch.setattr(lmht_mod, "multilevel_fire", lambda m, theta, levels, width=0.5: m)
    g = torch.Generator().manual_seed(3)
    T = 3
    x = torch.randn(T, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(T, T, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)
    v0 = torch.rand(2, 3, generator=g, dtype=torch.float64)

    def f(x, mu, a):
        return lmht_multistep(x, levels=2, omega=tgim_omega(mu), leak=tgim_leak(a), v_threshold=1.0, v_init=v0,
                              in_scale=1.5)[0]
    assert torch.autograd.gradcheck(f, (x, mu, a), eps=1e-6, atol=1e-9)


def test_finite_differences_through_the_membrane_chain_when_not_detached(monkeypatch):
    """With both detachments off and a smooth stand-in for the staircase, autograd is the exact derivative
    of the recurrence (the temporal chain and the reset path are wired correctly)."""
    monkeypatch.setattr(lmht_mod, "multilevel_fire", lambda m, theta, levels, width=0.5: theta * torch.tanh(m))
    g = torch.Generator().manual_seed(4)
    T = 4
    x = torch.randn(T, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(T, T, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, mu, a):
        return lmht_multistep(x, levels=2, omega=tgim_omega(mu), leak=tgim_leak(a), v_threshold=0.7, v_init=0.3,
                              detach_temporal=False, detach_reset=False)[0]
    assert torch.autograd.gradcheck(f, (x, mu, a), eps=1e-6, atol=1e-9)


def test_detachment_options_change_the_graph():
    x = torch.full((3, 1), 0.8, dtype=torch.float64, requires_grad=True)
    grads = {}
    for det in (True, False):
        x.grad = None
        # detach_reset=True: with the rectangle's unit slope a non-detached reset would give dv/dm = 1 − 1 = 0
        y, _, _ = lmht_multistep(x, levels=2, v_threshold=1.0, leak=1.0, detach_temporal=det, detach_reset=True)
        y[-1].sum().backward()
        grads[det] = x.grad.clone()
    exact(grads[True][:2], torch.zeros(2, 1, dtype=torch.float64))    # detached: only the last step's own input
    assert float(grads[False][:2].abs().sum()) > 0                     # chain: earlier inputs reach y(T)


def test_surrogate_window_is_the_lmht_rectangle():
    L, theta = 3, 0.5
    m = torch.tensor([0.2, 0.25, 0.3, 1.0, 1.74, 1.75, 1.76], requires_grad=True)
    multilevel_fire(m, theta, L).sum().backward()
    exact(m.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))   # 1{θ/2 <= m <= (L+½)θ}


# ------------------------------------------------------------- step modes, state, protocol, registry
def test_step_mode_s_rejected_for_non_causal_tgim():
    with pytest.raises(ValueError, match="non-causal T-GIM"):
        LMHTNeuron(T=3, step_mode="s")
    net = nn.Sequential(LMHTNeuron(T=3))
    with pytest.raises(ValueError, match="non-causal"):
        set_step_mode(net, "s")


@pytest.mark.parametrize("cls", ["lmht_identity", "mht"])
def test_single_step_loop_equals_multi_step_and_reset(cls):
    def build(mode):
        if cls == "mht":
            return MHTNeuron(levels=3, v_threshold=0.5, v_init=0.1, leak=0.9, step_mode=mode)
        return LMHTNeuron(T=5, levels=3, v_threshold=0.5, v_init=0.1, tgim="identity", step_mode=mode)
    x = torch.randn(7, 4, 3, generator=torch.Generator().manual_seed(2)) * 2
    multi, single = build("m"), build("s")
    if cls != "mht":
        with torch.no_grad():
            multi.leak_a.fill_(0.4)
            single.leak_a.fill_(0.4)
    y_m = multi(x)
    y_s = torch.stack([single(xt) for xt in x])
    exact(y_s, y_m)
    exact(single.v, multi.v)
    single.reset()
    assert single.v is None
    exact(torch.stack([single(xt) for xt in x]), y_m)


def test_state_carries_across_calls_and_store_v_seq():
    nrn = MHTNeuron(levels=2, v_threshold=1.0, store_v_seq=True)
    x = torch.tensor([[0.6], [0.6], [0.6], [0.6]])
    full = nrn(x).clone()
    nrn.reset()
    parts = torch.cat([nrn(x[:2]), nrn(x[2:])])
    exact(parts, full)
    assert nrn.v_seq.shape == (2, 1)


def test_statistics_protocol():
    nrn = LMHTNeuron(T=2, levels=4, v_threshold=0.25)
    y = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.0, 0.75]])
    assert nrn.levels == 4 and nrn.lanes == 1
    exact(nrn.spike_events(y), torch.tensor([[0.0, 1.0, 4.0], [2.0, 0.0, 3.0]]))
    exact(nrn.active_lanes(y), torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))


def test_kernel_registry_and_neuron_registry():
    assert get_kernel("lmht", "torch") is lmht_multistep
    nrn = make_neuron("lmht", T=3, levels=4)
    assert isinstance(nrn, LMHTNeuron) and nrn.T == 3 and nrn.levels == 4 and nrn.step_mode == "m"
    assert float(nrn.v_threshold) == 0.5
    nrn.backend = "auto"
    assert nrn(torch.rand(3, 2, 5)).shape == (3, 2, 5)
    text = repr(LMHTNeuron(T=2))
    assert "T=2" in text and "tgim='learnable'" in text and "levels=2" in text


def test_dtype_and_device_follow_the_module():
    nrn = LMHTNeuron(T=2, levels=2).double()
    y = nrn(torch.rand(2, 3, dtype=torch.float64) * 4)
    assert y.dtype == torch.float64


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("levels", [0, -1, 1.5, "2"])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        LMHTNeuron(T=2, levels=levels)
    with pytest.raises(ValueError, match="levels"):
        lmht_multistep(torch.zeros(2, 1), levels=levels, v_threshold=1.0)


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_bad_T(T):
    with pytest.raises(ValueError, match="T"):
        LMHTNeuron(T=T)


@pytest.mark.parametrize("theta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_threshold(theta):
    with pytest.raises(ValueError, match="v_threshold"):
        LMHTNeuron(T=2, v_threshold=theta)
    with pytest.raises(ValueError, match="v_threshold"):
        MHTNeuron(v_threshold=theta)
    with pytest.raises(ValueError, match="v_threshold"):
        lmht_multistep(torch.zeros(2, 1), levels=2, v_threshold=theta)


def test_tgim_size_mismatch_names_both_sizes():
    nrn = LMHTNeuron(T=2)
    with pytest.raises(ValueError, match=r"T=3 steps.*2×2"):
        nrn(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*T=3"):
        lmht_multistep(torch.zeros(3, 4), levels=2, omega=torch.eye(2), v_threshold=1.0)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="tgim"):
        LMHTNeuron(T=2, tgim="causal")
    with pytest.raises(ValueError, match="in_scale"):
        LMHTNeuron(T=2, in_scale=0.0)
    with pytest.raises(ValueError, match="surrogate_width"):
        LMHTNeuron(T=2, surrogate_width=-0.1)
    with pytest.raises(ValueError, match="θ fixed"):
        lmht_multistep(torch.zeros(2, 1), levels=2, v_threshold=torch.tensor(1.0, requires_grad=True))
    with pytest.raises(ValueError, match="leak_schedule"):
        lmht_multistep(torch.zeros(2, 1), levels=1, v_threshold=1.0, leak_schedule=torch.ones(3))
    with pytest.raises(ValueError, match="leak"):
        MHTNeuron(leak=float("nan"))
    with pytest.raises(ValueError, match="time-major"):
        LMHTNeuron(T=2)(torch.zeros(2))
    with pytest.raises(TypeError, match="no T-GIM"):
        mht_multistep(torch.zeros(2, 1), levels=2, v_threshold=1.0, omega=torch.eye(2))
    with pytest.raises(ValueError, match="step_mode"):
        ReparameterizedIF(T=2, window=2, step_mode="s")


# ------------------------------------------------------------- direct STBP training smoke test (§2.5)
def test_direct_stbp_training_reduces_loss_and_trains_tgim_and_leak():
    torch.manual_seed(0)
    T, L = 2, 2
    net = nn.Sequential(DirectEncoder(T), SeqToANNContainer(nn.Linear(10, 32), nn.BatchNorm1d(32)),
                        LMHTNeuron(T=T, levels=L), SeqToANNContainer(nn.Linear(32, 32), nn.BatchNorm1d(32)),
                        LMHTNeuron(T=T, levels=L), SeqToANNContainer(nn.Linear(32, 4)), MeanOverTime())
    x = torch.randn(128, 10)
    target = (x[:, :4].argmax(1))                       # a learnable rule
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    losses = []
    for step in range(40):
        reset_net(net)
        loss = nn.functional.cross_entropy(net(x), target)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for nrn in (net[2], net[4]):
                assert float(nrn.tgim_mu.grad.abs().sum()) > 0
                assert float(nrn.leak_a.grad.abs()) > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert float(net[2].tgim_mu.detach().abs().sum()) > 0 and float(net[4].leak_a.detach().abs()) > 0
