"""QCFS backward against its closed form (algorithms.md §3.1).

With the straight-through floor and autograd for the rest, writing ``q_u = ⌊z·Q/ϑ + φ⌋/Q`` (before the clip):

* ``∂out/∂z = 1`` for ``0 ≤ q_u ≤ 1`` (both ends included: ``clamp`` passes the gradient at its bounds), else 0;
* ``∂out/∂ϑ = q_u − z/ϑ`` for ``0 ≤ q_u ≤ 1``, ``1`` above the clip (``out = ϑ``), ``0`` below (``out = 0``).

Exact binary fractions put points on and next to each clip boundary; a random sweep covers the rest. A backward
that drops or scales any of these terms (a detached ϑ, the paper's printed ϑ-derivative ``q_u``, a floor without
the straight-through gradient) fails here.
"""
import math

import pytest
import torch

from multispike.quant.qcfs import QCFS, qcfs


def closed_form(z: torch.Tensor, theta: float, levels: int, shift: float = 0.5):
    """(out, ∂out/∂z, ∂out/∂ϑ) per element, computed without autograd."""
    q_u = torch.floor(z / theta * levels + shift) / levels
    out = theta * q_u.clamp(0.0, 1.0)
    inside = (q_u >= 0) & (q_u <= 1)
    dz = inside.to(z.dtype)
    dtheta = torch.where(inside, q_u - z / theta, torch.where(q_u > 1, torch.ones_like(z), torch.zeros_like(z)))
    return out, dz, dtheta


def autograd(z: torch.Tensor, theta: float, levels: int, shift: float = 0.5):
    """Per-element gradients: ϑ is given per element (the function is element-wise, so this is the Jacobian's
    diagonal)."""
    z = z.clone().requires_grad_(True)
    th = torch.full_like(z, theta, requires_grad=True)
    out = qcfs(z, th, levels, shift)
    dz, dth = torch.autograd.grad(out.sum(), (z, th))
    return out.detach(), dz, dth


# (z, expected ∂/∂z, expected ∂/∂ϑ) for ϑ = 2, Q = 4, φ = ½: u = 2z + ½, q_u = ⌊u⌋/4
BOUNDARY = [
    (-1.0, 0.0, 0.0),       # q_u = -1/2: below the clip
    (-0.3, 0.0, 0.0),       # q_u = -1/4: just below
    (-0.25, 1.0, 0.125),    # q_u = 0 exactly: lower bound included, ∂ϑ = 0 - (-0.25)/2
    (0.0, 1.0, 0.0),        # q_u = 0
    (0.3, 1.0, 0.1),        # q_u = 1/4: 0.25 - 0.15
    (1.7, 1.0, -0.1),       # q_u = 3/4: 0.75 - 0.85
    (1.75, 1.0, 0.125),     # q_u = 1 exactly: upper bound included, 1 - 0.875
    (2.0, 1.0, 0.0),        # q_u = 1: 1 - 1
    (2.2, 1.0, -0.1),       # q_u = 1 (u = 4.9): 1 - 1.1
    (2.25, 0.0, 1.0),       # q_u = 5/4: clipped at the top, out = ϑ
    (10.0, 0.0, 1.0),
]


def test_boundaries_of_the_clip_region():
    z = torch.tensor([b[0] for b in BOUNDARY], dtype=torch.float64)
    out, dz, dth = autograd(z, 2.0, 4)
    ref_out, ref_dz, ref_dth = closed_form(z, 2.0, 4)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(dz, torch.tensor([b[1] for b in BOUNDARY], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(dth, torch.tensor([b[2] for b in BOUNDARY], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(dth, ref_dth, atol=1e-12, rtol=0)
    # forward: ϑ/Q · clip(⌊zQ/ϑ + φ⌋, 0, Q), exactly
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, 0.5, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("levels,theta,shift", [(1, 1.0, 0.5), (4, 2.0, 0.5), (8, 8.0, 0.5), (16, 0.37, 0.5),
                                               (3, 1.5, 0.0), (5, 3.0, 0.25)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_inputs_match_the_closed_form(levels, theta, shift, dtype):
    gen = torch.Generator().manual_seed(levels * 101 + int(theta * 7))
    z = (torch.rand(4000, generator=gen, dtype=torch.float64) * 3.0 - 1.0) * theta   # below, inside, above
    z = z.to(dtype)
    out, dz, dth = autograd(z, theta, levels, shift)
    ref_out, ref_dz, ref_dth = closed_form(z, theta, levels, shift)
    tol = 1e-12 if dtype is torch.float64 else 1e-5
    torch.testing.assert_close(dz, ref_dz, atol=tol, rtol=0)   # ϑ·(1/Q)·(Q/ϑ): 1 up to rounding
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(dth, ref_dth, atol=tol, rtol=0)
    # every region occurs, so no branch of the closed form goes unchecked
    q_u = torch.floor(z / theta * levels + shift) / levels
    assert (q_u < 0).any() and (q_u > 1).any() and ((q_u >= 0) & (q_u <= 1)).any()


def test_module_parameter_gradient_sums_the_per_element_terms():
    """The layer's scalar ϑ collects Σ g·∂out/∂ϑ over every element (batch, channels, pixels)."""
    torch.manual_seed(0)
    act = QCFS(levels=8, threshold=1.5).double()
    z = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 1.2 + 0.4
    g = torch.randn_like(z)
    zz = z.clone().requires_grad_(True)
    act(zz).backward(g)
    _, ref_dz, ref_dth = closed_form(z, 1.5, 8)
    torch.testing.assert_close(zz.grad, g * ref_dz, atol=1e-12, rtol=0)
    expected = (g * ref_dth).sum()
    assert math.isclose(act.threshold.grad.item(), expected.item(), rel_tol=1e-12, abs_tol=1e-12)
    assert abs(expected.item()) > 1e-3   # a non-trivial value, not a coincidental zero


def test_fixed_threshold_gets_no_gradient_but_z_still_does():
    act = QCFS(levels=4, threshold=2.0, learnable=False).double()
    z = torch.tensor([-0.25, 0.3, 1.75, 2.25], dtype=torch.float64, requires_grad=True)
    act(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert not act.threshold.requires_grad
