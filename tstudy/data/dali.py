"""An optional NVIDIA DALI decoder for the streamed data path (``--decoder dali``).

:class:`DaliDecoder` has the interface of :class:`tstudy.data.decode.DecoderPool`
(``train_batches``, ``test_batches``, ``close``, context manager) and executes the same
:class:`~tstudy.data.plan.EpochPlan`: a DALI pipeline is fed through ``fn.external_source`` with
the encoded JPEG bytes of each batch (from the :class:`~tstudy.data.packed.PackedStore`) and the
plan's per-sample windows and flips, then

- train: ``fn.decoders.image_slice`` (ROI decode of the box ``[top, left, h, w]``, absolute pixel
  anchor/shape) -> ``fn.resize`` to ``size x size`` (linear, antialiased) -> ``fn.flip``
  (horizontal, per sample) -> CHW;
- test: ``fn.decoders.image`` -> ``fn.resize`` to torchvision's ``Resize(resize)`` size (computed
  on the host, :func:`tstudy.data.plan.resized_size`) -> ``fn.slice`` of the centre crop -> CHW.

DALI's own randomness is not used: the batches depend only on the plan (same plan -> identical
batches; ``start_step`` resumes; fixed shapes). The pixels are close to, not identical with,
the CPU decoder's (DALI's JPEG decoder and resampling differ from Pillow's), so a comparison
should not mix decoders.

Device: ``"mixed"`` decoding (nvJPEG) and GPU resizing when CUDA is available, the output
batches then being CUDA tensors; otherwise a CPU pipeline (``device_id=None``) and CPU tensors.

The plan -> DALI argument conversion (:func:`train_windows`, :func:`flip_args`,
:func:`test_windows`) is plain numpy and does not need DALI. DALI itself is imported lazily
(``pip install "tstudy[dali]"``).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from tstudy.data.decode import check_train_plan, eval_indices
from tstudy.data.packed import PackedStore
from tstudy.data.plan import EpochPlan, test_box

INSTALL_HINT = 'pip install "tstudy[dali]"'
MAX_THREADS = 8


# --------------------------------------------------------------------------- plan -> DALI arguments (numpy only)
def train_windows(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plan boxes ``(N, 4)`` ``[top, left, h, w]`` -> DALI ROI arguments for ``axis_names="WH"``:
    float32 anchors ``(N, 2)`` ``[left, top]`` and shapes ``(N, 2)`` ``[w, h]`` (absolute pixels).

    The window is ``img[top:top + h, left:left + w]`` (torchvision's ``F.crop(img, top, left, h, w)``)."""
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if (b[:, :2] < 0).any() or (b[:, 2:] <= 0).any():
        raise ValueError("boxes need top, left >= 0 and h, w > 0")
    anchors = np.ascontiguousarray(b[:, [1, 0]], dtype=np.float32)
    shapes = np.ascontiguousarray(b[:, [3, 2]], dtype=np.float32)
    if (anchors.astype(np.int64) != b[:, [1, 0]]).any() or (shapes.astype(np.int64) != b[:, [3, 2]]).any():
        raise ValueError("box coordinates too large for exact float32")  # > 2**24 px: not an image
    return anchors, shapes


def flip_args(flips: np.ndarray) -> np.ndarray:
    """Plan flips ``(N,)`` bool -> int32 ``(N,)`` for ``fn.flip(horizontal=...)``."""
    return np.asarray(flips, dtype=bool).reshape(-1).astype(np.int32)


