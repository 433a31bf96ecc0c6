"""The training engine: one run (teacher or student) from its config to its run directory.

Data lives on the training device as uint8; each epoch's order and augmentation are drawn from
a generator seeded by (seed, epoch), and the learning rate is a pure function of the epoch, so a
run resumed from the checkpoint of epoch k continues exactly as if it had never stopped.
Losses are accumulated on the device and read once per epoch (no host sync per step).
"""
from __future__ import annotations

import math
import os
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tstudy import atomic, provenance
from tstudy.config import DATA_FIELDS, RunConfig, TeacherFile, WeightsFile
from tstudy.cuda_graph import StepGraph, graph_blockers
from tstudy.data import load_dataset
from tstudy.data.validation import training_splits
from tstudy.device_data import DeviceData, step_seed
from tstudy.evaluation import autocast, evaluate_split
from tstudy.teacher_profile import teacher_train_logits, write_teacher_profile
from tstudy.lock import LockHeld, RunLock
from tstudy.machine import Machine
from tstudy.methods import build as build_method
from tstudy.models import build_model
from tstudy.planning import pack_key
from tstudy.preemption import REQUESTED, checkpoint_requested, request_checkpoint  # noqa: F401 - re-exported
from tstudy.store import (DIVERGED, DONE, FAILED, INCOMPLETE, RUNNING, RunState, RunStore, final_acc1, log_line,
                          parquet_intact, set_aside, write_status)
from tstudy.run_summary import write_summary

_CHECKPOINT_NOW = REQUESTED  # set by a pre-emption signal (tstudy.preemption): checkpoint at the next step, stop

EpochCallback = Callable[[RunConfig, int, dict], None]
StepCallback = Callable[[RunConfig, int, int, int], None]  # (cfg, epoch, steps done, steps per epoch)
STEP_REPORT_S = 1.0  # on_step is called at most this often


class RunEnv:
    """How runs train in this process: the machine settings (:class:`tstudy.machine.Machine`,
    passed whole) and, beside them, the engine's callbacks and test hooks, which never leave the
    process. ``RunEnv(device="cuda", on_epoch=f)`` builds the settings from their keywords;
    ``RunEnv(machine)`` takes them as they are.

    ``on_epoch``: called after each epoch's checkpoint. ``on_step``: progress inside an epoch, at
    most every STEP_REPORT_S seconds (host-side step counts only, no device sync: on a GPU the
    steps counted are those launched). ``stop_after_epoch`` / ``stop_after_step`` (tests): stop,
    as if killed, after that epoch's (that step's) checkpoint."""

    __slots__ = ("machine", "on_epoch", "on_step", "stop_after_epoch", "stop_after_step", "_data")

    def __init__(self, machine: Machine | None = None, *, on_epoch: EpochCallback | None = None,
                 on_step: StepCallback | None = None, stop_after_epoch: int | None = None,
                 stop_after_step: tuple[int, int] | None = None, **settings: Any) -> None:
        machine = machine or Machine()
        self.machine = machine.replace(**settings) if settings else machine
        self.on_epoch, self.on_step = on_epoch, on_step
        self.stop_after_epoch, self.stop_after_step = stop_after_epoch, stop_after_step
        self._data: dict = {}

    def data(self, cfg: RunConfig) -> "DeviceData":
        from tstudy.stream_data import open_stream, streams

        key = tuple(getattr(cfg, name) for name in DATA_FIELDS) + (streams(cfg),)
        if key in self._data:
            return self._data[key]
        if streams(cfg):
            m = self.machine
            self._data[key] = open_stream(cfg, m.data_root, torch.device(m.device), m.data_workers, m.decoder)
        else:
            splits = load_dataset(cfg.dataset, self.machine.data_root, image_size=cfg.image_size, labels=cfg.labels)
            self._data[key] = DeviceData(training_splits(splits, cfg.train_per_class, cfg.val_fraction),
                                         torch.device(self.machine.device))
        return self._data[key]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --------------------------------------------------------------------------- schedule
def lr_factor(cfg: RunConfig, epoch: int) -> float:
    """Learning-rate multiplier for (1-based) ``epoch``: linear warmup, then step/cosine/constant."""
    if epoch <= cfg.warmup_epochs:
        return epoch / (cfg.warmup_epochs + 1)
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch > m for m in cfg.milestone_epochs)
    if cfg.schedule == "cosine":
        span = cfg.epochs - cfg.warmup_epochs
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1 - cfg.warmup_epochs) / span))
    return 1.0


