"""multispike's N-MNIST reader and frame integration vs the installed tonic 1.7, on the shared N-MNIST recordings,
and tonic datasets feeding multispike training (issue 17; runs in CI via the 'interop' extra)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

tonic = pytest.importorskip("tonic", reason="tonic is in the 'interop' test extra (make test installs it)")
import tonic.transforms as tt  # noqa: E402
from tonic.io import read_mnist_file  # noqa: E402

import multispike as ms  # noqa: E402
from multispike.data.events import NMNIST, read_nmnist_bin, to_frame  # noqa: E402
from multispike.interop.tonic import (from_tonic_events, to_tonic_events,  # noqa: E402
                                      tonic_loader)

ROOT = Path(os.environ.get("MULTISPIKE_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
NMNIST_DIR = ROOT / "events" / "nmnist-small"
pytestmark = pytest.mark.skipif(not (NMNIST_DIR / "labels.csv").is_file(),
                                reason=f"the shared N-MNIST recordings are not at {NMNIST_DIR}")
SENSOR = (34, 34, 2)


class LocalTonicNMNIST(tonic.datasets.NMNIST):
    """tonic's own N-MNIST class on the shared files: its existence check wants the full 70,000 recordings
    (and would download them), so it is told the files are there; everything else is tonic's code."""

    def _check_exists(self) -> bool:
        return True

    def download(self) -> None:  # pragma: no cover - never reached
        raise AssertionError("no download in tests")


@pytest.fixture(scope="module")
def tonic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tonic")
    home = root / LocalTonicNMNIST.__name__  # tonic looks in <save_to>/<class name>/{Train,Test}
    home.mkdir()
    for split in ("Train", "Test"):
        (home / split).mkdir()
        for digit in (NMNIST_DIR / split).iterdir():
            # some shared folder names end in '\r' (a relic of the source archive); tonic reads the label from
            # the folder name's last character, so link them under the clean name (file by file: os.walk,
            # which tonic uses, does not descend into linked folders)
            (home / split / digit.name.strip()).mkdir()
            for f in digit.iterdir():
                (home / split / digit.name.strip() / f.name).symlink_to(f)
    return root


def _all_bins():
    return sorted(NMNIST_DIR.glob("*/*/*.bin"))


def test_nmnist_reader_equals_tonics_on_every_shared_recording():
    files = _all_bins()
    assert len(files) == 1100
    total = 0
    for f in files:
        ours = read_nmnist_bin(f)
        theirs = read_mnist_file(str(f), dtype=tonic.datasets.NMNIST.dtype)
        assert len(ours) == len(theirs)
        for name in ("x", "y", "t", "p"):
            assert np.array_equal(ours[name].astype(np.int64), theirs[name]), (f, name)
        total += len(ours)
    assert total == 4_518_827  # the README's event count: every event of every file compared


@pytest.mark.parametrize("kwargs", [dict(n_time_bins=5), dict(time_window=50_000.0), dict(event_count=900),
                                    dict(n_event_bins=4), dict(time_window=40_000.0, overlap=10_000.0),
                                    dict(n_time_bins=3, overlap=0.5), dict(event_count=700, include_incomplete=True)])
def test_frames_equal_tonics_to_frame(kwargs):
    for f in _all_bins()[::37]:  # 30 recordings across digits and both splits
        ev = read_nmnist_bin(f)
        theirs = tt.ToFrame(sensor_size=SENSOR, **kwargs)(to_tonic_events(ev))
        ours = to_frame(ev, SENSOR, **kwargs)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (f, kwargs)


def test_event_layout_round_trip():
    ev = read_nmnist_bin(_all_bins()[0])
    back = from_tonic_events(to_tonic_events(ev))
    assert back.dtype == ev.dtype and np.array_equal(back, ev)
    with pytest.raises(ValueError, match="missing"):
        from_tonic_events(np.zeros(3, dtype=[("x", int), ("y", int)]))


def test_multispike_dataset_equals_tonic_dataset_with_to_frame(tonic_root):
    transform = tt.ToFrame(sensor_size=SENSOR, n_time_bins=6)
    theirs = LocalTonicNMNIST(str(tonic_root), train=False, transform=transform)
    ours = NMNIST(NMNIST_DIR, split="test", data_type="frame", n_time_bins=6)
    assert len(theirs) == len(ours) == 100
    by_path = {Path(p).name + Path(p).parent.name: i for i, p in enumerate(theirs.data)}
    for i, (path, label) in enumerate(ours.samples):
        j = by_path[Path(path).name + Path(path).parent.name.strip()]
        x_ours, y_ours = ours[i]
        x_theirs, y_theirs = theirs[j]
        assert y_ours == y_theirs == label
        assert np.array_equal(np.asarray(x_ours), x_theirs.astype(np.float32))


def test_tonic_dataset_feeds_multispike_training(tonic_root, tmp_path):
    from multispike.train import resolve_config, run_training

    train = LocalTonicNMNIST(str(tonic_root), train=True)
    test = LocalTonicNMNIST(str(tonic_root), train=False)
    frames = tt.Compose([tt.Downsample(spatial_factor=0.5), tt.ToFrame(sensor_size=(17, 17, 2), n_time_bins=4)])
    train_loader = tonic_loader(train, 32, transform=frames, shuffle=True, seed=1, indices=range(0, 1000, 5))
    test_loader = tonic_loader(test, 50, transform=frames)
    x, y = next(iter(train_loader))
    assert x.shape == (4, 32, 2, 17, 17) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.manual_seed(0)
    net = nn.Sequential(ms.SeqToANNContainer(nn.Flatten(), nn.Linear(2 * 17 * 17, 64)),
                        ms.LIFNode(tau=2.0, step_mode="m", surrogate_function=ms.ATan()),
                        ms.SeqToANNContainer(nn.Linear(64, 10)), ms.MeanOverTime())
    cfg = resolve_config(overrides={"model": "custom", "timesteps": 4, "dataset": "nmnist", "num_classes": 10,
                                    "in_channels": 2, "mode": "snn", "loss": "ce", "epochs": 2, "batch_size": 32,
                                    "opt": "adam", "lr": 3e-3, "out": str(tmp_path / "run"), "seed": 1,
                                    "progress": False})
    summary = run_training(cfg, model=net, train_loader=train_loader, eval_loader=test_loader)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == [1, 2]
    assert summary["final_acc"] > 0.3  # 10 classes: trained on 200 tonic-loaded recordings, well above chance
