"""airbench94_cifar: airbench94's network in the zoo (whitened stem, BN without scale, Dirac init, 1/9 logits),
exact QCFS -> LM-HT conversion, and the trainer's whitening hook on real CIFAR-10 images."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from multispike.data import TensorLoader
from multispike.metrics import prefix_accuracy
from multispike.models import create_model
from multispike.models.airbench import LogitScale, whitening_filters

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SMALL = (8, 8, 16, 16)


@pytest.fixture(scope="module")
def cifar(cifar10_splits):
    tr, te = cifar10_splits
    return tr.images[:600].clone(), te.images[:128].clone(), te.labels[:128].clone()


def _norm(u8):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (u8.float() / 255 - m) / s


def test_layout_shapes_and_airbench_details():
    torch.manual_seed(0)
    net = create_model("airbench94_cifar", num_classes=10, neuron="gelu")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 24, (2, 2)), (24, 64, (3, 3)), (64, 64, (3, 3)), (64, 256, (3, 3)), (256, 256, (3, 3)),
        (256, 256, (3, 3)), (256, 256, (3, 3))]
    assert all(c.bias is None for c in convs) and net.feature_shape == (256, 3, 3)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        assert not bn.weight.requires_grad and bn.bias.requires_grad and torch.all(bn.weight == 1)
        assert bn.momentum == 0.4 and bn.eps == 1e-12
    # Dirac init: the first in_channels filters of each 3x3 conv pass their input channel through unchanged
    for c in convs[1:]:
        x = torch.randn(2, c.in_channels, 5, 5)
        torch.testing.assert_close(c(x)[:, :c.in_channels], x)
    fc = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(fc) == 1 and fc[0].bias is None
    assert [m.scale for m in net.modules() if isinstance(m, LogitScale)] == [pytest.approx(1 / 9)]
    x = torch.randn(3, 3, 32, 32)
    net.eval()
    assert net(x).shape == (3, 10)
    with torch.no_grad():   # the head is GAP -> FC -> x 1/9
        feats = net.features(net.encode(x)).mean((-1, -2))[0]
        torch.testing.assert_close(net(x), fc[0](feats) / 9)
    # T = 2 with a spiking neuron: per-step logits
    snn = create_model("airbench94_cifar", num_classes=10, neuron="if", T=2, widths=SMALL)
    assert snn.forward_sequence(torch.randn(2, 3, 32, 32)).shape == (2, 2, 10)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="widths must be 4"):
        create_model("airbench94_cifar", widths=(8, 8, 16))
    with pytest.raises(ValueError, match="pool must be"):
        create_model("airbench94_cifar", pool="min")
    with pytest.raises(ValueError, match="too small"):
        create_model("airbench94_cifar", input_size=8)
    with pytest.raises(ValueError, match="unknown option"):
        create_model("airbench94_cifar", widht=(8, 8, 16, 16))
    odd = create_model("airbench94_cifar", widths=(7, 8, 16, 16))
    with pytest.raises(ValueError, match="even stem width"):
        odd.init_whitening(torch.randn(20, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        whitening_filters(torch.full((4, 3, 4, 4), float("nan")), 4)
    with pytest.raises(ValueError, match="more images"):
        whitening_filters(torch.randn(1, 3, 2, 2), 4)
    with pytest.raises(ValueError, match="count must be in"):
        whitening_filters(torch.randn(10, 3, 4, 4), 13)


def test_whitening_decorrelates_real_image_patches(cifar):
    images = _norm(cifar[0][:400])
    net = create_model("airbench94_cifar", num_classes=10, neuron="gelu")
    filters = net.init_whitening(images)
    stem = net.stem[0]
    assert not stem.weight.requires_grad
    torch.testing.assert_close(stem.weight[12:], -stem.weight[:12])           # filters and their negatives
    # the responses of the 12 eigen-filters on these images: uncorrelated, variance λ/(λ+eps)
    with torch.no_grad():
        r = nn.functional.conv2d(images.double(), filters.double()).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(r.T)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 2e-5       # float32 filters
    patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    lam = torch.linalg.eigvalsh(torch.cov(patches.T)).flip(0)
    torch.testing.assert_close(torch.diag(cov), lam / (lam + 5e-4), atol=2e-5, rtol=2e-5)
    assert torch.diag(cov)[:6].min() > 0.99      # the strong directions come out at unit variance


def test_qcfs_converts_to_lmht_with_identical_predictions(cifar):
    from multispike.convert.lmht import convert_qcfs_to_lmht
    xtr, xte, yte = cifar
    test = TensorLoader(xte, yte, 64, shuffle=False, mean=MEAN, std=STD)
    torch.manual_seed(1)
    ann = create_model("airbench94_cifar", num_classes=10, neuron="qcfs", widths=SMALL,
                       neuron_kwargs={"levels": 4, "threshold": 2.0})
    ann.init_whitening(_norm(xtr[:200]))
    with torch.no_grad():   # non-trivial BN statistics and biases
        for m in ann.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    ann.eval()
    snn = convert_qcfs_to_lmht(ann, levels=2, T=2, hybrid_bias_scale="exact").eval()
    a, s = prefix_accuracy(ann, test), prefix_accuracy(snn, test)
    with torch.no_grad():
        xb, _ = next(iter(test))
        agree = (ann(xb).argmax(-1) == snn(xb).argmax(-1)).float().mean().item()
    assert agree == 1.0 and abs(s["acc"] - a["acc"]) <= 1 / 128


def test_max_pool_variant_and_gelu_run_and_train_a_step():
    torch.manual_seed(2)
    net = create_model("airbench94_cifar", num_classes=10, neuron="gelu", pool="max", widths=SMALL)
    assert any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_qac_converts_to_a_mixed_timestep_snn_exactly(cifar):
    from multispike.convert.mixed_timestep import to_mixed_timestep_snn
    from multispike.quant.qac import QACQuantizer
    xtr, xte, _ = cifar
    torch.manual_seed(3)
    model = create_model("airbench94_cifar", num_classes=10, neuron="qac", widths=(24, 16, 32, 32))
    model.init_whitening(_norm(xtr[:300]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, q in enumerate(m for m in model.modules() if isinstance(m, QACQuantizer)):
            q.t.fill_((2.0, 5.0, 3.0, 4.0)[i % 4])        # a different T_l per layer
            q.clip.fill_(1.0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
    model = model.double().eval()
    x = _norm(xte[:8]).double()
    snn, report = to_mixed_timestep_snn(model, example_input=x)
    assert len(report.layers) == 7
    with torch.no_grad():
        torch.testing.assert_close(snn(x), model(x), atol=1e-10, rtol=0)


def test_fold_logit_scale_keeps_outputs_and_lets_nir_export_the_snn():
    from multispike.convert.lmht import convert_qcfs_to_if
    torch.manual_seed(0)
    ann = create_model("airbench94_cifar", num_classes=10, neuron="qcfs", neuron_kwargs={"levels": 2},
                       widths=(8, 8, 8, 8), input_size=16).eval()
    snn = convert_qcfs_to_if(ann, T=2).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        y = snn(x)
        snn.fold_logit_scale()
        torch.testing.assert_close(snn(x), y)
        snn.fold_logit_scale()                     # idempotent
        torch.testing.assert_close(snn(x), y)
    assert not any(isinstance(m, LogitScale) for m in snn.modules())
    pytest.importorskip("nir")
    from multispike.export import export_to_nir
    assert export_to_nir(snn, x[:1]) is not None


@pytest.mark.parametrize("neuron,pool", [("gelu", "max"), ("qcfs", "avg")])
def test_every_layer_is_counted_or_known_free(neuron, pool):
    """The op counter knows every module of the float (GELU, max pools) and the QCFS network: nothing is reported
    as unsupported, and the MACs are the conv and FC layers' (the logit scale folds into the FC)."""
    from multispike.metrics import count_ops

    torch.manual_seed(0)
    net = create_model("airbench94_cifar", num_classes=10, neuron=neuron, pool=pool, widths=SMALL).eval()
    result = count_ops(net, torch.randn(2, 3, 32, 32))
    assert result.unsupported == []
    # the synaptic layers' dense MACs per image, by hand from each layer's output size
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, y, n=n: outputs.__setitem__(n, (mod, y)))
             for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    by_hand = sum(y.numel() * (m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                               if isinstance(m, nn.Conv2d) else m.in_features) for m, y in outputs.values())
    counted = sum(r.dense_per_step for r in result.layers if r.op == "MAC")
    assert counted == by_hand


