"""BN recompute (multispike.recompute, SeqToANNContainer.recompute_bn): the neuron after ``conv -> BN`` rebuilds
its input in the backward instead of saving it.

* the rebuild is bit-identical to the forward's output, and with the rebuild on the whole network's gradients are
  bit-identical to the same BN saving its output (the neuron sees exactly the forward's input);
* the BN itself matches ``nn.BatchNorm`` (output, gradients of input/weight/bias against autograd in float64,
  running statistics with momentum and cumulative averaging);
* the neuron really keeps no copy of the BN output; anything unusual (modified in place, eval, autocast, a BN
  that is not last, SyncBatchNorm, outer saved-tensor hooks) falls back to saving it.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import multispike.kernels._fused as fused
from multispike.kernels import _build
from multispike.layers import SeqToANNContainer, set_recompute_bn, set_spike_storage
from multispike.models import create_model
from multispike.neurons import IFNeuron, LIFNeuron
from multispike.recompute import (AddRecipe, BNRecipe, attach_recipe, batch_norm_with_recipe, can_recompute_bn,
                                  recipe_of)

needs_cpp = pytest.mark.skipif(_build.load_library() is None, reason="the C++ kernels are not built here")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64}[t.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_matches_torch_batchnorm_and_rebuilds_bit_for_bit(dtype, affine, momentum):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, affine=affine, momentum=momentum).to(dtype)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    ours = copy.deepcopy(ref)
    for _ in range(2):   # two steps: cumulative averaging (momentum None) needs num_batches_tracked right
        h = (torch.randn(6, 5, 4, 3, dtype=dtype) * 2 + 1).requires_grad_()
        h_ref = h.detach().clone().requires_grad_()
        assert can_recompute_bn(ours, h)
        y, recipe = batch_norm_with_recipe(ours, h)
        y_ref = ref(h_ref)
        attach_recipe(y, recipe)
        assert torch.equal(_bits(recipe.rebuilder()(recipe.tensors())), _bits(y.detach()))
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(y, y_ref, **tol)
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(h.grad, h_ref.grad, **tol)
        if affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, ref.running_var, **tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)


@pytest.mark.parametrize("bn_cls, shape", [(nn.BatchNorm1d, (6, 5)), (nn.BatchNorm1d, (6, 5, 4)),
                                           (nn.BatchNorm3d, (2, 5, 3, 2, 2))])
def test_bn_matches_torch_batchnorm_in_1d_and_3d(bn_cls, shape):
    torch.manual_seed(0)
    ref = bn_cls(5)
    ours = copy.deepcopy(ref)
    h = torch.randn(*shape, requires_grad=True)
    h_ref = h.detach().clone().requires_grad_()
    y, recipe = batch_norm_with_recipe(ours, h)
    y_ref = ref(h_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    attach_recipe(y, recipe)
    assert torch.equal(_bits(recipe.rebuilder()(recipe.tensors())), _bits(y.detach()))
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


def test_bn_gradient_equals_autograd_through_plain_ops():
    """The statistics are functions of h: native_batch_norm_backward's training formula must include that."""
    from multispike.recompute import _BatchNormFunction

    torch.manual_seed(1)
    eps = 1e-5
    h = torch.randn(7, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    var, mean = torch.var_mean(h.detach(), dim=[0, 2], correction=0)
    ours = _BatchNormFunction.apply(h, w, b, mean, torch.rsqrt(var + eps), eps)
    var_k, mean_k = torch.var_mean(h, dim=[0, 2], correction=0, keepdim=True)
    plain = (h - mean_k) / torch.sqrt(var_k + eps) * w.view(1, 3, 1) + b.view(1, 3, 1)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    gy = torch.randn(7, 3, 2, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, (h, w, b), gy), torch.autograd.grad(plain, (h, w, b), gy)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def _spy_on_recipes(monkeypatch) -> list[bool]:
    """Record, per fused-kernel call with autograd, whether a BN recipe replaced the saved input."""
    used: list[bool] = []

    def spy(t):
        r = recipe_of(t)
        used.append(r is not None)
        return r

    monkeypatch.setattr(fused, "recipe_of", spy)
    return used


def _step(net, x, y):
    out = net(x)
    nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@needs_cpp
@pytest.mark.parametrize("model_name, neuron, T, storage, channels_last", [
    ("resnet20_cifar", "if", 4, "float", False),
    ("resnet20_cifar", "lif", 2, "bytes", True),
    ("ms_resnet18", "if", 2, "float", False),                    # sums feeding sums: no chained rebuild
    ("spike_driven_transformer_tiny", "lif", 2, "bytes", False),
    ("airbench_cifar", "if", 2, "bytes", False),
    ("vgg_small", "lif", 3, "float", True),
])
def test_network_gradients_bit_identical_with_and_without_the_rebuild(model_name, neuron, T, storage,
                                                                      channels_last, monkeypatch):
    torch.manual_seed(0)
    extra = {"input_size": [16, 16]} if model_name == "vgg_small" else {}
    net = create_model(model_name, neuron=neuron, T=T, neuron_kwargs={"backend": "cpp"}, **extra)
    set_spike_storage(net, storage)
    set_recompute_bn(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    saving = copy.deepcopy(net)
    x = torch.randn(3, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (3,))
    used = _spy_on_recipes(monkeypatch)
    out_a, grads_a = _step(net, x, y)
    assert any(used)
    monkeypatch.setattr(fused, "recipe_of", lambda t: None)   # same BN, the neuron saves its input
    out_b, grads_b = _step(saving, x, y)
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.equal(_bits(grads_a[k]), _bits(grads_b[k])), k


@needs_cpp
def test_network_matches_torch_batchnorm_closely():
    torch.manual_seed(0)
    net = create_model("resnet20_cifar", neuron="if", T=2, neuron_kwargs={"backend": "cpp"})
    plain = copy.deepcopy(net)
    set_recompute_bn(net)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    out_a, grads_a = _step(net, x, y)
    out_b, grads_b = _step(plain, x, y)
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-4)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-3, atol=1e-5)
    for (k, a), (_, b) in zip(net.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def _neuron_saved(out: torch.Tensor) -> list[torch.Tensor]:
    node = out.grad_fn
    while type(node).__name__ != "FusedSequenceBackward":
        node = node.next_functions[0][0]
    return [t for t in node.saved_tensors if t is not None]


@needs_cpp
@pytest.mark.parametrize("neuron_cls", [IFNeuron, LIFNeuron])
def test_the_neuron_keeps_no_copy_of_the_bn_output(neuron_cls):
    torch.manual_seed(0)
    body = SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
    neuron = neuron_cls(step_mode="m", backend="cpp")
    x = torch.randn(3, 2, 2, 5, 5)
    for recompute in (False, True):
        body.recompute_bn = recompute
        h = body(x)
        assert (recipe_of(h) is not None) == recompute
        s = neuron(h)
        ptrs = {t.untyped_storage().data_ptr() for t in _neuron_saved(s)}
        assert (h.untyped_storage().data_ptr() in ptrs) == (not recompute)
        s.sum().backward()
        neuron.reset()


def _bn_out(channels=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    body = SeqToANNContainer(nn.Conv2d(2, channels, 3, padding=1), nn.BatchNorm2d(channels)).to(dtype)
    body.recompute_bn = True
    return body, body(torch.randn(3, 2, 2, 5, 5, dtype=dtype))


@pytest.mark.parametrize("kind", ["tensor", "uint8", "bn"])
def test_a_residual_sum_rebuilds_bit_for_bit(kind):
    from multispike.layers import ResidualAdd
    from multispike.recompute import packed_copy_of

    _, x = _bn_out()
    if kind == "bn":
        _, shortcut = _bn_out(seed=1)
    else:
        spikes = (torch.rand(3, 2, 4, 5, 5) < 0.3).float().requires_grad_()
        storing = SeqToANNContainer(nn.Conv2d(4, 2, 1))
        set_spike_storage(storing, "bytes" if kind == "uint8" else "float")
        storing(spikes)                                  # the block's first conv sees the shortcut first
        shortcut = spikes
        assert (packed_copy_of(spikes) is not None) == (kind == "uint8")
    out = ResidualAdd()(x, shortcut)
    recipe = recipe_of(out)
    assert isinstance(recipe, AddRecipe)
    saved = recipe.tensors()
    if kind == "uint8":
        assert saved[-1].dtype == torch.uint8 and saved[-1].shape == out.shape
    elif kind == "tensor":
        assert saved[-1] is shortcut
    else:
        assert all(t is not shortcut for t in saved)     # through its BN recipe, not the BN output itself
    assert torch.equal(_bits(recipe.rebuilder()(saved)), _bits(out.detach()))


def test_no_residual_recipe_where_it_does_not_apply():
    from multispike.layers import ResidualAdd

    _, x = _bn_out()
    add = ResidualAdd()
    assert recipe_of(add(x, torch.ones(2, 2, 4, 5, 5))) is None     # different T: the aligned copy is new anyway
    assert recipe_of(add(x, torch.ones(1, 1, 4, 5, 5).expand(3, 2, 4, 5, 5))) is not None
    assert recipe_of(add(x, torch.ones(3, 2, 4, 1, 1))) is None      # broadcast shortcut
    assert recipe_of(add(x.detach(), torch.ones_like(x))) is None      # no autograd
    plain = SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
    assert recipe_of(add(plain(torch.randn(3, 2, 2, 5, 5)), torch.ones_like(x))) is None   # no recompute_bn
    chained = add(x, torch.ones_like(x))
    _, x2 = _bn_out(seed=2)
    again = recipe_of(add(x2, chained))
    assert isinstance(again, AddRecipe) and again.shortcut is chained   # never a chain of sums
    with torch.no_grad():
        assert recipe_of(add(x, torch.ones_like(x))) is None


@needs_cpp
@pytest.mark.parametrize("storage", ["float", "bytes"])
def test_every_resnet_neuron_rebuilds_its_input(storage, monkeypatch):
    """resnet20: each block's first neuron rebuilds a BN output, each block's second neuron the
    residual sum (identity blocks: the spikes, or their uint8 copy; downsampling blocks: a second BN)."""
    torch.manual_seed(0)
    net = create_model("resnet20_cifar", neuron="if", T=2, neuron_kwargs={"backend": "cpp"})
    set_spike_storage(net, storage)
    set_recompute_bn(net)
    kinds = []

    def spy(t):
        r = recipe_of(t)
        if isinstance(r, AddRecipe):
            s = r.shortcut
            kinds.append("add+bn" if isinstance(s, BNRecipe) else "add+uint8" if s.dtype == torch.uint8
                         else "add+float")
        else:
            kinds.append(type(r).__name__)
        return r

    monkeypatch.setattr(fused, "recipe_of", spy)
    _step(net, torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,)))
    identity = "add+uint8" if storage == "bytes" else "add+float"
    # the stem runs once on the static image and reaches its neuron expanded over T: saving it costs 1/T already
    assert sorted(kinds) == sorted(["NoneType"] + ["BNRecipe"] * 9 + ["add+bn"] * 2 + [identity] * 7)


