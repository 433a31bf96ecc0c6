"""Packed stores: the JPEG bytes of one split in one file, built once, memory-mapped by readers.

A store is a folder::

    data.bin     the JPEG files, one after another
    index.npz    offsets, nbytes (int64), heights, widths (int32), labels (int64), names (str)
    meta.json    classes, count, source, layout, max_side, format version, the source listing's
                 count and hash of (name, bytes) (see :func:`check_source`); written last

Sources (``build_store(source, dest, layout=...)``):

- ``"imagefolder"``: a class-per-folder tree ``source/<class>/<image>``, listed as the in-memory
  loader lists it (:func:`tstudy.data.files.list_classes` / ``list_images``: every non-hidden
  folder is a class, images directly in it, by natural file name), or a ``.zip`` holding one
  (``<class>/**/<image>``): the class is the first folder under the members' common prefix,
  after a ``train/`` folder if there is one (Tiny-ImageNet's train zips:
  ``tiny-imagenet-200/train/<wnid>/images/*.JPEG``), images sorted by path. ``classes=`` gives
  the class list explicitly (e.g. all 200 wnids for one train shard).
- ``"ilsvrc_val"``: the flat ILSVRC-2012 val folder; labels from ``ground_truth=`` (or found next
  to the images): a ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first word is the
  wnid), a text file of ``<file name> <wnid>`` lines, or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (ILSVRC ids, mapped to wnids through the devkit's
  ``meta.mat``; needs scipy). ``classes=`` must be the sorted wnids of the train split.

JPEG files are stored byte for byte. An image is re-encoded (Pillow, RGB, quality 90) when it is
not a JPEG, not RGB (greyscale, CMYK, palette...), or, with ``max_side``, when its longer side
exceeds ``max_side`` (resized, bicubic with antialiasing, so that the longer side is
``max_side``).

Building is resumable: the data file grows in ``data.bin.partial``, the index rows (offset,
bytes, height, width as int64) in ``rows.partial``, and a checkpoint (``progress.json``: how many
images and bytes are durable) is rewritten atomically every ``checkpoint_every`` images, after
both files are synced; a killed build continues from its last checkpoint.
A store whose ``meta.json`` exists is finished and is not rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tstudy.atomic import atomic_write, write_json
from tstudy.data import DataError
from tstudy.data.files import is_image

FORMAT = 1
QUALITY = 90
LAYOUTS = ("imagefolder", "ilsvrc_val")


class StoreError(Exception):
    pass


# --------------------------------------------------------------------------- sources
class _Items:
    """(names, labels, classes, read(name) -> bytes) of a source."""

    def __init__(self, names: list[str], labels: list[int], classes: list[str], read: Callable[[str], bytes],
                 close: Callable[[], None] = lambda: None) -> None:
        self.names, self.labels, self.classes, self.read, self.close = names, labels, classes, read, close


def _class_items(paths: list[tuple[str, str]], classes: Sequence[str] | None, what: str):
    """paths: (name, class); returns names, labels, classes (sorted names within classes order)."""
    found = sorted({c for _, c in paths})
    classes = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(found) - set(index))
    if unknown:
        raise StoreError(f"{what}: folders not in classes=: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    paths = sorted(paths, key=lambda p: (index[p[1]], p[0]))
    return [p for p, _ in paths], [index[c] for _, c in paths], classes


def _imagefolder(source: Path, classes: Sequence[str] | None) -> _Items:
    if source.is_file() and zipfile.is_zipfile(source):
        z = zipfile.ZipFile(source)
        members = [m.filename for m in z.infolist() if not m.is_dir() and is_image(m.filename)]
        if not members:
            raise StoreError(f"{source}: no images in the zip")
        parts = [m.split("/") for m in members]
        common = 0
        while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
            common += 1
        if all(len(p) > common + 2 and p[common] == "train" for p in parts):
            common += 1
        pairs = [(m, p[common]) for m, p in zip(members, parts) if len(p) > common + 1]
        names, labels, classes = _class_items(pairs, classes, str(source))
        return _Items(names, labels, classes, z.read, z.close)
    if not source.is_dir():
        raise StoreError(f"{source}: neither a folder nor a zip file")
    from tstudy.data.files import list_classes, list_images

    try:
        classes = list(classes) if classes is not None else list_classes(source, str(source))
        found = list_images(source, {c: i for i, c in enumerate(classes)}, str(source))
    except DataError as e:
        raise StoreError(str(e)) from None
    names = [p.relative_to(source).as_posix() for p, _ in found]
    return _Items(names, [y for _, y in found], classes, lambda n: (source / n).read_bytes())


def _ilsvrc_truth(source: Path, ground_truth: Path | None) -> tuple[dict[str, str], Path]:
    """(file stem -> wnid, the ground-truth file read)."""
    candidates = [ground_truth] if ground_truth else [
        *(d / "LOC_val_solution.csv" for d in (source, source.parent)),
        *(d / "ILSVRC2012_validation_ground_truth.txt" for d in (source, source.parent,
                                                                  source.parent / "ILSVRC2012_devkit_t12" / "data"))]
    for gt in candidates:
        if gt is None or not gt.is_file():
            continue
        lines = gt.read_text().splitlines()
        if gt.suffix == ".csv":
            out = {}
            for line in lines[1:]:
                if line.strip():
                    img, pred = line.split(",", 1)
                    out[img.strip()] = pred.split()[0]
            return out, gt
        words = [line.split() for line in lines if line.strip()]
        if all(len(w) == 2 for w in words):
            return {Path(a).stem: b for a, b in words}, gt
        if all(len(w) == 1 for w in words):  # devkit: ILSVRC ids of val images 1..50000
            meta = gt.parent / "meta.mat"
            if not meta.is_file():
                raise StoreError(f"{gt}: ILSVRC ids need the devkit's meta.mat next to it")
            from scipy.io import loadmat  # optional dependency

            synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
            wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
            return {f"ILSVRC2012_val_{i + 1:08d}": wnid[int(w[0])] for i, w in enumerate(words)}, gt
        raise StoreError(f"{gt}: unrecognised ground-truth format")
    raise StoreError(f"{source}: no ground truth found (tried {', '.join(str(c) for c in candidates)})")


def _ilsvrc_val(source: Path, classes: Sequence[str] | None, ground_truth: Path | None) -> _Items:
    if classes is None:
        raise StoreError("layout ilsvrc_val needs classes= (the sorted wnids of the train split)")
    truth, gt = _ilsvrc_truth(source, ground_truth)
    files = sorted(f.name for f in source.iterdir() if f.is_file() and is_image(f.name))
    missing = [f for f in files if Path(f).stem not in truth]
    if missing:
        raise StoreError(f"{source}: no ground truth for {missing[:3]}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({truth[Path(f).stem] for f in files} - set(index))
    if unknown:
        raise StoreError(f"{source}: {gt} labels images with {len(unknown)} wnid(s) not among the train "
                         f"classes: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} (a train class subset "
                         "needs a val folder of the same classes)")
    labels = [index[truth[Path(f).stem]] for f in files]
    return _Items(files, labels, list(classes), lambda n: (source / n).read_bytes())


# --------------------------------------------------------------------------- source listing
def _listing(source: Path, layout: str) -> list[tuple[str, int]]:
    """(name, bytes) of the images in ``source`` (a listing and a stat each, nothing read); [] when
    there are none (the source gone, or its images deleted after packing)."""
    from tstudy.data.files import class_entries

    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            return [(m.filename, m.file_size) for m in z.infolist() if not m.is_dir() and is_image(m.filename)]
    if not source.is_dir():
        return []
    if layout == "ilsvrc_val":
        return sorted((e.name, e.stat().st_size) for e in os.scandir(source) if e.is_file() and is_image(e.name))
    folders = {e.name: 0 for e in os.scandir(source) if e.is_dir() and not e.name.startswith(".")}
    return [(f"{c.name}/{f.name}", f.stat().st_size) for c, _, files in class_entries(source, folders) for f in files]


def _listing_record(listing: list[tuple[str, int]]) -> dict:
    h = hashlib.sha256()
    for name, size in listing:
        h.update(f"{name}\0{size}\n".encode())
    return {"count": len(listing), "sha256": h.hexdigest()}


def check_source(dest: Path, source: Path) -> None:
    """Raise StoreError when the finished store ``dest`` was packed from other images than ``source``
    now holds (added, removed or changed files). A source without images (deleted after packing)
    and a store without the record (older versions) pass."""
    dest, source = Path(dest), Path(source)
    meta = json.loads((dest / "meta.json").read_text())
    then = meta.get("source_listing")
    if then is None:
        return
    listing = _listing(source, meta.get("layout", "imagefolder"))
    if not listing:
        return
    now = _listing_record(listing)
    if now != then:
        how = (f"{then['count']} images then, {now['count']} now" if now["count"] != then["count"]
               else f"{now['count']} images, other files or sizes")
        raise StoreError(f"{source} changed since it was packed into {dest} ({how}); delete {dest.parent} "
                         "to rebuild the store from it")


# --------------------------------------------------------------------------- encoding
def _prepare(data: bytes, max_side: int | None) -> tuple[bytes, int, int]:
    """(stored bytes, height, width): the file as is, or re-encoded as an RGB JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        too_big = max_side is not None and max(w, h) > max_side
        if img.format == "JPEG" and img.mode == "RGB" and not too_big:
            return data, h, w
        img = img.convert("RGB")
        if too_big:
            s = max_side / max(w, h)
            w, h = max(1, round(w * s)), max(1, round(h * s))
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=QUALITY)
        return out.getvalue(), h, w


