"""Packed students: K networks of one architecture trained as ONE network.

``PackedModels(models)`` holds the K models' parameters and buffers stacked (leading dim K, the
same names as the single model's ``state_dict``) and maps a batch ``x`` (the same for all K) to
logits ``[K, B, C]`` in one forward pass. Two implementations:

- ``grouped`` (the fast one): a copy of the model whose Conv2d / BatchNorm / Linear / Dropout
  modules are replaced by packed versions. Activations are ``[B, K*C, ...]`` (student k owns
  channels ``k*C .. (k+1)*C``): convolutions run with ``groups = K*groups``, BatchNorm runs
  per channel over ``K*C`` channels (running statistics are views of the stacked buffers), a
  linear layer is a batched matmul, the first layer reads the shared input directly. The number
  of kernels per step is that of ONE model, which is what a launch-bound GPU needs. Used for
  the architectures whose forward code is known to be channel-layout safe (``GROUPABLE``);
  ShuffleNet blocks get packed forwards (channel split / concat / shuffle per student).
- ``vmap``: ``torch.func.functional_call`` under ``torch.vmap`` over the stacked tensors
  (``randomness="same"``); works for any architecture (ConvNeXt, ViT) but costs about 4x the
  framework overhead of one model per step (measured on CPU with tiny inputs, resnet20, K=8).

Both are exact per student: student k's logits, gradients and BatchNorm statistics are those
of its model alone (up to float32 reassociation in grouped kernels). Dropout draws ONE mask
per step shared by the K students, which is what K separate models reseeded with the same step
seed draw, so packed == alone holds for dropout too.

Optimisers: SGD (momentum, nesterov, weight decay), Adam and AdamW update elementwise, so one
optimizer over the stacked parameters gives each slice exactly the update of a per-student
optimizer. :func:`stack_optimizer_states` / :func:`unstack_optimizer_state` convert between
the per-run single-model ``state_dict`` (the checkpoint format) and the packed optimizer.
"""
from __future__ import annotations

import copy
import types
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from tstudy.models import cifar_resnet, mobilenetv2, shufflenet, small, vgg, wrn

IMPLS = ("auto", "grouped", "vmap")


class PackError(RuntimeError):
    """The models (or their optimizer states) cannot be packed together."""


# --------------------------------------------------------------------------- helpers
def _stack(tensors: Sequence[Tensor], channels_last: bool = False) -> Tensor:
    """``[K, *shape]`` copy of ``tensors``; a 4-D conv weight can be stored so that
    ``flatten(0, 1)`` is a channels_last view."""
    t0 = tensors[0]
    k = len(tensors)
    if channels_last and t0.dim() == 4:
        out = torch.empty((k * t0.shape[0], *t0.shape[1:]), dtype=t0.dtype, device=t0.device,
                          memory_format=torch.channels_last).view(k, *t0.shape)
    else:
        out = torch.empty((k, *t0.shape), dtype=t0.dtype, device=t0.device)
    with torch.no_grad():
        for i, t in enumerate(tensors):
            out[i].copy_(t)
    return out


def _replicate(x: Tensor, k: int) -> Tensor:
    """A shared ``[B, C, ...]`` input as packed ``[B, K*C, ...]`` (every student sees it)."""
    b, c = x.shape[:2]
    return x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b, k * c, *x.shape[2:])


