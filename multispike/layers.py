"""Containers that run ordinary layers on time-major data, encoders and readouts.

* :class:`SeqToANNContainer` runs stateless layers (conv, BN, linear, pooling) once on the merged
  ``[T·B, ...]`` batch and restores ``[T, B, ...]`` - the fast path for multi-step networks.
* :class:`MultiStepContainer` loops a single-step module over T.
* :class:`DirectEncoder` repeats a static image over T (direct encoding); :class:`MeanOverTime` is the
  usual readout.
"""
from __future__ import annotations

import torch
from torch import nn

from .neurons.base import StepModule, check_positive_int, check_sequence
from .recompute import (PACKED_COPY_ATTR, add_with_recipe, attach_recipe, batch_norm_with_recipe,
                        can_recompute_bn, packed_copy_of)

__all__ = ["SeqToANNContainer", "MultiStepContainer", "DirectEncoder", "MeanOverTime", "to_time_major",
           "align_time", "parse_align", "TemporalAlign", "ResidualAdd", "ALIGN_METHODS",
           "flatten_time", "unflatten_time", "SPIKE_STORAGE_MODES", "set_spike_storage", "pack_exact_uint8",
           "set_recompute_bn"]


def flatten_time(x_seq: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...] -> [T·B, ...]`` (a view when possible)."""
    return x_seq.flatten(0, 1)


def unflatten_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[T·B, ...] -> [T, B, ...]``."""
    if x.shape[0] % T:
        raise ValueError(f"cannot split a merged batch of {x.shape[0]} into T={T} steps")
    return x.view(T, x.shape[0] // T, *x.shape[1:])


def to_time_major(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Convert an input to time-major ``[T, B, ...]``.

    Args:
        layout: ``"TB"`` (already time-major), ``"BT"`` (batch-first, as tonic and NeuroBench emit).
            There is no default: guessing a layout silently is a classic source of wrong results.
    """
    if layout == "TB":
        return x
    if layout == "BT":
        if x.dim() < 2:
            raise ValueError(f"to_time_major: a [B, T, ...] tensor needs >= 2 dims, got shape {tuple(x.shape)}")
        return x.transpose(0, 1).contiguous()
    raise ValueError(f"to_time_major: layout must be 'TB' or 'BT', got {layout!r}")


SPIKE_STORAGE_MODES = ("float", "bytes")

# Integer views of the float dtypes, for a bitwise (not ==) comparison: -0.0 and NaN payloads must round-trip too.
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def _dense(t: torch.Tensor) -> bool:
    if t.is_contiguous():
        return True
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return fmt is not None and t.is_contiguous(memory_format=fmt)


def pack_exact_uint8(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as ``uint8`` with the same strides if that round-trips **bit for bit**, else ``None``.

    Spikes (0/1), multi-level spike counts (0..L) and one-hot M-LIF payloads (0, 1, 2, 4, ...) qualify; anything
    fractional, negative, above 255, ``-0.0``, NaN or infinite does not. Only contiguous and channels-last tensors
    are packed, so the unpacked copy has exactly the original strides.
    """
    bits = _BITS.get(t.dtype)
    if bits is None or t.numel() == 0 or not _dense(t):
        return None
    from .kernels.pack_cpp import pack_exact_uint8_cpu, pack_kernel_available
    if pack_kernel_available(t):   # one pass instead of PyTorch's four (convert, convert back, compare)
        return pack_exact_uint8_cpu(t)
    q = t.to(torch.uint8)  # preserve_format: same strides for a dense tensor (checked below)
    if q.stride() != t.stride():
        return None
    back = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(q)
    if not torch.equal(back.view(bits), t.view(bits)):
        return None
    return q


def _unpack_exact_uint8(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    q, dtype = packed
    return torch.empty_strided(q.shape, q.stride(), dtype=dtype, device=q.device).copy_(q)


def _outer_saved_tensor_hooks_active() -> bool:
    """True under someone else's ``saved_tensors_hooks`` (activation checkpointing, CPU offload): theirs win."""
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, RuntimeError):  # private API moved: be conservative, never stack over unknown hooks
        return True


def _saved_view_key(t: torch.Tensor) -> tuple:
    """Which view of the input a saved tensor is, version included: an in-place change between two saves must not
    hand the later save the stale copy (saved-tensor hooks bypass autograd's own version check)."""
    return tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t._version


class _InputPacker:
    """``saved_tensors_hooks`` pack function that stores autograd's saved copies of one input as bytes."""

    __slots__ = ("storage_ptr", "owner", "cache")

    def __init__(self, x: torch.Tensor, owner: "SeqToANNContainer") -> None:
        self.storage_ptr = x.untyped_storage().data_ptr()
        self.owner = owner
        self.cache: dict = {}

    def __call__(self, t: torch.Tensor):
        if t.device.type == "meta" or t.untyped_storage().data_ptr() != self.storage_ptr:
            return t  # not the container's input (weights, BN's input, ...): autograd's usual saving
        key = _saved_view_key(t)
        if key in self.cache:
            return self.cache[key]
        q = pack_exact_uint8(t)
        self.owner._note_pack(q is not None)
        packed = t if q is None else (q, t.dtype)
        self.cache[key] = packed
        return packed


# Average pools need only the *shape* of their input for the backward (the gradient is spread evenly over each
# window), yet autograd's avg_pool2d saves the whole input tensor.
_SHAPE_ONLY_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d)


class _ShapeOnly:
    """``saved_tensors_hooks`` pack function keeping only the shape of one tensor (an average pool's input)."""

    __slots__ = ("storage_ptr",)

    def __init__(self, x: torch.Tensor) -> None:
        self.storage_ptr = x.untyped_storage().data_ptr()

    def __call__(self, t: torch.Tensor):
        if t.device.type == "meta" or t.untyped_storage().data_ptr() != self.storage_ptr:
            return t
        return _ShapeStub(tuple(t.shape), t.dtype, t.device)


class _ShapeStub(tuple):
    """What :class:`_ShapeOnly` keeps instead of a tensor: (shape, dtype, device)."""

    def __new__(cls, shape, dtype, device):
        return super().__new__(cls, (shape, dtype, device))


def _unpack_shape_only(packed):
    if isinstance(packed, _ShapeStub):
        shape, dtype, device = packed
        # a zero-stride view of one element: the pool's backward reads sizes, never values (bit-exact gradients,
        # tests/test_layers_spike_storage.py); the gradient it returns is contiguous
        return torch.zeros((), dtype=dtype, device=device).expand(shape)
    return _unpack_exact_uint8(packed)


class SeqToANNContainer(nn.Sequential):
    """Run stateless modules on the merged ``T·B`` batch: ``[T, B, ...] -> [T, B, ...]``.

    Spike storage (training memory, opt-in): the first layer of a container usually saves its input for the
    backward pass (a conv or linear needs it for the weight gradient, a pooling for its shape or indices). With
    ``spike_storage = "bytes"`` (per container, or :func:`set_spike_storage` on a model), an input that is a
    spike tensor - every value an integer in ``[0, 255]``, checked bit for bit - is saved as ``uint8`` (a quarter
    of float32's bytes) and restored exactly, with the same strides, when the backward needs it: outputs and
    gradients are bit-identical to the default ``"float"`` path (tests/test_layers_spike_storage.py). On CPU the
    check and the copy are one pass of the C++ library (:mod:`multispike.kernels.pack_cpp`). Measured
    (benchmarks/perf_goals.py, IF SNN at T = 4 on a CPU): peak training memory -16 to -18 % with the CPU
    kernels' buffer pool off (``MULTISPIKE_KERNEL_POOL_MB=0``) but only -5 to -7 % with it on (the pool keeps
    the freed float spike buffers cached), for 0-4 % more training time (the one-pass pack, and a uint8-to-float
    copy in the backward); on CUDA the check is PyTorch's four passes and waits for the device (``torch.equal``).
    Hence opt-in. After
    ``_PROBE_AFTER_FAILURES`` inputs in a row that are not spikes (an ANN's ReLU output, an image) a container
    stops checking and re-probes every ``_REPROBE_EVERY`` calls. Nothing changes without autograd, under
    ``torch.compile``/tracing, or under a caller's own ``saved_tensors_hooks`` (activation checkpointing).

    BN recompute (training memory, opt-in: ``recompute_bn = True`` or :func:`set_recompute_bn`): a container that
    ends in a BatchNorm returns an output the next fused spiking neuron rebuilds in its backward from BN's input
    instead of saving it (:mod:`multispike.recompute`; bit-identical rebuild, float32/float64 outside autocast,
    training mode only).

    A container whose first layer is an average pool (``AvgPool*d``, ``AdaptiveAvgPool*d``) never saves its input:
    the pool's backward needs only the input's shape, so autograd keeps the shape instead of the tensor (always on,
    bit-identical gradients; e.g. 56 of 246 MiB of saved activations of ``airbench_cifar`` at T = 4, batch 32,
    benchmarks/memory_breakdown.py). Same conditions as above: autograd on, no compile/tracing, no outer hooks.
    """

    spike_storage: str = "float"
    recompute_bn: bool = False
    _PROBE_AFTER_FAILURES = 3
    _REPROBE_EVERY = 64

    def _note_pack(self, ok: bool) -> None:
        self._spike_fail_streak = 0 if ok else self.__dict__.get("_spike_fail_streak", 0) + 1

    def _should_pack(self, x: torch.Tensor) -> bool:
        if self.spike_storage != "bytes" or not torch.is_grad_enabled() or x.dtype not in _BITS:
            return False
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        d = self.__dict__
        if d.get("_spike_fail_streak", 0) >= self._PROBE_AFTER_FAILURES:
            calls = d.get("_spike_skip_calls", 0) + 1
            self._spike_skip_calls = calls
            if calls % self._REPROBE_EVERY:
                return False
        return not _outer_saved_tensor_hooks_active()

    def _pool_first(self, x: torch.Tensor) -> bool:
        if len(self) == 0 or not isinstance(self[0], _SHAPE_ONLY_POOLS) or not torch.is_grad_enabled() or \
                not x.requires_grad:
            return False
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        return not _outer_saved_tensor_hooks_active()

    def _run(self, x: torch.Tensor, recompute: bool):
        """The layers on the merged batch; with ``recompute``, a final BatchNorm also yields its recipe."""
        if not recompute:
            return super().forward(x), None
        h = x
        for layer in list(self)[:-1]:
            h = layer(h)
        if not can_recompute_bn(self[-1], h):
            return self[-1](h), None
        return batch_norm_with_recipe(self[-1], h)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "SeqToANNContainer")
        T, B = x_seq.shape[:2]
        x = x_seq.flatten(0, 1)
        # decided before this container's own saved-tensor hooks below are pushed (an outer caller's hooks win)
        recompute = self.recompute_bn and len(self) > 0 and torch.is_grad_enabled() and \
            not _outer_saved_tensor_hooks_active()
        if self._pool_first(x):
            with torch.autograd.graph.saved_tensors_hooks(_ShapeOnly(x), _unpack_shape_only):
                y, recipe = self._run(x, recompute)
        elif self._should_pack(x):
            packer = _InputPacker(x, self)
            earlier = packed_copy_of(x_seq)
            if earlier is not None:   # another container packed this input already (a shortcut's conv): reuse it
                q = earlier.flatten(0, 1)
                if q.shape == x.shape and q.stride() == x.stride():
                    packer.cache[_saved_view_key(x)] = (q, x.dtype)
            with torch.autograd.graph.saved_tensors_hooks(packer, _unpack_exact_uint8):
                y, recipe = self._run(x, recompute)
            packed = packer.cache.get(_saved_view_key(x))
            if isinstance(packed, tuple):   # keep the copy findable for a residual addition (packed_copy_of)
                setattr(x_seq, PACKED_COPY_ATTR, (packed[0].view(x_seq.shape), x_seq._version))
        else:
            y, recipe = self._run(x, recompute)
        out = y.view(T, B, *y.shape[1:])
        if recipe is not None:
            attach_recipe(out, recipe)
        return out


