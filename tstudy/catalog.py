"""Names of the built-in models and datasets, known without importing torch.

Config validation checks names here (so `tstudy plan` starts fast); once ``tstudy.models`` or
``tstudy.data`` is imported, their registries are used instead, custom registrations included.
tests/test_catalog.py keeps these lists equal to the registries.
"""
from __future__ import annotations

import sys

from tstudy.errors import ConfigError

MODELS = (
    "cnn_l", "cnn_s", "mlp_l", "mlp_s",
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2",
    "tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2", "tv_convnext_tiny", "tv_vit_b_16",
)
DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagefolder", "fashionmnist", "imagenet")


def _check(kind: str, name: object, builtin: tuple[str, ...], module: str, attr: str, field: str) -> None:
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, attr):
        getattr(mod, attr).get(name, field)
    elif name not in builtin:
        raise ConfigError(f"{field}: unknown {kind} {name!r}; valid: {', '.join(sorted(builtin))}")


def check_model(name: object, field: str = "model") -> None:
    _check("model", name, MODELS, "tstudy.models", "MODELS", field)


def check_dataset(name: object, field: str = "dataset") -> None:
    _check("dataset", name, DATASETS, "tstudy.data", "DATASETS", field)
