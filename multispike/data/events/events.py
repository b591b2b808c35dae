"""Event streams as numpy structured arrays, sensor sizes and validation.

An event stream is a 1-D numpy structured array with the dtype :data:`EVENT_DTYPE`:

=====  ========  ==========================================================
field  dtype     meaning
=====  ========  ==========================================================
``t``  int64     timestamp in microseconds (absolute or relative to the file)
``x``  int16     column, ``0 <= x < W``
``y``  int16     row, ``0 <= y < H``
``p``  int8      polarity, 0 = OFF (darker), 1 = ON (brighter)
=====  ========  ==========================================================

Field names follow tonic (ecosystem.md §4.1), so ``events["t"]`` works with tonic transforms. Sensor sizes
are tonic-style ``(W, H, P)`` (SpikingJelly uses ``(H, W)``; every function here says which it takes).

Example::

    >>> ev = make_events(t=[0, 5, 9], x=[1, 2, 3], y=[0, 0, 1], p=[1, 0, 1])
    >>> validate_events(ev, (34, 34, 2))
    >>> ev["x"].tolist()
    [1, 2, 3]
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = [
    "EVENT_DTYPE", "SensorSize", "EventRecording", "EventFileError", "make_events", "empty_events",
    "as_sensor_size", "infer_sensor_size", "validate_events", "is_time_sorted", "sort_events",
]

#: The one event dtype used throughout multispike (tonic's field names, fixed widths).
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "i1")])


class SensorSize(NamedTuple):
    """Tonic-style sensor size ``(W, H, P)``: width, height, number of polarity channels."""

    width: int
    height: int
    polarities: int = 2

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)``, the order SpikingJelly and frame tensors use."""
        return self.height, self.width


@dataclass(frozen=True)
class EventRecording:
    """Events together with their sensor size and provenance.

    Attributes:
        events: structured array with :data:`EVENT_DTYPE`.
        sensor_size: ``(W, H, P)``.
        synthetic: True when the events were simulated (e.g. by :func:`simulate_saccades`), never recorded by a
            camera. Anything built from a synthetic recording must carry the flag on.
        metadata: free-form provenance (file path, format, simulator parameters, ...).
    """

    events: np.ndarray
    sensor_size: SensorSize
    synthetic: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensor_size", as_sensor_size(self.sensor_size, "EventRecording"))
        validate_events(self.events, self.sensor_size, owner=str(self.metadata.get("path", "EventRecording")))


