"""Epoch plans for the streamed data path: order, crop boxes and flips drawn from (seed, epoch).

A plan is drawn on the host, once per epoch, before any image is decoded: position ``i`` of the
epoch is sample ``order[i]``, cropped with ``boxes[i]`` (``[top, left, height, width]`` in the
stored image's pixels) and flipped horizontally if ``flips[i]``. Decoders only execute the plan,
so the batches do not depend on the number of decoder workers, a resumed epoch continues with
the same batches (``start_step``), and every student of a pack sees the same stream.

The random-resized-crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (same
distribution, same centre-crop fallback), drawn for all samples at once with numpy.

Only full batches are used (:meth:`EpochPlan.n_steps`): the last ``N % batch_size`` positions of
an epoch are dropped, so every training batch has the same shape (CUDA graphs replay fixed
shapes). The dropped samples differ from epoch to epoch, since the order does.

numpy only: no torch import here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for (run seed, epoch): distinct, deterministic, platform-independent; the one
    formula of both data paths (``tstudy.device_data`` imports it)."""
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


def rrc_boxes(heights: np.ndarray, widths: np.ndarray, rng: np.random.Generator,
              scale=SCALE, ratio=RATIO, attempts: int = 10) -> np.ndarray:
    """Random-resized-crop boxes, int64 ``(N, 4)`` rows ``[top, left, h, w]``.

    torchvision's ``RandomResizedCrop.get_params`` per image (area ``U(scale) * H * W``,
    log-uniform aspect ratio, ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``,
    accepted if ``0 < w <= W`` and ``0 < h <= H``, top/left uniform integers; after ``attempts``
    rejections a centre crop of the whole image clamped to the ratio range), vectorised: all
    attempts of all images are drawn at once and the first accepted one is kept. The rng draws a
    fixed amount per call (``2 * N * attempts + 2 * N`` uniforms), whatever the outcome.
    """
    H = np.asarray(heights, dtype=np.int64).reshape(-1)
    W = np.asarray(widths, dtype=np.int64).reshape(-1)
    if H.shape != W.shape:
        raise ValueError(f"heights {H.shape} and widths {W.shape} differ")
    if (H <= 0).any() or (W <= 0).any():
        raise ValueError("image sizes must be positive")
    n = H.shape[0]
    log_r = np.log(np.asarray(ratio, dtype=np.float64))
    target = rng.uniform(scale[0], scale[1], size=(n, attempts))
    target *= (H * W).astype(np.float64)[:, None]
    aspect = rng.uniform(log_r[0], log_r[1], size=(n, attempts))
    np.exp(aspect, out=aspect)
    # first accepted attempt per row, one attempt at a time (bounded memory at ImageNet scale)
    found = np.zeros(n, dtype=bool)
    bw = np.zeros(n, dtype=np.int64)
    bh = np.zeros(n, dtype=np.int64)
    for a in range(attempts):
        t, r = target[:, a], aspect[:, a]
        w = np.round(np.sqrt(t * r)).astype(np.int64)  # round half to even, as Python's round
        h = np.round(np.sqrt(t / r)).astype(np.int64)
        ok = ~found & (w > 0) & (w <= W) & (h > 0) & (h <= H)
        bw[ok] = w[ok]
        bh[ok] = h[ok]
        found |= ok
    del target, aspect

    # fallback: torchvision's central crop, whole image clamped to the ratio range
    in_ratio = W / H
    lo, hi = min(ratio), max(ratio)
    fw = W.copy()
    fh = H.copy()
    narrow = in_ratio < lo
    wide = in_ratio > hi
    fh[narrow] = np.round(W[narrow] / lo).astype(np.int64)
    fw[wide] = np.round(H[wide] * hi).astype(np.int64)
    bw = np.where(found, bw, fw)
    bh = np.where(found, bh, fh)

    # uniform integers in [0, H - h] and [0, W - w] as floor(u * count): a fixed number of draws
    # (rng.integers with array bounds draws a bound-dependent amount), bias < count / 2**53
    u = rng.random((2, n))
    top = np.minimum((u[0] * (H - bh + 1)).astype(np.int64), H - bh)
    left = np.minimum((u[1] * (W - bw + 1)).astype(np.int64), W - bw)
    top = np.where(found, top, (H - bh) // 2)
    left = np.where(found, left, (W - bw) // 2)
    return np.stack([top, left, bh, bw], axis=1).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """What an epoch decodes: position ``i`` is sample ``order[i]``, crop ``boxes[i]``, flip ``flips[i]``."""

    seed: int
    epoch: int
    order: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) int64 [top, left, h, w]
    flips: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def n_steps(self, batch_size: int) -> int:
        """Full batches only: the last partial batch is dropped (fixed shapes for CUDA graphs)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return len(self) // batch_size

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, boxes, flips) of batch ``step``: positions ``step * batch_size`` onwards."""
        n = self.n_steps(batch_size)
        if not 0 <= step < n:
            raise IndexError(f"step {step} out of range: the epoch has {n} full batches of {batch_size}")
        s = slice(step * batch_size, (step + 1) * batch_size)
        return self.order[s], self.boxes[s], self.flips[s]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochPlan):
            return NotImplemented
        return (self.seed == other.seed and self.epoch == other.epoch and np.array_equal(self.order, other.order)
                and np.array_equal(self.boxes, other.boxes) and np.array_equal(self.flips, other.flips))

    __hash__ = None  # type: ignore[assignment]


def epoch_plan(sizes: np.ndarray, seed: int, epoch: int, *, scale=SCALE, ratio=RATIO) -> EpochPlan:
    """The plan of ``epoch`` for stored images of ``sizes`` (N, 2) ``[height, width]``.

    One generator, ``np.random.default_rng(epoch_seed(seed, epoch))``, draws in turn the order (a
    permutation), the boxes (:func:`rrc_boxes`, of the images in epoch order) and the flips.
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    order = rng.permutation(sizes.shape[0]).astype(np.int64)
    boxes = rrc_boxes(sizes[order, 0], sizes[order, 1], rng, scale=scale, ratio=ratio)
    flips = rng.random(sizes.shape[0]) < 0.5
    for a in (order, boxes, flips):
        a.setflags(write=False)
    return EpochPlan(int(seed), int(epoch), order, boxes, flips)


def resized_size(h: int, w: int, resize: int) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(resize)``: the shorter side to ``resize``,
    the longer ``int(resize * long / short)`` (truncated, as torchvision does)."""
    if h <= w:
        return resize, int(resize * w / h)
    return int(resize * h / w), resize


def test_box(h: int, w: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """The fixed test transform ``Resize(resize)`` + ``CenterCrop(crop)`` (torchvision semantics):
    ``(resized_h, resized_w, top, left)``, the crop box ``[top, left, crop, crop]`` in the resized
    image."""
    rh, rw = resized_size(h, w, resize)
    if crop > rh or crop > rw:
        raise ValueError(f"crop {crop} larger than the resized image {rh}x{rw} (resize {resize})")
    top = int(round((rh - crop) / 2.0))
    left = int(round((rw - crop) / 2.0))
    return rh, rw, top, left


test_box.__test__ = False  # not a pytest test, whatever imports it
