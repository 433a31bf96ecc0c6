"""The CPU section of the throughput benchmark: ``python -m tstudy.bench --cpu``.

Times the engine's own training step (``bench_steps.engine_group``: teacher forward, the method,
backward, optimizer step) on the CPU, on data of the shape of the CPU program's recipe
(``studies/tiny_imagenet/tin_recipe.py``: Tiny-ImageNet-200 at 16 px, 18,000 training images;
random uint8 images, as speed does not depend on the pixels), for:

- ``layout``: the memory layout and precision: ``nchw`` float32 (the CPU path before channels_last
  became its default), ``nhwc`` float32 (today's default, ``device_data.uses_channels_last``),
  and bf16 autocast in both layouts (a choice of the study's ``precision``, never a default);
- ``compile``: ``torch.compile`` of teacher and student forwards (the engine does not compile);
- ``pack``: K students one after another (``sequential``, the CPU's ``auto``) vs one packed network;
- ``teacher``: the teacher's own training step (``ce``, no teacher forward);
- ``workers``: W processes of T threads each training at once (2 cores: 1 x 2 vs 2 x 1), the
  aggregate images/s of all of them.

Images/s count student images (K per batch image when packed); ``student_epoch_s`` is the
training set's size over it, i.e. what one student-epoch of the recipe costs on this machine
(evaluation not included). The JSON goes to ``results/bench/cpu-<host>.json``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import socket
import time
from pathlib import Path
from typing import Any

import torch

TRAIN_IMAGES = 18_000  # the CPU recipe: 90 training images of each of 200 classes
CLASSES, SIZE, BATCH = 200, 16, 128
TEACHER, STUDENT = "resnet8x4", "resnet8"


def _data(layout: str, n: int):
    from tstudy.bench import synthetic_splits
    from tstudy.device_data import DeviceData

    data = DeviceData(synthetic_splits(n, 256, CLASSES, 3, SIZE), torch.device("cpu"))
    data.channels_last = layout == "nhwc"  # nchw: the CPU path before channels_last was its default
    return data


def measure(layout: str = "nhwc", precision: str = "fp32", k: int = 1, mode: str = "sequential",
            compile: bool = False, teacher: str | None = TEACHER, student: str = STUDENT, steps: int = 20,
            warmup: int = 3, threads: int | None = None, barrier: Any = None) -> dict:
    """Images/s of ``steps`` engine steps after ``warmup`` (``barrier``: wait there before timing,
    so that concurrent processes time the same span)."""
    from tstudy.bench_steps import engine_group

    if threads:
        torch.set_num_threads(threads)
    data = _data(layout, max(2048, BATCH * 8))
    with engine_group(data, "tinyimagenet", teacher, student, BATCH, precision, k, mode, graphs=False,
                      compile=compile, image_size=SIZE) as group:
        batches = iter(())
        epoch = 0

        def step() -> None:
            nonlocal batches, epoch
            try:
                i, xy = next(batches)
            except StopIteration:
                epoch += 1
                batches = enumerate(data.epoch_batches(0, epoch, BATCH, "crop_flip"))
                i, xy = next(batches)
            group.step(i, xy)

        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warm_s = time.perf_counter() - t0
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dt = time.perf_counter() - t0
    ips = BATCH * k * steps / dt
    return {"images_per_s": ips, "step_ms": 1e3 * dt / steps, "warmup_s": warm_s, "steps": steps,
            "threads": torch.get_num_threads(), "student_epoch_s": TRAIN_IMAGES / ips}


def _worker(kwargs: dict, barrier, out) -> None:
    out.put(measure(barrier=barrier, **kwargs))


def concurrent(workers: int, threads: int, **kwargs) -> dict:
    """``workers`` processes of ``threads`` threads each, timed over the same span: aggregate images/s."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=({**kwargs, "threads": threads}, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    rows = [out.get() for _ in procs]
    for p in procs:
        p.join()
    ips = sum(r["images_per_s"] for r in rows)
    return {"images_per_s": ips, "per_worker_images_per_s": [r["images_per_s"] for r in rows],
            "threads": threads, "student_epoch_s": TRAIN_IMAGES / ips, "steps": rows[0]["steps"]}


