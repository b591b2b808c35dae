"""airbench94's training tricks in the shipped trainer: the bias lr group, the triangular lr schedule, Lookahead,
alternating flips and the whitening-stem hook (issue #15)."""
import copy
import math

import pytest
import torch
from torch import nn

from multispike._errors import ParameterError
from multispike.data import Augment, TensorLoader
from multispike.train import Trainer, resolve_config
from multispike.train.optim import LRSchedule, build_param_groups


class TinyANN(nn.Module):
    """conv + BN + ReLU + linear: weights, BN parameters and biases, as in a real backbone."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.num_classes, self.in_channels, self.T = classes, 1, 1
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 8, classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _data(n=48, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", mode="ann", timesteps=1, epochs=2, out=str(tmp_path / "run"), lr=0.05, progress=False,
                num_classes=3, in_channels=1, eval_every=100)
    base.update(kw)
    return resolve_config(overrides=base)


# ------------------------------------------------------------------------------------------ bias lr group
def test_bias_lr_scale_gives_biases_their_own_group_with_the_same_decay_per_step():
    model = TinyANN()
    groups = {g["name"]: g for g in build_param_groups(model, lr=0.1, weight_decay=0.02, bias_lr_scale=64.0)}
    assert set(groups) == {"default", "bias"}
    assert {id(p) for p in groups["default"]["params"]} == {id(model.conv.weight), id(model.head.weight)}
    assert {id(p) for p in groups["bias"]["params"]} == {id(model.bn.weight), id(model.bn.bias),
                                                         id(model.head.bias)}
    assert groups["bias"]["lr"] == pytest.approx(6.4) and groups["bias"]["base_lr"] == pytest.approx(6.4)
    # lr x wd, the decay per step, equals the weights'
    assert groups["bias"]["lr"] * groups["bias"]["weight_decay"] == pytest.approx(0.1 * 0.02)
    no_decay = {g["name"]: g for g in build_param_groups(model, 0.1, 0.02, bias_lr_scale=64.0,
                                                         decay_norm_and_bias=False)}
    assert no_decay["bias"]["weight_decay"] == 0.0
    # scale 1: the old grouping, unchanged
    assert [g["name"] for g in build_param_groups(model, 0.1, 0.02)] == ["default"]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bias_lr_scale"):
            build_param_groups(model, 0.1, 0.02, bias_lr_scale=bad)



def test_bias_lr_scope_norm_scales_only_normalisation_parameters():
    """airbench94 multiplies the lr of its BN biases only; a conv or linear bias trains at the weights' rate."""
    model = TinyANN()
    groups = {g["name"]: g for g in build_param_groups(model, 0.1, 0.02, bias_lr_scale=64.0, bias_lr_scope="norm")}
    assert {id(p) for p in groups["bias"]["params"]} == {id(model.bn.weight), id(model.bn.bias)}
    assert {id(p) for p in groups["default"]["params"]} == {id(model.conv.weight), id(model.head.weight),
                                                            id(model.head.bias)}
    assert groups["default"]["weight_decay"] == 0.02
    # with no weight decay on biases, the head's bias still goes to the no-decay group
    nd = {g["name"]: g for g in build_param_groups(model, 0.1, 0.02, bias_lr_scale=64.0, bias_lr_scope="norm",
                                                   decay_norm_and_bias=False)}
    assert {id(p) for p in nd["no_decay"]["params"]} == {id(model.head.bias)}
    with pytest.raises(ValueError, match="bias_lr_scope"):
        build_param_groups(model, 0.1, 0.02, bias_lr_scale=64.0, bias_lr_scope="conv")


# ------------------------------------------------------------------------------------------ freeze_after
def _snapshots(trainer):
    """Run fit() and record the parameters at each epoch end."""
    seen = []
    orig = trainer.train_epoch

    def epoch_then_record(epoch):
        out = orig(epoch)
        seen.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
        return out
    trainer.train_epoch = epoch_then_record
    trainer.fit()
    return seen


