"""The training subset (``RunConfig.train_per_class``) and the validation split
(``RunConfig.val_fraction``): part of each class's training images held out.

``train_per_class`` keeps the first N training images of each class in the dataset's own order
(all of a class that has fewer), before anything else; the validation split is then carved from
that subset as below.

For each class, in increasing order, one generator seeded with :data:`SPLIT_SEED` permutes the
class's training indices, and the first ``round(fraction * n)`` of them (at least one for a class
of two or more images) are held out; the training set is the rest, in its original order. So:

- stratified: every class loses the same share of its images;
- a function of the training labels and the fraction only, not of the run's seed: every seed,
  temperature and method of a study, and a teacher and its students, hold out the same images
  (a student never validates on an image its teacher trained on; paired runs see one split);
- nested: the images held out at a fraction are held out at every larger one.

The test set is unchanged, as are the dataset's normalisation constants.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from tstudy.data import DataSplits

SPLIT_SEED = 14


def split_indices(labels: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of a training set with ``labels``, each sorted."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    held = []
    counts = torch.unique(labels, return_counts=True)[1].tolist()  # per class, classes sorted
    for idx in torch.split(torch.argsort(labels, stable=True), counts):  # each class's indices, in order
        n = idx.numel()
        k = min(max(1, math.floor(fraction * n + 0.5)), n - 1) if fraction > 0 and n > 1 else 0
        held.append(idx[torch.randperm(n, generator=g)[:k]])
    val = torch.sort(torch.cat(held)).values if held else labels.new_zeros(0)
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def training_subset(splits: DataSplits, per_class: int | None) -> DataSplits:
    """``splits`` with only the first ``per_class`` training images of each class, in their order
    (unchanged for None). Test set and normalisation constants are unchanged."""
    if per_class is None:
        return splits
    y = splits.train_y
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(y.numel()) - starts[y[order]]
    keep = (rank < per_class).nonzero().flatten()
    return dataclasses.replace(splits, train_x=splits.train_x[keep], train_y=y[keep])


def training_splits(splits: DataSplits, per_class: int | None, fraction: float) -> DataSplits:
    """The subset, then the validation split: the data a run with these fields trains on."""
    return with_validation(training_subset(splits, per_class), fraction)


def with_validation(splits: DataSplits, fraction: float) -> DataSplits:
    """``splits`` with ``fraction`` of its training set held out as ``val_x``/``val_y``
    (unchanged for 0)."""
    if fraction == 0:
        return splits
    train, val = split_indices(splits.train_y, fraction)
    return dataclasses.replace(splits, train_x=splits.train_x[train], train_y=splits.train_y[train],
                               val_x=splits.train_x[val], val_y=splits.train_y[val])