def make_optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------- models
def build_network(cfg: RunConfig | TeacherFile, data: DeviceData) -> nn.Module:
    s = data.splits
    return build_model(cfg.model, s.num_classes, s.in_channels, s.image_size)


def init_weights(model: nn.Module, cfg: RunConfig) -> None:
    """Initialisation: scratch, torchvision's ImageNet weights (``tv_*`` models; the head is new),
    or a weights file (tensors whose shapes fit; a head for other classes is skipped)."""
    from tstudy.models import weights

    if isinstance(cfg.init, WeightsFile):
        weights.load_weights(model, cfg.init.path, strict_head=False)
    elif cfg.init == "imagenet":
        weights.load_imagenet_weights(model, cfg.model)


def load_teacher(cfg: RunConfig, store: RunStore, data: DeviceData) -> tuple[nn.Module | None, dict]:
    """The student's teacher in eval mode on the device, and facts to record about it."""
    t = cfg.teacher
    if t is None:
        return None, {}
    model = build_network(t, data)
    if isinstance(t, TeacherFile):
        from tstudy.models import weights

        weights.load_weights(model, t.weights.path, strict_head=True)
    else:
        path = store.run_dir(t) / "model.pt"
        if store.state(t).status == DONE and not path.exists():  # tstudy clean --weights (never a teacher's)
            raise RuntimeError(f"teacher run {t.run_id} is done but its weights were released ({path} deleted); "
                               f"delete its run directory and launch again to retrain it")
        if store.state(t).status != DONE or not path.exists():
            raise RuntimeError(f"teacher run {t.run_id} is not done (no {path}); launch the study again")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.to(data.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    acc = evaluate_split(model, data, data.eval_splits()["test"], "fp32")
    return model, {"teacher_acc1": acc["acc1"], "teacher_acc5": acc["acc5"]}


# --------------------------------------------------------------------------- training
def train_run(cfg: RunConfig, store: RunStore, env: RunEnv) -> RunState:
    """Train ``cfg`` to its end (resuming from its checkpoint), under its run directory's lock."""
    return train_runs([cfg], store, env)[cfg.run_id]


def train_runs(cfgs: list[RunConfig], store: RunStore, env: RunEnv) -> dict[str, RunState]:
    """Train packable runs (equal :func:`pack_key`) together: one pass over the batches and one
    teacher forward per step, each student stepping in turn with its own model, optimizer, method
    state and RNG stream, so every run's result equals training it alone (bit for bit); or, with
    ``env.machine.pack_mode`` ``network`` (``auto`` on CUDA), the students as one packed network
    (:class:`_PackedGroup`: the same results up to float32 reassociation, the same checkpoints).
    Runs locked by a live process are left alone (state ``running``); one run failing or diverging
    does not stop the others."""
    if len({pack_key(c) for c in cfgs}) > 1:
        raise ValueError("train_runs: the runs differ beyond temperature/method/method_params")
    results: dict[str, RunState] = {}
    with ExitStack() as stack:
        owned = []
        for cfg in cfgs:
            d = store.run_dir(cfg)
            d.mkdir(parents=True, exist_ok=True)
            try:
                stack.enter_context(RunLock(d))
            except LockHeld as e:
                results[cfg.run_id] = RunState(RUNNING, reason=str(e))
                continue
            state = store.state(cfg)
            if state.status in (DONE, DIVERGED):
                results[cfg.run_id] = state
                continue
            try:
                _repair(cfg, store, d)  # config.json first: even a run failing at setup shows as failed
            except Exception as e:  # noqa: BLE001 - e.g. disk full
                results[cfg.run_id] = _record_failure(d, e)
                continue
            owned.append(cfg)
        if owned:
            try:
                results.update(_train_group(owned, store, env))
            except KeyboardInterrupt:
                for cfg in _unfinished(owned, store):
                    d = store.run_dir(cfg)
                    _try(write_status, d, INCOMPLETE, reason="interrupted (KeyboardInterrupt)", epoch=_ckpt_epoch(d))
                raise
            except Exception as e:  # noqa: BLE001 - shared setup failed (data, teacher): the unfinished runs fail
                for cfg in owned:
                    state = store.state(cfg)
                    finished = state.status in (DONE, DIVERGED)
                    results[cfg.run_id] = state if finished else _record_failure(store.run_dir(cfg), e)
    return results


def _unfinished(cfgs: list[RunConfig], store: RunStore) -> list[RunConfig]:
    """The runs whose state on disk is not final (a group may have finished some already)."""
    return [c for c in cfgs if store.state(c).status not in (DONE, DIVERGED)]


def _record_failure(d: Path, e: BaseException) -> RunState:
    reason = f"{type(e).__name__}: {e}".splitlines()[0][:500]
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    _try(lambda: (d / "error.txt").write_text(tb))
    _try(write_status, d, FAILED, reason=reason, epoch=_ckpt_epoch(d))  # may fail too (disk full)
    return RunState(FAILED, _ckpt_epoch(d), reason)


def _try(fn: Callable, *args: Any, **kwargs: Any) -> None:
    """Best effort (writing the failure itself may fail when the disk is full)."""
    try:
        fn(*args, **kwargs)
    except OSError:
        pass


def _repair(cfg: RunConfig, store: RunStore, d: Path) -> None:
    """Before training: set damaged artifacts aside (never delete them) and write config.json.

    A config.json that is unreadable or hashes to another run id means nothing in the folder can
    be trusted: all of it moves to ``corrupt-<time>/`` and the run starts from scratch. A truncated
    metrics.parquet is set aside (the checkpoint's rows rebuild it)."""
    if (d / "config.json").exists() and store.check_config(d, cfg.run_id):
        aside = d / f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for p in d.iterdir():
            if p.is_file() and p.name not in ("lock", "slurm.json"):
                os.replace(p, aside / p.name)
        log_line(d, f"config.json did not match run {cfg.run_id}; old files set aside in {aside.name}/")
    if not (d / "config.json").exists():
        atomic.write_json(d / "config.json", cfg.to_dict())
    m = d / "metrics.parquet"
    if m.exists() and not parquet_intact(m):
        log_line(d, f"metrics.parquet corrupt; set aside as {set_aside(m).name}")


def _ckpt_epoch(d: Path) -> int:
    from tstudy.store import _int, read_status

    return _int(read_status(d).get("epoch", 0))


class _Student:
    """One run inside a training group: its model, method, optimizer, rows and run directory."""

    def __init__(self, cfg: RunConfig, store: RunStore, data: DeviceData, teacher: nn.Module | None,
                 teacher_info: dict, pack: int) -> None:
        self.cfg, self.d, self.data = cfg, store.run_dir(cfg), data
        self.d.mkdir(parents=True, exist_ok=True)
        for line in cfg.warnings():
            log_line(self.d, f"warning: {line}")
        device = data.device
        torch.manual_seed(cfg.seed)
        self.model = build_network(cfg, data)
        init_weights(self.model, cfg)
        self.model.to(device)
        if data.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.method = build_method(cfg.method, temperature=cfg.temperature, teacher_model=cfg.teacher_model,
                                   student_model=cfg.model, num_classes=data.num_classes, **cfg.params).to(device)
        if teacher is not None and type(self.method).needs_teacher_train_logits(cfg.params):  # ls, not kd
            # (on the device path only: RunConfig refuses such a method on streamed data)
            self.method.prepare(teacher_train_logits(cfg, store, teacher, data))
        self.opt = make_optimizer(cfg, list(self.model.parameters()) + list(self.method.parameters()))
        self.start, self.rows, self.seconds, self.images = 0, [], 0.0, 0
        self.start_step, self.partial = 0, None  # a checkpoint within an epoch (RunEnv.checkpoint_steps)
        ck = load_checkpoint(self.d, cfg.run_id)
        if ck is None and (self.d / "metrics.parquet").exists():
            log_line(self.d, f"no usable checkpoint: starting over; old metrics.parquet set aside as "
                         f"{set_aside(self.d / 'metrics.parquet').name}")
        if ck is not None:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.method.load_state_dict(ck["method"])
            self.start, self.rows, self.seconds, self.images = ck["epoch"], ck["rows"], ck["seconds"], ck["images"]
            self.start_step, self.partial = ck.get("step", 0), ck.get("partial")
            if ck.get("rng") is not None:
                _set_rng_state(ck["rng"], device)
            atomic.write_parquet(self.d / "metrics.parquet", rows_frame(self.rows))  # drop rows past the checkpoint
            log_line(self.d, f"resumed from its checkpoint after epoch {self.start}"
                             + (f" and step {self.start_step} of epoch {self.start + 1}" if self.start_step else ""))
        self.static = {**provenance.info(device), **teacher_info, "pack": pack,
                       **{f"const_{k}": v for k, v in self.method.constants().items()}}
        write_status(self.d, "running", epoch=self.start)

    def begin_epoch(self, epoch: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, epoch)
        self.model.train()
        self.sums: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), device=self.data.device)
        self.n_seen = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor | None, epoch: int, i: int,
             graphed: bool = False) -> None:
        """One training step (device work only; the caller counts ``n_seen``). ``graphed``: being
        captured as a CUDA graph, so no seeding (graph-safe methods draw no random numbers)."""
        cfg = self.cfg
        if not graphed:
            torch.manual_seed(step_seed(cfg.seed, epoch, i))  # the method's own randomness (kd_shuffled)
        with autocast(self.data.device, cfg.precision, graphed):
            z = self.model(x)
        terms = self.method(z.float(), v, y, epoch=epoch)
        loss = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        b = y.shape[0]
        for k, t in terms.items():  # in place: a CUDA graph replays into the same tensors
            if k in self.sums:
                self.sums[k].add_(t.detach() * b)
            else:
                self.sums[k] = t.detach() * b
        self.correct += (z.detach().argmax(1) == y).sum()

    def save_step(self, epoch: int, step: int, seconds: float, pack_sums: dict | None = None) -> None:
        """Checkpoint within ``epoch`` after ``step`` steps: weights, optimizer, the epoch's sums so far,
        RNG states; the next start resumes at that step (the epoch's plan is a function of (seed, epoch)).
        ``pack_sums``: this run's share of a packed network's accumulator, kept apart (not added into
        ``sums``) so that the resumed run adds its losses in the uninterrupted run's order."""
        atomic.torch_save(self.d / "checkpoint.pt", {
            "epoch": epoch - 1, "step": step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "method": self.method.state_dict(), "rows": self.rows, "seconds": self.seconds + seconds,
            "images": self.images, "run_id": self.cfg.run_id, "rng": _rng_state(self.data.device),
            "partial": {"sums": {k: v.detach().clone() for k, v in self.sums.items()},
                        "correct": self.correct.detach().clone(), "n_seen": self.n_seen,
                        "pack_sums": {k: v.detach().clone() for k, v in (pack_sums or {}).items()}}})
        write_status(self.d, "running", epoch=epoch - 1, step=step)

    def restore_partial(self) -> None:
        """After :meth:`begin_epoch` of a resumed epoch: the sums of its steps before the checkpoint."""
        if self.partial is not None:
            dev = self.data.device
            self.sums = {k: v.to(dev) for k, v in self.partial["sums"].items()}
            self.correct = self.partial["correct"].to(dev)
            self.n_seen = self.partial["n_seen"]
            self.pack_sums = {k: v.to(dev) for k, v in self.partial.get("pack_sums", {}).items()}
        self.partial = None

    def fold_pack_sums(self) -> None:
        """A packed network's partial sums that no pack took back (trained in turn now): into ``sums``."""
        for k, v in getattr(self, "pack_sums", {}).items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.pack_sums = {}

    def end_epoch(self, epoch: int, seconds: float, env: RunEnv) -> RunState | None:
        """Evaluate, checkpoint, log; a final state when the run diverged, else None."""
        cfg, d = self.cfg, self.d
        self.seconds += seconds
        self.images += self.n_seen
        train = {f"train_{k}": float(v) / self.n_seen for k, v in self.sums.items()}
        train["train_loss"] = sum(train.values())
        train["train_running_acc1"] = 100.0 * float(self.correct) / self.n_seen
        diags = {f"diag_{k}": v for k, v in self.method.diagnostics().items()}
        info = {"epoch": epoch, "lr": cfg.lr * lr_factor(cfg, epoch), **train, **diags,
                "wall_time_s": self.seconds, "images_per_s": self.images / max(self.seconds, 1e-9)}
        if not all(math.isfinite(v) for v in train.values()):
            bad = ", ".join(k for k, v in train.items() if not math.isfinite(v))
            reason = f"non-finite training loss at epoch {epoch} ({bad})"
            atomic.write_parquet(d / "metrics.parquet", rows_frame(self.rows))
            write_summary(d)  # metrics.arrow: the final rows, for collect
            write_status(d, DIVERGED, epoch=epoch, reason=reason, diverged_epoch=epoch)
            log_line(d, f"epoch {epoch}: {reason}")
            if env.on_epoch:
                env.on_epoch(cfg, epoch, {**info, "diverged": True})
            (d / "checkpoint.pt").unlink(missing_ok=True)
            return RunState(DIVERGED, epoch, reason)
        data = self.data
        if epoch in cfg.eval_points:
            acc1 = {}
            for split, src in data.eval_splits().items():
                self.rows.append({"epoch": epoch, "split": split, **evaluate_split(self.model, data, src, cfg.precision),
                                  **info, **self.static})
                acc1[f"{split}_acc1"] = self.rows[-1]["acc1"]
            info.update(test_acc1=acc1.pop("test_acc1"), **acc1)
        atomic.torch_save(d / "checkpoint.pt", {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "method": self.method.state_dict(), "rows": self.rows, "seconds": self.seconds,
            "images": self.images, "run_id": cfg.run_id})
        if epoch in cfg.eval_points:
            atomic.write_parquet(d / "metrics.parquet", rows_frame(self.rows))
        write_status(d, "running", epoch=epoch)
        log_line(d, epoch_line(cfg, epoch, info))
        if env.on_epoch:
            env.on_epoch(cfg, epoch, info)
        return None

    def finish(self) -> RunState:
        cfg, d = self.cfg, self.d
        atomic.torch_save(d / "model.pt", self.model.state_dict())
        if cfg.method == "ce" and cfg.teacher is None and isinstance(self.data, DeviceData):  # not when streamed
            write_teacher_profile(d, self.model, self.data, cfg.precision)
        final = {r["split"]: r["acc1"] for r in self.rows if r["epoch"] == cfg.epochs}
        write_summary(d)  # metrics.arrow: the final rows, for collect
        write_status(d, DONE, epoch=cfg.epochs, **final_acc1(final), wall_time_s=self.seconds,
                     images_per_s=self.images / max(self.seconds, 1e-9))
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return RunState(DONE, cfg.epochs)