def test_freeze_after_stops_a_parameter_after_its_epochs_and_nothing_else(tmp_path):
    torch.manual_seed(0)
    model = TinyANN()
    start = model.head.bias.detach().clone()
    images, labels = _data()
    # weight decay and momentum would still move a parameter whose gradient were merely zero
    cfg = _cfg(tmp_path, epochs=3, weight_decay=0.05, momentum=0.9, freeze_after={"head.bias": 1}, batch_size=16)
    trainer = Trainer(model, TensorLoader(images, labels, 16, seed=1), TensorLoader(images[:16], labels[:16], 16),
                      cfg)
    seen = _snapshots(trainer)
    assert not torch.equal(seen[0]["head.bias"], start)              # trained in epoch 1
    assert torch.equal(seen[1]["head.bias"], seen[0]["head.bias"])   # then frozen
    assert torch.equal(seen[2]["head.bias"], seen[0]["head.bias"])
    assert not torch.equal(seen[2]["head.weight"], seen[1]["head.weight"])   # the rest trains on
    # a leaf-name pattern (no dot) matches every parameter of that name; 0 epochs: never trained
    torch.manual_seed(0)
    model = TinyANN()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = Trainer(model, TensorLoader(images, labels, 16, seed=1), TensorLoader(images[:16], labels[:16], 16),
                      _cfg(tmp_path, epochs=1, weight_decay=0.05, freeze_after={"bias": 0}, batch_size=16,
                           overwrite=True))
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    assert torch.equal(after["head.bias"], before["head.bias"]) and torch.equal(after["bn.bias"], before["bn.bias"])
    assert not torch.equal(after["conv.weight"], before["conv.weight"])


def test_freeze_after_rejects_bad_entries(tmp_path):
    from multispike.train.config import ConfigError

    images, labels = _data()
    loaders = (TensorLoader(images, labels, 16), TensorLoader(images[:16], labels[:16], 16))
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        Trainer(TinyANN(), *loaders, _cfg(tmp_path, freeze_after={"stem.*.bias": 3}))
    for bad in ({"head.bias": -1}, {"head.bias": 1.5}, {"head.bias": True}, {"": 2}):
        with pytest.raises(ConfigError, match="freeze_after"):
            _cfg(tmp_path, freeze_after=bad)

# --------------------------------------------------------------------------------------- linear schedule
def test_linear_schedule_is_airbench_triangle():
    # airbench94: 23 % of the steps warm up linearly from 0.2 to 1, then linear decay to 0.07
    steps, epochs = 50, 10
    sched = LRSchedule("linear", lr=2.0, steps_per_epoch=steps, epochs=epochs, warmup_epochs=2.3, warmup_lr=0.4,
                       min_lr=0.14)
    total, warm = steps * epochs, 115
    assert sched.warmup_steps == warm
    for s in range(0, total + 1, 7):
        if s < warm:
            want = 0.2 + 0.8 * s / warm
        else:
            want = 1.0 - 0.93 * (s - warm) / (total - warm)
        assert sched.factor(s) == pytest.approx(want, abs=1e-12), s
    assert sched.factor(total) == pytest.approx(0.07)
    assert sched.factor(10 * total) == pytest.approx(0.07)    # clamps after the end
    with pytest.raises(ValueError, match="lr > 0"):
        LRSchedule("linear", lr=0.0, steps_per_epoch=1, epochs=1)


# ------------------------------------------------------------------------------------------ alternating flip
def test_alternating_flip_shows_each_image_mirrored_in_consecutive_epochs():
    images, labels = _data(n=40)
    loader = TensorLoader(images, labels, 16, seed=3, augment=Augment(hflip=True, hflip_alternate=True))
    m0, m1, m2 = loader.flip_mask(0), loader.flip_mask(1), loader.flip_mask(2)
    assert torch.equal(m1, ~m0) and torch.equal(m2, m0)
    assert 10 <= int(m0.sum()) <= 30                      # a random half, not all or none
    seen = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        xs = torch.cat([x for x, _ in loader])
        seen[epoch] = xs[torch.argsort(loader.indices(epoch))]   # back to dataset order
    plain = images.float() / 255
    for i in range(40):
        want0 = plain[i].flip(-1) if m0[i] else plain[i]
        torch.testing.assert_close(seen[0][i], want0)
        torch.testing.assert_close(seen[1][i], want0.flip(-1))   # the other way round the next epoch
    with pytest.raises(ValueError, match="hflip_alternate needs hflip"):
        Augment(hflip=False, hflip_alternate=True)


# ------------------------------------------------------------------------------------------------- lookahead
def _reference_lookahead(model, loader, epochs, lr, wd, momentum, bias_scale, every, alpha):
    """Lookahead as airbench94 writes it: SGD steps; every `every` steps slow <- lerp(slow, fast, 1 - d),
    fast <- slow, with d = alpha * (s / S)^3; at the end the network is the slow weights."""
    groups = build_param_groups(model, lr, wd, bias_lr_scale=bias_scale)
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    slow = {k: v.clone() for k, v in model.state_dict().items()}
    total, step = epochs * len(loader), 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
            if step % every == 0:
                d = alpha * (step / total) ** 3
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        slow[k].lerp_(v, 1 - d)
                        v.copy_(slow[k])
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            v.copy_(slow[k])
    return model