def test_bn_after_pool_is_airbench94s_order_with_the_same_parameters():
    """``bn_after_pool``: conv -> pool -> BN in one container (airbench94's order; BN's training statistics from the
    pooled map). Same parameters, and in eval mode the same function as the default order for a max pool, since BN's
    scale is fixed at 1 (a per-channel shift commutes with the max)."""
    torch.manual_seed(0)
    ours = create_model("airbench94_cifar", neuron="gelu", T=1, pool="max")
    theirs = create_model("airbench94_cifar", neuron="gelu", T=1, pool="max", bn_after_pool=True)
    block = theirs.features[1]
    assert [type(m) for m in block] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    # identical weights and (non-trivial) BN statistics, entry by entry in registration order: eval outputs agree
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    theirs.load_state_dict(dict(zip(theirs.state_dict().keys(), ours.state_dict().values())))
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    # training mode differs: BN's batch statistics come from a different map
    ours.train(), theirs.train()
    assert not torch.allclose(ours(x), theirs(x), atol=1e-3)


def test_head_pool_and_stem_bn_options_match_airbench94s_layers():
    """``head_pool="max"``: a global max pool before the classifier (airbench94's 3x3 max pool over the final 3x3
    map); ``stem_bn=False``: the whitened stem conv keeps a bias instead of a BN, and whitening still initialises it."""
    net = create_model("airbench94_cifar", neuron="gelu", pool="max", head_pool="max", stem_bn=False)
    assert isinstance(net.classifier[0][0], nn.AdaptiveMaxPool2d)
    assert len(net.stem) == 1 and net.stem[0].bias is not None
    assert torch.count_nonzero(net.stem[0].bias) == 0   # airbench94 starts conv biases at zero
    x = torch.randn(64, 3, 32, 32)
    net.init_whitening(x)
    assert not net.stem[0].weight.requires_grad and net.stem[0].bias.requires_grad
    assert net(x[:2]).shape == (2, 10)
    with pytest.raises(ValueError, match="head_pool"):
        create_model("airbench94_cifar", head_pool="sum")
    with pytest.raises(ValueError, match="stem_bn must be true or false, got 'no'"):
        create_model("airbench94_cifar", stem_bn="no")