class EventFileError(ValueError):
    """A truncated or malformed event file. ``path`` and ``offset`` (byte offset, or None) name the spot."""

    def __init__(self, path: "str | os.PathLike[str]", offset: int | None, message: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{self.path}{where}: {message}")


def make_events(t: Sequence[int] | np.ndarray, x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray,
                p: Sequence[int] | np.ndarray) -> np.ndarray:
    """Build an event array from four equally long sequences (cast to :data:`EVENT_DTYPE`).

    Raises:
        ValueError: the lengths differ, or a value does not fit its field (x, y beyond int16, p beyond int8).
    """
    cols = {name: np.asarray(v) for name, v in (("t", t), ("x", x), ("y", y), ("p", p))}
    lengths = {name: c.shape for name, c in cols.items()}
    if any(c.ndim != 1 for c in cols.values()) or len({c.shape[0] for c in cols.values()}) != 1:
        raise ValueError(f"make_events: t, x, y, p must be 1-D and equally long, got shapes {lengths}")
    out = np.empty(cols["t"].shape[0], dtype=EVENT_DTYPE)
    for name, col in cols.items():
        target = EVENT_DTYPE[name]
        if col.size and np.issubdtype(col.dtype, np.integer):
            info = np.iinfo(target)
            lo, hi = int(col.min()), int(col.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"make_events: field {name!r} has values in [{lo}, {hi}], outside the {target} "
                                 f"range [{info.min}, {info.max}]")
        elif col.size and not np.issubdtype(col.dtype, np.bool_):
            if not np.all(np.isfinite(col)) or not np.all(col == np.round(col)):
                raise ValueError(f"make_events: field {name!r} must hold integers, got dtype {col.dtype} with "
                                 f"non-integral values")
        out[name] = col
    return out


def empty_events() -> np.ndarray:
    """An empty event array (length 0) with :data:`EVENT_DTYPE`."""
    return np.empty(0, dtype=EVENT_DTYPE)


def as_sensor_size(sensor_size: Sequence[int], owner: str = "sensor_size") -> SensorSize:
    """Normalise ``(W, H)`` or ``(W, H, P)`` to a :class:`SensorSize` (P defaults to 2), validating it."""
    if isinstance(sensor_size, SensorSize):
        return sensor_size
    try:
        values = [int(v) for v in sensor_size]
    except TypeError:
        raise ValueError(f"{owner}: sensor_size must be a tonic-style (W, H, P) or (W, H) tuple, "
                         f"got {sensor_size!r}") from None
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise ValueError(f"{owner}: sensor_size must be (W, H, P) or (W, H) with positive entries, got "
                         f"{tuple(sensor_size)!r}")
    return SensorSize(*values)


def infer_sensor_size(events: np.ndarray, polarities: int = 2) -> SensorSize:
    """The smallest sensor ``(max x + 1, max y + 1, polarities)`` that holds the events."""
    _check_dtype(events, "infer_sensor_size")
    if len(events) == 0:
        raise ValueError("infer_sensor_size: cannot infer a sensor size from an empty event array; pass it "
                         "explicitly")
    return SensorSize(int(events["x"].max()) + 1, int(events["y"].max()) + 1, polarities)


def _check_dtype(events: np.ndarray, owner: str) -> None:
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise TypeError(f"{owner}: events must be a numpy structured array with fields t, x, y, p, got "
                        f"{type(events).__name__}")
    missing = [f for f in ("t", "x", "y", "p") if f not in events.dtype.names]
    if missing:
        raise ValueError(f"{owner}: events lack field(s) {missing}; got fields {events.dtype.names}")
    if events.ndim != 1:
        raise ValueError(f"{owner}: events must be 1-D, got shape {events.shape}")


def validate_events(events: np.ndarray, sensor_size: Sequence[int], owner: str = "events",
                    require_sorted: bool = False) -> None:
    """Check that every event lies on the sensor.

    Args:
        events: structured array with fields t, x, y, p.
        sensor_size: ``(W, H, P)`` (tonic order) or ``(W, H)``.
        owner: name used in error messages (e.g. the file the events came from).
        require_sorted: also require non-decreasing timestamps.

    Raises:
        ValueError: an event outside the sensor (the message names the max x / y seen vs. the sensor size),
            a polarity outside ``[0, P)``, or (with ``require_sorted``) decreasing timestamps.
    """
    _check_dtype(events, owner)
    size = as_sensor_size(sensor_size, owner)
    if len(events) == 0:
        return
    x, y, p = events["x"], events["y"], events["p"]
    x_min, x_max, y_min, y_max = int(x.min()), int(x.max()), int(y.min()), int(y.max())
    if x_min < 0 or y_min < 0 or x_max >= size.width or y_max >= size.height:
        raise ValueError(
            f"{owner}: events outside the sensor: x seen in [{x_min}, {x_max}], y seen in [{y_min}, {y_max}], but "
            f"the sensor size (W, H) = ({size.width}, {size.height}) allows x in [0, {size.width - 1}] and y in "
            f"[0, {size.height - 1}]. Pass the right sensor_size (tonic order W, H, P) or crop the events.")
    p_min, p_max = int(p.min()), int(p.max())
    if p_min < 0 or p_max >= size.polarities:
        raise ValueError(f"{owner}: polarity seen in [{p_min}, {p_max}] but the sensor has P = {size.polarities} "
                         f"channel(s), so p must be in [0, {size.polarities - 1}]")
    if require_sorted and not is_time_sorted(events):
        first = int(np.argmax(np.diff(events["t"]) < 0))
        raise ValueError(f"{owner}: timestamps decrease at event {first + 1} ({int(events['t'][first])} -> "
                         f"{int(events['t'][first + 1])} us); sort them with sort_events(events)")


def is_time_sorted(events: np.ndarray) -> bool:
    """Whether the timestamps are non-decreasing."""
    t = events["t"]
    return bool(len(t) < 2 or np.all(t[1:] >= t[:-1]))


def sort_events(events: np.ndarray) -> np.ndarray:
    """Events sorted by time (stable, so simultaneous events keep their order)."""
    if is_time_sorted(events):
        return events
    return events[np.argsort(events["t"], kind="stable")]