def test_lookahead_matches_a_reference_implementation(tmp_path):
    torch.manual_seed(0)
    model = TinyANN()
    ref = copy.deepcopy(model)
    images, labels = _data()
    kw = dict(lr=0.05, wd=0.01, momentum=0.85, bias_scale=4.0, every=3, alpha=0.95 ** 5)
    cfg = _cfg(tmp_path, epochs=3, lr=kw["lr"], weight_decay=kw["wd"], momentum=kw["momentum"],
               bias_lr_scale=kw["bias_scale"], ema_decay=kw["alpha"], ema_every=kw["every"], ema_mode="lookahead",
               sched="constant", batch_size=8)
    train = TensorLoader(images, labels, 8, seed=1)
    test = TensorLoader(images[:16], labels[:16], 8, shuffle=False)
    trainer = Trainer(model, train, test, cfg)
    trainer.fit()
    _reference_lookahead(ref, TensorLoader(images, labels, 8, seed=1), 3, **kw)
    assert trainer.step == 18
    for (k, a), b in zip(trainer.model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    # the last update pulled hardest: d = alpha at the final step
    assert trainer.lookahead_decay() == pytest.approx(kw["alpha"])


def test_lookahead_decay_ramps_cubically(tmp_path):
    images, labels = _data()
    cfg = _cfg(tmp_path, ema_decay=0.5, ema_every=1, ema_mode="lookahead", sched="constant", batch_size=8)
    trainer = Trainer(TinyANN(), TensorLoader(images, labels, 8), TensorLoader(images, labels, 8, shuffle=False), cfg)
    total = trainer.schedule.total_steps
    for s in (0, 1, total // 2, total):
        trainer.step = s
        assert trainer.lookahead_decay() == pytest.approx(0.5 * (s / total) ** 3)


def test_lookahead_needs_ema_decay(tmp_path):
    with pytest.raises(ParameterError, match="lookahead needs"):
        _cfg(tmp_path, ema_mode="lookahead")


# ------------------------------------------------------------------------------------------ whitening hook
def test_whiten_images_on_a_model_without_a_whitening_stem_is_a_clear_error(tmp_path):
    from multispike.train.runner import _init_whitening

    images, labels = _data()
    cfg = _cfg(tmp_path, whiten_images=16, batch_size=8)
    with pytest.raises(ParameterError, match="no whitening stem"):
        _init_whitening(cfg, TinyANN(), TensorLoader(images, labels, 8), _Dist())
    with pytest.raises(ParameterError, match="whiten_images must be >= 0"):
        _cfg(tmp_path, whiten_images=-1)


class _Dist:
    is_primary, world_size, rank = True, 1, 0
    device = torch.device("cpu")


def test_whitening_hook_calls_the_model_with_normalised_training_images(tmp_path):
    from multispike.train.runner import _init_whitening

    images, labels = _data(n=40)
    got = {}

    class Whitened(TinyANN):
        def init_whitening(self, x):
            got["x"] = x

    cfg = _cfg(tmp_path, whiten_images=24, batch_size=8)
    train = TensorLoader(images, labels, 8, mean=(0.5,), std=(0.25,),
                         augment=Augment(crop_padding=2, hflip=True))
    _init_whitening(cfg, Whitened(), train, _Dist())
    # the first 24 images, un-augmented, normalised exactly as training normalises them
    torch.testing.assert_close(got["x"], (images[:24].float() / 255 - 0.5) / 0.25)
    assert math.isclose(float(got["x"].mean()), float(((images[:24].float() / 255 - 0.5) / 0.25).mean()))


def test_warmup_fraction_scales_with_the_schedule(tmp_path):
    images, labels = _data(n=48)
    loaders = TensorLoader(images, labels, 8), TensorLoader(images, labels, 8, shuffle=False)
    t = Trainer(TinyANN(), *loaders, _cfg(tmp_path, epochs=10, sched="linear", warmup_fraction=0.23))
    assert t.schedule.total_steps == 60 and t.schedule.warmup_steps == round(0.23 * 60)
    t = Trainer(TinyANN(), *loaders, _cfg(tmp_path, epochs=10, sched="linear", warmup_fraction=0.5, max_steps=20))
    assert t.schedule.total_steps == 20 and t.schedule.warmup_steps == 10
    with pytest.raises(ParameterError, match="warmup_fraction must be in"):
        _cfg(tmp_path, warmup_fraction=1.5)
