"""Model zoo: registry API, exact layer lists (algorithms.md §7), reference MAC counts (§6.2), neuron defaults
per source, direct encoding, errors, and a torch.compile smoke test. The every-model x every-neuron sweep is in
tests/test_models_zoo.py."""
from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from multispike.layers import ResidualAdd, SeqToANNContainer
from multispike.models import TimeMajorModel, TimeSharedDropout, create_model, list_models, model_info
from multispike.models.resnet import BasicBlock, MSBlock
from multispike.neurons import LIFNeuron, Sigmoid, Triangle, set_step_mode
from multispike.neurons.base import MemoryModule
from multispike.neurons.registry import _REGISTRY, register_neuron
from multispike.quant import QCFS


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _modules(model: nn.Module, cls) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


def _neurons(model: nn.Module) -> list[nn.Module]:
    """Activation modules: ReLU, QCFS or a stateful neuron."""
    return [m for m in model.modules() if isinstance(m, (nn.ReLU, QCFS, MemoryModule))]


def _count_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(total, first layer) multiply-accumulates of conv/linear layers for one forward pass (forward hooks)."""
    counts: list[int] = []

    def hook(mod, inputs, out):
        if isinstance(mod, nn.Conv2d):
            counts.append(out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1])
        else:
            counts.append(out.numel() * mod.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return sum(counts), counts[0]


# ------------------------------------------------------------------------------------------------ registry
REQUIRED = ["vgg16_qcfs", "vgg16_diet", "vgg13", "resnet18", "resnet34", "resnet19", "ms_resnet18", "ms_resnet34",
            "resnet20_cifar", "resnet20_diet", "vggsnn", "vggsnn_woap", "spike_driven_transformer", "vgg_small"]


def test_registry_lists_the_zoo_and_never_a_bare_ambiguous_name():
    names = list_models()
    assert names == sorted(names)
    for name in REQUIRED:
        assert name in names
    assert "resnet20" not in names and "vgg16" not in names
    assert list_models("resnet20*") == ["resnet20_cifar", "resnet20_diet"]
    assert "ms_resnet18" not in list_models("resnet*")
    assert list_models(["vggsnn*"], exclude="*small") == ["vggsnn", "vggsnn_woap"]
    small = list_models(cpu_scale=True)
    assert "vgg_small" in small and "vgg16_qcfs" not in small
    assert set(small) | set(list_models(cpu_scale=False)) == set(names)


@pytest.mark.parametrize("name", list_models())
def test_model_info_is_complete_and_serialisable(name):
    info = model_info(name)
    assert info.name == name and len(info.input_size) == 3 and len(info.test_input_size) == 3
    assert info.input_layout in ("image", "events") and info.source and info.notes
    assert info.default_neuron in _REGISTRY
    json.dumps(info.to_dict())
    model = create_model(name, num_classes=3, input_size=info.test_input_size, neuron="relu")
    assert isinstance(model, TimeMajorModel) and model.time_major
    assert model.model_name == name and model.model_info is info
    assert model.create_kwargs["num_classes"] == 3 and model.create_kwargs["neuron"] == "relu"
    assert model.in_channels == info.input_size[0]


def test_unknown_model_lists_the_valid_names_and_explains_ambiguous_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet18x'.*Did you mean 'resnet18'.*vgg16_qcfs"):
        create_model("resnet18x")
    with pytest.raises(ValueError, match=r"resnet20_cifar.*16/32/64.*resnet20_diet"):
        create_model("resnet20")
    with pytest.raises(ValueError, match=r"vgg16_qcfs.*vgg16_diet"):
        model_info("vgg16")


def test_unknown_neuron_lists_the_registered_neurons():
    with pytest.raises(ValueError, match=r"unknown neuron 'lifx'.*Did you mean 'lif'.*Registered neurons: .*lmht"):
        create_model("vgg_small", neuron="lifx")
    with pytest.raises(TypeError, match="neuron must be"):
        create_model("vgg_small", neuron=3)


def test_registered_but_unimportable_neuron_is_a_clear_import_error():
    register_neuron("broken_neuron", "multispike.no_such_module", "Nope", spiking=True)
    try:
        with pytest.raises(ImportError, match=r"broken_neuron.*multispike.no_such_module.Nope.*cannot be imported"):
            create_model("vgg_small", neuron="broken_neuron")
    finally:
        del _REGISTRY["broken_neuron"]


def test_misspelt_options_name_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"\['v_treshold'\].*did you mean 'v_threshold'"):
        create_model("vgg_small", neuron="lif", neuron_kwargs={"v_treshold": 0.5})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dropuot'\].*did you mean 'dropout'"):
        create_model("vgg_small", dropuot=0.1)
    with pytest.raises(ValueError, match="kv_neuron_kwargs|site keywords"):
        create_model("spike_driven_transformer_tiny", kv_neuron_kwargs={"thresh": 0.5})


def test_bad_sizes_and_values_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="too small"):
        create_model("vgg16_qcfs", input_size=16)
    with pytest.raises(ValueError, match="T must be"):
        create_model("vgg_small", T=0)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("vgg_small", num_classes=0)
    with pytest.raises(ValueError, match="num_heads must divide"):
        create_model("spike_driven_transformer_tiny", num_heads=5)
    with pytest.raises(ValueError, match="pooling_stat"):
        create_model("spike_driven_transformer_tiny", pooling_stat="012")
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("spike_driven_transformer_tiny", embed_dim=60, num_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        create_model("vgg_small", dropout=1.0)
    with pytest.raises(ValueError, match="stem must be one of"):
        create_model("resnet18", stem="tiny")


def test_input_rank_and_channels_are_checked():
    net = create_model("vgg_small")
    with pytest.raises(ValueError, match=r"static input \[B, 3, 32, 32\] or event frames \[T, B, 3, 32, 32\]"):
        net(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="has 1 channels.*in_channels=3"):
        net(torch.zeros(2, 1, 32, 32))
    assert create_model("vgg_small", in_channels=1).stem[0].in_channels == 1
    assert create_model("vggsnn_small").in_channels == 2


# ------------------------------------------------------------------------------------------------ MAC counts (§6.2)
MAC_REFERENCES = [  # (name, kwargs, reference MACs at T = 1, first-layer MACs or None)
    ("vgg16_diet", {}, 338.4e6, 1.77e6),
    ("vgg16_qcfs", {}, 332.1e6, 1.77e6),
    ("vgg16_qcfs", dict(input_size=224, num_classes=1000), 15.47e9, None),
    ("resnet20_diet", {}, 215.7e6, None),
    ("resnet20_cifar", {}, 40.8e6, None),
    ("resnet18", {}, 555.4e6, None),
    ("resnet19", {}, 2216.5e6, None),
    ("vggsnn", {}, 1361.7e6, None),
    ("vggsnn_woap", {}, 660.9e6, None),
    ("airbench94_cifar", {}, 118.1e6, 0.28e6),   # by hand: 0.28 + 13.28 + 8.29 + 33.18 + 28.90 + 28.90 + 5.31 M
]


@pytest.mark.parametrize("name,kwargs,reference,first", MAC_REFERENCES,
                         ids=[f"{r[0]}-{r[2] / 1e6:.1f}M" for r in MAC_REFERENCES])
def test_mac_counts_match_the_reference_networks(name, kwargs, reference, first):
    info = model_info(name)
    with torch.device("meta"):  # shapes only: full-size inputs cost nothing
        net = create_model(name, **kwargs)
        x = torch.zeros(1, *net.input_size)
    total, first_layer = _count_macs(net, x)
    tolerance = 0.05e6 if reference < 1e9 else 0.005e9  # to the printed precision (0.1 M / 0.01 G)
    assert abs(total - reference) <= tolerance, f"{name}: {total / 1e6:.2f} M MACs, reference {reference / 1e6:.1f} M"
    if first is not None:
        assert abs(first_layer - first) <= 0.005e6
    if not kwargs and info.reference_macs is not None:
        assert info.reference_macs == reference


# ------------------------------------------------------------------------------------------------ layer lists (§7)
def _convs(net):
    return _modules(net, nn.Conv2d)


def _linears(net):
    return [(m.in_features, m.out_features, m.bias is not None) for m in _modules(net, nn.Linear)]


def test_vgg16_qcfs_layer_list():
    net = create_model("vgg16_qcfs", neuron="qcfs")
    convs = _convs(net)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.bias is not None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert len(_modules(net, nn.BatchNorm2d)) == 13 and len(_modules(net, nn.AvgPool2d)) == 5
    assert _linears(net) == [(512, 4096, True), (4096, 4096, True), (4096, 10, True)]
    assert len(_neurons(net)) == 15 and len(_modules(net, nn.Dropout)) == 15
    assert len(_modules(create_model("vgg16_qcfs", pool="max"), nn.MaxPool2d)) == 5
    with torch.device("meta"):
        assert _linears(create_model("vgg16_qcfs", input_size=224, num_classes=1000))[0] == (512 * 7 * 7, 4096, True)


def test_vgg16_diet_layer_list():
    net = create_model("vgg16_diet", dropout=0.2)
    convs = _convs(net)
    assert len(convs) == 13 and all(c.bias is None for c in convs)
    assert len(_modules(net, nn.AvgPool2d)) == 4 and net.feature_shape == (512, 2, 2)
    assert _linears(net) == [(2048, 4096, False), (4096, 4096, False), (4096, 10, False)]
    # dropout after every conv not followed by a pool (13 - 4) and after both hidden FCs, one mask for all steps
    drops = _modules(net, TimeSharedDropout)
    assert len(drops) == 11 and all(d.p == 0.2 for d in drops)
    names = [type(m).__name__ for m in net.features]
    for i, n in enumerate(names):
        if n == "SeqToANNContainer" and isinstance(net.features[i][0], nn.AvgPool2d):
            assert names[i - 1] == "ReLU", "a pool replaces the dropout before it"


def test_dropout_rate_and_mode_do_not_change_state_dict_keys():
    keys = set(create_model("vgg16_diet").state_dict())
    assert set(create_model("vgg16_diet", dropout=0.2, dropout_mode="independent").state_dict()) == keys
    diet_keys = set(create_model("resnet20_diet").state_dict())
    assert set(create_model("resnet20_diet", dropout=0.2).state_dict()) == diet_keys


def test_vgg13_layer_list():
    net = create_model("vgg13", num_classes=200, neuron="lif", T=2)
    convs = _convs(net)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.bias is not None for c in convs) and len(_modules(net, nn.AvgPool2d)) == 4
    assert len(_modules(net, nn.AdaptiveAvgPool2d)) == 1 and _linears(net) == [(512, 200, True)]
    assert len(_neurons(net)) == 10 and len(_modules(net, nn.Dropout)) == 10
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_resnet18_and_34_layer_lists():
    r18 = create_model("resnet18")
    blocks = _modules(r18, BasicBlock)
    assert len(blocks) == 8 and len(_modules(r18, ResidualAdd)) == 8
    shortcuts = [b.downsample[0] for b in blocks if b.downsample is not None]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in shortcuts] == [
        (64, 128, (1, 1), (2, 2)), (128, 256, (1, 1), (2, 2)), (256, 512, (1, 1), (2, 2))]
    assert len(_neurons(r18)) == 17 and _linears(r18) == [(512, 10, True)]
    assert all(c.bias is None for c in _convs(r18))
    assert r18.stem[0].kernel_size == (3, 3) and not _modules(r18, nn.MaxPool2d)
    assert len(_modules(create_model("resnet34"), BasicBlock)) == 16
    img = create_model("resnet34", stem="imagenet", input_size=224, num_classes=1000)
    assert img.stem[0].kernel_size == (7, 7) and img.stem[0].stride == (2, 2)
    assert isinstance(img.pre[1][0], nn.MaxPool2d) and img.feature_shape == (512, 7, 7)
    assert isinstance(create_model("resnet18", stem="imagenet", stem_pool="avg").pre[1][0], nn.AvgPool2d)


def test_ms_resnet_uses_membrane_shortcuts():
    net = create_model("ms_resnet18", neuron="lif", T=2)
    assert len(_modules(net, MSBlock)) == 8 and not _modules(net, BasicBlock)
    assert len(net.pre) == 0, "the stem output is not spiked before the first block"
    assert not _neurons(net.head), "the head pools the last block's membrane-like sum"
    assert len(_neurons(net)) == 16 and len(_modules(net, ResidualAdd)) == 8
    block = net.stages[0][0]
    assert list(block._modules)[:2] == ["sn1", "conv1"], "pre-activation: neuron before conv"
    assert len(_modules(create_model("ms_resnet34"), MSBlock)) == 16


def test_resnet19_layer_list():
    net = create_model("resnet19", num_classes=100)
    assert [len(s) for s in net.stages] == [3, 3, 2]
    first = net.stages[0][0].downsample[0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (64, 128, (1, 1), (1, 1))
    assert net.stem[0].out_channels == 64 and net.feature_shape == (512, 8, 8)
    assert _linears(net) == [(512, 256, True), (256, 100, True)]
    assert isinstance(net.head[2], nn.ReLU), "FC(512->256) -> N -> FCn"


def test_resnet20_variants_are_different_networks():
    cifar = create_model("resnet20_cifar")
    assert cifar.stem[0].out_channels == 16 and [len(s) for s in cifar.stages] == [3, 3, 3]
    assert [s[0].conv1[0].out_channels for s in cifar.stages] == [16, 32, 64] and _linears(cifar) == [(64, 10, True)]
    diet = create_model("resnet20_diet", dropout=0.2)
    assert [len(s) for s in diet.stages] == [2, 2, 2, 2]
    assert [s[0].conv1[0].out_channels for s in diet.stages] == [64, 128, 256, 512]
    assert not _modules(diet, nn.AdaptiveAvgPool2d) and _linears(diet) == [(2048, 10, False)]
    pre = [type(m).__name__ for m in diet.pre]
    assert pre == ["ReLU", "TimeSharedDropout", "SeqToANNContainer", "ReLU", "TimeSharedDropout",
                   "SeqToANNContainer", "ReLU", "SeqToANNContainer"]
    assert isinstance(diet.pre[-1][0], nn.AvgPool2d)
    assert all(b.dropout is not None for b in _modules(diet, BasicBlock))
    assert all(c.bias is None for c in _convs(diet))


def test_vggsnn_layer_lists():
    ap = create_model("vggsnn", neuron="lif", T=2)
    assert [c.out_channels for c in _convs(ap)] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.stride == (1, 1) and c.bias is not None for c in _convs(ap)) and ap.stem[0].in_channels == 2
    assert len(_modules(ap, nn.AvgPool2d)) == 4 and _linears(ap) == [(4608, 10, True)]
    assert not _modules(ap, nn.Dropout) and not _modules(ap, TimeSharedDropout)
    woap = create_model("vggsnn_woap")
    assert [c.stride[0] for c in _convs(woap)] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert not _modules(woap, nn.AvgPool2d) and _linears(woap) == [(4608, 10, True)]
    assert woap.feature_shape == (512, 3, 3)


def test_spike_driven_transformer_structure_and_sdt_neurons():
    net = create_model("spike_driven_transformer", T=2)
    assert net.neuron_name == "lif" and net.token_grid == (8, 8) and len(net.blocks) == 2
    assert net.stem[0].out_channels == 64 and net.stem[0].bias is None
    sps = net.patch_embed
    assert (sps.pool0, sps.pool1) == (None, None) and sps.pool2 is not None and sps.pool3 is not None
    assert [c[0].out_channels for c in (sps.conv1, sps.conv2, sps.conv3, sps.rpe_conv)] == [128, 256, 512, 512]
    attn = net.blocks[0].attn
    assert attn.q_conv[0].bias is None and attn.proj_conv[0].bias is not None
    assert net.blocks[0].mlp.fc1_conv[0].out_channels == 2048 and net.blocks[0].mlp.fc1_conv[0].bias is not None
    lifs = _modules(net, LIFNeuron)
    # SPS 4 + per block (shortcut, q, k, v, kv, fc1, fc2) + head
    assert len(lifs) == 4 + 2 * 7 + 1
    for n in lifs:
        assert n.leak_mode == "decay_input" and float(n.leak_param) == 2.0 and n.v_reset == 0.0 and n.detach_reset
        assert isinstance(n.surrogate_function, Sigmoid) and n.surrogate_function.alpha == 4.0
        assert float(n.v_threshold) == (0.5 if n is attn.kv_lif or n is net.blocks[1].attn.kv_lif else 1.0)
    assert len({id(n.surrogate_function) for n in lifs}) == len(lifs), "each neuron owns its surrogate"
    imagenet = create_model("spike_driven_transformer_8_512", num_classes=1000)
    assert len(imagenet.blocks) == 8 and imagenet.pooling_stat == "1111" and imagenet.token_grid == (14, 14)
    assert sum(p.numel() for p in imagenet.parameters()) == pytest.approx(29.68e6, abs=0.02e6)  # SDT paper: 29.68 M


def test_sdt_attention_matches_the_reference_formula():
    """SDSA with identity neurons: proj(Q ⊙ Σ_tokens(K ⊙ V)) per head, computed independently here."""
    net = create_model("spike_driven_transformer_tiny", neuron="relu", T=1).eval()
    attn = net.blocks[0].attn
    for name in ("shortcut_lif", "q_lif", "k_lif", "v_lif", "kv_lif"):
        setattr(attn, name, nn.Identity())
    x = torch.randn(1, 2, 64, 4, 4)
    with torch.no_grad():
        out = attn(x)
        flat = lambda conv: conv(x).flatten(3)  # noqa: E731  [T, B, C, N]
        q, k, v = flat(attn.q_conv), flat(attn.k_conv), flat(attn.v_conv)
        h, d = 4, 16
        kv = (k * v).view(1, 2, h, d, 16).sum(-1, keepdim=True)            # per head and channel, over tokens
        a = (q.view(1, 2, h, d, 16) * kv).reshape(1, 2, 64, 4, 4)
        assert_close(out, attn.proj_conv(a), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ neurons
def test_source_neuron_defaults_and_their_precedence():
    tet = _modules(create_model("vggsnn", neuron="lif"), LIFNeuron)
    for n in tet:  # TET LIFSpike: m = 0.5·v + I, θ = 1, hard reset, '>' firing, triangle γ = 1
        assert n.leak_mode == "post_reset" and float(n.leak_param) == 0.5 and n.v_reset == 0.0 and not n.fire_ge
        assert isinstance(n.surrogate_function, Triangle) and n.surrogate_function.form == "tet"
        assert n.surrogate_function.gamma == 1.0
    diet = _modules(create_model("vgg16_diet", neuron="lif"), LIFNeuron)
    for n in diet:  # DIET paper form: learnable θ and β, reset applied next step, triangle γ = 0.3 on u/θ − 1
        assert n.leak_mode == "post_reset" and not n.reset_leak and n.v_reset is None and not n.fire_ge
        assert isinstance(n.v_threshold, nn.Parameter) and isinstance(n.leak_param, nn.Parameter)
        assert float(n.leak_param.detach()) == 1.0 and n.surrogate_form == "normalized"
        assert n.surrogate_function.form == "diet" and n.surrogate_function.gamma == 0.3
    plain = _modules(create_model("vgg_small", neuron="lif"), LIFNeuron)
    assert all(n.leak_mode == LIFNeuron().leak_mode for n in plain), "no source defaults for the CPU variant"
    # user keywords override the source defaults; a per-site keyword overrides the architecture's θ = 0.5
    tet2 = _modules(create_model("vggsnn", neuron="lif", neuron_kwargs={"decay": 0.25}), LIFNeuron)
    assert all(float(n.leak_param) == 0.25 and n.v_reset == 0.0 for n in tet2)
    sdt = create_model("spike_driven_transformer_tiny", neuron_kwargs={"v_threshold": 2.0},
                       kv_neuron_kwargs={"v_threshold": 0.25})
    assert float(sdt.blocks[0].attn.kv_lif.v_threshold) == 0.25 and float(sdt.head_lif.v_threshold) == 2.0
    sdt2 = create_model("spike_driven_transformer_tiny", neuron_kwargs={"v_threshold": 2.0})
    assert float(sdt2.blocks[0].attn.kv_lif.v_threshold) == 0.5, "the architecture's KV threshold wins over globals"


def test_neuron_given_as_class_or_partial_gets_the_source_defaults():
    by_class = _modules(create_model("vggsnn_small", neuron=LIFNeuron), LIFNeuron)
    assert by_class and all(float(n.leak_param) == 0.5 and n.v_reset == 0.0 for n in by_class)
    by_partial = _modules(create_model("vggsnn_small", neuron=functools.partial(LIFNeuron, decay=0.75)), LIFNeuron)
    assert all(float(n.leak_param) == 0.75 for n in by_partial), "the partial's bound keywords win"
    assert all(n.step_mode == "m" for n in by_partial)


def test_every_activation_is_its_own_module_instance():
    net = create_model("resnet8_cifar", neuron="if", T=2)
    neurons = _neurons(net)
    assert len(neurons) == len({id(n) for n in neurons}) == 1 + 3 * 2
    assert all(n.step_mode == "m" for n in neurons)


def test_mlif_gets_the_dvs_and_transformer_settings():
    from multispike.neurons.mlif import OneHotMLIF
    dvs = _modules(create_model("vggsnn_small", neuron="mlif"), OneHotMLIF)
    assert dvs and all(n.reset_mode == "hard" and float(n.leak) == 0.5 and not isinstance(n.leak, nn.Parameter)
                       for n in dvs)
    sdt = _modules(create_model("spike_driven_transformer_tiny", neuron="mlif"), OneHotMLIF)
    assert sdt and all(n.scaled and n.reset_mode == "hard" and n.detach_reset for n in sdt)
    assert all(getattr(n, "decay_input", True) and float(n.leak) == 0.5 for n in sdt), "SpikingJelly charge, τ = 2"
    static = _modules(create_model("vgg16_diet", neuron="mlif", neuron_kwargs={"lanes": 3}), OneHotMLIF)
    assert all(n.reset_mode == "soft" and isinstance(n.v_threshold, nn.Parameter) for n in static)


# ------------------------------------------------------------------------------------------------ execution
def test_stem_once_equals_repeating_the_image():
    """Direct encoding computes the stem once (LM-HT §2.5); the result equals repeating the image T times."""
    torch.manual_seed(0)
    net = create_model("resnet8_cifar", neuron="lif", T=3).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y_static = net.forward_sequence(x)
        y_events = net.forward_sequence(x.unsqueeze(0).expand(3, *x.shape))
    assert y_static.shape == (3, 2, 10)
    assert_close(y_static, y_events, atol=1e-12, rtol=1e-12)


def test_event_frames_mean_mode_encodes_the_average_frame():
    torch.manual_seed(0)
    net = create_model("vggsnn_small", neuron="lif", T=2, event_frames="mean").double().eval()
    frames = torch.rand(5, 2, 2, 34, 34, dtype=torch.float64)
    with torch.no_grad():
        y = net.forward_sequence(frames)
        assert y.shape == (2, 2, 10), "five frames are averaged into one image, then encoded over T = 2"
        assert_close(y, net.forward_sequence(frames.mean(0)), atol=0, rtol=0)
    seq = create_model("vggsnn_small", neuron="lif", T=2)
    assert seq.forward_sequence(frames.float()).shape == (5, 2, 10), "event frames are used as they are"


def test_ann_is_the_same_function_at_any_T():
    torch.manual_seed(0)
    net = create_model("vgg_small", neuron="qcfs", T=1).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        y1 = net(x)
        net.set_timesteps(3)
        y3 = net.forward_sequence(x)
    assert net.encoder.T == 3 and y3.shape == (3, 2, 10)
    for t in range(3):
        assert_close(y3[t], y1, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="T must be"):
        net.set_timesteps(0)


def test_auto_reset_and_streaming_state():
    torch.manual_seed(0)
    net = create_model("vgg_small", neuron="if", T=4).eval()
    x = torch.randn(2, 3, 32, 32)
    first_neuron = net.features[0]
    with torch.no_grad():
        first = net(x)
        v_first = first_neuron.v.clone()
        assert_close(net(x), first, atol=0, rtol=0)  # auto_reset (default): every call starts from v(0)
        assert_close(first_neuron.v, v_first, atol=0, rtol=0)
        net.auto_reset = False
        net(x)  # the membranes continue from the previous call
        assert not torch.equal(first_neuron.v, v_first)
        net.reset()
        assert first_neuron.v is None
        assert_close(net(x), first, atol=0, rtol=0)
        assert_close(first_neuron.v, v_first, atol=0, rtol=0)


def test_time_shared_dropout_reuses_one_mask_over_time():
    torch.manual_seed(0)
    drop = TimeSharedDropout(0.5)
    x = torch.ones(4, 3, 50)
    y = drop(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0} and 0 < float((y == 0).float().mean()) < 1
    for t in range(1, 4):
        assert torch.equal(y[t], y[0]), "one mask per sample for every timestep"
    assert not torch.equal(y[:, 0], y[:, 1]), "different samples get different masks"
    drop.step_mode = "s"
    a = drop(torch.ones(1, 3, 50))
    assert torch.equal(drop(torch.ones(1, 3, 50)), a), "single-step mode keeps the mask until reset()"
    drop.reset()
    assert drop.mask is None
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TimeSharedDropout(1.0)


def test_he_initialisation():
    torch.manual_seed(0)
    net = create_model("vgg16_diet").requires_grad_(False)
    conv = _convs(net)[-1]  # 512 -> 512, 3x3: fan_out = 4608
    assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / 4608), rel=0.02)
    fc = _modules(net, nn.Linear)[1]  # 4096 -> 4096: fan_in = 4096
    assert float(fc.weight.std()) == pytest.approx(math.sqrt(2 / 4096), rel=0.02)
    bn = _modules(net, nn.BatchNorm2d)[0]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    sdt_conv = create_model("spike_driven_transformer").blocks[0].mlp.fc1_conv[0].weight.detach()
    assert float(sdt_conv.abs().max()) <= 0.04 and float(sdt_conv.std()) == pytest.approx(0.02 * 0.8796, rel=0.02)


def test_zoo_models_convert_by_module_replacement():
    from multispike.convert.converter import convert_to_snn
    from multispike.neurons import IFNeuron
    from multispike.quant import QCFS

    torch.manual_seed(0)
    ann = create_model("resnet8_cifar", neuron="qcfs", neuron_kwargs={"levels": 4, "threshold": 2.0})
    ann.train()
    with torch.no_grad():
        ann(torch.randn(8, 3, 8, 8))  # non-trivial BN statistics
    snn, report = convert_to_snn(ann, T=4)
    assert not _modules(snn, QCFS) and len(_modules(snn, IFNeuron)) == 7
    assert len(report.by_action("folded")) == len(_modules(ann, nn.BatchNorm2d))
    assert snn.T == 4 and snn.encoder.T == 4
    assert snn(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_single_step_mode_runs_the_network_one_step_at_a_time():
    net = create_model("spike_driven_transformer_tiny", T=3).eval()
    x = torch.randn(1, 3, 16, 16)
    calls = []
    net.blocks[0].attn.kv_lif.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    set_step_mode(net, "s")
    with torch.no_grad():
        assert net.forward_sequence(x).shape == (3, 1, 10)
    assert calls == [(1, 1, 4, 1, 16)] * 3


def test_refused_single_step_mode_leaves_the_model_unchanged():
    net = create_model("vgg_small", neuron="lmht", T=2)
    with pytest.raises(ValueError, match=r"step_mode='s' is impossible.*features.0.*LMHTNeuron"):
        set_step_mode(net, "s")
    assert net.step_mode == "m" and all(getattr(m, "step_mode", "m") == "m" for m in net.modules())
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_torch_compile_smoke():
    """torch.compile traces a whole spiking model in one graph (aot_eager: no C++ build, a few seconds)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = create_model("vgg_small", neuron="lif", T=2)
    x = torch.randn(2, 3, 32, 32)
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    assert_close(y, expected, atol=1e-6, rtol=1e-6)
    y.sum().backward()
    assert net.stem[0].weight.grad is not None and bool(torch.isfinite(net.stem[0].weight.grad).all())
    assert isinstance(net.features[0], LIFNeuron) and isinstance(net.stem, SeqToANNContainer)
