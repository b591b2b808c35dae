"""Floating-point precision switches of training and evaluation (TF32 on CUDA).

On Ampere and later GPUs PyTorch may run float32 matmuls and convolutions in TF32 (10-bit mantissa). That is
fine for training speed but not for a reported accuracy or a conversion check, where the network must compute
exact float32. :func:`exact_fp32` turns TF32 off for a block and restores the previous setting; the trainer's
final evaluation and the evidence suite's evaluations run inside it. On CPU it does nothing.

Example::

    set_tf32(True)                       # fast training on CUDA
    with exact_fp32(device):
        res = prefix_accuracy(model, test_loader)
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch

__all__ = ["exact_fp32", "get_tf32", "set_tf32", "synchronize"]


def get_tf32() -> bool | None:
    """Whether TF32 is allowed for both matmuls and cuDNN convolutions (None: this torch has no such flags)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
    except Exception:  # noqa: BLE001 - a torch without the legacy flags: leave the defaults alone
        return None


def set_tf32(enabled: bool) -> None:
    """Allow or forbid TF32 for matmuls and cuDNN convolutions (a failure only warns: precision flags must never
    stop a run)."""
    try:
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: could not set TF32 to {enabled}: {exc}", file=sys.stderr)


@contextlib.contextmanager
def exact_fp32(device: torch.device | str) -> Iterator[None]:
    """No TF32 inside the block on a CUDA ``device`` (evaluation and calibration see full float32 arithmetic);
    the previous setting is restored afterwards. A no-op on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    try:   # the two flags separately: PyTorch's defaults differ (matmul off, cuDNN on)
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    except Exception:  # noqa: BLE001 - a torch without the legacy flags
        old = None
    set_tf32(False)
    try:
        yield
    finally:
        if old is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (so wall-clock timings measure the work); a no-op elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
