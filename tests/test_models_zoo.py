"""Every registered model x every neuron (timm-style registry sweep).

For each pair: forward/backward shapes, ``reset()`` replay, ``forward == mean(forward_sequence)``, state-dict
round trip through ``torch.save``/``torch.load(weights_only=True)``, and ``'s'`` (one step at a time) equals
``'m'`` in float64. Inputs are the smallest each architecture accepts (``model_info(name).test_input_size``),
so every model - also the ImageNet-size ones - runs here; full-size inputs are only used on the meta device
(MAC counts, tests/test_models.py). A new model or neuron is covered the moment it is registered.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.testing import assert_close

from multispike.models import create_model, list_models, model_info
from multispike.models.base import NeuronFactory
from multispike.neurons.base import MemoryModule, StepModule, set_step_mode
from multispike.neurons.registry import list_neurons

T = 2
B = 2
NEURONS = list_neurons()  # relu, qcfs, qac, if, lif, lmht, mlif (+ any registered later)
COMBOS = [(m, n) for m in list_models() for n in NEURONS]


def _input(info, dtype=torch.float32, events: bool | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    events = info.input_layout == "events" if events is None else events
    shape = (T, B, *info.test_input_size) if events else (B, *info.test_input_size)
    x = torch.rand(shape, generator=gen) if events else torch.randn(shape, generator=gen)
    return x.to(dtype)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster than two on a shared 2-core machine (no spin-waiting)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{m}-{n}" for m, n in COMBOS])
def built(request):
    """One pristine model per (model, neuron); tests work on deep copies (building is the slow part)."""
    name, neuron = request.param
    NeuronFactory(neuron, T=T)   # every registered neuron must import: a broken one fails here, it never skips
    info = model_info(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, neuron=neuron, T=T, input_size=info.test_input_size)
    return name, neuron, info, model


def test_forward_backward_shapes(built):
    name, neuron, info, pristine = built
    model = copy.deepcopy(pristine).train()
    x = _input(info)
    y_seq = model.forward_sequence(x)
    assert y_seq.shape == (T, B, 7), f"{name}/{neuron}: forward_sequence gave {tuple(y_seq.shape)}"
    y = y_seq.mean(0)
    assert y.shape == (B, 7) and bool(torch.isfinite(y).all())
    (y.square().mean() + y_seq[-1].sum()).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"{name}/{neuron}: parameters outside the autograd graph: {missing[:5]}"
    bad = [n for n, p in params if not bool(torch.isfinite(p.grad).all())]
    assert not bad, f"{name}/{neuron}: non-finite gradients in {bad[:5]}"
    if neuron == "relu":  # a ReLU network always passes gradient back to its first layer
        assert float(model.stem[0].weight.grad.abs().sum()) > 0


def test_reset_replay_and_state_dict_round_trip(built):
    name, neuron, info, pristine = built
    model = copy.deepcopy(pristine).eval()
    x = _input(info)
    with torch.no_grad():
        model.auto_reset = False
        y1 = model(x)
        stateful = [m for m in model.modules() if isinstance(m, MemoryModule)]
        assert all(getattr(m, "state", 0) is not None for m in stateful), "neurons keep their state after a call"
        model.reset()
        y2_seq = model.forward_sequence(x)
        assert y2_seq.shape == (T, B, 7)
        assert_close(y2_seq.mean(0), y1, atol=0, rtol=0, msg=f"{name}/{neuron}: reset() replay differs")

        # Round trip; small models go through torch.save / torch.load(weights_only=True) (no pickle code).
        state = model.state_dict()
        if sum(t.numel() for t in state.values()) < 2_000_000:
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
        else:
            state = {k: v.clone() for k, v in state.items()}
        for t in list(model.parameters()) + list(model.buffers()):  # scramble everything the state dict holds
            if t.is_floating_point():
                t.add_(0.5)
        result = model.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        model.reset()
        assert_close(model(x), y1, atol=0, rtol=0, msg=f"{name}/{neuron}: state-dict round trip changed outputs")


def test_single_step_equals_multi_step(built):
    name, neuron, info, pristine = built
    model = copy.deepcopy(pristine).double().eval()
    x = _input(info, torch.float64)[..., :1, :, :, :] if info.input_layout == "events" else \
        _input(info, torch.float64)[:1]  # batch of one: float64 convolutions are slow
    steppers = [m for m in model.modules() if isinstance(m, StepModule)]
    causal = all("s" in m.supported_step_modes() for m in steppers)
    with torch.no_grad():
        y_m = model.forward_sequence(x)
        if not causal:
            # LM-HT's learnable T-GIM mixes all T steps (non-causal, algorithms.md §2.10): no single-step form,
            # and asking for one must be refused, not silently ignored.
            assert neuron == "lmht", f"{name}/{neuron}: only LM-HT's T-GIM may lack a single-step mode"
            with pytest.raises(ValueError, match="step_mode"):
                set_step_mode(model, "s")
            return
        set_step_mode(model, "s")
        assert model.step_mode == "s"
        y_s = model.forward_sequence(x)
    assert y_s.shape == y_m.shape
    assert_close(y_s, y_m, atol=1e-9, rtol=1e-9, msg=f"{name}/{neuron}: 's' and 'm' differ")


# The zoo's public names: checkpoints record them (multispike eval/convert rebuild by name), configs and the README
# use them, so a rename or removal must fail here rather than break users' runs and saved checkpoints.
ZOO_NAMES = {
    "airbench_cifar", "airbench94_cifar", "digits_cnn", "ms_resnet18", "ms_resnet34", "resnet18", "resnet19", "resnet20_cifar",
    "resnet20_diet", "resnet34", "resnet8_cifar", "spike_driven_transformer", "spike_driven_transformer_8_512", "spike_driven_transformer_tiny",
    "vgg13", "vgg16_diet", "vgg16_qcfs", "vgg_small", "vggsnn", "vggsnn_small", "vggsnn_woap",
}


def test_zoo_names_are_stable():
    names = set(list_models())
    assert names >= ZOO_NAMES, f"zoo models renamed or removed: {sorted(ZOO_NAMES - names)}"
    assert names == ZOO_NAMES, f"new zoo models {sorted(names - ZOO_NAMES)}: add them to ZOO_NAMES and the README"


def test_every_shipped_config_names_a_zoo_model():
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    configs = sorted((root / "configs").rglob("*.yaml"))
    assert configs
    readme = (root / "README.md").read_text()
    for path in configs:
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        if model is not None:
            assert model in ZOO_NAMES, f"{path.relative_to(root)} names model {model!r}, which the zoo lacks"
    for name in ZOO_NAMES - {"spike_driven_transformer_8_512"}:   # the README writes it `..._transformer`(`_8_512`)
        assert f"`{name}`" in readme, f"README's model table does not list {name!r}"
