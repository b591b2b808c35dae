"""Per-layer spike statistics collected with forward hooks (algorithms.md §6.6, §5.9).

A *spiking layer* is any module that implements the neuron statistics protocol of
:class:`multispike.neurons.if_lif.BaseNeuron`: ``spike_events(y)`` (value-weighted unit events per output
element: a spike of count k is k events), ``active_lanes(y)`` (active binary lanes per element) and the
attributes ``levels`` and ``lanes``. Wrappers that contain a spiking neuron (for example a mixed-timestep
``AlignedNeuron``) are not counted twice: only the innermost modules implementing the protocol are hooked,
and the wrapper's ``T``/``timesteps`` is reported as the layer's declared timesteps.

Rates, for a layer with N neurons per sample, T steps and L levels, summed over all samples seen::

    spike_rate    = Σ active lanes / (N·T)          # lane-based (§6.6); pure IF/LIF gives [0, 1]
    count_rate    = Σ unit events  / (N·T·L)         # LM-HT count rate, in [0, 1]
    event_rate    = Σ unit events  / (N·T)           # mean events per neuron-step (energy uses this)
    payload_rate  = Σ |y|          / (N·T)           # mean transmitted value per neuron-step (units of y)

Summing payload values instead of lanes overcounts a one-hot M-LIF layer by up to 2^(S−1) (§5.9), which is
why the lane-based rate is the headline number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["is_spiking_neuron", "spiking_layers", "declared_timesteps", "LayerSpikeStats", "SpikeMonitor"]


def is_spiking_neuron(module: nn.Module) -> bool:
    """True if ``module`` implements the statistics protocol (``spike_events`` and ``active_lanes``)."""
    return callable(getattr(module, "spike_events", None)) and callable(getattr(module, "active_lanes", None))


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The innermost spiking modules of ``model`` as ``(qualified name, module)``, in registration order.

    A module implementing the protocol that *contains* another one (a wrapper) is skipped so that every
    neuron population is counted exactly once.
    """
    out = []
    for name, m in model.named_modules():
        if is_spiking_neuron(m) and not any(is_spiking_neuron(c) for c in m.modules() if c is not m):
            out.append((name, m))
    return out


