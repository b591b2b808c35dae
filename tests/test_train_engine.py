"""The training engine: prefix accuracy, QAT logging, the loop, hybrid mode, and kill-and-resume equivalence."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from multispike.data import Augment, TensorLoader
from multispike.train import (EXIT_AFTER_STEPS_ENV, CheckpointError, Trainer, load_checkpoint, prefix_correct,
                              quantizer_report, resolve_config, run_training, subset_indices)

# A tiny time-major SNN: conv+BN, a learnable-threshold IF neuron, dropout (global RNG) and a linear head.
TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn
    import multispike
    from multispike.layers import DirectEncoder, SeqToANNContainer

    class Tiny(nn.Module):
        def __init__(self, T=2, bn=True, dropout=0.2, classes=3):
            super().__init__()
            self.T = T
            self.num_classes = classes
            self.in_channels = 1
            self.enc = DirectEncoder(T)
            layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else [])
            self.conv = SeqToANNContainer(*layers)
            self.sn = multispike.IFNeuron(step_mode="m", learnable_threshold=True)
            self.head = SeqToANNContainer(nn.Dropout(dropout), nn.Flatten(), nn.Linear(4 * 8 * 8, classes))

        def forward_sequence(self, x):
            multispike.reset_net(self)
            return self.head(self.sn(self.conv(self.enc(x))))

        def forward(self, x):
            return self.forward_sequence(x).mean(0)

    def tiny_data(n=40, seed=0, classes=3):
        g = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, classes, (n,), generator=g)
        return images, labels
''')
_ns: dict = {}
exec(compile(TINY_MODEL, "<tiny model>", "exec"), _ns)
Tiny, tiny_data = _ns["Tiny"], _ns["tiny_data"]


def _loaders(seed=0, batch=8, n=40, rank=0, world=1, augment=True):
    images, labels = tiny_data(n)
    aug = Augment(crop_padding=1, hflip=True) if augment else None
    train = TensorLoader(images, labels, batch, seed=seed, augment=aug, rank=rank, world_size=world)
    test = TensorLoader(images[:16], labels[:16], 8, shuffle=False, rank=rank, world_size=world)
    return train, test


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", epochs=2, out=str(tmp_path / "run"), lr=0.05, progress=False, num_classes=3,
                in_channels=1, timesteps=2)
    base.update(kw)
    return resolve_config(overrides=base)


# ---------------------------------------------------------------------------------------------- metrics
def test_prefix_correct_is_the_cumulative_mean_argmax():
    # B = 3 samples, T = 3 steps, K = 2 classes; targets [0, 1, 1]
    O = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]],
                      [[0.0, 3.0], [0.0, 3.0], [0.0, 3.0]],
                      [[0.0, 3.0], [0.0, 0.5], [8.0, 0.0]]])
    y = torch.tensor([0, 1, 1])
    # t=1: preds [0, 0, 1] -> 2 correct; t=2: means [.5,1.5],[.5,1.5],[0,3] -> [1,1,1] -> 2;
    # t=3: sums [1,6],[1,3.5],[8,6] -> [1,1,0] -> 1
    torch.testing.assert_close(prefix_correct(O, y), torch.tensor([2, 2, 1]), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"expected logits \[T, B, K\]"):
        prefix_correct(O[0], y)


def test_prefix_at_T_equals_the_models_time_mean_prediction():
    torch.manual_seed(0)
    net = Tiny(T=4, dropout=0.0).eval()
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 3, (16,))
    with torch.no_grad():
        c = prefix_correct(net.forward_sequence(x), y)
        assert c.shape == (4,) and int(c[-1]) == int((net(x).argmax(-1) == y).sum())


def test_quantizer_report_reads_timesteps_and_bit_width():
    class Q(nn.Module):
        def __init__(self, t):
            super().__init__()
            self.t = nn.Parameter(torch.tensor(float(t)))

        @property
        def timesteps(self):
            return int(round(float(self.t.detach())))

        @property
        def bit_width(self):
            return float(torch.log2(self.t.detach()))

    net = nn.Sequential(nn.Linear(2, 2), Q(4), nn.Linear(2, 2), Q(2))
    assert quantizer_report(net) == {"1": {"timesteps": 4, "bit_width": 2.0}, "3": {"timesteps": 2, "bit_width": 1.0}}
    assert quantizer_report(nn.Linear(2, 2)) == {}


def test_subset_is_stratified_seeded_and_sorted():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = subset_indices(labels, 30, seed=1)
    assert torch.equal(idx, subset_indices(labels, 30, seed=1)) and not torch.equal(idx, subset_indices(labels, 30, 2))
    assert torch.all(idx[1:] > idx[:-1])
    assert torch.bincount(labels[idx]).tolist() == [10, 10, 10]
    assert subset_indices(labels, 500, 0).numel() == 100


# ---------------------------------------------------------------------------------------------- the loop
def test_training_writes_logs_config_checkpoints_and_learns(tmp_path):
    torch.manual_seed(0)
    train, test = _loaders(augment=False)
    cfg = _cfg(tmp_path, epochs=3, lr=0.1, opt="sgd", sched="cosine", warmup_epochs=1, warmup_lr=0.01,
               neuron_lr=0.01)
    summary = run_training(cfg, model=Tiny(dropout=0.0), train_loader=train, eval_loader=test)
    out = tmp_path / "run"
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in lines] == ["epoch", "epoch", "epoch", "summary"]
    first = lines[0]
    for key in ("train_loss", "train_acc", "eval_acc", "eval_acc_per_t", "images_per_s", "lr", "step"):
        assert key in first
    assert len(first["eval_acc_per_t"]) == 2 and first["eval_acc"] == first["eval_acc_per_t"][-1]
    assert first["lr_groups"]["neuron"] == pytest.approx(0.01 * lines[0]["lr"] / 0.1)
    assert lines[2]["train_loss"] < lines[0]["train_loss"]          # it learns
    assert lines[-1]["final_train_loss"] == lines[2]["train_loss"]
    assert summary["steps"] == 15 and summary == json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["lr"] == 0.1 and (out / "args.yaml").exists()
    ck = load_checkpoint(out)
    assert ck.meta["next_epoch"] == 3 and ck.meta["step"] == 15 and ck.meta["model"] == "tiny"


def test_neurons_are_reset_after_every_batch(tmp_path):
    seen = []

    class Spy(Tiny):
        def forward_sequence(self, x):
            seen.append(self.sn.v is None)          # no reset_net here: the engine must have done it
            return self.head(self.sn(self.conv(self.enc(x))))

    train, test = _loaders(augment=False)
    run_training(_cfg(tmp_path, epochs=1), model=Spy(), train_loader=train, eval_loader=test)
    assert len(seen) == 5 + 2 and all(seen)


def test_refuses_to_clobber_an_existing_run_and_resume_conflicts_are_named(tmp_path):
    train, test = _loaders()
    run_training(_cfg(tmp_path, epochs=1), model=Tiny(), train_loader=train, eval_loader=test)
    with pytest.raises(ValueError, match="already holds checkpoints.*resume.*overwrite"):
        run_training(_cfg(tmp_path, epochs=1), model=Tiny(), train_loader=train, eval_loader=test)
    with pytest.raises(CheckpointError, match=r"conflicts .* 2 key\(s\): timesteps: 2 \(checkpoint\) vs 3 \(now\); "
                                              r"batch_size: 64 \(checkpoint\) vs 4 \(now\)"):
        run_training(_cfg(tmp_path, epochs=2, resume="auto", timesteps=3, batch_size=4), model=Tiny(),
                     train_loader=train, eval_loader=test)
    with pytest.raises(CheckpointError, match="is for model 'tiny', but this run builds 'other'"):
        run_training(_cfg(tmp_path, epochs=2, resume="auto", model="other"), model=Tiny(), train_loader=train,
                     eval_loader=test)
    with pytest.raises(CheckpointError, match="does not fit Tiny"):
        run_training(_cfg(tmp_path, epochs=2, resume="auto"), model=Tiny(bn=False), train_loader=train,
                     eval_loader=test)
    # --overwrite starts afresh
    s = run_training(_cfg(tmp_path, epochs=1, overwrite=True), model=Tiny(), train_loader=train, eval_loader=test)
    assert s["steps"] == 5


def test_fp16_amp_is_ignored_with_a_warning_on_cpu_and_bf16_is_used(tmp_path):
    train, test = _loaders()
    with pytest.warns(UserWarning, match="amp='fp16' ignored: float16 autocast is only used on CUDA"):
        t = Trainer(Tiny(), train, test, _cfg(tmp_path, amp="fp16", device="cpu"))
    assert t.amp_dtype is None and not t.scaler.is_enabled()
    t = Trainer(Tiny(), train, test, _cfg(tmp_path, amp="bf16", device="cpu"))
    assert t.amp_dtype == torch.bfloat16 and not t.scaler.is_enabled()
    with t._autocast():
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.bfloat16


def test_gradient_clipping_bounds_the_update(tmp_path):
    train, _ = _loaders(augment=False)
    torch.manual_seed(0)
    net = Tiny(dropout=0.0)
    before = [p.detach().clone() for p in net.parameters()]
    t = Trainer(net, train, None, _cfg(tmp_path, opt="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, sched="constant",
                                       clip_grad=1e-3))
    x, y = next(iter(train))
    t.train_step(x, y)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_qat_mode_logs_per_layer_timesteps(tmp_path):
    class QNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 8)
            self.t = nn.Parameter(torch.tensor(3.0))
            self.fc2 = nn.Linear(8, 3)

        @property
        def timesteps(self):
            return int(round(float(self.t.detach())))

        @property
        def bit_width(self):
            return 1.5

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))) * self.t)

    train, test = _loaders()
    run_training(_cfg(tmp_path, mode="qat", epochs=1, timesteps=1), model=QNet(), train_loader=train,
                 eval_loader=test)
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert rec["quantizers"] == {"<root>": {"timesteps": 3, "bit_width": 1.5}}
    assert rec["mean_timesteps"] == 3.0 and rec["eval_acc_per_t"] == [rec["eval_acc"]]


def test_hybrid_mode_loads_the_ann_and_applies_the_hook(tmp_path, monkeypatch):
    # An ANN checkpoint written by the engine itself records its config; hybrid mode rebuilds it by name.
    from multispike import models as zoo
    images, labels = tiny_data(32)
    train = TensorLoader(images, labels, 8, seed=0)
    test = TensorLoader(images[:16], labels[:16], 8, shuffle=False)
    ann_cfg = _cfg(tmp_path, model="vgg_small", neuron="relu", mode="ann", timesteps=1, epochs=1,
                   out=str(tmp_path / "ann"), model_kwargs={"input_size": 8})
    run_training(ann_cfg, train_loader=train, eval_loader=test)
    calls = []

    def hook(ann, cfg):
        calls.append((type(ann).__name__, cfg.timesteps))
        snn = zoo.create_model("vgg_small", num_classes=3, neuron="if", T=cfg.timesteps, in_channels=1, input_size=8)
        snn.load_state_dict(ann.state_dict(), strict=False)
        return snn

    cfg = _cfg(tmp_path, model=None, mode="hybrid", timesteps=2, ann_checkpoint=str(tmp_path / "ann"),
               convert_hook="x:y", out=str(tmp_path / "snn"), epochs=1)
    summary = run_training(cfg, train_loader=train, eval_loader=test, convert_fn=hook)
    assert calls and calls[0][1] == 2
    assert summary["model"] == "vgg_small" and len(summary["final_acc_per_t"]) == 2


# ---------------------------------------------------------------------------------------------- kill + resume
SCRIPT = TINY_MODEL + textwrap.dedent('''
    import sys
    torch.set_num_threads(1)
    from multispike.data import Augment, TensorLoader
    from multispike.train import resolve_config, run_training

    out, resume = sys.argv[1], sys.argv[2] == "resume"
    images, labels = tiny_data(40)
    train = TensorLoader(images, labels, 8, seed=5, augment=Augment(crop_padding=1, hflip=True))
    test = TensorLoader(images[:16], labels[:16], 8, shuffle=False)
    cfg = resolve_config(overrides=dict(
        model="tiny", num_classes=3, in_channels=1, timesteps=2, epochs=3, out=out, opt="sgd", lr=0.05,
        momentum=0.9, nesterov=True, sched="cosine", warmup_epochs=0.5, warmup_lr=0.005, neuron_lr=0.01,
        progress=False, seed=7, checkpoint_every_steps=4, keep_checkpoints=2, resume="auto" if resume else None))
    torch.manual_seed(1234 if not resume else 999)   # the resumed run's fresh init must not matter
    run_training(cfg, model=Tiny(), train_loader=train, eval_loader=test)
''')


def _run(script, out, mode, exit_after=None):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(EXIT_AFTER_STEPS_ENV, None)
    if exit_after is not None:
        env[EXIT_AFTER_STEPS_ENV] = str(exit_after)
    return subprocess.run([sys.executable, str(script), str(out), mode], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run, shared by the kill points below."""
    root = tmp_path_factory.mktemp("uninterrupted")
    script = root / "train_tiny.py"
    script.write_text(SCRIPT)
    ref = _run(script, root / "ref", "fresh")
    assert ref.returncode == 0, ref.stderr
    return script, root / "ref"


