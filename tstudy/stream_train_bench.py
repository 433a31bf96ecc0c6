"""Training throughput on the streamed data path: ``python -m tstudy.bench --data stream --train``.

A ``tv_resnet34`` teacher (randomly initialised, frozen; speed does not depend on the weights)
and ``tv_resnet18`` students at 224 px, ImageNet-sized JPEGs decoded while training, in one run:

- ``classic``: torchvision ``ImageFolder`` + ``DataLoader(num_workers=N, pin_memory=True,
  persistent_workers)`` (prefetch_factor 2, PyTorch's default) with ``RandomResizedCrop(224)`` +
  flip + ``ToTensor`` + ``Normalize`` feeding ONE student: teacher forward under ``no_grad``, KD at
  T = 4 + CE (0.1 CE + 0.9 T^2 KL, as ``tstudy.bench``), SGD with momentum; bf16 autocast and
  channels_last on CUDA (fp32 on the CPU); batches copied to the device non-blocking from pinned
  memory.
- ``tstudy`` K = 1, 4, 8 (``--ks``): the engine's streamed path (:class:`tstudy.stream_data.StreamData`
  over a packed store of the same images, :class:`tstudy.data.decode.DecoderPool` with N
  workers) feeding K KD students through the engine's own step (``tstudy.bench_steps.engine_group``:
  one teacher forward, then one packed network of K students; K = 1 is a lone student), each step
  a CUDA graph as the engine does. Student images/s = K x batch images/s.

Per setting: student images/s over ``steps`` timed steps (no synchronise between steps; also over
their second half alone, as a check) after ``warmup`` steps (max(20, 3 x workers) by default, so
that the batches the loaders buffered at start-up are used up before timing), and the ratio to
``classic``; then ``share_steps`` more steps, each timed host-side in two parts: ``next()`` on the
batch iterator (waiting for the decoder, plus the host-to-device copy the iterator issues) and
the step itself up to a CUDA synchronise at its end; the decoder's share of the step = wait /
(wait + step). On CUDA, 5 more steps under ``torch.profiler`` (the helper of ``tstudy.bench``):
GPU busy % = summed kernel time / wall time per step (data wait included).

Images: ``synth224`` (synthetic 500x375 JPEGs, quality 90, generated once; the epochs cycle, each
with new crops) or ``--source FOLDER`` (any ImageFolder). ``--tiny`` (automatic without CUDA):
small JPEGs, 32 px, tiny models (``cnn_l`` -> ``cnn_s``), a few steps, so that a test runs the
whole pipeline on the CPU; its numbers mean nothing. A setting that fails (e.g. out of GPU
memory) is recorded with its ``error`` and the others go on.

``scripts/gpu_stream_bench.sh`` runs the GPU version as one command.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

TEACHER, STUDENT = "tv_resnet34", "tv_resnet18"
TINY_TEACHER, TINY_STUDENT = "cnn_l", "cnn_s"
TEMPERATURE = 4.0
MAX_WORKERS = 16


def default_workers() -> int:
    """min(CPUs this process may use, 16)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tstudy.bench --data stream --train",
                                description=__doc__.splitlines()[0])
    p.add_argument("--data", default="stream", choices=("stream",))
    p.add_argument("--train", action="store_true", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny images, models and steps (automatic without CUDA)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--ks", default=None, help="K values of the tstudy settings (default 1,4,8; tiny 1,2)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoder workers of both loaders (default min(CPUs, 16); tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 60; tiny 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default max(20, 3 x workers): the loaders' buffers filled at "
                        "start-up drain before timing; tiny 1)")
    p.add_argument("--share-steps", type=int, default=None,
                   help="steps timed one by one for the decoder's share (default 15; tiny 2)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 256; tiny 8)")
    p.add_argument("--size", type=int, default=None, help="training image size (default 224; tiny 32)")
    p.add_argument("--images", type=int, default=None, help="synthetic images (default 4096; tiny 48)")
    p.add_argument("--classes", type=int, default=None, help="synthetic classes (default 1000; tiny 4)")
    p.add_argument("--source", default=None, help="an ImageFolder to use instead of the synthetic images")
    p.add_argument("--teacher", default=None, help=f"teacher model (default {TEACHER}; tiny {TINY_TEACHER})")
    p.add_argument("--student", default=None, help=f"student model (default {STUDENT}; tiny {TINY_STUDENT})")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="default bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (both loops)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled steps (GPU busy %%)")
    p.add_argument("--only", default=None, help="comma-separated settings: classic, tstudy (default both)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="build images and the packed store in DIR and keep them (reused when there)")
    p.add_argument("--out", default=None,
                   help="JSON path (default <out-dir>/stream-train-<device>[-tiny].json)")
    p.add_argument("--out-dir", default="results/bench", help="folder of the default JSON path (default results/bench)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- timing
def timed_split(it: Iterator, step, device, steps: int, warmup: int, share_steps: int, images_per_step: int,
                profile: bool) -> dict:
    """``warmup`` steps, ``steps`` timed steps (throughput), ``share_steps`` steps timed one by one
    (``next()`` apart from the step, a synchronise at each step's end), then (``profile``) 5
    profiled steps."""
    import torch

    from tstudy import bench_steps

    for _ in range(warmup):
        step(*next(it))
    bench_steps.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    half = steps // 2
    t0 = time.perf_counter()
    for _ in range(half):
        step(*next(it))
    bench_steps.sync(device)
    t1 = time.perf_counter()
    for _ in range(steps - half):
        step(*next(it))
    bench_steps.sync(device)
    dt, dt2 = time.perf_counter() - t0, time.perf_counter() - t1
    wait = work = 0.0
    for _ in range(share_steps):
        t = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        step(*batch)
        bench_steps.sync(device)
        t2 = time.perf_counter()
        wait, work = wait + t1 - t, work + t2 - t1
    out: dict[str, Any] = {
        "batch_images_per_s": images_per_step * steps / dt, "step_ms": 1e3 * dt / steps, "steps": steps,
        "second_half_batch_images_per_s": images_per_step * (steps - half) / dt2 if steps > half else None,
        "share_steps": share_steps, "data_wait_ms_per_step": 1e3 * wait / max(share_steps, 1),
        "synced_step_ms": 1e3 * work / max(share_steps, 1),
        "decoder_share": wait / (wait + work) if share_steps else None}
    if device.type == "cuda":
        out["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) - bench_steps.MEMORY["before"]) / 2**30
    if profile and device.type == "cuda":
        prof = bench_steps.profile_steps(it, step, device)
        out.update(prof)
        out["gpu_busy_pct"] = 100.0 * prof["gpu_busy_ms_per_step"] / prof["profiled_step_ms"]
    else:
        out["gpu_busy_pct"] = None
    return out


# --------------------------------------------------------------------------- (a) classic
def classic(folder: Path, size: int, teacher_name: str, student_name: str, device, batch: int, workers: int,
            precision: str, timing: dict) -> dict:
    """The classic loop: ImageFolder + DataLoader + torchvision transforms, one student."""
    import torch
    import torchvision
    import torchvision.transforms as T

    from tstudy import bench_steps
    from tstudy.evaluation import autocast
    from tstudy.models import build_model
    from tstudy.stream_data import IMAGENET_MEAN, IMAGENET_STD

    cuda = device.type == "cuda"
    tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=cuda, persistent_workers=workers > 0)
    classes = len(dataset.classes)
    memory = torch.channels_last if cuda else torch.contiguous_format
    teacher = build_model(teacher_name, classes, 3, size).to(device, memory_format=memory).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = build_model(student_name, classes, 3, size).to(device, memory_format=memory).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def batches() -> Iterator:
        while True:
            for x, y in loader:
                yield (x.to(device, non_blocking=True).contiguous(memory_format=memory),
                       y.to(device, non_blocking=True))

    def step(x, y) -> None:
        with torch.no_grad(), autocast(device, precision):
            v = teacher(x).float()
        with autocast(device, precision):
            z = student(x)
        loss = bench_steps.kd_loss(z.float(), v, y, TEMPERATURE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = batches()
    try:
        return timing_call(it, step, device, batch, timing)
    finally:
        it.close()
        workers_iter = getattr(loader, "_iterator", None)  # persistent workers: stop them before the next setting
        if hasattr(workers_iter, "_shutdown_workers"):
            workers_iter._shutdown_workers()
        del loader


# --------------------------------------------------------------------------- (b) tstudy
def tstudy(store: Path, size: int, teacher_name: str, student_name: str, device, batch: int, workers: int,
           precision: str, k: int, timing: dict) -> dict:
    """The engine's streamed path: StreamData + DecoderPool feeding K students (one packed network
    when K > 1) through ``engine.group_step`` (via ``tstudy.bench_steps.engine_group``)."""
    from tstudy import bench_steps
    from tstudy.stream_data import StreamData

    data = StreamData(store, store, "imagefolder", size, 0.0, device, workers)
    try:
        with bench_steps.engine_group(data, "imagefolder", teacher_name, student_name, batch, precision, k,
                                "network" if k > 1 else "sequential", graphs=True, image_size=size,
                                augment="rrc_flip") as group:

            def batches() -> Iterator:
                epoch = 0
                while True:
                    epoch += 1
                    yield from enumerate(data.epoch_batches(group.cfgs[0].seed, epoch, batch, "rrc_flip"))

            it = batches()
            try:
                out = timing_call(it, group.step, device, batch, timing)
            finally:
                it.close()
            return {**out, **group.info()}
    finally:
        data.close()


def timing_call(it, step, device, batch: int, timing: dict) -> dict:
    return timed_split(it, step, device, timing["steps"], timing["warmup"], timing["share_steps"], batch,
                       timing["profile"])


# --------------------------------------------------------------------------- main
def main(argv: list[str]) -> dict:
    args = options(argv)
    import torch

    from tstudy import bench_steps, stream_bench
    from tstudy.data.packed import build_store
    from tstudy.engine import resolve_device
    from tstudy.provenance import device_name

    device = torch.device(resolve_device(args.device))
    tiny = args.tiny or device.type != "cuda"
    ks = [int(k) for k in args.ks.split(",")] if args.ks else ([1, 2] if tiny else [1, 4, 8])
    workers = args.workers if args.workers is not None else (1 if tiny else default_workers())
    def pick(value, tiny_default, default):
        return value if value is not None else (tiny_default if tiny else default)

    timing = {"steps": pick(args.steps, 2, 60), "warmup": pick(args.warmup, 1, max(20, 3 * workers)),
              "share_steps": pick(args.share_steps, 2, 15), "profile": not args.no_profile and device.type == "cuda"}
    batch = args.batch_size or (8 if tiny else 256)
    size = args.size or (32 if tiny else 224)
    teacher = args.teacher or (TINY_TEACHER if tiny else TEACHER)
    student = args.student or (TINY_STUDENT if tiny else STUDENT)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    only = set(args.only.split(",")) if args.only else {"classic", "tstudy"}
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    dev_name = device_name(device)
    out_path = Path(args.out) if args.out else \
        Path(args.out_dir) / f"stream-train-{bench_steps.device_slug(dev_name)}{'-tiny' if tiny else ''}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if timing["profile"]:
        bench_steps.PROFILE["path"] = str(out_path.with_name(out_path.stem + "-profile.txt"))
        Path(bench_steps.PROFILE["path"]).write_text("")

    env = stream_bench.environment()
    env.update({"device": dev_name, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                "cudnn_benchmark": torch.backends.cudnn.benchmark})
    facts: dict[str, Any] = {}

    def write(results: list[dict], complete: bool) -> dict:
        """The JSON so far (written after every setting, so a run cut short keeps what it measured)."""
        report = {
            "benchmark": "stream-train", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "complete": complete, "environment": env, "tiny": tiny, **facts,
            "settings": {"teacher": teacher, "student": student, "image_size": size, "batch": batch,
                         "precision": precision, "channels_last": device.type == "cuda", "workers": workers,
                         "ks": ks, "temperature_classic": TEMPERATURE, **timing},
            "teacher_weights": "random initialisation (throughput does not depend on the weights)",
            "note": ("student_images_per_s: students x batch images per second over the timed steps (no synchronise "
                     "between steps; teacher forward included), after warmup steps that let the batches the loaders "
                     "buffered at start-up drain; second_half_batch_images_per_s: the same over the timed steps' "
                     "second half (one synchronise between the halves): much below batch_images_per_s would mean "
                     "the buffers had not drained. ratio_to_classic: student_images_per_s / classic's. "
                     "decoder_share: over share_steps further steps, host-side time in next() on the batch iterator "
                     "(waiting for decoded batches, plus the host-to-device copy the iterator issues, in both loops) "
                     "divided by that plus the step's time up to a CUDA synchronise at its end; the per-step "
                     "synchronise keeps the host from running ahead, so synced_step_ms can exceed step_ms. "
                     "gpu_busy_pct (CUDA only; null on the CPU, where the profiler gives no GPU time): summed kernel "
                     "time / wall time per step over 5 profiled steps (torch.profiler, tstudy.bench's helper), data "
                     "wait included. tstudy K = 1 is a lone student (engine step); K > 1 one packed network of K "
                     "students (KD at temperatures 1..K; speed does not depend on them). complete: false while the "
                     "run is still going (or was cut short)." +
                     (" TINY run (tiny images, models and steps): a pipeline check, the numbers mean nothing."
                      if tiny else "")),
            "results": results,
        }
        out_path.write_text(json.dumps(report, indent=2) + "\n")
        return report

    results: list[dict] = []
    with stream_bench.scratch_dir(args.keep, "tstudy-stream-train-") as base:
        t0 = time.perf_counter()
        if args.source:
            folder = Path(args.source)
            images_note = f"ImageFolder {folder}"
            store_dir = base / f"store-{bench_steps.device_slug(str(folder.resolve()))[-80:]}"
        else:
            n = args.images or (48 if tiny else 4096)
            classes = args.classes or (4 if tiny else 1000)
            hw = (60, 80) if tiny else (375, 500)
            folder = stream_bench.synthetic_folder(base / f"synth-{n}-{hw[1]}x{hw[0]}-{classes}", n, size=hw,
                                                   classes=classes)
            images_note = (f"{n} synthetic {hw[1]}x{hw[0]} JPEGs (smooth random, quality 90) in {classes} classes; "
                           f"epochs cycle through them, each with new random-resized crops")
            store_dir = base / f"store-synth-{n}-{hw[1]}x{hw[0]}-{classes}"
        store = build_store(folder, store_dir, progress=False)
        prepare_s = time.perf_counter() - t0
        facts.update({"images": images_note, "prepare_s": prepare_s})
        print(f"device {dev_name}; {images_note}; store ready in {prepare_s:.1f}s; {teacher} -> {student} at "
              f"{size} px, batch {batch}, {precision}, {workers} workers; {timing['steps']} timed steps after "
              f"{timing['warmup']}, {timing['share_steps']} for the decoder share", flush=True)
        settings = ([{"setting": "classic", "k": 1}] if "classic" in only else []) + \
            ([{"setting": "tstudy", "k": k} for k in ks] if "tstudy" in only else [])
        base_rate = None
        for st in settings:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                bench_steps.MEMORY["before"] = torch.cuda.memory_allocated(device)
            bench_steps.PROFILE["label"] = f"stream-train {st}"
            try:
                if st["setting"] == "classic":
                    r = classic(folder, size, teacher, student, device, batch, workers, precision, timing)
                else:
                    r = tstudy(store, size, teacher, student, device, batch, workers, precision, st["k"], timing)
            except Exception as e:  # noqa: BLE001 - e.g. out of GPU memory: recorded, the other settings go on
                results.append({**st, "students": st["k"], "batch": batch,
                                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
                print(f"{st['setting']:8s} K {st['k']:2d}: FAILED {results[-1]['error']}", flush=True)
                write(results, False)
                continue
            row: dict[str, Any] = {**st, "students": st["k"], "batch": batch, **r}
            row["student_images_per_s"] = row["batch_images_per_s"] * st["k"]
            if st["setting"] == "classic":
                base_rate = row["student_images_per_s"]
            row["ratio_to_classic"] = None if base_rate is None else row["student_images_per_s"] / base_rate
            results.append(row)
            write(results, False)
            ratio = "" if row["ratio_to_classic"] is None else f"  x{row['ratio_to_classic']:.2f}"
            busy = "" if row["gpu_busy_pct"] is None else f"  GPU busy {row['gpu_busy_pct']:.0f}%"
            print(f"{st['setting']:8s} K {st['k']:2d}: {row['student_images_per_s']:9.0f} student img/s{ratio}  "
                  f"decoder share {row['decoder_share']:.2f} ({row['data_wait_ms_per_step']:.1f} of "
                  f"{row['data_wait_ms_per_step'] + row['synced_step_ms']:.1f} ms){busy}", flush=True)
    report = write(results, True)
    print(f"wrote {out_path}", flush=True)
    return report
