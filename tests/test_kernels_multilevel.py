"""Fused one-hot M-LIF and LM-HT/M-HT kernels (backend "cpp") against their reference functions.

Identical forward payloads and states (atol=0); gradients of the input, initial state and learnable
θ/β/λ/Ω/leak schedule within 1e-10 in float64 and 1e-6 relative in float32. The LM-HT kernel mixes the T-GIM
itself, in the reference's fixed summation order (``tgim_mix``), so threshold ties agree too.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from conftest import require_cpp_library

from multispike.kernels import lmht_cpp, mlif_cpp
from multispike.kernels.registry import get_kernel, resolve_backend
from multispike.neurons.if_lif import LIFState
from multispike.neurons.lmht import LMHTNeuron, LMHTState, MHTNeuron, lmht_multistep, tgim_mix, tgim_omega
from multispike.neurons.mlif import OneHotMLIF, mlif_multistep
from multispike.neurons.surrogate import ATan, Rectangular

F64 = {"atol": 1e-10, "rtol": 1e-10}
F32 = {"atol": 1e-6, "rtol": 1e-6}


@pytest.fixture(scope="module", autouse=True)
def library():
    # skips only without a compiler (or MULTISPIKE_DISABLE_CPP); a compiler whose build fails is a failure
    return require_cpp_library()


def _spy(monkeypatch, module, name):
    calls = []
    orig = getattr(module, name)

    def wrapped(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.fixture
def mlif_spy(monkeypatch):
    return _spy(monkeypatch, mlif_cpp, "run_mlif")


@pytest.fixture
def lmht_spy(monkeypatch):
    return _spy(monkeypatch, lmht_cpp, "run_lmht")


def _inputs(shape, dtype, seed=0, scale=1.5, offset=0.8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    # quarter multiples land exactly on the power-of-two lane edges and the LM-HT levels
    x = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, torch.round(x * 4) / 4, x)
    return x.to(dtype)


def _check(kernel, ref, x, kw, learn, dtype, state=None, seq_out_is_state=LIFState, tol=None):
    tol = tol or (F64 if dtype == torch.float64 else F32)
    outs = []
    for fn in (kernel, ref):
        xi = x.detach().clone().requires_grad_(True)
        kwi = dict(kw)
        leaves = [xi]
        for name in learn:
            val = kwi[name]
            kwi[name] = (val.detach().clone() if isinstance(val, torch.Tensor) else torch.tensor(val, dtype=dtype))
            kwi[name].requires_grad_(True)
            leaves.append(kwi[name])
        st = None
        if state is not None:
            fields = [f.detach().clone().requires_grad_(True) if isinstance(f, torch.Tensor) else f for f in state]
            st = type(state)(*fields)
            leaves += [f for f in fields if isinstance(f, torch.Tensor)]
        y, st_out, _ = fn(xi, st, **kwi)
        g = torch.Generator().manual_seed(3)
        loss = (y * torch.randn(y.shape, generator=g, dtype=dtype)).sum()
        loss = loss + (st_out.v * torch.randn(st_out.v.shape, generator=g, dtype=dtype)).sum()
        if getattr(st_out, "last_reset", None) is not None:
            loss = loss + (st_out.last_reset * 0.61).sum()
        outs.append((y, st_out, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (y1, s1, g1), (y2, s2, g2) = outs
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    torch.testing.assert_close(s1.v, s2.v, atol=0, rtol=0)
    if getattr(s2, "last_reset", None) is not None:
        torch.testing.assert_close(s1.last_reset, s2.last_reset, atol=0, rtol=0)
    for a, b in zip(g1, g2):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            scale = max(1.0, float(b.abs().max()))
            torch.testing.assert_close(a, b, atol=tol["atol"] * scale, rtol=tol["rtol"])
    return y1


# ================================================================================================ M-LIF
MLIF_RESETS = [("soft", False, False), ("soft", True, False), ("hard", False, False), ("soft", True, True),
               ("hard", False, True)]  # (reset, reset_leak, decay_input)


@pytest.mark.parametrize("reset", MLIF_RESETS, ids=lambda r: f"{r[0]}-rl{int(r[1])}-di{int(r[2])}")
@pytest.mark.parametrize("surrogate", ["paper_difference", "code_sum", "fast_unscaled"])
@pytest.mark.parametrize("shape", ["triangle", "sigmoid"])
def test_mlif_option_combinations(reset, surrogate, shape, mlif_spy):
    x = _inputs((4, 3, 11), torch.float64, seed=len(surrogate) + 7 * MLIF_RESETS.index(reset))
    n = 0
    for lanes, bounds, scaled, fire_ge, detach in itertools.product((1, 3, 4), ("paper", "floor"), (False, True),
                                                                     (False, True), (False, True)):
        kw = dict(lanes=lanes, v_threshold=0.6, leak=0.9, v_init=0.1, reset=reset[0], reset_leak=reset[1],
                  decay_input=reset[2], lane_bounds=bounds, scaled=scaled, surrogate=surrogate, shape=shape, gamma=0.5, alpha=3.0,
                  fire_ge=fire_ge, detach_reset=detach)
        _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, kw, ("v_threshold", "leak"), torch.float64)
        n += 1
    assert len(mlif_spy) == n


@pytest.mark.parametrize("shape_fn", [lambda: ATan(2.0), lambda: Rectangular(0.5)], ids=["atan", "rect"])
def test_mlif_other_window_shapes(shape_fn):
    x = _inputs((5, 2, 9), torch.float64, seed=21)
    _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=3, shape=shape_fn(), v_threshold=0.5),
           ("v_threshold",), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 5), (3, 2, 3, 7, 5), (8, 1, 1030), (2, 4, 3, 333)])
def test_mlif_shapes(shape, dtype):
    x = _inputs(shape, dtype, seed=sum(shape))
    _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=4, v_threshold=0.5, leak=0.95),
           ("v_threshold", "leak"), dtype)


def test_mlif_state_layouts_and_poisoned_buffers(mlif_spy):
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # every new buffer starts as NaN
    try:
        base = _inputs((5, 3, 4, 6, 7), torch.float64, seed=22)
        state = LIFState(_inputs((3, 4, 6, 7), torch.float64, seed=23),
                         (torch.rand(3, 4, 6, 7, dtype=torch.float64) < 0.3).double() * 0.6)
        for x in (base, base.transpose(3, 4).contiguous().transpose(3, 4), base[:, :, :, ::1],
                  base.contiguous(memory_format=torch.channels_last_3d)):
            _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=3, v_threshold=0.6, leak=0.9),
                   ("v_threshold", "leak"), torch.float64, state=state)
    finally:
        torch.use_deterministic_algorithms(False)
    assert mlif_spy


@pytest.mark.parametrize("case", ["lane_mask", "return_lanes", "store_v_seq", "per_channel_theta"])
def test_mlif_fallbacks(case, mlif_spy):
    x = _inputs((3, 2, 4, 5), torch.float64, seed=24)
    kw = dict(lanes=3, v_threshold=0.7)
    if case == "lane_mask":
        kw["lane_mask"] = (torch.rand(2, 3, 4, 5, dtype=torch.float64) < 0.7).double()
    elif case == "return_lanes":
        kw["return_lanes"] = True
    elif case == "store_v_seq":
        kw["store_v_seq"] = True
    else:
        kw["v_threshold"] = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64).view(4, 1)
    y1, s1, e1 = mlif_cpp.mlif_multistep_cpp(x, **kw)
    y2, s2, e2 = mlif_multistep(x, **kw)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    for a, b in zip(e1, e2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not mlif_spy


def _lane_edge_values(dtype: torch.dtype) -> torch.Tensor:
    """r values at and around every lane edge 2^k (k = -3..70), plus 0, -0, negatives, subnormals, the largest
    finite number, ±inf and NaN: where the kernel's exponent-bit payload could part from the comparisons."""
    vals = [0.0, -0.0, -1.0, -2.0, -(2.0 ** 40), 1e-30, torch.finfo(dtype).tiny / 4, torch.finfo(dtype).max,
            float("inf"), float("-inf"), float("nan"), 3.0, 5.0, 6.0, 7.0, 1.5, 2.5, 12.0, 1e30]
    edges = torch.tensor([2.0 ** k for k in range(-3, 71)], dtype=dtype)
    return torch.cat([torch.tensor(vals, dtype=dtype), edges, torch.nextafter(edges, edges * 2),
                      torch.nextafter(edges, edges * 0)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlif_payload_exact_at_lane_edges(dtype, mlif_spy):
    """The kernel reads the highest lane edge passed from r's binary exponent (one pass, no loop over lanes): it must
    select exactly the reference's weight at exact powers of two, one ulp either side, and at 0/inf/NaN, for every
    lane-bound and edge-0 comparison, scaled or not, up to the 64 lanes the kernel takes."""
    r = _lane_edge_values(dtype)
    n = 0
    for lanes, bounds, fire_ge, scaled in itertools.product((1, 2, 3, 4, 7, 8, 24, 25, 53, 64), ("paper", "floor"),
                                                             (False, True), (False, True)):
        # theta = 1, v_init = 0, one step: m = x and r = m / theta_e, with theta_e = 2^-(S-1) when scaled
        unit = 2.0 ** -(lanes - 1) if scaled else 1.0
        x = (r * unit).view(1, -1)
        kw = dict(lanes=lanes, v_threshold=1.0, leak=0.9, lane_bounds=bounds, fire_ge=fire_ge, scaled=scaled)
        y1, s1, _ = mlif_cpp.mlif_multistep_cpp(x, **kw)
        y2, s2, _ = mlif_multistep(x, **kw)
        torch.testing.assert_close(y1, y2, atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(s1.v, s2.v, atol=0, rtol=0, equal_nan=True)
        n += 1
    assert len(mlif_spy) == n
    # more than 64 lanes: the reference runs (exponent bits would leave the range), with the same payload
    y1, _, _ = mlif_cpp.mlif_multistep_cpp(r.view(1, -1), lanes=65)
    torch.testing.assert_close(y1, mlif_multistep(r.view(1, -1), lanes=65)[0], atol=0, rtol=0, equal_nan=True)
    assert len(mlif_spy) == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlif_backward_at_lane_edges_over_steps(dtype):
    """Several steps of r on and beside the lane edges (finite values), hard and soft reset with learnable θ and
    leak: exact payloads and states, gradients as the reference (the backward rebuilds the lanes the same way)."""
    r = _lane_edge_values(dtype)
    r = r[torch.isfinite(r) & (r.abs() < 2.0 ** 12)]
    x = torch.stack([r, r.flip(0), r * 0.5, r]).view(4, 1, -1)
    for reset, lanes in itertools.product(("soft", "hard"), (1, 4, 9)):
        _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=lanes, v_threshold=1.0, leak=0.75,
               reset=reset), ("v_threshold", "leak"), dtype)


def test_mlif_invalid_arguments_raise_like_reference():
    x = _inputs((3, 2, 4), torch.float64)
    with pytest.raises(ValueError, match="lanes"):
        mlif_cpp.mlif_multistep_cpp(x, lanes=0)
    with pytest.raises(ValueError, match="v_threshold"):
        mlif_cpp.mlif_multistep_cpp(x, v_threshold=-1.0)
    with pytest.raises(ValueError, match="reset"):
        mlif_cpp.mlif_multistep_cpp(x, reset="bogus")


def test_mlif_module_auto_backend(mlif_spy):
    assert resolve_backend("mlif", "auto", "cpu") == "cpp"
    assert get_kernel("mlif", "cpp") is mlif_cpp.mlif_multistep_cpp
    x = _inputs((4, 2, 3, 5, 5), torch.float32, seed=25)
    outs = []
    for backend in ("auto", "torch"):
        torch.manual_seed(0)
        nrn = OneHotMLIF(lanes=3, v_threshold=0.8, leak=0.9, backend=backend)
        y = nrn(x)
        y.pow(2).sum().backward()
        outs.append((y, nrn.v, nrn.v_threshold.grad, nrn.leak.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=0, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=0, rtol=0)
    for a, b in zip(outs[0][2:], outs[1][2:]):
        torch.testing.assert_close(a, b, atol=1e-6 * max(1.0, float(b.abs())), rtol=1e-6)
    assert len(mlif_spy) == 1
    # lane dropout in training mode needs the lane tensor: the module transparently uses the reference
    nrn = OneHotMLIF(lanes=3, dropout=0.5, backend="auto").train()
    nrn(x)
    assert len(mlif_spy) == 1


# ================================================================================================ LM-HT
@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("tgim", [False, True])
def test_lmht_option_combinations(levels, tgim, lmht_spy):
    T = 4
    x = _inputs((T, 3, 10), torch.float64, seed=levels + 10 * tgim)
    omega = (torch.rand(T, T, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.6) if tgim else None
    n = 0
    for dt, dr, scale, width, learn_leak in itertools.product((True, False), (True, False), (1.0, 2.0),
                                                              (0.5, 0.0, 0.25), (False, True)):
        kw = dict(levels=levels, omega=omega, leak=0.9, v_threshold=0.5, v_init=0.25, in_scale=scale,
                  detach_temporal=dt, detach_reset=dr, surrogate_width=width)
        learn = (("leak",) if learn_leak else ()) + (("omega",) if tgim else ())
        _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, kw, learn, torch.float64)
        n += 1
    assert len(lmht_spy) == n


def test_lmht_leak_schedule_and_state():
    T = 6
    x = _inputs((T, 2, 3, 7), torch.float64, seed=31)
    sched = torch.tensor([0.8, 1, 1, 0.7, 1, 1], dtype=torch.float64)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(levels=3, v_threshold=0.4, leak_schedule=sched),
           ("leak_schedule",), torch.float64)
    state = LMHTState(_inputs((2, 3, 7), torch.float64, seed=32))
    for dt in (True, False):
        _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x,
               dict(levels=2, v_threshold=0.5, leak=0.9, detach_temporal=dt), ("leak",), torch.float64, state=state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1, 1), (4, 3, 5, 7, 3), (8, 2, 1029), (3, 4, 33, 17)])
