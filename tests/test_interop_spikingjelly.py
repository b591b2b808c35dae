"""multispike vs the installed SpikingJelly 2.0: drop-in aliases, dtype, model converter (issue 17).

SpikingJelly is part of the ``interop`` test extra that ``make test`` installs, so these tests run in CI.
"""
import copy

import pytest
import torch
from torch import nn

import multispike as ms
from multispike.interop import from_spikingjelly
from multispike.interop.spikingjelly import convert_surrogate

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron",
                                reason="SpikingJelly is in the 'interop' test extra (make test installs it)")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402


def _inputs(shape=(8, 3, 17), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 1.6 - 0.2).to(dtype)


def _run_sj(node, x):
    functional.reset_net(node)
    x = x.clone().requires_grad_(True)
    y = node(x)
    (y * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), node.v_seq.detach() if node.store_v_seq else None, x.grad


def _run_ms(node, x):
    node.reset()
    x = x.clone().requires_grad_(True)
    y = node(x)
    (y * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), node.v_seq.detach() if node.store_v_seq else None, x.grad


# ---------------------------------------------------------------------------------------------------------------
# (a) the aliases carry SpikingJelly's defaults
# ---------------------------------------------------------------------------------------------------------------
def test_ifnode_alias_defaults_are_spikingjellys_hard_reset():
    sj, ours = sj_neuron.IFNode(step_mode="m"), ms.IFNode(step_mode="m")
    assert ours.v_reset == sj.v_reset == 0.0 and float(ours.v_threshold) == sj.v_threshold == 1.0
    assert isinstance(ours.surrogate_function, ms.Sigmoid) and ours.surrogate_function.alpha == 4.0
    x = _inputs()
    y_sj, y_ms = sj(x), ours(x)
    assert torch.equal(y_sj, y_ms)
    # the old alias (soft reset) differed on a large fraction of these spikes: the default matters
    soft = ms.IFNeuron(step_mode="m")(x)
    assert not torch.equal(soft, y_sj)


def test_aliases_match_spikingjelly_positionally_and_by_keyword():
    x = _inputs(seed=1)
    cases = [
        (sj_neuron.IFNode(0.7, None, surrogate.ATan(3.0), True, "m"),
         ms.IFNode(0.7, None, ms.ATan(3.0), True, "m")),
        (sj_neuron.IFNode(v_threshold=0.6, v_reset=-0.2, step_mode="m", store_v_seq=True),
         ms.IFNode(v_threshold=0.6, v_reset=-0.2, step_mode="m", store_v_seq=True)),
        (sj_neuron.LIFNode(3.0, False, 0.5, None, surrogate.Sigmoid(2.0), False, "m", store_v_seq=True),
         ms.LIFNode(3.0, False, 0.5, None, surrogate.Sigmoid(2.0), False, "m", store_v_seq=True)),
        (sj_neuron.LIFNode(tau=1.7, v_reset=0.1, detach_reset=True, step_mode="m", store_v_seq=True),
         ms.LIFNode(tau=1.7, v_reset=0.1, detach_reset=True, step_mode="m", store_v_seq=True)),
        (sj_neuron.ParametricLIFNode(init_tau=2.5, step_mode="m", store_v_seq=True),
         ms.ParametricLIFNode(init_tau=2.5, step_mode="m", store_v_seq=True)),
        (sj_neuron.ParametricLIFNode(1.5, False, 0.8, None, surrogate.ATan(), True, "m", store_v_seq=True),
         ms.ParametricLIFNode(1.5, False, 0.8, None, surrogate.ATan(), True, "m", store_v_seq=True)),
    ]
    for sj, ours in cases:
        y_sj, v_sj, g_sj = _run_sj(sj, x)
        y_ms, v_ms, g_ms = _run_ms(ours, x)
        assert torch.equal(y_sj, y_ms), (sj, ours)
        if v_sj is not None:
            assert torch.equal(v_sj, v_ms), (sj, ours)
        torch.testing.assert_close(g_ms, g_sj, rtol=1e-5, atol=1e-6)


def test_single_step_alias_matches_spikingjelly_step_by_step():
    x = _inputs(seed=2)
    sj, ours = sj_neuron.LIFNode(tau=2.0), ms.LIFNode(tau=2.0)
    for t in range(x.shape[0]):
        assert torch.equal(sj(x[t]), ours(x[t]))
        assert torch.equal(sj.v, ours.v)