# 5 steps per epoch, checkpoints at steps 4, 5 (epoch end), 8, 10 (epoch end), 12, 15 (epoch end).
@pytest.mark.parametrize("exit_after,resumed_from", [(9, 8), (7, 5)], ids=["mid-epoch", "epoch-boundary"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, reference_run, exit_after,
                                                                         resumed_from):
    script, ref_dir = reference_run
    killed = _run(script, tmp_path / "b", "fresh", exit_after=exit_after)
    assert killed.returncode == 75, killed.stderr          # died abruptly (os._exit) after step `exit_after`
    assert load_checkpoint(tmp_path / "b").meta["step"] == resumed_from
    resumed = _run(script, tmp_path / "b", "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {resumed_from}" in resumed.stdout
    a, b = load_checkpoint(ref_dir), load_checkpoint(tmp_path / "b")
    assert a.meta["step"] == b.meta["step"] == 15
    assert a.model_state.keys() == b.model_state.keys()
    for k in a.model_state:
        torch.testing.assert_close(b.model_state[k], a.model_state[k], atol=0, rtol=0, msg=k)
    for k in a.optimizer_state["state"]:
        for key, v in a.optimizer_state["state"][k].items():
            torch.testing.assert_close(b.optimizer_state["state"][k][key], v, atol=0, rtol=0)
    log_a = [json.loads(x) for x in (ref_dir / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_b if r["event"] == "epoch"] == [1, 2, 3]
    for ra, rb in zip(log_a, log_b):
        for key in ("train_loss", "train_acc", "eval_acc", "eval_acc_per_t", "lr", "step"):
            assert ra.get(key) == rb.get(key), key


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    train, test = _loaders()
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        Trainer(Tiny(), train, test, _cfg(tmp_path, sync_bn=True, device="cpu"))