def test_lmht_shapes(shape, dtype):
    T = shape[0]
    x = _inputs(shape, dtype, seed=sum(shape))
    omega = torch.full((T, T), 1.0 / T, dtype=dtype) + torch.eye(T, dtype=dtype) * 0.1
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x,
           dict(levels=4, omega=omega, leak=0.95, v_threshold=0.5), ("leak", "omega"), dtype)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(levels=2, leak=1.0, v_threshold=0.25), (), dtype)


def _tgim(mode: str, T: int, dtype, seed: int) -> torch.Tensor | None:
    """The T-GIM of each LMHTNeuron mode: learnable/fixed 2σ(μ)/T (random μ), uniform 1/T, identity (none) and
    an explicit identity matrix (mixing with 1s and 0s)."""
    if mode in ("learnable", "fixed"):
        mu = torch.randn(T, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return tgim_omega(mu).to(dtype)
    if mode == "uniform":
        return torch.full((T, T), 1.0 / T, dtype=dtype)
    if mode == "eye":
        return torch.eye(T, dtype=dtype)
    return None


def _tie_inputs(shape, dtype, seed):
    """Quarter multiples: with a dyadic T-GIM (eighths) every mixed current is exact and many sit exactly on a
    threshold multiple kθ (θ = 1/4), where the "m ≥ kθ" rule decides."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-4, 12, shape, generator=g).to(torch.float64) / 4).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T", [1, 2, 4, 8])
def test_lmht_fused_tgim_bit_exact(T, dtype, lmht_spy, monkeypatch):
    """Forward (payload and state) bit-identical to the reference with the mixing in the kernel, for every T-GIM
    mode, L in {1, 2, 4}, random and tie-heavy inputs; input, Ω and λ gradients as the reference autograd."""
    # the fused path must not mix in PyTorch (the Triton planner's route)
    monkeypatch.setattr(lmht_cpp, "tgim_mix", lambda *a: pytest.fail("the C++ path mixed in PyTorch"))
    n = 0
    for levels, mode, inputs in itertools.product((1, 2, 4), ("learnable", "fixed", "uniform", "identity", "eye"),
                                                  ("random", "ties")):
        seed = 100 * T + 10 * levels + len(mode)
        if inputs == "ties":
            x = _tie_inputs((T, 3, 37), dtype, seed)
            omega = _tgim(mode, T, dtype, seed)
            if omega is not None:  # the nearest eighths: dyadic, so the currents are exact quarter/eighth sums
                omega = torch.round(omega * 8) / 8
            kw = dict(levels=levels, omega=omega, leak=1.0, v_threshold=0.25)
        else:
            x = _inputs((T, 3, 37), dtype, seed=seed)
            omega = _tgim(mode, T, dtype, seed)
            kw = dict(levels=levels, omega=omega, leak=0.9, v_threshold=0.5, v_init=0.125, in_scale=1.5)
        learn = ("leak",) + (("omega",) if mode == "learnable" else ())
        # float32 parameter gradients: the reference reduces a few hundred terms in float32, the kernel in double
        y = _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, kw, learn, dtype,
                   tol=None if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5})
        if inputs == "ties":  # at t = 0, m = I(0): the test must really contain currents on kθ, k >= 1
            m0 = (x if omega is None else tgim_mix(omega, x))[0]
            assert int(((m0 * 4 == torch.round(m0 * 4)) & (m0 >= 0.25)).sum()) > 0
        assert torch.isfinite(y).all()
        n += 1
    assert len(lmht_spy) == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T", [9, 16])
def test_lmht_fused_tgim_long_sequences(T, dtype, lmht_spy):
    """T > 8 mixes row by row (the register path unrolls up to 8 terms): same order, same bits."""
    tol = None if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    omega = _tgim("learnable", T, dtype, T)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, _inputs((T, 2, 45), dtype, seed=T),
           dict(levels=2, omega=omega, leak=0.9, v_threshold=0.5, in_scale=2.0), ("leak", "omega"), dtype, tol=tol)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, _tie_inputs((T, 2, 45), dtype, T),
           dict(levels=4, omega=torch.round(omega * 8) / 8, leak=1.0, v_threshold=0.25), ("omega",), dtype, tol=tol)
    assert len(lmht_spy) == 2


def test_lmht_fused_tgim_summation_order(lmht_spy):
    """A current whose last bit depends on the summation order: (0.1 + 0.2) + 0.3 ≠ 0.1 + (0.2 + 0.3) in float64.
    With θ set to either value, the kernel fires exactly as the reference's fixed order j = 0..T−1 does."""
    omega = torch.tensor([[0.1, 0.2, 0.3]] * 3, dtype=torch.float64)
    x = torch.ones(3, 1, 4, dtype=torch.float64)
    fixed = (0.1 + 0.2) + 0.3
    other = 0.1 + (0.2 + 0.3)
    assert fixed != other
    for theta in (fixed, other, fixed / 2, other / 2):
        for leak in (0.0, 1.0):
            kw = dict(levels=2, omega=omega, leak=leak, v_threshold=theta)
            y1, s1, _ = lmht_cpp.lmht_multistep_cpp(x, **kw)
            y2, s2, _ = lmht_multistep(x, **kw)
            assert torch.equal(y1, y2) and torch.equal(s1.v, s2.v)
    # at θ = fixed the current sits exactly on the threshold: one level at t = 0, not zero
    y, _, _ = lmht_cpp.lmht_multistep_cpp(x, levels=2, omega=omega, leak=0.0, v_threshold=fixed)
    assert float(y[0, 0, 0]) == fixed
    y, _, _ = lmht_cpp.lmht_multistep_cpp(x, levels=2, omega=omega, leak=0.0, v_threshold=other)
    assert float(y[0, 0, 0]) == (other if fixed >= other else 0.0)
    assert len(lmht_spy) == 10


@pytest.mark.parametrize("T", [2, 3, 5])
def test_lmht_fused_tgim_gradcheck(T):
    """float64 gradcheck of the kernel's mixing backward (dx = Ωᵀ·dI, dΩ = Σ dI·x, dλ): through the state v(T),
    which is m(T) − sg(y(T)) - differentiable away from the level jumps with the temporal chain kept."""
    g = torch.Generator().manual_seed(T)
    x = (torch.randn(T, 2, 9, generator=g, dtype=torch.float64) * 1.3 + 0.6).requires_grad_(True)
    omega = (torch.rand(T, T, generator=g, dtype=torch.float64) * 0.8).requires_grad_(True)
    leak = torch.tensor(0.85, dtype=torch.float64, requires_grad=True)

    def f(x, omega, leak):
        _, st, _ = lmht_cpp.lmht_multistep_cpp(x, levels=3, omega=omega, leak=leak, v_threshold=0.5,
                                               in_scale=1.25, detach_temporal=False, detach_reset=True)
        return st.v

    assert torch.autograd.gradcheck(f, (x, omega, leak), eps=1e-6, atol=1e-7)


def test_lmht_fused_tgim_large_blocks_and_threads():
    """Many blocks and both threads (N ≥ 32768 per step): dΩ, summed per block and then over blocks in block
    order, is within float32 rounding of the exact (float64) sum of dL/dI·x, and identical from run to run."""
    T = 4
    x = _inputs((T, 8, 4099), torch.float32, seed=41)
    omega = _tgim("learnable", T, torch.float32, 41)
    kw = dict(levels=2, leak=0.9, v_threshold=0.5)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(kw, omega=omega), ("leak", "omega"), torch.float32,
           tol={"atol": 1e-5, "rtol": 1e-5})  # the reference's dΩ is a float32 GEMM over 32k elements
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    grads = []
    for _ in range(2):
        om = omega.clone().requires_grad_(True)
        y, _, _ = lmht_cpp.lmht_multistep_cpp(x, omega=om, **kw)
        grads.append(torch.autograd.grad((y * dy).sum(), om)[0])
    assert torch.equal(grads[0], grads[1])
    # exact reference for dΩ: dL/dI from the level loop alone (elementwise), its products with x summed in float64
    cur = tgim_mix(omega, x).requires_grad_(True)
    y, _, _ = lmht_multistep(cur, **kw)
    g_cur = torch.autograd.grad((y * dy).sum(), cur)[0]
    exact = torch.einsum("t...,j...->tj", g_cur.double(), x.double())
    assert float((grads[0].double() - exact).abs().max()) <= 1e-6 * float(exact.abs().max())


