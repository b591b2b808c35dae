"""Fused IF/LIF kernels (backend "cpp") against the reference ``lif_multistep``.

Forward outputs and final states must be identical (atol=0); gradients (input, initial state, learnable θ/λ/τ)
agree to 1e-10 in float64 and to 1e-6 relative in float32. The C++ library is built once per session (module
fixture); the fallback tests monkeypatch the loader instead of rebuilding.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import require_cpp_library

import multispike as ms
from multispike.kernels import _build, lif_cpp
from multispike.kernels.registry import get_kernel, resolve_backend
from multispike.neurons import lif_multistep
from multispike.neurons.if_lif import LIFState
from multispike.neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle

KERNEL = lif_cpp.lif_multistep_cpp


@pytest.fixture(scope="module", autouse=True)
def library():
    # skips only without a compiler (or MULTISPIKE_DISABLE_CPP); a compiler whose build fails is a failure
    return require_cpp_library()


@pytest.fixture
def poisoned():
    """Every torch.empty/empty_strided is NaN-filled: a kernel that leaves any output element unwritten fails."""
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls that really reach the fused kernel (not the fallback)."""
    calls = []
    orig = lif_cpp.run_lif

    def wrapped(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(lif_cpp, "run_lif", wrapped)
    return calls


SURROGATES = {
    "sigmoid": lambda: Sigmoid(4.0),
    "atan": lambda: ATan(2.0),
    "rect": lambda: Rectangular(0.8),
    "tri_tet": lambda: Triangle(1.0, form="tet"),
    "tri_diet": lambda: Triangle(0.3, form="diet"),
}

# (leak_mode, reset_leak, v_reset) - every valid placement/reset pairing
MODES = [("post_reset", True, None), ("post_reset", True, 0.0), ("post_reset", True, -0.25),
         ("post_reset", False, None), ("decay_input", True, None), ("decay_input", True, 0.0),
         ("decay_state", True, None), ("decay_state", True, 0.1)]


def _inputs(shape, dtype, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + 0.3
    # exact multiples of 1/8 make m hit θ exactly, so ">=" versus ">" and ties are exercised
    x = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.3, torch.round(x * 8) / 8, x)
    return x.to(dtype)


def _run(fn, x, state, kwargs, params):
    y, st, _ = fn(x, state, **kwargs)
    return y, st


def _compare(x, kwargs, *, state=None, dtype=torch.float64, learn=(), check_grad=True, tol=None):
    """Run kernel and reference on the same inputs; assert identical forward, close gradients."""
    tol = tol or ({"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-6, "rtol": 1e-6})
    outs = []
    for fn in (KERNEL, lif_multistep):
        xi = x.detach().requires_grad_(check_grad)   # the same layout as x (clone() would compact a sliced x)
        kw = dict(kwargs)
        leaves = [xi]
        for name in learn:
            kw[name] = torch.tensor(kw.get(name, 1.0), dtype=dtype, requires_grad=True)
            leaves.append(kw[name])
        st = None
        if state is not None:
            v = state.v.detach().clone().requires_grad_(check_grad)
            lr = None if state.last_reset is None else state.last_reset.detach().clone().requires_grad_(check_grad)
            st = LIFState(v, lr)
            leaves += [v] + ([lr] if lr is not None else [])
        y, st_out, extra = fn(xi, st, **kw)
        assert extra is None
        grads = None
        if check_grad:
            g = torch.Generator().manual_seed(7)
            loss = (y * torch.randn(y.shape, generator=g, dtype=dtype)).sum()
            loss = loss + (st_out.v * torch.randn(st_out.v.shape, generator=g, dtype=dtype)).sum()
            if st_out.last_reset is not None:
                loss = loss + (st_out.last_reset * 0.37).sum()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        outs.append((y, st_out, grads))
    (y1, s1, g1), (y2, s2, g2) = outs
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    torch.testing.assert_close(s1.v, s2.v, atol=0, rtol=0)
    assert (s1.last_reset is None) == (s2.last_reset is None)
    if s1.last_reset is not None:
        torch.testing.assert_close(s1.last_reset, s2.last_reset, atol=0, rtol=0)
    if check_grad:
        for a, b in zip(g1, g2):
            if b is None:
                assert a is None or torch.count_nonzero(a) == 0
            else:
                torch.testing.assert_close(a, b, **tol)
    return y1, s1


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-rl{int(m[1])}-vr{m[2]}")
@pytest.mark.parametrize("surr", list(SURROGATES))
def test_every_option_combination_float64(mode, surr, spy):
    leak_mode, reset_leak, v_reset = mode
    x = _inputs((5, 3, 7), torch.float64, seed=10 * MODES.index(mode) + list(SURROGATES).index(surr))
    n = 0
    for fire_ge, form, payload, detach in itertools.product((True, False), ("difference", "normalized"),
                                                            ("spike", "threshold"), (False, True)):
        kwargs = dict(v_threshold=1.0, v_init=0.25, leak=0.9, tau=2.5, leak_mode=leak_mode, v_reset=v_reset,
                      reset_leak=reset_leak, fire_ge=fire_ge, surrogate=SURROGATES[surr](),
                      surrogate_form=form, detach_reset=detach, payload=payload)
        learn = ("v_threshold",) + (("leak",) if leak_mode == "post_reset" else ("tau",))
        _compare(x, kwargs, learn=learn)
        n += 1
    assert len(spy) == n  # every combination ran fused (the reference never goes through run_lif)


def test_exact_threshold_ties():
    # QCFS identity: m hits θ exactly; ">=" fires, ">" does not
    x = torch.full((6, 1, 4), 0.5, dtype=torch.float32)
    for fire_ge in (True, False):
        y, _ = _compare(x, dict(v_init=0.5, fire_ge=fire_ge), dtype=torch.float32)
    y, _, _ = KERNEL(x, v_init=0.5)
    assert y[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1, 1), (3, 7, 13), (8, 2, 3, 5, 5), (2, 1030), (4, 3, 1, 517)])
def test_shapes_and_dtypes(shape, dtype):
    x = _inputs(shape, dtype, seed=sum(shape))
    _compare(x, dict(v_threshold=0.8, v_init=0.1, leak=0.95), dtype=dtype, learn=("v_threshold", "leak"))
    _compare(x, dict(leak_mode="decay_input", tau=2.0, v_reset=0.0, surrogate=ATan()), dtype=dtype, learn=("tau",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m[0]}-rl{int(m[1])}-vr{m[2]}")
def test_specialised_forward_loops(mode, dtype, spy):
    # The forward runs one SIMD loop per (reset form, firing comparison, payload) compiled with those as constants;
    # each must stay bit-identical to the reference, in both dtypes, for every T and for sizes that straddle the
    # vector width and the 4096-element block (full vectors, a remainder, a block tail); grid inputs force ties.
    leak_mode, reset_leak, v_reset = mode
    n = 0
    for T, N in ((1, 4101), (2, 17), (3, 4096), (5, 31), (8, 4099)):
        x = _inputs((T, N), dtype, seed=T * 7 + MODES.index(mode))
        for fire_ge, payload, form in itertools.product((True, False), ("spike", "threshold"),
                                                        ("difference", "normalized")):
            kwargs = dict(v_threshold=0.75, v_init=0.125, leak=0.875, tau=2.0, leak_mode=leak_mode, v_reset=v_reset,
                          reset_leak=reset_leak, fire_ge=fire_ge, payload=payload, surrogate_form=form)
            # the backward is shared with the other tests; here it is checked once per form on the longest
            # sequence. float32: the kernel's polynomial exp (rel. error < 1e-7) against torch's, carried through
            # 8 hard-reset adjoint steps, moved one of 32792 gradients by 1.5e-6 (1e-5 relative): tolerance 1e-5
            tol = None if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
            _compare(x, kwargs, dtype=dtype, check_grad=(T == 8 and payload == "spike"), tol=tol)
            n += 1
    assert len(spy) == n


def test_large_parallel_blocks():
    # many blocks and both threads; odd N that is not a multiple of the block or vector width
    x = _inputs((4, 3, 11, 333), torch.float32, seed=3)
    _compare(x, dict(v_threshold=1.0, payload="threshold"), dtype=torch.float32, learn=("v_threshold",))
    x = _inputs((33, 2, 1001), torch.float64, seed=4)  # long T: the backward shrinks its cache blocks
    _compare(x, dict(leak=0.8, reset_leak=False), learn=("leak",))


def test_one_dim_sequence():
    x = _inputs((6,), torch.float64)
    _compare(x, dict(v_init=0.5))


# ------------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", ["transposed", "sliced", "time_sliced", "expanded_time", "channels_last",
                                    "channels_last_3d", "permuted"])
