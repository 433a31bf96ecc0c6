"""Fashion-MNIST from its original IDX files (60,000 train / 10,000 test, 28x28 grey, 10 classes).

``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each plain or ``.gz``), looked for in each of
``data_roots(root)``, its ``fashionmnist/``, ``fashion-mnist/`` and ``FashionMNIST/raw/`` (where
torchvision downloads them), then ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist`` package).

Augmentation is "crop_flip": a mirrored garment is the same class, and shifts of up to 4 pixels
keep the object in the frame (the usual Fashion-MNIST recipe for ResNets).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from tstudy.data import DATASETS, DataError, DataSplits, channel_stats, data_roots, resize_uint8
from tstudy.data.files import check_image_size, check_label_range, check_labels, not_found

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBDIRS = (".", "fashionmnist", "fashion-mnist", "FashionMNIST/raw")
FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or gzip) of unsigned bytes as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists first."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_dirs(root) -> list[Path]:
    """Folders that may hold the four IDX files, in search order."""
    dirs = [r / sub if sub != "." else r for r in data_roots(root) for sub in SUBDIRS]
    return dirs + [SYSTEM_DIR]


def locate(root, download: bool) -> dict[str, Path]:
    """The four IDX files from the first folder holding all of them (downloading if allowed)."""
    dirs = candidate_dirs(root)
    for d in dirs:
        found = {k: find_file(d, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    if download:
        first = data_roots(root)[0]
        _download(first)
        found = {k: find_file(first / "FashionMNIST" / "raw", stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    raise not_found("fashionmnist", dirs, "get it with `apt-get install dataset-fashion-mnist` (Debian), "
                    "download=True (torchvision), or put the 4 IDX files (train/t10k images-idx3/labels-idx1, "
                    ".gz or not) in one of those folders")


def _download(root: Path) -> None:
    import torchvision.datasets as tvd

    try:
        tvd.FashionMNIST(root=os.fspath(root), train=True, download=True)
    except Exception as e:
        raise DataError(f"fashionmnist: download with torchvision into {root} failed ({type(e).__name__}: {e})") from e


@DATASETS.register("fashionmnist")
def load_fashionmnist(root=None, image_size: int | None = None, labels: str = "fine",
                      download: bool = False) -> DataSplits:
    """Fashion-MNIST, images uint8 [N, 1, 28, 28] (or image_size), augment "crop_flip"."""
    check_labels("fashionmnist", labels)
    check_image_size(image_size)
    arrays = {k: read_idx(p) for k, p in locate(root, download).items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"fashionmnist: {split} images {x.shape} and labels {y.shape} do not match")
        check_label_range("fashionmnist", y, len(CLASS_NAMES))
    import torch

    train_x = torch.from_numpy(arrays["train_x"].copy())[:, None]
    test_x = torch.from_numpy(arrays["test_x"].copy())[:, None]
    if image_size is not None:
        train_x, test_x = resize_uint8(train_x, image_size), resize_uint8(test_x, image_size)
    mean, std = channel_stats(train_x)
    return DataSplits("fashionmnist", train_x, torch.from_numpy(arrays["train_y"].astype(np.int64)),
                      test_x, torch.from_numpy(arrays["test_y"].astype(np.int64)), len(CLASS_NAMES),
                      mean, std, augment="crop_flip", class_names=list(CLASS_NAMES))
