"""The airbench94 yardstick loop (benchmarks/speedrun/airbench_reference.py): its schedule, its crops, and one tiny
run on real CIFAR-10 images through main() (issue #15)."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.speedrun import airbench_reference as ref  # noqa: E402
from tests.conftest import shared_datasets_root  # noqa: E402


def test_lr_factor_is_airbench94s_triangle():
    total = 100
    assert ref._lr_factor(0, total) == pytest.approx(0.2)
    assert ref._lr_factor(23, total) == pytest.approx(1.0)          # the peak at 23 % of the steps
    assert ref._lr_factor(11, total) == pytest.approx(0.2 + 0.8 * 11 / 23)
    assert ref._lr_factor(total, total) == pytest.approx(0.07)
    values = [ref._lr_factor(s, total) for s in range(total + 1)]
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 23


def test_crop_takes_one_window_of_each_padded_image_and_uses_every_shift():
    gen = torch.Generator().manual_seed(0)
    padded = torch.randn(400, 3, 12, 12)
    out = ref._crop(padded, 8, gen)
    assert out.shape == (400, 3, 8, 8)
    shifts = set()
    for i in range(len(out)):
        found = [(sy, sx) for sy in range(5) for sx in range(5)
                 if torch.equal(out[i], padded[i, :, sy:sy + 8, sx:sx + 8])]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) == 25


def test_a_tiny_run_on_real_cifar10_writes_its_result(tmp_path, cifar10_splits):
    out = tmp_path / "ref.json"
    result = ref.main(["--epochs", "4", "--limit-train", "1024", "--limit-test", "200", "--widths", "8", "16", "16",
                       "16", "--threads", "1", "--data", str(shared_datasets_root()), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["test_top1"] == result["test_top1"] and 0.0 <= saved["test_top1"] <= 1.0
    assert 0.0 <= saved["test_top1_tta"] <= 1.0
    assert saved["steps"] == 4 and saved["train_images"] == 1024 and saved["test_images"] == 200   # 1 batch/epoch
    assert [e["epoch"] for e in saved["per_epoch"]] == [1, 2, 3, 4]
    assert saved["commit"] and saved["cpu"] and "airbench_reference.py" in saved["command"]
