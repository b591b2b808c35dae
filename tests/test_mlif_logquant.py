"""Log-quantized ANN baseline of the M-LIF paper (algorithms.md §5.4): levels, edges, STE, calibration."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from multispike.quant.logquant import (LogQuant, calibrate_log_quant, kth_percentile, log_quant,
                                       log_quant_levels)

EXACT = dict(atol=0.0, rtol=0.0)


@pytest.mark.parametrize("bits,levels", [
    (1, [0.0, 1.0]),
    (2, [0.0, 0.25, 0.5, 1.0]),
    (3, [0.0] + [2.0 ** e for e in range(-6, 1)]),
])
def test_levels_are_zero_and_powers_of_two_up_to_alpha(bits, levels):
    alpha = 1.5
    want = [alpha * v for v in levels]
    assert log_quant_levels(bits, alpha) == want
    assert len(want) == 2 ** bits                    # b bits -> 2^b codes
    x = torch.linspace(-1.0, 10.0, 20001, dtype=torch.float64)
    out = log_quant(x, alpha, bits)
    assert sorted(set(out.tolist())) == want          # every level is reached, nothing else


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_decision_edges_are_geometric_midpoints(bits):
    alpha, eps = 2.0, 1e-9
    for e in range(2 - 2 ** bits, 1):
        lo = alpha * 2.0 ** (e - 0.5)               # ⌊log₂(o/α) + ½⌉ = e from here ...
        assert log_quant(torch.tensor([lo * (1 + eps)], dtype=torch.float64), alpha, bits).item() == \
            alpha * 2.0 ** e
        if e > 2 - 2 ** bits:                       # ... and the level below just under it
            below = log_quant(torch.tensor([lo * (1 - eps)], dtype=torch.float64), alpha, bits).item()
            assert below == alpha * 2.0 ** (e - 1)
    underflow = alpha * 2.0 ** (1.5 - 2 ** bits)
    assert log_quant(torch.tensor([underflow * (1 - eps)], dtype=torch.float64), alpha, bits).item() == 0.0
    assert log_quant(torch.tensor([underflow * (1 + eps)], dtype=torch.float64), alpha, bits).item() > 0.0
    # saturation: everything from α·2^{−½} up, however large, is α; non-positive input is 0
    big = torch.tensor([alpha * 2 ** -0.5 * (1 + eps), alpha, 3 * alpha, 1e6], dtype=torch.float64)
    assert log_quant(big, alpha, bits).tolist() == [alpha] * 4
    assert log_quant(torch.tensor([0.0, -1.0, -1e-12]), alpha, bits).tolist() == [0.0, 0.0, 0.0]


def test_matches_formula_on_random_values():
    # õ = α·2^{e}, e = ⌊log₂(o/α) + ½⌋, kept iff e >= 2 − 2^b, clipped at 0 from above
    x = torch.rand(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    alpha, bits = 1.7, 3
    want = []
    for v in x.tolist():
        e = math.floor(math.log2(v / alpha) + 0.5) if v > 0 else -math.inf
        want.append(0.0 if e <= 1 - 2 ** bits else alpha * 2.0 ** min(e, 0))
    assert_close(log_quant(x, alpha, bits), torch.tensor(want, dtype=torch.float64), **EXACT)


def test_straight_through_gradients():
    alpha0 = 1.3
    x0 = torch.tensor([-0.5, 0.01, 0.3, 0.9, 1.8, 2.0, 5.0], dtype=torch.float64)
    for ste in ("identity", "clipped"):
        x = x0.clone().requires_grad_(True)
        alpha = torch.tensor(alpha0, dtype=torch.float64, requires_grad=True)
        out = log_quant(x, alpha, 2, ste=ste)
        out.sum().backward()
        y = x0 / alpha0
        s = torch.ones_like(y) if ste == "identity" else ((y > 0) & (y < 2 ** 0.5)).double()
        assert_close(x.grad, s, atol=1e-15, rtol=0)
        assert_close(alpha.grad, (out.detach() / alpha0 - y * s).sum(), atol=1e-14, rtol=0)
    assert s.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]     # 1.8/1.3 < √2 < 2/1.3


def test_kth_percentile_rule_on_a_hand_made_tensor():
    t = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).float() + 1   # 1..1000 shuffled
    assert kth_percentile(t, 99.7) == 997.0          # k = 1 + round(0.997·999) = 1 + round(996.003)
    assert kth_percentile(t, 90) == 900.0            # k = 1 + round(899.1)
    assert kth_percentile(t, 100) == 1000.0 and kth_percentile(t, 0) == 1.0
    # Python's round (half to even), as in MLIF-C: n = 4, q = 50 -> 0.5·3 = 1.5 -> 2 -> k = 3
    assert kth_percentile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 50) == 3.0
    with pytest.raises(ValueError, match="q"):
        kth_percentile(t, 101)
    with pytest.raises(ValueError, match="non-empty"):
        kth_percentile(torch.empty(0), 50)


def test_calibration_takes_the_running_max_of_batch_percentiles():
    model = nn.Sequential(nn.ReLU(), LogQuant(bits=2))
    batches = [torch.arange(0.0, 1001.0) * s for s in (1.0, 3.0, 2.0)]   # P99.7 = 997·s
    alphas = calibrate_log_quant(model, batches, num_batches=2)
    assert alphas == {"1": 2991.0}                  # max(997, 2991); the third batch is not used
    assert model[1].levels == [0.0, 2991.0 / 4, 2991.0 / 2, 2991.0]
    assert_close(model(torch.tensor([2991.0, 700.0, -3.0])), torch.tensor([2991.0, 2991.0 / 4, 0.0]), **EXACT)


def test_module_learnable_alpha_and_bad_input():
    lq = LogQuant(bits=3, alpha=2.0, learnable=True, ste="clipped")
    assert isinstance(lq.alpha, nn.Parameter)
    lq(torch.tensor([0.3, 1.0, 2.5])).sum().backward()
    assert lq.alpha.grad is not None and lq.alpha.grad != 0
    assert "bits=3" in repr(lq)
    for kwargs, match in [(dict(bits=0), "bits"), (dict(bits=1.5), "bits"), (dict(alpha=0.0), "alpha"),
                          (dict(alpha=float("inf")), "alpha"), (dict(ste="round"), "ste"),
                          (dict(percentile=0), "percentile")]:
        with pytest.raises(ValueError, match=match):
            LogQuant(**kwargs)
    with pytest.raises(ValueError, match="alpha"):
        log_quant(torch.ones(3), -1.0, 2)
    with pytest.raises(ValueError, match="dead layer"):
        with LogQuant().calibration() as q:
            q(torch.zeros(10))
    with pytest.raises(ValueError, match="no LogQuant"):
        calibrate_log_quant(nn.ReLU(), [torch.ones(2)])


def test_calibration_rectifies_like_the_quantizer():
    """Used in place of a ReLU, a calibrating LogQuant passes on (and measures) rectified activations."""
    import torch

    from multispike.quant.logquant import LogQuant

    lq = LogQuant(bits=2)
    x = torch.linspace(-3.0, 1.0, 401)
    with lq.calibration():
        out = lq(x)
    assert torch.equal(out, x.clamp(min=0))
    assert float(lq.alpha) <= 1.0 and float(lq.alpha) > 0.9


# ----------------------------------------------------------------------------------------------- exact M-LIF mapping
def _edge_cases(theta: torch.Tensor, S: int) -> torch.Tensor:
    """Every lane edge θ·2^s exactly (a tie: both round up), and the float just below and above it."""
    edges = theta * 2.0 ** torch.arange(S, dtype=theta.dtype)
    lo, hi = torch.tensor(0.0, dtype=theta.dtype), torch.tensor(1e9, dtype=theta.dtype)
    return torch.cat([edges, torch.nextafter(edges, lo), torch.nextafter(edges, hi)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_mlif_with_2b_minus_1_lanes_equals_the_b_bit_log_quantizer_value_by_value(bits, dtype):
    from multispike.neurons.mlif import OneHotMLIF
    from multispike.quant.logquant import log_quant_lanes, mlif_lq_parameters

    S = log_quant_lanes(bits)
    assert S == 2 ** bits - 1
    g = torch.Generator().manual_seed(bits)
    for alpha in (1.0, 0.731, 5.3):
        a = torch.tensor(alpha, dtype=dtype)
        theta, c = mlif_lq_parameters(a, S)
        # the closed form of the mapping: θ = α·2^{3/2−2^b}, a spike worth √2·θ·2^s (c = the lowest LQ level)
        assert_close(theta, a * 2.0 ** (1.5 - 2 ** bits), atol=0, rtol=1e-6)
        assert_close(c, math.sqrt(2.0) * theta, atol=0, rtol=1e-6)
        assert float(c) == log_quant_levels(bits, float(a))[1]
        x = torch.cat([torch.randn(4000, generator=g, dtype=dtype) * alpha,
                       torch.rand(4000, generator=g, dtype=dtype) * alpha * 2.0 ** (2 - 2 ** bits),   # low levels
                       _edge_cases(theta, S), torch.tensor([0.0, -0.0, -alpha, 1e6], dtype=dtype)])
        want = log_quant(x, a, bits)
        for backend in ("torch", "auto"):
            n = OneHotMLIF(lanes=S, lane_bounds="floor", fire_ge=True, backend=backend).to(dtype)
            with torch.no_grad():
                n.v_threshold.copy_(theta)                      # in the LQ's own dtype (the constructor is fp32)
            n.set_payload_scale(c)
            got = n(x.view(1, -1))[0]
            assert torch.equal(got, want), (backend, (got != want).nonzero()[:5])
        # the ties land on the upper level, like ⌊log₂ y + ½⌋ (half up)
        tie = log_quant(theta * 2.0 ** torch.arange(S, dtype=dtype), a, bits)
        assert_close(tie, c * 2.0 ** torch.arange(S, dtype=dtype), atol=0, rtol=0)


def test_the_papers_pairing_s2_vs_b2_drops_the_lowest_level():
    from multispike.neurons.mlif import OneHotMLIF
    from multispike.quant.logquant import mlif_lq_parameters

    alpha = torch.tensor(2.0)
    x = torch.rand(20000, generator=torch.Generator().manual_seed(3)) * 3
    lq = log_quant(x, alpha, 2)                                  # {0, α/4, α/2, α}: 3 non-zero codes
    theta, c = mlif_lq_parameters(alpha, 2)                      # S = 2: {0, α/2, α}
    y = OneHotMLIF(lanes=2, v_threshold=theta, lane_bounds="floor", fire_ge=True, payload_scale=c)(x.view(1, -1))[0]
    assert sorted(set(y.tolist())) == [0.0, 1.0, 2.0]
    assert torch.equal(y, torch.where(lq == alpha / 4, torch.zeros_like(lq), lq))
