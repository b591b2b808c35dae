"""SeqToANNContainer's spike storage: a spike input saved for backward as uint8 must change nothing, bit for bit."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from multispike.layers import SeqToANNContainer, pack_exact_uint8, set_spike_storage
from multispike.models import create_model

def _kernels_built() -> bool:
    from multispike.kernels import _build
    return _build.load_library() is not None


needs_kernels = pytest.mark.skipif(not _kernels_built(), reason="the C++ kernels are not built here")

BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


@pytest.fixture(params=["kernel", "torch"])
def pack_path(request, monkeypatch):
    """Both implementations of pack_exact_uint8: the one-pass C++ kernel (float32/float64 on CPU) and PyTorch's."""
    import multispike.kernels.pack_cpp as pack_cpp
    from multispike.kernels import _build

    if request.param == "kernel" and _build.load_library() is None:
        pytest.skip("the C++ kernels are not built here")
    if request.param == "torch":
        monkeypatch.setattr(pack_cpp, "pack_kernel_available", lambda t: False)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_pack_round_trips_spikes_and_counts(dtype, pack_path):
    x = torch.randint(0, 256, (3, 4, 5, 6)).to(dtype)
    q = pack_exact_uint8(x)
    assert q is not None and q.dtype == torch.uint8 and q.stride() == x.stride()
    assert _bits_equal(q.to(dtype), x)
    cl = torch.randint(0, 2, (2, 8, 5, 5)).to(dtype).contiguous(memory_format=torch.channels_last)
    q = pack_exact_uint8(cl)
    assert q is not None and q.stride() == cl.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [0.5, -1.0, 256.0, 255.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30,
                                 1e-40, 1e10, -2.0 ** 31, 2.0 ** 31])
def test_pack_refuses_anything_not_bit_exact(bad, dtype, pack_path):
    x = torch.zeros(2, 3, 4, dtype=dtype)
    x[1, 2, 3] = bad
    assert pack_exact_uint8(x) is None


@pytest.mark.parametrize("where", [0, 70_000, -1])
def test_pack_of_a_large_tensor_checks_every_block(where, pack_path):
    """Several kernel blocks and threads: a single bad element anywhere refuses the whole tensor."""
    torch.manual_seed(0)
    x = (torch.rand(5, 32, 33, 31) < 0.3).float() * 3
    q = pack_exact_uint8(x)
    assert q is not None and torch.equal(q.float(), x)
    x.view(-1)[where] = 0.25
    assert pack_exact_uint8(x) is None


@needs_kernels
def test_pack_kernel_agrees_with_pytorch_on_random_values():
    from hypothesis import given, settings, strategies as st

    from multispike.kernels.pack_cpp import pack_exact_uint8_cpu

    values = st.one_of(st.integers(0, 255).map(float), st.floats(allow_nan=True, allow_infinity=True, width=32))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(values, min_size=1, max_size=40), st.sampled_from([torch.float32, torch.float64]))
    def check(vals, dtype):
        x = torch.tensor(vals, dtype=dtype)
        exact = x.to(torch.uint8).to(dtype).view(BITS[dtype]).equal(x.view(BITS[dtype]))
        q = pack_exact_uint8_cpu(x)
        assert (q is not None) == exact
        if exact:
            assert torch.equal(q, x.to(torch.uint8))

    check()


def test_pack_refuses_non_dense_and_non_float():
    x = torch.ones(4, 6)
    assert pack_exact_uint8(x[:, ::2]) is None          # strided slice: unpacked strides could not match
    assert pack_exact_uint8(x.t()) is None               # transposed (neither contiguous nor channels_last)
    assert pack_exact_uint8(torch.ones(3, dtype=torch.int64)) is None
    assert pack_exact_uint8(torch.ones(0)) is None


def _train_step(model_name, neuron, T, mode, *, channels_last=False, seed=0, wrap=None, **kw):
    torch.manual_seed(seed)
    m = create_model(model_name, neuron=neuron, T=T, **kw)
    set_spike_storage(m, mode)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (3,))
    out = wrap(m, x) if wrap else m(x)
    nn.functional.cross_entropy(out, y).backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    return out.detach(), grads, m


