"""Saccade event simulator: no events for a static image, balanced ON/OFF for motion that returns, polarity
follows the edge, thresholds, and the synthetic label."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from multispike.data.events import (SHIFT_PATTERNS, SaccadeEventDataset, collate_time_major, is_time_sorted,
                                    saccade_path, simulate_saccades, validate_events)
from multispike.data.events.simulator import events_from_frames, shift_image, to_intensity


def _bar(H: int = 12, W: int = 12, x0: int = 5, width: int = 2, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    img = np.full((H, W), low)
    img[:, x0:x0 + width] = high
    return img


def _per_pixel_counts(events: np.ndarray, size) -> tuple[np.ndarray, np.ndarray]:
    W, H = size[0], size[1]
    on = np.zeros((H, W), int)
    off = np.zeros((H, W), int)
    np.add.at(on, (events["y"][events["p"] == 1], events["x"][events["p"] == 1]), 1)
    np.add.at(off, (events["y"][events["p"] == 0], events["x"][events["p"] == 0]), 1)
    return on, off


def test_static_image_gives_no_events():
    img = np.random.default_rng(0).uniform(0, 1, (10, 10))
    assert len(simulate_saccades(img, n_steps=20, shift_pattern=np.zeros((20, 2))).events) == 0
    assert len(simulate_saccades(img, n_steps=20, shift_pattern="triangle", amplitude=0).events) == 0


@pytest.mark.parametrize("pattern", ["horizontal", "triangle", "random"])
def test_motion_that_returns_gives_balanced_on_off_at_every_pixel(pattern):
    rec = simulate_saccades(_bar(), n_steps=25, shift_pattern=pattern, amplitude=3, contrast_threshold=0.2, seed=1)
    on, off = _per_pixel_counts(rec.events, rec.sensor_size)
    assert on.sum() > 50
    np.testing.assert_array_equal(on, off)
    validate_events(rec.events, rec.sensor_size, require_sorted=True)


def test_bar_moving_right_then_back_has_on_at_leading_edge():
    rec = simulate_saccades(_bar(), n_steps=21, shift_pattern="horizontal", amplitude=3, contrast_threshold=0.2,
                            duration_us=200_000)
    ev = rec.events
    first = ev[ev["t"] <= 100_000]   # moving right: the bright bar enters pixels on its right (ON)
    second = ev[ev["t"] > 100_000]   # moving back: the right pixels darken (OFF)
    assert first["x"][first["p"] == 1].mean() > first["x"][first["p"] == 0].mean()
    assert second["x"][second["p"] == 0].mean() > second["x"][second["p"] == 1].mean()
    assert is_time_sorted(ev) and ev["t"].min() >= 0 and ev["t"].max() <= 200_000
    # only the columns the bar's edges sweep fire; rows are all alike for a vertical bar
    on, _ = _per_pixel_counts(ev, rec.sensor_size)
    assert (on == on[0]).all()


def test_threshold_controls_event_count_and_step_timing():
    img = _bar()
    counts = [len(simulate_saccades(img, n_steps=15, shift_pattern="horizontal", contrast_threshold=c).events)
              for c in (0.1, 0.2, 0.4, 0.8)]
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    # one pixel ramping from log 0 to log 1 in one step with C = 0.25 crosses 4 levels at 1/4, 2/4, 3/4, 4/4
    L = np.array([[[0.0]], [[1.0]]])
    ev = events_from_frames(L, np.array([0.0, 1000.0]), 0.25)
    assert ev["t"].tolist() == [250, 500, 750, 1000] and ev["p"].tolist() == [1, 1, 1, 1]
    back = events_from_frames(np.array([[[0.0]], [[1.0]], [[0.1]]]), np.array([0.0, 1.0, 2.0]), 0.25)
    assert (back["p"] == 1).sum() == 4 and (back["p"] == 0).sum() == 3  # levels 3, 2, 1 are re-crossed


def test_synthetic_label_everywhere_and_sensor_size():
    rec = simulate_saccades(np.zeros((8, 8), np.uint8), n_steps=5, amplitude=2)
    assert rec.synthetic is True and rec.metadata["source"] == "simulate_saccades"
    assert tuple(rec.sensor_size) == (12, 12, 2)
    imgs = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16)).astype(np.uint8)  # CIFAR-like [N, C, H, W]
    ds = SaccadeEventDataset(imgs, labels=np.arange(6) % 3, data_type="frame", frames_number=4,
                             simulator={"n_steps": 12, "amplitude": 2})
    assert ds.synthetic is True and ds.metadata["synthetic"] is True and "synthetic=True" in repr(ds)
    x, y = ds[1]
    assert x.shape == (4, 2, 20, 20) and y == 1 and float(x.sum()) > 0
    batch_x, batch_y = collate_time_major([ds[i] for i in range(3)])
    assert batch_x.shape == (4, 3, 2, 20, 20) and batch_y.tolist() == [0, 1, 2]
    ev, _ = SaccadeEventDataset(imgs, labels=np.zeros(6, int))[0]
    assert ev.dtype.names == ("t", "x", "y", "p")
    assert ds.recording(0).synthetic


def test_intensity_path_and_shift_helpers():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 255
    assert np.allclose(to_intensity(rgb), 0.587)
    assert np.allclose(to_intensity(torch.full((3, 4, 4), 1.0)), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_intensity(np.full((3, 3), 2.0))
    for pattern in SHIFT_PATTERNS:
        path = saccade_path(10, pattern, amplitude=2, seed=0)
        assert path.shape == (10, 2) and np.array_equal(path[0], [0, 0]) and np.array_equal(path[-1], [0, 0])
        assert np.abs(path).max() <= 2 + 1e-12
    img = np.arange(20.0).reshape(4, 5)
    np.testing.assert_array_equal(shift_image(img, 0, 0), img)
    np.testing.assert_array_equal(shift_image(img, 1, 0)[:, 1:], img[:, :-1])
    np.testing.assert_allclose(shift_image(img, 0.5, 0)[:, 1:], (img[:, :-1] + img[:, 1:]) / 2)


def test_simulator_bad_input():
    img = _bar()
    with pytest.raises(ValueError, match="contrast_threshold must be > 0"):
        simulate_saccades(img, contrast_threshold=0)
    with pytest.raises(ValueError, match="unknown shift_pattern"):
        simulate_saccades(img, shift_pattern="zigzag")
    with pytest.raises(ValueError, match=r"\[n_steps, 2\] = \[5, 2\]"):
        simulate_saccades(img, n_steps=5, shift_pattern=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n_steps"):
        simulate_saccades(img, n_steps=0)
    with pytest.raises(ValueError, match="unknown simulator argument"):
        SaccadeEventDataset(np.zeros((1, 4, 4)), labels=[0], simulator={"speed": 3})