def _train_group(cfgs: list[RunConfig], store: RunStore, env: RunEnv) -> dict[str, RunState]:
    first = cfgs[0]
    data = env.data(first)
    teacher, teacher_info = load_teacher(first, store, data)
    results: dict[str, RunState] = {}
    students: list[_Student] = []
    for cfg in cfgs:
        try:
            students.append(_Student(cfg, store, data, teacher, teacher_info, len(cfgs)))
        except Exception as e:  # noqa: BLE001 - this run fails, the others go on
            results[cfg.run_id] = _record_failure(store.run_dir(cfg), e)
    # Runs resumed from different epochs train one sub-group after another, from the earliest.
    for start in sorted({(s.start, s.start_step) for s in students}):
        group = [s for s in students if (s.start, s.start_step) == start]
        results.update(_epochs(group, teacher, data, env, *start))
    return results


def _use_network(env: RunEnv, device: torch.device, n: int) -> bool:
    """Whether ``n`` students train as one packed network (see ``Machine.pack_mode``)."""
    if n < 2 or env.machine.pack_mode == "sequential":
        return False
    return env.machine.pack_mode == "network" or device.type == "cuda"


def _epochs(group: list[_Student], teacher: nn.Module | None, data: DeviceData, env: RunEnv,
            start: int, start_step: int = 0) -> dict[str, RunState]:
    cfg = group[0].cfg
    device = data.device
    augment = cfg.augment or data.splits.augment
    results: dict[str, RunState] = {}
    network = _use_network(env, device, len(group))
    every = env.machine.checkpoint_steps  # also a checkpoint every this many steps (0: none)
    pack: _PackedGroup | None = None
    for epoch in range(start + 1, cfg.epochs + 1):
        first_step = start_step if epoch == start + 1 else 0
        for s in group:
            s.begin_epoch(epoch)
            if first_step:
                s.restore_partial()
        if network and pack is None and len(group) > 1:
            pack = _build_pack(group, data)
            network = pack is not None
        if pack is not None:
            pack.begin_epoch(epoch)
        if first_step:
            if pack is not None:
                pack.restore_partial()
            for s in group:
                s.fold_pack_sums()
        t0 = time.perf_counter()
        step = group_step(group, pack, teacher, data, epoch, graphs=_use_graphs(env, group, pack, epoch == start + 1))
        n_steps, told = data.n_batches(cfg.batch_size), time.monotonic()
        batches = (data.epoch_batches(cfg.seed, epoch, cfg.batch_size, augment, start_step=first_step) if first_step
                   else data.epoch_batches(cfg.seed, epoch, cfg.batch_size, augment))
        for i, (x, y) in enumerate(batches, start=first_step):
            try:
                failed = step(x, y, i)
            except Exception as e:  # noqa: BLE001 - the shared network failed: every member fails
                if pack is None:
                    raise
                for s in pack.students:
                    results[s.cfg.run_id] = _record_failure(s.d, e)
                    group.remove(s)
                return results
            if env.on_step is not None and (now := time.monotonic()) - told >= STEP_REPORT_S:
                told = now
                env.on_step(cfg, epoch, i + 1, n_steps)
            preempted = _CHECKPOINT_NOW.is_set()  # at the epoch's last step: the epoch-end checkpoint below
            if (preempted or every and (i + 1) % every == 0) and i + 1 < n_steps and not failed:
                _save_steps(group, pack, epoch, i + 1, time.perf_counter() - t0)
                if preempted or env.stop_after_step == (epoch, i + 1):
                    why = "pre-empted: checkpointed within the epoch" if preempted else "stopped on request"
                    return {**results, **{s.cfg.run_id: RunState(INCOMPLETE, epoch - 1, why) for s in group}}
            if not failed:
                continue
            if pack is not None:  # a method raised: that run fails, the others go on in a smaller pack
                pack.sync(exclude=[s for s, _ in failed])
            for s, e in failed:
                results[s.cfg.run_id] = _record_failure(s.d, e)
                group.remove(s)
            if pack is not None:
                pack = _build_pack(group, data) if len(group) > 1 else None
                if pack is not None:
                    pack.resume_epoch(epoch)
                step = group_step(group, pack, teacher, data, epoch, graphs=False)
        if device.type == "cuda" and epoch == start + 1 and step.fallback != "off":
            for s in group:
                log_line(s.d, step.note())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if pack is not None:
            pack.sync()  # each run's model, optimizer state and epoch sums back into its _Student
        for s in list(group):
            try:
                final = s.end_epoch(epoch, seconds, env)
            except Exception as e:  # noqa: BLE001 - e.g. evaluation out of memory: this run fails
                final = _record_failure(s.d, e)
            if final is not None:
                results[s.cfg.run_id] = final
                group.remove(s)
                pack = None  # rebuilt without the finished run at the next epoch
        if env.stop_after_epoch is not None and epoch >= env.stop_after_epoch and epoch < cfg.epochs:
            results.update({s.cfg.run_id: RunState(INCOMPLETE, epoch, "stopped on request") for s in group})
            return results
        if _CHECKPOINT_NOW.is_set() and epoch < cfg.epochs:  # pre-empted: the epoch-end checkpoint is written
            results.update({s.cfg.run_id: RunState(INCOMPLETE, epoch, "pre-empted: checkpointed at the epoch's end")
                            for s in group})
            return results
        if not group:
            return results
    for s in group:
        try:
            results[s.cfg.run_id] = s.finish()
        except Exception as e:  # noqa: BLE001 - e.g. disk full writing model.pt: this run fails
            results[s.cfg.run_id] = _record_failure(s.d, e)
    return results