def set_recompute_bn(net: nn.Module, enabled: bool = True) -> nn.Module:
    """Let every :class:`SeqToANNContainer` of ``net`` that ends in a BatchNorm hand the next fused spiking neuron
    a recipe to rebuild its input in the backward instead of saving it (:mod:`multispike.recompute`). Returns
    ``net``."""
    for m in net.modules():
        if isinstance(m, SeqToANNContainer):
            m.recompute_bn = bool(enabled)
    return net


def set_spike_storage(net: nn.Module, mode: str) -> nn.Module:
    """Set how every :class:`SeqToANNContainer` in ``net`` saves a spike input for the backward pass.

    Args:
        mode: ``"bytes"`` (``uint8`` when that is bit-exact, see :class:`SeqToANNContainer`) or ``"float"``
            (the default: autograd's plain float saving).

    Returns ``net``.
    """
    if mode not in SPIKE_STORAGE_MODES:
        raise ValueError(f"spike storage must be one of {SPIKE_STORAGE_MODES}, got {mode!r}")
    for m in net.modules():
        if isinstance(m, SeqToANNContainer):
            m.spike_storage = mode
    return net


class MultiStepContainer(StepModule):
    """Apply a single-step module at every step of a ``[T, B, ...]`` sequence."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.step_mode = "m"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "MultiStepContainer")
        return torch.stack([self.module(x) for x in x_seq])


class DirectEncoder(nn.Module):
    """Direct encoding: repeat a static input ``[B, ...]`` over ``T`` steps -> ``[T, B, ...]`` (a view)."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.T = check_positive_int(T, "T", fix="Use T >= 1 timesteps.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.T, *x.shape)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class MeanOverTime(nn.Module):
    """Readout: mean over the time axis, ``[T, B, ...] -> [B, ...]``."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "MeanOverTime")
        return x_seq.mean(0)


# ----------------------------------------------------------------------------------------------------
# Temporal alignment between layers that run different numbers of timesteps (QAC, algorithms.md §4.4).
# ----------------------------------------------------------------------------------------------------
ALIGN_METHODS = ("repl", "trunc", "aver")


def parse_align(mode: str) -> tuple[str, str]:
    """Parse ``"A+B"`` (expansion method, reduction method), e.g. ``"aver+aver"`` or ``"repl+trunc"``."""
    parts = mode.lower().replace(" ", "").split("+") if isinstance(mode, str) else []
    if len(parts) != 2 or parts[0] not in ("repl", "aver") or parts[1] not in ("trunc", "aver"):
        raise ValueError(f"unknown alignment mode {mode!r}: use '<expansion>+<reduction>' with expansion in "
                         f"{{repl, aver}} and reduction in {{trunc, aver}}, e.g. 'aver+aver' (default)")
    return parts[0], parts[1]


_warned_uneven: set[tuple[int, int]] = set()


def align_time(x_seq: torch.Tensor, T_out: int, mode: str = "aver+aver") -> torch.Tensor:
    """Align a ``[T_in, B, ...]`` sequence to ``T_out`` steps.

    * replication (expansion): ``X̂[t] = X[⌊t·T_in/T_out⌋]``; uneven when ``T_out mod T_in != 0`` (warns once).
    * truncation (reduction): ``X̂[t] = X[t]`` for ``t < T_out``.
    * averaging (both): ``X̂[t] = mean_i X[i]`` for every t - also applied when ``T_in == T_out``
      (QAC's "QCFS + aver"); replication and truncation are the identity then.
    """
    T_out = check_positive_int(T_out, "T_out", fix="Per-layer timesteps must be >= 1.")
    expand, reduce = parse_align(mode)
    T_in = x_seq.shape[0]
    method = expand if T_out > T_in else reduce if T_out < T_in else ("aver" if "aver" in (expand, reduce) else None)
    if T_in == T_out and (method is None or T_in == 1):
        return x_seq
    if method == "aver":
        mean = x_seq.mean(0, keepdim=True)
        return mean.expand(T_out, *x_seq.shape[1:])
    if method == "trunc":
        return x_seq[:T_out]
    if T_out % T_in and (T_in, T_out) not in _warned_uneven:
        import warnings
        _warned_uneven.add((T_in, T_out))
        warnings.warn(f"replication from T={T_in} to T={T_out} steps is uneven (T_out is not a multiple of T_in): "
                      f"some steps are repeated more often than others (QAC §4.4)", stacklevel=2)
    idx = torch.div(torch.arange(T_out, device=x_seq.device) * T_in, T_out, rounding_mode="floor")
    return x_seq.index_select(0, idx)


class TemporalAlign(nn.Module):
    """Module form of :func:`align_time`: aligns its ``[T_in, B, ...]`` input to ``T`` steps."""

    def __init__(self, T: int, mode: str = "aver+aver") -> None:
        super().__init__()
        self.T = check_positive_int(T, "T", fix="Per-layer timesteps must be >= 1.")
        parse_align(mode)
        self.mode = mode

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_sequence(x_seq, "TemporalAlign")
        return align_time(x_seq, self.T, self.mode)

    def extra_repr(self) -> str:
        return f"T={self.T}, mode={self.mode!r}"


class ResidualAdd(nn.Module):
    """``x + shortcut`` for time-major tensors; if their T differ, the shortcut is aligned to ``x``'s T.

    Zoo models route every residual addition through this module so mixed-timestep conversion can
    choose the alignment (``align`` attribute, default ``"aver+aver"``).
    """

    def __init__(self, align: str = "aver+aver") -> None:
        super().__init__()
        parse_align(align)
        self.align = align

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != shortcut.shape[0]:
            shortcut = align_time(shortcut, x.shape[0], self.align)
            return x + shortcut
        # with recompute_bn the sum can carry a recipe, so the neuron after it saves no copy (multispike.recompute)
        return add_with_recipe(x, shortcut)