def test_lmht_unfused_plan_route(library):
    """The Triton backend's route on the CPU kernel: mixing by tgim_mix in PyTorch (autograd gives dΩ), then the
    level kernel with no Ω in its record. Same values and gradients as the reference and the fused route."""
    from multispike.neurons.params import LMHTParameters
    T = 4
    x = _inputs((T, 2, 3, 11), torch.float32, seed=43)
    omega = _tgim("learnable", T, torch.float32, 43)

    def unfused(x_seq, state=None, **kw):
        p = LMHTParameters(**kw)
        planned = lmht_cpp.lmht_plan_unfused(x_seq, state, p)
        assert planned is not None and planned[0].omega is None and planned[0].flags["scale_input"] == 0
        return lmht_cpp.run_lmht(library, x_seq, state, planned)

    _check(unfused, lmht_multistep, x, dict(levels=2, omega=omega, leak=0.9, v_threshold=0.5, in_scale=2.0),
           ("leak", "omega"), torch.float32, tol={"atol": 1e-5, "rtol": 1e-5})


def test_lmht_layouts_and_poisoned_buffers(lmht_spy):
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        base = _inputs((4, 3, 5, 6, 7), torch.float32, seed=33)
        for x in (base.transpose(3, 4), base[:, :, ::2], base.contiguous(memory_format=torch.channels_last_3d)):
            _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(levels=2, v_threshold=0.5, leak=0.9),
                   ("leak",), torch.float32)
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(lmht_spy) == 3


