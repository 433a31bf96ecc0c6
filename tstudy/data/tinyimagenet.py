"""Tiny-ImageNet-200 (64x64 RGB, 200 classes; 500 train / 50 val images per class; val is the test split).

Read from an extracted ``tiny-imagenet-200/`` folder (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` + ``val/val_annotations.txt``) or straight from ``tiny-imagenet-200*.zip``
files (the official zip, or shards that unzip into that layout: any number of them), looked for
in each of ``data_roots(root)`` and its ``tiny-imagenet-200/``. Classes are in ``sorted(wnids)``
order; greyscale JPEGs become RGB.

A class of wnids.txt with no training images (e.g. a train shard not yet present) is kept: labels
stay over all classes in sorted-wnid order, its val images stay in the test set, and a warning
is logged. The decoded arrays are cached (see :mod:`tstudy.data.files`).
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tstudy.data import DATASETS, DataError, DataSplits, channel_stats, data_roots, resize_uint8
from tstudy.data.files import (cached, check_image_size, check_labels, decode_all, decoding, fingerprint,
                               is_image, natural_key, not_found)

log = logging.getLogger("tstudy.data.tinyimagenet")

FOLDER = "tiny-imagenet-200"
ZIP_GLOB = "tiny-imagenet-200*.zip"
NATIVE_SIZE = 64
WNIDS = "wnids.txt"
VAL_ANNOTATIONS = "val/val_annotations.txt"
_TRAIN_RE = re.compile(r"^train/([^/]+)/images/([^/]+)$")


class Source:
    """A Tiny-ImageNet tree; file names are relative to ``tiny-imagenet-200/``."""

    description: str

    def names(self) -> set[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def key(self, used: list[str]) -> list:
        """Names, sizes and mtimes of the source files (``used``: the members that are read)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    """An extracted ``tiny-imagenet-200/`` folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def names(self) -> set[str]:
        out = {WNIDS, VAL_ANNOTATIONS}
        for sub in ("train", "val"):
            for dirpath, _, files in os.walk(self.path / sub):
                rel = Path(dirpath).relative_to(self.path).as_posix()
                out.update(f"{rel}/{f}" for f in files)
        return out

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def key(self, used: list[str]) -> list:
        return ["folder", fingerprint((n, self.path / n) for n in [WNIDS, VAL_ANNOTATIONS, *used])]


class ZipSource(Source):
    """``tiny-imagenet-200*.zip`` files whose members unzip into ``tiny-imagenet-200/``."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.description = ", ".join(str(p) for p in paths)
        self.zips = [zipfile.ZipFile(p) for p in paths]
        self.members: dict[str, tuple[zipfile.ZipFile, zipfile.ZipInfo]] = {}
        for z in self.zips:
            for info in z.infolist():
                if not info.is_dir():
                    name = info.filename.removeprefix(FOLDER + "/")
                    self.members.setdefault(name, (z, info))

    def names(self) -> set[str]:
        return set(self.members)

    def read(self, name: str) -> bytes:
        z, info = self.members[name]
        return z.read(info)

    def key(self, used: list[str]) -> list:
        return ["zips", fingerprint((p.name, p) for p in self.paths)]

    def close(self) -> None:
        for z in self.zips:
            z.close()


# ------------------------------------------------------------------------------------- search

def _open_zips(paths: list[Path], tried: list[str]) -> Source | None:
    """A ZipSource if the zips hold wnids.txt and the val annotations; else note why in ``tried``."""
    label = f"{paths[0].parent / ZIP_GLOB}"
    try:
        src = ZipSource(paths)
    except (OSError, zipfile.BadZipFile) as e:
        tried.append(f"{label} (unreadable: {e})")
        return None
    lacking = [n for n in (WNIDS, VAL_ANNOTATIONS) if n not in src.members]
    if lacking:
        src.close()
        tried.append(f"{label} ({len(paths)} zips, lacking {' and '.join(lacking)})")
        return None
    return src


def find_source(root) -> tuple[Source | None, list[str]]:
    """The first extracted folder or zip set found in ``data_roots(root)``; and every place tried."""
    tried: list[str] = []
    for r in (r.absolute() for r in data_roots(root)):
        folders = [r / FOLDER] + ([r] if r.name == FOLDER else [])
        for f in folders:
            tried.append(f"{f}/")
            if (f / WNIDS).is_file() and (f / VAL_ANNOTATIONS).is_file() and (f / "train").is_dir():
                return FolderSource(f), tried
        for d in (r, r / FOLDER):
            zips = sorted(d.glob(ZIP_GLOB)) if d.is_dir() else []
            if not zips:
                tried.append(str(d / ZIP_GLOB))
            elif (src := _open_zips(zips, tried)) is not None:
                return src, tried
    return None, tried


# -------------------------------------------------------------------------------------- index

@dataclass
class Index:
    """Which files make up each split, with labels in sorted-wnid order."""

    wnids: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]


def read_wnids(src: Source) -> list[str]:
    wnids = sorted({w.strip() for w in src.read(WNIDS).decode().splitlines() if w.strip()})
    if not wnids:
        raise DataError(f"tinyimagenet: {WNIDS} in {src.description} lists no classes")
    return wnids