def _packed_containers(m):
    return [n for n, c in m.named_modules() if isinstance(c, SeqToANNContainer)
            and c.__dict__.get("_spike_fail_streak") == 0]


@pytest.mark.parametrize("model_name,neuron,T,kw", [
    ("resnet20_cifar", "if", 2, {"input_size": 16}),
    ("airbench_cifar", "if", 3, {"input_size": 16}),
    ("vgg_small", "mlif", 2, {"input_size": 16, "neuron_kwargs": {"lanes": 3}}),    # one-hot payloads 0, 1, 2, 4
    ("vgg_small", "lmht", 2, {"input_size": 16}),                                    # fractional levels: float path
    ("resnet20_cifar", "relu", 1, {"input_size": 16}),                               # the ANN: never packs
])
def test_bytes_storage_is_bit_identical_to_float(model_name, neuron, T, kw):
    o_f, g_f, _ = _train_step(model_name, neuron, T, "float", **kw)
    o_b, g_b, m = _train_step(model_name, neuron, T, "bytes", **kw)
    assert _bits_equal(o_f, o_b)
    assert g_f.keys() == g_b.keys() and len(g_f) > 0
    for k in g_f:
        assert _bits_equal(g_f[k], g_b[k]), k
    packed = _packed_containers(m)
    if neuron in ("if", "mlif"):
        assert packed, "no container kept its spike input as bytes: the test would not exercise the new path"
    if neuron == "relu":
        assert not packed


def test_bytes_storage_bit_identical_channels_last():
    o_f, g_f, _ = _train_step("resnet20_cifar", "if", 2, "float", channels_last=True, input_size=16)
    o_b, g_b, m = _train_step("resnet20_cifar", "if", 2, "bytes", channels_last=True, input_size=16)
    assert _bits_equal(o_f, o_b) and all(_bits_equal(g_f[k], g_b[k]) for k in g_f)
    assert _packed_containers(m)


def test_outer_saved_tensor_hooks_and_checkpointing_win():
    def ckpt(m, x):
        return checkpoint(m, x, use_reentrant=False)
    o_f, g_f, _ = _train_step("resnet20_cifar", "if", 2, "float", input_size=16)
    o_c, g_c, m = _train_step("resnet20_cifar", "if", 2, "bytes", wrap=ckpt, input_size=16)
    assert _bits_equal(o_f, o_c) and all(_bits_equal(g_f[k], g_c[k]) for k in g_f)
    assert not _packed_containers(m)   # checkpointing's hooks were active: ours stayed out of the way
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.dtype) or t, lambda t: t):
        _, g_h, m = _train_step("resnet20_cifar", "if", 2, "bytes", input_size=16)
    assert seen and torch.uint8 not in seen and not _packed_containers(m)


def test_no_grad_and_ann_probing_stop():
    c = SeqToANNContainer(nn.Linear(4, 3))
    assert c.spike_storage == "float"   # opt-in
    c.spike_storage = "bytes"
    with torch.no_grad():
        c(torch.ones(2, 5, 4))
    assert "_spike_fail_streak" not in c.__dict__   # nothing is saved without autograd: no check at all
    for _ in range(5):
        c(torch.full((2, 5, 4), 0.5)).sum().backward()
    assert c._spike_fail_streak == SeqToANNContainer._PROBE_AFTER_FAILURES   # then it stops checking
    c(torch.ones(2, 5, 4)).sum().backward()
    assert c._spike_fail_streak == SeqToANNContainer._PROBE_AFTER_FAILURES


def test_set_spike_storage_rejects_unknown_mode():
    with pytest.raises(ValueError, match="spike storage"):
        set_spike_storage(nn.Sequential(), "int4")