def _prepare_many(datas: list[bytes], max_side: int | None) -> list[tuple[bytes, int, int]]:
    return [_prepare(d, max_side) for d in datas]


def _prepared(items: _Items, start: int, max_side: int | None, workers: int, chunk: int = 16):
    """(stored bytes, height, width) of images ``start``... in order; in ``workers`` processes if > 0."""
    n = len(items.names)
    if workers <= 0:
        for i in range(start, n):
            yield _prepare(items.read(items.names[i]), max_side)
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method))
    window: deque = deque()
    try:
        i = start
        while i < n or window:
            while i < n and len(window) < 4 * workers:
                j = min(n, i + chunk)
                window.append(pool.submit(_prepare_many, [items.read(items.names[k]) for k in range(i, j)], max_side))
                i = j
            yield from window.popleft().result()
    finally:
        for fut in window:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _after_item(i: int) -> None:
    """Called after each image is appended (a hook for tests that interrupt a build)."""


class _Progress:
    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.total, self.enabled, self.desc = total, enabled, desc
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        rate = done / max(now - self.t0, 1e-9)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.desc} [{bar:<30}] {done}/{self.total} ({rate:.0f} img/s)")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------- build
def _params(source: Path, layout: str, max_side: int | None, items: _Items) -> dict:
    h = hashlib.sha256()
    for n, y in zip(items.names, items.labels):
        h.update(f"{n}\0{y}\n".encode())
    return {"format": FORMAT, "source": str(source), "layout": layout, "max_side": max_side,
            "quality": QUALITY, "items": h.hexdigest(), "count": len(items.names), "classes": items.classes}


