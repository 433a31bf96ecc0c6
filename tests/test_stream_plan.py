"""Epoch plans of the streamed data path (tstudy/data/plan.py): determinism, torchvision's RRC semantics."""
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from tstudy.data import plan as P


def test_epoch_seed_is_one_formula_with_pinned_values():
    """Both data paths draw an epoch from this seed: a change would change every result."""
    from tstudy import device_data

    assert device_data.epoch_seed is P.epoch_seed
    cases = [(0, 0), (1, 5), (123456789, 399), (2**40, 7)]
    assert [P.epoch_seed(s, e) for s, e in cases] == [12345, 1051943, 123457162542393, 1099514926310951106]


def _sizes(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(30, 121, n), rng.integers(30, 121, n)], axis=1)


def test_plan_deterministic_and_distinct():
    sizes = _sizes()
    a, b = P.epoch_plan(sizes, 3, 7), P.epoch_plan(sizes, 3, 7)
    assert a == b
    assert a.seed == 3 and a.epoch == 7
    assert sorted(a.order.tolist()) == list(range(len(sizes)))
    assert a.order.dtype == np.int64 and a.boxes.dtype == np.int64 and a.flips.dtype == bool
    assert a.boxes.shape == (len(sizes), 4)
    for other in (P.epoch_plan(sizes, 3, 8), P.epoch_plan(sizes, 4, 7)):
        assert not np.array_equal(a.order, other.order)
        assert not np.array_equal(a.flips, other.flips)
    assert 0.4 < a.flips.mean() < 0.6
    # boxes belong to the images in epoch order and stay inside them
    H, W = sizes[a.order, 0], sizes[a.order, 1]
    top, left, h, w = a.boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()


def test_plan_is_read_only():
    p = P.epoch_plan(_sizes(10), 0, 0)
    with pytest.raises(ValueError):
        p.order[0] = 1


def test_batches_full_only():
    p = P.epoch_plan(_sizes(103), 0, 1)
    assert p.n_steps(10) == 10 and p.n_steps(103) == 1 and p.n_steps(104) == 0
    seen = []
    for step in range(p.n_steps(10)):
        o, b, f = p.batch(step, 10)
        assert o.shape == (10,) and b.shape == (10, 4) and f.shape == (10,)
        np.testing.assert_array_equal(b, p.boxes[step * 10:(step + 1) * 10])
        seen += o.tolist()
    assert seen == p.order[:100].tolist()
    with pytest.raises(IndexError):
        p.batch(10, 10)
    with pytest.raises(ValueError):
        p.n_steps(0)


def _reference_boxes(H, W, seed, scale, ratio, attempts=10):
    """torchvision's get_params, one image at a time, fed the same numpy draws as rrc_boxes."""
    rng = np.random.default_rng(seed)
    n = len(H)
    log_r = np.log(np.asarray(ratio, dtype=np.float64))
    areas = rng.uniform(scale[0], scale[1], size=(n, attempts))
    logs = rng.uniform(log_r[0], log_r[1], size=(n, attempts))
    out, highs = [], []
    for k in range(n):
        height, width = int(H[k]), int(W[k])
        for a in range(attempts):
            target_area = height * width * areas[k, a]
            aspect_ratio = math.exp(logs[k, a])
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                out.append([None, None, h, w])
                highs.append((height - h + 1, width - w + 1))
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            out.append([(height - h) // 2, (width - w) // 2, h, w])
            highs.append(None)
    u = rng.random((2, n))
    for k, row in enumerate(out):
        if highs[k] is not None:
            row[0], row[1] = math.floor(u[0, k] * highs[k][0]), math.floor(u[1, k] * highs[k][1])
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("scale,ratio", [(P.SCALE, P.RATIO), ((0.35, 1.0), (0.5, 2.0)), ((0.9, 1.5), P.RATIO)])
def test_rrc_boxes_equal_scalar_reference(scale, ratio):
    sizes = np.concatenate([_sizes(300, 1), [[1, 1000], [1000, 3], [5, 5], [1, 1], [500, 375], [64, 64]]])
    H, W = sizes[:, 0], sizes[:, 1]
    got = P.rrc_boxes(H, W, np.random.default_rng(11), scale=scale, ratio=ratio)
    np.testing.assert_array_equal(got, _reference_boxes(H, W, 11, scale, ratio))


@pytest.mark.parametrize("hw,scale", [((1, 1000), P.SCALE), ((1000, 3), P.SCALE), ((2, 700), P.SCALE),
                                      ((700, 2), P.SCALE), ((60, 50), (1.5, 2.0)), ((50, 90), (1.5, 2.0)),
                                      ((90, 50), (1.5, 2.0))])
def test_rrc_fallback_equals_torchvision(hw, scale):
    """Cases where every attempt fails: the centre-crop fallback, to the pixel."""
    h, w = hw
    img = torch.zeros(3, h, w)
    expect = T.RandomResizedCrop.get_params(img, list(scale), list(P.RATIO))
    got = P.rrc_boxes(np.array([h] * 5), np.array([w] * 5), np.random.default_rng(0), scale=scale)
    for row in got:
        assert tuple(int(v) for v in row) == expect


def test_rrc_distribution_matches_torchvision():
    """Same distribution as torchvision's get_params (quantiles of h, w, top, left over 4,000 draws)."""
    n = 4000
    for H, W in [(375, 500), (64, 64), (40, 120)]:
        torch.manual_seed(0)
        img = torch.zeros(3, H, W)
        ref = np.array([T.RandomResizedCrop.get_params(img, list(P.SCALE), list(P.RATIO)) for _ in range(n)])
        got = P.rrc_boxes(np.full(n, H), np.full(n, W), np.random.default_rng(1))
        for col in range(4):
            span = max(H, W)
            for q in (0.1, 0.25, 0.5, 0.75, 0.9):
                a, b = np.quantile(ref[:, col], q), np.quantile(got[:, col], q)
                assert abs(a - b) <= 0.04 * span + 1, (H, W, col, q, a, b)
            assert abs(ref[:, col].mean() - got[:, col].mean()) <= 0.02 * span + 0.5
        # the share of draws where no attempt succeeded (fallback) is small and similar
        full_ref = np.mean((ref[:, 2] == H) & (ref[:, 3] == W))
        full_got = np.mean((got[:, 2] == H) & (got[:, 3] == W))
        assert abs(full_ref - full_got) < 0.02


def test_rrc_rng_consumption_fixed():
    """Each call draws a fixed amount, so the flips after the boxes never depend on which attempts succeed."""
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    P.rrc_boxes(np.array([1, 100]), np.array([1000, 100]), a)
    P.rrc_boxes(np.array([100, 100]), np.array([100, 100]), b)
    assert a.random() == b.random()


def test_test_box_torchvision_semantics():
    # Resize(256) of 500x375 (w x h): shorter side 256, longer int(256 * 500 / 375) = 341
    assert P.resized_size(375, 500, 256) == (256, 341)
    assert P.resized_size(500, 375, 256) == (341, 256)
    rh, rw, top, left = P.test_box(375, 500, 256, 224)
    assert (rh, rw, top, left) == (256, 341, 16, int(round((341 - 224) / 2)))
    with pytest.raises(ValueError):
        P.test_box(100, 100, 50, 64)


def test_plan_and_decode_modules_import_no_torch():
    """The planning, store and decoding modules (what a decoder worker imports) run without torch."""
    import subprocess
    import sys

    code = ("import sys, tstudy.data.plan, tstudy.data.packed, tstudy.data.decode, tstudy.data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