def packed_channel_shuffle(x: Tensor, groups: int, k: int) -> Tensor:
    """:func:`channel_shuffle` applied to each student's channels of packed ``[B, K*C, H, W]``."""
    if groups == 1:
        return x
    b, kc, h, w = x.shape
    c = kc // k
    return x.view(b, k, groups, c // groups, h, w).transpose(2, 3).reshape(b, kc, h, w)


def packed_cat(xs: Sequence[Tensor], k: int) -> Tensor:
    """``torch.cat(xs, 1)`` per student for packed ``[B, K*C_i, H, W]`` tensors."""
    b = xs[0].shape[0]
    parts = [x.view(b, k, x.shape[1] // k, *x.shape[2:]) for x in xs]
    out = torch.cat(parts, 2)
    return out.reshape(b, -1, *out.shape[3:])


# --------------------------------------------------------------------------- packed layers
class PackedConv2d(nn.Module):
    """K ``Conv2d`` as one grouped convolution over packed ``[B, K*C_in, H, W]`` inputs."""

    def __init__(self, convs: Sequence[nn.Conv2d], channels_last: bool = False) -> None:
        super().__init__()
        c = convs[0]
        if c.padding_mode != "zeros":
            raise PackError(f"Conv2d with padding_mode={c.padding_mode!r}")
        self.k = len(convs)
        self.in_channels, self.out_channels, self.groups = c.in_channels, c.out_channels, c.groups
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.weight = nn.Parameter(_stack([m.weight for m in convs], channels_last))
        if c.bias is not None:
            self.bias = nn.Parameter(_stack([m.bias for m in convs]))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.flatten(0, 1)
        b = None if self.bias is None else self.bias.flatten()
        if x.shape[1] == self.in_channels and self.k > 1:  # the shared input: no grouping needed
            if self.groups == 1:
                return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, 1)
            x = _replicate(x, self.k)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.k * self.groups)


class PackedBatchNorm(nn.Module):
    """K ``BatchNorm1d/2d`` as one over ``K*C`` channels; running stats are the stacked buffers."""

    def __init__(self, bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        bn = bns[0]
        if not (bn.affine and bn.track_running_stats):
            raise PackError("BatchNorm without affine parameters or running statistics")
        self.k, self.num_features, self.eps, self.momentum = len(bns), bn.num_features, bn.eps, bn.momentum
        self.weight = nn.Parameter(_stack([m.weight for m in bns]))
        self.bias = nn.Parameter(_stack([m.bias for m in bns]))
        self.register_buffer("running_mean", _stack([m.running_mean for m in bns]))
        self.register_buffer("running_var", _stack([m.running_var for m in bns]))
        self.register_buffer("num_batches_tracked", _stack([m.num_batches_tracked for m in bns]))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == self.num_features and self.k > 1:
            x = _replicate(x, self.k)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average (equal counts for all K)
                factor = 1.0 / float(self.num_batches_tracked[0])
        # views of the stacked buffers: F.batch_norm updates them in place
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1), self.weight.view(-1),
                            self.bias.view(-1), self.training, factor, self.eps)