def build_store(source: Path, dest: Path, *, layout: str = "imagefolder", max_side: int | None = None,
                progress: bool = True, classes: Sequence[str] | None = None, ground_truth: Path | None = None,
                checkpoint_every: int = 1000, workers: int = 0) -> Path:
    """Pack the images of ``source`` into the store ``dest`` (see the module docstring); returns ``dest``.

    A finished store (``meta.json`` present) is returned as it is, whatever the arguments (a store
    packed with ``max_side`` stays so; its meta.json says how it was built; delete the folder to
    rebuild), unless ``source`` now lists other images (:func:`check_source`: StoreError; a source
    whose images are gone is fine); an unfinished one is resumed
    (from scratch if its checkpoint is of other parameters or other source images). ``workers``
    > 0 re-encodes in that many processes (the store is the same for any number).
    """
    source, dest = Path(source), Path(dest)
    if (dest / "meta.json").is_file():
        check_source(dest, source)
        return dest
    if layout not in LAYOUTS:
        raise StoreError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if max_side is not None and max_side <= 0:
        raise StoreError(f"max_side must be positive, got {max_side}")
    items = (_imagefolder(source, classes) if layout == "imagefolder"
             else _ilsvrc_val(source, classes, None if ground_truth is None else Path(ground_truth)))
    try:
        listing = _listing_record(_listing(source, layout))
        dest.mkdir(parents=True, exist_ok=True)
        params = _params(source, layout, max_side, items)
        partial, rows_path, ckpt = dest / "data.bin.partial", dest / "rows.partial", dest / "progress.json"
        done, size = 0, 0
        if ckpt.is_file() and partial.is_file() and rows_path.is_file():
            state = json.loads(ckpt.read_text())
            if (state.get("params") == params and partial.stat().st_size >= state["bytes"]
                    and rows_path.stat().st_size >= 32 * state["done"]):
                done, size = state["done"], state["bytes"]
        n = len(items.names)
        bar = _Progress(n, progress, f"packing {dest.name}")
        mode = "r+b" if done else "wb"
        with open(partial, mode) as f, open(rows_path, mode) as r:
            f.truncate(size)
            f.seek(size)
            r.truncate(32 * done)
            r.seek(32 * done)

            def sync() -> None:
                for fh in (f, r):
                    fh.flush()
                    os.fsync(fh.fileno())

            def write(i: int, data: bytes, h: int, w: int) -> None:
                nonlocal size, done
                f.write(data)
                r.write(np.array([size, len(data), h, w], np.int64).tobytes())
                size += len(data)
                done = i + 1
                if done % checkpoint_every == 0:
                    sync()
                    write_json(ckpt, {"params": params, "done": done, "bytes": size})
                bar.update(done)
                _after_item(i)

            prepared = _prepared(items, done, max_side, workers)
            try:
                for i, (data, h, w) in enumerate(prepared, start=done):
                    write(i, data, h, w)
            finally:
                prepared.close()
            sync()
        bar.update(n, force=True)
        rows = np.fromfile(rows_path, dtype=np.int64).reshape(-1, 4)
        if rows.shape[0] != n or (n and rows[-1, 0] + rows[-1, 1] != size):
            raise StoreError(f"{dest}: the packed index ({rows.shape[0]} rows) does not match the data "
                             f"({n} images, {size} bytes); delete {dest} to rebuild it")
        os.replace(partial, dest / "data.bin")

        def write_index(p: Path) -> None:
            with open(p, "wb") as fh:
                np.savez(fh, offsets=rows[:, 0].copy(), nbytes=rows[:, 1].copy(),
                         heights=rows[:, 2].astype(np.int32), widths=rows[:, 3].astype(np.int32),
                         labels=np.asarray(items.labels, np.int64), names=np.asarray(items.names, dtype=str))

        atomic_write(dest / "index.npz", write_index)
        write_json(dest / "meta.json", {**params, "bytes": size, "source_listing": listing})
        ckpt.unlink(missing_ok=True)
        rows_path.unlink(missing_ok=True)
    finally:
        items.close()
    return dest