def test_lmht_fallbacks_and_errors(lmht_spy):
    x = _inputs((3, 2, 4), torch.float64)
    with pytest.raises(ValueError, match="requires grad"):
        lmht_cpp.lmht_multistep_cpp(x, levels=2, v_threshold=torch.tensor(1.0, requires_grad=True))
    with pytest.raises(ValueError, match="T-GIM"):
        lmht_cpp.lmht_multistep_cpp(x, levels=2, v_threshold=1.0, omega=torch.ones(2, 2))
    y1 = lmht_cpp.lmht_multistep_cpp(x, levels=2, v_threshold=1.0, store_v_seq=True)
    y2 = lmht_multistep(x, levels=2, v_threshold=1.0, store_v_seq=True)
    torch.testing.assert_close(y1[2], y2[2], atol=0, rtol=0)
    assert not lmht_spy


def test_lmht_modules_auto_backend(lmht_spy):
    assert resolve_backend("lmht", "auto", "cpu") == "cpp"
    x = _inputs((4, 2, 3, 5, 5), torch.float32, seed=34)
    makers = [lambda b, m=m: LMHTNeuron(T=4, levels=2, tgim=m, backend=b) for m in ("learnable", "fixed", "uniform",
                                                                                     "identity")]
    makers.append(lambda b: LMHTNeuron(T=4, levels=2, in_scale=2.0, backend=b))
    for make in (*makers, lambda b: MHTNeuron(levels=3, backend=b)):
        outs = []
        for backend in ("auto", "torch"):
            nrn = make(backend)
            with torch.no_grad():
                for p in nrn.parameters():
                    p.add_(torch.linspace(-0.3, 0.3, p.numel()).view_as(p))
            xi = x.clone().requires_grad_(True)
            y = nrn(xi)
            y.pow(2).sum().backward()
            outs.append((y, xi.grad, [p.grad for p in nrn.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0], atol=0, rtol=0)
        torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-6)
        for a, b in zip(outs[0][2], outs[1][2]):  # μ (T-GIM) and a (leak): through tgim_omega / tgim_leak
            assert a is not None
            torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-5)
    assert len(lmht_spy) == len(makers) + 1


