"""Evaluation: logits in eval mode over a split (chunked), top-1/top-5 accuracy and CE loss.

A split is a resident pair of tensors ``(x, y)`` (:class:`DeviceData`) or an iterable of
``(x, y)`` uint8 batches on the device (:class:`tstudy.stream_data.EvalSplit`); the same metrics
code serves both, so the numbers of the resident path do not change."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tstudy.device_data import DeviceData

EVAL_BATCH = 1024

def autocast(device: torch.device, precision: str, graphed: bool = False):
    """bf16 autocast for ``precision == "bf16"``; without its weight-cast cache inside a CUDA
    graph capture (the cache would hold tensors of one replay)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=not graphed)


@torch.no_grad()
def predict(model: nn.Module, data: DeviceData, x: torch.Tensor, precision: str) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = []
    with autocast(data.device, precision):
        for chunk in x.split(EVAL_BATCH):
            out.append(model(data.normalize(chunk)).float())
    model.train(was_training)
    return torch.cat(out)


def accuracy_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    correct = top.eq(y.view(-1, 1))
    return {"acc1": 100.0 * correct[:, 0].float().mean().item(),
            "acc5": 100.0 * correct.any(dim=1).float().mean().item(),
            "loss": F.cross_entropy(logits, y).item()}


def evaluate(model: nn.Module, data: DeviceData, x: torch.Tensor, y: torch.Tensor, precision: str) -> dict:
    return accuracy_metrics(predict(model, data, x, precision), y)


@torch.no_grad()
def predict_batches(model: nn.Module, data, batches, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over an iterable of (uint8 images, labels) batches, in eval mode."""
    was_training = model.training
    model.eval()
    out, ys = [], []
    with autocast(data.device, precision):
        for x, y in batches:
            out.append(model(data.normalize(x)).float())
            ys.append(y)
    model.train(was_training)
    return torch.cat(out), torch.cat(ys)


def evaluate_split(model: nn.Module, data, split, precision: str) -> dict:
    """Metrics over a split as ``data.eval_splits()`` gives it (tensors or batches)."""
    if isinstance(split, tuple):
        return evaluate(model, data, split[0], split[1], precision)
    return accuracy_metrics(*predict_batches(model, data, split, precision))