def test_windows(sizes: np.ndarray, resize: int, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored sizes ``(N, 2)`` ``[h, w]`` -> the test transform ``Resize(resize)`` + ``CenterCrop(crop)``
    as DALI arguments: float32 resized sizes ``(N, 2)`` ``[rw, rh]`` (``resize_x``, ``resize_y``),
    anchors ``(N, 2)`` ``[left, top]`` and shapes ``(N, 2)`` ``[crop, crop]`` of the crop in the
    resized image (:func:`tstudy.data.plan.test_box`, torchvision semantics)."""
    s = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    rows = [test_box(int(h), int(w), resize, crop) for h, w in s]
    r = np.asarray(rows, dtype=np.int64).reshape(-1, 4)  # rh, rw, top, left
    resized = np.ascontiguousarray(r[:, [1, 0]], dtype=np.float32)
    anchors = np.ascontiguousarray(r[:, [3, 2]], dtype=np.float32)
    shapes = np.full((len(s), 2), crop, dtype=np.float32)
    return resized, anchors, shapes


test_windows.__test__ = False  # not a pytest test, whatever imports it


# --------------------------------------------------------------------------- availability
class DaliMissing(ImportError):
    pass


def import_dali():
    """``nvidia.dali`` (the module), or :class:`DaliMissing` naming the extra to install."""
    try:
        import nvidia.dali as dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types  # noqa: F401
    except ImportError as e:
        raise DaliMissing(f"NVIDIA DALI is not installed ({e}); {INSTALL_HINT}") from e
    return dali


def available() -> bool:
    try:
        import_dali()
    except DaliMissing:
        return False
    return True


# --------------------------------------------------------------------------- pipelines
def _train_pipeline(batch_size: int, size: int, device: str, device_id, threads: int, prefetch: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=prefetch,
                  seed=0)
    def pipe():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        anchors = fn.external_source(name="anchors", dtype=types.FLOAT)
        shapes = fn.external_source(name="shapes", dtype=types.FLOAT)
        flips = fn.external_source(name="flips", dtype=types.INT32)
        x = fn.decoders.image_slice(jpegs, anchors, shapes, device="mixed" if device == "gpu" else "cpu",
                                    output_type=types.RGB, axis_names="WH",
                                    normalized_anchor=False, normalized_shape=False)
        x = fn.resize(x, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True,
                      dtype=types.UINT8)
        x = fn.flip(x, horizontal=flips)
        return fn.transpose(x, perm=[2, 0, 1], output_layout="CHW")

    p = pipe()
    p.build()
    return p


def _test_pipeline(batch_size: int, device: str, device_id, threads: int, prefetch: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=prefetch,
                  seed=0)
    def pipe():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        rx = fn.external_source(name="rx", dtype=types.FLOAT)
        ry = fn.external_source(name="ry", dtype=types.FLOAT)
        anchors = fn.external_source(name="anchors", dtype=types.FLOAT)
        shapes = fn.external_source(name="shapes", dtype=types.FLOAT)
        x = fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        x = fn.resize(x, resize_x=rx, resize_y=ry, interp_type=types.INTERP_LINEAR, antialias=True,
                      dtype=types.UINT8)
        x = fn.slice(x, anchors, shapes, axis_names="WH", normalized_anchor=False, normalized_shape=False)
        return fn.transpose(x, perm=[2, 0, 1], output_layout="CHW")

    p = pipe()
    p.build()
    return p


# --------------------------------------------------------------------------- decoder
class DaliDecoder:
    """Decodes plans into batches with DALI: uint8 ``[B, 3, S, S]`` + int64 labels (as ``DecoderPool``).

    ``device``: ``"auto"`` (GPU when CUDA is available, else CPU), ``"gpu"`` or ``"cpu"``. On the
    GPU the image batches are CUDA tensors on ``device_id`` (default: the current CUDA device);
    labels stay on the host. ``prefetch``: batches fed ahead of the one being returned.
    """

    def __init__(self, store: PackedStore | str | os.PathLike, device: str = "auto", *, device_id: int | None = None,
                 threads: int | None = None, prefetch: int = 2) -> None:
        import_dali()
        import torch

        if device not in ("auto", "gpu", "cpu"):
            raise ValueError(f"device must be auto, gpu or cpu, got {device!r}")
        if device == "auto":
            device = "gpu" if torch.cuda.is_available() else "cpu"
        if device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        self.store = store if isinstance(store, PackedStore) else PackedStore(store)
        self.device = device
        self.device_id = device_id if device == "gpu" else None
        self.threads = threads or max(1, min(len(os.sched_getaffinity(0)), MAX_THREADS))
        self.prefetch = max(1, prefetch)

    # ---- lifecycle
    def close(self) -> None:
        """Nothing held between iterators (each builds its own pipeline); for ``DecoderPool``'s interface."""

    def __enter__(self) -> "DaliDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- plumbing
    def _pipeline(self, key: tuple):
        kind, batch, size = key
        if kind == "train":
            return _train_pipeline(batch, size, self.device, self.device_id, self.threads, self.prefetch)
        return _test_pipeline(batch, self.device, self.device_id, self.threads, self.prefetch)

    def _jpegs(self, idx: np.ndarray) -> list[np.ndarray]:
        return [np.frombuffer(self.store.jpeg(int(i)), dtype=np.uint8) for i in idx]

    def _labels(self, idx: np.ndarray):
        import torch

        return torch.from_numpy(np.asarray(self.store.labels[idx], dtype=np.int64))

    def _to_torch(self, out):
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = out.as_tensor()
        if self.device == "gpu":
            dst = torch.empty(t.shape(), dtype=torch.uint8, device=torch.device("cuda", self.device_id))
            feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(dst.device))
        else:
            dst = torch.empty(t.shape(), dtype=torch.uint8)
            feed_ndarray(t, dst)
        return dst

    def _run(self, key: tuple, feeds: Iterator[tuple[np.ndarray, dict[str, list]]]):
        """Feed up to ``prefetch`` batches ahead; yield (images, labels) per feed, in order.

        One pipeline per iterator (built in milliseconds): a DALI pipeline fed through
        ``external_source`` keeps its prefetch state at the end of an epoch, so it is not reused."""
        feeds = iter(feeds)
        first = next(feeds, None)
        if first is None:
            return
        pipe = self._pipeline(key)
        pending: list[np.ndarray] = []
        job = first
        try:
            while True:
                while job is not None and len(pending) < self.prefetch:
                    idx, inputs = job
                    for name, data in inputs.items():
                        pipe.feed_input(name, data)
                    pending.append(idx)
                    job = next(feeds, None)
                if not pending:
                    return
                (out,) = pipe.run()
                yield self._to_torch(out), self._labels(pending.pop(0))
        finally:
            del pipe

    # ---- batches
    def train_batches(self, plan: EpochPlan, batch_size: int, size: int,
                      start_step: int = 0) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """As ``DecoderPool.train_batches``: the full batches of ``plan`` from ``start_step`` on."""
        n_steps = check_train_plan(self.store.sizes, plan, batch_size, start_step)

        def feeds():
            for step in range(start_step, n_steps):
                idx, boxes, flips = plan.batch(step, batch_size)
                anchors, shapes = train_windows(boxes)
                yield idx, {"jpegs": self._jpegs(idx), "anchors": list(anchors), "shapes": list(shapes),
                            "flips": [np.array(v) for v in flip_args(flips)]}

        return self._run(("train", batch_size, size), feeds())

    def test_batches(self, batch_size: int, resize: int, crop: int,
                     indices: np.ndarray | None = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """As ``DecoderPool.test_batches``: ``Resize(resize)`` + ``CenterCrop(crop)``, the last batch may be short."""
        indices = eval_indices(self.store, batch_size, indices)
        windows = test_windows(self.store.sizes[indices], resize, crop)  # checks every crop fits, up front

        def feeds():
            for s in range(0, len(indices), batch_size):
                idx = indices[s:s + batch_size]
                resized, anchors, shapes = (w[s:s + batch_size] for w in windows)
                yield idx, {"jpegs": self._jpegs(idx), "rx": [np.array(v) for v in resized[:, 0]], "ry": [np.array(v) for v in resized[:, 1]],
                            "anchors": list(anchors), "shapes": list(shapes)}

        return self._run(("test", batch_size, crop), feeds())
