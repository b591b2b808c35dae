"""The time-major module that runs an imported NIR graph (see :func:`multispike.export.import_from_nir`)."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons.base import check_sequence, reset_net

__all__ = ["NIRNetwork"]


class NIRNetwork(nn.Module):
    """A NIR graph as a time-major module (returned by :func:`import_from_nir`).

    ``forward_sequence(x)`` takes ``[T, B, *input_shape]`` (or a static ``[B, *input_shape]``, repeated ``T``
    times when the graph records T) and returns the per-step outputs ``[T, B, *output_shape]``;
    ``forward(x)`` applies the graph's readout (``"mean"`` over time when the exported network ended with a
    time mean, else the sequence). Every call starts from the initial state (``auto_reset``).

    Attributes:
        input_shape / output_shape: per-sample shapes.
        T: graph steps per sample from the metadata (``None`` if absent), ``substeps`` the unrolling factor.
        restored: names of the units rebuilt as the original multispike modules.
        notes: what the importer assumed or ignored.
    """

    time_major = True

    def __init__(self, blocks: dict[str, nn.Module], plan: list[tuple[str, list[str], bool]], outputs: list[str],
                 input_shape: tuple[int, ...], output_shape: tuple[int, ...], *, T: int | None, substeps: int,
                 input_encoding: str, readout: str, units: dict[str, str], restored: list[str],
                 notes: list[str]) -> None:
        super().__init__()
        self._keys = {name: f"u{i}_{''.join(c if c.isalnum() else '_' for c in name)[:40]}"
                      for i, name in enumerate(blocks)}
        self.blocks = nn.ModuleDict({self._keys[n]: m for n, m in blocks.items()})
        self.plan = plan
        self.outputs = outputs
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.T = T
        self.substeps = max(int(substeps), 1)
        self.input_encoding = input_encoding
        self.readout = readout
        self.units = units
        self.restored = restored
        self.notes = notes
        self.auto_reset = True

    def block(self, unit: str) -> nn.Module:
        """The module that runs NIR unit ``unit`` (a node name, or a decomposition's membrane node name)."""
        return self.blocks[self._keys[unit]]

    def unit_of(self, node: str) -> str:
        """The unit that contains NIR node ``node``."""
        return self.units.get(node, node)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"NIRNetwork: expected a torch.Tensor, got {type(x).__name__}")
        rank = len(self.input_shape)
        if x.dim() == rank + 1 and tuple(x.shape[1:]) == self.input_shape:
            if self.T is None:
                raise ValueError(f"NIRNetwork: got a static input {tuple(x.shape)} but the graph records no T; pass a "
                                 f"time-major input [T, B, {', '.join(map(str, self.input_shape))}]")
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == rank + 2 and tuple(x.shape[2:]) == self.input_shape:
            if self.substeps > 1 and self.T is not None and x.shape[0] * self.substeps == self.T:
                return x.repeat_interleave(self.substeps, dim=0)
            if x.shape[0] == 1 and self.input_encoding == "static" and self.T is not None and self.T > 1:
                return x.expand(self.T, *x.shape[1:])  # one analog step, repeated (direct encoding)
            return x
        raise ValueError(f"NIRNetwork: input shape {tuple(x.shape)} fits neither [B, {self.input_shape}] nor "
                         f"[T, B, {self.input_shape}] (the graph's Input node)")

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs ``[T, B, *output_shape]``."""
        x_seq = self._prepare(x)
        check_sequence(x_seq, "NIRNetwork")
        if self.auto_reset:
            reset_net(self)
        T, B = x_seq.shape[:2]
        values: dict[str, torch.Tensor] = {"input": x_seq}
        for unit, inputs, stateful in self.plan:
            inp = values[inputs[0]]
            for src in inputs[1:]:
                inp = inp + values[src]
            block = self.blocks[self._keys[unit]]
            if stateful:
                out = block(inp)
            else:
                y = block(inp.reshape(T * B, *inp.shape[2:]))
                out = y.reshape(T, B, *y.shape[1:])
            values[unit] = out
        out = values[self.outputs[0]]
        for src in self.outputs[1:]:
            out = out + values[src]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_sequence(x)
        return y.mean(0) if self.readout == "mean" else y

    @torch.no_grad()
    def run_with_events(self, x: torch.Tensor, layer_nodes: dict[str, str]) -> tuple[dict[str, torch.Tensor],
                                                                                       torch.Tensor]:
        """Per-step outputs plus the event counts ``spike_events(y)`` of the units holding ``layer_nodes``."""
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for layer, node in layer_nodes.items():
            block = self.block(self.unit_of(node))

            def hook(m, _i, out, layer=layer):
                captured[layer] = m.spike_events(out) if hasattr(m, "spike_events") else out
            handles.append(block.register_forward_hook(hook))
        try:
            out = self.forward_sequence(x)
        finally:
            for h in handles:
                h.remove()
        return captured, out

    def extra_repr(self) -> str:
        return (f"input_shape={self.input_shape}, output_shape={self.output_shape}, T={self.T}, "
                f"substeps={self.substeps}, readout={self.readout!r}, restored={len(self.restored)} unit(s)")