@needs_cpp
def test_the_neuron_after_a_residual_sum_keeps_no_copy_of_it():
    from multispike.layers import ResidualAdd

    body, _ = _bn_out()
    neuron = IFNeuron(step_mode="m", backend="cpp")
    shortcut = (torch.rand(3, 2, 4, 5, 5) < 0.5).float()
    for recompute in (False, True):
        body.recompute_bn = recompute
        out = ResidualAdd()(body(torch.randn(3, 2, 2, 5, 5)), shortcut)
        s = neuron(out)
        ptrs = {t.untyped_storage().data_ptr() for t in _neuron_saved(s)}
        assert (out.untyped_storage().data_ptr() in ptrs) == (not recompute)
        s.sum().backward()
        neuron.reset()


@needs_cpp
def test_in_place_change_falls_back_to_saving_and_stays_correct():
    torch.manual_seed(0)
    body = SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4))
    body.recompute_bn = True
    ref_body = copy.deepcopy(body)
    ref_body.recompute_bn = False
    neuron = IFNeuron(step_mode="m", backend="cpp")
    x = torch.randn(3, 2, 2, 5, 5)
    grads = []
    for b in (body, ref_body):
        h = b(x)
        h.mul_(1.5)                       # the recipe no longer describes h
        assert recipe_of(h) is None
        neuron(h).sum().backward()
        neuron.reset()
        grads.append(b[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_no_recipe_where_it_does_not_apply():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, 4)

    def recipe(container, inp=x):
        container.recompute_bn = True
        return recipe_of(container(inp))

    bn_last = SeqToANNContainer(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    assert recipe(bn_last) is not None
    assert recipe(SeqToANNContainer(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1))) is None       # BN not last
    assert recipe(SeqToANNContainer(nn.Conv2d(3, 4, 1))) is None
    bn_last.eval()
    assert recipe(bn_last) is None                                                         # running statistics
    bn_last.train()
    with torch.no_grad():
        assert recipe(bn_last) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert recipe(bn_last) is None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):                # e.g. checkpointing
        assert recipe(bn_last) is None
    assert recipe(SeqToANNContainer(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).double(), x.double()) is not None
    assert not can_recompute_bn(nn.SyncBatchNorm(4), torch.randn(2, 4, 3, 3))