def test_plif_w_gradient_matches_spikingjelly():
    x = _inputs(seed=3)
    sj, ours = sj_neuron.ParametricLIFNode(init_tau=2.0, step_mode="m"), ms.ParametricLIFNode(init_tau=2.0,
                                                                                                 step_mode="m")
    assert torch.equal(sj.w.detach(), ours.w.detach())
    _run_sj(sj, x)
    _run_ms(ours, x)
    torch.testing.assert_close(ours.w.grad, sj.w.grad, rtol=1e-5, atol=1e-6)


def test_unsupported_spikingjelly_surrogate_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot translate surrogate"):
        convert_surrogate(surrogate.PiecewiseQuadratic())
    with pytest.raises(TypeError, match="spiking=False"):
        convert_surrogate(surrogate.Sigmoid(spiking=False))
    with pytest.raises(TypeError, match="leak_mode"):
        ms.LIFNode(leak_mode="post_reset")


# ---------------------------------------------------------------------------------------------------------------
# (b) dtype: float64 parameters stay float64 and reproduce SpikingJelly in float64
# ---------------------------------------------------------------------------------------------------------------
def test_float64_tensor_parameters_keep_their_dtype():
    theta = torch.tensor(0.3, dtype=torch.float64)
    v0 = torch.tensor(0.1, dtype=torch.float64)
    tau = torch.tensor(2.3, dtype=torch.float64)
    for nrn in (ms.IFNeuron(v_threshold=theta, v_init=v0), ms.LIFNeuron(tau=tau, v_threshold=theta, v_init=v0),
                ms.LIFNeuron(decay=tau / 3, leak_mode="post_reset", v_threshold=theta),
                ms.OneHotMLIF(lanes=2, v_threshold=theta, v_init=v0)):
        for name, buf in nrn.named_buffers():
            if buf is not None and buf.is_floating_point():
                assert buf.dtype == torch.float64, (type(nrn).__name__, name)
    assert float(ms.IFNeuron(v_threshold=theta).v_threshold) == 0.3  # exact float64 value, not float32's
    assert float(ms.LIFNeuron(tau=tau).leak_param) == 2.3


@pytest.mark.parametrize("decay_input", [True, False])
def test_float64_lif_matches_spikingjelly_with_non_representable_parameters(decay_input):
    # θ = 0.3, v0 = 0.1 (via v_reset: SpikingJelly starts at v_reset) and τ = 2.3 are not representable in binary;
    # rounding any of them to float32 moves spikes, so equality below needs full float64 parameters.
    x = _inputs((16, 4, 64), torch.float64, seed=4) * 0.5
    sj = sj_neuron.LIFNode(tau=2.3, decay_input=decay_input, v_threshold=0.3, v_reset=0.1, step_mode="m",
                           store_v_seq=True).double()
    f64 = torch.float64
    ours = ms.LIFNode(tau=torch.tensor(2.3, dtype=f64), decay_input=decay_input,
                      v_threshold=torch.tensor(0.3, dtype=f64), v_reset=0.1, step_mode="m", store_v_seq=True)
    y_sj, v_sj, g_sj = _run_sj(sj, x)
    y_ms, v_ms, g_ms = _run_ms(ours, x)
    assert torch.equal(y_ms, y_sj) and torch.equal(v_ms, v_sj)
    torch.testing.assert_close(g_ms, g_sj, rtol=1e-12, atol=1e-14)
    # the same under a float64 default dtype with plain Python numbers
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours2 = ms.LIFNode(tau=2.3, decay_input=decay_input, v_threshold=0.3, v_reset=0.1, step_mode="m")
    finally:
        torch.set_default_dtype(prev)
    assert torch.equal(ours2(x), y_sj)
    # whereas float32-rounded parameters (what `.float()` in the constructor used to do) do not reproduce it
    rounded = ms.LIFNode(tau=torch.tensor(2.3), decay_input=decay_input, v_threshold=torch.tensor(0.3),
                         v_reset=0.1, step_mode="m", store_v_seq=True)
    _, v_rounded, _ = _run_ms(rounded, x)
    assert not torch.equal(v_rounded, v_sj)


