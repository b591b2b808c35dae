"""Multi-level input encoding of event frames for one-hot M-LIF networks (algorithms.md §5.5).

Input: ``N_raw`` raw event frames ``E`` of shape ``[N_raw, 2, H, W]`` (counts or binary; SpikingJelly's
``integrate_frames`` output). Parameters: ``S_i`` input lanes and ``T_F`` binary frames (``T_prime`` in MLIF-C)::

    1. F[i] = OR_{c<k} E[i·k + c],  k = ⌊N_raw / T_F⌋            binary frames, [T_F, 2, H, W]
    2. G = 2^{S_i−1},  Q_F = ⌈T_F / G⌉,  zero-pad F to Q_F·G frames (pad = (−T_F) mod G)
    3. C[q] = Σ_{g<G} F[q·G + g]  ∈ {0..G}
    4. C'[q] = 0 if C = 0 else 2^{round(log2 C)}  ∈ {0, 1, 2, 4, .., G}
    5. lane_s[q] = 1{C'[q] = 2^s},  s = 0..S_i−1                   one-hot, [Q_F, S_i, 2, H, W]
    6. optional bilinear resize of every lane image (values become non-binary) and train-time augmentation
       (horizontal flip with p = 1/2, roll by (dy, dx) in [−5, 5]^2, the same for all q and lanes)
    7. the network consumes the merged value Σ_s 2^s·lane_s (≈ C') for Q_F timesteps

The MLIF-C code pads by ``T_F mod G`` frames, which equals the ceiling's padding only for the README's
settings; we pad by ``(−T_F) mod G`` (decision §9.5 "DVS padding: ⌈T_F/G⌉").

Example::

    >>> raw = torch.randint(0, 3, (80, 2, 128, 128))
    >>> enc = MultiLevelEncoder(T_F=40, lanes=3, size=48)
    >>> enc(raw).shape            # Q_F = ceil(40 / 4) = 10
    torch.Size([10, 3, 2, 48, 48])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["group_size", "encoded_steps", "binarize_frames", "log_quantize_counts", "multilevel_lanes",
           "merge_lanes", "resize_lanes", "augment_lanes", "encode_multilevel", "MultiLevelEncoder"]


def _check_int(value, name: str, minimum: int, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}. {fix}".strip())
    return int(value)


def group_size(lanes: int) -> int:
    """``G = 2^{S_i − 1}``: binary frames merged into one multi-level frame."""
    return 1 << (_check_int(lanes, "lanes (S_i)", 1, "An M-LIF input needs at least one lane.") - 1)


def encoded_steps(T_F: int, lanes: int) -> int:
    """``Q_F = ⌈T_F / G⌉``, the number of SNN timesteps after encoding.

    The README of MLIF-C pairs (S_i, T_F) -> Q_F as (4, 80) -> 10, (3, 40) -> 10, (4, 40) -> 5, (3, 20) -> 5,
    (4, 20) -> 3, (3, 10) -> 3; the last two need the ceiling.

    Raises:
        ValueError: ``T_F < G`` (fewer binary frames than one group holds) or bad arguments.
    """
    G = group_size(lanes)
    T_F = _check_int(T_F, "T_F", 1)
    if T_F < G:
        raise ValueError(f"T_F={T_F} binary frames is smaller than the group size G = 2^(S_i-1) = {G} for "
                         f"S_i={lanes} lanes; use T_F >= {G} or fewer lanes (S_i <= {T_F.bit_length()})")
    return -(-T_F // G)


def _as_tensor(frames, owner: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{owner}: frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dim() < 2:
        raise ValueError(f"{owner}: frames must be [N, ...] (time first), got shape {tuple(frames.shape)}")
    return frames


def binarize_frames(raw_frames, T_F: int) -> torch.Tensor:
    """Step 1: ``F[i] = OR_{c<k} E[i·k + c]`` with ``k = ⌊N_raw / T_F⌋`` (the last ``N_raw mod T_F`` raw frames
    are dropped, as in MLIF-C). Any nonzero count counts as an event. Returns uint8 ``[T_F, ...]`` in {0, 1}.

    Raises:
        ValueError: ``N_raw < T_F``.
    """
    E = _as_tensor(raw_frames, "binarize_frames")
    T_F = _check_int(T_F, "T_F", 1)
    N_raw = E.shape[0]
    if N_raw < T_F:
        raise ValueError(f"binarize_frames: {N_raw} raw frames cannot make T_F={T_F} binary frames (k = "
                         f"floor(N_raw/T_F) = 0); integrate the events into at least {T_F} raw frames")
    k = N_raw // T_F
    grouped = E[: T_F * k].reshape(T_F, k, *E.shape[1:])
    return (grouped != 0).any(dim=1).to(torch.uint8)


def log_quantize_counts(counts: torch.Tensor) -> torch.Tensor:
    """Step 4: ``C' = 0`` if ``C = 0`` else ``2^{round(log2 C)}``, exactly, for integer counts ``C >= 0``.

    With ``k = ⌊log2 C⌋``, ``round(log2 C) = k + 1`` iff ``C² > 2^{2k+1}`` (never equal for integers), so no
    floating-point log is involved. E.g. 1→1, 2→2, 3→4, 4→4, 5→4, 6→8, 7→8, 8→8.
    """
    if not isinstance(counts, torch.Tensor):
        counts = torch.as_tensor(counts)
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"log_quantize_counts: counts must be an integer tensor, got {counts.dtype}")
    c = counts.to(torch.int64)
    if c.numel() and int(c.min()) < 0:
        raise ValueError(f"log_quantize_counts: counts must be >= 0, got a minimum of {int(c.min())}")
    if c.numel() and int(c.max()) >= 1 << 31:
        raise ValueError(f"log_quantize_counts: counts up to 2^31 - 1 are supported, got {int(c.max())}")
    # frexp: c = m·2^e with m in [0.5, 1), exact for integers below 2^53, so ⌊log2 c⌋ = e − 1.
    floor_log = (torch.frexp(c.clamp(min=1).to(torch.float64)).exponent - 1).to(torch.int64)
    lower = torch.ones_like(c) << floor_log
    up = c * c > (torch.ones_like(c) << (2 * floor_log + 1))
    return torch.where(c == 0, torch.zeros_like(c), torch.where(up, lower << 1, lower))


def multilevel_lanes(binary_frames, lanes: int) -> torch.Tensor:
    """Steps 2-5: group ``G = 2^{S_i−1}`` binary frames, count, log-quantise and one-hot encode.

    Args:
        binary_frames: ``[T_F, ...]`` in {0, 1} (e.g. from :func:`binarize_frames`).
        lanes: S_i.

    Returns:
        float32 ``[Q_F, S_i, ...]`` one-hot lanes: at every position at most one lane is 1.
    """
    Fb = _as_tensor(binary_frames, "multilevel_lanes")
    if Fb.numel() and not bool(((Fb == 0) | (Fb == 1)).all()):
        raise ValueError("multilevel_lanes: binary_frames must hold only 0 and 1; binarise raw counts with "
                         "binarize_frames first")
    T_F = Fb.shape[0]
    Q_F = encoded_steps(T_F, lanes)
    G = group_size(lanes)
    pad = (-T_F) % G
    Fi = Fb.to(torch.int64)
    if pad:
        Fi = torch.cat([Fi, Fi.new_zeros((pad, *Fi.shape[1:]))], dim=0)
    counts = Fi.reshape(Q_F, G, *Fi.shape[1:]).sum(dim=1)
    quantised = log_quantize_counts(counts)
    levels = (torch.ones(lanes, dtype=torch.int64) << torch.arange(lanes)).view(1, lanes, *([1] * (Fi.dim() - 1)))
    return (quantised.unsqueeze(1) == levels).to(torch.float32)


def merge_lanes(lane_tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Step 7: ``Σ_s 2^s·lane_s`` over the lane dimension ``dim`` (the value the first layer consumes)."""
    S = lane_tensor.shape[dim]
    weights = (2.0 ** torch.arange(S, dtype=lane_tensor.dtype if lane_tensor.is_floating_point() else torch.float32,
                                   device=lane_tensor.device))
    shape = [1] * lane_tensor.dim()
    shape[dim] = S
    return (lane_tensor * weights.view(shape)).sum(dim=dim)


