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

import hashlib
import io
import itertools
import multiprocessing as mp
import os
import signal
import socket
import tempfile
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
    from tstudy.preemption import preempt_signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    signal.signal(preempt_signal(), signal.SIG_IGN)  # SLURM's pre-emption signal: the training process checkpoints
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


_MAPS: dict[str, np.ndarray] = {}  # output buffers of the latest iterators (two may interleave)
_MAX_MAPS = 2


def _worker_out(path: str, nbytes: int, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    buf = _MAPS.pop(path, None)
    if buf is None:
        while len(_MAPS) >= _MAX_MAPS:  # an iterator's file is unlinked when it ends; unmap the oldest
            del _MAPS[next(iter(_MAPS))]
        buf = np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))
    _MAPS[path] = buf  # most recent last
    return buf[offset:offset + int(np.prod(shape))].reshape(shape)


def _worker_train(out, idx, boxes, flips, size) -> None:
    _train_chunk(_STORE, idx, boxes, flips, size, out=_worker_out(*out, (len(idx), 3, size, size)))


def _worker_test(out, idx, resize, crop) -> None:
    _test_chunk(_STORE, idx, resize, crop, out=_worker_out(*out, (len(idx), 3, crop, crop)))


def _buffer_dirs() -> tuple[str, ...]:
    return ("/dev/shm", tempfile.gettempdir())


def _buffer_dir(nbytes: int) -> str:
    """/dev/shm when it has room (it is small in containers), else the temporary folder."""
    for d in _buffer_dirs():
        try:
            st = os.statvfs(d)
            if os.access(d, os.W_OK) and st.f_bavail * st.f_frsize > 2 * nbytes + (64 << 20):
                return d
        except OSError:
            continue
    return tempfile.gettempdir()


# The slot files are named tstudy-decode-<host>-<pid>-<start time>-<random>.u8 after the process
# that made them: a process killed without running its finally (SIGKILL, OOM) leaves its file in
# RAM-backed /dev/shm, and the next pool started on the host removes it.
_SLOT_PREFIX = "tstudy-decode-"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat), or "0" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return "0"


def _slot_prefix() -> str:
    pid = os.getpid()
    return f"{_SLOT_PREFIX}{_host_tag()}-{pid}-{_start_time(pid)}-"