def test_float64_if_matches_spikingjelly_soft_reset_with_v0():
    x = _inputs((16, 4, 64), torch.float64, seed=5) * 0.4
    # SpikingJelly soft-reset IF starts at 0; v0 = 0.1 is given to it by one leading step of input 0.1
    x_sj = torch.cat([torch.full_like(x[:1], 0.1), x])
    sj = sj_neuron.IFNode(v_threshold=0.3, v_reset=None, step_mode="m", store_v_seq=True).double()
    y_sj, v_sj, _ = _run_sj(sj, x_sj)
    ours = ms.IFNode(v_threshold=torch.tensor(0.3, dtype=torch.float64), v_reset=None, step_mode="m",
                     v_init=torch.tensor(0.1, dtype=torch.float64), store_v_seq=True)
    y_ms, v_ms, _ = _run_ms(ours, x)
    assert torch.equal(y_ms, y_sj[1:]) and torch.equal(v_ms, v_sj[1:])


# ---------------------------------------------------------------------------------------------------------------
# SpikingJelly model converter
# ---------------------------------------------------------------------------------------------------------------
def _sj_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 6, 3, padding=1), layer.BatchNorm2d(6), sj_neuron.IFNode(),
        layer.MaxPool2d(2),
        layer.Conv2d(6, 8, 3, padding=1), sj_neuron.LIFNode(tau=2.0, detach_reset=True, v_reset=None),
        layer.Flatten(), layer.Linear(8 * 4 * 4, 16), sj_neuron.ParametricLIFNode(init_tau=2.0),
        layer.Linear(16, 5), sj_neuron.LIFNode(tau=1.5, decay_input=False, surrogate_function=surrogate.ATan()),
    )
    functional.set_step_mode(net, "m")
    return net


def test_converter_gives_identical_spikes_membranes_and_gradients():
    net = _sj_net()
    for m in net.modules():
        if hasattr(m, "store_v_seq"):
            m.store_v_seq = True
    fast = from_spikingjelly(net)
    kinds = [type(m) for m in fast if not isinstance(m, nn.Sequential)]
    assert ms.IFNode in kinds and ms.LIFNode in kinds and ms.ParametricLIFNode in kinds
    assert not any(type(m).__module__.startswith("spikingjelly.activation_based.neuron") for m in fast.modules())
    assert fast[2].backend == "auto"
    x = torch.rand(6, 3, 2, 8, 8, generator=torch.Generator().manual_seed(7)) * 2
    for _ in range(2):  # twice: reset_net must reset multispike's neurons too
        outs = []
        for model in (net, fast):
            functional.reset_net(model)
            model.zero_grad()
            xi = x.clone().requires_grad_(True)
            y = model(xi)
            (y * torch.arange(y.numel()).view_as(y).float().remainder(7)).sum().backward()
            vs = [m.v_seq.detach().clone() for m in model.modules() if getattr(m, "v_seq", None) is not None]
            grads = [p.grad.clone() for p in model.parameters()]
            outs.append((y.detach(), vs, xi.grad, grads))
        (y1, vs1, gx1, gp1), (y2, vs2, gx2, gp2) = outs
        assert torch.equal(y1, y2)
        assert len(vs1) == len(vs2) == 4 and all(torch.equal(a, b) for a, b in zip(vs1, vs2))
        torch.testing.assert_close(gx2, gx1, rtol=1e-4, atol=1e-6)
        assert len(gp1) == len(gp2)
        for a, b in zip(gp1, gp2):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_converter_keeps_the_original_by_default_and_refuses_bad_inputs():
    net = _sj_net()
    before = copy.deepcopy(net.state_dict())
    from_spikingjelly(net)
    assert isinstance(net[2], sj_neuron.IFNode)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    same = from_spikingjelly(net, inplace=True)
    assert same is net and isinstance(net[2], ms.IFNode)

    with pytest.raises(LookupError, match="no SpikingJelly"):
        from_spikingjelly(nn.Sequential(nn.Linear(2, 2)))
    stateful = nn.Sequential(layer.Linear(3, 3), sj_neuron.IFNode(step_mode="m"))
    stateful(torch.rand(2, 1, 3))
    with pytest.raises(ValueError, match="reset_net"):
        from_spikingjelly(stateful)
    other = nn.Sequential(sj_neuron.QIFNode() if hasattr(sj_neuron, "QIFNode") else sj_neuron.EIFNode())
    with pytest.raises(LookupError):
        from_spikingjelly(other)
