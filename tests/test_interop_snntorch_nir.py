"""snnTorch <-> NIR <-> multispike, against the installed snnTorch 1.0 (issue 17; runs in CI via the 'interop'
extra). The other direction, multispike -> NIR -> snnTorch, is tests/test_export_nir.py::
test_snntorch_reads_our_if_mode_lif_export_exactly."""
import warnings

import pytest
import torch

pytest.importorskip("nir", reason="NIR export needs the optional extra multispike[nir]")
snn = pytest.importorskip("snntorch", reason="snnTorch is in the 'interop' test extra (make test installs it)")
from snntorch import utils as snn_utils  # noqa: E402
from snntorch.export_nir import export_to_nir as snn_export  # noqa: E402

import nir  # noqa: E402

from multispike.export import import_from_nir  # noqa: E402


def _snntorch_net(seed=0):
    torch.manual_seed(seed)
    # snnTorch's exporter (1.0 with nir 1.0.8) needs per-neuron beta/threshold for NIR's type inference, and
    # reset_mechanism="zero" (NIR's LIF resets to v_reset; "subtract" would be lost in the graph).
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        snn.Leaky(beta=torch.full((8,), 0.8), threshold=torch.full((8,), 0.4), init_hidden=True,
                  reset_mechanism="zero"),
        torch.nn.Linear(8, 4),
        snn.Leaky(beta=torch.linspace(0.7, 0.95, 4), threshold=torch.full((4,), 0.3), init_hidden=True,
                  reset_mechanism="zero", output=True))


def _run_snntorch(net, x):
    snn_utils.reset(net)
    spikes = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            spk, _ = net(x[t])
            spikes.append(spk)
    return torch.stack(spikes)


def test_snntorch_graph_imports_exactly_with_snntorchs_dt(tmp_path):
    net = _snntorch_net()
    graph = snn_export(net, torch.rand(6))
    assert "dt" not in graph.metadata  # snnTorch writes none: the importer must choose, and say so
    path = tmp_path / "snntorch.nir"
    nir.write(path, graph)
    x = torch.rand(24, 5, 6, generator=torch.Generator().manual_seed(100)) * 3.0
    ref = _run_snntorch(net, x)
    assert 0 < float(ref.sum()) < ref.numel()  # the comparison is not vacuous
    with pytest.warns(UserWarning, match="snnTorch's export/import step"):
        ours = import_from_nir(path)
    torch.testing.assert_close(ours(x), ref, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit dt is not warned about
        explicit = import_from_nir(graph, dt=1e-4)
    torch.testing.assert_close(explicit(x), ref, rtol=0, atol=0)
    # the old default (dt = 1) misreads snnTorch's r = τ/dt and τ = dt/(1 − β): many spikes change
    wrong = import_from_nir(graph, dt=1.0)(x)
    assert int((wrong != ref).sum()) > ref.numel() // 10
