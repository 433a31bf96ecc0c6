"""The streamed data path: training batches decoded from a packed JPEG store while training.

:class:`StreamData` has the interface of :class:`tstudy.device_data.DeviceData` (``splits``,
``eval_splits()``, ``normalize()``, ``n_batches()``, ``epoch_batches()``), so the engine,
packing and evaluation do not fork. Each epoch's plan (order, random-resized-crop boxes, flips)
is a pure function of (seed, epoch) (:mod:`tstudy.data.plan`); a :class:`DecoderPool` executes
it (:mod:`tstudy.data.decode`), so batches do not depend on the number of decoder workers and an
epoch resumes at any step. ``decoder="dali"`` (``--decoder dali``) executes the same plans with
NVIDIA DALI instead (:mod:`tstudy.data.dali`; close to, not identical with, Pillow's pixels). Batches move to the device non-blocking and are normalised there.

Which path a run takes (:func:`streams`): ``imagenet`` always streams; any other dataset streams
exactly when its ``augment`` is ``"rrc_flip"``. So the augmentation decides the path and results
never depend on a machine setting.

Evaluation (test transform: shorter side to ``round(image_size * 256 / 224)``, centre crop
``image_size``): the whole test split; ``val`` (``val_fraction``, the rule of
:mod:`tstudy.data.validation` on the store's labels); ``train``: a fixed subset of at most
:data:`TRAIN_EVAL_MAX` training images (the first of a permutation seeded by
:data:`TRAIN_EVAL_SEED`), not the whole set.

Normalisation: the ImageNet mean/std (as torchvision's references), for every streamed set.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tstudy.config import RunConfig, is_streamed
from tstudy.device_data import uses_channels_last
from tstudy.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
TRAIN_EVAL_MAX = 10_000
TRAIN_EVAL_SEED = 15
EVAL_BATCH = 256
MAX_AUTO_WORKERS = 8


DECODERS = ("cpu", "dali")


def make_decoder(store, decoder: str, workers: int, device: torch.device):
    """The decoder of a store: ``"cpu"``, a :class:`~tstudy.data.decode.DecoderPool` of ``workers``
    processes; ``"dali"``, a :class:`~tstudy.data.dali.DaliDecoder` (nvJPEG on ``device`` when it is
    a CUDA device, else DALI's CPU pipeline; ``workers`` unused)."""
    if decoder == "dali":
        from tstudy.data.dali import DaliDecoder

        if device.type == "cuda":
            return DaliDecoder(store, "gpu", device_id=device.index if device.index is not None
                               else torch.cuda.current_device())
        return DaliDecoder(store, "cpu")
    if decoder != "cpu":
        raise ConfigError(f"--decoder: unknown value {decoder!r}; valid: {', '.join(DECODERS)}")
    from tstudy.data.decode import DecoderPool

    return DecoderPool(store, workers)


def check_decoder(decoder: str, runs) -> None:
    """``--decoder dali`` needs a streamed run and DALI installed: a ConfigError (one line) otherwise."""
    if decoder == "cpu":
        return
    if decoder not in DECODERS:
        raise ConfigError(f"--decoder: unknown value {decoder!r}; valid: {', '.join(DECODERS)}")
    from tstudy.data.dali import INSTALL_HINT, available

    if not any(streams(r) for r in runs):
        raise ConfigError("--decoder dali: decodes the streamed data path only (dataset imagenet or augment "
                          "'rrc_flip'); this study has no streamed run")
    if not available():
        raise ConfigError(f"--decoder dali: NVIDIA DALI is not installed; {INSTALL_HINT}")


def streams(cfg: RunConfig) -> bool:
    """Whether ``cfg`` trains on the streamed path (the rule: :func:`tstudy.config.is_streamed`)."""
    return is_streamed(cfg.dataset, cfg.augment)


def auto_workers() -> int:
    """Decoder processes when none are given: min(CPUs this process may use, 8)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def test_resize(image_size: int) -> int:
    """The test transform's shorter side: ``image_size * 256 / 224``, rounded (256 for 224)."""
    return int(round(image_size * 256 / 224))


@dataclass
class StreamInfo:
    """What the engine reads from ``data.splits`` (as :class:`tstudy.data.DataSplits`)."""

    name: str
    num_classes: int
    image_size: int
    class_names: list[str] = field(repr=False)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: str = "rrc_flip"
    in_channels: int = 3


class EvalSplit:
    """A split evaluated batch by batch: ``iter()`` yields (uint8 images, labels) on the device."""

    def __init__(self, data: "StreamData", pool, indices: np.ndarray | None) -> None:
        self.data, self.pool, self.indices = data, pool, indices

    def __len__(self) -> int:
        return len(self.pool.store) if self.indices is None else len(self.indices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = self.data.splits.image_size
        resize = test_resize(size)
        for x, y in self.pool.test_batches(EVAL_BATCH, resize, size, indices=self.indices):
            yield self.data.to_device(x), self.data.to_device(y)


class StreamData:
    """A packed store streamed through a decoder pool; the interface of ``DeviceData``."""

    def __init__(self, train_store: Path, test_store: Path, name: str, image_size: int | None, val_fraction: float,
                 device: torch.device, workers: int = 0, decoder: str = "cpu") -> None:
        from tstudy.data.packed import PackedStore
        from tstudy.data.validation import split_indices

        self.device, self.workers, self.decoder = device, workers, decoder
        self.train_pool = make_decoder(PackedStore(train_store), decoder, workers, device)
        self.test_pool = make_decoder(PackedStore(test_store), decoder, workers, device)
        store = self.train_pool.store
        self.splits = StreamInfo(name, len(store.classes), image_size or DEFAULT_IMAGE_SIZE, list(store.classes))
        self.num_classes = self.splits.num_classes
        labels = np.asarray(store.labels, np.int64)
        self.train_idx: np.ndarray | None = None
        self.val_idx: np.ndarray | None = None
        if val_fraction:
            tr, va = split_indices(torch.from_numpy(labels), val_fraction)
            self.train_idx, self.val_idx = tr.numpy(), va.numpy()
        train = np.arange(len(store)) if self.train_idx is None else self.train_idx
        perm = np.random.default_rng(TRAIN_EVAL_SEED).permutation(len(train))[:TRAIN_EVAL_MAX]
        self.train_eval_idx = np.sort(train[perm])
        self.sizes = store.sizes if self.train_idx is None else store.sizes[self.train_idx]
        c = self.splits.in_channels
        self.mean = torch.tensor(self.splits.mean, device=device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(self.splits.std, device=device).view(1, c, 1, 1) * 255.0
        self.channels_last = uses_channels_last(device)

    def close(self) -> None:
        self.train_pool.close()
        self.test_pool.close()

    @property
    def n_train(self) -> int:
        return int(self.sizes.shape[0])

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_splits(self) -> dict[str, EvalSplit]:
        """train (a fixed subset, see the module docstring), test, and val when there is one."""
        out = {"train": EvalSplit(self, self.train_pool, self.train_eval_idx),
               "test": EvalSplit(self, self.test_pool, None)}
        if self.val_idx is not None:
            out["val"] = EvalSplit(self, self.train_pool, self.val_idx)
        return out

    def n_batches(self, batch_size: int) -> int:
        """Training steps per epoch: full batches only (the plan drops the last partial one)."""
        n = self.n_train // batch_size
        if n == 0:
            raise ConfigError(f"batch_size: {batch_size} is larger than the {self.n_train} training images")
        return n

    def epoch_batches(self, seed: int, epoch: int, batch_size: int, augment: str, start_step: int = 0):
        """Yield the normalised (images, labels) batches of one epoch from ``start_step`` on."""
        from tstudy.data.plan import EpochPlan, epoch_plan

        if augment != "rrc_flip":
            raise ConfigError(f"augment: the streamed data path trains with 'rrc_flip', got {augment!r}")
        self.n_batches(batch_size)
        plan = epoch_plan(self.sizes, seed, epoch)
        if self.train_idx is not None:  # a plan over the kept images, its order mapped to store indices
            plan = EpochPlan(plan.seed, plan.epoch, self.train_idx[plan.order], plan.boxes, plan.flips)
        for x, y in self.train_pool.train_batches(plan, batch_size, self.splits.image_size, start_step):
            yield self.normalize(self.to_device(x)), self.to_device(y)


def stream_info(cfg: RunConfig, data_root: str | None) -> StreamInfo:
    """What preflight checks (classes, image size) of a streamed run; builds nothing."""
    from tstudy.data.imagenet import class_names

    names = class_names(cfg.dataset, data_root)
    return StreamInfo(cfg.dataset, len(names), cfg.image_size or DEFAULT_IMAGE_SIZE, names)


def open_stream(cfg: RunConfig, data_root: str | None, device: torch.device, workers: int | None,
                decoder: str = "cpu") -> StreamData:
    """The streamed data of ``cfg`` (its stores packed first if needed), decoded by ``decoder``."""
    from tstudy.data.imagenet import stores

    train, test = stores(cfg.dataset, data_root)
    if decoder == "dali" and device.type != "cuda":
        print(f"tstudy: --decoder dali: training on {device}, not CUDA: DALI decodes on the CPU", file=sys.stderr)
    return StreamData(train, test, cfg.dataset, cfg.image_size, cfg.val_fraction, device,
                      auto_workers() if workers is None else workers, decoder)