def _int_attr(m: nn.Module, names: tuple[str, ...] = ("T", "timesteps", "T_l")) -> int | None:
    for a in names:
        v = getattr(m, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            return int(v)
    return None


def declared_timesteps(model: nn.Module, name: str) -> int | None:
    """The timesteps a spiking layer *declares*: its own ``T``/``timesteps`` attribute, else that of the
    nearest enclosing wrapper that implements the statistics protocol (e.g. a mixed-timestep
    ``AlignedNeuron``). ``None`` when no module declares one (then the observed T is all there is)."""
    modules = dict(model.named_modules())
    parts = name.split(".") if name else []
    for k in range(len(parts), -1, -1):
        m = modules.get(".".join(parts[:k]))
        if m is None or (k < len(parts) and not is_spiking_neuron(m)):
            continue
        t = _int_attr(m)
        if t is not None:
            return t
    return None


@dataclass
class LayerSpikeStats:
    """Accumulated statistics of one spiking layer (totals over every sample and call seen)."""

    name: str
    type: str
    levels: int
    lanes: int
    neurons: int = 0                 # N: neurons per sample
    T: int = 0                       # observed timesteps of the last sequence
    declared_T: int | None = None    # T declared by the layer or its wrapper (mixed-timestep models)
    samples: int = 0
    elements: int = 0                # Σ N·T·B
    active_lanes: float = 0.0
    events: float = 0.0
    payload: float = 0.0
    lanes_per_step: list[float] = field(default_factory=list)
    events_per_step: list[float] = field(default_factory=list)
    elements_per_step: list[int] = field(default_factory=list)
    membrane: dict[str, Any] | None = None

    @property
    def spike_rate(self) -> float:
        """Active lanes / (N·T), averaged over samples (§6.6)."""
        return self.active_lanes / self.elements if self.elements else float("nan")

    @property
    def count_rate(self) -> float:
        """Unit events / (N·T·L) (LM-HT's count rate)."""
        return self.events / (self.elements * self.levels) if self.elements else float("nan")

    @property
    def event_rate(self) -> float:
        """Unit events / (N·T): mean value-weighted events per neuron and step."""
        return self.events / self.elements if self.elements else float("nan")

    @property
    def payload_rate(self) -> float:
        """Σ|y| / (N·T): mean transmitted value per neuron and step, in the units of the output."""
        return self.payload / self.elements if self.elements else float("nan")

    @property
    def firing_rate_per_step(self) -> list[float]:
        """Active lanes per neuron at each timestep t (averaged over samples)."""
        return [a / e if e else float("nan") for a, e in zip(self.lanes_per_step, self.elements_per_step)]

    @property
    def events_rate_per_step(self) -> list[float]:
        """Unit events per neuron at each timestep t (averaged over samples)."""
        return [a / e if e else float("nan") for a, e in zip(self.events_per_step, self.elements_per_step)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (plain floats, ints and lists)."""
        return {
            "name": self.name, "type": self.type, "levels": self.levels, "lanes": self.lanes,
            "neurons": self.neurons, "T": self.T, "declared_T": self.declared_T, "samples": self.samples,
            "spike_rate": _f(self.spike_rate), "count_rate": _f(self.count_rate),
            "event_rate": _f(self.event_rate), "payload_rate": _f(self.payload_rate),
            "spikes_per_neuron": _f(self.active_lanes / (self.neurons * self.samples)
                                    if self.neurons and self.samples else float("nan")),
            "events_per_sample": _f(self.events / self.samples if self.samples else float("nan")),
            "firing_rate_per_step": [_f(v) for v in self.firing_rate_per_step],
            "events_rate_per_step": [_f(v) for v in self.events_rate_per_step],
            "membrane": self.membrane,
        }


def _f(v: float) -> float | None:
    """JSON has no NaN: report undefined statistics as ``None``."""
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


class _Membrane:
    """Running membrane statistics (sum, sum of squares, extremes, per-step means)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.step_sum: list[float] = []
        self.step_count: list[int] = []

    def update(self, v_seq: torch.Tensor) -> None:
        v = v_seq.detach().to(torch.float64)
        self.count += v.numel()
        self.sum += float(v.sum())
        self.sumsq += float((v * v).sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        per_step = v.flatten(1).sum(1).tolist()
        _grow(self.step_sum, len(per_step), 0.0)
        _grow(self.step_count, len(per_step), 0)
        for t, s in enumerate(per_step):
            self.step_sum[t] += s
            self.step_count[t] += v[t].numel()

    def to_dict(self) -> dict[str, Any]:
        mean = self.sum / self.count
        var = max(self.sumsq / self.count - mean * mean, 0.0)
        return {"mean": mean, "std": math.sqrt(var), "min": self.min, "max": self.max,
                "mean_per_step": [s / c for s, c in zip(self.step_sum, self.step_count)]}


def _grow(lst: list, n: int, fill) -> None:
    if len(lst) < n:
        lst.extend([fill] * (n - len(lst)))


def check_statistics_shape(neuron: nn.Module, name: str, y: torch.Tensor, stat: torch.Tensor, what: str) -> None:
    """The protocol returns one value per output element; anything else is a bug in the neuron."""
    if not isinstance(stat, torch.Tensor) or stat.shape != y.shape:
        got = tuple(stat.shape) if isinstance(stat, torch.Tensor) else type(stat).__name__
        raise ValueError(f"{type(neuron).__name__} ({name!r}).{what}(y) must return one value per output "
                         f"element (shape {tuple(y.shape)}), got {got}; fix the neuron's statistics protocol")


class SpikeMonitor:
    """Record per-layer spike statistics of every spiking layer of a model.

    Hooks are read-only: the model's outputs are bit-identical with and without a monitor, and
    :meth:`detach` (or leaving the ``with`` block) removes every hook and restores ``store_v_seq``.

    Args:
        model: any module; its spiking layers are found with :func:`spiking_layers`.
        membrane: also collect membrane statistics (mean, std, min, max, per-step mean). Neurons that have a
            ``store_v_seq`` attribute get it switched on while attached; others are skipped.
        per_step: keep per-timestep rates (cheap; one reduction per step).

    Multi-step neurons (``step_mode='m'``) see a ``[T, B, ...]`` sequence per call. Single-step neurons see
    one step per call; the step index restarts when the neuron's ``state`` is ``None`` (after ``reset()``).

    Example::

        >>> import torch, multispike as ms
        >>> net = torch.nn.Sequential(ms.SeqToANNContainer(torch.nn.Linear(4, 3)), ms.IFNeuron(step_mode='m'))
        >>> with SpikeMonitor(net) as mon:
        ...     _ = net(torch.rand(2, 5, 4))
        >>> mon.results()["1"].T
        2
    """

    def __init__(self, model: nn.Module, membrane: bool = False, per_step: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"SpikeMonitor: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.membrane = bool(membrane)
        self.per_step = bool(per_step)
        self._layers = spiking_layers(model)
        self._handles: list = []
        self._saved_store_v: dict[str, tuple[bool, Any]] = {}
        self._step_index: dict[str, int] = {}
        self._membrane: dict[str, _Membrane] = {}
        self._stats: dict[str, LayerSpikeStats] = {}
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "SpikeMonitor":
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        for name, m in self._layers:
            self._handles.append(m.register_forward_pre_hook(self._make_pre_hook(name)))
            self._handles.append(m.register_forward_hook(self._make_hook(name)))
            if self.membrane and hasattr(m, "store_v_seq"):
                self._saved_store_v[name] = (m.store_v_seq, getattr(m, "v_seq", None))
                m.store_v_seq = True
        return self

    def detach(self) -> None:
        """Remove every hook and restore each neuron's ``store_v_seq`` and ``v_seq``."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        modules = dict(self._layers)
        for name, (flag, v_seq) in self._saved_store_v.items():
            modules[name].store_v_seq = flag
            if hasattr(modules[name], "v_seq"):
                modules[name].v_seq = v_seq
        self._saved_store_v.clear()

    def __enter__(self) -> "SpikeMonitor":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        """Clear the accumulated statistics (hooks stay attached)."""
        self._stats = {}
        for name, m in self._layers:
            self._stats[name] = LayerSpikeStats(
                name=name, type=type(m).__name__, levels=int(getattr(m, "levels", 1) or 1),
                lanes=int(getattr(m, "lanes", 1) or 1), declared_T=declared_timesteps(self.model, name))
        self._membrane = {}
        self._step_index = {}

    # ------------------------------------------------------------------ hooks
    def _make_pre_hook(self, name: str):
        def pre_hook(module, args):
            if getattr(module, "step_mode", "m") == "s":
                fresh = getattr(module, "state", None) is None
                self._step_index[name] = 0 if fresh else self._step_index.get(name, -1) + 1
        return pre_hook

    def _make_hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"SpikeMonitor: spiking layer {name!r} ({type(module).__name__}) returned "
                                f"{type(output).__name__}; the statistics protocol needs a tensor output")
            with torch.no_grad():
                self._record(name, module, output.detach())
        return hook

    def _record(self, name: str, module: nn.Module, y: torch.Tensor) -> None:
        st = self._stats[name]
        single = getattr(module, "step_mode", "m") == "s"
        seq = y.unsqueeze(0) if single else y
        if seq.dim() < 2:
            raise ValueError(f"SpikeMonitor: spiking layer {name!r} produced shape {tuple(y.shape)}; expected "
                             f"[T, B, ...] (step_mode='m') or [B, ...] (step_mode='s')")
        T, B = seq.shape[0], seq.shape[1]
        n = seq[0, 0].numel()
        events = module.spike_events(y)
        lanes = module.active_lanes(y)
        check_statistics_shape(module, name, y, events, "spike_events")
        check_statistics_shape(module, name, y, lanes, "active_lanes")
        events = events.reshape(seq.shape)
        lanes = lanes.reshape(seq.shape)
        st.neurons = n
        st.elements += seq.numel()
        st.active_lanes += float(lanes.sum(dtype=torch.float64))
        st.events += float(events.sum(dtype=torch.float64))
        st.payload += float(seq.abs().sum(dtype=torch.float64))
        t0 = self._step_index.get(name, 0) if single else 0
        if single:
            st.T = max(st.T, t0 + 1)
            if t0 == 0:
                st.samples += B
        else:
            st.T = T
            st.samples += B
        if self.per_step:
            lanes_t = lanes.flatten(1).sum(1, dtype=torch.float64).tolist()
            events_t = events.flatten(1).sum(1, dtype=torch.float64).tolist()
            for lst, fill in ((st.lanes_per_step, 0.0), (st.events_per_step, 0.0), (st.elements_per_step, 0)):
                _grow(lst, t0 + T, fill)
            for t in range(T):
                st.lanes_per_step[t0 + t] += lanes_t[t]
                st.events_per_step[t0 + t] += events_t[t]
                st.elements_per_step[t0 + t] += B * n
        if self.membrane:
            # Single-step calls do not refresh v_seq, so read the post-reset membrane ``v`` instead.
            v_seq = getattr(module, "v", None) if single else getattr(module, "v_seq", None)
            if isinstance(v_seq, torch.Tensor):
                self._membrane.setdefault(name, _Membrane()).update(v_seq.detach().unsqueeze(0) if single else v_seq)

    # ------------------------------------------------------------------ results
    def results(self) -> dict[str, LayerSpikeStats]:
        """Per-layer statistics keyed by qualified module name (layers never called are left out)."""
        out = {}
        for name, st in self._stats.items():
            if st.elements == 0:
                continue
            if name in self._membrane and self._membrane[name].count:
                st.membrane = self._membrane[name].to_dict()
            out[name] = st
        return out

    def layer_timesteps(self) -> dict[str, int]:
        """Observed timesteps per spiking layer (differs between layers in mixed-timestep models)."""
        return {name: st.T for name, st in self.results().items()}

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable dictionary: per-layer statistics and network totals."""
        layers = self.results()
        elements = sum(s.elements for s in layers.values())
        lanes = sum(s.active_lanes for s in layers.values())
        events = sum(s.events for s in layers.values())
        samples = max((s.samples for s in layers.values()), default=0)
        return {
            "layers": [s.to_dict() for s in layers.values()],
            "total": {
                "spiking_layers": len(layers),
                "neurons": sum(s.neurons for s in layers.values()),
                "samples": samples,
                "spike_rate": _f(lanes / elements) if elements else None,
                "event_rate": _f(events / elements) if elements else None,
                "active_lanes_per_sample": _f(lanes / samples) if samples else None,
                "events_per_sample": _f(events / samples) if samples else None,
            },
            "definitions": {
                "spike_rate": "active lanes / (neurons * T)",
                "count_rate": "unit events / (neurons * T * levels)",
                "event_rate": "unit events / (neurons * T)",
                "payload_rate": "sum |y| / (neurons * T), in the units of the layer output",
            },
        }
