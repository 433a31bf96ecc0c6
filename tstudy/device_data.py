"""The training data on the device: the whole set as uint8, each epoch's order and augmentation
(random crop with 4-px zero padding, horizontal flip) drawn on the host from a generator seeded by
(seed, epoch), applied on the device; normalisation; channels_last (:func:`uses_channels_last`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tstudy.data import DataSplits
from tstudy.data.plan import epoch_seed  # one formula for both data paths

PAD = 4  # random-crop padding of the standard CIFAR recipe


def uses_channels_last(device: torch.device) -> bool:
    """Whether models and batches on ``device`` are channels_last (NHWC): on CUDA and on the CPU,
    where oneDNN's NHWC convolutions train the CIFAR networks 15-25 % faster in float32 than NCHW,
    with results equal up to float32 rounding (``tests/test_cpu_layout.py``)."""
    return device.type in ("cuda", "cpu")

class DeviceData:
    """A dataset held on the training device, with on-device augmentation."""

    def __init__(self, splits: DataSplits, device: torch.device) -> None:
        self.splits = splits
        self.device = device
        self.train_x = splits.train_x.to(device)
        self.train_y = splits.train_y.to(device)
        self.test_x = splits.test_x.to(device)
        self.test_y = splits.test_y.to(device)
        self.val_x = None if splits.val_x is None else splits.val_x.to(device)
        self.val_y = None if splits.val_y is None else splits.val_y.to(device)
        c = splits.in_channels
        self.mean = torch.tensor(splits.mean, device=device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(splits.std, device=device).view(1, c, 1, 1) * 255.0
        self.num_classes = splits.num_classes
        self.channels_last = uses_channels_last(device)

    def eval_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The splits evaluated at each evaluation point: train, test, and val when there is one."""
        out = {"train": (self.train_x, self.train_y), "test": (self.test_x, self.test_y)}
        if self.val_x is not None:
            out["val"] = (self.val_x, self.val_y)
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch_starts(self, batch_size: int) -> list[int]:
        """Where each batch of an epoch starts in the shuffled order."""
        n = self.train_x.shape[0]
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()  # a last batch of one sample breaks BatchNorm; drop it
        return starts

    def n_batches(self, batch_size: int) -> int:
        """Training steps per epoch."""
        return len(self.batch_starts(batch_size))

    def epoch_batches(self, seed: int, epoch: int, batch_size: int, augment: str, start_step: int = 0):
        """Yield the (images, labels) batches of one epoch from ``start_step`` on: shuffled, augmented,
        normalised (the whole epoch's order and augmentation are drawn first, so a resumed epoch
        continues with the same batches)."""
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        n = self.train_x.shape[0]
        perm = torch.randperm(n, generator=g)
        if augment == "crop_flip":
            offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
        perm = perm.to(self.device)
        if augment == "crop_flip":
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        for s in self.batch_starts(batch_size)[start_step:]:
            idx = perm[s:s + batch_size]
            x = self.train_x[idx]
            if augment == "crop_flip":
                x = crop_flip(x, offsets[s:s + batch_size], flips[s:s + batch_size])
            yield self.normalize(x), self.train_y[idx]


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop with zero padding PAD (given per-sample offsets), then horizontal flip."""
    b, c, h, w = x.shape
    xp = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = xp[bi, ci, rows, cols]
    return torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (epoch_seed(seed, epoch) * 100_003 + step) % (2**63 - 1)
