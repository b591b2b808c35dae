"""ANN -> SNN converter: BN folding, functional activations, report, exactness on a QCFS network."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import multispike as ms
from multispike.convert.converter import ConversionError, TimeMergedSNN, activation_thresholds, convert_to_snn
from multispike.convert.fuse import fold_bn, swap_maxpool
from multispike.layers import SeqToANNContainer
from multispike.quant import QCFS


class FunctionalNet(nn.Module):
    """Uses every spelling of ReLU users write, plus BN and MaxPool."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c3 = nn.Conv2d(6, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.act(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = torch.relu(self.c3(x)).relu()
        return self.fc(torch.flatten(self.pool(x), 1))


def _trained_bn(net, shape=(32, 1, 8, 8)):
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(*shape))
    return net.eval()


def test_bn_folding_preserves_eval_outputs():
    torch.manual_seed(0)
    net = _trained_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(4 * 6 * 6, 6, bias=False), nn.BatchNorm1d(6)), shape=(32, 3, 8, 8))
    x = torch.randn(5, 3, 8, 8)
    before = net(x)
    records = fold_bn(net)
    assert len(records) == 2 and isinstance(net[1], nn.Identity) and isinstance(net[5], nn.Identity)
    assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_bn_folding_inside_time_major_container():
    torch.manual_seed(0)
    inner = SeqToANNContainer(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    inner.train()
    inner(torch.randn(2, 8, 2, 6, 6))
    inner.eval()
    x = torch.randn(3, 2, 2, 6, 6)
    before = inner(x)
    assert len(fold_bn(inner)) == 1
    assert_close(inner(x), before, atol=1e-5, rtol=1e-5)


def test_swap_maxpool_keeps_geometry():
    net = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1))
    assert swap_maxpool(net) == ["0"]
    pool = net[0]
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 1


def test_functional_relus_are_converted_and_reported():
    torch.manual_seed(0)
    net = _trained_bn(FunctionalNet())
    x = torch.rand(16, 1, 8, 8)
    snn, report = convert_to_snn(net, T=8, threshold="99.9%", calibration_data=[x])
    assert isinstance(snn, TimeMergedSNN)
    replaced = report.replaced
    assert len(replaced) == 4  # nn.ReLU, F.relu, torch.relu, Tensor.relu
    ops = {e["op"] for e in report.entries if e["action"] == "rewritten"}
    assert any("relu" in op for op in ops) and len(report.by_action("rewritten")) == 3
    assert len(report.by_action("folded")) == 2 and len(report.by_action("swapped")) == 1
    assert "replaced" in str(report) and report.to_dict()["counts"]["replaced"] == 4
    out = snn(x)
    assert out.shape == (16, 5)


def test_unsupported_ops_raise_and_are_listed():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gelu = nn.GELU()

        def forward(self, x):
            return torch.sigmoid(self.gelu(self.fc(x)))

    with pytest.raises(ConversionError, match=r"(?s)gelu.*sigmoid"):
        convert_to_snn(Bad(), T=4, threshold="max", calibration_data=[torch.randn(2, 4)])


def test_bad_arguments():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ConversionError, match="calibration_data"):
        convert_to_snn(net, T=4, threshold="99%")
    with pytest.raises(ConversionError, match="QCFS"):
        convert_to_snn(net, T=4, threshold="qcfs")
    with pytest.raises(ValueError, match="T must be >= 1"):
        convert_to_snn(net, T=0, threshold="max", calibration_data=[torch.randn(2, 3)])
    with pytest.raises(ValueError, match="percentile"):
        convert_to_snn(net, T=2, threshold="250%", calibration_data=[torch.randn(2, 3)])
    with pytest.raises(ConversionError, match="MaxPool"):
        convert_to_snn(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.MaxPool2d(2)), T=2, threshold="max",
                       calibration_data=[torch.randn(1, 1, 4, 4)], maxpool="error")
    with pytest.raises(ConversionError, match="no ReLU"):
        convert_to_snn(nn.Sequential(nn.Linear(2, 2)), T=2, threshold="max", calibration_data=[torch.randn(1, 2)])


@pytest.mark.parametrize("Q", [1, 2, 4, 8])
def test_qcfs_one_hidden_layer_snn_equals_ann_exactly_at_T_equal_Q(Q):
    """§3.2: with constant input (direct encoding), IF(θ=ϑ, v0=θ/2) over T=Q steps equals QCFS with Q levels,
    and the linear read-out of the time mean equals the ANN output."""
    torch.manual_seed(Q)
    ann = nn.Sequential(nn.Linear(6, 16), QCFS(levels=Q, threshold=1.5), nn.Linear(16, 3)).double()
    x = torch.rand(64, 6, dtype=torch.float64)
    snn, report = convert_to_snn(ann, T=Q, threshold="qcfs")
    assert [e["detail"].split()[-1] for e in report.replaced] == ["θ=1.5"]
    ms.reset_net(snn)
    assert_close(snn(x), ann(x), atol=1e-12, rtol=0)


def test_time_major_models_are_converted_in_place_by_module_swap():
    class TimeMajor(nn.Module):
        time_major = True

        def __init__(self):
            super().__init__()
            self.T = 1
            self.fc1 = SeqToANNContainer(nn.Linear(4, 8))
            self.act = QCFS(levels=4, threshold=2.0)
            self.fc2 = SeqToANNContainer(nn.Linear(8, 2))

        def forward(self, x):
            x = x.unsqueeze(0).expand(self.T, *x.shape)
            return self.fc2(self.act(self.fc1(x))).mean(0)

    ann = TimeMajor().double()
    x = torch.rand(10, 4, dtype=torch.float64)
    snn, report = convert_to_snn(ann, T=4, threshold="qcfs")
    assert snn.T == 4 and isinstance(snn.act, ms.IFNeuron)
    assert_close(snn(x), ann(x), atol=1e-12, rtol=0)


def test_activation_thresholds_percentile_and_max():
    net = nn.Sequential(nn.Identity(), nn.ReLU())
    data = [torch.arange(1, 1001, dtype=torch.float32).view(1, -1)]
    assert activation_thresholds(net, data, "max") == {"1": 1000.0}
    assert activation_thresholds(net, data, "99.9%") == {"1": 999.0}
    assert activation_thresholds(net, data, 50.0) == {"1": 501.0}
