"""QAC latency term λ·Σ_l w_l·t_l (multispike's addition), the (t, α) optimizer group and a short QAT run on digits.

* the term's gradient w.r.t. the learnable pair of every parameterisation equals the closed form of
  ``LatencyRegulariser``'s docstring and central finite differences (float64);
* MAC weights: the synaptic MACs charged to each quantizer, normalised to mean 1;
* ``CompositeOptimizer`` (Adam on (t, α) beside SGD on the weights) round-trips through ``state_dict`` and the
  checkpoint's flat format and continues bit-identically;
* a short QAT run through the training engine on the embedded digits: with the term the mean T_l falls below the
  start t = 4 and the layers' T_l differ; without it the mean does not fall.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from multispike.quant.qac import PARAMETERISATIONS, QACQuantizer, quantizer_summary
from multispike.quant.latency import LatencyRegulariser, format_timestep_table, quantizer_macs, quantizer_parameters
from multispike.quant.qat import prepare_qat
from multispike.train.checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from multispike.train.optim import CompositeOptimizer, build_training_optimizer


def _closed_form(q: QACQuantizer, lam: float, w: float) -> tuple[float, float]:
    """∂(λ·w·t_l)/∂(p1, p2) from the table in LatencyRegulariser's docstring."""
    p1, p2 = (float(p.detach()) for p in q.learnable_pair())
    if q.param == "t_alpha":
        return lam * w, 0.0
    if q.param in ("n_alpha", "n_d"):
        return lam * w * math.log(2.0) * 2.0 ** p1, 0.0
    d, alpha = p1, p2                                   # d_alpha: (p1, p2) = (d, α), t = α/d
    return -lam * w * alpha / d ** 2, lam * w / d


@pytest.mark.parametrize("param", PARAMETERISATIONS)
def test_latency_gradient_matches_closed_form_and_finite_differences(param):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), QACQuantizer(param=param, alpha=2.5, t=3.3),
                        nn.Linear(4, 4), QACQuantizer(param=param, alpha=1.5, t=5.6)).double()
    lam, w = 0.07, [0.4, 1.9]
    reg = LatencyRegulariser(net, lam, layer_weights=w)
    quants = [m for m in net.modules() if isinstance(m, QACQuantizer)]
    value = reg()
    expected = lam * sum(wi * q.continuous_timesteps for wi, q in zip(w, quants))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    value.backward()
    for wi, q in zip(w, quants):
        p1, p2 = q.learnable_pair()
        g1, g2 = _closed_form(q, lam, wi)
        assert float(p1.grad) == pytest.approx(g1, rel=1e-12, abs=1e-15)
        assert float(0.0 if p2.grad is None else p2.grad) == pytest.approx(g2, rel=1e-12, abs=1e-15)
        for p in (p1, p2):                               # central finite differences of the term itself
            h = 1e-6
            with torch.no_grad():
                p += h
                up = float(reg())
                p -= 2 * h
                down = float(reg())
                p += h
            fd = (up - down) / (2 * h)
            got = 0.0 if p.grad is None else float(p.grad)
            assert got == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_latency_weight_zero_and_bad_input():
    net = nn.Sequential(nn.Linear(2, 2), QACQuantizer(t=4.0))
    zero = LatencyRegulariser(net, 0.0)()
    assert float(zero) == 0.0
    with pytest.raises(ValueError, match="λ must be a finite number >= 0"):
        LatencyRegulariser(net, -1.0)
    with pytest.raises(ValueError, match="per_layer must be one of"):
        LatencyRegulariser(net, 1.0, "flops")
    with pytest.raises(ValueError, match="has no QACQuantizer"):
        LatencyRegulariser(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 1.0)
    with pytest.raises(ValueError, match="got 2 layer weights for 1"):
        LatencyRegulariser(net, 1.0, layer_weights=[1.0, 2.0])
    with pytest.raises(RuntimeError, match="needs one forward pass"):
        LatencyRegulariser(net, 1.0, "macs")()


