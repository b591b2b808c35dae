"""Triton backend: registration, lazy import and CPU fallback everywhere; kernel semantics in Triton's
interpreter when ``triton`` is installed (the GPU itself is checked by ``benchmarks/gpu_check.py``)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import multispike as ms
from multispike.kernels import triton_kernels as tk
from multispike.kernels.registry import available_backends, resolve_backend
from multispike.neurons import lif_multistep
from multispike.neurons.lmht import lmht_multistep
from multispike.neurons.mlif import mlif_multistep


def test_registered_for_cuda_only():
    for family in ("lif", "mlif", "lmht"):
        assert "triton" in available_backends(family, "cuda")
        assert "triton" not in available_backends(family, "cpu")
        assert resolve_backend(family, "auto", "cuda") == "triton"
        assert resolve_backend(family, "auto", "cpu") == "cpp"
        with pytest.raises(ValueError, match="does not run on device type 'cpu'"):
            resolve_backend(family, "triton", "cpu")


def test_importing_multispike_does_not_import_triton():
    code = "import sys, multispike, multispike.kernels; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("False")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter mode runs CPU tensors")
def test_cpu_tensors_fall_back_to_reference():
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(tk.lif_multistep_triton(x, v_init=0.5)[0], lif_multistep(x, v_init=0.5)[0],
                               atol=0, rtol=0)
    torch.testing.assert_close(tk.mlif_multistep_triton(x * 3, lanes=3)[0], mlif_multistep(x * 3, lanes=3)[0],
                               atol=0, rtol=0)
    torch.testing.assert_close(tk.lmht_multistep_triton(x, levels=2, v_threshold=0.5)[0],
                               lmht_multistep(x, levels=2, v_threshold=0.5)[0], atol=0, rtol=0)


_INTERPRETER_CHECK = textwrap.dedent("""
    import itertools, os, sys, torch
    os.environ["TRITON_INTERPRET"] = "1"
    import triton, triton.language as tl

    @triton.jit
    def _probe(x_ptr, T):
        for t in range(T):
            tl.store(x_ptr + tl.cast(t, tl.int64), t * 1.0)
    try:
        _probe[(1,)](torch.zeros(3), 3)
    except Exception as exc:  # some triton/numpy combinations cannot interpret scalar loop bounds
        print("SKIP interpreter unusable here:", type(exc).__name__, exc)
        sys.exit(0)

    from multispike.kernels import triton_kernels as tk
    from multispike.neurons import lif_multistep
    from multispike.neurons.lmht import lmht_multistep
    from multispike.neurons.mlif import mlif_multistep
    from multispike.neurons.surrogate import ATan, Rectangular, Sigmoid, Triangle

    def check(kfn, rfn, x, kw, learn):
        outs = []
        for fn in (kfn, rfn):
            xi = x.clone().requires_grad_(True)
            kwi, leaves = dict(kw), [xi]
            for n in learn:
                v = kwi[n]
                kwi[n] = (v.clone() if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=x.dtype)).requires_grad_(True)
                leaves.append(kwi[n])
            y, st, _ = fn(xi, None, **kwi)
            g = torch.Generator().manual_seed(1)
            loss = (y * torch.randn(y.shape, generator=g, dtype=x.dtype)).sum()
            loss = loss + (st.v * torch.randn(st.v.shape, generator=g, dtype=x.dtype)).sum()
            outs.append((y, st.v, torch.autograd.grad(loss, leaves, allow_unused=True)))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), kw
        for a, b in zip(outs[0][2], outs[1][2]):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any()), kw
            else:
                torch.testing.assert_close(a, b, atol=1e-10 * max(1.0, float(b.abs().max())), rtol=1e-10)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 37, generator=g, dtype=torch.float64) * 0.8 + 0.3
    x = torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.3, torch.round(x * 8) / 8, x)
    n = 0
    for (lm, rl, vr), surr, form, pay in itertools.product(
            [("post_reset", True, None), ("post_reset", False, None), ("post_reset", True, 0.0),
             ("decay_input", True, 0.0), ("decay_state", True, None)],
            [Sigmoid(), ATan(), Rectangular(0.8), Triangle(form="diet")], ["difference", "normalized"],
            ["spike", "threshold"]):
        kw = dict(v_threshold=0.9, v_init=0.2, leak=0.9, tau=2.5, leak_mode=lm, reset_leak=rl, v_reset=vr,
                  surrogate=surr, surrogate_form=form, payload=pay, detach_reset=n % 3 == 0, fire_ge=n % 4 != 1)
        check(tk.lif_multistep_triton, lif_multistep, x, kw, ["v_threshold", "leak" if lm == "post_reset" else "tau"])
        n += 1
    for i, ((reset, rl, di), surr) in enumerate(itertools.product(
            [("soft", False, False), ("soft", True, False), ("hard", False, False), ("hard", False, True)],
            ["paper_difference", "code_sum", "fast_unscaled"])):
        kw = dict(lanes=(3, 1, 4)[i % 3], v_threshold=0.6, leak=0.9, v_init=0.1, reset=reset, reset_leak=rl,
                  decay_input=di, lane_bounds=("paper", "floor")[i % 2], scaled=i % 4 == 3, surrogate=surr,
                  shape=("triangle", "sigmoid")[(i // 2) % 2], fire_ge=i % 5 == 0, detach_reset=i % 3 == 1)
        check(tk.mlif_multistep_triton, mlif_multistep, x * 2 + 0.5, kw, ["v_threshold", "leak"])
        n += 1
    om = torch.rand(5, 5, generator=g, dtype=torch.float64)
    for levels, omega, dt in itertools.product([1, 3], [None, om], [True, False]):
        kw = dict(levels=levels, omega=omega, leak=0.9, v_threshold=0.5, v_init=0.25, in_scale=2.0 if dt else 1.0,
                  detach_temporal=dt, detach_reset=dt)
        check(tk.lmht_multistep_triton, lmht_multistep, x * 2, kw, ["leak"] + (["omega"] if omega is not None else []))
        n += 1
    xl = torch.randn(40, 2, 9, generator=g, dtype=torch.float64) * 0.8 + 0.3   # T > 32: scratch-buffer backward
    check(tk.lif_multistep_triton, lif_multistep, xl, dict(v_threshold=0.9, leak=0.9, reset_leak=False),
          ["v_threshold", "leak"])
    check(tk.lmht_multistep_triton, lmht_multistep, xl * 2, dict(levels=2, v_threshold=0.5, leak=0.9,
          detach_temporal=False), ["leak"])
    print("OK", n + 2)
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _INTERPRETER_CHECK], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    if res.stdout.startswith("SKIP"):
        pytest.skip(res.stdout.strip())
    assert "OK" in res.stdout


def test_module_backend_triton_on_cpu_is_rejected_clearly():
    nrn = ms.IFNeuron(step_mode="m", backend="triton")
    with pytest.raises(ValueError, match="triton"):
        nrn(torch.randn(2, 3))
