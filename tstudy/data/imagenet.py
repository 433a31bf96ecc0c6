"""Streamed datasets: where their JPEG files are and the packed stores built from them.

- ``imagenet`` (ILSVRC-2012): ``train/<wnid>/*.JPEG`` and ``val/`` either sorted into
  ``val/<wnid>/`` folders or flat (``ILSVRC2012_val_*.JPEG``) with the ground truth next to it
  (``LOC_val_solution.csv``, or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` +
  ``meta.mat``; see :mod:`tstudy.data.packed`). Looked for as the explicit root itself or as
  ``imagenet/`` in each of ``data_roots(root)``. The val split is the test split.
- ``imagefolder`` with ``augment="rrc_flip"``: the same folders as :mod:`tstudy.data.imagefolder`.

The stores (one per split) are built once, on first use, under ``<dataset folder>/tstudy-store/``
(resumable; a lock keeps two processes from building the same store). A folder holding only
finished stores (the JPEG files deleted after packing) is enough; a store whose JPEG folder now
holds other images than were packed is refused (delete ``tstudy-store/`` to rebuild).

Registering ``imagenet`` in ``DATASETS`` makes the name known; loading it into memory is refused.
"""
from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tstudy.data import DATASETS, DataError, data_roots
from tstudy.data.files import list_classes, not_found

STORE_DIR = "tstudy-store"
SUBFOLDER = "imagenet"


def _store_ready(folder: Path, test: str) -> bool:
    return all((folder / STORE_DIR / s / "meta.json").is_file() for s in ("train", test))


def locate_imagenet(root) -> tuple[Path, str]:
    """The ImageNet folder and its test split's folder name (``val``)."""
    explicit = [Path(root).expanduser()] if root is not None else []
    tried = []
    for cand in explicit + [r / SUBFOLDER for r in data_roots(root)]:
        tried.append(f"{cand.absolute()}/train+val")
        if _store_ready(cand, "val") or ((cand / "train").is_dir() and (cand / "val").is_dir()):
            return cand, "val"
    raise not_found("imagenet", tried, "put ILSVRC-2012 as imagenet/train/<wnid>/*.JPEG and imagenet/val/ "
                    "(flat with LOC_val_solution.csv or the devkit ground truth, or in <wnid>/ folders) in a "
                    "data root, or pass --data-root the folder holding train/ and val/")


def locate_imagefolder(root) -> tuple[Path, str]:
    from tstudy.data.imagefolder import candidates, locate

    for cand in candidates(root):
        for t in ("val", "test"):
            if _store_ready(cand, t):
                return cand, t
    folder, test_dir = locate(root)
    return folder, test_dir.name


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_flat(split: Path) -> bool:
    return not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(split))


def stores(dataset: str, root) -> tuple[Path, Path]:
    """(train store, test store) of ``dataset``, packed now if not yet (progress on stderr)."""
    from tstudy.data.packed import PackedStore, StoreError, build_store, check_source

    folder, test = locate_imagenet(root) if dataset == "imagenet" else locate_imagefolder(root)
    base = folder / STORE_DIR
    train_dest, test_dest = base / "train", base / test
    try:
        if not _store_ready(folder, test):
            print(f"tstudy: {dataset}: packing the JPEG files of {folder} into {base} (once; resumable)",
                  file=sys.stderr, flush=True)
            with _build_lock(base / "build.lock"):
                build_store(folder / "train", train_dest, layout="imagefolder")
                classes = PackedStore(train_dest).classes
                flat = dataset == "imagenet" and _is_flat(folder / test)
                build_store(folder / test, test_dest, layout="ilsvrc_val" if flat else "imagefolder",
                            classes=classes)
        else:
            check_source(train_dest, folder / "train")
            check_source(test_dest, folder / test)
    except StoreError as e:
        raise DataError(f"{dataset}: {e}") from None
    except OSError as e:
        raise DataError(f"{dataset}: cannot build the packed store under {base} ({e})") from None
    return train_dest, test_dest


def class_names(dataset: str, root) -> list[str]:
    """The classes of ``dataset`` without building anything: from a finished store, else the
    class folders under ``train/`` (:func:`~tstudy.data.files.list_classes`; missing data: the one-line
    error of the locate step)."""
    import json

    folder, test = locate_imagenet(root) if dataset == "imagenet" else locate_imagefolder(root)
    meta = folder / STORE_DIR / "train" / "meta.json"
    if meta.is_file():
        return list(json.loads(meta.read_text())["classes"])
    return list_classes(folder / "train", dataset)


@DATASETS.register("imagenet")
def load_imagenet(root=None, image_size: int | None = None, labels: str = "fine", download: bool = False):
    """ImageNet is never held in memory: the engine streams it (tstudy.stream_data)."""
    raise DataError("dataset: imagenet is streamed from its packed store (tstudy.stream_data), "
                    "not loaded into memory")
