"""The trainer's speed-recipe features on real CIFAR-10 slices: EMA, time budget, label smoothing, flip TTA,
bf16/channels_last, the one prefix evaluator, and the airbench-style zoo backbone through `convert --to lmht`."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from multispike.data import Augment, TensorLoader
from multispike.metrics import prefix_accuracy, prefix_correct, sequence_outputs
from multispike.models import create_model
from multispike.train import Trainer, load_checkpoint, resolve_config, run_training
from multispike.train.ema import ModelEMA
from multispike.train.losses import build_loss

from conftest import shared_datasets_root

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
WIDTHS = (8, 8, 16, 16)


@pytest.fixture(scope="module")
def cifar(cifar10_splits):
    tr, te = cifar10_splits
    return tr.images[:320].clone(), tr.labels[:320].clone(), te.images[:128].clone(), te.labels[:128].clone()


def _loaders(cifar, batch=64, **aug):
    xtr, ytr, xte, yte = cifar
    train = TensorLoader(xtr, ytr, batch, seed=0, augment=Augment(crop_padding=2, hflip=True, **aug), mean=MEAN,
                         std=STD, drop_last=True)
    test = TensorLoader(xte, yte, 64, shuffle=False, mean=MEAN, std=STD)
    return train, test


def _cfg(tmp_path, **kw):
    base = dict(model="airbench_cifar", model_kwargs={"widths": list(WIDTHS)}, mode="ann", neuron="relu",
                timesteps=1, epochs=2, lr=0.05, out=str(tmp_path / "run"), progress=False, num_classes=10,
                in_channels=3)
    base.update(kw)
    return resolve_config(overrides=base)


def _model(neuron="relu", T=1, **nk):
    torch.manual_seed(0)
    return create_model("airbench_cifar", num_classes=10, neuron=neuron, T=T, neuron_kwargs=nk or None,
                        widths=WIDTHS)


# ------------------------------------------------------------------------------------------------- EMA
def test_ema_update_is_the_closed_form_blend():
    a, b = _model(), _model()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    ema = ModelEMA(a, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)      # (1+0)/(10+0) < 0.9
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    ema.update(b)
    d = 0.1
    for k, v in ema.state_dict().items():
        src = b.state_dict()[k]
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, d * start[k] + (1 - d) * src)
        else:
            assert torch.equal(v, src)
    assert ema.updates == 1 and ema.current_decay() == pytest.approx(2 / 11)
    assert ModelEMA(a, 0.05, warmup=True).current_decay() == 0.05
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(a, 1.0)


def test_ema_changes_the_evaluated_weights_and_the_final_checkpoint(cifar, tmp_path):
    train, test = _loaders(cifar)
    s = run_training(_cfg(tmp_path, ema_decay=0.8, epochs=2), model=_model(), train_loader=train, eval_loader=test)
    assert s["weights"] == "ema"
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.meta["weights"] == "ema"
    # the final checkpoint's weights are the average, and evaluating them reproduces the reported accuracy
    net = _model()
    net.load_state_dict({k: v for k, v in ckpt.model_state.items()})
    res = prefix_accuracy(net, test)
    assert res["acc"] == pytest.approx(s["final_acc"], abs=1e-12)
    # the online weights of the previous (epoch-1) checkpoint differ from the average of that step
    from safetensors.torch import load_file
    ema_state = load_file(str(tmp_path / "run" / "checkpoints" / "ema.safetensors"))
    assert any(not torch.equal(ema_state[k], ckpt.model_state[k]) for k in ema_state
               if ema_state[k].dtype.is_floating_point)


def test_trainer_evaluates_the_ema_module_not_the_online_model(cifar, tmp_path):
    train, test = _loaders(cifar)
    t = Trainer(_model(), train, test, _cfg(tmp_path, ema_decay=0.5, ema_warmup=False))
    t.train_epoch(0)
    assert t.eval_model is t.ema.module
    online = prefix_accuracy(t.model, test)
    averaged = prefix_accuracy(t.ema.module, test)
    got = t.evaluate()
    assert got["eval_weights"] == "ema"
    assert got["eval_loss"] == pytest.approx(averaged["loss"], rel=1e-6)
    assert averaged["loss"] != pytest.approx(online["loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------ time budget
def test_time_budget_stops_cleanly_mid_epoch_and_resume_only_evaluates(cifar, tmp_path):
    train, test = _loaders(cifar, batch=32)
    t0 = time.perf_counter()
    s = run_training(_cfg(tmp_path, epochs=50, time_budget_s=1.5), model=_model(), train_loader=train,
                     eval_loader=test)
    took = time.perf_counter() - t0
    assert s["stop_reason"] == "time_budget" and s["time_budget_s"] == 1.5
    assert 0 < s["steps"] < 50 * len(train)
    assert 1.5 <= s["elapsed_s"] and took < 60
    assert s["final_acc"] is not None and 0 <= s["final_acc"] <= 1
    assert s["epochs_completed"] == pytest.approx(s["steps"] / len(train))
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.meta["step"] == s["steps"] and ckpt.meta["stop_reason"] == "time_budget"
    # the schedule followed the clock: the last lr is far below the one a 50-epoch cosine would have at that step
    from multispike.train.optim import LRSchedule
    sched = LRSchedule("cosine", 0.05, len(train), 50)
    rec = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    last_lr = [r for r in rec if r.get("event") == "epoch"][-1]["lr"]
    assert last_lr < 0.5 * sched.lr_at(s["steps"] - 1)
    # resuming a run whose budget is spent trains nothing more
    s2 = run_training(_cfg(tmp_path, epochs=50, time_budget_s=1.5, resume="auto"), model=_model(),
                      train_loader=train, eval_loader=test)
    assert s2["steps"] == s["steps"] and s2["stop_reason"] == "time_budget"


# -------------------------------------------------------------------------------------- label smoothing
def test_label_smoothing_loss_is_the_closed_form(cifar, tmp_path):
    xtr, ytr, _, _ = cifar
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * 3
    y = ytr[:16].long()
    eps = 0.2
    logp = F.log_softmax(logits, -1)
    want = ((1 - eps) * -logp.gather(1, y[:, None]).squeeze(1) + eps * -logp.mean(1)).mean()
    got = build_loss("ce", eps, 0.0, 1.0)(logits, y)
    torch.testing.assert_close(got, want)
    assert build_loss("ce", 0.0, 0.0, 1.0)(logits, y) != pytest.approx(float(want))
    # the trainer uses it: its step loss equals the closed form on the same batch and weights
    import copy
    train, test = _loaders(cifar)
    net = _model()
    twin = copy.deepcopy(net).train()
    xb, yb = next(iter(train))
    with torch.no_grad():
        lp = F.log_softmax(twin(xb), -1)
    closed = ((1 - eps) * -lp.gather(1, yb[:, None]).squeeze(1) + eps * -lp.mean(1)).mean()
    t = Trainer(net, train, test, _cfg(tmp_path, label_smoothing=eps))
    loss, _ = t.train_step(xb, yb)
    torch.testing.assert_close(loss, closed)


# -------------------------------------------------------------------------------------------- flip TTA
def test_flip_tta_is_the_mean_of_the_flipped_logits(cifar, tmp_path):
    _, _, xte, yte = cifar
    net = _model().eval()
    x = TensorLoader(xte, yte, 64, shuffle=False, mean=MEAN, std=STD)
    xb, yb = next(iter(x))
    with torch.no_grad():
        want = 0.5 * (net(xb) + net(xb.flip(-1)))
        got = sequence_outputs(net, xb, tta_flip=True)
    assert got.shape == (1, 64, 10)
    torch.testing.assert_close(got[0], want)
    assert not torch.allclose(got[0], net(xb).detach())
    # the trainer's evaluation with tta_flip reports exactly the accuracy of those logits
    train, test = _loaders(cifar)
    t = Trainer(net, train, test, _cfg(tmp_path, tta_flip=True))
    hits = 0
    with torch.no_grad():
        for xb, yb in test:
            hits += int(((0.5 * (net(xb) + net(xb.flip(-1)))).argmax(-1) == yb).sum())
    assert t.evaluate()["eval_acc"] == pytest.approx(hits / 128)


# ------------------------------------------------------------------------------------ prefix evaluator
def test_prefix_accuracy_agrees_with_separate_runs_at_each_T(cifar):
    """A causal SNN's accuracy at prefix t of a T-step run equals the accuracy of a t-step run."""
    _, _, xte, yte = cifar
    test = TensorLoader(xte, yte, 64, shuffle=False, mean=MEAN, std=STD)
    net = _model("if", T=4, v_threshold=0.5).eval()
    res = prefix_accuracy(net, test)
    assert len(res["acc_per_t"]) == 4 and res["acc"] == res["acc_per_t"][-1]
    for t in range(1, 5):
        net.set_timesteps(t)
        alone = prefix_accuracy(net, test)
        assert alone["acc"] == res["acc_per_t"][t - 1]
        # and equals the plain argmax of the t-step time mean
        hits = 0
        with torch.no_grad():
            for xb, yb in test:
                hits += int((net(xb).argmax(-1) == yb).sum())
        assert alone["acc"] == pytest.approx(hits / 128)
    assert len(set(res["acc_per_t"])) > 1    # the prefixes are not all the same number
    out = torch.randn(3, 5, 4)
    y = torch.randint(0, 4, (5,))
    assert prefix_correct(out, y)[-1] == (out.mean(0).argmax(-1) == y).sum()


