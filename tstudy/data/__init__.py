"""Datasets, registered by name, loaded whole into memory as uint8 tensors.

Every loader returns a :class:`DataSplits`: images ``uint8 [N, C, H, W]``, labels ``int64 [N]``,
per-channel mean/std (on the 0..1 scale) and the default augmentation. The engine moves the
whole set to the training device once and augments there (DESIGN.md "Data").

torch is imported only where a loader needs it, so the streamed path's planning and decoding
modules (and their worker processes) run without it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tstudy.errors import ConfigError
from tstudy.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass
class DataSplits:
    """A dataset in memory: train and test images (uint8 NCHW) and labels (int64), and the
    validation split carved from train (:func:`tstudy.data.validation.with_validation`) or None."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "crop_flip"
    class_names: list[str] | None = field(default=None, repr=False)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


class DataError(ConfigError):
    """Data that is missing or unreadable; the message says where it was looked for."""


Loader = Callable[..., DataSplits]
DATASETS: Registry[Loader] = Registry("dataset")


def data_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Where to look for data, in order: the explicit root, $TSTUDY_DATA, ./data, ~/.cache/tstudy/data."""
    roots: list[Path] = []
    if root is not None:
        roots.append(Path(root).expanduser())
    if os.environ.get("TSTUDY_DATA"):
        roots.append(Path(os.environ["TSTUDY_DATA"]).expanduser())
    roots += [Path("data"), Path("~/.cache/tstudy/data").expanduser()]
    return roots


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    labels: str = "fine",
    download: bool = False,
) -> DataSplits:
    """Load dataset ``name`` (see ``DATASETS.names()``) into memory."""
    loader = DATASETS.get(name, "dataset")
    splits = loader(root=root, image_size=image_size, labels=labels, download=download)
    return splits


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images to size x size (antialiased bilinear), back to uint8."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    import torch

    out = []
    for chunk in x.split(4096):
        y = torch.nn.functional.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (unbiased, as torch.std) of uint8 NCHW images on the 0..1 scale.

    For uint8, exact from per-channel histograms, in chunks: fast and small in memory even for
    Tiny-ImageNet (a float64 copy of it would need ~7 GB).
    """
    import torch

    if x.dtype != torch.uint8:
        xf = x.to(torch.float64) / 255.0
        return tuple(float(m) for m in xf.mean(dim=(0, 2, 3))), tuple(float(s) for s in xf.std(dim=(0, 2, 3)))
    hist = torch.zeros(x.shape[1], 256, dtype=torch.int64)
    for chunk in x.split(8192):
        for c in range(x.shape[1]):
            hist[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    means, stds = [], []
    for h in hist.tolist():  # exact integer sums, then one rounding each
        n = sum(h)
        s1 = sum(v * k for v, k in enumerate(h))
        s2 = sum(v * v * k for v, k in enumerate(h))
        means.append(s1 / (255 * n) if n else float("nan"))
        stds.append(math.sqrt((n * s2 - s1 * s1) / (n * (n - 1))) / 255 if n > 1 else float("nan"))
    return tuple(means), tuple(stds)


from tstudy.data import digits as _digits  # noqa: E402,F401  (registers "digits")
from tstudy.data import cifar as _cifar  # noqa: E402,F401  (registers "cifar10", "cifar100")
from tstudy.data import fashionmnist as _fashionmnist  # noqa: E402,F401  (registers "fashionmnist")
from tstudy.data import imagefolder as _imagefolder  # noqa: E402,F401  (registers "imagefolder")
from tstudy.data import tinyimagenet as _tinyimagenet  # noqa: E402,F401  (registers "tinyimagenet")
from tstudy.data import imagenet as _imagenet  # noqa: E402,F401  (registers "imagenet": streamed)
