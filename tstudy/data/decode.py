"""Decoders that execute an epoch plan on the CPU: JPEG bytes -> fixed-size uint8 batches.

``decode_train`` / ``decode_test`` are the per-image transforms, bit-identical to torchvision's
PIL path (``F.resized_crop(img, top, left, h, w, [size, size], antialias=True)`` + ``hflip``;
``Resize(resize)`` + ``CenterCrop(crop)``; bilinear, which is antialiased in Pillow). No
``Image.draft`` (DCT-domain downscaling): it changes the pixels, and bit-identity to the plain
decode matters more than its speed.

:class:`DecoderPool` turns a plan into batches, in step order, in this process (``workers=0``)
or in a pool of worker processes (spawned; each opens the store once; a task is a chunk of a
batch). Every image's pixels depend only on its bytes and its plan entry, so the batches are
bit-identical for any number of workers.

This module imports torch lazily (only to hand out tensors), so worker processes stay light.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from tstudy.data.packed import PackedStore
from tstudy.data.plan import EpochPlan, test_box

BILINEAR = Image.Resampling.BILINEAR


def _open(jpeg) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def decode_train(jpeg, box, flip: bool, size: int) -> np.ndarray:
    """uint8 ``(size, size, 3)``: crop ``box`` = ``[top, left, h, w]``, resize bilinear (antialiased), flip."""
    top, left, h, w = (int(v) for v in box)
    img = _open(jpeg)
    # crop, then resize: Image.resize(box=...) filters with pixels outside the box at its edges
    out = img.crop((left, top, left + w, top + h)).resize((size, size), BILINEAR)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_test(jpeg, resize: int, crop: int) -> np.ndarray:
    """uint8 ``(crop, crop, 3)``: the shorter side resized to ``resize``, centre crop ``crop``."""
    img = _open(jpeg)
    w, h = img.size
    rh, rw, top, left = test_box(h, w, resize, crop)
    img = img.resize((rw, rh), BILINEAR)
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


# --------------------------------------------------------------------------- chunk tasks
_STORE: PackedStore | None = None


def _init_worker(path: str) -> None:
    global _STORE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    _STORE = PackedStore(path)


def _train_chunk(store: PackedStore, idx: np.ndarray, boxes: np.ndarray, flips: np.ndarray, size: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.empty((len(idx), 3, size, size), np.uint8)
    for k, (i, b, f) in enumerate(zip(idx, boxes, flips)):
        out[k] = decode_train(store.jpeg(int(i)), b, bool(f), size).transpose(2, 0, 1)
    return out


def _test_chunk(store: PackedStore, idx: np.ndarray, resize: int, crop: int,
                out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.empty((len(idx), 3, crop, crop), np.uint8)
    for k, i in enumerate(idx):
        out[k] = decode_test(store.jpeg(int(i)), resize, crop).transpose(2, 0, 1)
    return out


def _worker_train(idx, boxes, flips, size):
    return _train_chunk(_STORE, idx, boxes, flips, size)


def _worker_test(idx, resize, crop):
    return _test_chunk(_STORE, idx, resize, crop)


# --------------------------------------------------------------------------- pool
class DecoderPool:
    """Decodes plans into batches: uint8 ``[B, 3, S, S]`` (pinned when CUDA is available) + int64 labels.

    ``workers=0`` decodes in this process; ``workers >= 1`` in that many spawned processes, with up
    to ``prefetch`` batches in flight. Use as a context manager (or call :meth:`close`).
    """

    def __init__(self, store: PackedStore | str | os.PathLike, workers: int = 0, prefetch: int = 4, *,
                 pin_memory: bool | None = None, start_method: str = "spawn") -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.store = store if isinstance(store, PackedStore) else PackedStore(store)
        self.workers = workers
        self.prefetch = max(1, prefetch)
        if pin_memory is None:
            import torch

            pin_memory = torch.cuda.is_available()
        self.pin_memory = pin_memory
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(start_method),
                                             initializer=_init_worker, initargs=(str(self.store.path),))

    # ---- lifecycle
    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecoderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- batches
    def _empty(self, n: int, size: int):
        import torch

        return torch.empty((n, 3, size, size), dtype=torch.uint8, pin_memory=self.pin_memory)

    def _labels(self, idx: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(self.store.labels[idx], dtype=np.int64))

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        k = max(1, min(self.workers, n))
        bounds = np.linspace(0, n, k + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def _run(self, jobs: Iterator[tuple[np.ndarray, int, Callable]], local, remote):
        """jobs: (indices, image size, args(a, b) -> the task arguments of rows a:b); yields (uint8 batch tensor, labels) in job order."""
        if self._pool is None:
            for idx, size, args in jobs:
                out = self._empty(len(idx), size)
                local(self.store, idx, *args(0, len(idx)), out=out.numpy())
                yield out, self._labels(idx)
            return
        pending: deque[tuple[np.ndarray, int, list[tuple[int, int, Future]]]] = deque()
        jobs = iter(jobs)
        try:
            while True:
                while len(pending) < self.prefetch:
                    job = next(jobs, None)
                    if job is None:
                        break
                    idx, size, args = job
                    futs = [(a, b, self._pool.submit(remote, idx[a:b], *args(a, b))) for a, b in self._chunks(len(idx))]
                    pending.append((idx, size, futs))
                if not pending:
                    return
                idx, size, futs = pending.popleft()
                out = self._empty(len(idx), size)
                view = out.numpy()
                for a, b, fut in futs:
                    view[a:b] = fut.result()
                yield out, self._labels(idx)
        finally:
            for _, _, futs in pending:
                for _, _, fut in futs:
                    fut.cancel()

    def train_batches(self, plan: EpochPlan, batch_size: int, size: int,
                      start_step: int = 0) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """The full batches of ``plan`` from ``start_step`` on, in step order: (uint8 [B, 3, size, size], int64 [B])."""
        if len(plan) != len(self.store):
            raise ValueError(f"the plan has {len(plan)} images, the store {len(self.store)}")
        n_steps = plan.n_steps(batch_size)
        if not 0 <= start_step <= n_steps:
            raise ValueError(f"start_step {start_step} outside [0, {n_steps}]")

        def jobs():
            for step in range(start_step, n_steps):
                idx, boxes, flips = plan.batch(step, batch_size)
                yield idx, size, lambda a, b, boxes=boxes, flips=flips: (boxes[a:b], flips[a:b], size)

        return self._run(jobs(), _train_chunk, _worker_train)

    def test_batches(self, batch_size: int, resize: int, crop: int) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """The whole split in index order, fixed transform; the last batch may be short."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self.store)

        def jobs():
            for s in range(0, n, batch_size):
                idx = np.arange(s, min(s + batch_size, n), dtype=np.int64)
                yield idx, crop, lambda a, b: (resize, crop)

        return self._run(jobs(), _test_chunk, _worker_test)