def test_mac_weights_charge_each_synaptic_op_to_the_next_quantizer():
    # conv 1->4 (3x3, 8x8 -> 6x6): 4·36·9 = 1296 MACs; linear 144->8: 1152 MACs; the readout is not charged
    net = nn.Sequential(nn.Conv2d(1, 4, 3), QACQuantizer(t=3.0), nn.Flatten(), nn.Linear(144, 8), QACQuantizer(),
                        nn.Linear(8, 2))
    x = torch.randn(2, 1, 8, 8)
    assert quantizer_macs(net, x) == {"1": 1296.0, "4": 1152.0}
    eager = LatencyRegulariser(net, 0.5, "macs", example_input=x)
    lazy = LatencyRegulariser(net, 0.5, "macs")
    net(x)                                                       # the first (training) forward records the MACs
    for reg in (eager, lazy):
        assert reg.weights == pytest.approx({"1": 2 * 1296 / 2448, "4": 2 * 1152 / 2448})
        assert float(reg().detach()) == pytest.approx(0.5 * (2 * 1296 / 2448 * 3.0 + 2 * 1152 / 2448 * 4.0))
    assert lazy._recorder is None and not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_composite_optimizer_round_trips_through_the_checkpoint_format():
    from multispike.train import resolve_config

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 6), QACQuantizer(alpha=2.0, t=4.0), nn.Linear(6, 3))
    cfg = resolve_config(overrides=dict(mode="qat", model="x", opt="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4,
                                        quant_opt="adam", quant_lr=3e-2, quant_weight_decay=0.0))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def step(net, opt):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y) + LatencyRegulariser(net, 0.01)()
        loss.backward()
        opt.step()

    a = copy.deepcopy(base)
    opt_a = build_training_optimizer(a, cfg)
    assert isinstance(opt_a, CompositeOptimizer)
    assert [g["name"] for g in opt_a.param_groups] == ["default", "quant"]
    assert isinstance(opt_a.optimizers[1], torch.optim.Adam) and opt_a.param_groups[1]["lr"] == 3e-2
    assert {id(p) for p in opt_a.param_groups[1]["params"]} == {id(p) for p in quantizer_parameters(a)}
    for _ in range(3):
        step(a, opt_a)
    tensors, meta = flatten_optimizer_state(opt_a.state_dict())
    b = copy.deepcopy(a)
    opt_b = build_training_optimizer(b, cfg)
    opt_b.load_state_dict(unflatten_optimizer_state(tensors, meta))
    for _ in range(2):
        step(a, opt_a)
        step(b, opt_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    same = build_training_optimizer(copy.deepcopy(base), resolve_config(overrides=dict(
        mode="qat", model="x", opt="adam", lr=1e-3, quant_lr=3e-2)))
    assert isinstance(same, torch.optim.Adam) and [g["name"] for g in same.param_groups] == ["default", "quant"]


@pytest.fixture(scope="module")
def digits_ann():
    from multispike.demo import DemoConfig, DigitsCNN, _loaders, train_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train, test, calib = _loaders(DemoConfig())
        ann = DigitsCNN("relu")
        train_classifier(ann, train, 4, 3e-3, "ann", progress=False)
        yield ann, train, test, calib
    finally:
        torch.set_num_threads(threads)


def _qat(digits_ann, tmp_path, latency_weight: float, **extra) -> tuple[nn.Module, dict]:
    from multispike.train import resolve_config, run_training

    ann, train, test, _ = digits_ann
    net = copy.deepcopy(ann)
    prepare_qat(net, t=4.0, alpha=4.0)
    cfg = resolve_config(overrides=dict(
        mode="qat", model="digits_cnn", timesteps=1, epochs=2, opt="adam", lr=1e-3, weight_decay=0.0,
        quant_opt="adam", quant_lr=3e-2, latency_weight=latency_weight, latency_per_layer="macs",
        out=str(tmp_path / f"lam{latency_weight}"), progress=False, num_classes=10, in_channels=1, num_threads=1,
        **extra))
    summary = run_training(cfg, model=net, train_loader=train, eval_loader=test)
    return net, summary


def test_short_qat_run_with_latency_term_lowers_and_differentiates_T_l(digits_ann, tmp_path):
    import json

    plain, s0 = _qat(digits_ann, tmp_path, 0.0)
    lat, s1 = _qat(digits_ann, tmp_path, 1e-2)
    T0 = [r["T"] for r in quantizer_summary(plain)]
    T1 = [r["T"] for r in quantizer_summary(lat)]
    assert sum(T0) / len(T0) >= 4.0                   # cross-entropy alone does not lower them
    assert sum(T1) / len(T1) < 4.0 and len(set(T1)) > 1
    assert s1["final_acc"] > 0.9
    log = [json.loads(line) for line in (tmp_path / "lam0.01" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("event") == "epoch"]
    assert len(epochs) == 2 and [r["T"] for r in epochs[-1]["qac_layers"]] == T1
    assert epochs[-1]["latency"]["per_layer"] == "macs" and epochs[-1]["latency_term"] > 0
    assert epochs[-1]["lr_groups"]["quant"] < 3e-2     # the (t, α) group follows the cosine schedule
    table = (tmp_path / "lam0.01" / "timesteps.txt").read_text()
    assert table == ("per-layer T_l (continuous t) at the end of each epoch; alpha = clip = SNN threshold\n"
                     + format_timestep_table([{"epoch": r["epoch"], "layers": r["qac_layers"]} for r in epochs])
                     + "\n")
    assert "latency_term" not in [r for r in open(tmp_path / "lam0.0" / "log.jsonl")][0]


@pytest.mark.parametrize("ema_mode", [None, "lookahead"])
def test_qat_run_fixes_T_l_for_the_last_part_and_meets_the_budget(digits_ann, tmp_path, ema_mode):
    """timestep_freeze_fraction: after the fix the T_l never change, t gets no update while the clips still
    learn, the weighted mean meets timestep_budget, the log and summary record it, and the checkpoint keeps the
    fixed T_l (so `multispike convert --to mixed` runs exactly them) - also when the weights saved are an EMA
    (lookahead copies the average back into the model every few steps)."""
    import json

    from multispike.quant.qac import QACQuantizer
    from multispike.train.checkpoint import load_checkpoint

    ema = dict(ema_decay=0.9, ema_mode=ema_mode, ema_every=2) if ema_mode else {}
    net, summary = _qat(digits_ann, tmp_path, 1e-2, timestep_freeze_fraction=0.5, timestep_budget=2.0, **ema)
    out = tmp_path / "lam0.01"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    fixes = [r for r in log if r.get("event") == "timesteps_fixed"]
    assert len(fixes) == 1
    fix = fixes[0]
    steps_per_epoch = len(digits_ann[1])
    assert fix["step"] == steps_per_epoch          # half of two epochs: fixed before the first step of epoch 2
    assert fix["weighting"] == "macs" and fix["budget"] == 2.0 and fix["mean_T"] <= 2.0 + 1e-9
    assert fix["mean_T_rounded"] >= fix["mean_T"]
    quantizers = {n: m for n, m in net.named_modules() if isinstance(m, QACQuantizer)}
    assert set(fix["layers"]) == set(quantizers)
    epochs = [r for r in log if r.get("event") == "epoch"]
    for name, q in quantizers.items():
        assert q.is_fixed and q.timesteps == fix["layers"][name]["T"]
        if not ema_mode:   # the level parameter got no update after the fix (lookahead copies the average in)
            assert float(q.t.detach()) == fix["layers"][name]["T"]
        row = next(r for r in epochs[-1]["qac_layers"] if r["layer"] == name)
        assert row["T"] == q.timesteps
    # the clips kept learning in epoch 2
    alphas = [{r["layer"]: r["alpha"] for r in e["qac_layers"]} for e in epochs]
    assert any(abs(alphas[1][n] - alphas[0][n]) > 1e-6 for n in quantizers)
    assert summary["timestep_fix"]["lowered"] == fix["lowered"]
    ckpt = load_checkpoint(out)
    saved = {k[: -len(".fixed_T")]: int(v) for k, v in ckpt.model_state.items() if k.endswith(".fixed_T")}
    assert saved == {n: q.timesteps for n, q in quantizers.items()}
    assert summary["final_acc"] > 0.8


def test_resuming_after_the_fix_keeps_it_and_its_record(digits_ann, tmp_path):
    """A resumed run finds its T_l fixed (checkpoint buffers), does not fix again, and keeps the fix's log record."""
    import json

    from multispike.quant.qac import QACQuantizer
    from multispike.train import resolve_config, run_training

    first_net, first = _qat(digits_ann, tmp_path, 1e-2, timestep_freeze_fraction=0.5, timestep_budget=2.0)
    out = tmp_path / "lam0.01"
    ann, train, test, _ = digits_ann
    net = copy.deepcopy(ann)
    prepare_qat(net, t=4.0, alpha=4.0)
    cfg = resolve_config(overrides=dict(
        mode="qat", model="digits_cnn", timesteps=1, epochs=3, opt="adam", lr=1e-3, weight_decay=0.0,
        quant_opt="adam", quant_lr=3e-2, latency_weight=1e-2, latency_per_layer="macs", out=str(out), resume="auto",
        progress=False, num_classes=10, in_channels=1, num_threads=1, timestep_freeze_fraction=0.5,
        timestep_budget=2.0))
    summary = run_training(cfg, model=net, train_loader=train, eval_loader=test)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == [1, 2, 3]
    fixes = [r for r in log if r.get("event") == "timesteps_fixed"]
    assert len(fixes) == 1 and summary["timestep_fix"] == fixes[0] == {**first["timestep_fix"]}
    T_first = [m.timesteps for m in first_net.modules() if isinstance(m, QACQuantizer)]
    assert [m.timesteps for m in net.modules() if isinstance(m, QACQuantizer)] == T_first
    assert all(m.is_fixed for m in net.modules() if isinstance(m, QACQuantizer))
