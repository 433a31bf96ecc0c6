"""torchvision ImageNet architectures (``tv_*``), built untrained (``weights=None``).

The head is built for ``num_classes`` directly and the first conv is rebuilt for ``in_channels``
other than 3 (same kernel/stride/padding), so the state_dict keys stay torchvision's and
``tstudy.models.weights.load_imagenet_weights`` can load ImageNet weights (skipping the head,
adapting the first conv). The ImageNet stems are kept at every input size.

``tv_vit_b_16`` is built for ``image_size`` (any multiple of its 16 px patch: 224 for ImageNet,
32 gives 2x2 patches); its position embedding is interpolated when ImageNet weights are loaded.
"""
from __future__ import annotations

import math

from torch import nn

from tstudy.errors import ConfigError
from tstudy.models import MODELS
from tstudy.models._util import check_input

# registry name -> (torchvision name, dotted path of the first conv, smallest usable image_size)
TV_ARCHS: dict[str, tuple[str, str, int]] = {
    "tv_resnet18": ("resnet18", "conv1", 8),
    "tv_resnet34": ("resnet34", "conv1", 8),
    "tv_resnet50": ("resnet50", "conv1", 8),
    "tv_mobilenet_v2": ("mobilenet_v2", "features.0.0", 8),
    "tv_convnext_tiny": ("convnext_tiny", "features.0.0", 32),
    "tv_vit_b_16": ("vit_b_16", "conv_proj", 16),
}


def tv_arch(name: str) -> str:
    """torchvision's name for ``tv_resnet18`` / ``resnet18`` (``ConfigError`` if not one of ``TV_ARCHS``)."""
    for reg, (arch, _, _) in TV_ARCHS.items():
        if name in (reg, arch):
            return arch
    raise ConfigError(f"unknown torchvision model {name!r}; valid: {', '.join(sorted(TV_ARCHS))}")


def first_conv_name(arch: str) -> str:
    """Dotted module path of the first conv of torchvision architecture ``arch``."""
    return next(path for a, path, _ in TV_ARCHS.values() if a == tv_arch(arch))


def _replace_first_conv(model: nn.Module, arch: str, path: str, in_channels: int) -> None:
    """Swap the first conv of ``model`` for one taking ``in_channels`` channels."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, old.bias is not None, old.padding_mode)
    # re-initialise as torchvision does for that family
    if arch.startswith("vit_"):
        fan_in = new.in_channels * new.kernel_size[0] * new.kernel_size[1]
        nn.init.trunc_normal_(new.weight, std=math.sqrt(1.0 / fan_in))
    elif arch.startswith("convnext"):
        nn.init.trunc_normal_(new.weight, std=0.02)
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)


def _register(name: str, arch: str, conv_path: str, min_size: int) -> None:
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
        check_input(name, in_channels, image_size, min_size)
        kwargs: dict[str, object] = {}
        if arch.startswith("vit_"):
            if image_size % 16:
                raise ConfigError(f"model {name}: image_size must be a multiple of the 16 px patch size "
                                  f"(e.g. 32, 64, 224), got {image_size}")
            kwargs["image_size"] = image_size
        import torchvision  # on first use: importing it costs a second per process

        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            _replace_first_conv(model, arch, conv_path, in_channels)
        return model

    factory.__name__ = name
    factory.__doc__ = f"torchvision {arch} (untrained), head for num_classes, first conv for in_channels."
    MODELS.register(name)(factory)


for _name, (_arch, _conv, _min) in TV_ARCHS.items():
    _register(_name, _arch, _conv, _min)