def _alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` started at ``start`` still runs (a reused pid has another start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    except (OSError, OverflowError):
        return False
    now = _start_time(pid)
    return start == "0" or now == "0" or now == start


def remove_stale_slot_files() -> list[str]:
    """Remove the slot files of dead processes on this host; returns their paths.

    Files without the owner in their name (older versions) and other hosts' files (a shared
    temporary folder) are left alone.
    """
    removed, host = [], _host_tag()
    for d in _buffer_dirs():
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if not (e.name.startswith(_SLOT_PREFIX) and e.name.endswith(".u8")):
                continue
            parts = e.name[len(_SLOT_PREFIX):-len(".u8")].split("-")
            if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
                continue
            if not _alive(int(parts[1]), parts[2]):
                try:
                    os.unlink(e.path)
                    removed.append(e.path)
                except OSError:  # another user's, or removed meanwhile
                    pass
    return removed


# --------------------------------------------------------------------------- pool
def eval_indices(store: PackedStore, batch_size: int, indices: np.ndarray | None) -> np.ndarray:
    """The store indices a test pass decodes (all, in order, when None), checked, as int64."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if indices is None:
        return np.arange(len(store), dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(store)):
        raise ValueError(f"indices outside the store's [0, {len(store)})")
    return indices


def check_train_plan(store_sizes: np.ndarray, plan: EpochPlan, batch_size: int, start_step: int) -> int:
    """Raise ValueError when ``plan`` does not fit a store of images of ``store_sizes`` (h, w) or
    ``start_step`` lies outside it; returns the number of full batches. Both decoders call it."""
    order, boxes = plan.order, plan.boxes
    n = len(store_sizes)
    if len(order) and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"the plan's order holds indices outside the store's [0, {n})")
    hw = np.asarray(store_sizes)[order]
    if ((boxes[:, :2] < 0).any() or (boxes[:, 2:] <= 0).any()
            or (boxes[:, 0] + boxes[:, 2] > hw[:, 0]).any() or (boxes[:, 1] + boxes[:, 3] > hw[:, 1]).any()):
        raise ValueError("the plan's boxes do not fit the store's images (a plan drawn for other sizes?)")
    n_steps = plan.n_steps(batch_size)
    if not 0 <= start_step <= n_steps:
        raise ValueError(f"start_step {start_step} outside [0, {n_steps}]")
    return n_steps


class DecoderPool:
    """Decodes plans into batches: uint8 ``[B, 3, S, S]`` (pinned when CUDA is available) + int64 labels.

    ``workers=0`` decodes in this process; ``workers >= 1`` in that many worker processes, with up
    to ``prefetch`` batches in flight (in a shared slot file, see :func:`remove_stale_slot_files`).
    Workers never inherit the parent's state: they start from a forkserver (which imports this
    module once, so a worker starts in milliseconds) or, where there is none or with
    ``start_method="spawn"``, spawned. Use as a context manager (or call
    :meth:`close`); an exception or KeyboardInterrupt in the consumer shuts the workers down
    (they ignore SIGINT and leave it to the parent).
    """

    def __init__(self, store: PackedStore | str | os.PathLike, workers: int = 0, prefetch: int = 4, *,
                 pin_memory: bool | None = None, start_method: str | None = None) -> None:
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
            remove_stale_slot_files()
            if start_method is None:
                start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(start_method)
            if start_method == "forkserver":
                # the server imports this module once; workers fork from it (no torch import each)
                ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx,
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
        """Yield (uint8 batch tensor, labels) per job, in job order.

        jobs: (indices, image size, args(a, b) -> the task arguments of rows a:b); no job larger
        than the first, all of one image size. Workers write their chunks straight into a ring of
        ``prefetch`` batch slots in a shared file mapping (no pickling of pixels); the parent
        copies a finished batch out of its slot into a fresh (pinned) tensor and reuses the slot.
        """
        if self._pool is None:
            for idx, size, args in jobs:
                out = self._empty(len(idx), size)
                local(self.store, idx, *args(0, len(idx)), out=out.numpy())
                yield out, self._labels(idx)
            return
        jobs = iter(jobs)
        first = next(jobs, None)
        if first is None:
            return
        jobs = itertools.chain([first], jobs)
        rows, size = len(first[0]), first[1]
        img_bytes = 3 * size * size
        slot_bytes = rows * img_bytes
        nbytes = max(1, self.prefetch * slot_bytes)
        fd, path = tempfile.mkstemp(prefix=_slot_prefix(), suffix=".u8", dir=_buffer_dir(nbytes))
        pending: deque[tuple[np.ndarray, int, list[Future]]] = deque()
        try:
            os.ftruncate(fd, nbytes)
            os.close(fd)
            fd = -1
            buf = np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))
            free = list(range(self.prefetch))
            jobs = iter(jobs)
            while True:
                while free:
                    job = next(jobs, None)
                    if job is None:
                        break
                    idx, job_size, args = job
                    if len(idx) > rows or job_size != size:
                        raise ValueError(f"a batch of {len(idx)} images of {job_size} px after one of {rows} of {size} px")
                    slot = free.pop()
                    futs = [self._pool.submit(remote, (path, nbytes, slot * slot_bytes + a * img_bytes), idx[a:b],
                                              *args(a, b)) for a, b in self._chunks(len(idx))]
                    pending.append((idx, slot, futs))
                if not pending:
                    return
                idx, slot, futs = pending.popleft()
                for fut in futs:
                    fut.result()
                out = self._empty(len(idx), size)
                n = len(idx) * img_bytes
                out.numpy().reshape(-1)[:] = buf[slot * slot_bytes:slot * slot_bytes + n]
                free.append(slot)
                yield out, self._labels(idx)
        finally:
            for _, _, futs in pending:
                for fut in futs:
                    fut.cancel()
            if fd >= 0:
                os.close(fd)
            buf = None
            os.unlink(path)  # workers still writing into it keep their mapping until they move on

    def train_batches(self, plan: EpochPlan, batch_size: int, size: int,
                      start_step: int = 0) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """The full batches of ``plan`` from ``start_step`` on, in step order: (uint8 [B, 3, size, size], int64 [B]).

        ``plan.order`` holds store indices: a plan over the whole store (``epoch_plan(store.sizes,
        ...)``), or over a subset mapped to store indices (``EpochPlan(seed, epoch,
        subset[plan.order], plan.boxes, plan.flips)`` for ``epoch_plan(store.sizes[subset], ...)``).
        Every box must lie inside its stored image (checked up front).
        """
        n_steps = check_train_plan(self.store.sizes, plan, batch_size, start_step)

        def jobs():
            for step in range(start_step, n_steps):
                idx, boxes, flips = plan.batch(step, batch_size)
                yield idx, size, lambda a, b, boxes=boxes, flips=flips: (boxes[a:b], flips[a:b], size)

        return self._run(jobs(), _train_chunk, _worker_train)

    def test_batches(self, batch_size: int, resize: int, crop: int,
                     indices: np.ndarray | None = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
        """The whole split in index order (or the store ``indices`` given, in their order), fixed
        transform (``Resize(resize)`` + ``CenterCrop(crop)``); the last batch may be short."""
        indices = eval_indices(self.store, batch_size, indices)

        def jobs():
            for s in range(0, len(indices), batch_size):
                yield indices[s:s + batch_size], crop, lambda a, b: (resize, crop)

        return self._run(jobs(), _test_chunk, _worker_test)
