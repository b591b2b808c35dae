"""Fused one-pass C++ kernels of the QCFS and QAC quantizers (multispike/kernels/quant_cpp.py).

float32: the forward is bit-identical to the PyTorch expression (the converted SNNs' exactness checks compare
against those roundings) and the gradients equal the closed forms / the autograd path; bfloat16: the kernel
computes in float32 and rounds once, so it equals the float32 expression rounded to bf16. Anything the kernels do
not take (float64, strided input, a per-element clip) runs the PyTorch path.
"""
import importlib

import pytest
import torch

from conftest import require_cpp_library
from multispike.kernels import quant_cpp
from multispike.quant.qac import QACQuantizer, qac_quantize
from multispike.quant.qcfs import QCFS, _qcfs_forward

qcfs_mod = importlib.import_module("multispike.quant.qcfs")   # the package re-exports a function of that name
qac_mod = importlib.import_module("multispike.quant.qac")


@pytest.fixture(autouse=True)
def _library():
    require_cpp_library()


def _inputs(theta: float, levels: int, n: int = 200_000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen) * theta * 1.5
    # exact level boundaries (ties of the floor), both clip edges, specials
    z[:800] = torch.arange(-200, 600, dtype=torch.float32) * theta / levels / 4
    z[800:806] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, -0.0])
    return z


@pytest.mark.parametrize("theta,levels", [(2.0, 4), (1.5, 8), (0.37, 16), (3.0, 3), (1.0, 1)])
def test_qcfs_forward_float32_is_bit_identical(theta, levels):
    z = _inputs(theta, levels)
    ref = _qcfs_forward(z, torch.tensor(theta), levels, 0.5)
    out = quant_cpp.qcfs_forward(z, theta, levels, 0.5)
    assert torch.equal(out.nan_to_num(nan=-7.0), ref.nan_to_num(nan=-7.0))
    assert out.isnan().sum() == 1


@pytest.mark.parametrize("alpha,T", [(2.0, 1), (2.0, 2), (1.5, 3), (0.7, 5), (4.0, 8)])
def test_qac_forward_float32_is_bit_identical(alpha, T):
    x = _inputs(alpha, T, seed=T)
    ref = qac_quantize(x, torch.tensor(alpha), T)
    out = quant_cpp.qac_forward(x, alpha, T)
    assert torch.equal(out.nan_to_num(nan=-7.0), ref.nan_to_num(nan=-7.0))


def test_qcfs_module_gradients_match_the_closed_form():
    torch.manual_seed(1)
    act = QCFS(levels=4, threshold=2.0)
    z = (torch.rand(64, 8, 9, 9) * 6 - 1.5).requires_grad_(True)
    g = torch.randn_like(z)
    act(z).backward(g)
    z64, g64 = z.detach().double(), g.double()
    q_u = torch.floor(z64 / 2.0 * 4 + 0.5) / 4
    inside = (q_u >= 0) & (q_u <= 1)
    assert torch.equal(z.grad, torch.where(inside, g, torch.zeros_like(g)))
    dth = torch.where(inside, q_u - z64 / 2.0, (q_u > 1).double())
    torch.testing.assert_close(act.threshold.grad.double(), (g64 * dth).sum(), rtol=1e-5, atol=1e-3)


def _fused_vs_python(monkeypatch, make, x, g):
    """(output, input grad, parameter grads) with the fused kernels and with them switched off."""
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(quant_cpp, "quantizer_kernels_available", lambda t: False)
        torch.manual_seed(0)
        mod = make()
        xx = x.clone().requires_grad_(True)
        out = mod(xx)
        out.backward(g)
        results.append((out.detach(), xx.grad, [p.grad.clone() for p in mod.parameters() if p.grad is not None]))
    monkeypatch.undo()
    return results


@pytest.mark.parametrize("param", ["t_alpha", "n_alpha", "n_d", "d_alpha"])
def test_qac_fused_equals_the_python_path_in_float32(monkeypatch, param):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(32, 16, 8, 8, generator=gen) * 5 - 1
    g = torch.randn(x.shape, generator=gen)
    (o1, gx1, p1), (o2, gx2, p2) = _fused_vs_python(
        monkeypatch, lambda: QACQuantizer(param=param, alpha=2.5, t=3.0), x, g)
    assert torch.equal(o1, o2) and torch.equal(gx1, gx2)
    assert len(p1) == len(p2) == 2
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    assert any(p.abs().sum() > 0 for p in p1)