def resize_lanes(lane_tensor: torch.Tensor, size: int | Sequence[int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of the last two (spatial) dims of ``[..., H, W]``.

    ``antialias=True`` reproduces PIL's bilinear resize (MLIF-C resizes with PIL; on float images the two agree
    to ~1e-6, see the tests); plain ``antialias=False`` bilinear differs by up to 0.6 when shrinking 128 -> 48.
    The result is no longer binary, so the first layer is in principle a MAC layer (§5.9).
    """
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"resize_lanes: size must be an int or (H, W) with positive entries, got {size}")
    if lane_tensor.dim() < 3:
        raise ValueError(f"resize_lanes: expected [..., H, W] with at least 3 dims, got {tuple(lane_tensor.shape)}")
    lead = lane_tensor.shape[:-2]
    x = lane_tensor.reshape(-1, 1, *lane_tensor.shape[-2:]).to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return y.reshape(*lead, *size)


def augment_lanes(lane_tensor: torch.Tensor, generator: torch.Generator | None = None, flip_p: float = 0.5,
                  max_roll: int = 5) -> torch.Tensor:
    """Train-time augmentation of §5.5 (after TET): random horizontal flip with probability ``flip_p``, then
    ``torch.roll`` by ``(dy, dx)`` drawn uniformly from ``[−max_roll, max_roll]²``; one draw per sample, shared by
    every timestep and lane. Draws come from ``generator`` (seeded => reproducible)."""
    if not 0.0 <= flip_p <= 1.0:
        raise ValueError(f"augment_lanes: flip_p must be in [0, 1], got {flip_p}")
    max_roll = _check_int(max_roll, "max_roll", 0)
    x = lane_tensor
    if bool(torch.rand((), generator=generator) < flip_p):
        x = x.flip(-1)
    if max_roll:
        dy, dx = torch.randint(-max_roll, max_roll + 1, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


def encode_multilevel(raw_frames, T_F: int, lanes: int, size: int | Sequence[int] | None = None,
                      antialias: bool = True, merge: bool = False) -> torch.Tensor:
    """Steps 1-6 (without augmentation): raw frames ``[N_raw, 2, H, W]`` -> lanes ``[Q_F, S_i, 2, H', W']``,
    or the merged value ``[Q_F, 2, H', W']`` when ``merge=True``."""
    out = multilevel_lanes(binarize_frames(raw_frames, T_F), lanes)
    if size is not None:
        out = resize_lanes(out, size, antialias=antialias)
    return merge_lanes(out, dim=1) if merge else out


class MultiLevelEncoder:
    """Callable transform: raw event frames -> multi-level lanes (§5.5), with optional resize and augmentation.

    Args:
        T_F: binary frames made from the raw frames (``T_prime``).
        lanes: S_i input lanes; ``G = 2^{S_i−1}`` binary frames per encoded frame, ``Q_F = ⌈T_F/G⌉`` steps.
        size: resize target (int or (H, W)), e.g. 48 for VGGSNN; None keeps the sensor size.
        antialias: PIL-equivalent bilinear downsampling (default True).
        augment: apply :func:`augment_lanes` (flip p = ``flip_p``, roll ±``max_roll``) - training only.
        merge: return ``Σ 2^s lane_s`` ``[Q_F, 2, H, W]`` instead of the lanes ``[Q_F, S_i, 2, H, W]``.
        seed: seeds the encoder's own ``torch.Generator`` for augmentation; None uses torch's global RNG.
            In a multi-worker DataLoader each worker holds a copy of the generator, so pass a per-sample
            ``generator`` to :meth:`__call__` (or seed per worker) to avoid repeated draws.

    Example::

        enc = MultiLevelEncoder(T_F=20, lanes=3, size=48, augment=True, seed=0)
        x = enc(raw_frames)          # [5, 3, 2, 48, 48], Q_F = ceil(20 / 4) = 5
    """

    def __init__(self, T_F: int, lanes: int, size: int | Sequence[int] | None = None, antialias: bool = True,
                 augment: bool = False, flip_p: float = 0.5, max_roll: int = 5, merge: bool = False,
                 seed: int | None = None) -> None:
        self.T_F = _check_int(T_F, "T_F", 1)
        self.lanes = _check_int(lanes, "lanes (S_i)", 1, "An M-LIF input needs at least one lane.")
        self.steps = encoded_steps(self.T_F, self.lanes)  # validates T_F >= G
        if size is not None:
            resize_lanes(torch.zeros(1, 1, 1), size)  # validates size early
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"MultiLevelEncoder: flip_p must be in [0, 1], got {flip_p}")
        self.size, self.antialias, self.augment = size, antialias, augment
        self.flip_p, self.max_roll, self.merge = flip_p, _check_int(max_roll, "max_roll", 0), merge
        self.seed = seed
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def group_size(self) -> int:
        """G = 2^{S_i−1}."""
        return group_size(self.lanes)

    def __call__(self, raw_frames, generator: torch.Generator | None = None) -> torch.Tensor:
        out = multilevel_lanes(binarize_frames(raw_frames, self.T_F), self.lanes)
        if self.size is not None:
            out = resize_lanes(out, self.size, antialias=self.antialias)
        if self.augment:
            out = augment_lanes(out, generator if generator is not None else self.generator, self.flip_p,
                                self.max_roll)
        return merge_lanes(out, dim=1) if self.merge else out

    def config(self) -> dict:
        """The parameters, for run configs and cache keys."""
        return {"T_F": self.T_F, "lanes": self.lanes, "size": self.size, "antialias": self.antialias,
                "augment": self.augment, "flip_p": self.flip_p, "max_roll": self.max_roll, "merge": self.merge,
                "padding": "ceil"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "padding")
        return f"MultiLevelEncoder({args}) -> Q_F={self.steps}"
