#!/usr/bin/env python
"""Run a catalogue of bad inputs against multispike and record the message each one gets.

    python benchmarks/bad_inputs.py                      # runs every case, writes docs/bad_inputs.md
    python benchmarks/bad_inputs.py --out /tmp/x.md      # elsewhere
    python benchmarks/bad_inputs.py --only cli           # one area

Every case is run for real (in this process, in a scratch folder): API cases call the library, CLI cases call
``multispike.cli.main.main(argv)`` and capture its stderr and exit code. A case *passes* when it fails the way
it should: the expected exception type (API) or a non-zero exit code with exactly one ``error:`` line and no
traceback (CLI). The table in ``docs/bad_inputs.md`` is this script's output, so every message there is
measured; ``tests/test_bad_inputs.py`` runs the same cases and fails on any that is accepted silently, raises
an unexpected type, or prints a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DIGITS = REPO / "configs" / "cpu" / "digits_vgg_small_if.yaml"
QUICK = ["--no-progress", "--num-threads", "1", "--subset", "128", "--eval-subset", "64"]


@dataclass
class Case:
    """One bad input. ``run(tmp)`` returns a CLI argv list (run through ``main``) or calls the API itself."""

    area: str
    what: str
    run: Callable[[Path], Any]
    expect: type | tuple[type, ...] | None = None      # API: the exception type(s); None for CLI cases
    cli: bool = False
    code: int | None = None                             # CLI: the exit code it must give


@dataclass
class Outcome:
    case: Case
    ok: bool
    result: str          # "ValueError" / "exit 2" / "ACCEPTED"
    message: str
    seconds: float


# ---------------------------------------------------------------------------------------------- helpers
def _cifar_dir(tmp: Path, bad: bytes | None = None, which: str = "data_batch_3") -> Path:
    d = tmp / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(good)
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    if bad is not None:
        (d / which).write_bytes(bad)
    return d


class _NDArrayCall:
    def __init__(self, shape, dtype="uint8"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return np.ndarray, (self.shape, np.dtype(self.dtype))


class _ShortBuffer:
    def __reduce__(self):
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (0,), b"b"), (1, (350000, 3072), np.dtype("uint8"), False, bytes(6144))


class _RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def _load_cifar(tmp: Path, bad: bytes, which: str = "data_batch_3"):
    from multispike.data import load_cifar10
    return load_cifar10(_cifar_dir(tmp, bad, which), "train")


def _npz(tmp: Path, **cols) -> Path:
    base = dict(t=np.arange(3), x=np.array([1, 2, 3]), y=np.array([0, 1, 2]), p=np.array([0, 1, 1]))
    base.update(cols)
    base = {k: v for k, v in base.items() if v is not None}
    p = tmp / "ev.npz"
    np.savez(p, **base)
    return p


def _events_npz(tmp: Path, **cols):
    from multispike.data.events import load_events
    return load_events(_npz(tmp, **cols), sensor_size=(34, 34, 2))


def _npz_bomb(tmp: Path):
    from multispike.data.events import read_events_npz
    z = np.zeros(20_000_000, np.int8)
    p = tmp / "bomb.npz"
    np.savez_compressed(p, t=z, x=z, y=z, p=z)
    return read_events_npz(p)


def _tree(root: Path, split: str, classes, image: Callable | None = None):
    from PIL import Image
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for j in range(2):
            (image or (lambda: Image.new("RGB", (6, 6))))().save(root / split / c / f"{j}.png")


def _imagefolder(tmp: Path, train, val, split="test"):
    from multispike.data import load_dataset
    _tree(tmp, "train", train)
    _tree(tmp, "val", val)
    return load_dataset("imagefolder", tmp, split, size=4)


def _bomb_image(tmp: Path):
    from PIL import Image
    from multispike.data import decode_image
    Image.new("L", (64, 64)).save(tmp / "bomb.png")
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100
    try:
        return decode_image(tmp / "bomb.png", 8)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _truncated_png(tmp: Path):
    from PIL import Image
    from multispike.data import decode_image
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp / "t.png")
    raw = (tmp / "t.png").read_bytes()
    (tmp / "t.png").write_bytes(raw[:40])
    return decode_image(tmp / "t.png", 8)


def _neuron_batch(make, mode="m"):
    n = make()
    n.step_mode = mode
    shape2, shape1 = ((4, 2, 3), (4, 1, 3)) if mode == "m" else ((2, 3), (1, 3))
    n(torch.rand(*shape2))
    return n(torch.rand(*shape1))


def _nan_input():
    import multispike
    with multispike.input_checks():
        return multispike.IFNeuron(step_mode="m")(torch.tensor([[float("nan")]]))


def _tiny_trainer(tmp: Path, poison: bool = False, epochs: int = 1, **cfg):
    from torch import nn

    import multispike
    from multispike.data import TensorLoader
    from multispike.layers import DirectEncoder, SeqToANNContainer
    from multispike.train import resolve_config
    from multispike.train.engine import Trainer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.T, self.num_classes = 2, 3
            self.enc = DirectEncoder(2)
            self.conv = SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.sn = multispike.IFNeuron(step_mode="m")
            self.head = SeqToANNContainer(nn.Flatten(), nn.Linear(256, 3))

        def forward_sequence(self, x):
            if poison and self.training:
                self.conv[1].running_var.fill_(float("inf"))
            return self.head(self.sn(self.conv(self.enc(x))))

        def forward(self, x):
            return self.forward_sequence(x).mean(0)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (16,), generator=g)
    over = dict(model="tiny", epochs=epochs, out=str(tmp / "run"), lr=0.05, progress=False, num_classes=3,
                in_channels=1, timesteps=2)
    over.update(cfg)
    return Trainer(Tiny(), TensorLoader(images, labels, 8, seed=0),
                   TensorLoader(images, labels, 8, shuffle=False), resolve_config(overrides=over))


def _nan_checkpoint(tmp: Path) -> Path:
    """A checkpoint with +inf BN statistics, as versions before the non-finite guard wrote them."""
    from multispike.models import create_model
    from multispike.train.checkpoint import save_checkpoint
    m = create_model("vgg_small", num_classes=10, neuron="if", T=2, in_channels=1, input_size=8)
    state = m.state_dict()
    key = next(k for k in state if k.endswith("running_var"))
    state[key] = torch.full_like(state[key], float("inf"))
    save_checkpoint(tmp / "nan" / "checkpoints", state, None,
                    {"model": "vgg_small", "config": {"model": "vgg_small", "dataset": "digits", "num_classes": 10,
                                                      "neuron": "if", "timesteps": 2, "in_channels": 1,
                                                      "model_kwargs": {"input_size": 8}}}, epoch=1, step=1)
    return tmp / "nan"


def _live_lock(tmp: Path) -> tuple[Path, subprocess.Popen]:
    from multispike.train.guards import LOCK_NAME
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    out = tmp / "locked"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "user": "alice",
                                             "started": "2026-12-04T20:00:00+00:00",
                                             "argv": ["multispike", "train", "--out", str(out)]}))
    return out, proc


_CLEANUP: list[Callable[[], None]] = []


def _locked_train(tmp: Path) -> list[str]:
    out, proc = _live_lock(tmp)
    _CLEANUP.append(lambda: (proc.kill(), proc.wait()))
    return ["train", "--config", str(DIGITS), "--epochs", "1", "--out", str(out), *QUICK]


def _nir_file(tmp: Path, content: bytes) -> Path:
    p = tmp / "g.nir"
    p.write_bytes(content)
    return p


def _hdf5_not_nir(tmp: Path) -> Path:
    import h5py
    p = tmp / "plain.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    return p


def _nir_import(path):
    from multispike.export import import_from_nir
    return import_from_nir(path)


def _export(model, example, path=None, **kw):
    from multispike.export import export_to_nir
    return export_to_nir(model, example, path=path, **kw)


def _small_snn():
    from torch import nn

    import multispike
    from multispike.layers import SeqToANNContainer
    return nn.Sequential(SeqToANNContainer(nn.Flatten(), nn.Linear(4, 3)), multispike.IFNeuron(step_mode="m"))


def _file(tmp: Path, name: str = "afile") -> Path:
    p = tmp / name
    p.write_text("x")
    return p


def _config(tmp: Path, text: str) -> str:
    p = tmp / "cfg.yaml"
    p.write_text(text)
    return str(p)


def _weights(tmp: Path, suffix: str, data: bytes = b"not a tensor file") -> str:
    p = tmp / f"w{suffix}"
    p.write_bytes(data)
    return str(p)


def _truncated_checkpoint(tmp: Path) -> str:
    from multispike.train.checkpoint import save_checkpoint
    save_checkpoint(tmp / "ck", {"w": torch.zeros(100)}, None, {"model": "vgg_small"}, epoch=1, step=1)
    f = next((tmp / "ck").glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:50])
    return str(tmp / "ck")


def _cases() -> list[Case]:
    from multispike.data.cifar import CorruptDatasetError, UnsafePickleError
    from multispike.data.events.events import EventFileError
    from multispike.export._import import NIRImportError
    from multispike.train.checkpoint import CheckpointError
    from multispike.train.guards import NonFiniteError

    import multispike
    import multispike.data
    import multispike.models
    from multispike.neurons.lmht import MHTNeuron

    C: list[Case] = []

    def api(area, what, run, expect):
        C.append(Case(area, what, run, expect))

    def cli(area, what, argv_fn, code=2):
        C.append(Case(area, what, argv_fn, None, cli=True, code=code))

    # ---- data: CIFAR pickles
    api("data", "CIFAR batch of 300 bytes claiming 350,000 images via numpy.ndarray(shape)",
        lambda t: _load_cifar(t, pickle.dumps({"data": _NDArrayCall((350000, 3072)),
                                               "labels": _NDArrayCall((350000,), "int64")}, protocol=2)),
        UnsafePickleError)
    api("data", "CIFAR batch whose array header says 350,000 rows over 2 rows of bytes",
        lambda t: _load_cifar(t, pickle.dumps({"data": _ShortBuffer(), "labels": [0, 1]}, protocol=2)),
        CorruptDatasetError)
    api("data", "CIFAR batch pickle that calls os.system",
        lambda t: _load_cifar(t, pickle.dumps({"data": _RunsCode(), "labels": [0]}, protocol=2)), UnsafePickleError)
    api("data", "CIFAR batch truncated to half its bytes",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4},
                                              protocol=2)[:6000]), CorruptDatasetError)
    api("data", "CIFAR batch with data of shape [2, 100]",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
                                              protocol=2)), CorruptDatasetError)
    api("data", "CIFAR batch with 2 images and 3 labels",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 2]},
                                              protocol=2)), CorruptDatasetError)
    api("data", "CIFAR batch with label 10 (10 classes)",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]},
                                              protocol=2)), CorruptDatasetError)
    api("data", "CIFAR batch without a 'labels' key",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2)),
        CorruptDatasetError)
    api("data", "CIFAR folder missing data_batch_4",
        lambda t: (_cifar_dir(t), (t / "cifar10" / "cifar-10-batches-py" / "data_batch_4").unlink(),
                   __import__("multispike.data", fromlist=["x"]).load_cifar10(t, "train")), FileNotFoundError)
    api("data", "CIFAR with an object-dtype array",
        lambda t: _load_cifar(t, pickle.dumps({"data": np.array([None, 1], dtype=object), "labels": [0, 1]},
                                              protocol=2)), UnsafePickleError)
    # ---- data: events
    api("data", "npz events with x = 40,000 (beyond int16)", lambda t: _events_npz(t, x=np.array([1, 40000, 2])),
        EventFileError)
    api("data", "npz events with y = -40,000", lambda t: _events_npz(t, y=np.array([1, -40000, 2])), EventFileError)
    api("data", "npz events with polarity 300 (beyond int8)", lambda t: _events_npz(t, p=np.array([0, 300, 1])),
        EventFileError)
    api("data", "npz events with fractional timestamps", lambda t: _events_npz(t, t=np.array([0.0, 1.5, 2.0])),
        EventFileError)
    api("data", "npz events with a NaN coordinate", lambda t: _events_npz(t, x=np.array([0.0, np.nan, 2.0])),
        EventFileError)
    api("data", "npz events lacking the 'p' array", lambda t: _events_npz(t, p=None), EventFileError)
    api("data", "npz events with columns of different lengths", lambda t: _events_npz(t, x=np.array([1, 2])),
        EventFileError)
    api("data", "npz of 270 kB declaring 80 MB (decompression bomb)", _npz_bomb, EventFileError)
    api("data", "npz that is not a zip file",
        lambda t: __import__("multispike.data.events", fromlist=["x"]).read_events_npz(_file(t, "x.npz")),
        EventFileError)
    api("data", "N-MNIST .bin of 7 bytes (not a multiple of 5)",
        lambda t: (_file(t, "e.bin").write_bytes(b"\x01" * 7),
                   __import__("multispike.data.events", fromlist=["x"]).read_nmnist_bin(t / "e.bin")),
        EventFileError)
    api("data", "event file with an unknown suffix",
        lambda t: __import__("multispike.data.events", fromlist=["x"]).load_events(_file(t, "e.xyz")), ValueError)
    api("data", "npz events outside the given sensor size",
        lambda t: __import__("multispike.data.events", fromlist=["x"]).load_events(
            _npz(t, x=np.array([1, 50, 2])), sensor_size=(34, 34, 2)), ValueError)
    # ---- data: image folders
    api("data", "ImageFolder val/ with a class folder train/ lacks",
        lambda t: _imagefolder(t, ["ant", "bee"], ["ant", "bee", "dog"]), ValueError)
    api("data", "ImageFolder with an empty class folder",
        lambda t: ((t / "e" / "a").mkdir(parents=True), (t / "e" / "b").mkdir(), _tree(t, "e", ["a"]),
                   multispike.data.ImageFolder(t / "e", size=4)), FileNotFoundError)
    api("data", "ImageFolder root that does not exist", lambda t: multispike.data.ImageFolder(t / "nope"),
        FileNotFoundError)
    api("data", "image that is a decompression bomb (64x64 with MAX_IMAGE_PIXELS=100)", _bomb_image, ValueError)
    api("data", "truncated PNG", _truncated_png, ValueError)
    api("data", "decode_image with resize < size",
        lambda t: multispike.data.decode_image(t / "x.png", 32, resize=16), ValueError)
    api("data", "unknown dataset name", lambda t: multispike.data.load_dataset("cifar11"), KeyError)
    api("data", "image split whose input size differs from the network's record",
        lambda t: multispike.data.provenance.check_data(
            {"input_shape": [3, 32, 32]}, multispike.data.get_dataset("cifar10"), torch.zeros(1, 3, 28, 28)),
        ValueError)
    api("data", "image split whose classes differ from the network's record",
        lambda t: multispike.data.provenance.check_data(
            {"classes": ["cat", "dog"]}, multispike.data.load_dataset("digits", split="test")[2]), ValueError)
    api("data", "decoding a split larger than the available memory",
        lambda t: multispike.data.imagefolder.check_memory(1 << 62, "decoding 10^12 images", "Use --subset N."),
        MemoryError)
    # ---- neurons
    for fam, make in (("IFNeuron", lambda: multispike.IFNeuron()), ("LIFNeuron", lambda: multispike.LIFNeuron()),
                      ("LMHTNeuron", lambda: multispike.LMHTNeuron(levels=2, T=4, tgim="identity")),
                      ("MHTNeuron", lambda: MHTNeuron(levels=2)),
                      ("OneHotMLIF", lambda: multispike.OneHotMLIF(lanes=3))):
        api("neurons", f"{fam}: batch of 2 then batch of 1 without reset (multi-step)",
            lambda t, make=make: _neuron_batch(make, "m"), ValueError)
    api("neurons", "IFNeuron: batch of 2 then 1 without reset (single-step)",
        lambda t: _neuron_batch(multispike.IFNeuron, "s"), ValueError)
    api("neurons", "IFNeuron with v_threshold = 0", lambda t: multispike.IFNeuron(v_threshold=0.0), ValueError)
    api("neurons", "LIFNeuron with tau = NaN", lambda t: multispike.LIFNeuron(tau=float("nan")), ValueError)
    api("neurons", "multi-step neuron fed a 1-D tensor",
        lambda t: multispike.IFNeuron(step_mode="m")(torch.rand(5)), ValueError)
    api("neurons", "LMHT with T-GIM for T=4 fed T=3 steps",
        lambda t: multispike.LMHTNeuron(levels=2, T=4, step_mode="m")(torch.rand(3, 2, 5)), ValueError)
    api("neurons", "OneHotMLIF with 0 lanes", lambda t: multispike.OneHotMLIF(lanes=0), ValueError)
    api("neurons", "NaN input under multispike.input_checks()", lambda t: _nan_input(), ValueError)
    api("neurons", "step_mode='x'", lambda t: multispike.IFNeuron(step_mode="x"), ValueError)
    # ---- API: models
    api("API", "create_model with an unknown name", lambda t: multispike.models.create_model("resnet1000"),
        ValueError)
    api("API", "create_model with num_classes = 0",
        lambda t: multispike.models.create_model("vgg_small", num_classes=0), ValueError)
    api("API", "create_model with T = 0", lambda t: multispike.models.create_model("vgg_small", T=0), ValueError)
    api("API", "create_model with an unknown neuron",
        lambda t: multispike.models.create_model("vgg_small", neuron="hodgkin"), ValueError)
    # ---- training
    api("training", "a parameter/buffer turns +inf during training (BN running_var)",
        lambda t: _tiny_trainer(t, poison=True).fit(), NonFiniteError)
    api("training", "resume from a checkpoint with +inf BN statistics (written by an older version)",
        _resume_nonfinite, NonFiniteError)
    api("training", "config with lr = -1", lambda t: _tiny_trainer(t, lr=-1.0), ValueError)
    api("training", "config with an unknown key",
        lambda t: __import__("multispike.train", fromlist=["x"]).resolve_config(overrides={"learning_rate": 1}),
        ValueError)
    api("training", "load a checkpoint whose tensors file is truncated",
        lambda t: __import__("multispike.train", fromlist=["x"]).load_checkpoint(_truncated_checkpoint(t)),
        CheckpointError)
    api("training", "load a checkpoint from an empty folder",
        lambda t: __import__("multispike.train", fromlist=["x"]).load_checkpoint(t), CheckpointError)
    # ---- NIR
    api("NIR", "import a NIR path that does not exist", lambda t: _nir_import(t / "none.nir"), FileNotFoundError)
    api("NIR", "import a text file as NIR", lambda t: _nir_import(_nir_file(t, b"hello")), NIRImportError)
    api("NIR", "import an HDF5 file that is not a NIR graph", lambda t: _nir_import(_hdf5_not_nir(t)),
        NIRImportError)
    api("NIR", "import a folder", lambda t: _nir_import(t), NIRImportError)
    api("NIR", "export with an example of 5 features for a Linear(4, 3) network",
        lambda t: _export(_small_snn(), torch.rand(2, 1, 5)), (ValueError, RuntimeError))
    api("NIR", "export to a path that is a folder", lambda t: _export(_small_snn(), torch.rand(2, 1, 4), path=t),
        (OSError, ValueError))
    # ---- CLI
    cli("CLI", "train: --out is an existing file",
        lambda t: ["train", "--config", str(DIGITS), "--out", str(_file(t)), *QUICK], code=1)
    cli("CLI", "train: --out below a file",
        lambda t: ["train", "--config", str(DIGITS), "--out", str(_file(t) / "run"), *QUICK], code=1)
    cli("CLI", "train: --out in a folder the file system refuses (/sys)",
        lambda t: ["train", "--config", str(DIGITS), "--out", "/sys/multispike-run", *QUICK], code=1)
    cli("CLI", "train: a second run on a folder a live run holds", _locked_train, code=1)
    cli("CLI", "train: SGD with lr 1e30 (diverges: +inf BN statistics)",
        lambda t: ["train", "--config", str(DIGITS), "--opt", "sgd", "--lr", "1e30", "--epochs", "1",
                   "--out", str(t / "nan"), *QUICK], code=1)
    cli("CLI", "train: --config file does not exist", lambda t: ["train", "--config", str(t / "none.yaml"),
                                                                 "--out", str(t / "r")])
    cli("CLI", "train: --config that is not YAML",
        lambda t: ["train", "--config", _config(t, "model: [unclosed"), "--out", str(t / "r")])
    cli("CLI", "train: --config with an unknown key",
        lambda t: ["train", "--config", _config(t, "modle: vgg_small\n"), "--out", str(t / "r")])
    cli("CLI", "train: --epochs 0", lambda t: ["train", "--config", str(DIGITS), "--epochs", "0",
                                               "--out", str(t / "r"), *QUICK])
    cli("CLI", "train: --resume with no checkpoint in --out",
        lambda t: ["train", "--config", str(DIGITS), "--resume", "--out", str(t / "r"), *QUICK])
    cli("CLI", "train: --data-dir with no data", lambda t: ["train", "--model", "vgg_small", "--dataset", "cifar10",
                                                            "--data-dir", str(t), "--out", str(t / "r"),
                                                            "--no-progress"])
    cli("CLI", "train: --num-classes 5 on the 10-class digits",
        lambda t: ["train", "--config", str(DIGITS), "--num-classes", "5", "--out", str(t / "r"), *QUICK])
    cli("CLI", "train: 32x32-input model on the 8x8 digits (input-size mismatch)",
        lambda t: ["train", "--config", str(DIGITS), "--model-kwargs", "input_size=32", "--epochs", "1",
                   "--out", str(t / "r"), *QUICK])
    cli("CLI", "train: --model unknown", lambda t: ["train", "--config", str(DIGITS), "--model", "nonet",
                                                    "--out", str(t / "r"), *QUICK])
    cli("CLI", "eval: --out in a folder the file system refuses (fails before evaluating)",
        lambda t: ["eval", "--model", "vgg_small", "--dataset", "cifar10", "--out", "/sys/multispike-eval"], code=1)
    cli("CLI", "eval: --out is an existing file",
        lambda t: ["eval", "--model", "vgg_small", "--dataset", "digits", "--out", str(_file(t))], code=1)
    cli("CLI", "eval: 7-class model on the 10-class digits",
        lambda t: ["eval", "--model", "vgg_small", "--dataset", "digits", "--num-classes", "7", "--model-kwargs",
                   "input_size=8", "--limit", "8", "--no-plots", "--out", str(t / "e")])
    cli("CLI", "eval: 8x8-input model on 32x32 CIFAR-10 (input-size mismatch)",
        lambda t: ["eval", "--model", "vgg_small", "--model-kwargs", "input_size=8", "--dataset", "cifar10",
                   "--data-dir", str(_cifar_dir(t).parent.parent), "--limit", "2", "--no-plots", "--no-progress",
                   "--no-neurobench", "--out", str(t / "e")])
    cli("CLI", "eval: checkpoint with +inf BN statistics",
        lambda t: ["eval", "--checkpoint", str(_nan_checkpoint(t)), "--out", str(t / "e")], code=1)
    cli("CLI", "convert: checkpoint with +inf BN statistics",
        lambda t: ["convert", "--checkpoint", str(_nan_checkpoint(t)), "--to", "lmht", "--timesteps", "2",
                   "--out", str(t / "c")], code=1)
    cli("CLI", "export: checkpoint with +inf BN statistics",
        lambda t: ["export", "--checkpoint", str(_nan_checkpoint(t)), "--out", str(t / "g.nir")], code=1)
    cli("CLI", "train: --init-from a checkpoint with +inf BN statistics",
        lambda t: ["train", "--config", str(DIGITS), "--init-from", str(_nan_checkpoint(t)), "--model", "vgg_small",
                   "--out", str(t / "r"), *QUICK], code=1)
    cli("CLI", "eval: checkpoint folder without a checkpoint",
        lambda t: ["eval", "--checkpoint", str(t), "--out", str(t / "e")])
    cli("CLI", "eval: --weights is a pickled .pt file",
        lambda t: ["eval", "--model", "vgg_small", "--weights", _weights(t, ".pt"), "--out", str(t / "e")])
    cli("CLI", "eval: --weights .safetensors that is garbage",
        lambda t: ["eval", "--model", "vgg_small", "--weights", _weights(t, ".safetensors"), "--out", str(t / "e")])
    cli("CLI", "eval: --model and --checkpoint together",
        lambda t: ["eval", "--model", "vgg_small", "--checkpoint", str(t), "--out", str(t / "e")])
    cli("CLI", "eval: --limit 0", lambda t: ["eval", "--model", "vgg_small", "--limit", "0", "--out", str(t / "e")])
    cli("CLI", "eval: --device cuda without CUDA" if not torch.cuda.is_available() else "eval: --device bogus",
        lambda t: ["eval", "--model", "vgg_small", "--device", "cuda" if not torch.cuda.is_available() else "bogus",
                   "--out", str(t / "e")])
    cli("CLI", "export: --out is a folder",
        lambda t: ["export", "--demo", "--out", str(t)], code=1)
    cli("CLI", "export: --out below a file",
        lambda t: ["export", "--demo", "--out", str(_file(t) / "g.nir")], code=1)
    cli("CLI", "export: --checkpoint that does not exist",
        lambda t: ["export", "--checkpoint", str(t / "none"), "--out", str(t / "g.nir")])
    cli("CLI", "convert: --out is a file",
        lambda t: ["convert", "--checkpoint", str(t), "--to", "lmht", "--out", str(_file(t))], code=1)
    cli("CLI", "convert: checkpoint folder without a checkpoint",
        lambda t: ["convert", "--checkpoint", str(t), "--to", "lmht", "--timesteps", "4", "--out", str(t / "c")])
    cli("CLI", "convert: --out a live train run holds",
        lambda t: (lambda out: ["convert", "--checkpoint", str(t), "--to", "lmht", "--timesteps", "4", "--out",
                                str(out)])(_locked_train(t)[6]), code=1)
    cli("CLI", "calibrate: --out is a file",
        lambda t: ["calibrate", "--checkpoint", str(t), "--out", str(_file(t))], code=1)
    cli("CLI", "reparam: --out below a file",
        lambda t: ["reparam", "--checkpoint", str(t), "--out", str(_file(t) / "r")], code=1)
    cli("CLI", "events-train: --out is a file", lambda t: ["events-train", "--out", str(_file(t))], code=1)
    cli("CLI", "demo: --out is a file", lambda t: ["demo", "--quick", "--out", str(_file(t))], code=1)
    cli("CLI", "qat: --t-init 0", lambda t: ["qat", "--config", str(DIGITS), "--t-init", "0", "--out", str(t / "q")])
    cli("CLI", "train: resume with another --timesteps than the checkpoint's",
        lambda t: (_resumable_run(t), ["train", "--config", str(DIGITS), "--epochs", "2", "--timesteps", "4",
                                       "--resume", "--out", str(t / "run"), *QUICK])[1])
    # ---- API: loaders and helpers
    api("API", "TensorLoader with float images",
        lambda t: multispike.data.TensorLoader(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), 2),
        (TypeError, ValueError))
    api("API", "TensorLoader with batch_size 0",
        lambda t: multispike.data.TensorLoader(torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                                               torch.zeros(4, dtype=torch.long), 0), ValueError)
    api("API", "TensorLoader with 4 images and 3 labels",
        lambda t: multispike.data.TensorLoader(torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                                               torch.zeros(3, dtype=torch.long), 2), ValueError)
    api("API", "to_time_major with an unknown layout",
        lambda t: multispike.to_time_major(torch.rand(2, 3), layout="XY"), ValueError)
    api("API", "prefix_correct with logits [B, K] instead of [T, B, K]",
        lambda t: __import__("multispike.train", fromlist=["x"]).prefix_correct(torch.rand(4, 3),
                                                                               torch.zeros(4, dtype=torch.long)),
        ValueError)
    api("training", "resume from a weights-only checkpoint",
        lambda t: _tiny_trainer(t).fit(resume=_weights_only(t)), CheckpointError)
    return C


def _resume_nonfinite(tmp: Path):
    from multispike.train import load_checkpoint
    from multispike.train.checkpoint import save_checkpoint
    tr = _tiny_trainer(tmp)
    state = tr.model.state_dict()
    state["conv.1.running_var"] = torch.full((4,), float("inf"))
    save_checkpoint(tmp / "old", state, tr.optimizer, {"model": "tiny", "config": tr.cfg.to_dict()}, epoch=1, step=2)
    return tr.fit(resume=load_checkpoint(tmp / "old"))


def _weights_only(tmp: Path):
    from multispike.train import load_checkpoint
    from multispike.train.checkpoint import save_checkpoint
    tr = _tiny_trainer(tmp)
    save_checkpoint(tmp / "w", tr.model, None, {"model": "tiny", "config": tr.cfg.to_dict()}, epoch=1, step=1)
    return load_checkpoint(tmp / "w")


def _resumable_run(tmp: Path) -> None:
    from multispike.cli.main import main
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--config", str(DIGITS), "--epochs", "1", "--out", str(tmp / "run"), *QUICK]) == 0


# ---------------------------------------------------------------------------------------------- running
def _one_line(text: str) -> str:
    text = text.strip()
    return text if len(text) <= 600 else text[:597] + "..."


def run_case(case: Case, root: Path) -> Outcome:
    from multispike.cli.main import main

    tmp = Path(tempfile.mkdtemp(dir=root))
    cwd = os.getcwd()
    os.chdir(tmp)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if case.cli:
                argv = case.run(tmp)
                err, out = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    try:
                        code = main(argv)
                    except SystemExit as exc:     # argparse usage errors
                        code = exc.code if isinstance(exc.code, int) else 2
                    except BaseException as exc:  # noqa: BLE001 - a traceback escaping main is a failed case
                        return Outcome(case, False, f"uncaught {type(exc).__name__}", _one_line(str(exc)),
                                       time.perf_counter() - t0)
                lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
                errors = [ln for ln in lines if ": error: " in ln]
                ok = code == case.code and len(errors) == 1 and "Traceback" not in err.getvalue()
                msg = errors[-1] if errors else (lines[-1] if lines else "(no message)")
                return Outcome(case, ok, f"exit {code}", _one_line(msg), time.perf_counter() - t0)
            try:
                case.run(tmp)
            except BaseException as exc:  # noqa: BLE001
                ok = isinstance(exc, case.expect)
                return Outcome(case, ok, type(exc).__name__, _one_line(str(exc)), time.perf_counter() - t0)
            return Outcome(case, False, "ACCEPTED", "(no error)", time.perf_counter() - t0)
    finally:
        os.chdir(cwd)
        while _CLEANUP:
            _CLEANUP.pop()()
        import multispike
        from multispike.neurons import base
        base._CHECK_FINITE = False          # a case may leave input_checks() on
        shutil.rmtree(tmp, ignore_errors=True)
        del multispike


def run_all(only: str | None = None) -> list[Outcome]:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="multispike-bad-inputs-"))
    try:
        return [run_case(c, root) for c in _cases() if only is None or c.area.lower() == only.lower()]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(outcomes: list[Outcome]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")
    tmp_hint = "`<tmp>` stands for the scratch folder of the case."
    lines = [
        "# Bad inputs and the messages they get",
        "",
        "Generated by `python benchmarks/bad_inputs.py` (do not edit by hand): every row was run and its message "
        "captured. `tests/test_bad_inputs.py` runs the same cases and fails if one is accepted silently, raises an "
        "unexpected exception type, or (CLI) prints anything but one `error:` line with a non-zero exit code.",
        "",
        "CLI exit codes: 2 = bad input (arguments, data, checkpoints, shapes), 1 = a failure while running (file "
        "system, divergence, a locked run folder), 128 + N = stopped by signal N after writing a checkpoint. "
        "`--debug` or `MULTISPIKE_DEBUG=1` shows the traceback instead. " + tmp_hint,
        "",
        f"{sum(o.ok for o in outcomes)} of {len(outcomes)} cases fail as they should "
        f"(torch {torch.__version__}, Python {sys.version.split()[0]}).",
        "",
        "| # | area | bad input | result | message |",
        "|---|------|-----------|--------|---------|",
    ]
    for i, o in enumerate(outcomes, 1):
        flag = "" if o.ok else " **(unexpected)**"
        msg = o.message
        for pat in ("/tmp/", ):
            if pat in msg:
                import re
                msg = re.sub(r"/tmp/[^\s'\"),:]*multispike-bad-inputs-[^/]+/[^/\s'\":]+", "<tmp>", msg)
        lines.append(f"| {i} | {o.case.area} | {esc(o.case.what)} | `{o.result}`{flag} | {esc(msg)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "bad_inputs.md"), help="Markdown file to write")
    p.add_argument("--only", default=None, help="run one area (data, neurons, API, training, NIR, CLI)")
    args = p.parse_args(argv)
    os.environ.setdefault("MULTISPIKE_DATA", str(REPO.parent / "shared" / "datasets"))
    outcomes = run_all(args.only)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(outcomes))
    bad = [o for o in outcomes if not o.ok]
    print(f"{len(outcomes) - len(bad)}/{len(outcomes)} cases fail as they should; written to {args.out}")
    for o in bad:
        print(f"UNEXPECTED: [{o.case.area}] {o.case.what}: {o.result}: {o.message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
