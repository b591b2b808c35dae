"""Issue 14 regressions: silent wrong results and data loss, and unclear errors.

Non-finite training stops (never best, never resumed from), run-folder locks, SIGTERM/SIGINT checkpoints,
one class index for all ImageFolder splits, neurons refusing a state of another batch shape, data readers
checking declared sizes and value ranges, and the CLI's one-line errors with exit codes != 0.
"""
import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import multispike
from multispike.cli.main import main
from multispike.data import TensorLoader
from multispike.layers import DirectEncoder, SeqToANNContainer
from multispike.train import load_checkpoint, resolve_config
from multispike.train.checkpoint import save_checkpoint
from multispike.train.engine import Trainer
from multispike.train.guards import (LOCK_NAME, NonFiniteError, RunLock, RunLockedError, ensure_writable_dir,
                                     nonfinite_entries)

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "cpu" / "digits_vgg_small_if.yaml"
QUICK = ["--no-progress", "--num-threads", "1", "--subset", "256", "--eval-subset", "128"]


class Tiny(nn.Module):
    """Conv+BN, an IF neuron and a linear head; ``poison_at`` sets a buffer to +inf at that training call."""

    def __init__(self, T=2, poison_at=None):
        super().__init__()
        self.T, self.num_classes, self.in_channels = T, 3, 1
        self.enc = DirectEncoder(T)
        self.conv = SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.sn = multispike.IFNeuron(step_mode="m")
        self.head = SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
        self.register_buffer("stat", torch.zeros(2))
        self.poison_at, self.calls = poison_at, 0

    def forward_sequence(self, x):
        if self.training:
            self.calls += 1
            if self.poison_at is not None and self.calls >= self.poison_at:
                self.stat.fill_(float("inf"))   # like BN running stats after a diverging step
        return self.head(self.sn(self.conv(self.enc(x))))

    def forward(self, x):
        return self.forward_sequence(x).mean(0)


def _loaders(n=32, batch=8):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return TensorLoader(images, labels, batch, seed=0), TensorLoader(images[:16], labels[:16], 8, shuffle=False)


def _cfg(tmp_path, **kw):
    base = dict(model="tiny", epochs=2, out=str(tmp_path / "run"), lr=0.05, progress=False, num_classes=3,
                in_channels=1, timesteps=2)
    base.update(kw)
    return resolve_config(overrides=base)


# ---------------------------------------------------------------------------------------------- non-finite
def test_nonfinite_buffer_stops_training_and_is_never_checkpointed_or_best(tmp_path):
    cfg = _cfg(tmp_path, epochs=3)
    train, test = _loaders()
    model = Tiny(poison_at=6)   # 4 steps per epoch: epoch 1 is clean, epoch 2 poisons the buffer
    with pytest.raises(NonFiniteError, match=r"in epoch 2 .*stat \(\+inf in 2 of 2 values\).*last good checkpoint"):
        Trainer(model, train, test, cfg).fit()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    last = json.loads((ckpt_dir / "last.json").read_text())["checkpoint"]
    best = json.loads((ckpt_dir / "best.json").read_text())["checkpoint"]
    assert last == best == "s000000004-e0001.json"          # only the clean epoch was written
    assert sorted(p.name for p in ckpt_dir.glob("s*.json")) == [last]
    ck = load_checkpoint(tmp_path / "run")
    assert not nonfinite_entries(ck.model_state.items())
    assert not (tmp_path / "run" / LOCK_NAME).exists()       # the lock is released on failure too


def test_nonfinite_mid_epoch_checkpoint_is_refused(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, checkpoint_every_steps=1)
    train, test = _loaders()
    with pytest.raises(NonFiniteError, match=r"at step 3 .*stat"):
        Trainer(Tiny(poison_at=3), train, test, cfg).fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("s*.json"))
    assert names[-1] == "s000000002-e0000.json"              # steps 1, 2 saved; step 3 refused


def test_resume_refuses_a_nonfinite_checkpoint_of_an_older_version(tmp_path):
    model = Tiny()
    state = model.state_dict()
    state["conv.1.running_var"] = torch.full((4,), float("inf"))
    cfg = _cfg(tmp_path)
    train, test = _loaders()
    trainer = Trainer(Tiny(), train, test, cfg)
    save_checkpoint(tmp_path / "old", state, trainer.optimizer, {"model": "tiny", "config": cfg.to_dict()}, epoch=1,
                    step=4, best=True)
    with pytest.raises(NonFiniteError, match=r"conv\.1\.running_var \(\+inf in 4 of 4.*diverged run"):
        trainer.fit(resume=load_checkpoint(tmp_path / "old"))


