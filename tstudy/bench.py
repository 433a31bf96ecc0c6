"""Throughput benchmark of student training (teacher forward included): ``python -m tstudy.bench``.

On CUDA, for each teacher -> student pair (resnet56 -> resnet20, resnet32x4 -> resnet8x4):

- (a) ``classic``: the field's loop: torchvision transforms (random crop with 4-pixel padding,
  flip, normalise) in a DataLoader with worker processes, fp32, batch 64, data copied to the GPU
  per step, teacher forward, KD loss, SGD step;
- (b) ``tstudy``: one tstudy run (data and augmentation on the GPU, the engine's step) at batch
  64 and 256;
- (c) ``tstudy_packed``: K runs (KD at K temperatures) as one packed network
  (``pack_mode="network"``), K in {8, 32}, batch 64; plus ``tstudy_sequential`` K = 8 (the
  same runs stepping in turn) for comparison.

(b) and (c) run in fp32 and bf16, each step replayed as a CUDA graph as the engine does
(``graphs`` true); the eager rows (``graphs`` false: (b) and (c) K = 8, fp32) show what the
graphs bring. Images/s count student images (K per batch image when
packed); ratios are to (a) of the same pair. Peak GPU memory per setting. Teachers are randomly
initialised (speed does not depend on the weights). Without CIFAR-100 files, random uint8 data
of CIFAR-100's shape (50,000 train images) is used, and the JSON says so.

On the CPU (or with ``--tiny``) a tiny version runs (small models and images, a few steps) so
that CI exercises the code; its numbers mean nothing.

``--cpu`` times the CPU training step instead (layout, bf16, torch.compile, packing, workers x
threads: :mod:`tstudy.cpu_bench`). ``--bookkeeping N`` times the bookkeeping commands on a root of N finished runs instead
(:mod:`tstudy.bookkeeping_bench`).
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torchvision

from tstudy.bench_steps import MEMORY, PROFILE, device_slug, engine_group, kd_loss, timed

PAIRS = [("resnet56", "resnet20"), ("resnet32x4", "resnet8x4")]
TINY_PAIRS = [("cnn_l", "cnn_s")]
TEMPERATURE = 4.0


# --------------------------------------------------------------------------- data
def synthetic_splits(n_train: int, n_test: int, classes: int, channels: int, size: int, seed: int = 0):
    """Random uint8 images and labels with the given shape (a stand-in for a real dataset)."""
    from tstudy.data import DataSplits

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    mean, std = (0.5,) * channels, (0.25,) * channels
    return DataSplits("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, mean, std)


def bench_data(tiny: bool, data_root: str | None):
    """(splits, dataset name for RunConfig, a note for the JSON)."""
    if tiny:
        return synthetic_splits(1024, 256, 10, 3, 16), "cifar10", "random uint8 data, 1,024 images 3x16x16 (tiny)"
    from tstudy.data import DataError, load_dataset

    try:
        return load_dataset("cifar100", data_root), "cifar100", "CIFAR-100"
    except DataError as e:
        note = (f"random uint8 data of CIFAR-100's shape (50,000 train images 3x32x32, 100 classes): "
                f"CIFAR-100 files not found ({str(e).splitlines()[0][:200]})")
        return synthetic_splits(50_000, 10_000, 100, 3, 32), "cifar100", note


# --------------------------------------------------------------------------- (a) classic loop
class _ClassicDataset(torch.utils.data.Dataset):
    """Images as PIL, transformed per sample by torchvision (as in the usual CIFAR KD code)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std) -> None:
        import torchvision.transforms as T

        self.x = x.permute(0, 2, 3, 1).numpy()  # NHWC uint8, as torchvision's CIFAR holds it
        self.y = y.tolist()
        self.tf = T.Compose([T.RandomCrop(self.x.shape[1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
        return self.tf(img), self.y[i]


def classic(splits, teacher_name: str, student_name: str, device: torch.device, batch: int, steps: int,
            warmup: int, workers: int) -> dict:
    """(a): DataLoader + torchvision transforms, fp32, host-to-device copy per step."""
    from tstudy.models import build_model

    ds = _ClassicDataset(splits.train_x, splits.train_y, splits.mean, splits.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    args = (splits.num_classes, splits.in_channels, splits.image_size)
    teacher = build_model(teacher_name, *args).to(device).eval()
    student = build_model(student_name, *args).to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def batches() -> Iterator:
        while True:
            yield from loader

    def step(x, y) -> None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            v = teacher(x)
        loss = kd_loss(student(x), v, y, TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(batches(), step, device, steps, warmup, batch)


# --------------------------------------------------------------------------- (b), (c) tstudy
def tstudy_steps(splits, dataset: str, teacher_name: str, student_name: str, device: torch.device, batch: int,
                 precision: str, k: int, mode: str, steps: int, warmup: int, graphs: bool = True,
                 compile: bool = False) -> dict:
    """(b) / (c): ``k`` KD runs (temperatures 1..k) through the engine's own step
    (:func:`engine_group`), on :class:`tstudy.device_data.DeviceData`."""
    from tstudy.device_data import DeviceData

    data = DeviceData(splits, device)
    with engine_group(data, dataset, teacher_name, student_name, batch, precision, k, mode, graphs=graphs,
                      compile=compile) as group:

        def batches() -> Iterator:
            epoch = 0
            while True:
                epoch += 1
                yield from enumerate(data.epoch_batches(group.cfgs[0].seed, epoch, batch, "crop_flip"))

        out = timed(batches(), group.step, device, steps, warmup, batch * k)
        return {**out, **group.info()}


# --------------------------------------------------------------------------- main
def settings(tiny: bool, ks: tuple[int, ...] | None = None,
             precisions: tuple[str, ...] = ("fp32", "bf16")) -> list[dict]:
    """The measurements, in order, for one pair."""
    big = 64 if tiny else 256
    ks = ks or ((2, 4) if tiny else (8, 32))
    batch = 32 if tiny else 64
    out: list[dict] = [{"setting": "classic", "batch": batch, "k": 1, "precision": "fp32", "graphs": False}]
    for prec in precisions:
        out += [{"setting": "tstudy", "batch": batch, "k": 1, "precision": prec, "graphs": True},
                {"setting": "tstudy", "batch": big, "k": 1, "precision": prec, "graphs": True}]
        out += [{"setting": "tstudy_packed", "batch": batch, "k": k, "precision": prec, "graphs": True} for k in ks]
    out.append({"setting": "tstudy_sequential", "batch": batch, "k": ks[0], "precision": precisions[-1],
                "graphs": True})
    if tiny:  # the CPU has no graphs: the eager rows would repeat the ones above
        return out
    # what the CUDA graphs bring: the same steps, eager
    out += [{"setting": "tstudy", "batch": b, "k": 1, "precision": precisions[0], "graphs": False} for b in (batch, big)]
    out.append({"setting": "tstudy_packed", "batch": batch, "k": ks[0], "precision": precisions[0], "graphs": False})
    return out


def main(argv: list[str] | None = None) -> dict:
    from tstudy import stream_bench

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cpu" in argv:
        from tstudy import cpu_bench

        return cpu_bench.main(argv)
    if stream_bench.requested(argv):
        if "--train" in argv:
            from tstudy import stream_train_bench

            return stream_train_bench.main(argv)
        return stream_bench.main(argv)
    p = argparse.ArgumentParser(prog="python -m tstudy.bench", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, choices=("stream",),
                   help="stream: the streamed data path's decode benchmark instead (tstudy/stream_bench.py; "
                        "its own options: --data stream --help); with --train its training benchmark "
                        "(tstudy/stream_train_bench.py; --data stream --train --help)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data, a few steps (automatic without CUDA)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/bench-<device>.json)")
    p.add_argument("--data-root", default=None, help="where to look for CIFAR-100")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 100; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; tiny 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the classic loop (default 8; tiny 0)")
    p.add_argument("--pairs", default=None, help="teacher:student,... (default resnet56:resnet20,resnet32x4:resnet8x4)")
    p.add_argument("--only", default=None, help="comma-separated settings to run (classic,tstudy,tstudy_packed,...)")
    p.add_argument("--ks", default=None, help="K values of the packed settings (default 8,32; tiny 2,4)")
    p.add_argument("--precisions", default="fp32,bf16", help="precisions of the tstudy settings (default fp32,bf16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks of the tstudy settings")
    p.add_argument("--no-graphs", action="store_true", help="only the eager settings (no CUDA graphs)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--profile", default=None,
                   help="after each setting, profile 5 steps: op tables appended to this text file; "
                        "kernels and GPU-busy ms per step in the JSON")
    p.add_argument("--bookkeeping", type=int, default=None, metavar="N",
                   help="instead: time plan, status, collect, figures and launch --dry-run on a root of N finished "
                        "students (tstudy/bookkeeping_bench.py); --only picks commands, --out the JSON")
    p.add_argument("--recipe", default="quickstart", choices=("quickstart", "tiny"),
                   help="with --bookkeeping: the recipe of the runs trained for real (tiny: for tests)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="with --bookkeeping: build the root in DIR and keep it (reused when already built)")
    args = p.parse_args(argv)
    if args.bookkeeping is not None:
        from tstudy import bookkeeping_bench

        return bookkeeping_bench.run(args.bookkeeping, args.recipe, args.keep, args.out,
                                     set(args.only.split(",")) if args.only else None)

    from tstudy.engine import resolve_device
    from tstudy.provenance import device_name, git_commit

    device = torch.device(resolve_device(args.device))
    tiny = args.tiny or device.type != "cuda"
    steps = args.steps or (3 if tiny else 100)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 20)
    workers = args.workers if args.workers is not None else (0 if tiny else 8)
    pairs = ([tuple(x.split(":")) for x in args.pairs.split(",")] if args.pairs else (TINY_PAIRS if tiny else PAIRS))
    only = set(args.only.split(",")) if args.only else None
    ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
    precisions = tuple(args.precisions.split(","))
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.profile:
        Path(args.profile).write_text("")
    PROFILE["path"] = args.profile
    splits, dataset, note = bench_data(tiny, args.data_root)
    dev_name = device_name(device)
    print(f"device {dev_name}; data: {note}; {steps} timed steps after {warmup}", flush=True)
    results: list[dict] = []
    for teacher_name, student_name in pairs:
        base = None
        for st in settings(tiny, ks, precisions):
            if (only and st["setting"] not in only) or (args.no_graphs and st["graphs"]):
                continue
            PROFILE["label"] = f"{teacher_name}->{student_name} {st}"
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                MEMORY["before"] = torch.cuda.memory_allocated(device)
            if st["setting"] == "classic":
                r = classic(splits, teacher_name, student_name, device, st["batch"], steps, warmup, workers)
            else:
                mode = "sequential" if st["setting"] in ("tstudy", "tstudy_sequential") else "network"
                r = tstudy_steps(splits, dataset, teacher_name, student_name, device, st["batch"], st["precision"],
                                 st["k"], mode, steps, warmup, graphs=st["graphs"], compile=args.compile)
            row: dict[str, Any] = {"teacher": teacher_name, "student": student_name, **st, **r}
            if st["setting"] == "classic":
                base = r["images_per_s"]
            row["ratio_to_classic"] = None if base is None else r["images_per_s"] / base
            results.append(row)
            ratio = "" if row["ratio_to_classic"] is None else f"  x{row['ratio_to_classic']:.2f}"
            mem = f"  {row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else ""
            graph = "graph" if st["graphs"] and "CUDA graph:" in r.get("graph", "") else "eager"
            print(f"{teacher_name}->{student_name} {st['setting']:18s} batch {st['batch']:3d} K {st['k']:2d} "
                  f"{st['precision']} {graph}: {r['images_per_s']:10.0f} img/s{ratio}{mem}", flush=True)
    report = {
        "device": dev_name, "tiny": tiny, "data": note, "steps": steps, "warmup": warmup, "classic_workers": workers,
        "compile": args.compile, "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "teacher_weights": "random initialisation (throughput does not depend on the weights)",
        "images_per_s": "student images per second (K per batch image when packed), teacher forward included",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                     "python": platform.python_version(), "numpy": np.__version__, "tstudy_commit": git_commit()},
        "results": results,
    }
    default = Path("results/bench") / f"bench-{device_slug(dev_name)}{'-tiny' if tiny else ''}.json"
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", flush=True)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
