"""scikit-learn's digits (1,797 8x8 grey images, 10 classes), embedded in scikit-learn."""
from __future__ import annotations

import numpy as np

from tstudy.data import DATASETS, DataError, DataSplits, channel_stats, resize_uint8

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@DATASETS.register("digits")
def load_digits(root=None, image_size: int | None = None, labels: str = "fine", download: bool = False) -> DataSplits:
    """A fixed stratified 75/25 split (1,347 train / 450 test); pixels 0..16 scaled to 0..255."""
    if labels != "fine":
        raise DataError(f"labels: digits has only 'fine' labels, got {labels!r}")
    import torch
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    x = np.clip(d.images * 16.0, 0, 255).round().astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    train_x, test_x = torch.from_numpy(xtr), torch.from_numpy(xte)
    if image_size is not None:
        train_x, test_x = resize_uint8(train_x, image_size), resize_uint8(test_x, image_size)
    mean, std = channel_stats(train_x)
    return DataSplits("digits", train_x, torch.from_numpy(ytr), test_x, torch.from_numpy(yte), 10,
                      mean, std, augment="none", class_names=[str(i) for i in range(10)])