# ------------------------------------------------------------------------- bf16, channels_last, logging
def test_bf16_channels_last_cutout_reflect_run_and_step_logs(cifar, tmp_path):
    cfg = _cfg(tmp_path, amp="bf16", channels_last=True, epochs=1, log_every_steps=2, label_smoothing=0.2,
               dataset="cifar10", data_dir=str(shared_datasets_root()), subset=256, eval_subset=128, batch_size=64, cutout=8,
               pad_mode="reflect", crop_padding=2, num_classes=None, in_channels=None)
    s = run_training(cfg)
    assert s["amp"] == "bf16" and math.isfinite(s["final_train_loss"]) and s["steps"] == 4
    recs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["event"] == "step"]
    assert [r["step"] for r in steps] == [2, 4] and all(r["images_per_s"] > 0 for r in steps)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["cutout"] == 8 and saved["pad_mode"] == "reflect" and saved["channels_last"] is True


# ------------------------------------------------------------------------------ the zoo speed backbone
@pytest.mark.parametrize("neuron,kw", [("relu", {}), ("qcfs", {"levels": 4}), ("qac", {"t": 4.0})])
def test_airbench_backbone_builds_with_each_ann_activation(cifar, neuron, kw):
    _, _, xte, _ = cifar
    net = _model(neuron, **kw)
    x = (xte[:4].float() / 255 - 0.5)
    assert net(x).shape == (4, 10)
    with pytest.raises(ValueError, match="widths"):
        create_model("airbench_cifar", widths=(8, 8, 16))


