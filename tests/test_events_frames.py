"""Frame integration: SpikingJelly's frames_number/split_by rules, tonic's ToFrame modes, and the disk cache."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multispike.data.events import (FrameCache, frames_from_events, integrate_frames, make_events, read_nmnist_bin,
                                    segment_bounds, slice_bounds, to_frame)

DATA = Path(os.environ.get("MULTISPIKE_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
NMNIST_FILE = DATA / "events" / "nmnist-small" / "Train" / "5\r" / "00001.bin"
if not NMNIST_FILE.is_file():
    NMNIST_FILE = DATA / "events" / "nmnist-small" / "Train" / "5" / "00001.bin"
needs_nmnist = pytest.mark.skipif(not NMNIST_FILE.is_file(), reason=f"N-MNIST-small not found at {NMNIST_FILE}")

# Ten hand-made events on a 4 x 3 sensor; t chosen so that time windows split them unevenly.
T10 = [0, 1, 2, 5, 6, 7, 8, 9, 10, 20]
EV = make_events(T10, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1], [0, 0, 1, 1, 2, 2, 0, 1, 2, 0], [1, 0, 1, 0, 1, 0, 1, 0, 1, 1])
SIZE = (4, 3, 2)


def _manual(events: np.ndarray, bounds: list[tuple[int, int]], size=SIZE) -> np.ndarray:
    """Reference: one event at a time into [T, P, H, W]."""
    W, H, P = size
    out = np.zeros((len(bounds), P, H, W), dtype=np.int64)
    for k, (lo, hi) in enumerate(bounds):
        for e in events[lo:hi]:
            out[k, e["p"] if P > 1 else 0, e["y"], e["x"]] += 1
    return out


def _spikingjelly_reference(t: np.ndarray, M: int, split_by: str) -> list[tuple[int, int]]:
    """SpikingJelly's cal_fixed_frames_number_segment_index, written from its documented rule (mask per window)."""
    N = len(t)
    if split_by == "number":
        di = N // M
        out = [(i * di, i * di + di) for i in range(M)]
        out[-1] = (out[-1][0], N)
        return out
    dt = (t[-1] - t[0]) // M
    idx = np.arange(N)
    out = []
    for i in range(M):
        t_l = dt * i + t[0]
        mask = (t >= t_l) & (t < t_l + dt)
        members = idx[mask]
        out.append((int(members[0]), int(members[-1]) + 1))
    out[-1] = (out[-1][0], N)
    return out


# ----------------------------------------------------------------------------------------------- SpikingJelly
def test_split_by_number_hand_computed():
    assert segment_bounds(EV["t"], 3, "number") == [(0, 3), (3, 6), (6, 10)]
    frames = integrate_frames(EV, SIZE, frames_number=3, split_by="number")
    assert frames.shape == (3, 2, 3, 4) and frames.dtype == np.int16
    np.testing.assert_array_equal(frames, _manual(EV, [(0, 3), (3, 6), (6, 10)]))
    # N < M: SpikingJelly's rule leaves every frame but the last empty.
    assert segment_bounds(EV["t"][:2], 4, "number") == [(0, 0), (0, 0), (0, 0), (0, 2)]


def test_split_by_time_hand_computed():
    # ΔT = ⌊(20 − 0)/4⌋ = 5: [0,5) -> events 0-2, [5,10) -> 3-7, [10,15) -> 8, last frame from 15 to the end -> 9
    assert segment_bounds(EV["t"], 4, "time") == [(0, 3), (3, 8), (8, 9), (9, 10)]
    frames = integrate_frames(EV, SIZE, frames_number=4, split_by="time")
    np.testing.assert_array_equal(frames, _manual(EV, [(0, 3), (3, 8), (8, 9), (9, 10)]))
    # ΔT = ⌊20/3⌋ = 6 (integer floor as SpikingJelly): [0,6) -> 0-3, [6,12) -> 4-8, last from 12 -> 9
    assert segment_bounds(EV["t"], 3, "time") == [(0, 4), (4, 9), (9, 10)]
    # An empty window gives an empty frame (SpikingJelly would raise IndexError there).
    assert segment_bounds(np.array([0, 1, 2, 100]), 4, "time") == [(0, 3), (3, 3), (3, 3), (3, 4)]


