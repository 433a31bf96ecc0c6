"""Checks made before anything is launched: the device exists, the root is writable, the study
name is ours, the data of every pending run can be loaded. Each failure is one ConfigError line.
``launch --dry-run`` makes the same checks but writes nothing."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tstudy.config import RunConfig
from tstudy.errors import ConfigError
from tstudy.store import RunStore

if TYPE_CHECKING:
    from tstudy.engine import RunEnv
    from tstudy.study import Study


DEVICES = "cpu, cuda, cuda:N or auto"


def check_device(device: str, here: bool = True) -> str:
    """``--device`` resolved (``auto``: cuda when this machine has a GPU, else cpu). A name tstudy
    does not train on, or (``here``: the runs train on this machine) a GPU this machine does not
    have, is one line."""
    m = re.fullmatch(r"cpu|auto|cuda(?::([0-9]+))?", device)
    if m is None:
        raise ConfigError(f"--device: expected {DEVICES}, got {device!r}")
    if not here or device == "cpu":
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return "cuda" if n else "cpu"
    if n == 0:
        raise ConfigError(f"--device: {device!r} needs a CUDA GPU, and torch {torch.__version__} sees none on this "
                          "machine; use --device cpu (or auto)")
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise ConfigError(f"--device: {device!r}, but this machine has {n} visible GPU{'s' if n > 1 else ''}: "
                          + ", ".join(f"cuda:{i}" for i in range(n)))
    return device


def check_root_writable(store: RunStore) -> None:
    """Create the study folder and write a probe file; a read-only or full disk fails here."""
    try:
        store.runs_dir.mkdir(parents=True, exist_ok=True)
        store.study_dir.mkdir(parents=True, exist_ok=True)
        probe = store.study_dir / f".probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        why = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
               errno.EACCES: "permission denied"}.get(e.errno, e.strerror or str(e))
        raise ConfigError(f"--root: cannot write under {store.study_dir} ({why})") from None


def check_data(runs: Sequence[RunConfig], data_root: str | None, env: "RunEnv | None" = None) -> None:
    """Load each distinct dataset the runs need once, so a missing one fails now, and check what
    depends on it: the models fit its images, the method's parameters its classes (kd_topk's k),
    a teacher file its classes. With ``env`` the data stays loaded (on its device) for the
    training that follows."""
    from tstudy.config import TeacherFile
    from tstudy.data import load_dataset
    from tstudy.stream_data import stream_info, streams

    import torch

    from tstudy.models import build_model
    from tstudy.models.weights import load_weights

    splits: dict = {}
    built: set = set()
    for r in runs:
        key = (r.dataset, r.labels, r.image_size, streams(r))  # the two paths prepare the images differently
        if key not in splits:
            if env is not None:
                splits[key] = env.data(r).splits
            elif streams(r):  # streamed: locate the data and read its classes; the store is built by the run
                splits[key] = stream_info(r, data_root)
            else:
                splits[key] = load_dataset(r.dataset, data_root, image_size=r.image_size, labels=r.labels)
        s = splits[key]
        try:
            r.method_class().check_data(dict(r.method_params), s.num_classes)
        except ConfigError as e:
            raise ConfigError(f"{e} (run {r.run_id} on {r.dataset})") from None
        for model in {r.model, r.teacher_model} - {None}:
            if (model, key) not in built:  # e.g. an input too small for the model: fail now
                built.add((model, key))
                with torch.device("meta"):
                    build_model(model, s.num_classes, s.in_channels, s.image_size)
        t = r.teacher
        if isinstance(t, TeacherFile) and (t.weights.sha256, key) not in built:  # its head fits the classes
            built.add((t.weights.sha256, key))
            try:
                load_weights(build_model(t.model, s.num_classes, s.in_channels, s.image_size), t.weights.path,
                             strict_head=True)
            except ConfigError as e:
                raise ConfigError(f"teacher: {e} (on {r.dataset}, {s.num_classes} classes)") from None


def check_weights(runs: Sequence[RunConfig]) -> None:
    """Weights files exist with their recorded hash; ImageNet weights are in torchvision's cache."""
    from tstudy.config import TeacherFile, WeightsFile, file_sha256
    from tstudy.models.weights import imagenet_weights_file, imagenet_weights_path

    seen: set = set()
    for r in runs:
        for cfg, init in ((r, r.init), (r.teacher, getattr(r.teacher, "init", None))):
            if init == "imagenet" and (cfg.model, "imagenet") not in seen:
                seen.add((cfg.model, "imagenet"))
                if imagenet_weights_path(cfg.model) is None:
                    raise ConfigError(f"init: no ImageNet weights for {cfg.model} at "
                                      f"{imagenet_weights_file(cfg.model)}; put torchvision's file there")
        files = [w for w in (r.init, r.teacher.weights if isinstance(r.teacher, TeacherFile) else None)
                 if isinstance(w, WeightsFile)]
        for w in files:
            if w.path not in seen:
                seen.add(w.path)
                if not Path(w.path).is_file():
                    raise ConfigError(f"weights file: {w.path} does not exist")
                if file_sha256(w.path) != w.sha256:
                    raise ConfigError(f"weights file: {w.path} changed since the study was loaded (sha256)")


def preflight(study: "Study", store: RunStore, todo: Sequence[RunConfig], data_root: str | None,
              env: "RunEnv | None" = None, load_data: bool = True, dry_run: bool = False) -> None:
    """Everything that can be checked before a run starts; raises ConfigError on the first problem.
    ``dry_run``: the same checks, but nothing is written (the root's writability is not probed)."""
    if data_root is not None and not Path(data_root).is_dir():
        raise ConfigError(f"--data-root: {data_root!r} is not a directory")
    store.claim_check(study.source)
    check_weights(todo)
    if load_data:
        check_data(todo, data_root, env)
    if dry_run:
        return
    check_root_writable(store)
    store.claim(study.source, (r.run_id for r in study.runs()))
