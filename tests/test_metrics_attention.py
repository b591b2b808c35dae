"""Explicit spike-role declarations for spike-driven attention in OpCounter (issue 18)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import multispike as ms
from multispike.layers import SeqToANNContainer
from multispike.metrics import OpCounter, count_ops, declared_spike_roles, register_attention, unregister_attention


class Mixer(nn.Module):
    """SDSA (Q ⊙ N(Σ_tokens K ⊙ V)) under names the old heuristic cannot see: neither the class name nor the
    neuron names look like attention."""

    def __init__(self, dim: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.a_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.b_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.c_conv = SeqToANNContainer(nn.Conv2d(dim, dim, 1, bias=False))
        self.first, self.second, self.third = (ms.IFNeuron(v_threshold=0.2, step_mode="m") for _ in range(3))
        self.gate = ms.IFNeuron(v_threshold=0.5, step_mode="m")
        self.out = SeqToANNContainer(nn.Conv2d(dim, dim, 1))
        for c in (self.a_conv, self.b_conv, self.c_conv):
            nn.init.uniform_(c[0].weight, 0.0, 0.5)

    def heads(self, x):
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads) \
            .permute(0, 1, 3, 2, 4)

    def neurons(self):
        return self.first, self.second, self.third, self.gate

    def forward(self, x):
        T, B, C, H, W = x.shape
        nq, nk, nv, nkv = self.neurons()
        q = self.heads(nq(self.a_conv(x)))
        k = self.heads(nk(self.b_conv(x)))
        v = self.heads(nv(self.c_conv(x)))
        kv = nkv((k * v).sum(dim=-2, keepdim=True))
        return self.out((q * kv).transpose(3, 4).reshape(T, B, C, H, W))


class DeclaredMixer(Mixer):
    spike_roles = {"q": "first", "k": "second", "v": "third", "kv": "gate"}


class LegacyAttention(Mixer):
    """Recognised only by the deprecated name heuristic (class name + q_lif/k_lif/v_lif/kv_lif)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_lif, self.k_lif, self.v_lif, self.kv_lif = self.first, self.second, self.third, self.gate
        del self.first, self.second, self.third, self.gate

    def neurons(self):
        return self.q_lif, self.k_lif, self.v_lif, self.kv_lif


def _count(block, x):
    seen = {}
    for n, m in block.named_children():
        if isinstance(m, ms.IFNeuron):
            m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, o.detach()))
    with torch.no_grad(), OpCounter(block) as oc:
        block(x)
    return oc.result(), seen


def _check_sdsa_row(res, q, k, v, kv, out_name):
    row = next(l for l in res.layers if l.kind == "attention")
    kvb = kv.reshape(2, 1, 4, 1, 1)
    assert k.sum() > 0 and kv.sum() > 0  # the example exercises both masks
    assert row.acs == (k * v).sum().item() and row.dense_per_step == 4 * 9
    assert row.extra["mask_ops"] == ((k != 0) & (v != 0)).sum().item() + ((q != 0) & (kvb != 0)).sum().item()
    out = next(l for l in res.layers if l.name == out_name)
    assert out.input_spiking and out.input_events == ((q != 0) & (kvb != 0)).sum().item()
    assert res.unsupported == []


def test_spike_roles_attribute_is_counted_without_warning():
    torch.manual_seed(3)
    block, x = DeclaredMixer(), torch.rand(2, 1, 4, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res, seen = _count(block, x)
    _check_sdsa_row(res, seen["first"], seen["second"], seen["third"], seen["gate"], "out.0")


def test_undeclared_block_is_not_guessed():
    torch.manual_seed(3)
    res, _ = _count(Mixer(), torch.rand(2, 1, 4, 3, 3))
    assert not any(l.kind == "attention" for l in res.layers)
    # Without the declaration the Q ⊙ KV product is not known to be a spike train.
    assert not next(l for l in res.layers if l.name == "out.0").input_spiking


def test_register_attention_for_a_class_one_cannot_edit():
    torch.manual_seed(3)
    block, x = Mixer(), torch.rand(2, 1, 4, 3, 3)
    register_attention(Mixer, q="first", k="second", v="third")
    try:
        # The registration covers subclasses and wins over their spike_roles attribute (which also names kv).
        assert declared_spike_roles(DeclaredMixer()) == {"q": "first", "k": "second", "v": "third"}
    finally:
        unregister_attention(Mixer)
    register_attention(Mixer, q="first", k="second", v="third", kv="gate")
    try:
        res, seen = _count(block, x)
    finally:
        unregister_attention(Mixer)
    _check_sdsa_row(res, seen["first"], seen["second"], seen["third"], seen["gate"], "out.0")
    assert declared_spike_roles(block) is None


def test_declaration_naming_no_neuron_is_reported():
    class Broken(DeclaredMixer):
        spike_roles = {"q": "first", "k": "second", "v": "a_conv"}

    res = count_ops(Broken(), torch.rand(2, 1, 4, 3, 3))
    (entry,) = [u for u in res.unsupported if u["name"] == ""]
    assert "v='a_conv'" in entry["reason"] and "not spiking neurons" in entry["reason"]


def test_legacy_name_heuristic_still_counts_but_warns():
    torch.manual_seed(3)
    block, x = LegacyAttention(), torch.rand(2, 1, 4, 3, 3)
    with pytest.warns(FutureWarning, match="spike_roles"):
        res, seen = _count(block, x)
    _check_sdsa_row(res, seen["q_lif"], seen["k_lif"], seen["v_lif"], seen["kv_lif"], "out.0")


def test_zoo_attention_declares_its_roles():
    from multispike import models
    from multispike.models.transformer import SpikeDrivenSelfAttention

    assert declared_spike_roles(SpikeDrivenSelfAttention.__new__(SpikeDrivenSelfAttention)) == {
        "q": "q_lif", "k": "k_lif", "v": "v_lif", "kv": "kv_lif"}
    net = models.create_model("spike_driven_transformer_tiny", num_classes=10, T=2,
                              neuron_kwargs={"v_threshold": 0.05}).eval()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        res = count_ops(net, torch.rand(2, 3, 32, 32) * 3)
    assert res.unsupported == [] and any(l.kind == "attention" for l in res.layers)


def test_ann_attention_is_listed_as_unsupported():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(6, 2)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    res = count_ops(Block(), torch.randn(4, 2, 6))
    assert [u["name"] for u in res.unsupported] == ["mha"] and "ANN attention" in res.unsupported[0]["reason"]


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(q="a", k="b", v=""), ValueError, "sub-module path"),
    (dict(q="a", k="b", v="c", kv=3), ValueError, "sub-module path"),
])
def test_bad_registrations_raise(kwargs, err, match):
    with pytest.raises(err, match=match):
        register_attention(Mixer, **kwargs)
    assert declared_spike_roles(Mixer()) is None


def test_bad_declarations_raise():
    class Unknown(Mixer):
        spike_roles = {"q": "first", "k": "second", "v": "third", "query": "first"}

    class Missing(Mixer):
        spike_roles = {"q": "first", "k": "second"}

    with pytest.raises(ValueError, match="unknown spike roles"):
        count_ops(Unknown(), torch.rand(2, 1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\['v'\] are required"):
        declared_spike_roles(Missing())
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_attention(int, q="a", k="b", v="c")
