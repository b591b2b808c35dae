"""QAC quantizer (algorithms.md §4.1-§4.2): forward, the four parameterisations' gradients, t -> T_l, reports,
quantization-aware-training preparation."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from multispike.neurons.registry import make_neuron
from multispike.quant.qac import (PARAMETERISATIONS, QACQuantizer, average_timestep, qac_quantize, quantizer_summary,
                                  timesteps_from_continuous)
from multispike.quant.qat import prepare_qat
from multispike.quant.qcfs import QCFS, qcfs

LN2 = math.log(2.0)
# x/α positions: below 0, inside [0, α] (both ends included), above α
BELOW = (-0.7, -0.01)
INSIDE = (0.0, 0.13, 0.5, 0.77, 0.999, 1.0)
ABOVE = (1.01, 1.6)


def _quantizer(param: str, alpha: float = 2.0, t: float = 4.0, **kw) -> QACQuantizer:
    return QACQuantizer(param, alpha=alpha, t=t, **kw).double()


def _closed_form(param: str, x: float, q: float, T: int, alpha: float, d: float) -> tuple[float, float, float]:
    """(∂Q/∂x, ∂Q/∂p1, ∂Q/∂p2) from the table of §4.1, evaluated at the integer T_l."""
    r = q - x
    if x < 0:
        return 0.0, 0.0, 0.0
    if x <= alpha:
        inside = {"n_d": (0.0, r / d), "n_alpha": (-LN2 * r, r / alpha), "d_alpha": (r / d, 0.0),
                  "t_alpha": (-r / T, r / alpha)}[param]
        return (1.0, *inside)
    above = {"n_d": (LN2 * T * d, float(T)), "n_alpha": (0.0, 1.0), "d_alpha": (0.0, 1.0),
             "t_alpha": (0.0, 1.0)}[param]
    return (0.0, *above)


def _grads(quant: QACQuantizer, x: float) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    quant.zero_grad()
    q = quant(xt)
    q.backward()
    p1, p2 = quant.learnable_pair()
    return float(q.detach()), xt.grad, p1.grad, p2.grad


def test_forward_is_qcfs_with_round_half_up():
    x = torch.linspace(-1.0, 3.0, 401, dtype=torch.float64)
    for T in (1, 2, 3, 5, 8):
        quant = _quantizer("t_alpha", alpha=2.0, t=float(T))
        assert_close(quant(x), qcfs(x, torch.tensor(2.0, dtype=torch.float64), T), atol=1e-15, rtol=0)
        levels = torch.clamp(torch.floor(x * T / 2.0 + 0.5), 0, T)
        assert_close(quant(x), levels * 2.0 / T, atol=0, rtol=0)
    # ties go up (round half up), not to even as torch.round would: x·T/α = 0.5 and 2.5
    quant = _quantizer("t_alpha", alpha=1.0, t=4.0)
    assert_close(quant(torch.tensor([0.125, 0.625], dtype=torch.float64)),
                 torch.tensor([0.25, 0.75], dtype=torch.float64), atol=0, rtol=0)


@pytest.mark.parametrize("param", PARAMETERISATIONS)
@pytest.mark.parametrize("t", [4.0, 2.6, 5.0])
def test_gradients_match_closed_forms(param, t):
    quant = _quantizer(param, alpha=2.0, t=t)
    T, alpha = quant.timesteps, quant.alpha
    assert T == timesteps_from_continuous(t)
    d = float(quant.d.detach()) if param in ("n_d", "d_alpha") else alpha / T
    for frac in (*BELOW, *INSIDE, *ABOVE):
        x = frac * alpha
        q, gx, g1, g2 = _grads(quant, x)
        ex, e1, e2 = _closed_form(param, x, q, T, alpha, d)
        assert_close(gx, torch.tensor(ex, dtype=torch.float64), atol=0, rtol=0, msg=f"dQ/dx at x={x}")
        assert_close(g1, torch.tensor(e1, dtype=torch.float64), atol=0, rtol=0, msg=f"dQ/dp1 at x={x}")
        assert_close(g2, torch.tensor(e2, dtype=torch.float64), atol=0, rtol=0, msg=f"dQ/dp2 at x={x}")


@pytest.mark.parametrize("param", PARAMETERISATIONS)
def test_parameter_gradients_sum_over_elements(param):
    quant = _quantizer(param, alpha=1.5, t=3.0)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 7, generator=gen, dtype=torch.float64) * 2.4 - 0.6).requires_grad_(True)
    w = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    (quant(x) * w).sum().backward()
    p1, p2 = quant.learnable_pair()
    e1 = e2 = 0.0
    q = quant(x.detach())
    d = float(quant.d.detach()) if param in ("n_d", "d_alpha") else quant.alpha / quant.timesteps
    for xi, qi, wi in zip(x.detach().flatten().tolist(), q.flatten().tolist(), w.flatten().tolist()):
        _, a, b = _closed_form(param, xi, qi, quant.timesteps, quant.alpha, d)
        e1, e2 = e1 + wi * a, e2 + wi * b
    assert_close(p1.grad, torch.tensor(e1, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    assert_close(p2.grad, torch.tensor(e2, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    inside = ((x.detach() >= 0) & (x.detach() <= quant.alpha)).double()
    assert_close(x.grad, w * inside, atol=0, rtol=0)


def _continuous(param: str, p1: float, p2: float) -> tuple[float, float]:
    """(T, α) as smooth functions of the learnable pair, without rounding T."""
    if param == "t_alpha":
        return p1, p2
    if param == "n_alpha":
        return 2.0 ** p1, p2
    if param == "n_d":
        return 2.0 ** p1, p2 * 2.0 ** p1
    return p2 / p1, p2  # d_alpha: (d, α)


@pytest.mark.parametrize("param", PARAMETERISATIONS)
def test_gradients_match_finite_differences_away_from_steps(param):
    """Central differences of the straight-through surrogate: floor(u) linearised as u − frac(u₀) at the current
    parameters, T continuous. Away from rounding and clipping steps this is the function whose exact derivative
    the table gives; the custom backward must agree at an integer T."""
    quant = _quantizer(param, alpha=2.0, t=4.0)
    p1, p2 = (float(p.detach()) for p in quant.learnable_pair())
    T0, a0 = _continuous(param, p1, p2)
    assert T0 == quant.timesteps and abs(a0 - quant.alpha) < 1e-12
    d0 = a0 / T0
    eps = 1e-6

    def q_lin(x: float, p: tuple[float, float], frac0: float) -> float:
        T, a = _continuous(param, *p)
        u = x * T / a + 0.5 - frac0
        return a / T * min(max(u, 0.0), T)

    # strictly inside a level (0 < level < T, not near a .5 tie), far above α, far below 0
    xs = [x * a0 for x in (0.2, 0.33, 0.6, 0.7)] + [a0 + d0, a0 + 2.7 * d0, -d0, -2.2 * d0]
    for x in xs:
        u0 = x * T0 / a0 + 0.5
        frac0 = u0 - math.floor(u0)
        assert 0.05 < frac0 < 0.95 or x < -d0 / 2 or x > a0 + d0 / 2
        fd = []
        for i in range(2):
            hi, lo = [p1, p2], [p1, p2]
            hi[i] += eps
            lo[i] -= eps
            fd.append((q_lin(x, tuple(hi), frac0) - q_lin(x, tuple(lo), frac0)) / (2 * eps))
        _, _, g1, g2 = _grads(quant, x)
        assert abs(float(g1) - fd[0]) < 1e-6, (param, x, float(g1), fd[0])
        assert abs(float(g2) - fd[1]) < 1e-6, (param, x, float(g2), fd[1])


def test_t_to_integer_timesteps():
    assert [timesteps_from_continuous(v) for v in (1.0, 1.49, 1.5, 2.5, 2.6, 3.4999)] == [1, 1, 2, 3, 3, 3]
    assert [timesteps_from_continuous(v, "ceil") for v in (1.0, 1.01, 2.6, 3.0)] == [1, 2, 3, 3]
    assert timesteps_from_continuous(0.2) == 1 and timesteps_from_continuous(500.0, t_max=64) == 64
    with pytest.raises(ValueError, match="t_to_T"):
        timesteps_from_continuous(2.0, "floor")
    with pytest.raises(ValueError, match="finite"):
        timesteps_from_continuous(float("nan"))
    quant = QACQuantizer(t=2.6)
    assert quant.timesteps == 3 and quant.bit_width == pytest.approx(math.log2(3))
    assert QACQuantizer(t=2.1, t_to_T="ceil").timesteps == 3
    # the forward uses T_l: the output takes T_l + 1 values
    out = QACQuantizer(alpha=1.0, t=2.6)(torch.linspace(-1, 2, 1001))
    assert sorted(set(out.tolist())) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_straight_through_t_gradient_uses_rounded_T():
    quant = _quantizer("t_alpha", alpha=1.0, t=2.6)
    x = 0.2  # level round(0.6) = 1 -> Q = 1/3
    q, _, g_t, _ = _grads(quant, x)
    assert q == pytest.approx(1 / 3)
    assert float(g_t) == pytest.approx(-(1 / 3 - 0.2) / 3, abs=1e-15)


def test_projection_keeps_parameters_valid():
    quant = QACQuantizer("t_alpha", t=4.0).train()
    with torch.no_grad():
        quant.t.fill_(100.0)
        quant.clip.fill_(-1.0)
    quant(torch.randn(4))
    assert quant.t.item() == 64.0 and quant.timesteps == 64 and quant.alpha > 0
    # case 3 diverges as d -> 0 (T = α/d): d is clamped to α/t_max
    q3 = QACQuantizer("d_alpha", alpha=2.0, t=4.0, t_max=16).train()
    with torch.no_grad():
        q3.d.fill_(1e-12)
    out = q3(torch.linspace(-1, 3, 11))
    assert torch.isfinite(out).all()
    assert q3.d.item() == pytest.approx(2.0 / 16) and q3.timesteps == 16
    qn = QACQuantizer("n_alpha", t=4.0, t_max=8).train()
    with torch.no_grad():
        qn.n.fill_(-3.0)
    qn(torch.randn(3))
    assert qn.n.item() == 0.0 and qn.timesteps == 1


def test_gradient_step_changes_t_and_alpha():
    quant = QACQuantizer(alpha=1.0, t=4.0)
    opt = torch.optim.SGD(quant.parameters(), lr=0.1)
    x = torch.linspace(0.0, 3.0, 64)
    loss = ((quant(x) - x.clamp(max=2.0)) ** 2).mean()  # the clip wants to grow towards 2
    loss.backward()
    assert quant.clip.grad.item() < 0
    opt.step()
    assert quant.clip.item() > 1.0


def test_properties_and_registry():
    quant = make_neuron("qac", alpha=2.0, t=3.0)
    assert isinstance(quant, QACQuantizer)
    assert (quant.timesteps, quant.alpha, quant.step) == (3, 2.0, pytest.approx(2 / 3))
    assert float(quant.threshold) == 2.0
    q1 = QACQuantizer("n_d", alpha=2.0, t=4.0)
    assert q1.alpha == pytest.approx(2.0) and q1.bit_width == 2.0
    assert "T=4" in repr(q1)
    assert_close(qac_quantize(torch.tensor([0.26]), 1.0, 2), torch.tensor([0.5]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(t=0.5), "t must be in"), (dict(t=0.0), "t must be in"), (dict(t=100.0), "t must be in"),
    (dict(alpha=0.0), "alpha"), (dict(alpha=float("nan")), "alpha"), (dict(param="x_y"), "param"),
    (dict(t_to_T="floor"), "t_to_T"), (dict(t_max=0), "t_max")])
def test_bad_quantizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QACQuantizer(**kwargs)


def test_summary_and_average_timestep():
    net = nn.Sequential(nn.Linear(2, 2), QACQuantizer(t=2.0), QACQuantizer(t=3.0, alpha=1.5), QCFS(levels=2))
    rows = quantizer_summary(net)
    assert [(r["layer"], r["T"], r["alpha"]) for r in rows] == [("1", 2, 8.0), ("2", 3, 1.5), ("3", 2, 8.0)]
    assert rows[1]["bit_width"] == pytest.approx(math.log2(3))
    json.dumps(rows)
    avg = average_timestep(net)
    assert avg.plain == pytest.approx(7 / 3) and avg.op_weighted is None
    avg = average_timestep(net, weighted_by_ops={"1": 1.0, "2": 2.0, "3": 1.0})
    assert avg.op_weighted == pytest.approx((2 + 6 + 2) / 4)
    assert average_timestep(net, [0.0, 1.0, 0.0]).op_weighted == 3.0
    with pytest.raises(ValueError, match="lacks op counts"):
        average_timestep(net, {"1": 1.0})
    with pytest.raises(ValueError, match="3 timestep layers"):
        average_timestep(net, [1.0])
    with pytest.raises(ValueError, match="no quantized or spiking layers"):
        average_timestep(nn.Linear(2, 2))


class _Block(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.functional = functional

    def forward(self, x):
        return F.relu(self.fc(x)) if self.functional else self.fc(x)


def test_prepare_qat_replaces_relu_qcfs_and_maxpool():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2, 1),
                        nn.Conv2d(4, 4, 3), QCFS(levels=5, threshold=3.0), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2)).double()
    report = prepare_qat(net, t=3.0, alpha=6.0)
    assert [(r["name"], r["old"], r["new"]) for r in report.replaced] == [
        ("2", "ReLU", "QACQuantizer"), ("3", "MaxPool2d", "AvgPool2d"), ("5", "QCFS", "QACQuantizer"),
        ("6", "AdaptiveMaxPool2d", "AdaptiveAvgPool2d")]
    assert report.n_quantizers == 2
    assert (net[2].timesteps, net[2].alpha) == (3, 6.0)
    assert (net[5].timesteps, net[5].alpha) == (5, 3.0)  # initialised from the QCFS it replaced
    assert (net[3].kernel_size, net[3].stride, net[3].padding) == (2, 2, 1)
    assert net[2].clip.dtype == torch.float64
    json.dumps(report.to_dict())
    net(torch.randn(2, 3, 12, 12, dtype=torch.float64)).sum().backward()
    assert net[2].t.grad is not None


def test_prepare_qat_rejects_what_it_cannot_quantize():
    with pytest.raises(ValueError, match=r"1 \(GELU\)"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2), nn.GELU()))
    net = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.ReLU())
    report = prepare_qat(net, strict=False)
    assert [u["name"] for u in report.unsupported] == ["1"] and isinstance(net[2], QACQuantizer)
    with pytest.raises(ValueError, match="functional ReLU"):
        prepare_qat(nn.Sequential(_Block(functional=True), nn.ReLU()))
    assert prepare_qat(nn.Sequential(_Block(functional=False), nn.ReLU())).n_quantizers == 1
    with pytest.raises(ValueError, match="itself is a ReLU"):
        prepare_qat(nn.ReLU())
    with pytest.raises(ValueError, match="t must be in"):
        prepare_qat(nn.Sequential(nn.ReLU()), t=0.0)


# ------------------------------------------------------------------------------ α from the data (issue 16)
def _digits_batches(n: int = 2, size: int = 32) -> list[torch.Tensor]:
    from multispike.data import load_dataset

    images, _, info = load_dataset("digits", None, "train")
    x = images[: n * size].float() / 255
    x = (x - torch.tensor(info.mean).view(1, -1, 1, 1)) / torch.tensor(info.std).view(1, -1, 1, 1)
    return list(x.split(size))


def test_qat_alpha_starts_at_each_layers_percentile_unless_given(capsys):
    """`multispike qat` without --alpha-init: after prepare_qat each quantizer made from a ReLU has α = the 99th
    percentile of its own inputs, measured with the earlier quantizers' new α in place; t is untouched, BN buffers
    too. An explicit α (--alpha-init -> prepare_qat alpha) and --clip-init none keep the given/default α."""
    from multispike.models import create_model
    from multispike.train.config import TrainConfig
    from multispike.train.distributed import DistInfo
    from multispike.train.runner import _prepare_qat

    batches = _digits_batches()
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def build():
        torch.manual_seed(0)
        return create_model("vgg_small", num_classes=10, neuron="relu", T=1, in_channels=1, input_size=[8, 8])

    model = build()
    bn_before = {k: v.clone() for k, v in model.named_buffers()}
    cfg = TrainConfig(mode="qat", clip_init="99%", prepare_qat={"param": "t_alpha", "t": 3.0})
    _prepare_qat(cfg, model, loader, dist)
    said = capsys.readouterr().out
    quant = [(n, m) for n, m in model.named_modules() if isinstance(m, QACQuantizer)]
    assert len(quant) >= 3 and "QAC clips α from the data (99% of each layer's pre-activations" in said
    assert all(torch.equal(v, bn_before[k]) for k, v in model.named_buffers() if k in bn_before)   # BN stats
    model.train()
    alphas = []
    for name, layer in quant:
        seen = []
        h = layer.register_forward_pre_hook(lambda mod, a, seen=seen: seen.append(a[0].detach().flatten()))
        with torch.no_grad():
            for x in batches:
                model(x)
        h.remove()
        v = torch.cat(seen)
        k = int(round(v.numel() * 0.99))
        assert layer.alpha == float(v.kthvalue(k).values) != 8.0, name    # exactly the layer's percentile
        assert layer.timesteps == 3 and float(layer.t.detach()) == 3.0
        alphas.append(layer.alpha)
    assert f"{alphas[0]:.3g}" in said

    for prep, clip_init in (({"param": "t_alpha", "t": 3.0, "alpha": 4.0}, "99%"),     # --alpha-init 4
                            ({"param": "t_alpha", "t": 3.0}, "none")):                 # --clip-init none
        model = build()
        _prepare_qat(TrainConfig(mode="qat", clip_init=clip_init, prepare_qat=prep), model, loader, dist)
        assert [m.alpha for _, m in model.named_modules() if isinstance(m, QACQuantizer)] == \
            [prep.get("alpha", 8.0)] * len(quant)
        assert "QAC clips α from the data" not in capsys.readouterr().out


@pytest.mark.parametrize("param", PARAMETERISATIONS)
def test_set_qac_alpha_keeps_the_timestep(param):
    from multispike.quant.clip_init import set_qac_alpha_

    q = QACQuantizer(param, alpha=8.0, t=4.0)
    set_qac_alpha_(q, 1.25)
    assert q.timesteps == 4 and q.alpha == pytest.approx(1.25, rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        set_qac_alpha_(q, 0.0)


@pytest.mark.parametrize("param", ["t_alpha", "n_alpha", "n_d", "d_alpha"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False])
def test_a_quantizer_used_twice_in_one_graph_gets_both_gradients(param, dtype, fused, monkeypatch):
    """Each training-mode call projects the parameters in place; a second call before backward must neither
    break autograd nor change what the first call's backward uses."""
    import importlib
    qac_mod = importlib.import_module("multispike.quant.qac")
    if not fused:
        monkeypatch.setattr(qac_mod, "_fused_ok", lambda x, clip: False)
    gen = torch.Generator().manual_seed(2)
    x1, x2 = (torch.rand(4, 8, 5, 5, generator=gen) * 4 - 0.5 for _ in range(2))
    q = QACQuantizer(param=param, alpha=2.5, t=3.0).train()
    (q(x1.to(dtype)).float().sum() + 2 * q(x2.to(dtype)).float().sum()).backward()
    together = [p.grad.clone() for p in q.parameters()]
    q.zero_grad()
    q(x1.to(dtype)).float().sum().backward()
    (2 * q(x2.to(dtype)).float().sum()).backward()
    apart = [p.grad.clone() for p in q.parameters()]
    assert len(together) == 2
    for a, b in zip(together, apart):
        assert_close(a, b)
