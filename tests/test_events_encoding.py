"""Multi-level input encoding (algorithms.md §5.5, invariant §5.8.5): OR grouping, G = 2^(S-1), Q_F = ceil(T_F/G)
with padding, log-quantised counts, one-hot lanes, merged value, resize and augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from multispike.data.events import (MultiLevelEncoder, augment_lanes, binarize_frames, encode_multilevel,
                                    encoded_steps, group_size, log_quantize_counts, merge_lanes, multilevel_lanes,
                                    resize_lanes)


def _frames_with_group_counts(counts: list[int], G: int, H: int = 2, W: int = 3) -> torch.Tensor:
    """Binary frames [len(counts)·G, 2, H, W] whose groups of G hold `counts[q]` ones at pixel (0, 0, 0)."""
    out = torch.zeros(len(counts) * G, 2, H, W, dtype=torch.uint8)
    for q, c in enumerate(counts):
        out[q * G: q * G + c, 0, 0, 0] = 1
    return out


def test_hand_made_G4_counts_give_lanes_none_s0_s1_s2_s2():
    # S_i = 3 -> G = 4; counts [0, 1, 2, 3, 4] -> C' = [0, 1, 2, 4, 4] -> lanes {∅, s0, s1, s2, s2}
    lanes = multilevel_lanes(_frames_with_group_counts([0, 1, 2, 3, 4], G=4), lanes=3)
    assert lanes.shape == (5, 3, 2, 2, 3) and lanes.dtype == torch.float32
    at_pixel = lanes[:, :, 0, 0, 0]
    expected = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32)
    assert_close(at_pixel, expected, atol=0, rtol=0)
    assert lanes[:, :, 1].sum() == 0 and lanes[:, :, :, 1:].sum() == 0 and lanes[:, :, 0, 0, 1:].sum() == 0
    assert_close(merge_lanes(lanes)[:, 0, 0, 0], torch.tensor([0.0, 1, 2, 4, 4]), atol=0, rtol=0)


@pytest.mark.parametrize("S,T_F,Q_F", [(4, 80, 10), (3, 40, 10), (4, 40, 5), (3, 20, 5), (4, 20, 3), (3, 10, 3)])
def test_readme_QF_table(S, T_F, Q_F):
    assert encoded_steps(T_F, S) == Q_F
    raw = torch.randint(0, 2, (T_F, 2, 4, 4), generator=torch.Generator().manual_seed(S * 100 + T_F))
    assert MultiLevelEncoder(T_F=T_F, lanes=S)(raw).shape == (Q_F, S, 2, 4, 4)


def test_log_quantisation_values():
    c = torch.arange(0, 9)
    # G = 4: 1->1, 2->2, 3->4, 4->4;  G = 8: 3->4, 5->4, 6,7,8->8
    assert log_quantize_counts(c).tolist() == [0, 1, 2, 4, 4, 4, 8, 8, 8]
    big = torch.arange(1, 5000)
    ref = [2 ** round(math.log2(v)) for v in big.tolist()]  # never a .5 tie for integers
    assert log_quantize_counts(big).tolist() == ref
    with pytest.raises(TypeError, match="integer tensor"):
        log_quantize_counts(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        log_quantize_counts(torch.tensor([-1]))


def test_G8_quantisation_through_lanes():
    lanes = multilevel_lanes(_frames_with_group_counts([3, 5, 6, 7, 8], G=8), lanes=4)
    assert_close(merge_lanes(lanes)[:, 0, 0, 0], torch.tensor([4.0, 4, 8, 8, 8]), atol=0, rtol=0)


def test_padding_is_ceil_and_zero():
    # T_F = 10, S = 3: G = 4, Q_F = 3, pad (−10) mod 4 = 2 zero frames; the last group has 2 real frames.
    F_bin = torch.zeros(10, 2, 1, 1, dtype=torch.uint8)
    F_bin[8:10, 1, 0, 0] = 1  # both real frames of the last group fire -> count 2 -> lane s1
    F_bin[0:4, 0, 0, 0] = 1   # a full first group -> count 4 -> lane s2
    lanes = multilevel_lanes(F_bin, lanes=3)
    assert lanes.shape[0] == 3
    assert lanes[2, :, 1, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert lanes[0, :, 0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    # MLIF-C pads by T_F mod G (= 2 here as well); with T_F = 9, G = 4 it would pad 1 frame and drop one of
    # the 3 groups; the ceiling keeps ⌈9/4⌉ = 3.
    assert encoded_steps(9, 3) == 3 and multilevel_lanes(torch.zeros(9, 1, 1, 1, dtype=torch.uint8), 3).shape[0] == 3


def test_binarize_is_or_over_k_raw_frames():
    raw = torch.zeros(7, 2, 1, 2, dtype=torch.int16)
    raw[1, 0, 0, 0] = 3   # group 0 (frames 0-1): OR -> 1
    raw[2, 1, 0, 1] = 1   # group 1 (frames 2-3)
    raw[6, 0, 0, 0] = 5   # frame 6 is beyond T_F·k = 6 and is dropped
    F_bin = binarize_frames(raw, T_F=3)
    assert F_bin.shape == (3, 2, 1, 2) and F_bin.dtype == torch.uint8
    assert F_bin[0, 0, 0, 0] == 1 and F_bin[1, 1, 0, 1] == 1 and F_bin.sum() == 2
    np_out = binarize_frames(raw.numpy(), T_F=3)
    assert torch.equal(np_out, F_bin)


@settings(max_examples=30, deadline=None)
@given(S=st.integers(1, 5), T_F=st.integers(1, 40), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_lanes_one_hot_and_merge_equals_quantised_counts(S, T_F, k, seed):
    G = 2 ** (S - 1)
    if T_F < G:
        with pytest.raises(ValueError, match="smaller than the group size"):
            encoded_steps(T_F, S)
        return
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 3, (T_F * k, 2, 3, 3), generator=g) * torch.randint(0, 2, (T_F * k, 2, 3, 3), generator=g)
    lanes = encode_multilevel(raw, T_F, S)
    Q_F = -(-T_F // G)
    assert lanes.shape == (Q_F, S, 2, 3, 3)
    assert set(torch.unique(lanes).tolist()) <= {0.0, 1.0}
    assert int(lanes.sum(dim=1).max()) <= 1  # one-hot before resizing
    # reference: explicit OR, pad, count, 2^round(log2)
    Fb = (raw.reshape(T_F, k, 2, 3, 3) != 0).any(1).long()
    Fb = torch.cat([Fb, torch.zeros((Q_F * G - T_F, 2, 3, 3), dtype=torch.long)])
    C = Fb.reshape(Q_F, G, 2, 3, 3).sum(1)
    ref = torch.tensor([0 if c == 0 else 2 ** round(math.log2(c)) for c in C.flatten().tolist()],
                       dtype=torch.float32).reshape(C.shape)
    assert_close(merge_lanes(lanes), ref, atol=0, rtol=0)
    assert_close(encode_multilevel(raw, T_F, S, merge=True), ref, atol=0, rtol=0)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="lanes"):
        group_size(0)
    with pytest.raises(ValueError, match="T_F=3 binary frames is smaller than the group size G = 2\\^\\(S_i-1\\) = 4"):
        MultiLevelEncoder(T_F=3, lanes=3)
    with pytest.raises(ValueError, match="T_F must be an integer >= 1"):
        encoded_steps(0, 1)
    with pytest.raises(ValueError, match="cannot make T_F=10"):
        binarize_frames(torch.zeros(5, 2, 2, 2), T_F=10)
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilevel_lanes(torch.full((4, 1, 1, 1), 2), lanes=2)
    with pytest.raises(ValueError, match="flip_p"):
        MultiLevelEncoder(T_F=4, lanes=1, flip_p=1.5)
    with pytest.raises(ValueError, match="size"):
        MultiLevelEncoder(T_F=4, lanes=1, size=0)


def test_resize_is_bilinear_and_makes_values_non_binary():
    lanes = encode_multilevel(_frames_with_group_counts([1, 2], G=2, H=128, W=128), T_F=4, lanes=2)
    lanes[0, 0, 0, :64, :64] = 1.0  # a block with a sharp edge
    small = resize_lanes(lanes, 48)
    assert small.shape == (2, 2, 2, 48, 48)
    ref = F.interpolate(lanes.reshape(-1, 1, 128, 128), size=(48, 48), mode="bilinear", align_corners=False,
                        antialias=True).reshape(2, 2, 2, 48, 48)
    assert_close(small, ref, atol=0, rtol=0)
    assert float(small.min()) >= 0.0 and float(small.max()) <= 1.0
    values = torch.unique(small)
    assert ((values > 0) & (values < 1)).any()  # non-binary after resizing (§5.9)
    assert_close(resize_lanes(torch.ones(1, 1, 1, 10, 10), (4, 6)), torch.ones(1, 1, 1, 4, 6))
    enc = MultiLevelEncoder(T_F=4, lanes=2, size=48)
    assert enc(torch.ones(8, 2, 128, 128)).shape == (2, 2, 2, 48, 48)


def test_resize_matches_pil_bilinear():
    Image = pytest.importorskip("PIL.Image", reason="Pillow not installed")
    lanes = (torch.rand(1, 1, 1, 128, 128, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    ours = resize_lanes(lanes, 48)[0, 0, 0]
    pil = Image.fromarray(lanes[0, 0, 0].numpy(), mode="F").resize((48, 48), Image.BILINEAR)
    assert_close(ours, torch.from_numpy(np.array(pil)), atol=1e-5, rtol=0)


def _find_transform(x: torch.Tensor, y: torch.Tensor, max_roll: int) -> list[tuple[bool, int, int]]:
    found = []
    for flip in (False, True):
        base = x.flip(-1) if flip else x
        for dy in range(-max_roll, max_roll + 1):
            for dx in range(-max_roll, max_roll + 1):
                if torch.equal(torch.roll(base, (dy, dx), (-2, -1)), y):
                    found.append((flip, dy, dx))
    return found


def test_augmentation_is_one_flip_and_roll_shared_by_all_steps_and_seeded():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 2, 16, 16, generator=g)  # [Q_F, S, 2, H, W] with no symmetry
    seen = set()
    for seed in range(40):
        y = augment_lanes(x, torch.Generator().manual_seed(seed))
        matches = _find_transform(x, y, 5)
        assert len(matches) == 1  # a single (flip, dy, dx) explains every step and lane at once
        seen.add(matches[0])
        assert torch.equal(y, augment_lanes(x, torch.Generator().manual_seed(seed)))  # reproducible
    flips = {m[0] for m in seen}
    shifts = {m[1:] for m in seen}
    assert flips == {False, True} and len(shifts) > 20 and all(-5 <= d <= 5 for s in shifts for d in s)
    assert torch.equal(augment_lanes(x, g, flip_p=0.0, max_roll=0), x)
    enc_a = MultiLevelEncoder(T_F=4, lanes=2, augment=True, seed=3)
    enc_b = MultiLevelEncoder(T_F=4, lanes=2, augment=True, seed=3)
    raw = (torch.rand(8, 2, 12, 12, generator=g) > 0.6).to(torch.uint8)
    assert torch.equal(enc_a(raw), enc_b(raw))
    assert "Q_F=2" in repr(enc_a) and enc_a.config()["padding"] == "ceil"
