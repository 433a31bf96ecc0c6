"""Helpers shared by the file-based loaders: argument checks, search, errors, decoding, caching.

Decoded images are cached as uncompressed ``.npz`` files under ``$TSTUDY_CACHE/decoded``
(default ``~/.cache/tstudy/decoded``), keyed by the source files' names, sizes and mtimes
and the image size, written atomically (temp file + rename).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from tstudy.data import DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tstudy.data")

T = TypeVar("T")
CACHE_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CHUNK = 512


def check_labels(dataset: str, labels: str, allowed: Sequence[str] = ("fine",)) -> None:
    """Fail unless ``labels`` is one of ``allowed``."""
    if labels not in allowed:
        valid = ", ".join(repr(a) for a in allowed)
        raise DataError(f"labels: {dataset} supports {valid}, got {labels!r}")


def check_image_size(image_size: int | None) -> None:
    """Fail unless ``image_size`` is None or a positive int."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise DataError(f"image_size: must be a positive integer or None, got {image_size!r}")


def check_label_range(dataset: str, y: np.ndarray | torch.Tensor, num_classes: int) -> None:
    """Fail if any label is outside 0..num_classes-1."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{dataset}: labels span {int(y.min())}..{int(y.max())}, expected 0..{num_classes - 1}")


def not_found(dataset: str, tried: Iterable[Path | str], how: str) -> DataError:
    """The one-line error for missing data: dataset, every path tried, how to get it."""
    paths = ", ".join(str(p.absolute() if isinstance(p, Path) else p) for p in tried) or "(no paths)"
    return DataError(f"{dataset}: data not found; tried {paths}; {how}")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (img_2 < img_10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_classes(train_dir: Path, what: str = "imagefolder") -> list[str]:
    """The classes of a class-per-folder split: its non-hidden subfolders, sorted (an empty one too).

    The one rule of the in-memory loader, the packed stores and preflight."""
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{what}: no class folders in {train_dir}")
    return classes


def class_entries(split_dir: Path, label: dict[str, int],
                  what: str = "imagefolder") -> Iterator[tuple[os.DirEntry, int, list[os.DirEntry]]]:
    """(class folder, its label, its image files) for every class folder of ``split_dir`` (hidden
    folders and subfolders skipped), by class name then natural file name: the one listing rule of
    both data paths (entries, so a caller that wants sizes stats without building paths)."""
    for e in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not e.is_dir() or e.name.startswith("."):
            continue
        if e.name not in label:
            raise DataError(f"{what}: class folder {e.path} is not among the train classes")
        files = sorted((f for f in os.scandir(e.path) if f.is_file() and is_image(f.name)),
                       key=lambda f: natural_key(f.name))
        yield e, label[e.name], files


def list_images(split_dir: Path, label: dict[str, int], what: str = "imagefolder") -> list[tuple[Path, int]]:
    """(file, label) for every image directly in ``split_dir/<class>/`` (:func:`class_entries`)."""
    items = [(Path(f.path), y) for _, y, files in class_entries(split_dir, label, what) for f in files]
    if not items:
        raise DataError(f"{what}: no images in {split_dir}/<class>/")
    return items


def worker_count() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def decode_image(blob: bytes, size: int) -> np.ndarray:
    """Decode one image file's bytes to uint8 RGB [size, size, 3] (resized with PIL if needed)."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        rgb = im.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb)


def _decode_chunk(out: np.ndarray, start: int, blobs: list[bytes], size: int, names: list[str]) -> None:
    for i, (blob, name) in enumerate(zip(blobs, names)):
        try:
            out[start + i] = decode_image(blob, size).transpose(2, 0, 1)
        except Exception as e:  # PIL raises many types
            raise DataError(f"cannot decode image {name}: {e}") from e


def decode_all(items: Sequence[T], read: Callable[[T], bytes], size: int,
               name: Callable[[T], str] = str) -> np.ndarray:
    """Decode ``items`` to uint8 RGB NCHW [N, 3, size, size] with a thread pool.

    ``read`` runs in the calling thread (so it may use a non-thread-safe zip handle); PIL
    decoding releases the GIL, so chunks decode in parallel on ``worker_count()`` threads.
    """
    out = np.empty((len(items), 3, size, size), dtype=np.uint8)
    workers = worker_count()
    pending: list[Future] = []
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start:start + _CHUNK]
            blobs = [read(it) for it in chunk]
            pending.append(pool.submit(_decode_chunk, out, start, blobs, size, [name(it) for it in chunk]))
            while len(pending) > 2 * workers:  # bound the bytes held in memory
                pending.pop(0).result()
        for f in pending:
            f.result()
    return out


@contextmanager
def decoding(dataset: str, n: int, source: str) -> Iterator[None]:
    """Say on stderr when decoding ``n`` images starts and when it ends (it can take minutes)."""
    print(f"tstudy: {dataset}: decoding {n:,} images from {source} (once: then cached under "
          f"{cache_dir()}) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"tstudy: {dataset}: decoded {n:,} images in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- caching

def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$TSTUDY_CACHE/decoded`` (default ``~/.cache/tstudy``)."""
    base = os.environ.get("TSTUDY_CACHE") or "~/.cache/tstudy"
    return Path(base).expanduser() / "decoded"


def fingerprint(files: Iterable[tuple[str, Path]]) -> list[list]:
    """[name, size, mtime_ns] per (name, path), in the given order: the cache's view of the sources."""
    out = []
    for name, path in files:
        st = path.stat()
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


def cache_path(dataset: str, key: object) -> Path:
    """The cache file for ``dataset`` and a JSON-able ``key``."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, key], sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{dataset}-{digest}.npz"


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays in cache file ``path``, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
        return None


def save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` as .npz via a temp file and rename; False (logged) on failure."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
        return True
    except OSError as e:
        log.warning("could not write cache file %s (%s); continuing without it", path, e)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


def cached(dataset: str, key: object, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load arrays from the cache for ``key``, or ``build`` and cache them."""
    path = cache_path(dataset, key)
    arrays = load_cached(path)
    if arrays is None:
        arrays = build()
        save_atomic(path, arrays)
    return arrays
