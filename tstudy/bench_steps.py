"""The measuring parts shared by the benchmarks (``tstudy.bench``, ``tstudy.stream_train_bench``):
the engine's own step on any data (:func:`engine_group`), timed steps with peak GPU memory,
profiled steps (kernels, GPU-busy time), the reference KD loss of the classic loops."""
from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F


def kd_loss(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor, T: float) -> torch.Tensor:
    kl = F.kl_div(F.log_softmax(z / T, 1), F.softmax(v / T, 1), reduction="batchmean") * T * T
    return 0.1 * F.cross_entropy(z, y) + 0.9 * kl


class EngineGroup:
    """What :func:`engine_group` yields: ``step(i, (x, y))`` (the engine's group step; raises if a
    method failed), the students' configs and the engine's students (their models; after a packed
    step, ``pack.sync()`` first), and ``info()`` (the CUDA-graph note, the packed impl)."""

    def __init__(self, cfgs, group_step, impl: str | None, students: list | None = None, pack=None) -> None:
        self.cfgs, self.group_step, self.impl = cfgs, group_step, impl
        self.students, self.pack = students or [], pack

    def step(self, i: int, xy) -> None:
        if self.group_step(*xy, i):
            raise RuntimeError("a method failed in the benchmark")

    def info(self) -> dict:
        out = {"graph": self.group_step.note()}
        if self.impl:
            out["impl"] = self.impl
        return out


@contextlib.contextmanager
def engine_group(data, dataset: str, teacher_name: str, student_name: str, batch: int, precision: str, k: int,
                 mode: str, graphs: bool = True, compile: bool = False, **cfg_fields) -> Iterator[EngineGroup]:
    """``k`` KD runs (temperatures 1..k) stepping through the engine's own step
    (``engine.group_step``) on ``data`` (a ``DeviceData`` or a streamed ``StreamData``): one
    teacher forward (randomly initialised, frozen), then ``_Student.step`` each in turn
    (``mode="sequential"``) or ``_PackedGroup.step`` (``mode="network"``); with ``graphs`` (and
    CUDA) replayed as a CUDA graph, as the engine does. ``teacher_name`` None: ``k`` teacher-less
    ``ce`` runs instead (a teacher's own training step). ``compile``: the networks' forwards
    through ``torch.compile`` (an experiment: the engine does not compile). ``cfg_fields``: more
    ``RunConfig`` fields (e.g. ``image_size``, ``augment``). Run directories live in a temporary
    folder for the duration."""
    from tstudy import engine
    from tstudy.config import RunConfig
    from tstudy.device_data import DeviceData
    from tstudy.store import RunStore

    device = data.device
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp), "bench")
        tcfg = RunConfig(dataset=dataset, model=teacher_name, epochs=1, **cfg_fields) if teacher_name else None
        teacher = None
        if tcfg is not None:
            teacher = engine.build_network(tcfg, data).to(device).eval()
            if data.channels_last:
                teacher.to(memory_format=torch.channels_last)
            for p in teacher.parameters():
                p.requires_grad_(False)
            store.run_dir(tcfg).mkdir(parents=True, exist_ok=True)
            if isinstance(data, DeviceData):  # as a finished teacher run leaves it (kd itself does not read it)
                engine.write_teacher_profile(store.run_dir(tcfg), teacher, data, "fp32")
        kd = dict(teacher=tcfg, method="kd") if tcfg is not None else dict(method="ce")
        cfgs = [RunConfig(dataset=dataset, model=student_name, **kd, temperature=float(t + 1), batch_size=batch,
                          epochs=240, precision=precision, **cfg_fields)
                for t in range(k)]
        for c in cfgs:
            store.run_dir(c).mkdir(parents=True, exist_ok=True)
        students = [engine._Student(c, store, data, teacher, {}, k) for c in cfgs]
        for s in students:
            s.begin_epoch(1)
        pack = None
        if mode == "network":
            pack = engine._PackedGroup(students, data)
            pack.begin_epoch(1)
        impl = pack.net.impl if pack is not None else None
        if compile:
            for net in ([teacher] if teacher is not None else []) + ([pack.net] if pack is not None else
                                                                      [s.model for s in students]):
                net.forward = torch.compile(net.forward)
        group_step = engine.group_step(students, pack, teacher, data, 1, graphs=graphs and device.type == "cuda")
        yield EngineGroup(cfgs, group_step, impl, students, pack)


# --------------------------------------------------------------------------- timing
PROFILE: dict[str, Any] = {"path": None, "label": ""}  # set by --profile
MEMORY: dict[str, int] = {"before": 0}  # GPU bytes allocated before the current setting was set up


def timed(it: Iterator, step, device: torch.device, steps: int, warmup: int, images_per_step: int) -> dict:
    """Run ``warmup`` then ``steps`` steps; images/s over the timed steps, peak memory. With
    ``--profile``, 5 more steps under torch.profiler, whose op table is appended to that file."""
    for _ in range(warmup):
        step(*next(it))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    sync(device)
    dt = time.perf_counter() - t0
    out = {"images_per_s": images_per_step * steps / dt, "step_ms": 1e3 * dt / steps, "steps": steps}
    if device.type == "cuda":
        # what this setting allocated at its peak (data, models, graph pools), without what earlier
        # settings of this process still hold
        out["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) - MEMORY["before"]) / 2**30
        out["held_before_gib"] = MEMORY["before"] / 2**30
    if PROFILE["path"]:
        out.update(profile_steps(it, step, device))
    return out


def profile_steps(it: Iterator, step, device: torch.device, n: int = 5) -> dict:
    """Profile ``n`` steps: kernel count and GPU-busy time per step; the op table goes to the file."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(n):
            step(*next(it))
        sync(device)
    wall = (time.perf_counter() - t0) / n
    ev = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(PROFILE["path"], "a") as f:
        f.write(f"\n===== {PROFILE['label']} ({n} steps, {1e3 * wall:.2f} ms/step profiled)\n")
        f.write(ev.table(sort_by=sort, row_limit=25, max_name_column_width=60) + "\n")
    out: dict[str, Any] = {"profiled_step_ms": 1e3 * wall}
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0) for e in kernels) / 1e3 / n
        out.update({"kernels_per_step": len(kernels) / n, "gpu_busy_ms_per_step": busy})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