class PackedLinear(nn.Module):
    """K ``Linear`` on packed ``[B, K*in]`` as a batched matmul; output ``[B, K*out]``."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        lin = linears[0]
        self.k, self.in_features, self.out_features = len(linears), lin.in_features, lin.out_features
        self.weight = nn.Parameter(_stack([m.weight for m in linears]))
        if lin.bias is not None:
            self.bias = nn.Parameter(_stack([m.bias for m in linears]))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        k, n_in, n_out = self.k, self.in_features, self.out_features
        if x.shape[-1] == n_in and k > 1:  # the shared input
            return F.linear(x, self.weight.flatten(0, 1), None if self.bias is None else self.bias.flatten())
        if x.dim() != 2:
            raise PackError(f"packed Linear expects [B, K*in] inputs, got shape {tuple(x.shape)}")
        b = x.shape[0]
        xk = x.reshape(b, k, n_in).transpose(0, 1)  # [K, B, in]
        wt = self.weight.transpose(1, 2)  # [K, in, out]
        y = torch.bmm(xk, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, wt)
        return y.transpose(0, 1).reshape(b, k * n_out)


class PackedDropout(nn.Module):
    """Dropout with one mask per sample shared by the K students (what K models reseeded alike draw)."""

    def __init__(self, k: int, p: float) -> None:
        super().__init__()
        self.k, self.p = k, p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        b, kc = x.shape[:2]
        xs = x.view(b, self.k, kc // self.k, *x.shape[2:])
        noise = F.dropout(torch.ones_like(xs[:, 0]), self.p, True)  # same RNG draws as one model's dropout
        return (xs * noise.unsqueeze(1)).view(x.shape)


# --------------------------------------------------------------------------- packed block forwards
def _shuffle_v1_forward(self: shufflenet.ShuffleV1Bottleneck, x: Tensor) -> Tensor:
    k = self.pack_k
    out = packed_channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1, k)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    return F.relu(packed_cat([out, res], k) if self.stride == 2 else out + res)


def _shuffle_v2_forward(self: shufflenet.ShuffleV2Block, x: Tensor) -> Tensor:
    k = self.pack_k
    b, kc, h, w = x.shape
    c = kc // k // 2
    xs = x.view(b, k, 2 * c, h, w)
    x1, x2 = xs[:, :, :c], xs[:, :, c:].reshape(b, k * c, h, w)
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    out = F.relu(self.bn3(self.conv3(out)))
    cat = torch.cat([x1, out.view(b, k, c, *out.shape[2:])], 2).reshape(b, kc, h, w)
    return packed_channel_shuffle(cat, 2, k)


def _shuffle_v2_down_forward(self: shufflenet.ShuffleV2DownBlock, x: Tensor) -> Tensor:
    k = self.pack_k
    out1 = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    out2 = F.relu(self.bn3(self.conv3(x)))
    out2 = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(out2)))))
    return packed_channel_shuffle(packed_cat([out1, out2], k), 2, k)


# Modules whose own forward is safe on packed [B, K*C, ...] activations: elementwise, per
# channel, spatial, or flattening a 1x1 map; and containers / blocks built only from those.
_SAFE: set[type] = {
    nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    small.MLP, small.SmallCNN, cifar_resnet.CifarResNet, cifar_resnet.BasicBlock, wrn.WideResNet,
    wrn.NetworkBlock, wrn.WideBasicBlock, vgg.VGG, mobilenetv2.MobileNetV2, mobilenetv2.InvertedResidual,
    shufflenet.ShuffleNetV1, shufflenet.ShuffleNetV2,
    torchvision.models.resnet.ResNet, torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck,
    torchvision.models.mobilenetv2.MobileNetV2, torchvision.models.mobilenetv2.InvertedResidual,
    torchvision.ops.misc.Conv2dNormActivation,
}
# Blocks that split / concatenate / shuffle channels: replaced forwards (per-student layout).
_PACKED_FORWARD: dict[type, Callable[..., Tensor]] = {
    shufflenet.ShuffleV1Bottleneck: _shuffle_v1_forward,
    shufflenet.ShuffleV2Block: _shuffle_v2_forward,
    shufflenet.ShuffleV2DownBlock: _shuffle_v2_down_forward,
}
_LAYERS = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, nn.Dropout)
GROUPABLE = frozenset(_SAFE | set(_PACKED_FORWARD) | set(_LAYERS))


def groupable(model: nn.Module) -> bool:
    """Whether :class:`PackedModels` can use the grouped implementation for ``model``."""
    return all(type(m) in GROUPABLE for m in model.modules())


def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are empty tensors on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _grouped(models: Sequence[nn.Module], channels_last: bool) -> nn.Module:
    """The K models as one network over packed activations (modules replaced at the same paths)."""
    k = len(models)
    net = _skeleton(models[0])
    all_mods = [dict(m.named_modules()) for m in models]
    for name, mod in list(net.named_modules()):
        for child_name, child in list(mod.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            group = [mods[path] for mods in all_mods]
            t = type(child)
            if t is nn.Conv2d:
                new: nn.Module = PackedConv2d(group, channels_last)
            elif t in (nn.BatchNorm1d, nn.BatchNorm2d):
                new = PackedBatchNorm(group)
            elif t is nn.Linear:
                new = PackedLinear(group)
            elif t is nn.Dropout:
                new = PackedDropout(k, child.p)
            else:
                if t in _PACKED_FORWARD:
                    child.pack_k = k
                    child.forward = types.MethodType(_PACKED_FORWARD[t], child)
                continue
            setattr(mod, child_name, new)
    return net


def _stacked_copy(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of model 0 whose parameters and buffers are the K models' stacked ``[K, ...]``."""
    net = _skeleton(models[0])
    mods = [dict(m.named_modules()) for m in models]
    for name, mod in net.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[pname] = nn.Parameter(_stack([m[name]._parameters[pname] for m in mods]))
        for bname, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[bname] = _stack([m[name]._buffers[bname] for m in mods])
    return net