def test_an_input_changed_in_place_between_two_saves_is_saved_twice():
    """Saved-tensor hooks bypass autograd's version check, so the byte cache must tell the two saves apart:
    each use gets the value it was computed with (the float path refuses this graph instead)."""

    class SaveTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            a = x * self.w          # saves x (spike values 0/1)
            x.mul_(3)               # in place: now 0/3
            return a + x * self.w   # saves the changed x

    x = torch.tensor([[1.0, 1.0, 1.0]]).repeat(2, 1).reshape(2, 1, 3)   # [T, B, 3]
    x[0, 0, 2] = 1.0
    box = SeqToANNContainer(SaveTwice())
    box.spike_storage = "bytes"
    box(x.clone()).sum().backward()
    # d/dw of sum(x*w + 3x*w) over T = 2 rows of ones: 1*2 + 3*2 = 8 per weight
    assert torch.equal(box[0].w.grad, torch.full((3,), 8.0))


def _saved_pool_inputs(loss: torch.Tensor) -> list[torch.Tensor]:
    """The ``self`` tensors the average-pool nodes of a graph keep for backward."""
    out, stack, seen = [], [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if "AvgPool" in type(node).__name__:
            out.append(node._saved_self)
        stack += [n for n, _ in node.next_functions]
    return out


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.AdaptiveAvgPool2d(2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_leading_average_pool_keeps_only_its_input_shape_with_bit_identical_gradients(pool, channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 15, 15)
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(3, 4, 8, 15, 15)
    lean_in, plain_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    box = SeqToANNContainer(pool, nn.Conv2d(8, 5, 1))
    lean = box(lean_in)
    saved = _saved_pool_inputs(lean.sum())
    # the pool's saved input is a zero-stride view of one element: no activation memory
    assert len(saved) == 1 and all(s == 0 for s in saved[0].stride()) and saved[0].shape == (12, 8, 15, 15)
    plain = box[1](box[0](plain_in.flatten(0, 1))).view(3, 4, *lean.shape[2:])
    assert torch.equal(lean, plain)
    grad = torch.randn_like(lean)
    lean.backward(grad)
    plain.backward(grad)
    assert torch.equal(lean_in.grad, plain_in.grad)


def test_average_pool_inputs_stay_saved_under_outer_hooks_and_in_the_snn_zoo_net_they_are_not():
    box = SeqToANNContainer(nn.AvgPool2d(2))
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):   # e.g. activation checkpointing
        kept = _saved_pool_inputs(box(x).sum())
    assert kept[0].stride() != (0, 0, 0, 0)
    net = create_model("airbench_cifar", neuron="if", T=2)
    out = net(torch.randn(2, 3, 32, 32))
    pools = _saved_pool_inputs(out.sum())
    assert pools and all(all(s == 0 for s in p.stride()) for p in pools)


def test_two_containers_on_one_input_share_one_uint8_copy(monkeypatch):
    """A downsampling block's shortcut conv and first conv read the same spikes: packed once, used twice, and the
    gradients equal the float path's bit for bit."""
    import multispike.layers as layers
    from multispike.models.resnet import BasicBlock
    from multispike.neurons import IFNeuron

    calls = []
    real = layers.pack_exact_uint8
    monkeypatch.setattr(layers, "pack_exact_uint8", lambda t: calls.append(tuple(t.shape)) or real(t))
    torch.manual_seed(0)
    block = BasicBlock(4, 8, 2, lambda: IFNeuron(step_mode="m"))
    twin = copy.deepcopy(block)
    spikes = (torch.rand(2, 3, 4, 6, 6) < 0.4).float().requires_grad_()
    grads = []
    for mode, net in (("bytes", block), ("float", twin)):
        set_spike_storage(net, mode)
        x = spikes.detach().clone().requires_grad_()
        net(x).sum().backward()
        grads.append([x.grad] + [p.grad for p in net.parameters()])
    assert calls.count((6, 4, 6, 6)) == 1        # the block input: once for both containers
    assert len(calls) == 2                       # and the first neuron's spikes for the second conv
    for a, b in zip(*grads):
        assert _bits_equal(a, b)