def test_set_recompute_bn_flags_every_container():
    net = create_model("resnet20_cifar", neuron="if", T=2)
    assert set_recompute_bn(net) is net
    containers = [m for m in net.modules() if isinstance(m, SeqToANNContainer)]
    assert containers and all(m.recompute_bn for m in containers)
    set_recompute_bn(net, False)
    assert not any(m.recompute_bn for m in containers)


@needs_cpp
def test_multispike_train_applies_the_memory_options(tmp_path, monkeypatch):
    """``--recompute-bn --spike-storage bytes`` reach the model the trainer runs, the recipes are used, and the
    run's loss matches the same run without them (up to BN's float rounding)."""
    import json

    from multispike.cli.main import main
    from conftest import DIGITS_ARGS

    used = _spy_on_recipes(monkeypatch)
    args = [a if a != "ann" else "snn" for a in DIGITS_ARGS]
    args = [a if a != "1" or args[i - 1] != "--timesteps" else "2" for i, a in enumerate(args)]
    common = ["train", *args, "--neuron", "if", "--neuron-kwargs", "backend=cpp", "--max-steps", "2", "--epochs", "1",
              "--opt", "sgd", "--lr", "0.01", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not any(used)
    assert main([*common, "--recompute-bn", "--spike-storage", "bytes", "--out", str(tmp_path / "lean")]) == 0
    assert any(used)
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    lean = json.loads((tmp_path / "lean" / "summary.json").read_text())
    assert lean["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=1e-3)
    config = json.loads((tmp_path / "lean" / "config.json").read_text())
    assert config["recompute_bn"] is True and config["spike_storage"] == "bytes"