def test_noncontiguous_inputs(layout, spy):
    base = _inputs((6, 4, 5, 7, 9), torch.float64, seed=11)
    if layout == "transposed":
        x = base.transpose(3, 4)
    elif layout == "sliced":
        x = base[:, :, 1:, ::2]
    elif layout == "time_sliced":
        x = base[::2]
    elif layout == "expanded_time":
        x = base[0].unsqueeze(0).expand(5, *base.shape[1:])
    elif layout == "channels_last":
        x = base.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(base.shape[:2] + base.shape[2:])
    elif layout == "channels_last_3d":
        x = base.contiguous(memory_format=torch.channels_last_3d)
    else:
        x = base.permute(0, 3, 1, 4, 2)
    assert not x.is_contiguous()
    y, st = _compare(x, dict(v_threshold=0.9, v_init=0.2, leak=0.9), learn=("v_threshold",))
    assert spy  # the fused kernel ran (no silent fallback for layouts)
    if layout in ("channels_last", "channels_last_3d", "permuted", "time_sliced", "expanded_time"):
        # dense steps are walked in memory order without a copy: the output keeps the step layout
        assert y[0].stride() == x[0].stride() or y.is_contiguous()


@pytest.mark.parametrize("layout", ["expanded_time", "time_sliced", "transposed"])
def test_incoming_gradient_layouts(layout, spy):
    """dL/dy arrives in whatever layout autograd produced (an expanded gradient of a sum over time, a slice of a
    larger gradient, a transposed one); the kernel reads it with its own time stride (0, 2N, ...)."""
    x = _inputs((5, 3, 4, 6), torch.float64, seed=5)
    g = torch.randn(10, 3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if layout == "expanded_time":
        gy = g[0].expand(5, 3, 4, 6)
    elif layout == "time_sliced":
        gy = g[::2]
    else:
        gy = g[:5].transpose(2, 3).contiguous().transpose(2, 3)
    grads = []
    for fn in (KERNEL, lif_multistep):
        xi = x.detach().requires_grad_(True)
        y, _, _ = fn(xi, None, v_threshold=0.9, v_init=0.2, leak=0.9)
        grads.append(torch.autograd.grad(y, xi, grad_outputs=gy)[0])
    assert spy
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)


