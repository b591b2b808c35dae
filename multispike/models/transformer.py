"""Spike-driven transformer "Transformer-L-D" (algorithms.md §7.7; SDT-C ``sps.py``, ``ms_conv.py``,
``spikeformer.py`` at commit 3faa822).

Tensors are ``[T, B, D, H', W']`` throughout (tokens stay on a 2-D grid, ``N_tok = H'·W'``).

1. **SPS** (spiking patch splitting): ``3C(D/8)+BN -> N -> [MP] -> 3C(D/4)+BN -> N -> [MP] -> 3C(D/2)+BN -> N ->
   [MP] -> 3C(D)+BN -> [MP] = x_feat``, then ``x = N(x_feat) -> 3C(D)+BN (RPE) -> + x_feat``. ``MP`` is
   MaxPool(3, 2, 1), enabled per position by ``pooling_stat`` (CIFAR ``"0011"``: 32 -> 8×8 = 64 tokens;
   ImageNet ``"1111"``: 224 -> 14×14). SPS convs have no bias. The first conv+BN is the model's ``stem``.
2. **Encoder block** ×L: ``x = x + SDSA(x)``, then ``x = x + MLP(x)``; the residual adds membrane-like values.

   * SDSA: ``z = N(x)``; ``Q = N(BN(1C_D(z)))`` and K, V likewise (no bias); split into h heads
     ``[T, B, h, N_tok, D/h]``; ``KV = N_{θ=0.5}(Σ_tokens K ⊙ V)``; ``A = Q ⊙ KV``; output ``BN(1C_D(A))``
     (with bias). SDT-C's unused ``talking_heads`` conv and ``scale`` are not built.
   * MLP: ``BN(1C_{4D}(N(x))) -> N -> BN(1C_D(.))``, convs with bias.
3. **Head**: spatial mean -> ``[T, B, D]`` -> N -> FC -> mean over T (``forward``) or per-step logits
   (``forward_sequence``, for TET).

Default neuron: ``"lif"`` with SDT's SpikingJelly parameters (τ = 2, ``decay_input``, θ = 1, hard reset to 0,
``detach_reset``, sigmoid α = 4; :data:`multispike.models.sources.SDT`); the KV neuron has θ = 0.5
(``kv_neuron_kwargs`` overrides it). Weights: SDT-C's truncated normal (σ = 0.02) by default.
Not built: SDT-C's drop-path (defined there but never applied in ``MS_Block_Conv.forward``) and its DVS
``Erode`` pooling.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..layers import ResidualAdd, SeqToANNContainer
from .base import TimeMajorModel, build_model, conv_bn, init_weights, resolve_input_size
from .registry import register_model
from .sources import SDT

__all__ = ["SpikingPatchSplitting", "SpikeDrivenSelfAttention", "SpikingMLP", "SpikeDrivenBlock",
           "SpikeDrivenTransformer"]


def _maxpool() -> SeqToANNContainer:
    return SeqToANNContainer(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


class SpikingPatchSplitting(nn.Module):
    """SPS after its first conv+BN (which is the model's stem): ``[T, B, D/8, H, W] -> [T, B, D, H', W']``."""

    def __init__(self, embed_dim: int, pooling_stat: str, make_neuron: Callable[[], nn.Module]) -> None:
        super().__init__()
        d = embed_dim
        pools = [p == "1" for p in pooling_stat]
        self.lif0 = make_neuron()
        self.pool0 = _maxpool() if pools[0] else None
        self.conv1 = conv_bn(d // 8, d // 4, 3)
        self.lif1 = make_neuron()
        self.pool1 = _maxpool() if pools[1] else None
        self.conv2 = conv_bn(d // 4, d // 2, 3)
        self.lif2 = make_neuron()
        self.pool2 = _maxpool() if pools[2] else None
        self.conv3 = conv_bn(d // 2, d, 3)
        self.pool3 = _maxpool() if pools[3] else None
        self.rpe_lif = make_neuron()
        self.rpe_conv = conv_bn(d, d, 3)
        self.rpe_add = ResidualAdd()

    @staticmethod
    def _opt(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return x if module is None else module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._opt(self.pool0, self.lif0(x))
        x = self._opt(self.pool1, self.lif1(self.conv1(x)))
        x = self._opt(self.pool2, self.lif2(self.conv2(x)))
        x_feat = self._opt(self.pool3, self.conv3(x))
        return self.rpe_add(self.rpe_conv(self.rpe_lif(x_feat)), x_feat)


class SpikeDrivenSelfAttention(nn.Module):
    """SDSA: ``Q ⊙ N_{θ=0.5}(Σ_tokens K ⊙ V)`` per head, linear in the token count (no softmax, no matmul).

    Input and output ``[T, B, D, H, W]``; the residual addition is done by the enclosing block.
    """

    # Which neurons produce Q, K, V and gate Σ K⊙V: read by multispike.metrics.OpCounter to count the masks.
    spike_roles = {"q": "q_lif", "k": "k_lif", "v": "v_lif", "kv": "kv_lif"}

    def __init__(self, dim: int, num_heads: int, make_neuron: Callable[..., nn.Module],
                 kv_neuron_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.shortcut_lif = make_neuron()
        self.q_conv = conv_bn(dim, dim, 1)
        self.q_lif = make_neuron()
        self.k_conv = conv_bn(dim, dim, 1)
        self.k_lif = make_neuron()
        self.v_conv = conv_bn(dim, dim, 1)
        self.v_lif = make_neuron()
        # SDT-C's "talking_heads_lif": SpikingJelly LIF with v_threshold=0.5 on the summed K⊙V.
        self.kv_lif = make_neuron(dict(v_threshold=0.5), kv_neuron_kwargs)
        self.proj_conv = conv_bn(dim, dim, 1, bias=True)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [T, B, C, H, W] -> [T, B, h, N, C/h]; channel c = head·(C/h) + j as in SDT-C.
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads) \
            .permute(0, 1, 3, 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        z = self.shortcut_lif(x)
        q = self._heads(self.q_lif(self.q_conv(z)))
        k = self._heads(self.k_lif(self.k_conv(z)))
        v = self._heads(self.v_lif(self.v_conv(z)))
        kv = self.kv_lif((k * v).sum(dim=-2, keepdim=True))
        a = (q * kv).transpose(3, 4).reshape(T, B, C, H, W)
        return self.proj_conv(a)


class SpikingMLP(nn.Module):
    """``BN(1C_{rD}(N(x))) -> N -> BN(1C_D(.))`` with biases; residual added by the block."""

    def __init__(self, dim: int, hidden: int, make_neuron: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.fc1_lif = make_neuron()
        self.fc1_conv = conv_bn(dim, hidden, 1, bias=True)
        self.fc2_lif = make_neuron()
        self.fc2_conv = conv_bn(hidden, dim, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2_conv(self.fc2_lif(self.fc1_conv(self.fc1_lif(x))))


class SpikeDrivenBlock(nn.Module):
    """``x = x + SDSA(x); x = x + MLP(x)`` with :class:`~multispike.layers.ResidualAdd` modules."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, make_neuron: Callable[..., nn.Module],
                 kv_neuron_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.attn = SpikeDrivenSelfAttention(dim, num_heads, make_neuron, kv_neuron_kwargs)
        self.attn_add = ResidualAdd()
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), make_neuron)
        self.mlp_add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_add(self.attn(x), x)
        return self.mlp_add(self.mlp(x), x)


class SpikeDrivenTransformer(TimeMajorModel):
    """Spike-driven transformer Transformer-L-D (Yao et al. 2023) on time-major tensors.

    Args:
        depth: L, the number of encoder blocks.
        embed_dim: D (a multiple of 8 and of ``num_heads``).
        num_heads: attention heads h (8 in SDT).
        mlp_ratio: hidden width of the MLP over D (4).
        pooling_stat: four ``"0"``/``"1"`` flags for the SPS max-pools (``"0011"`` CIFAR, ``"1111"`` ImageNet).
        kv_neuron_kwargs: keywords for the KV neuron only (default θ = 0.5 where the neuron has a threshold).
        weight_init: ``"trunc_normal"`` (SDT-C, default) or ``"he"``.
        Other arguments: see :func:`multispike.models.create_model`.

    Modules: ``stem`` (SPS's first conv+BN), ``encoder``, ``patch_embed`` (rest of SPS), ``blocks``, ``head_pool``,
    ``head_lif``, ``head``.

    Example::

        >>> import torch
        >>> from multispike.models import create_model
        >>> net = create_model("spike_driven_transformer_tiny", T=2)      # LIF neurons with SDT's parameters
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, *, depth: int = 2, embed_dim: int = 512, num_heads: int = 8, mlp_ratio: float = 4.0,
                 pooling_stat: str = "0011", kv_neuron_kwargs: dict[str, Any] | None = None, num_classes: int = 10,
                 T: int = 1, neuron: Any = "lif", neuron_kwargs: dict[str, Any] | None = None,
                 in_channels: int | None = None, input_size: int | tuple[int, ...] | None = None,
                 neuron_defaults: dict[str, dict[str, Any]] | None = None, event_frames: str = "sequence",
                 weight_init: str = "trunc_normal", default_input_size=(3, 32, 32)) -> None:
        owner = type(self).__name__
        size = resolve_input_size(input_size, in_channels, tuple(default_input_size), owner)
        super().__init__(num_classes=num_classes, T=T, input_size=size, neuron=neuron, neuron_kwargs=neuron_kwargs,
                         neuron_defaults=SDT if neuron_defaults is None else neuron_defaults,
                         event_frames=event_frames, owner=owner)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"{owner}: depth L must be an integer >= 1, got {depth!r}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 8 or embed_dim % 8:
            raise ValueError(f"{owner}: embed_dim D must be a positive multiple of 8 (SPS widths D/8, D/4, D/2), "
                             f"got {embed_dim!r}")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"{owner}: num_heads must divide embed_dim={embed_dim}, got {num_heads!r}")
        if not (isinstance(pooling_stat, str) and len(pooling_stat) == 4 and set(pooling_stat) <= {"0", "1"}):
            raise ValueError(f"{owner}: pooling_stat must be four '0'/'1' flags such as '0011' (CIFAR) or '1111' "
                             f"(ImageNet), got {pooling_stat!r}")
        if not (float(mlp_ratio) > 0):
            raise ValueError(f"{owner}: mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.depth, self.embed_dim, self.num_heads, self.pooling_stat = depth, embed_dim, num_heads, pooling_stat
        h, w = size[1:]
        for _ in range(pooling_stat.count("1")):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.token_grid = (h, w)
        self.stem = conv_bn(size[0], embed_dim // 8, 3)
        self.patch_embed = SpikingPatchSplitting(embed_dim, pooling_stat, self.make_neuron)
        self.blocks = nn.Sequential(*[SpikeDrivenBlock(embed_dim, num_heads, mlp_ratio, self.make_neuron,
                                                       kv_neuron_kwargs) for _ in range(depth)])
        self.head_pool = SeqToANNContainer(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head_lif = self.make_neuron()
        self.head = SeqToANNContainer(nn.Linear(embed_dim, num_classes))
        init_weights(self, weight_init)

    def forward_body(self, x_seq: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x_seq))
        return self.head(self.head_lif(self.head_pool(x)))


def _sdt(kw: dict[str, Any], owner: str, **model_args) -> SpikeDrivenTransformer:
    args = dict(model_args)
    args.update(kw)
    return build_model(SpikeDrivenTransformer, args, owner)


_SDT_NOTE = ("Default neuron 'lif' with SDT's parameters (tau=2 decay_input, hard reset 0, detach_reset, sigmoid "
             "alpha=4), KV neuron theta=0.5. Options: depth, embed_dim, num_heads, mlp_ratio, pooling_stat, "
             "kv_neuron_kwargs.")


@register_model(input_size=(3, 32, 32), test_input_size=(3, 16, 16), default_neuron="lif",
                source="SDT-C conf/cifar10/2_512_300E_t4.yml; algorithms.md §7.7 (M-LIF Transformer-2-512)",
                tags=("sdt", "mlif"),
                notes="Transformer-2-512 for CIFAR: L=2, D=512, 8 heads, pooling '0011' (64 tokens); the SDT recipe "
                      "uses T=4. " + _SDT_NOTE)
def spike_driven_transformer(**kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven transformer, CIFAR configuration Transformer-2-512 (L, D, heads, pooling configurable)."""
    return _sdt(kwargs, "spike_driven_transformer", depth=2, embed_dim=512, num_heads=8, pooling_stat="0011")


@register_model(input_size=(3, 224, 224), test_input_size=(3, 16, 16), default_neuron="lif",
                reference_num_classes=1000,
                source="SDT-C conf/imagenet/8_512_300E_t4.yml; algorithms.md §7.7 (M-LIF Transformer-8-512)",
                tags=("sdt", "mlif"),
                notes="Transformer-8-512 for ImageNet: L=8, D=512, 8 heads, pooling '1111' (224 -> 14x14 tokens); "
                      "use num_classes=1000. " + _SDT_NOTE)
def spike_driven_transformer_8_512(**kwargs: Any) -> SpikeDrivenTransformer:
    """Spike-driven transformer, ImageNet configuration Transformer-8-512."""
    kwargs.setdefault("default_input_size", (3, 224, 224))
    return _sdt(kwargs, "spike_driven_transformer_8_512", depth=8, embed_dim=512, num_heads=8, pooling_stat="1111")


@register_model(input_size=(3, 32, 32), test_input_size=(3, 16, 16), default_neuron="lif", cpu_scale=True,
                source="multispike CPU-scale variant of §7.7 (not from a paper)", tags=("sdt", "cpu"),
                notes="Transformer-1-64: L=1, D=64, 4 heads, pooling '0011' (64 tokens on CIFAR). " + _SDT_NOTE)
def spike_driven_transformer_tiny(**kwargs: Any) -> SpikeDrivenTransformer:
    """A one-block, 64-wide spike-driven transformer for CPU runs and tests."""
    return _sdt(kwargs, "spike_driven_transformer_tiny", depth=1, embed_dim=64, num_heads=4, pooling_stat="0011")