# --------------------------------------------------------------------------- the packed network
class PackedModels(nn.Module):
    """K same-architecture models as one network: ``forward(x) -> [K, B, C]`` (same ``x`` for all).

    ``impl``: ``grouped`` (grouped convolutions; the zoo's CIFAR models and torchvision
    ResNets / MobileNetV2), ``vmap`` (any architecture, more overhead) or ``auto`` (grouped
    when :func:`groupable`). ``net.named_parameters()`` / ``named_buffers()`` keep the single
    model's names with a leading K dim, in the single model's order.
    """

    def __init__(self, models: Sequence[nn.Module], impl: str = "auto", channels_last: bool = False) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl: must be one of {IMPLS}, got {impl!r}")
        if not models:
            raise PackError("nothing to pack")
        m0 = models[0]
        ref = {n: (t.shape, t.dtype) for n, t in m0.state_dict().items()}
        for m in models[1:]:
            if type(m) is not type(m0) or {n: (t.shape, t.dtype) for n, t in m.state_dict().items()} != ref:
                raise PackError("the models differ in architecture")
        self.k = len(models)
        self.impl = ("grouped" if groupable(m0) else "vmap") if impl == "auto" else impl
        if self.impl == "grouped":
            if not groupable(m0):
                bad = sorted({type(m).__name__ for m in m0.modules() if type(m) not in GROUPABLE})
                raise PackError(f"grouped packing does not support {', '.join(bad)}")
            self.net = _grouped(models, channels_last)
        else:
            self.net = _stacked_copy(models)
            self._meta = [_skeleton(m0)]  # a list: not a registered submodule
        names = [n for n, _ in m0.named_parameters()]
        sd = self.net.state_dict()
        if [n for n, _ in self.net.named_parameters()] != names or list(sd) != list(m0.state_dict()) \
                or any(t.is_meta for t in sd.values()):
            raise PackError("packed network does not mirror the model's parameters")
        self.train(m0.training)

    # ------------------------------------------------------------------ forward
    def train(self, mode: bool = True) -> "PackedModels":
        super().train(mode)
        if self.impl == "vmap":
            self._meta[0].train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[K, B, C]`` of the K models on the shared batch ``x``."""
        if self.impl == "grouped":
            y = self.net(x)
            return y.reshape(y.shape[0], self.k, -1).transpose(0, 1)
        meta = self._meta[0]
        params, buffers = dict(self.net.named_parameters()), dict(self.net.named_buffers())

        def one(p: dict, b: dict, x: Tensor) -> Tensor:
            return torch.func.functional_call(meta, (p, b), (x,))

        # Attention in plain maths: CUDA's fused attention kernels fail under vmap's batching
        # (torch 2.11: "LSE is not correctly aligned" in the backward of ViT).
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return torch.vmap(one, in_dims=(0, 0, None), randomness="same")(params, buffers, x)

    # ------------------------------------------------------------------ state
    def packed_parameters(self) -> list[nn.Parameter]:
        """The stacked parameters, in the order of ``list(model.parameters())``."""
        return list(self.net.parameters())

    def unstack_state(self) -> list[dict[str, Tensor]]:
        """Each model's ``state_dict`` (copies)."""
        sd = self.net.state_dict()
        return [{n: t[k].clone() for n, t in sd.items()} for k in range(self.k)]

    @torch.no_grad()
    def load_states(self, states: Sequence[dict[str, Tensor]]) -> None:
        """Copy K single-model ``state_dict`` s into the stacked tensors."""
        if len(states) != self.k:
            raise ValueError(f"expected {self.k} state_dicts, got {len(states)}")
        for n, t in self.net.state_dict(keep_vars=True).items():
            for k, st in enumerate(states):
                t[k].copy_(st[n])

    @torch.no_grad()
    def copy_to(self, models: Sequence[nn.Module]) -> None:
        """Write student k's parameters and buffers into ``models[k]`` (in place)."""
        sd = self.net.state_dict(keep_vars=True)
        for k, m in enumerate(models):
            for n, t in m.state_dict(keep_vars=True).items():
                t.copy_(sd[n][k])