def _save_steps(group: list[_Student], pack: "_PackedGroup | None", epoch: int, step: int, seconds: float) -> None:
    """Every student's checkpoint within ``epoch``. A packed network first writes its weights,
    optimizer state and counts back; its loss sums are saved as they are (not flushed), so the
    checkpoint changes no sum's order of additions."""
    if group[0].data.device.type == "cuda":
        torch.cuda.synchronize()
    if pack is not None:
        pack.sync(keep_graph=True, flush=False)
    for s in group:
        s.save_step(epoch, step, seconds, pack.partial_sums(pack.students.index(s)) if pack is not None else None)


def group_step(group: list[_Student], pack: "_PackedGroup | None", teacher: nn.Module | None, data: DeviceData,
               epoch: int, graphs: bool) -> StepGraph:
    """The group's training step for ``epoch``: ``step(x, y, i) -> failures`` (students whose
    method raised). One teacher forward (when a method reads it), then the packed network's step
    or each student's in turn; with ``graphs``, replayed as a CUDA graph (tstudy.cuda_graph)."""
    cfg, device = group[0].cfg, data.device
    forward_teacher = teacher is not None and any(s.method.teacher_logits_per_step for s in group)

    def device_step(x: torch.Tensor, y: torch.Tensor, i: int, graphed: bool) -> list:
        v = None
        if forward_teacher:
            with torch.no_grad(), autocast(device, cfg.precision, graphed):
                v = teacher(x).float()
        if pack is not None:
            return pack.step(x, y, v, epoch, i, graphed)
        failed = []
        for s in group:
            try:
                s.step(x, y, v, epoch, i, graphed)
            except Exception as e:  # noqa: BLE001 - one student failing leaves the others
                failed.append((s, e))
        return failed

    def host_step(b: int) -> None:
        for s in [pack] if pack is not None else group:
            s.n_seen += b

    return StepGraph(device_step, host_step, enabled=graphs)