def test_state_with_other_layout_and_chained_calls():
    # two chained calls (truncated BPTT): gradients flow through the returned state into the first call
    x = _inputs((6, 3, 4, 5), torch.float64, seed=5)
    for kw in (dict(leak=0.9), dict(reset_leak=False, leak=0.7), dict(leak_mode="decay_state", tau=3.0, v_reset=0.0)):
        res = []
        for fn in (KERNEL, lif_multistep):
            xi = x.detach().clone().requires_grad_(True)
            y1, s1, _ = fn(xi[:3], None, **kw)
            # hand the state over in a transposed layout
            s1 = LIFState(s1.v.transpose(1, 2).contiguous().transpose(1, 2),
                          None if s1.last_reset is None else s1.last_reset * 1.0)
            y2, s2, _ = fn(xi[3:], s1, **kw)
            loss = (y1 * 1.3).sum() + (y2 * torch.linspace(-1, 1, y2.numel(), dtype=y2.dtype).view_as(y2)).sum()
            loss = loss + s2.v.sum()
            res.append((torch.cat([y1, y2]), s2.v, torch.autograd.grad(loss, xi)[0]))
        torch.testing.assert_close(res[0][0], res[1][0], atol=0, rtol=0)
        torch.testing.assert_close(res[0][1], res[1][1], atol=0, rtol=0)
        torch.testing.assert_close(res[0][2], res[1][2], atol=1e-10, rtol=1e-10)


