"""One training step replayed as a CUDA graph: no per-kernel launch cost on the host.

A temperature study's step (teacher forward, student forward, loss, backward, SGD step) is a
few hundred small kernels; on a GPU the host cannot launch them as fast as they run. A
:class:`StepGraph` captures the step once (after ``warmup`` eager steps) and then replays it:
the batch is copied into the graph's static input, and everything the step changes (weights,
optimizer and BatchNorm state, the device-side loss sums) is updated in place by the replay.

Contract for the wrapped ``device_step(x, y, i, graphed)`` (``i``: the step's index in the
epoch, for eager seeding; ``graphed``: being captured): it does only device work that is the same on
every call (no host syncs, no random numbers, no Python state that depends on the data), keeps
its results in tensors updated in place, and returns a list of failures (empty when all went
well). Host bookkeeping (images seen) goes in ``host_step(batch_size)``, which runs on every
call. A step whose input shape differs from the captured one (an epoch's last, shorter batch)
runs eagerly. Anything a graph cannot hold (a failure during capture, a method that raised)
makes the step run eagerly from then on, with the reason in :attr:`fallback`.

Values that change per epoch (learning rate, warm-up ramps, curricula) are baked into a graph:
make one :class:`StepGraph` per epoch.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

DeviceStep = Callable[[torch.Tensor, torch.Tensor, int, bool], list]


class StepGraph:
    """``step(x, y, i) -> failures``: the step, eagerly for the first ``warmup`` calls, then
    captured once and replayed. ``enabled=False``: always eager (the CPU, or a group with
    :func:`graph_blockers`)."""

    def __init__(self, device_step: DeviceStep, host_step: Callable[[int], None], enabled: bool = True,
                 warmup: int = 2) -> None:
        self.device_step, self.host_step, self.warmup = device_step, host_step, warmup
        self.calls = self.replays = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.fallback: str | None = None if enabled else "off"  # why steps run eagerly

    def __call__(self, x: torch.Tensor, y: torch.Tensor, i: int) -> list:
        self.calls += 1
        b = y.shape[0]
        if self.graph is not None and x.shape == self.x.shape and y.shape == self.y.shape:
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
            self.replays += 1
            self.host_step(b)
            return []
        if self.graph is not None or self.fallback is not None or self.calls <= self.warmup:
            return self._eager(x, y, i, side_stream=self.graph is None and self.fallback is None)
        return self._capture(x, y, i)

    def _eager(self, x: torch.Tensor, y: torch.Tensor, i: int, side_stream: bool) -> list:
        """One eager step; before capture on a side stream, as CUDA graph capture requires."""
        if not side_stream:
            failed = self.device_step(x, y, i, False)
        else:
            s = torch.cuda.Stream(x.device)
            s.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(s):
                failed = self.device_step(x, y, i, False)
            torch.cuda.current_stream(x.device).wait_stream(s)
        if failed and self.fallback is None:
            self.fallback = "a step failed"
        self.host_step(y.shape[0])
        return failed

    def _capture(self, x: torch.Tensor, y: torch.Tensor, i: int) -> list:
        self.x, self.y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                failed = self.device_step(self.x, self.y, i, True)
                if failed:
                    raise _Abort(f"{len(failed)} failure(s) while capturing")
        except Exception as e:  # noqa: BLE001 - nothing ran: run this step eagerly, and all after it
            self.fallback = f"capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            self.graph = self.x = self.y = None
            torch.cuda.synchronize(x.device)
            return self._eager(x, y, i, side_stream=False)
        self.graph = graph
        graph.replay()  # capture only records: this replay is the step itself
        self.replays += 1
        self.host_step(y.shape[0])
        return []

    def note(self) -> str:
        """One line for the run log: how the steps ran."""
        if self.replays:
            return f"CUDA graph: {self.replays} of {self.calls} steps replayed"
        return f"eager steps (CUDA graph {self.fallback or 'not captured'})"


class _Abort(RuntimeError):
    """Raised inside a capture to end it when the captured step reported failures."""


def graph_blockers(device: torch.device, optimizer: str, methods: Iterable[Any],
                   models: Iterable[nn.Module]) -> list[str]:
    """Why a group's step cannot be a CUDA graph (empty: it can). Graphs need CUDA, SGD (its
    step has no host-side state; Adam's step count is), methods declared ``graph_safe`` (pure
    tensor maths without random numbers or host syncs) and models without dropout."""
    out = []
    if device.type != "cuda":
        out.append(f"device {device.type}")
    if optimizer != "sgd":
        out.append(f"optimizer {optimizer}")
    unsafe = sorted({m.name for m in methods if not getattr(m, "graph_safe", False)})
    if unsafe:
        out.append(f"method(s) {', '.join(unsafe)} not graph-safe (random numbers or host syncs)")
    for model in models:
        drop = sorted({type(m).__name__ for m in model.modules() if _stochastic(m)})
        if drop:
            out.append(f"model has {', '.join(drop)}")
            break
    return out


def _stochastic(m: nn.Module) -> bool:
    """A module that draws random numbers in training (dropout, stochastic depth)."""
    name = type(m).__name__
    return ("Dropout" in name or name == "StochasticDepth") and float(getattr(m, "p", 0.0) or 0.0) > 0
