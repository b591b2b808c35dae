"""Learning-rate schedules (per-iteration warm-up, step, multistep, cosine) and parameter groups."""
import math

import pytest
import torch
from torch import nn

from multispike.neurons import IFNeuron, LIFNeuron
from multispike.train import LRSchedule, build_optimizer, build_param_groups, match_neuron_param


def test_linear_warmup_then_cosine_values():
    s = LRSchedule("cosine", lr=0.1, steps_per_epoch=10, epochs=5, warmup_epochs=1, warmup_lr=0.01, min_lr=0.001)
    assert s.warmup_steps == 10 and s.total_steps == 50
    # warm-up: 0.01 + (0.1 - 0.01)·s/10
    for step in range(10):
        assert s.lr_at(step) == pytest.approx(0.01 + 0.09 * step / 10, rel=1e-12)
    # cosine over the remaining 40 steps from 0.1 down to 0.001
    for step in (10, 20, 30, 49, 50, 60):
        p = min((step - 10) / 40, 1.0)
        assert s.lr_at(step) == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * p)), rel=1e-12)
    assert s.lr_at(10) == pytest.approx(0.1, rel=1e-12)
    assert s.lr_at(50) == pytest.approx(0.001, rel=1e-12)


def test_multistep_is_per_iteration_in_fractional_epochs():
    # M-LIF VGG16 C10: warm-up 1e-5 -> 1e-4 over 10 epochs, ÷5 at 62 and 150 (algorithms.md §8.3).
    s = LRSchedule("multistep", lr=1e-4, steps_per_epoch=4, epochs=200, warmup_epochs=10, warmup_lr=1e-5,
                   milestones=(62, 150), decay_rate=0.2)
    assert s.lr_at(0) == pytest.approx(1e-5)
    assert s.lr_at(20) == pytest.approx(1e-5 + 9e-5 * 20 / 40)
    assert s.lr_at(40) == pytest.approx(1e-4)
    assert s.lr_at(62 * 4 - 1) == pytest.approx(1e-4)
    assert s.lr_at(62 * 4) == pytest.approx(2e-5)
    assert s.lr_at(150 * 4) == pytest.approx(4e-6)


def test_step_and_constant():
    s = LRSchedule("step", lr=1.0, steps_per_epoch=3, epochs=10, decay_epochs=2, decay_rate=0.5)
    assert [s.lr_at(k) for k in (0, 5, 6, 11, 12)] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])
    c = LRSchedule("constant", lr=0.3, steps_per_epoch=1, epochs=3, warmup_epochs=1, warmup_lr=0.0)
    assert [c.lr_at(k) for k in (0, 1, 2)] == pytest.approx([0.0, 0.3, 0.3])


def test_schedule_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown lr schedule 'poly'"):
        LRSchedule("poly", lr=0.1, steps_per_epoch=1, epochs=1)
    with pytest.raises(ValueError, match="increasing positive milestones"):
        LRSchedule("multistep", lr=0.1, steps_per_epoch=1, epochs=9, milestones=(5, 3))
    with pytest.raises(ValueError, match="warmup_epochs must be in"):
        LRSchedule("cosine", lr=0.1, steps_per_epoch=1, epochs=2, warmup_epochs=3)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        LRSchedule("cosine", lr=0.1, steps_per_epoch=0, epochs=2)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.sn = LIFNeuron(learnable_threshold=True, learnable_leak=True)   # v_threshold, leak_param
        self.sn2 = IFNeuron(learnable_threshold=True)
        self.fc = nn.Linear(3, 2)
        self.tgim = nn.Module()
        self.tgim.mu = nn.Parameter(torch.zeros(2, 2))
        self.summary = nn.Linear(2, 2, bias=False)   # 'mu' must not match 'summary.weight'


def test_neuron_param_group_gets_its_own_lr_and_fixed_schedule():
    net = _Net()
    groups = build_param_groups(net, lr=1e-4, weight_decay=5e-4, neuron_lr=1e-2, neuron_weight_decay=0.0,
                                neuron_lr_scheduled=False)
    names = {id(p): n for n, p in net.named_parameters()}
    by_group = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    neuron_names = [n for n, _ in net.named_parameters() if "threshold" in n or "leak" in n or n.endswith(".mu")]
    assert by_group["neuron"] == sorted(neuron_names) and "tgim.mu" in by_group["neuron"]
    assert "summary.weight" in by_group["default"]
    opt = build_optimizer("adam", groups, lr=1e-4)
    s = LRSchedule("multistep", lr=1e-4, steps_per_epoch=1, epochs=10, milestones=(2,), decay_rate=0.5)
    s.apply(opt, 5)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"default": pytest.approx(5e-5), "neuron": 1e-2}
    wds = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wds == {"default": 5e-4, "neuron": 0.0}


def test_scheduled_neuron_group_scales_proportionally():
    net = _Net()
    opt = build_optimizer("sgd", build_param_groups(net, lr=0.1, weight_decay=0.0, neuron_lr=0.01), lr=0.1)
    LRSchedule("step", lr=0.1, steps_per_epoch=1, epochs=4, decay_epochs=1, decay_rate=0.1).apply(opt, 2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["default"] == pytest.approx(1e-3) and lrs["neuron"] == pytest.approx(1e-4)


def test_no_decay_group_and_custom_patterns():
    net = _Net()
    groups = build_param_groups(net, lr=0.1, weight_decay=1e-4, decay_norm_and_bias=False,
                                neuron_patterns=["conv.weight"])
    g = {x["name"]: x for x in groups}
    assert [p is net.conv.weight for p in g["neuron"]["params"]] == [True]
    assert g["no_decay"]["weight_decay"] == 0.0
    assert any(p is net.bn.weight for p in g["no_decay"]["params"])
    assert any(p is net.fc.bias for p in g["no_decay"]["params"])
    assert match_neuron_param("layer1.0.sn.v_threshold") and match_neuron_param("a.leak_param")
    assert not match_neuron_param("mul.weight") and match_neuron_param("x.tgim.mu")


def test_optimizer_builders():
    net = nn.Linear(2, 2)
    sgd = build_optimizer("sgd", net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    assert sgd.param_groups[0]["nesterov"] is True
    assert isinstance(build_optimizer("adamw", net.parameters(), lr=1e-3, weight_decay=0.06), torch.optim.AdamW)
    with pytest.raises(ValueError, match="Nesterov SGD needs momentum > 0"):
        build_optimizer("sgd", net.parameters(), lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer("lamb", net.parameters(), lr=0.1)