def test_initial_state_gradients():
    x = _inputs((4, 2, 9), torch.float64, seed=8)
    v = _inputs((2, 9), torch.float64, seed=9)
    lr = (torch.rand(2, 9, dtype=torch.float64) < 0.4).double()
    _compare(x, dict(reset_leak=False, leak=0.8), state=LIFState(v, lr), learn=("leak",))
    _compare(x, dict(leak=0.8), state=LIFState(v, None))
    _compare(x, dict(leak_mode="decay_input", tau=2.0), state=LIFState(v, None), learn=("tau",))


def test_tensor_v_init_and_learnable_v_init():
    x = _inputs((3, 2, 4), torch.float64, seed=12)
    per_elem = torch.linspace(0, 0.9, 8, dtype=torch.float64).view(2, 4)
    _compare(x, dict(v_init=per_elem))
    vi = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y1, s1, _ = KERNEL(x, v_init=vi)
    (g1,) = torch.autograd.grad(y1.sum() + s1.v.sum(), vi)
    y2, s2, _ = lif_multistep(x, v_init=vi)
    (g2,) = torch.autograd.grad(y2.sum() + s2.v.sum(), vi)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-10)


def test_poisoned_output_buffers(poisoned):
    assert torch.isnan(torch.empty(4)).all()
    x = _inputs((4, 3, 33), torch.float32, seed=13)
    _compare(x, dict(v_threshold=1.0, leak=0.9), dtype=torch.float32, learn=("v_threshold", "leak"))
    _compare(x, dict(reset_leak=False, leak=0.9), dtype=torch.float32)
    y, st, _ = KERNEL(x.requires_grad_(True), v_init=0.2)
    (g,) = torch.autograd.grad(y.sum() + st.v.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(st.v).all() and torch.isfinite(g).all()


def test_float32_mixed_scalar_dtypes():
    # 0-d float64 parameters with float32 data: PyTorch casts the scalar to float32; so must the kernel
    x = _inputs((5, 4, 6), torch.float32, seed=14)
    kw = dict(v_threshold=torch.tensor(0.7, dtype=torch.float64), leak=torch.tensor(0.9, dtype=torch.float64),
              v_init=torch.tensor(0.3, dtype=torch.float64), surrogate_form="normalized", payload="threshold")
    _compare(x, kw, dtype=torch.float32)


def test_no_grad_and_inference_mode():
    x = _inputs((4, 2, 8), torch.float32, seed=15)
    ref = lif_multistep(x, v_init=0.5)[0]
    with torch.no_grad():
        torch.testing.assert_close(KERNEL(x, v_init=0.5)[0], ref, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(KERNEL(x, v_init=0.5)[0], ref, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ fallbacks
class _MySurrogate(Sigmoid):
    def derivative(self, x):
        return super().derivative(x) * 2


@pytest.mark.parametrize("case", ["per_channel_theta", "store_v_seq", "custom_surrogate", "non_spiking",
                                  "half", "int_theta", "tensor_v_reset", "bad_option"])
def test_fallback_to_reference(case, spy):
    x = _inputs((3, 2, 4, 5), torch.float64, seed=16)
    kw = dict(v_threshold=1.0)
    if case == "per_channel_theta":
        kw["v_threshold"] = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64).view(4, 1)
    elif case == "store_v_seq":
        kw["store_v_seq"] = True
    elif case == "custom_surrogate":
        kw["surrogate"] = _MySurrogate()
    elif case == "non_spiking":
        kw["surrogate"] = Sigmoid(spiking=False)
    elif case == "half":
        x = x.to(torch.bfloat16)
    elif case == "int_theta":
        kw["v_threshold"] = torch.tensor(1)
    elif case == "tensor_v_reset":
        kw["v_reset"] = torch.tensor(0.0, dtype=torch.float64)
    if case == "bad_option":
        with pytest.raises(ValueError, match="leak_mode"):
            KERNEL(x, leak_mode="nope")
        assert not spy
        return
    y1, s1, v1 = KERNEL(x, **kw)
    y2, s2, v2 = lif_multistep(x, **kw)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    torch.testing.assert_close(s1.v, s2.v, atol=0, rtol=0)
    if case == "store_v_seq":
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)
    assert not spy


def test_library_unavailable_falls_back(monkeypatch, spy):
    monkeypatch.setattr(_build, "load_library", lambda: None)
    x = _inputs((3, 2, 5), torch.float64)
    torch.testing.assert_close(KERNEL(x, v_init=0.5)[0], lif_multistep(x, v_init=0.5)[0], atol=0, rtol=0)
    assert not spy


def test_build_failure_warns_once_and_falls_back(tmp_path):
    # a fresh process whose only "compiler" always fails, with an empty cache
    fake = tmp_path / "broken-cxx"
    fake.write_text("#!/bin/sh\necho 'fake compiler: cannot compile' >&2\nexit 1\n")
    fake.chmod(0o755)
    code = textwrap.dedent("""
        import warnings, torch
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as rec:
            import multispike as ms
            from multispike.kernels import lif_cpp, build_info, CppBuildWarning
            x = torch.full((4, 1), 0.5)
            a = lif_cpp.lif_multistep_cpp(x, v_init=0.5)[0]
            b = lif_cpp.lif_multistep_cpp(x, v_init=0.5)[0]
        msgs = [w for w in rec if issubclass(w.category, CppBuildWarning)]
        assert len(msgs) == 1, [str(w.message) for w in rec]
        assert a.flatten().tolist() == [1.0, 0.0, 1.0, 0.0] and torch.equal(a, b)
        assert build_info()["status"] == "unavailable"
        print("OK")
    """)
    env = dict(os.environ, CXX=str(fake), PATH=str(tmp_path), MULTISPIKE_KERNEL_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ modules
def test_auto_backend_uses_kernel_on_cpu(spy):
    assert resolve_backend("lif", "auto", "cpu") == "cpp"
    assert get_kernel("lif", "cpp") is KERNEL
    x = _inputs((4, 2, 3, 5, 5), torch.float32, seed=17).requires_grad_(True)
    ref = ms.IFNeuron(v_threshold=1.0, v_init=0.5, step_mode="m", backend="torch")
    for nrn in (ms.IFNeuron(v_threshold=1.0, v_init=0.5, step_mode="m", backend="auto"),
                ms.IFNeuron(v_threshold=1.0, v_init=0.5, step_mode="m", backend="cpp")):
        y = nrn(x)
        y_ref = ref(x)
        torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
        torch.testing.assert_close(nrn.v, ref.v, atol=0, rtol=0)
        g1 = torch.autograd.grad(y.sum(), x)[0]
        g2 = torch.autograd.grad(y_ref.sum(), x)[0]
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-6)
        ms.reset_net(nrn)
        ms.reset_net(ref)
    assert len(spy) == 2
    assert "cpp" in ms.IFNeuron().supported_backends


def test_lif_module_learnable_parameters_through_kernel(spy):
    x = _inputs((4, 3, 6), torch.float64, seed=18)
    grads = []
    for backend in ("cpp", "torch"):
        nrn = ms.LIFNeuron(tau=2.0, leak_mode="decay_input", learnable_leak=True, learnable_threshold=True,
                           step_mode="m", backend=backend, surrogate_function=ATan()).double()
        y = nrn(x)
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
        grads.append((y, nrn.v_threshold.grad, nrn.leak_param.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0][2], grads[1][2], atol=1e-10, rtol=1e-10)
    assert len(spy) == 1


def test_seq_to_ann_container_channels_last(spy):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(memory_format=torch.channels_last)
    container = ms.layers.SeqToANNContainer(conv, torch.nn.BatchNorm2d(8))
    x = torch.randn(4, 2, 3, 8, 8)
    x_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)
    z = container(x_cl)
    assert z.shape == (4, 2, 8, 8, 8) and not z.is_contiguous()
    assert z.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z, container(x), atol=1e-5, rtol=1e-5)  # same values as the contiguous path
    nrn = ms.IFNeuron(step_mode="m", backend="auto")
    y = nrn(z)
    assert spy and y.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)  # layout kept, no copy
    torch.testing.assert_close(y, lif_multistep(z)[0], atol=0, rtol=0)
    # and the next container consumes the channels_last spikes
    out = ms.layers.SeqToANNContainer(torch.nn.Conv2d(8, 4, 1).to(memory_format=torch.channels_last))(y)
    assert out.shape == (4, 2, 4, 8, 8)