def test_airbench_qcfs_converts_to_lmht_with_identical_predictions(cifar):
    from multispike.convert.lmht import convert_qcfs_to_lmht
    _, _, xte, yte = cifar
    test = TensorLoader(xte, yte, 64, shuffle=False, mean=MEAN, std=STD)
    ann = _model("qcfs", levels=4, threshold=2.0).eval()
    with torch.no_grad():   # non-trivial BN statistics
        for m in ann.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    snn = convert_qcfs_to_lmht(ann, levels=2, T=2, hybrid_bias_scale="exact").eval()
    a = prefix_accuracy(ann, test)
    s = prefix_accuracy(snn, test)
    with torch.no_grad():
        xb, _ = next(iter(test))
        agree = (ann(xb).argmax(-1) == snn(xb).argmax(-1)).float().mean().item()
    assert agree == 1.0 and abs(s["acc"] - a["acc"]) <= 1 / 128


# ------------------------------------------------------------------------------------- one training loop
def test_demo_train_classifier_is_the_trainer_and_matches_the_old_loop_bit_for_bit():
    """demo.train_classifier is now a wrapper over multispike.train.Trainer; it reproduces the loop it replaced
    (Adam, LambdaLR cosine, CE on model(x), reset after each step) exactly."""
    import copy

    from multispike.demo import DemoConfig, DigitsCNN, _loaders as demo_loaders, train_classifier
    from multispike.neurons.base import reset_net

    train, _, _ = demo_loaders(DemoConfig.quick_config())
    torch.manual_seed(0)
    a = DigitsCNN()
    b = copy.deepcopy(a)
    opt = torch.optim.Adam(a.parameters(), lr=3e-3)
    total = len(train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    a.train()
    train.set_epoch(0)
    for x, y in train:
        loss = F.cross_entropy(a(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        reset_net(a)
    train_classifier(b, train, 1, 3e-3, "wrapper", progress=False)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
