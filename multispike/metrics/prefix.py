"""The one accuracy-per-timestep-prefix evaluator of the package (algorithms.md: cumulative-mean readout).

After ``t`` of ``T`` steps a spiking classifier predicts ``argmax_k (1/t)·Σ_{τ≤t} O(τ)_k``. Every caller that
reports accuracy at ``t = 1..T`` (the trainer, ``multispike eval``'s report, the workflows, the demo and the
evidence suite) uses :func:`prefix_correct` for one batch or :func:`prefix_accuracy` for a whole loader.

Example::

    res = prefix_accuracy(snn, test_loader)
    res["acc_per_t"]            # [acc at t=1, ..., acc at t=T]; res["acc"] == res["acc_per_t"][-1]
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import ParameterError
from ..neurons.base import reset_net

__all__ = ["prefix_correct", "prefix_accuracy", "sequence_outputs", "tta_views"]


def prefix_correct(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct predictions of the cumulative-mean readout for every prefix ``t = 1..T``.

    ``pred_t = argmax_k (1/t)·Σ_{τ=1}^{t} O(τ)_k``; returns an int64 tensor ``[T]`` of counts over the batch.

    Args:
        outputs: per-step logits ``[T, B, K]``.
        target: class indices ``[B]``.

    Example::

        c = prefix_correct(model.forward_sequence(x), y)   # c[-1] == (model(x).argmax(-1) == y).sum()
    """
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 3 or target.shape != outputs.shape[1:2]:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"prefix_correct: expected logits [T, B, K] and targets [B], got {shape} and "
                         f"{tuple(target.shape)}")
    T = outputs.shape[0]
    steps = torch.arange(1, T + 1, device=outputs.device, dtype=torch.float32).view(T, 1, 1)
    cum_mean = outputs.float().cumsum(0) / steps
    return (cum_mean.argmax(-1) == target.to(outputs.device).unsqueeze(0)).sum(1)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by one pixel (``dy, dx`` in {-1, 1}) with a mirrored border: airbench94's translate view."""
    H, W = x.shape[-2:]
    if H < 2 or W < 2:
        raise ValueError(f"translate TTA needs images of at least 2x2 pixels, got {H}x{W}")
    flat = x.reshape(-1, 1, H, W)
    padded = F.pad(flat.float(), (1, 1, 1, 1), mode="reflect").to(x.dtype)
    y0, x0 = 1 + dy, 1 + dx
    return padded[..., y0:y0 + H, x0:x0 + W].reshape(x.shape)


def tta_views(x: torch.Tensor, *, flip: bool = False, translate: bool = False) -> list[tuple[float, torch.Tensor]]:
    """The test-time-augmentation views of a batch and their weights (summing to 1).

    ``flip``: ``x`` and its left-right mirror, 1/2 each. ``translate`` (airbench94's ``tta_level=2``): those views
    carry weight 1/2, and the views of ``x`` shifted by one pixel up-left and down-right (mirrored border) share
    the other 1/2. Without either, ``[(1.0, x)]``.
    """
    base = [x, x.flip(-1)] if flip else [x]
    views = [(1.0 / len(base), v) for v in base]
    if translate:
        shifted = [_shift(x, -1, -1), _shift(x, 1, 1)]
        if flip:
            shifted = [v for s in shifted for v in (s, s.flip(-1))]
        views = [(0.5 * w, v) for w, v in views] + [(0.5 / len(shifted), v) for v in shifted]
    return views


def sequence_outputs(model: nn.Module, x: torch.Tensor, *, tta_flip: bool = False, tta_translate: bool = False,
                     per_step: bool = True) -> torch.Tensor:
    """Per-step logits ``[T, B, K]`` of ``model`` on ``x`` (``[1, B, K]`` for a plain ``[B, K]`` model).

    With ``tta_flip`` the result is the mean of the logits of ``x`` and of ``x`` mirrored left-right
    (``x.flip(-1)``), per step: flip test-time augmentation; ``tta_translate`` adds one-pixel shifts
    (:func:`tta_views` gives the views and weights). Neurons are reset before each pass.
    ``per_step=False`` calls ``model(x)`` (the time mean, ``[1, B, K]``) even when ``forward_sequence`` exists.
    """
    def once(inp: torch.Tensor) -> torch.Tensor:
        reset_net(model)
        seq = per_step and hasattr(model, "forward_sequence")
        out = model.forward_sequence(inp) if seq else model(inp)
        out = out.float()
        return out.unsqueeze(0) if out.dim() == 2 else out

    if not (tta_flip or tta_translate):
        return once(x)
    out = None
    for w, view in tta_views(x, flip=tta_flip, translate=tta_translate):
        o = w * once(view)
        out = o if out is None else out + o
    return out


@torch.no_grad()
def prefix_accuracy(model: nn.Module, data: Iterable, *, max_batches: int | None = None, tta_flip: bool = False,
                    tta_translate: bool = False, device: torch.device | str | None = None,
                    autocast: Callable[[], Any] | None = None) -> dict:
    """Top-1 accuracy of the cumulative-mean readout at every output prefix ``t`` (and the time-mean CE).

    Uses ``model.forward_sequence`` when the model has it (the zoo), else ``model(x)`` (``[B, K]`` = one step).
    Neurons are reset before every batch; the model is put in eval mode and restored afterwards.

    Args:
        model: the network.
        data: ``(x, y)`` batches.
        max_batches: stop after this many batches.
        tta_flip: average the logits of each image and its mirror image (see :func:`sequence_outputs`).
        tta_translate: also one-pixel shifted views (:func:`tta_views`).
        device: move batches there (default: leave them where they are).
        autocast: a context-manager factory wrapped around each forward (mixed precision).

    Returns:
        ``{"acc", "acc_per_t", "correct_per_t", "samples", "loss", "time_s"}`` (``correct_per_t`` are the
        float64 counts, for summing over DDP ranks).

    Raises:
        ValueError: the data yielded no batch, or the output length changed between batches.
    """
    import contextlib

    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None
    loss_sum, n = 0.0, 0
    t0 = time.perf_counter()
    ctx = autocast if autocast is not None else contextlib.nullcontext
    try:
        for b, (x, y) in enumerate(data):
            if max_batches is not None and b >= max_batches:
                break
            if device is not None:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with ctx():
                out = sequence_outputs(model, x, tta_flip=tta_flip, tta_translate=tta_translate)
            out = out.float()
            c = prefix_correct(out, y).double().cpu()
            if correct is not None and correct.numel() != c.numel():
                raise ValueError(f"prefix_accuracy: the model's output length changed between batches "
                                 f"({correct.numel()} vs {c.numel()} steps)")
            correct = c if correct is None else correct + c
            loss_sum += float(F.cross_entropy(out.mean(0), y, reduction="sum"))
            n += int(y.shape[0])
    finally:
        reset_net(model)
        model.train(was_training)
    if n == 0 or correct is None:
        raise ParameterError("prefix_accuracy: the data yielded no batch (check the data, its split and "
                             "{max_batches})", "max_batches")
    per_t = (correct / n).tolist()
    return {"acc": per_t[-1], "acc_per_t": per_t, "correct_per_t": correct, "samples": n, "loss": loss_sum / n,
            "time_s": round(time.perf_counter() - t0, 3)}
