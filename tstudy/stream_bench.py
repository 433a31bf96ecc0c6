"""Decode throughput of the streamed data path: ``python -m tstudy.bench --data stream``.

Images/s of :class:`tstudy.data.decode.DecoderPool` executing an epoch plan, against the usual
loader: torchvision ``ImageFolder`` + ``DataLoader(num_workers=same)`` with
``RandomResizedCrop(size, antialias=True)`` + ``RandomHorizontalFlip`` + ``PILToTensor``, on the
same images, for each worker count, in the same run:

- ``tiny64``: Tiny-ImageNet train JPEGs (64x64; the first ``--images`` of train zip 0, or of an
  ImageFolder given with ``--source``), random-resized-crop to 64;
- ``synth224``: synthetic ImageNet-sized JPEGs (500x375, smooth random images, quality 90,
  generated once), random-resized-crop to 224.

Both loaders are started and warmed up (one untimed pass) before timing; each timed pass is a
full epoch of full batches; the two loaders alternate, ``--repeats`` times (median reported).
Worker start-up times are reported separately. Ratios are DecoderPool / DataLoader.

``--data stream --train`` (dispatched by ``tstudy.bench``) is the training benchmark instead:
:mod:`tstudy.stream_train_bench` (its options: ``--data stream --train --help``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

# the project's shared data beside the checkout (../shared), as the tests find it
TINY_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-200" / "tiny-imagenet-200-train-0.zip"


@contextlib.contextmanager
def scratch_dir(keep: str | None, prefix: str) -> Iterator[Path]:
    """The benchmark's working folder: ``keep`` (kept, reused by the next run) or a temporary one."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def requested(argv: list[str]) -> bool:
    """Whether ``argv`` (of ``python -m tstudy.bench``) asks for this benchmark (``--data stream``)."""
    return "--data=stream" in argv or any(a == "--data" and b == "stream" for a, b in zip(argv, argv[1:]))


# --------------------------------------------------------------------------- image sets
def tiny_folder(dest: Path, n: int, zip_path: Path = TINY_ZIP) -> Path:
    """The first ``n`` train JPEGs of a Tiny-ImageNet train zip, as an ImageFolder (kept if present)."""
    done = dest / ".done"
    if done.is_file() and int(done.read_text()) == n:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(m for m in z.namelist() if m.endswith(".JPEG") and "/train/" in m)[:n]
        for m in names:
            out = dest / m.split("/")[2] / m.rsplit("/", 1)[1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(m))
    done.write_text(str(n))
    return dest


def synthetic_folder(dest: Path, n: int, size=(375, 500), classes: int = 10, seed: int = 0) -> Path:
    """``n`` smooth random RGB JPEGs of ``size`` (h, w), quality 90, in ``classes`` folders (kept if present)."""
    from PIL import Image

    done = dest / ".done"
    if done.is_file() and done.read_text() == f"{n} {size}":
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        small = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        d = dest / f"class_{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"img_{i:06d}.jpg", quality=90)
    done.write_text(f"{n} {size}")
    return dest


# --------------------------------------------------------------------------- loaders
def _epoch_tstudy(pool, store, epoch: int, batch_size: int, size: int) -> int:
    from tstudy.data.plan import epoch_plan

    n = 0
    for x, _ in pool.train_batches(epoch_plan(store.sizes, 0, epoch), batch_size, size):
        n += x.shape[0]
    return n


def _epoch_torchvision(loader) -> int:
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n