def _use_graphs(env: RunEnv, group: list[_Student], pack: "_PackedGroup | None", log: bool) -> bool:
    """Whether the group's steps are CUDA graphs (``env.machine.cuda_graphs`` and no blocker); logs why
    not, once (``log``), on CUDA."""
    device = group[0].data.device
    if env.machine.cuda_graphs == "off" or device.type != "cuda":
        return False
    models = [pack.net] if pack is not None else [s.model for s in group]
    blockers = graph_blockers(device, group[0].cfg.optimizer, [s.method for s in group], models)
    if blockers and log:
        for s in group:
            log_line(s.d, f"eager steps: no CUDA graph ({'; '.join(blockers)})")
    return not blockers


# --------------------------------------------------------------------------- packed network
def _build_pack(group: list[_Student], data: DeviceData) -> "_PackedGroup | None":
    """The group as one packed network, or None (logged) when it cannot be packed exactly."""
    from tstudy.packnet import PackError

    try:
        pack = _PackedGroup(group, data)
    except PackError as e:
        for s in group:
            log_line(s.d, f"cannot train as a packed network ({e}); training the {len(group)} runs in turn")
        return None
    for s in group:
        log_line(s.d, f"training as one packed network of {len(group)} runs ({pack.net.impl})")
    return pack


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _PackedGroup:
    """The students of a group trained as ONE network (``RunEnv.pack_mode`` ``network``).

    Per step: one packed forward (logits ``[K, B, C]``), each student's method on its slice
    (float32), the K losses summed, one backward, one optimizer step over the stacked
    parameters plus every method's own parameters (elementwise optimizers: exact per student).
    Loss-term sums and accuracy are accumulated on the device. :meth:`sync` writes each run's
    model, optimizer state and epoch sums back into its ``_Student``, which then evaluates and
    checkpoints exactly as in sequential training (the checkpoint format does not change).

    Randomness: the step is seeded once with the runs' common step seed (as each run alone
    seeds its own step), the network draws what one model draws (one dropout mask for all),
    and each method starts from the RNG state after the forward, as it would alone; so a
    stochastic method (kd_shuffled) draws the same numbers packed as alone.
    """

    def __init__(self, students: list[_Student], data: DeviceData) -> None:
        from tstudy.packnet import PackedModels, stack_optimizer_states

        self.students, self.data = list(students), data
        self.cfg = students[0].cfg
        self.net = PackedModels([s.model for s in students], channels_last=data.channels_last)
        self.params = self.net.packed_parameters()
        self.n_model = len(self.params)
        self.n_extra = [len(list(s.method.parameters())) for s in students]
        extra = [p for s in students for p in s.method.parameters()]
        self.opt = make_optimizer(self.cfg, self.params + extra)
        stack_optimizer_states(self.opt, self.n_model, [s.opt.state_dict() for s in students], self.n_extra)
        self.layout: tuple = ()
        self.sums: torch.Tensor | None = None

    def begin_epoch(self, epoch: int) -> None:
        """Learning rate of ``epoch``, train mode, zero accumulators."""
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * lr_factor(self.cfg, epoch)
        self.net.train()
        self.layout, self.sums = (), None
        self.correct = torch.zeros(len(self.students), device=self.data.device)
        self.n_seen = 0

    def partial_sums(self, k: int) -> dict[str, torch.Tensor]:
        """Student ``k``'s share of the loss-term accumulator, by term."""
        if self.sums is None:
            return {}
        return {key: val for (j, key), val in zip(self.layout, self.sums) if j == k}

    def restore_partial(self) -> None:
        """After :meth:`begin_epoch` of a resumed epoch: the accumulator as a step checkpoint saved it
        (:meth:`partial_sums` of each student), so later steps add into it as without the stop."""
        layout = [(k, key) for k, s in enumerate(self.students) for key in getattr(s, "pack_sums", {})]
        if layout:
            self.layout = tuple(layout)
            self.sums = torch.stack([self.students[k].pack_sums[key] for k, key in layout]).to(self.data.device)
        for s in self.students:
            s.pack_sums = {}

    def resume_epoch(self, epoch: int) -> None:
        """A pack rebuilt mid-epoch: the students already hold the epoch's sums so far."""
        self.begin_epoch(epoch)

    def step(self, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor | None, epoch: int,
             i: int, graphed: bool = False) -> list[tuple[_Student, Exception]]:
        """One training step of every student (device work only; the caller counts ``n_seen``);
        returns the students whose method raised. ``graphed``: being captured as a CUDA graph,
        so no seeding and no RNG juggling (graph-safe methods draw no random numbers)."""
        cfg, device = self.cfg, self.data.device
        if not graphed:
            torch.manual_seed(step_seed(cfg.seed, epoch, i))  # equal for all: the seed is in pack_key
        with autocast(device, cfg.precision, graphed):
            z_all = self.net(x)
        z_all = z_all.float().contiguous()
        rng = None if graphed else _rng_state(device)
        flat: list[torch.Tensor] = []
        layout: list[tuple[int, str]] = []
        failed: list[tuple[_Student, Exception]] = []
        for k, s in enumerate(self.students):
            if k and rng is not None:
                _set_rng_state(rng, device)  # each method draws what it would draw alone
            try:
                terms = s.method(z_all[k], v, y, epoch=epoch)
            except Exception as e:  # noqa: BLE001 - this run fails, the others step
                failed.append((s, e))
                continue
            for key, t in terms.items():
                flat.append(t)
                layout.append((k, key))
        if flat:
            stacked = torch.stack(flat)
            self.opt.zero_grad(set_to_none=True)
            stacked.sum().backward()
            self.opt.step()
            b = y.shape[0]
            if tuple(layout) != self.layout:
                self._flush()
                self.layout, self.sums = tuple(layout), torch.zeros(len(layout), device=device)
            self.sums.add_(stacked.detach() * b)  # the same float32 ops as _Student.step; in place for graphs
        self.correct += (z_all.detach().argmax(2) == y).sum(1)
        return failed

    def _flush(self, keep_graph: bool = False) -> None:
        """Add the accumulated loss-term sums into the students' ``sums``; ``keep_graph``: zero the
        accumulator in place instead (a captured CUDA graph keeps adding into it)."""
        if self.sums is not None:
            for (k, key), val in zip(self.layout, self.sums):
                st = self.students[k]
                st.sums[key] = st.sums.get(key, 0) + val
            if keep_graph:
                self.sums.zero_()
                return
        self.layout, self.sums = (), None

    def sync(self, exclude: list[_Student] = (), keep_graph: bool = False, flush: bool = True) -> None:
        """Write model, optimizer state and epoch accumulators back into each student; ``flush``
        False: the loss sums stay in the pack's accumulator (a step checkpoint)."""
        from tstudy.packnet import unstack_optimizer_state

        if flush:
            self._flush(keep_graph)
        keep = [(k, s) for k, s in enumerate(self.students) if s not in exclude]
        self.net.copy_to([s.model for s in self.students])
        for k, s in keep:
            s.correct = s.correct + self.correct[k]
            s.n_seen += self.n_seen
            groups = s.opt.state_dict()["param_groups"]
            s.opt.load_state_dict(unstack_optimizer_state(self.opt, self.n_model, k, self.n_extra, groups))
        self.correct.zero_()
        self.n_seen = 0


def epoch_line(cfg: RunConfig, epoch: int, info: dict) -> str:
    """The one-line summary of an epoch, for run logs and job logs."""
    acc = "".join(f" {k} {info[k]:.2f}" for k in ("test_acc1", "val_acc1") if k in info)
    return (f"{cfg.run_id} epoch {epoch}/{cfg.epochs} loss {info['train_loss']:.4f}{acc} "
            f"lr {info['lr']:.4g} {info['images_per_s']:.0f} img/s")


def rows_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def load_checkpoint(d: Path, run_id: str) -> dict | None:
    """The run's checkpoint, or None. A corrupt one is set aside (renamed) and training restarts."""
    path = d / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or not {"epoch", "model", "optimizer", "rows"} <= set(ck):
            raise ValueError("missing keys")
        if ck.get("run_id") != run_id:
            raise ValueError(f"checkpoint of run {ck.get('run_id')}, not {run_id}")
        return ck
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        bad = set_aside(path)
        log_line(d, f"checkpoint unreadable ({type(e).__name__}: {e}); set aside as {bad.name}, restarting")
        return None