def settings(tiny: bool) -> list[dict]:
    """The measurements, in order (``tiny``: a few steps of small models, for tests)."""
    s, bf = (2, 1) if tiny else (20, 6)
    rows: list[dict] = [
        {"section": "layout", "layout": "nchw", "precision": "fp32", "steps": s},
        {"section": "layout", "layout": "nhwc", "precision": "fp32", "steps": s},
        {"section": "layout", "layout": "nchw", "precision": "bf16", "steps": bf},
        {"section": "layout", "layout": "nhwc", "precision": "bf16", "steps": bf},
        {"section": "teacher", "layout": "nchw", "teacher": None, "student": TEACHER, "steps": max(1, s // 4)},
        {"section": "teacher", "layout": "nhwc", "teacher": None, "student": TEACHER, "steps": max(1, s // 4)},
        {"section": "pack", "k": 8, "mode": "sequential", "steps": max(1, s // 4)},
        {"section": "pack", "k": 8, "mode": "network", "steps": max(1, s // 4)},
        {"section": "workers", "workers": 1, "threads": 2, "k": 8, "steps": max(1, s // 4)},
        {"section": "workers", "workers": 2, "threads": 1, "k": 8, "steps": max(1, s // 4)},
        {"section": "compile", "compile": True, "steps": s},
    ]
    if tiny:
        for r in rows:
            r.update({"teacher": None if r.get("teacher", TEACHER) is None else "resnet8",
                      "student": "resnet8", "warmup": 1})
            r["k"] = min(r.get("k", 1), 2)
        rows = [r for r in rows if r["section"] != "compile"]
    return rows


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m tstudy.bench --cpu", description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="this section (required)")
    p.add_argument("--tiny", action="store_true", help="a few steps of small models (for tests; numbers mean nothing)")
    p.add_argument("--only", default=None, help="comma-separated sections (layout,teacher,pack,workers,compile)")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/cpu-<host>.json)")
    args = p.parse_args(argv)
    from tstudy.provenance import git_commit

    only = set(args.only.split(",")) if args.only else None
    results = []
    for st in settings(args.tiny):
        if only and st["section"] not in only:
            continue
        kw = {k: v for k, v in st.items() if k != "section"}
        t0 = time.perf_counter()
        try:
            if st["section"] == "workers":
                r = concurrent(kw.pop("workers"), kw.pop("threads"), **kw)
            else:
                r = measure(**kw)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a C++ compiler: recorded, the rest runs
            r = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        row = {**st, **r, "wall_s": time.perf_counter() - t0}
        results.append(row)
        desc = " ".join(f"{k}={v}" for k, v in st.items() if k not in ("steps", "warmup"))
        print(f"{desc}: " + (f"{r['images_per_s']:.0f} img/s, student-epoch {r['student_epoch_s']:.1f} s"
                             if "error" not in r else r["error"]), flush=True)
    base = next((r for r in results if r["section"] == "layout" and r["layout"] == "nchw"
                 and r["precision"] == "fp32" and "images_per_s" in r), None)
    for r in results:
        if base is not None and "images_per_s" in r and r["section"] != "teacher":
            r["speedup_vs_nchw_fp32"] = r["images_per_s"] / base["images_per_s"]
    report = {
        "what": "CPU training throughput of the engine's step, CPU program recipe (tin_recipe.py CPU section)",
        "host": socket.gethostname(), "cpu": platform.processor() or platform.machine(), "cpus": mp.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "tiny": args.tiny,
        "recipe": {"teacher": TEACHER, "student": STUDENT, "image_size": SIZE, "classes": CLASSES, "batch": BATCH,
                   "train_images": TRAIN_IMAGES},
        "data": "random uint8 images of the recipe's shape (speed does not depend on the pixels)",
        "images_per_s": "student images per second (K per batch image when packed), teacher forward included",
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "tstudy_commit": git_commit()},
        "results": results,
    }
    out = Path(args.out) if args.out else Path("results/bench") / f"cpu-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", flush=True)
    return report
