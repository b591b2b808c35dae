"""Integrate event streams into frames ``[T, P, H, W]`` and cache the result on disk.

Two conventions, each reproduced exactly:

* :func:`integrate_frames` is SpikingJelly's ``integrate_events_by_fixed_frames_number`` (``frames_number=T``,
  ``split_by="number" | "time"``), the preprocessing behind CIFAR10-DVS / TET / M-LIF numbers.
* :func:`to_frame` is tonic's ``ToFrame`` (``time_window | event_count | n_time_bins | n_event_bins``, with
  ``overlap`` and ``include_incomplete``).

Channel ``c`` of a frame counts the events with polarity ``p == c`` (0 = OFF, 1 = ON), as in both libraries.
The output is integer counts (int16 by default, tonic's dtype; an overflow raises instead of wrapping).

:class:`FrameCache` stores integrated frames as ``.npz`` files keyed by (source file, parameters), written
atomically so that parallel data-loader workers never read a half-written file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .events import SensorSize, _check_dtype, as_sensor_size, is_time_sorted, validate_events

__all__ = ["segment_bounds", "integrate_frames", "to_frame", "slice_bounds", "frames_from_events", "FrameCache",
           "FRAME_CACHE_VERSION"]

#: Bumped whenever the integration rules change, so stale cache entries are never reused.
FRAME_CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------- accumulation
def _accumulate(events: np.ndarray, bounds: Sequence[tuple[int, int]], size: SensorSize, dtype) -> np.ndarray:
    """Count events ``[l, r)`` of each bound into frame k: ``frames[k, p, y, x] += 1``."""
    T, P, H, W = len(bounds), size.polarities, size.height, size.width
    starts = np.array([b[0] for b in bounds], dtype=np.int64)
    ends = np.array([b[1] for b in bounds], dtype=np.int64)
    lengths = np.maximum(ends - starts, 0)
    total = int(lengths.sum())
    frames_flat = np.zeros(T * P * H * W, dtype=np.int64)
    if total:
        frame_id = np.repeat(np.arange(T, dtype=np.int64), lengths)
        # index of each member event: start of its segment + its rank inside the segment
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.repeat(starts, lengths) + offsets
        ev = events[idx]
        channel = ev["p"].astype(np.int64) if P > 1 else np.zeros(total, dtype=np.int64)
        linear = ((frame_id * P + channel) * H + ev["y"].astype(np.int64)) * W + ev["x"].astype(np.int64)
        frames_flat += np.bincount(linear, minlength=T * P * H * W)
    frames = frames_flat.reshape(T, P, H, W)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and frames.size and frames.max() > np.iinfo(dtype).max:
        raise OverflowError(f"a pixel collected {int(frames.max())} events, more than {np.dtype(dtype).name} holds "
                            f"({np.iinfo(dtype).max}); pass dtype=np.int32 or np.float32")
    return frames.astype(dtype)


def _prepare(events: np.ndarray, sensor_size: Sequence[int], owner: str) -> SensorSize:
    _check_dtype(events, owner)
    size = as_sensor_size(sensor_size, owner)
    # With one channel the polarity is ignored (tonic sets p = 0); it must still be a valid 0/1 value.
    validate_events(events, size if size.polarities > 1 else size._replace(polarities=2), owner=owner)
    return size


# ----------------------------------------------------------------------------------------------- SpikingJelly
def segment_bounds(t: np.ndarray, frames_number: int, split_by: str) -> list[tuple[int, int]]:
    """SpikingJelly's ``cal_fixed_frames_number_segment_index``: event index ranges ``[j_l, j_r)`` per frame.

    With N events and M frames:

    * ``split_by="number"``: ``j_l = ⌊N/M⌋·j``, ``j_r = ⌊N/M⌋·(j+1)``, and the last frame ends at N (it takes
      the ``N mod M`` leftover events).
    * ``split_by="time"``: ``ΔT = ⌊(t_{N-1} − t_0)/M⌋`` (integer floor, as SpikingJelly), frame j holds the
      events with ``t_0 + ΔT·j <= t < t_0 + ΔT·(j+1)``, and the last frame runs to the end (index N).

    SpikingJelly raises ``IndexError`` when a time window is empty; here an empty window gives an empty frame.

    Raises:
        ValueError: bad ``frames_number``/``split_by``, unsorted timestamps with ``"time"``, or a recording
            shorter than ``frames_number`` µs with ``"time"`` (ΔT would be 0).
    """
    M = _positive_int(frames_number, "frames_number")
    N = len(t)
    if split_by == "number":
        di = N // M
        bounds = [(j * di, (j + 1) * di) for j in range(M)]
        bounds[-1] = (bounds[-1][0], N)
        return bounds
    if split_by != "time":
        raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
    if N == 0:
        return [(0, 0)] * M
    t = np.asarray(t)
    if not bool(np.all(t[1:] >= t[:-1])):
        raise ValueError("split_by='time' needs non-decreasing timestamps; sort the events first "
                         "(multispike.data.events.sort_events)")
    duration = int(t[-1]) - int(t[0])
    dt = duration // M
    if dt == 0:
        raise ValueError(f"split_by='time': the recording lasts {duration} us, shorter than frames_number={M} "
                         f"time units, so every window would be empty; use split_by='number' or fewer frames")
    edges = int(t[0]) + dt * np.arange(M + 1, dtype=np.int64)
    idx = np.searchsorted(t, edges, side="left")
    bounds = [(int(idx[j]), int(idx[j + 1])) for j in range(M)]
    bounds[-1] = (bounds[-1][0], N)
    return bounds


def integrate_frames(events: np.ndarray, sensor_size: Sequence[int], frames_number: int, split_by: str = "number",
                     dtype=np.int16) -> np.ndarray:
    """Integrate events into ``frames_number`` frames, SpikingJelly style.

    ``F[j, p, y, x] = #{ i in [j_l, j_r) : (p_i, y_i, x_i) = (p, y, x) }`` with the bounds of
    :func:`segment_bounds`. Every event lands in exactly one frame, so ``F.sum() == len(events)``.

    Args:
        events: structured array (t, x, y, p).
        sensor_size: tonic-style ``(W, H, P)`` (note: SpikingJelly's own functions take ``H, W``).
        frames_number: M, the number of frames.
        split_by: ``"number"`` (equal event counts) or ``"time"`` (equal durations).
        dtype: output dtype (int16 by default; SpikingJelly returns float64 counts).

    Returns:
        ``[M, P, H, W]`` counts.

    Example::

        frames = integrate_frames(read_nmnist_bin(path), (34, 34, 2), frames_number=10, split_by="time")
    """
    size = _prepare(events, sensor_size, "integrate_frames")
    return _accumulate(events, segment_bounds(events["t"], frames_number, split_by), size, dtype)


# ----------------------------------------------------------------------------------------------- tonic
def slice_bounds(events: np.ndarray, time_window: float | None = None, event_count: int | None = None,
                 n_time_bins: int | None = None, n_event_bins: int | None = None, overlap: float = 0.0,
                 include_incomplete: bool = False) -> list[tuple[int, int]]:
    """Tonic's slicing rules (``tonic.slicers``), as event index ranges ``[start, end)``.

    * ``time_window`` (µs): stride ``s = time_window − overlap``; ``n = ⌊(t_{N-1} − t_0 − time_window)/s⌋ + 1``
      windows (``⌈·⌉`` with ``include_incomplete``, at least 1), window i = ``[t_0 + i·s, t_0 + i·s + time_window)``.
    * ``event_count``: ``c = min(event_count, N)``, stride ``event_count − overlap``,
      ``n = ⌊(N − c)/stride⌋ + 1`` (``⌈·⌉`` with ``include_incomplete``), slice i = ``[i·stride, i·stride + c)``.
    * ``n_time_bins``: window ``w = ⌊(t_{N-1} − t_0)/n⌋·(1 + overlap)``, stride ``w·(1 − overlap)``,
      window i = ``[t_0 + i·stride, t_0 + i·stride + w)``. As in tonic, events after the last window (at least
      the final event when the duration is a multiple of n) are not counted.
    * ``n_event_bins``: ``c = int(⌊N/n⌋·(1 + overlap))``, stride ``int(c·(1 − overlap))``, slice i =
      ``[i·stride, i·stride + c)``; the ``N mod n`` last events are not counted.

    Exactly one of the four must be given (tonic raises the same ValueError).
    """
    given = {k: v for k, v in (("time_window", time_window), ("event_count", event_count),
                               ("n_time_bins", n_time_bins), ("n_event_bins", n_event_bins)) if v is not None}
    if len(given) != 1:
        raise ValueError("to_frame: assign a value to exactly one of time_window, event_count, n_time_bins or "
                         f"n_event_bins; got {given or 'none'}")
    _check_dtype(events, "to_frame")
    t = events["t"]
    N = len(t)
    if (time_window is not None or n_time_bins is not None) and N and not is_time_sorted(events):
        raise ValueError("to_frame: time slicing needs non-decreasing timestamps; sort the events first "
                         "(multispike.data.events.sort_events)")
    if time_window is not None:
        if not time_window > 0:
            raise ValueError(f"to_frame: time_window must be > 0 us, got {time_window}")
        stride = time_window - overlap
        if not stride > 0:
            raise ValueError(f"to_frame: overlap={overlap} must be smaller than time_window={time_window}")
        if N == 0:
            raise ValueError("to_frame: cannot slice an empty recording by time_window (no t_0); filter out "
                             "empty recordings or use n_time_bins")
        span = (int(t[-1]) - int(t[0]) - time_window) / stride
        n = int((math.ceil(span) if include_incomplete else math.floor(span)) + 1)
        n = max(n, 1)
        starts = np.arange(n) * stride + int(t[0])
        return list(zip(np.searchsorted(t, starts).tolist(), np.searchsorted(t, starts + time_window).tolist()))
    if event_count is not None:
        event_count = _positive_int(event_count, "event_count")
        stride = event_count - overlap
        if not stride > 0:
            raise ValueError(f"to_frame: overlap={overlap} must be smaller than event_count={event_count}")
        count = min(event_count, N)
        span = (N - count) / stride
        n = int((math.ceil(span) if include_incomplete else math.floor(span)) + 1)
        starts = (np.arange(n) * stride).astype(np.int64)
        return [(int(s), int(min(s + count, N))) for s in starts]
    if not 0 <= overlap < 1:
        raise ValueError(f"to_frame: with n_time_bins / n_event_bins, overlap is a fraction of a bin in [0, 1), "
                         f"got {overlap}")
    if n_time_bins is not None:
        bins = _positive_int(n_time_bins, "n_time_bins")
        if N == 0:
            return [(0, 0)] * bins
        window = (int(t[-1]) - int(t[0])) // bins * (1 + overlap)
        stride = window * (1 - overlap)
        starts = np.arange(bins) * stride + int(t[0])
        return list(zip(np.searchsorted(t, starts).tolist(), np.searchsorted(t, starts + window).tolist()))
    bins = _positive_int(n_event_bins, "n_event_bins")
    count = int(N // bins * (1 + overlap))
    stride = int(count * (1 - overlap))
    return [(i * stride, min(i * stride + count, N)) for i in range(bins)]


def to_frame(events: np.ndarray, sensor_size: Sequence[int], time_window: float | None = None,
             event_count: int | None = None, n_time_bins: int | None = None, n_event_bins: int | None = None,
             overlap: float = 0.0, include_incomplete: bool = False, dtype=np.int16) -> np.ndarray:
    """Tonic-compatible ``ToFrame``: accumulate events into ``[T, P, H, W]`` int16 counts.

    Slicing follows :func:`slice_bounds` (tonic's rules, including what tonic leaves out); with ``P = 1`` all
    polarities go to channel 0. Unlike tonic, ``sensor_size`` is required and the input is never modified.

    Example::

        frames = to_frame(events, (34, 34, 2), n_time_bins=5)   # [5, 2, 34, 34] int16
    """
    size = _prepare(events, sensor_size, "to_frame")
    bounds = slice_bounds(events, time_window=time_window, event_count=event_count, n_time_bins=n_time_bins,
                          n_event_bins=n_event_bins, overlap=overlap, include_incomplete=include_incomplete)
    return _accumulate(events, bounds, size, dtype)


_FRAME_KEYS = ("frames_number", "time_window", "event_count", "n_time_bins", "n_event_bins")


def frames_from_events(events: np.ndarray, sensor_size: Sequence[int], frames_number: int | None = None,
                       split_by: str = "number", time_window: float | None = None, event_count: int | None = None,
                       n_time_bins: int | None = None, n_event_bins: int | None = None, overlap: float = 0.0,
                       include_incomplete: bool = False, dtype=np.int16) -> np.ndarray:
    """One entry point for both conventions: ``frames_number`` (+ ``split_by``) -> :func:`integrate_frames`,
    any tonic argument -> :func:`to_frame`. Exactly one of the five sizing arguments must be given."""
    given = [k for k, v in zip(_FRAME_KEYS, (frames_number, time_window, event_count, n_time_bins, n_event_bins))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(_FRAME_KEYS)}; got {given or 'none'}")
    if frames_number is not None:
        return integrate_frames(events, sensor_size, frames_number, split_by=split_by, dtype=dtype)
    return to_frame(events, sensor_size, time_window=time_window, event_count=event_count, n_time_bins=n_time_bins,
                    n_event_bins=n_event_bins, overlap=overlap, include_incomplete=include_incomplete, dtype=dtype)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------- disk cache
class FrameCache:
    """A disk cache of integrated frames, keyed by (source file, parameters).

    The key hashes the source's resolved path, size and modification time together with the parameters (a
    JSON-serialisable mapping) and :data:`FRAME_CACHE_VERSION`, so editing the file, changing any parameter or
    upgrading the integration rules all miss. Entries are ``<cache_dir>/<stem>-<hash>.npz`` holding ``frames``
    and the full key; a read checks the stored key, and an unreadable entry is recomputed (with a warning).
    Writes go to a temporary file in the same folder and are renamed into place (``os.replace``, atomic on
    POSIX and Windows), so concurrent workers never observe a partial file.

    Example::

        cache = FrameCache("~/.cache/multispike/frames")
        frames = cache.get_or_compute(path, {"frames_number": 10, "split_by": "number"},
                                      lambda: integrate_frames(read_nmnist_bin(path), (34, 34, 2), 10))
    """

    def __init__(self, cache_dir: "str | os.PathLike[str]") -> None:
        if cache_dir is None or str(cache_dir) == "":
            raise ValueError("FrameCache: cache_dir must be a folder path, got an empty value")
        self.cache_dir = Path(cache_dir).expanduser()
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise NotADirectoryError(f"FrameCache: {self.cache_dir} exists and is not a folder")

    @staticmethod
    def key_payload(source: "str | os.PathLike[str]", params: Mapping[str, Any]) -> str:
        """The canonical JSON text that identifies an entry (source identity + parameters + version)."""
        path = Path(source).resolve()
        st = path.stat()
        try:
            return json.dumps({"source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                               "params": dict(params), "version": FRAME_CACHE_VERSION},
                              sort_keys=True, default=_json_default)
        except TypeError as err:
            raise TypeError(f"FrameCache: parameters must be JSON-serialisable (numbers, strings, lists), got "
                            f"{dict(params)!r}: {err}") from None

    def path_for(self, source: "str | os.PathLike[str]", params: Mapping[str, Any]) -> Path:
        """Where the entry for (source, params) lives."""
        digest = hashlib.sha256(self.key_payload(source, params).encode()).hexdigest()[:32]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:40]
        return self.cache_dir / f"{stem}-{digest}.npz"

    def load(self, source: "str | os.PathLike[str]", params: Mapping[str, Any]) -> np.ndarray | None:
        """The cached frames, or None on a miss (absent, stale or unreadable entry)."""
        path = self.path_for(source, params)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != self.key_payload(source, params):
                    return None
                frames = np.array(z["frames"])
            if frames.ndim != 4 or not np.issubdtype(frames.dtype, np.integer) or (frames.size and frames.min() < 0):
                raise ValueError(f"entry holds {frames.dtype} {frames.shape}, not non-negative integer counts "
                                 f"[T, P, H, W]")
            return frames
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
            warnings.warn(f"FrameCache: ignoring unreadable cache entry {path} ({err}); it will be rewritten",
                          RuntimeWarning, stacklevel=2)
            return None

    def save(self, source: "str | os.PathLike[str]", params: Mapping[str, Any], frames: np.ndarray) -> Path:
        """Write an entry atomically and return its path."""
        path = self.path_for(source, params)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, frames=np.asarray(frames), key=np.array(self.key_payload(source, params)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def get_or_compute(self, source: "str | os.PathLike[str]", params: Mapping[str, Any],
                       compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the cached frames or compute, store and return them."""
        frames = self.load(source, params)
        if frames is None:
            frames = np.asarray(compute())
            self.save(source, params, frames)
        return frames

    def clear(self) -> int:
        """Delete every ``.npz`` entry in the cache folder; return how many were removed."""
        removed = 0
        if self.cache_dir.is_dir():
            for entry in self.cache_dir.glob("*.npz"):
                entry.unlink()
                removed += 1
        return removed

    def __repr__(self) -> str:
        return f"FrameCache({str(self.cache_dir)!r})"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return np.dtype(obj).name
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