@settings(max_examples=30, deadline=None)
@given(gaps=st.lists(st.integers(1, 5), min_size=40, max_size=120), M=st.integers(1, 8),
       split_by=st.sampled_from(["number", "time"]))
def test_segment_bounds_match_spikingjelly_reference(gaps, M, split_by):
    t = np.cumsum(np.asarray(gaps, dtype=np.int64))
    # Dense timestamps (gap <= 5) with ΔT >= 5 keep every window non-empty, where SpikingJelly is defined.
    if split_by == "time" and (t[-1] - t[0]) // M < 5:
        return
    assert segment_bounds(t, M, split_by) == _spikingjelly_reference(t, M, split_by)


@needs_nmnist
@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("M", [1, 3, 10, 16])
def test_integrate_frames_conserves_event_count_on_real_recording(split_by, M):
    ev = read_nmnist_bin(NMNIST_FILE)
    frames = integrate_frames(ev, (34, 34, 2), frames_number=M, split_by=split_by)
    assert frames.shape == (M, 2, 34, 34)
    assert int(frames.sum()) == len(ev)
    assert int(frames[:, 1].sum()) == int((ev["p"] == 1).sum())  # channel 1 = ON, as SpikingJelly


def test_integrate_frames_errors():
    with pytest.raises(ValueError, match="split_by must be"):
        integrate_frames(EV, SIZE, 3, split_by="count")
    with pytest.raises(ValueError, match="frames_number must be an integer >= 1"):
        integrate_frames(EV, SIZE, 0)
    with pytest.raises(ValueError, match="shorter than frames_number=30"):
        integrate_frames(EV, SIZE, 30, split_by="time")
    with pytest.raises(ValueError, match="non-decreasing timestamps"):
        integrate_frames(EV[::-1], SIZE, 2, split_by="time")
    with pytest.raises(ValueError, match="outside the sensor"):
        integrate_frames(EV, (3, 3, 2), 2)
    many = make_events(np.arange(40_000), np.zeros(40_000, int), np.zeros(40_000, int), np.ones(40_000, int))
    with pytest.raises(OverflowError, match="int16"):
        integrate_frames(many, (1, 1, 2), 1)
    assert integrate_frames(many, (1, 1, 2), 1, dtype=np.int32)[0, 1, 0, 0] == 40_000
    empty = integrate_frames(EV[:0], SIZE, 3, split_by="time")
    assert empty.shape == (3, 2, 3, 4) and empty.sum() == 0


