"""TET loss and CE on the time mean against hand computations (algorithms.md §2.5, §7.6)."""
import math

import pytest
import torch
import torch.nn.functional as F

from multispike.train import CEOnMean, TETLoss, build_loss, ce_on_mean, tet_loss


def _hand_ce(logits: list[float], label: int, eps: float = 0.0) -> float:
    """-Σ_k q_k log softmax(z)_k with q = (1-ε)·onehot + ε/K, written out with math.* only."""
    K = len(logits)
    m = max(logits)
    lse = m + math.log(sum(math.exp(z - m) for z in logits))
    logp = [z - lse for z in logits]
    q = [(1 - eps) * (k == label) + eps / K for k in range(K)]
    return -sum(qk * lp for qk, lp in zip(q, logp))


@pytest.fixture
def seq():
    g = torch.Generator().manual_seed(3)
    O = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)   # T=3, B=4, K=5
    y = torch.tensor([0, 4, 2, 2])
    return O, y


def test_tet_matches_hand_computation(seq):
    O, y = seq
    T, B, K = O.shape
    lam, phi = 1e-3, 1.0
    ce_t = [sum(_hand_ce(O[t, b].tolist(), int(y[b])) for b in range(B)) / B for t in range(T)]
    mse = sum((v - phi) ** 2 for v in O.flatten().tolist()) / O.numel()
    expected = (1 - lam) * sum(ce_t) / T + lam * mse
    got = tet_loss(O, y)   # defaults λ = 1e-3, φ = 1.0
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_tet_with_label_smoothing_and_other_lambda_phi(seq):
    O, y = seq
    T, B, _ = O.shape
    lam, phi, eps = 0.25, 0.5, 0.1
    ce = sum(_hand_ce(O[t, b].tolist(), int(y[b]), eps) for t in range(T) for b in range(B)) / (T * B)
    mse = sum((v - phi) ** 2 for v in O.flatten().tolist()) / O.numel()
    got = TETLoss(lam=lam, phi=phi, label_smoothing=eps)(O, y)
    assert got.item() == pytest.approx((1 - lam) * ce + lam * mse, rel=1e-12)


def test_tet_lambda_zero_is_mean_of_per_step_ce(seq):
    O, y = seq
    per_step = torch.stack([F.cross_entropy(O[t], y) for t in range(O.shape[0])]).mean()
    torch.testing.assert_close(tet_loss(O, y, lam=0.0), per_step, rtol=1e-14, atol=0)


def test_tet_gradient_matches_finite_differences(seq):
    O, y = seq
    O = O.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: tet_loss(o, y, lam=0.3, phi=0.7, label_smoothing=0.05), (O,))


def test_ce_on_mean_matches_hand_computation(seq):
    O, y = seq
    mean = O.mean(0)
    expected = sum(_hand_ce(mean[b].tolist(), int(y[b]), 0.2) for b in range(O.shape[1])) / O.shape[1]
    assert ce_on_mean(O, y, label_smoothing=0.2).item() == pytest.approx(expected, rel=1e-12)
    assert CEOnMean(0.2)(O, y).item() == pytest.approx(expected, rel=1e-12)


def test_ce_on_mean_differs_from_tet_when_steps_disagree():
    # Two steps voting for different classes: the time mean is uncertain, each step is confident.
    O = torch.tensor([[[4.0, -4.0]], [[-4.0, 4.0]]], dtype=torch.float64)
    y = torch.tensor([0])
    assert ce_on_mean(O, y).item() == pytest.approx(math.log(2), rel=1e-12)
    assert tet_loss(O, y, lam=0).item() == pytest.approx((_hand_ce([4, -4], 0) + _hand_ce([-4, 4], 0)) / 2, rel=1e-12)


def test_build_loss_names_and_errors(seq):
    O, y = seq
    assert isinstance(build_loss("tet"), TETLoss)
    assert isinstance(build_loss("ce_mean"), CEOnMean)
    torch.testing.assert_close(build_loss("ce", label_smoothing=0.1)(O[0], y),
                               F.cross_entropy(O[0], y, label_smoothing=0.1))
    with pytest.raises(ValueError, match="unknown loss 'mse'.*ce, ce_mean, tet"):
        build_loss("mse")
    with pytest.raises(ValueError, match=r"forward_sequence"):
        tet_loss(O[0], y)
    with pytest.raises(ValueError, match=r"lam .* \[0, 1\]"):
        tet_loss(O, y, lam=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        ce_on_mean(O, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"targets must be class indices of shape \[B=4\]"):
        ce_on_mean(O, y[:2])
