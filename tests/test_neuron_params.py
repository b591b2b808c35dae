"""Parameter records of the neuron families and the kernels' call ABI (issue 18).

The records (multispike.neurons.params) are the one declaration of each family's options: the reference
functions must take exactly their fields with the same defaults, every fused entry point gets its signature
from them, and the C++ library's argument records must match their ctypes mirrors."""
from __future__ import annotations

import ctypes
import dataclasses
import inspect

import pytest
import torch

import multispike as ms
from multispike.kernels import _abi, _build, lif_cpp, lmht_cpp, mlif_cpp, triton_kernels
from multispike.neurons import lif_multistep
from multispike.neurons.lmht import lmht_multistep
from multispike.neurons.mlif import OneHotMLIF, mlif_multistep
from multispike.neurons.params import LIFParameters, LMHTParameters, MLIFParameters

FAMILIES = [(LIFParameters, lif_multistep, lif_cpp.lif_multistep_cpp, triton_kernels.lif_multistep_triton),
            (LMHTParameters, lmht_multistep, lmht_cpp.lmht_multistep_cpp, triton_kernels.lmht_multistep_triton),
            (MLIFParameters, mlif_multistep, mlif_cpp.mlif_multistep_cpp, triton_kernels.mlif_multistep_triton)]


def _options(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("record, ref, cpp, tri", FAMILIES, ids=["lif", "lmht", "mlif"])
def test_reference_options_are_the_record(record, ref, cpp, tri):
    fields = {f.name: (inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(record)}
    assert _options(ref) == fields
    for entry in (cpp, tri):  # generated from the record: the reference's signature, names in the same order
        assert list(inspect.signature(entry).parameters) == list(inspect.signature(ref).parameters)
        assert _options(entry) == fields


def test_records_are_frozen_and_reject_unknown_options():
    p = LIFParameters(v_threshold=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.v_threshold = 1.0
    assert p.replace(leak=0.9).leak == 0.9 and p.leak == 1.0
    with pytest.raises(TypeError, match="lif_multistep_cpp.*'threshold'.*v_threshold"):
        lif_cpp.lif_multistep_cpp(torch.zeros(2, 3), threshold=1.0)
    with pytest.raises(TypeError, match="missing required keyword argument.*'levels'"):
        lmht_cpp.lmht_multistep_cpp(torch.zeros(2, 3), v_threshold=1.0)


def test_modules_describe_their_dynamics_with_records():
    x = torch.rand(4, 2, 3) * 2
    lif = ms.LIFNeuron(decay=0.5, leak_mode="post_reset", v_reset=None, step_mode="m")
    p = lif.dynamics_params()
    assert isinstance(p, LIFParameters) and p.leak is lif.leak_param and p.leak_mode == "post_reset"
    torch.testing.assert_close(lif(x), lif_multistep(x, **p.as_kwargs())[0], rtol=0, atol=0)
    mht = ms.MHTNeuron(levels=3, v_threshold=0.5, step_mode="m")
    assert isinstance(mht.dynamics_params(), LMHTParameters) and mht.dynamics_params().levels == 3
    mlif = OneHotMLIF(lanes=4, step_mode="m")
    q = mlif.dynamics_params()
    assert isinstance(q, MLIFParameters) and q.lanes == 4
    torch.testing.assert_close(mlif(x), mlif_multistep(x, **q.as_kwargs())[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match="no parameter record"):
        ms.neurons.plif.ParametricLIFNode().dynamics_params()


def test_library_argument_records_match_ctypes():
    lib = _build.load_library()
    if lib is None:
        pytest.skip("C++ kernels unavailable: " + str(_build.build_info()))
    assert lib.ms_abi_version() == _build.ABI_VERSION
    for record, index in _abi.ARGS_INDEX.items():
        assert lib.ms_args_size(index) == ctypes.sizeof(record), record.__name__


def test_sources_are_package_files_and_the_cache_key_covers_the_header():
    src = _build._sources()
    assert "ms_common.h" in src and {"lif.cpp", "mlif.cpp", "lmht.cpp"} <= set(src)
    assert all('#include "ms_common.h"' in text for name, text in src.items() if name.endswith(".cpp"))
    changed = dict(src, **{"ms_common.h": src["ms_common.h"] + "\n// edited\n"})
    assert _build._source_digest(changed) != _build._source_digest(src)
    renamed = {("x" + k if k == "abi.cpp" else k): v for k, v in src.items()}
    assert _build._source_digest(renamed) != _build._source_digest(src)


def test_plan_fills_every_field_of_its_record():
    x = torch.rand(3, 2, 4)
    planned = [lif_cpp.lif_plan(x, None, LIFParameters(v_threshold=0.7, leak_mode="decay_input")),
               mlif_cpp.mlif_plan(x, None, MLIFParameters(lanes=3)),
               lmht_cpp.lmht_plan(x, None, LMHTParameters(levels=2, v_threshold=0.5))]
    for plan, *_ in planned:
        rec = plan.c_args((True,) * len(plan.params))
        for name in rec.doubles:
            assert getattr(rec, name) == pytest.approx(float(plan.scalars[name]))
        assert all(getattr(rec, need) in (0, 1) for need in plan.need)