def test_buffer_pool_reuse_is_safe():
    from multispike.kernels._common import POOL, empty_cache
    if not POOL.enabled:
        pytest.skip("buffer pool disabled")
    x = _inputs((4, 8, 64, 1024), torch.float32, seed=40)  # 8 MiB outputs: pooled
    y1 = KERNEL(x)[0]
    keep = y1.clone()
    y2 = KERNEL(x)[0]
    assert y2.data_ptr() != y1.data_ptr()  # y1 is alive: its block is not handed out again
    torch.testing.assert_close(y1, keep, atol=0, rtol=0)
    p1 = y1.data_ptr()
    view = y1[1:]
    del y1
    assert KERNEL(x)[0].data_ptr() != p1  # a view keeps the block alive
    del view
    y3 = KERNEL(x)[0]
    assert y3.data_ptr() == p1  # released: reused without a fresh allocation
    y3.resize_(y3.numel() * 2)  # resizing a handed-out tensor resizes its storage: that block is retired
    del y3
    y4 = KERNEL(x)[0]
    torch.testing.assert_close(y4, keep, atol=0, rtol=0)
    empty_cache()


def test_buffer_pool_best_fit_reuses_a_larger_unused_block_within_its_factor():
    from multispike.kernels._common import BufferPool

    pool = BufferPool(1 << 30, min_bytes=1024, reuse_factor=4)
    exact = BufferPool(1 << 30, min_bytes=1024)
    if not pool.enabled:
        pytest.skip("buffer pool unavailable (private storage API)")
    big = pool.empty((4, 1024), (1024, 1), torch.float32)          # 16 KiB block
    big_ptr = big.data_ptr()
    held = pool.empty((4, 256), (256, 1), torch.float32)           # in use: a new 4 KiB block
    assert held.data_ptr() != big_ptr
    del big
    small = pool.empty((2, 512), (512, 1), torch.float32)          # 4 KiB: the free 16 KiB block serves it
    assert small.data_ptr() == big_ptr and small.shape == (2, 512) and small.stride() == (512, 1)
    small.fill_(1.0)
    assert torch.equal(small, torch.ones(2, 512))
    assert pool.cached_bytes == (4096 + 1024) * 4                  # no growth
    del small
    tiny = pool.empty((256,), (1,), torch.float32)                 # 1 KiB: 16 KiB is beyond 4x, 4 KiB block is in use
    assert tiny.data_ptr() != big_ptr
    e = exact.empty((4, 1024), (1024, 1), torch.float32)
    e_ptr = e.data_ptr()
    del e
    assert exact.empty((2, 512), (512, 1), torch.float32).data_ptr() != e_ptr   # the default reuses exact sizes
