"""A saccade event simulator: static images -> SYNTHETIC event streams.

It imitates how N-MNIST was recorded (a camera making small saccades over a still image) with the standard
DVS pixel model (ESIM / v2e): each pixel keeps a reference log intensity and emits an ON (OFF) event each time
its log intensity rises (falls) by one contrast threshold C past that reference.

Model, per pixel, for frames k = 0..n_steps−1 of the image shifted by ``(dx_k, dy_k)`` (bilinear, sub-pixel):

    L_k = log(I_k + eps)                     (I in [0, 1])
    q_k = (L_k − L_0) / C                    (level index; the reference sits at level m, m_0 = 0)
    rise: m ← ⌊q_k⌋ if ⌊q_k⌋ > m   -> ⌊q_k⌋ − m ON events
    fall: m ← ⌈q_k⌉ if ⌈q_k⌉ < m   -> m − ⌈q_k⌉ OFF events

Each crossing of level ``L_0 + C·j`` between frames k−1 and k gets the timestamp where the linear ramp from
``L_{k−1}`` to ``L_k`` meets it. Because the reference snaps to the level grid anchored at ``L_0``, a motion that
returns every pixel to its starting intensity produces exactly as many ON as OFF events at every pixel, and a
static image produces none.

The result is *synthetic*: :func:`simulate_saccades` returns an
:class:`~multispike.data.events.events.EventRecording` with ``synthetic=True`` and the simulator parameters in
``metadata``; :class:`~multispike.data.events.datasets.SaccadeEventDataset` carries the same flag.

Example::

    >>> img = np.zeros((8, 8)); img[:, 3:5] = 1.0                       # a vertical bar
    >>> rec = simulate_saccades(img, n_steps=9, shift_pattern="horizontal", amplitude=2)
    >>> rec.synthetic, rec.sensor_size
    (True, SensorSize(width=12, height=12, polarities=2))
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .events import EVENT_DTYPE, EventRecording, SensorSize, empty_events

__all__ = ["saccade_path", "shift_image", "to_intensity", "events_from_frames", "simulate_saccades",
           "SHIFT_PATTERNS"]

#: Named shift patterns: see :func:`saccade_path`.
SHIFT_PATTERNS = ("triangle", "horizontal", "vertical", "random")


def to_intensity(image) -> np.ndarray:
    """Grayscale float64 intensity in [0, 1] from ``[H, W]``, ``[H, W, 3]`` or ``[3, H, W]``/``[1, H, W]`` input.

    uint8 input is divided by 255; float input must already lie in [0, 1]. RGB uses ITU-R BT.601 luma weights
    (0.299, 0.587, 0.114), as PIL's ``convert("L")``.
    """
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 3:
        if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = np.moveaxis(a, 0, -1)
        if a.shape[-1] == 1:
            a = a[..., 0]
        elif a.shape[-1] == 3:
            scale = 255.0 if np.issubdtype(a.dtype, np.integer) else 1.0
            a = _check_range(a, "RGB image") @ np.array([0.299, 0.587, 0.114]) / scale
            return np.clip(a, 0.0, 1.0)
        else:
            raise ValueError(f"to_intensity: cannot tell the channel axis of an image of shape {a.shape}; pass "
                             f"[H, W], [H, W, 3] or [3, H, W]")
    if a.ndim != 2:
        raise ValueError(f"to_intensity: expected an image [H, W], [H, W, 3] or [3, H, W], got shape {a.shape}")
    a = _check_range(a, "image")
    return a / 255.0 if np.issubdtype(np.asarray(image).dtype, np.integer) else a


def _check_range(a: np.ndarray, what: str) -> np.ndarray:
    """float64 copy of ``a`` after checking the value range (0..255 for integers, [0, 1] for floats)."""
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"to_intensity: integer {what}s must be 8-bit (0..255), got range [{a.min()}, {a.max()}]")
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.bool_):
        return a.astype(np.float64)
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0 or a.max() > 1)):
        raise ValueError(f"to_intensity: float {what}s must lie in [0, 1], got range [{np.nanmin(a)}, "
                         f"{np.nanmax(a)}]; divide 8-bit data by 255")
    return a


def saccade_path(n_steps: int, shift_pattern: "str | Sequence[Sequence[float]] | np.ndarray" = "triangle",
                 amplitude: float = 2.0, seed: int | None = None) -> np.ndarray:
    """Image offsets ``(dx, dy)`` per frame, float64 ``[n_steps, 2]``; the first is always ``(0, 0)``.

    Patterns (piecewise linear through their vertices, at constant speed):

    * ``"triangle"``: N-MNIST's three saccades, (0,0) -> (A/2, A) -> (A, 0) -> (0, 0).
    * ``"horizontal"`` / ``"vertical"``: (0,0) -> (A, 0) -> (0, 0), resp. along y: a back-and-forth sweep.
    * ``"random"``: a seeded random walk of steps in [−1, 1]² clipped to [−A, A]², returning to (0, 0).
    * an explicit array ``[n_steps, 2]`` of (dx, dy).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not isinstance(shift_pattern, str):
        path = np.asarray(shift_pattern, dtype=np.float64)
        if path.shape != (n_steps, 2) or not np.all(np.isfinite(path)):
            raise ValueError(f"an explicit shift_pattern must be a finite [n_steps, 2] = [{n_steps}, 2] array of "
                             f"(dx, dy), got shape {path.shape}")
        return path
    if not np.isfinite(amplitude) or amplitude < 0:
        raise ValueError(f"amplitude must be a finite number >= 0 pixels, got {amplitude}")
    A = float(amplitude)
    if shift_pattern == "random":
        rng = np.random.default_rng(seed)
        path = np.zeros((n_steps, 2))
        for k in range(1, n_steps):
            path[k] = np.clip(path[k - 1] + rng.uniform(-1, 1, 2), -A, A)
        if n_steps > 1:
            path[-1] = 0.0
        return path
    vertices = {"triangle": [(0, 0), (A / 2, A), (A, 0), (0, 0)],
                "horizontal": [(0, 0), (A, 0), (0, 0)],
                "vertical": [(0, 0), (0, A), (0, 0)]}.get(shift_pattern)
    if vertices is None:
        raise ValueError(f"unknown shift_pattern {shift_pattern!r}; use one of {SHIFT_PATTERNS} or an [n_steps, 2] "
                         f"array")
    v = np.asarray(vertices, dtype=np.float64)
    seg = np.linalg.norm(np.diff(v, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if n_steps == 1 or arc[-1] == 0:
        return np.zeros((n_steps, 2))
    s = np.linspace(0.0, arc[-1], n_steps)
    path = np.stack([np.interp(s, arc, v[:, 0]), np.interp(s, arc, v[:, 1])], axis=1)
    path[-1] = v[-1]  # exact return to the start, so closed patterns give exactly balanced events
    return path


def shift_image(canvas: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``out[y, x] = canvas(y − dy, x − dx)``, bilinear, with edge replication outside the canvas."""
    H, W = canvas.shape
    ys = np.arange(H, dtype=np.float64) - dy
    xs = np.arange(W, dtype=np.float64) - dx
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    y0i = np.clip(y0.astype(np.int64), 0, H - 1)
    y1i = np.clip(y0.astype(np.int64) + 1, 0, H - 1)
    x0i = np.clip(x0.astype(np.int64), 0, W - 1)
    x1i = np.clip(x0.astype(np.int64) + 1, 0, W - 1)
    top = canvas[y0i][:, x0i] * (1 - wx) + canvas[y0i][:, x1i] * wx
    bottom = canvas[y1i][:, x0i] * (1 - wx) + canvas[y1i][:, x1i] * wx
    return top * (1 - wy) + bottom * wy


def events_from_frames(log_frames: np.ndarray, times_us: np.ndarray, contrast_threshold: "float | np.ndarray"
                       ) -> np.ndarray:
    """The DVS pixel model on a sequence of log-intensity frames ``[K, H, W]`` sampled at ``times_us`` [K].

    Args:
        contrast_threshold: C > 0, a scalar or a per-pixel ``[H, W]`` map (threshold mismatch).

    Returns:
        events sorted by time (simultaneous events: ON before OFF, then row-major pixel order).
    """
    L = np.asarray(log_frames, dtype=np.float64)
    t = np.asarray(times_us, dtype=np.float64)
    if L.ndim != 3 or t.shape != (L.shape[0],):
        raise ValueError(f"events_from_frames: expected log frames [K, H, W] and times [K], got {L.shape} and "
                         f"{t.shape}")
    C = np.broadcast_to(np.asarray(contrast_threshold, dtype=np.float64), L.shape[1:])
    if not np.all(np.isfinite(C)) or C.min() <= 0:
        raise ValueError(f"contrast_threshold must be > 0 everywhere, got a minimum of {C.min()}")
    ref = L[0]
    level = np.zeros(L.shape[1:], dtype=np.int64)
    chunks = []
    for k in range(1, L.shape[0]):
        q = (L[k] - ref) / C
        up = np.floor(q).astype(np.int64)
        down = np.ceil(q).astype(np.int64)
        n_on = np.maximum(up - level, 0)
        n_off = np.maximum(level - down, 0)
        for count, sign in ((n_on, 1), (n_off, -1)):
            ys, xs = np.nonzero(count)
            if ys.size == 0:
                continue
            n = count[ys, xs]
            py, px = np.repeat(ys, n), np.repeat(xs, n)
            j = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 1  # 1..n within each pixel
            crossed = np.repeat(level[ys, xs], n) + sign * j
            value = ref[py, px] + crossed * C[py, px]
            prev, cur = L[k - 1][py, px], L[k][py, px]
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(cur != prev, (value - prev) / (cur - prev), 1.0)
            ts = t[k - 1] + np.clip(frac, 0.0, 1.0) * (t[k] - t[k - 1])
            ev = np.empty(py.size, dtype=EVENT_DTYPE)
            ev["t"], ev["x"], ev["y"], ev["p"] = np.round(ts).astype(np.int64), px, py, 1 if sign > 0 else 0
            chunks.append(ev)
        level = np.where(n_on > 0, up, np.where(n_off > 0, down, level))
    if not chunks:
        return empty_events()
    events = np.concatenate(chunks)
    return events[np.argsort(events["t"], kind="stable")]


def simulate_saccades(image, n_steps: int = 30, shift_pattern: "str | np.ndarray" = "triangle",
                      contrast_threshold: float = 0.15, amplitude: float = 2.0, duration_us: int = 300_000,
                      eps: float = 1e-2, pad: int | None = None, pad_mode: str = "edge",
                      threshold_mismatch: float = 0.0, seed: int | None = None) -> EventRecording:
    """Turn a static image into a SYNTHETIC event stream by simulated saccades.

    Args:
        image: ``[H, W]``, ``[H, W, 3]`` or ``[3, H, W]``; uint8 (0..255) or float in [0, 1].
        n_steps: frames rendered along the path (more steps = finer timestamps, same events for a fixed path).
        shift_pattern: ``"triangle"`` (N-MNIST-like), ``"horizontal"``, ``"vertical"``, ``"random"`` or an explicit
            ``[n_steps, 2]`` array of (dx, dy) offsets in pixels.
        contrast_threshold: C, the log-intensity change per event (0.15-0.5 are typical DVS values).
        amplitude: saccade size A in pixels for the named patterns.
        duration_us: time of the last frame; frames are evenly spaced in [0, duration_us].
        eps: offset in ``log(I + eps)`` so black pixels have a finite log intensity.
        pad: border added on every side so the shifted image stays on the sensor; default ``⌈max |shift|⌉``.
            The sensor is ``(W + 2·pad, H + 2·pad)``.
        pad_mode: ``"edge"`` (replicate the border, no events from the frame edge) or ``"constant"`` (black).
        threshold_mismatch: relative std of a per-pixel Gaussian threshold spread (fixed-pattern noise), 0 = off.
        seed: seeds the random pattern and the mismatch.

    Returns:
        ``EventRecording(events, sensor_size, synthetic=True, metadata={...parameters...})``.
    """
    intensity = to_intensity(image)
    path = saccade_path(n_steps, shift_pattern, amplitude, seed=seed)
    if not np.isfinite(contrast_threshold) or contrast_threshold <= 0:
        raise ValueError(f"contrast_threshold must be > 0 (a log-intensity step), got {contrast_threshold}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if isinstance(duration_us, bool) or not isinstance(duration_us, (int, np.integer)) or duration_us < 1:
        raise ValueError(f"duration_us must be an integer >= 1, got {duration_us!r}")
    if not 0 <= threshold_mismatch < 1:
        raise ValueError(f"threshold_mismatch must be in [0, 1), got {threshold_mismatch}")
    needed = int(np.ceil(np.abs(path).max())) if path.size else 0
    pad = needed if pad is None else int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad_mode not in ("edge", "constant"):
        raise ValueError(f"pad_mode must be 'edge' or 'constant', got {pad_mode!r}")
    canvas = np.pad(intensity, pad, mode=pad_mode) if pad else intensity
    H, W = canvas.shape
    frames = np.stack([shift_image(canvas, dx, dy) for dx, dy in path])
    log_frames = np.log(frames + eps)
    times = np.linspace(0.0, float(duration_us), n_steps) if n_steps > 1 else np.zeros(1)
    C: Any = contrast_threshold
    if threshold_mismatch > 0:
        rng = np.random.default_rng(None if seed is None else seed + 1)
        C = contrast_threshold * np.clip(1 + threshold_mismatch * rng.standard_normal((H, W)), 0.05, None)
    events = events_from_frames(log_frames, times, C)
    meta = {"source": "simulate_saccades", "shift_pattern": shift_pattern if isinstance(shift_pattern, str)
            else "explicit", "n_steps": n_steps, "contrast_threshold": contrast_threshold, "amplitude": amplitude,
            "duration_us": int(duration_us), "eps": eps, "pad": pad, "pad_mode": pad_mode,
            "threshold_mismatch": threshold_mismatch, "seed": seed}
    return EventRecording(events, SensorSize(W, H, 2), synthetic=True, metadata=meta)