# ----------------------------------------------------------------------------------------------- tonic
def test_tonic_modes_hand_computed():
    assert slice_bounds(EV, event_count=3) == [(0, 3), (3, 6), (6, 9)]
    assert slice_bounds(EV, event_count=3, include_incomplete=True) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert slice_bounds(EV, event_count=4, overlap=2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert slice_bounds(EV, n_event_bins=3) == [(0, 3), (3, 6), (6, 9)]  # tonic drops the N mod n last events
    # window ⌊20/4⌋ = 5: [0,5) [5,10) [10,15) [15,20): the event at t = 20 falls after the last window
    assert slice_bounds(EV, n_time_bins=4) == [(0, 3), (3, 8), (8, 9), (9, 9)]
    assert slice_bounds(EV, time_window=5) == [(0, 3), (3, 8), (8, 9), (9, 9)]
    assert slice_bounds(EV, time_window=5, include_incomplete=True) == [(0, 3), (3, 8), (8, 9), (9, 9)]
    assert slice_bounds(EV, time_window=6, include_incomplete=True) == [(0, 4), (4, 9), (9, 9), (9, 10)]
    # overlap 2 us: stride 3, ⌊(20 − 5)/3⌋ + 1 = 6 windows starting at 0, 3, ..., 15
    assert slice_bounds(EV, time_window=5, overlap=2) == [(0, 3), (3, 6), (4, 9), (7, 9), (9, 9), (9, 9)]
    # window longer than the recording: still one slice
    assert slice_bounds(EV, time_window=1000) == [(0, 10)]


def test_to_frame_output_and_exactly_one_mode():
    frames = to_frame(EV, SIZE, n_time_bins=4)
    assert frames.shape == (4, 2, 3, 4) and frames.dtype == np.int16
    np.testing.assert_array_equal(frames, _manual(EV, [(0, 3), (3, 8), (8, 9), (9, 9)]))
    one = to_frame(EV, (4, 3, 1), event_count=5)
    assert one.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(one, _manual(EV, [(0, 5), (5, 10)], size=(4, 3, 1)))
    with pytest.raises(ValueError, match="exactly one"):
        to_frame(EV, SIZE, time_window=5, event_count=3)
    with pytest.raises(ValueError, match="exactly one"):
        to_frame(EV, SIZE)
    with pytest.raises(ValueError, match="overlap"):
        to_frame(EV, SIZE, event_count=3, overlap=3)
    with pytest.raises(ValueError, match="fraction of a bin"):
        to_frame(EV, SIZE, n_time_bins=3, overlap=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        frames_from_events(EV, SIZE, frames_number=2, n_time_bins=2)
    np.testing.assert_array_equal(frames_from_events(EV, SIZE, frames_number=3),
                                  integrate_frames(EV, SIZE, 3))
    np.testing.assert_array_equal(frames_from_events(EV, SIZE, n_event_bins=2), to_frame(EV, SIZE, n_event_bins=2))


def test_input_is_not_modified():
    ev = EV.copy()
    to_frame(ev, (4, 3, 1), event_count=5)
    np.testing.assert_array_equal(ev, EV)


# ----------------------------------------------------------------------------------------------- cache
def test_frame_cache_round_trip_and_key_sensitivity(tmp_path):
    src = tmp_path / "rec.bin"
    src.write_bytes(b"fake recording")
    cache = FrameCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return integrate_frames(EV, SIZE, 3)

    params = {"frames_number": 3, "split_by": "number", "sensor_size": [4, 3, 2]}
    a = cache.get_or_compute(src, params, compute)
    b = cache.get_or_compute(src, params, compute)
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.int16 and len(calls) == 1
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("rec-") and entries[0].suffix == ".npz"
    # any parameter change misses
    assert cache.load(src, {**params, "split_by": "time"}) is None
    assert cache.path_for(src, {**params, "frames_number": 4}) != cache.path_for(src, params)
    # editing the source file misses
    time.sleep(0.01)
    src.write_bytes(b"fake recording, edited")
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert cache.load(src, params) is None
    # a different file with the same parameters misses
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    assert cache.load(other, params) is None
    # no temporary files are left behind
    cache.get_or_compute(src, params, compute)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]
    assert cache.clear() == 2 and cache.load(src, params) is None


def test_frame_cache_recovers_from_corrupt_entry(tmp_path):
    src = tmp_path / "rec.bin"
    src.write_bytes(b"data")
    cache = FrameCache(tmp_path)
    params = {"n_time_bins": 2}
    path = cache.save(src, params, np.ones((2, 2, 3, 4), np.int16))
    path.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match="unreadable cache entry"):
        assert cache.load(src, params) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = cache.get_or_compute(src, params, lambda: np.zeros((2, 2, 3, 4), np.int16))
    assert out.sum() == 0 and cache.load(src, params).sum() == 0
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache.path_for(src, {"f": object()})
    with pytest.raises(NotADirectoryError):
        FrameCache(src)