# --------------------------------------------------------------------------- reading
class PackedStore:
    """A finished store, memory-mapped. Pickles as its path (a worker reopens the map)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{self.path}: not a finished packed store (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        with np.load(self.path / "index.npz") as ix:
            self.offsets = ix["offsets"]
            self.nbytes = ix["nbytes"]
            self.labels = ix["labels"]
            self.sizes = np.stack([ix["heights"], ix["widths"]], axis=1).astype(np.int64)
        self.classes: list[str] = list(self.meta["classes"])
        self._data: np.ndarray | None = None
        self._names: np.ndarray | None = None

    @property
    def names(self) -> np.ndarray:
        """The images' paths in the source (read on first use: 100+ MB at ImageNet scale)."""
        if self._names is None:
            with np.load(self.path / "index.npz") as ix:
                self._names = ix["names"]
        return self._names

    def _map(self) -> np.ndarray:
        if self._data is None:
            size = (self.path / "data.bin").stat().st_size
            self._data = (np.memmap(self.path / "data.bin", dtype=np.uint8, mode="r") if size
                          else np.zeros(0, np.uint8))
        return self._data

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def jpeg(self, i: int) -> memoryview:
        """The stored bytes of image ``i`` (a view into the map)."""
        o = int(self.offsets[i])
        return memoryview(self._map()[o:o + int(self.nbytes[i])])

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"PackedStore({str(self.path)!r}, {len(self)} images, {len(self.classes)} classes)"