def test_qcfs_fused_equals_the_python_path_in_float32(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(32, 16, 8, 8, generator=gen) * 5 - 1
    g = torch.randn(x.shape, generator=gen)
    (o1, gx1, p1), (o2, gx2, p2) = _fused_vs_python(monkeypatch, lambda: QCFS(levels=4, threshold=2.0), x, g)
    assert torch.equal(o1, o2) and torch.equal(gx1, gx2)
    torch.testing.assert_close(p1[0], p2[0], rtol=1e-4, atol=1e-3)


def test_bfloat16_rounds_once():
    z = _inputs(2.0, 4)[806:].to(torch.bfloat16)
    out = quant_cpp.qcfs_forward(z, 2.0, 4, 0.5)
    assert torch.equal(out, _qcfs_forward(z.float(), torch.tensor(2.0), 4, 0.5).to(torch.bfloat16))
    out = quant_cpp.qac_forward(z, 1.5, 3)
    assert torch.equal(out, qac_quantize(z.float(), torch.tensor(1.5), 3).to(torch.bfloat16))
    g = torch.randn(z.shape).to(torch.bfloat16)
    gz, _ = quant_cpp.qcfs_backward(z, g, 2.0, 4, 0.5)
    q_u = torch.floor(z.float() / 2.0 * 4 + 0.5) / 4
    assert torch.equal(gz, torch.where((q_u >= 0) & (q_u <= 1), g, torch.zeros_like(g)))


def test_bf16_autocast_training_step_matches_float32_closely():
    """A conv + QCFS block trained under CPU bf16 autocast takes the kernel path and gets float32-like gradients."""
    torch.manual_seed(5)
    conv, act = torch.nn.Conv2d(3, 8, 3, padding=1), QCFS(levels=4, threshold=2.0)
    x = torch.randn(16, 3, 12, 12)
    grads = []
    for bf16 in (True, False):
        conv.zero_grad(), act.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = act(conv(x))
        assert y.dtype == (torch.bfloat16 if bf16 else torch.float32)
        y.float().square().mean().backward()
        grads.append((act.threshold.grad.item(), conv.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=0.05, abs=1e-3)
    cos = torch.nn.functional.cosine_similarity(grads[0][1].flatten(), grads[1][1].flatten(), dim=0)
    assert cos > 0.98


@pytest.mark.parametrize("case", ["float64", "strided", "per_element_clip"])
def test_inputs_the_kernels_do_not_take_run_the_pytorch_path(case, monkeypatch):
    calls = []
    real = quant_cpp.qcfs_forward
    monkeypatch.setattr(quant_cpp, "qcfs_forward", lambda *a: calls.append(1) or real(*a))
    z = torch.randn(6, 10) * 3
    th = torch.tensor(2.0)
    if case == "float64":
        z = z.double()
        th = th.double()
    elif case == "strided":
        z = z[:, ::2]          # every other column: not a dense block of memory
    else:
        th = torch.full((10,), 2.0)
    out = qcfs_mod.qcfs(z, th, 4)
    ref = torch.clamp(torch.floor(z / th * 4 + 0.5) / 4, 0, 1) * th
    assert torch.equal(out, ref)
    assert calls == []


def test_kernels_never_run_while_compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not qcfs_mod._fused_ok(torch.randn(4), torch.tensor(1.0))
    assert not qac_mod._fused_ok(torch.randn(4), torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_permuted_layouts_take_the_kernel_with_the_same_results(dtype, monkeypatch):
    """channels_last (what `channels_last: true` training feeds) and transposes are dense: the kernel walks memory
    order, so values and gradients equal the contiguous input's exactly."""
    calls = []
    real = quant_cpp.qcfs_backward
    monkeypatch.setattr(quant_cpp, "qcfs_backward", lambda *a: calls.append(1) or real(*a))
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(4, 8, 6, 5, generator=gen) * 3).to(dtype)
    g = torch.randn(x.shape, generator=gen).to(dtype)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        act = QCFS(levels=4, threshold=2.7)
        xi = x.clone(memory_format=layout).requires_grad_(True)
        assert quant_cpp.quantizer_kernels_available(xi)
        y = act(xi)
        y.backward(g)   # a contiguous upstream gradient for a channels_last output: re-laid out, not misread
        results.append((y.detach().contiguous(), xi.grad.contiguous(), act.threshold.grad.clone()))
    assert len(calls) == 2
    (y0, gx0, gt0), (y1, gx1, gt1) = results
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    torch.testing.assert_close(gt0, gt1, rtol=1e-6, atol=1e-4)   # block sums in another element order
    xt = x.reshape(8, 120).t()
    assert quant_cpp.quantizer_kernels_available(xt)
    assert torch.equal(quant_cpp.qcfs_forward(xt, 2.7, 4, 0.5), quant_cpp.qcfs_forward(xt.contiguous(), 2.7, 4, 0.5))
    assert not quant_cpp.quantizer_kernels_available(x[:, :, ::2])
    assert not quant_cpp.quantizer_kernels_available(torch.randn(3, 1).expand(3, 4))