@pytest.mark.parametrize("T", [2, 4, 6])
def test_forward_block_lengths_by_T_cover_many_blocks_and_a_tail(T):
    """The forward kernels pick their block length by T (short rows up to T = 4-5, long ones beyond): with
    N = 2,100 elements per step (eight 256-element blocks and a tail) every family stays exact against its
    reference in both regimes, T-GIM mixing included."""
    x = _inputs((T, 3, 700), torch.float32, seed=50 + T)
    _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=4, v_threshold=0.5, leak=0.9),
           ("v_threshold", "leak"), torch.float32, tol={"atol": 1e-5, "rtol": 1e-5})
    kw = dict(levels=3, leak=0.9, v_threshold=0.5)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, kw, ("leak",), torch.float32,
           tol={"atol": 1e-5, "rtol": 1e-5})
    omega = _tgim("learnable", T, torch.float32, T)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(kw, omega=omega), ("leak", "omega"), torch.float32,
           tol={"atol": 1e-4, "rtol": 1e-4})


@pytest.mark.parametrize("T", [4, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_block_lengths_by_T_cover_many_blocks_and_a_tail(T, dtype):
    """The backward's block length follows the working set (L1-sized for short sequences, at least 4 KiB rows from
    T = 17): with N = 3,300 elements per step (several blocks of either length and a tail) IF, M-LIF and LM-HT with
    a learnable T-GIM (T = 20: more terms than the unrolled mixing) stay exact against their references, parameter
    gradients included."""
    from multispike.kernels import lif_cpp
    from multispike.neurons import lif_multistep

    x = _inputs((T, 3, 1100), dtype, seed=60 + T)
    loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else None
    _check(lif_cpp.lif_multistep_cpp, lif_multistep, x, dict(v_threshold=0.7, leak=0.9, leak_mode="post_reset"),
           ("v_threshold", "leak"), dtype, tol=loose)
    _check(mlif_cpp.mlif_multistep_cpp, mlif_multistep, x, dict(lanes=4, v_threshold=0.5, leak=0.9),
           ("v_threshold", "leak"), dtype, tol=loose)
    omega = _tgim("learnable", T, dtype, T)
    _check(lmht_cpp.lmht_multistep_cpp, lmht_multistep, x, dict(levels=3, leak=0.9, v_threshold=0.5, omega=omega),
           ("leak", "omega"), dtype, tol=loose)