# --------------------------------------------------------------------------- optimizers
SHARED_STATE = ("step",)  # optimizer state entries equal for all students (not stacked)


def stack_optimizer_states(opt: torch.optim.Optimizer, n_model: int, states: Sequence[dict],
                           n_extra: Sequence[int]) -> None:
    """Load K single-model optimizer ``state_dict`` s into ``opt``, an optimizer over
    ``n_model`` stacked model parameters followed by each student's own extra parameters
    (``n_extra[k]`` of them; e.g. a method's θ). ``PackError`` when the states cannot be
    combined exactly (e.g. different Adam step counts)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    packed: dict[int, dict[str, Any]] = {}
    for i in range(n_model):
        per = [s["state"].get(i) for s in states]
        if all(p is None for p in per):
            continue
        if any(p is None for p in per) or any(set(p) != set(per[0]) for p in per):
            raise PackError(f"optimizer state of parameter {i} differs between the runs")
        entry: dict[str, Any] = {}
        for key, v0 in per[0].items():
            vals = [p[key] for p in per]
            if key in SHARED_STATE or not isinstance(v0, Tensor):
                if not all(_equal(v, v0) for v in vals):
                    raise PackError(f"optimizer state {key!r} of parameter {i} differs between the runs")
                entry[key] = v0
            else:
                t = torch.empty_like(params[i])
                with torch.no_grad():
                    for k, v in enumerate(vals):
                        t[k].copy_(v)
                entry[key] = t
        packed[i] = entry
    j = n_model
    for k, s in enumerate(states):
        for e in range(n_extra[k]):
            if n_model + e in s["state"]:
                packed[j] = s["state"][n_model + e]
            j += 1
    if j != len(params):
        raise ValueError(f"optimizer has {len(params)} parameters, expected {j}")
    group = {key: v for key, v in states[0]["param_groups"][0].items() if key != "params"}
    opt.load_state_dict({"state": packed, "param_groups": [{**group, "params": list(range(len(params)))}]})


def unstack_optimizer_state(opt: torch.optim.Optimizer, n_model: int, k: int, n_extra: Sequence[int],
                            param_groups: list[dict]) -> dict:
    """Student k's single-model optimizer ``state_dict`` (its ``param_groups`` given) from ``opt``
    (see :func:`stack_optimizer_states`)."""
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for i in range(n_model):
        if i in sd["state"]:
            state[i] = {key: _student_slice(key, v, k) for key, v in sd["state"][i].items()}
    start = n_model + sum(n_extra[:k])
    for e in range(n_extra[k]):
        if start + e in sd["state"]:
            state[n_model + e] = {key: v.clone() if isinstance(v, Tensor) else v
                                  for key, v in sd["state"][start + e].items()}
    return {"state": state, "param_groups": copy.deepcopy(param_groups)}


def _student_slice(key: str, v: Any, k: int) -> Any:
    if not isinstance(v, Tensor):
        return v
    return v.clone() if key in SHARED_STATE else v[k].clone()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
    return a == b