def test_cli_diverging_run_exits_nonzero_with_one_line(tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["train", "--config", str(DIGITS), "--opt", "sgd", "--lr", "1e30", "--epochs", "2", "--out", str(out),
                 *QUICK])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("multispike train: error: training diverged")
    assert "running_var (+inf" in err and "Traceback" not in err
    assert not (out / "checkpoints" / "best.json").exists()


# ---------------------------------------------------------------------------------------------- run lock
def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    proc = _sleeper()
    try:
        lock_file = tmp_path / LOCK_NAME
        lock_file.write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "user": "someone",
                                         "started": "2026-01-01T00:00:00+00:00", "argv": ["multispike", "train"]}))
        with pytest.raises(RunLockedError, match=rf"in use by another run: pid {proc.pid} on host "
                                                 rf"{socket.gethostname()}.*multispike train"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    with pytest.warns(RuntimeWarning, match=rf"stale run lock of pid {proc.pid}"):
        lock = RunLock(tmp_path).acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()


def test_run_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "some-other-host", "started": "x"}))
    with pytest.raises(RunLockedError, match="pid 1 on host some-other-host"):
        RunLock(tmp_path).acquire()


def test_second_train_with_the_same_out_is_refused_and_leaves_the_log_alone(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"event": "epoch", "epoch": 1}\n')
    proc = _sleeper()   # stands for a first `train` still running
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "user": "me",
                                                 "started": "now", "argv": ["multispike", "train"]}))
        code = main(["train", "--config", str(DIGITS), "--epochs", "1", "--out", str(out), "--overwrite", *QUICK])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert code == 1 and f"in use by another run: pid {proc.pid}" in err and err.count("\n") == 1
    assert (out / "log.jsonl").read_text() == '{"event": "epoch", "epoch": 1}\n'
    assert not (out / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------- signals
SLOW_TRAIN = textwrap.dedent("""
    import sys, time
    from multispike.train import engine
    step = engine.Trainer.train_step
    def slow(self, x, y):
        out = step(self, x, y)
        print(f"STEP {self.step}", flush=True)
        time.sleep(0.3)   # leaves the parent time to send its signal while training
        return out
    engine.Trainer.train_step = slow
    from multispike.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _train_args(out, epochs=2):
    return ["train", "--config", str(DIGITS), "--epochs", str(epochs), "--out", str(out), *QUICK]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_resumable_checkpoint_and_resume_is_exact(tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *_train_args(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    for line in proc.stdout:
        if line.startswith("STEP 5"):      # epoch 2 (4 steps per epoch), batch 1
            proc.send_signal(sig)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert f"interrupted by {signal.Signals(sig).name}" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert not (out / LOCK_NAME).exists()
    ck = load_checkpoint(out)
    assert (ck.meta["step"], ck.meta["next_epoch"], ck.meta["next_batch"]) == (5, 1, 1)
    if sig != signal.SIGTERM:
        return
    # resume finishes the run bit for bit like an uninterrupted one
    assert main([*_train_args(out), "--resume"]) == 0
    ref = tmp_path / "ref"
    assert main(_train_args(ref)) == 0
    a, b = load_checkpoint(out), load_checkpoint(ref)
    assert a.meta["step"] == b.meta["step"] == 8
    for k, v in b.model_state.items():
        assert torch.equal(a.model_state[k], v), k
    log_a = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (ref / "log.jsonl").read_text().splitlines()]
    assert [r.get("eval_acc") for r in log_a] == [r.get("eval_acc") for r in log_b]


# ---------------------------------------------------------------------------------------------- ImageFolder
def _tree(root: Path, split: str, classes, per_class=2):
    from PIL import Image
    colour = {"ant": 0, "bee": 40, "cat": 80, "dog": 120}     # red channel identifies the class
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", (6, 6), (colour[c], 10 * j, 0)).save(root / split / c / f"{j}.png")


def test_imagefolder_val_missing_a_class_keeps_the_train_numbering(tmp_path):
    from multispike.data import load_dataset
    _tree(tmp_path, "train", ["ant", "bee", "cat"])
    _tree(tmp_path, "val", ["ant", "cat"])
    _, train_labels, _ = load_dataset("imagefolder", tmp_path, "train", size=4)
    with pytest.warns(UserWarning, match="no folder for class\\(es\\) bee"):
        images, labels, _ = load_dataset("imagefolder", tmp_path, "test", size=4)
    assert train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert labels.tolist() == [0, 0, 2, 2]                    # cat stays 2 (was shifted to 1)
    assert images[2, 0, 0, 0] == 80                            # and the images are cat's


def test_imagefolder_val_with_an_unknown_class_is_refused(tmp_path):
    from multispike.data import ImageFolder, load_dataset
    _tree(tmp_path, "train", ["ant", "bee"])
    _tree(tmp_path, "val", ["ant", "bee", "dog"])
    with pytest.raises(ValueError, match="class folder\\(s\\) dog that are not among the 2 classes"):
        load_dataset("imagefolder", tmp_path, "test", size=4)
    assert ImageFolder(tmp_path / "val", size=4, classes=["ant", "bee", "cat", "dog"]).targets.tolist() == \
        [0, 0, 1, 1, 3, 3]


def test_decompression_bomb_is_a_clear_error(tmp_path):
    from PIL import Image
    from multispike.data import decode_image
    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100                               # 64x64 > 2x the limit: a "bomb"
    try:
        with pytest.raises(ValueError, match="refusing to decode image .*bomb.png.*MAX_IMAGE_PIXELS"):
            decode_image(tmp_path / "bomb.png", 8)
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ---------------------------------------------------------------------------------------------- neurons
def _neurons():
    from multispike.neurons.lmht import MHTNeuron
    return {
        "if": lambda m: multispike.IFNeuron(step_mode=m),
        "lif": lambda m: multispike.LIFNeuron(step_mode=m),
        "lmht": lambda m: multispike.LMHTNeuron(levels=2, T=4, tgim="identity", step_mode=m),
        "mht": lambda m: MHTNeuron(levels=2, step_mode=m),
        "mlif": lambda m: multispike.OneHotMLIF(lanes=3, step_mode=m),
    }


@pytest.mark.parametrize("family", sorted(_neurons()))
@pytest.mark.parametrize("mode", ["m", "s"])
def test_neuron_refuses_a_state_of_another_batch_shape(family, mode):
    n = _neurons()[family](mode)
    x2 = torch.rand(4, 2, 3) if mode == "m" else torch.rand(2, 3)
    x1 = torch.rand(4, 1, 3) if mode == "m" else torch.rand(1, 3)
    n(x2)
    n(x2)                                                      # same shape: the state carries on
    with pytest.raises(ValueError, match=r"stored membrane state has shape \(2, 3\).*\(1, 3\).*reset_net"):
        n(x1)
    n.reset()
    assert n(x1).shape == x1.shape


def test_nir_literal_membrane_and_time_shared_dropout_refuse_a_stale_state():
    from multispike.models.blocks import TimeSharedDropout
    d = TimeSharedDropout(0.5)
    d.step_mode = "s"
    d(torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="TimeSharedDropout.*reset_net"):
        d(torch.ones(1, 1, 3))
    d.reset()
    d(torch.ones(1, 1, 3))
    from multispike.export._literal import _Membrane
    m = _Membrane(step_mode="m")
    m.register_memory("v", None)
    m.v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="reset_net"):
        m._start(torch.zeros(4, 1, 3))


def test_state_check_is_traced_by_torch_compile_without_graph_breaks():
    net = multispike.IFNeuron(step_mode="m", backend="torch")
    explain = torch._dynamo.explain(net)(torch.rand(4, 2, 3))
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(net, backend="eager")
    multispike.reset_net(net)
    compiled(torch.rand(4, 2, 3))
    with pytest.raises(Exception, match="reset_net"):
        compiled(torch.rand(4, 1, 3))


# ---------------------------------------------------------------------------------------------- data readers
class _Evil:
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return np.ndarray, (self.shape, np.dtype(self.dtype))


def _cifar_dir(tmp_path, batch: dict) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(good, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    (d / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    return d


def test_tiny_cifar_batch_claiming_350000_images_is_refused(tmp_path):
    from multispike.data.cifar import UnsafePickleError, load_cifar10
    d = _cifar_dir(tmp_path, {"data": _Evil((350000, 3072), "uint8"), "labels": _Evil((350000,), "int64")})
    assert (d / "data_batch_3").stat().st_size < 500
    with pytest.raises(UnsafePickleError, match="data_batch_3.*numpy.ndarray\\(...\\) directly"):
        load_cifar10(d, "train")


def test_cifar_batch_whose_buffer_does_not_match_its_shape_is_refused(tmp_path):
    from multispike.data.cifar import CorruptDatasetError, load_cifar10
    from numpy._core.multiarray import _reconstruct

    class Forged:   # numpy's own pickle layout, with a header of 350,000 rows over 2 rows of bytes
        def __reduce__(self):
            return _reconstruct, (np.ndarray, (0,), b"b"), (1, (350000, 3072), np.dtype("uint8"), False,
                                                             bytes(2 * 3072))
    d = _cifar_dir(tmp_path, {"data": Forged(), "labels": [0, 1]})
    with pytest.raises(CorruptDatasetError, match="data_batch_3.*buffer size does not match array size"):
        load_cifar10(d, "train")


def test_npz_event_coordinates_beyond_int16_are_refused_not_wrapped(tmp_path):
    from multispike.data.events import load_events
    from multispike.data.events.events import EventFileError
    p = tmp_path / "ev.npz"
    np.savez(p, t=np.arange(3), x=np.array([1, 40000, 2]), y=np.array([0, 1, 2]), p=np.array([0, 1, 1]))
    with pytest.raises(EventFileError, match=r"ev.npz.*'x' spans \[1, 40000\], outside the int16 range"):
        load_events(p, sensor_size=(34, 34, 2))
    np.savez(p, t=np.arange(3), x=np.array([1, 2, 3]), y=np.array([0, 1, 2]), p=np.array([0, 300, 1]))
    with pytest.raises(EventFileError, match=r"'p' spans \[0, 300\], outside the int8 range"):
        load_events(p, sensor_size=(34, 34, 2))
    np.savez(p, t=np.array([0.0, 1.5, 2.0]), x=np.array([1, 2, 3]), y=np.array([0, 1, 2]), p=np.array([0, 1, 1]))
    with pytest.raises(EventFileError, match=r"'t' must hold integers"):
        load_events(p, sensor_size=(34, 34, 2))
    np.savez(p, t=np.arange(3), x=np.array([1, 2, 3]), y=np.array([0, 1, 2]), p=np.array([0, 1, 1]))
    assert load_events(p, sensor_size=(34, 34, 2)).events["x"].tolist() == [1, 2, 3]


def test_npz_decompression_bomb_is_refused_before_decompressing(tmp_path):
    from multispike.data.events import read_events_npz
    from multispike.data.events.events import EventFileError
    p = tmp_path / "bomb.npz"
    z = np.zeros(20_000_000, np.int8)
    np.savez_compressed(p, t=z, x=z, y=z, p=z)
    assert p.stat().st_size < 400_000
    with pytest.raises(EventFileError, match="declare 80,000,[0-9,]+ bytes uncompressed.*decompression bomb"):
        read_events_npz(p)


def test_corrupt_frame_cache_entry_is_recomputed(tmp_path):
    from multispike.data.events.frames import FrameCache
    cache = FrameCache(tmp_path / "cache")
    src = tmp_path / "rec.bin"
    src.write_bytes(b"x")
    params = {"frames_number": 2}
    cache.save(src, params, np.ones((2, 2, 3, 3), np.int16))
    path = cache.path_for(src, params)
    np.savez(path, frames=np.full((2, 2, 3, 3), -5, np.int16), key=np.array(cache.key_payload(src, params)))
    with pytest.warns(RuntimeWarning, match="not non-negative integer counts"):
        assert cache.load(src, params) is None


# ---------------------------------------------------------------------------------------------- CLI errors
def test_output_path_that_is_a_file_fails_before_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["eval", "--model", "vgg_small", "--dataset", "digits", "--out", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "is not a folder" in err
    assert main(["train", "--config", str(DIGITS), "--out", str(f / "sub"), *QUICK]) == 1
    assert "a parent path is a file" in capsys.readouterr().err


def test_read_only_eval_out_fails_immediately(tmp_path, capsys):
    if os.geteuid() == 0:   # root ignores permission bits; /sys refuses even root (EPERM)
        target = "/sys/multispike-test-out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = str(ro / "out")
    t0 = time.perf_counter()
    assert main(["eval", "--model", "vgg_small", "--dataset", "cifar10", "--out", target]) == 1
    assert time.perf_counter() - t0 < 5          # before loading CIFAR-10 and evaluating, not after
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {target} cannot be created" in err and "[Errno" not in err


def test_disk_full_and_permission_denied_are_one_line(tmp_path, monkeypatch, capsys):
    import builtins
    real_open = builtins.open

    def full(path, *a, **k):
        if ".multispike-write-test" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)
    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(OSError, match="is not writable \\(no space left on device\\)"):
        ensure_writable_dir(tmp_path / "x")
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")) if ".multispike-write-test" in str(path) else real_open(path, *a, **k))
    with pytest.raises(OSError, match="is not writable \\(read-only file system\\)"):
        ensure_writable_dir(tmp_path / "z")
    monkeypatch.setattr(builtins, "open", full)
    assert main(["eval", "--model", "vgg_small", "--dataset", "digits", "--out", str(tmp_path / "y")]) == 1
    assert "no space left on device" in capsys.readouterr().err


def test_class_count_mismatch_and_unexpected_bugs(tmp_path, capsys, monkeypatch):
    code = main(["eval", "--model", "vgg_small", "--dataset", "digits", "--num-classes", "7", "--model-kwargs",
                 "input_size=8", "--limit", "8", "--no-plots", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "the network has outputs for 7 classes but digits (test split) has 10" in err
    # a genuine bug (not an expected failure) still shows its traceback
    from multispike.cli.commands import eval as eval_cmd
    monkeypatch.setattr(eval_cmd, "run_eval", lambda args: (_ for _ in ()).throw(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        main(["eval", "--model", "x", "--out", str(tmp_path / "f")])


def test_debug_flag_and_env_give_the_traceback(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        main(["eval", "--debug", "--model", "vgg_small", "--out", str(f)])
    monkeypatch.setenv("MULTISPIKE_DEBUG", "1")
    with pytest.raises(NotADirectoryError):
        main(["eval", "--model", "vgg_small", "--out", str(f)])


# ---------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    import multispike
    from multispike.data import TensorLoader
    from multispike.layers import DirectEncoder, SeqToANNContainer
    from multispike.train import init_distributed, resolve_config, run_training
    from multispike.train import engine
    from multispike.train.guards import NonFiniteError, TrainingInterrupted

    root = sys.argv[1]
    dist = init_distributed("cpu")
    case = None

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.T, self.num_classes = 2, 3
            self.enc = DirectEncoder(2)
            self.conv = SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.sn = multispike.IFNeuron(step_mode="m")
            self.head = SeqToANNContainer(nn.Flatten(), nn.Linear(256, 3))
        def forward_sequence(self, x):
            return self.head(self.sn(self.conv(self.enc(x))))
        def forward(self, x):
            return self.forward_sequence(x).mean(0)

    step = engine.Trainer.train_step
    def patched(self, x, y):
        loss_fn = self.loss_fn
        if case == "nan" and dist.rank == 1 and self.step == 2:   # only rank 1 sees a non-finite loss
            self.loss_fn = lambda out, target: loss_fn(out, target) * float("nan")
        try:
            result = step(self, x, y)
        finally:
            self.loss_fn = loss_fn
        if case == "term" and dist.rank == 1 and self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)   # only rank 1 is signalled
        return result
    engine.Trainer.train_step = patched

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (64,), generator=g)
    for case in ("term", "nan"):
        cfg = resolve_config(overrides=dict(model="tiny", num_classes=3, in_channels=1, timesteps=2, epochs=2,
                                            out=f"{root}/{case}", opt="sgd", lr=0.05, progress=False, batch_size=8))
        train = TensorLoader(images, labels, 8, seed=3, rank=dist.rank, world_size=dist.world_size)
        test = TensorLoader(images[:16], labels[:16], 4, shuffle=False, rank=dist.rank, world_size=dist.world_size)
        try:
            run_training(cfg, model=Tiny(), train_loader=train, eval_loader=test, dist=dist)
            outcome = "FINISHED"
        except TrainingInterrupted as exc:
            outcome = f"INTERRUPTED {exc.signum}"
        except NonFiniteError as exc:
            outcome = f"NONFINITE {exc}"
        with open(f"{root}/{case}.rank{dist.rank}", "w") as f:   # files: the ranks' stdout interleaves
            f.write(outcome)
    # leave together, and without interpreter finalization: a gloo worker thread that torch keeps alive after DDP
    # aborts the process if it frees a collective's tensors while the interpreter finalizes (exit_process)
    from multispike.train import exit_process
    from multispike.train.distributed import barrier
    barrier(dist)
    exit_process(0)
''')


def test_ddp_ranks_stop_together_on_a_signal_or_a_nonfinite_loss_of_one_rank(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=180)   # a rank left behind in a collective would hang until this
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    def outcome(case, rank):
        return (tmp_path / f"{case}.rank{rank}").read_text()
    # SIGTERM reached rank 1 only (after step 3); both ranks stop after step 4 with one checkpoint
    assert outcome("term", 0) == outcome("term", 1) == "INTERRUPTED 15"
    ck = load_checkpoint(tmp_path / "term")
    assert (ck.meta["step"], ck.meta["next_epoch"], ck.meta["next_batch"]) == (4, 0, 4)
    # a NaN loss on rank 1 only: both ranks raise at the same step, nothing is checkpointed
    assert outcome("nan", 0).startswith("NONFINITE training diverged: non-finite loss on another rank at step 2")
    assert outcome("nan", 1).startswith("NONFINITE training diverged: non-finite loss nan at step 2")
    assert not (tmp_path / "nan" / "checkpoints").exists()