def bench_set(name: str, folder: Path, store_dir: Path, size: int, workers: list[int], repeats: int,
              batch_size: int, log) -> list[dict]:
    import torch
    import torchvision
    import torchvision.transforms as T

    from tstudy.data.decode import DecoderPool
    from tstudy.data.packed import PackedStore, build_store

    store = PackedStore(build_store(folder, store_dir, progress=False))
    tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    assert len(dataset) == len(store), (len(dataset), len(store))
    rows = []
    for w in workers:
        t0 = time.perf_counter()
        pool = DecoderPool(store, workers=w, prefetch=4)
        g = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                             num_workers=w, persistent_workers=w > 0, generator=g,
                                             prefetch_factor=4 if w else None)
        try:
            t1 = time.perf_counter()
            _epoch_tstudy(pool, store, 0, batch_size, size)  # warm-up: starts the workers
            t2 = time.perf_counter()
            _epoch_torchvision(loader)
            t3 = time.perf_counter()
            times: dict[str, list[float]] = {"tstudy": [], "torchvision": []}
            images = 0
            for r in range(repeats):
                order = ("tstudy", "torchvision") if r % 2 == 0 else ("torchvision", "tstudy")
                for which in order:
                    t = time.perf_counter()
                    images = (_epoch_tstudy(pool, store, r + 1, batch_size, size) if which == "tstudy"
                              else _epoch_torchvision(loader))
                    times[which].append(time.perf_counter() - t)
        finally:
            pool.close()
            del loader
        rates = {k: [images / t for t in v] for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in rates.items()}
        row = {"set": name, "size": size, "workers": w, "images_per_epoch": images, "batch_size": batch_size,
               "tstudy_images_per_s": med["tstudy"], "torchvision_images_per_s": med["torchvision"],
               "ratio": med["tstudy"] / med["torchvision"],
               "tstudy_runs": rates["tstudy"], "torchvision_runs": rates["torchvision"],
               "tstudy_first_epoch_s": t2 - t1 + (t1 - t0), "torchvision_first_epoch_s": t3 - t2}
        log(f"{name:9s} workers={w}: DecoderPool {med['tstudy']:8.0f} img/s   DataLoader "
            f"{med['torchvision']:8.0f} img/s   ratio {row['ratio']:.2f}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- main
def environment() -> dict:
    import PIL
    import torch
    import torchvision
    from PIL import features

    try:
        from tstudy.provenance import git_commit

        commit = git_commit()
    except Exception:  # pragma: no cover
        commit = None
    return {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")), "git_commit": commit}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tstudy.bench --data stream", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="stream", choices=("stream",))
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default 0,1,2)")
    p.add_argument("--images", type=int, default=None,
                   help="images per set (default 2048 for tiny64, 512 for synth224)")
    p.add_argument("--sets", default="tiny64,synth224", help="which image sets (default tiny64,synth224)")
    p.add_argument("--source", default=None, help="an ImageFolder to use instead of Tiny-ImageNet for tiny64")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per loader (median; default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep", default=None, metavar="DIR", help="build images and stores in DIR and keep them")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/stream-cpu-<host>.json; '' for none)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]
    sets = args.sets.split(",")

    def log(msg: str) -> None:
        print(msg, flush=True)

    load_before = os.getloadavg()
    rows, notes = [], {}
    with scratch_dir(args.keep, "tstudy-stream-bench-") as base:
        for name in sets:
            if name == "tiny64":
                n = args.images or 2048
                if args.source:
                    folder, notes[name] = Path(args.source), f"ImageFolder {args.source}"
                else:
                    folder = tiny_folder(base / f"tiny-{n}", n)
                    notes[name] = f"the first {n} train JPEGs of {TINY_ZIP.name} (64x64), RRC+flip to 64"
                rows += bench_set(name, folder, base / f"store-tiny-{n}", 64, workers, args.repeats,
                                  args.batch_size, log)
            elif name == "synth224":
                n = args.images or 512
                folder = synthetic_folder(base / f"synth-{n}", n)
                notes[name] = f"{n} synthetic 500x375 JPEGs (smooth random, quality 90), RRC+flip to 224"
                rows += bench_set(name, folder, base / f"store-synth-{n}", 224, workers, args.repeats,
                                  args.batch_size, log)
            else:
                raise SystemExit(f"unknown set {name!r} (tiny64, synth224)")
    out = {"benchmark": "stream", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "environment": environment(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "repeats": args.repeats, "sets": notes, "results": rows,
           "note": "images/s: medians over repeats of full epochs (full batches) after a warm-up epoch; "
                   "ratio = DecoderPool / torchvision DataLoader with the same number of workers"}
    if args.out is None:
        host = re.sub(r"[^a-z0-9]+", "-", platform.node().lower()).strip("-") or "host"
        args.out = f"results/bench/stream-cpu-{host}.json"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.out}")
    return out