def read_val(src: Source, names: set[str], label: dict[str, int]) -> list[tuple[str, int]]:
    """(file, label) of every annotated val image, in natural file-name order."""
    val = []
    for line in src.read(VAL_ANNOTATIONS).decode().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        name, wnid = f"val/images/{parts[0].strip()}", parts[1].strip()
        if wnid not in label:
            raise DataError(f"tinyimagenet: {VAL_ANNOTATIONS} names class {wnid!r}, not in {WNIDS}")
        if name not in names:
            raise DataError(f"tinyimagenet: {name} (in {VAL_ANNOTATIONS}) is missing from {src.description}")
        val.append((name, label[wnid]))
    if not val:
        raise DataError(f"tinyimagenet: {VAL_ANNOTATIONS} in {src.description} lists no images")
    return sorted(val, key=lambda t: natural_key(t[0]))


def read_train(names: set[str], label: dict[str, int]) -> list[tuple[str, int]]:
    """(file, label) of every train image of a listed class, by class then natural file name."""
    train = []
    for name in names:
        m = _TRAIN_RE.match(name)
        if m and m.group(1) in label and is_image(name):
            train.append((name, label[m.group(1)]))
    return sorted(train, key=lambda t: (t[1], natural_key(t[0])))


def build_index(src: Source) -> Index:
    """The split lists of ``src``; warns about classes without training images."""
    wnids = read_wnids(src)
    label = {w: i for i, w in enumerate(wnids)}
    names = src.names()
    train, val = read_train(names, label), read_val(src, names, label)
    if not train:
        raise DataError(f"tinyimagenet: no training images (train/<wnid>/images/*) in {src.description}")
    counts = np.bincount([y for _, y in train], minlength=len(wnids))
    missing = [wnids[i] for i in np.flatnonzero(counts == 0)]
    if missing:
        log.warning("tinyimagenet: %d of %d classes have no training images (a train shard missing?), "
                    "e.g. %s; labels stay over all %d classes and their val images stay in the test set",
                    len(missing), len(wnids), ", ".join(missing[:3]), len(wnids))
    return Index(wnids, train, val)


# ------------------------------------------------------------------------------------ loading

def decode_splits(src: Source, index: Index) -> dict[str, np.ndarray]:
    """Decode both splits at 64x64 and compute the train mean/std (saying when it starts and ends)."""
    arrays = {}
    with decoding("tinyimagenet", len(index.train) + len(index.val), src.description):
        for split, items in (("train", index.train), ("test", index.val)):
            names = [n for n, _ in items]
            arrays[f"{split}_x"] = decode_all(names, src.read, NATIVE_SIZE)
            arrays[f"{split}_y"] = np.array([y for _, y in items], dtype=np.int64)
    return _with_stats(arrays)


def _tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(a)


def resize_splits(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The native arrays with images resized to size x size (resize_uint8), stats recomputed."""
    out = dict(arrays)
    for split in ("train", "test"):
        out[f"{split}_x"] = resize_uint8(_tensor(arrays[f"{split}_x"]), size).numpy()
    return _with_stats(out)


def _with_stats(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mean, std = channel_stats(_tensor(arrays["train_x"]))
    return {**arrays, "mean": np.array(mean), "std": np.array(std)}


def load_arrays(src: Source, index: Index, size: int) -> dict[str, np.ndarray]:
    """The decoded splits at ``size``, from the cache or decoded (then resized) and cached."""
    base = [src.key([n for n, _ in index.train + index.val]), index.wnids]

    def native() -> dict[str, np.ndarray]:
        return cached("tinyimagenet", [*base, NATIVE_SIZE], lambda: decode_splits(src, index))

    if size == NATIVE_SIZE:
        return native()
    return cached("tinyimagenet", [*base, size], lambda: resize_splits(native(), size))


@DATASETS.register("tinyimagenet")
def load_tinyimagenet(root=None, image_size: int | None = None, labels: str = "fine",
                      download: bool = False) -> DataSplits:
    """Tiny-ImageNet, uint8 [N, 3, 64, 64] (or image_size), 200 classes, augment "crop_flip"."""
    check_labels("tinyimagenet", labels)
    check_image_size(image_size)
    src, tried = find_source(root)
    if src is None:
        how = ("get http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it, or put the "
               "tiny-imagenet-200*.zip files, in one of those roots (or point root / $TSTUDY_DATA at them)"
               + ("; download=True is not supported for this dataset" if download else ""))
        raise not_found("tinyimagenet", tried, how)
    try:
        index = build_index(src)
        a = load_arrays(src, index, image_size or NATIVE_SIZE)
    finally:
        src.close()
    t = {k: _tensor(a[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
    return DataSplits("tinyimagenet", t["train_x"], t["train_y"], t["test_x"], t["test_y"], len(index.wnids),
                      tuple(float(m) for m in a["mean"]), tuple(float(s) for s in a["std"]),
                      augment="crop_flip", class_names=list(index.wnids))
