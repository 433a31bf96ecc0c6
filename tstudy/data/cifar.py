"""CIFAR-10 and CIFAR-100 from torchvision's on-disk python format (50,000 train / 10,000 test, 32x32 RGB).

``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``cifar-100-python/{train,test,meta}`` (with ``fine_labels`` and ``coarse_labels``),
looked for in each of ``data_roots(root)`` (or a root that is the folder itself).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from tstudy.data import DATASETS, DataError, DataSplits, channel_stats, data_roots, resize_uint8
from tstudy.data.files import check_image_size, check_label_range, check_labels, not_found

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant's files are and what their pickles are called."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_keys: dict[str, tuple[str, str]]  # labels -> (key in batches, key of names in meta)
    torchvision_class: str


CIFAR10 = CifarFormat("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "batches.meta", {"fine": ("labels", "label_names")}, "CIFAR10")
CIFAR100 = CifarFormat("cifar100", "cifar-100-python", ("train",), "test", "meta",
                       {"fine": ("fine_labels", "fine_label_names"),
                        "coarse": ("coarse_labels", "coarse_label_names")}, "CIFAR100")


def read_pickle(path: Path) -> dict:
    """One CIFAR pickle as a dict with str keys (the files are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"{path}: missing file of the CIFAR python format") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable CIFAR pickle ({e})") from e
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _field(d: dict, key: str, path: Path):
    if key not in d:
        raise DataError(f"{path}: CIFAR pickle has no {key!r} entry (has {', '.join(map(str, d))})")
    return d[key]


def read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] from batch pickles, in order."""
    xs, ys = [], []
    for name in files:
        d = read_pickle(folder / name)
        data = np.asarray(_field(d, "data", folder / name), dtype=np.uint8)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(_field(d, label_key, folder / name), dtype=np.int64))
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{folder / name}: {len(xs[-1])} images but {len(ys[-1])} labels")
    import torch

    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def find_folder(fmt: CifarFormat, roots: list[Path]) -> tuple[Path | None, list[Path]]:
    """The first ``<root>/<folder>`` (or a root that is the folder) holding the meta file; and all tried."""
    tried = []
    for r in roots:
        for cand in (r / fmt.folder, r):
            if cand == r and r.name != fmt.folder:
                continue
            tried.append(cand)
            if (cand / fmt.meta_file).is_file():
                return cand, tried
    return None, tried


def download(fmt: CifarFormat, root: Path) -> None:
    """Fetch the dataset with torchvision's downloader into ``root``."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, fmt.torchvision_class)(root=os.fspath(root), train=True, download=True)
    except Exception as e:
        raise DataError(f"{fmt.name}: download with torchvision into {root} failed ({type(e).__name__}: {e})") from e


def locate(fmt: CifarFormat, root, download_ok: bool) -> Path:
    """The CIFAR folder, downloading into the first root if allowed and nothing is found."""
    roots = data_roots(root)
    folder, tried = find_folder(fmt, roots)
    if folder is None and download_ok:
        download(fmt, roots[0])
        folder, _ = find_folder(fmt, roots[:1])
    if folder is None:
        raise not_found(fmt.name, tried, f"get it with download=True (torchvision's downloader, into {roots[0]}) "
                        f"or put torchvision's {fmt.folder}/ folder in one of those roots")
    return folder


def load_cifar(fmt: CifarFormat, root, image_size: int | None, labels: str, download: bool) -> DataSplits:
    """Load one CIFAR variant (see the module docstring)."""
    check_labels(fmt.name, labels, tuple(fmt.label_keys))
    check_image_size(image_size)
    folder = locate(fmt, root, download)
    label_key, names_key = fmt.label_keys[labels]
    meta = read_pickle(folder / fmt.meta_file)
    class_names = [str(n) for n in _field(meta, names_key, folder / fmt.meta_file)]
    train_x, train_y = read_batches(folder, fmt.train_files, label_key)
    test_x, test_y = read_batches(folder, (fmt.test_file,), label_key)
    for y in (train_y, test_y):
        check_label_range(fmt.name, y, len(class_names))
    if image_size is not None:
        train_x, test_x = resize_uint8(train_x, image_size), resize_uint8(test_x, image_size)
    mean, std = channel_stats(train_x)
    return DataSplits(fmt.name, train_x, train_y, test_x, test_y, len(class_names), mean, std,
                      augment="crop_flip", class_names=class_names)


@DATASETS.register("cifar10")
def load_cifar10(root=None, image_size: int | None = None, labels: str = "fine", download: bool = False) -> DataSplits:
    """CIFAR-10: 10 classes; only 'fine' labels."""
    return load_cifar(CIFAR10, root, image_size, labels, download)


@DATASETS.register("cifar100")
def load_cifar100(root=None, image_size: int | None = None, labels: str = "fine", download: bool = False) -> DataSplits:
    """CIFAR-100: 100 fine classes, or the 20 superclasses with ``labels="coarse"``."""
    return load_cifar(CIFAR100, root, image_size, labels, download)
