"""Any class-per-folder image set (e.g. a fine-grained one): ``train/<class>/*`` and ``val/<class>/*``
(or ``test/<class>/*``), every image converted to RGB and resized (squashed, no crop) to
``image_size`` x ``image_size``, which is required.

``root`` is the dataset folder itself, or any of ``data_roots(root)`` may hold it as ``imagefolder/``.
Classes are the sorted folder names under ``train/`` (:func:`tstudy.data.files.list_classes`, the
one rule of both data paths). Decoded arrays are cached (see
:mod:`tstudy.data.files`).

With ``augment="rrc_flip"`` the set is not loaded here: it is streamed from a packed store of its
JPEG files (random-resized-crop at any ``image_size``; :mod:`tstudy.stream_data`,
:mod:`tstudy.data.imagenet`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tstudy.data import DATASETS, DataError, DataSplits, channel_stats, data_roots
from tstudy.data.files import (cached, check_image_size, check_labels, decode_all, decoding, fingerprint,
                               list_classes, list_images, not_found)

SUBFOLDER = "imagefolder"
TEST_DIRS = ("val", "test")


def candidates(root) -> list[Path]:
    """Folders that may be the dataset: the explicit root, then ``<r>/imagefolder`` for each data root."""
    explicit = [Path(root).expanduser()] if root is not None else []
    return explicit + [r / SUBFOLDER for r in data_roots(root)]


def locate(root) -> tuple[Path, Path]:
    """The dataset folder and its test folder (val/ or test/)."""
    tried = []
    for cand in candidates(root):
        tried.append(f"{cand}/train+val|test")
        if (cand / "train").is_dir():
            for t in TEST_DIRS:
                if (cand / t).is_dir():
                    return cand, cand / t
    raise not_found("imagefolder", tried, "pass root= the folder holding train/<class>/* and val/<class>/* "
                    "(or test/<class>/*), or put it as imagefolder/ in a data root")


def decode_split(items: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    x = decode_all([p for p, _ in items], Path.read_bytes, size)
    return x, np.array([y for _, y in items], dtype=np.int64)


@DATASETS.register("imagefolder")
def load_imagefolder(root=None, image_size: int | None = None, labels: str = "fine",
                     download: bool = False) -> DataSplits:
    """Images uint8 [N, 3, image_size, image_size] from train/ and val/ (or test/), augment "crop_flip"."""
    check_labels("imagefolder", labels)
    check_image_size(image_size)
    if image_size is None:
        raise DataError("image_size: the imagefolder dataset needs image_size (every image is resized to "
                        "image_size x image_size), got None")
    folder, test_dir = locate(root)
    classes = list_classes(folder / "train")
    label = {c: i for i, c in enumerate(classes)}
    train, test = list_images(folder / "train", label), list_images(test_dir, label)

    def build() -> dict[str, np.ndarray]:
        with decoding("imagefolder", len(train) + len(test), str(folder)):
            (trx, tr_y), (tex, te_y) = decode_split(train, image_size), decode_split(test, image_size)
        return {"train_x": trx, "train_y": tr_y, "test_x": tex, "test_y": te_y}

    files = [(p.relative_to(folder).as_posix(), p) for p, _ in train + test]
    a = cached("imagefolder", [str(folder.resolve()), fingerprint(files), classes, image_size], build)
    import torch

    train_x = torch.from_numpy(a["train_x"])
    mean, std = channel_stats(train_x)
    return DataSplits("imagefolder", train_x, torch.from_numpy(a["train_y"]), torch.from_numpy(a["test_x"]),
                      torch.from_numpy(a["test_y"]), len(classes), mean, std, augment="crop_flip",
                      class_names=classes)
