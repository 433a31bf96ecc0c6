"""Machine settings: where and how runs train, never what they compute (that is a RunConfig, in
the run id). One frozen, picklable value, built once from the launch flags and passed whole to
every executor (this process, worker processes, SLURM jobs) and to the engine's ``RunEnv``.

Adding a setting is one field of :class:`Machine` and one entry of :data:`FLAGS` (its launch flag);
the flag's name is the field's, with dashes. Torch-free: ``tstudy launch`` checks the flags before
it imports torch.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from tstudy.errors import ConfigError

PACK_MODES = ("auto", "sequential", "network")
GRAPH_MODES = ("auto", "off")
DECODERS = ("cpu", "dali")


@dataclass(frozen=True)
class Machine:
    """The settings a run trains under; none of them is part of a run id.

    ``device``: cpu, cuda, cuda:K (``auto`` until resolved where the runs train). ``data_root``:
    where datasets are (None: ``$TSTUDY_DATA``, ./data). ``pack_mode``: how packed runs train,
    ``sequential`` (each student steps in turn), ``network`` (one packed network, tstudy.packnet)
    or ``auto`` (network on CUDA, sequential on the CPU). ``cuda_graphs``: ``auto`` replays each
    epoch's training step as a CUDA graph where the group allows it, ``off`` never.
    ``data_workers``: streamed data's decoder processes (None: min(CPUs, 8); 0: in the training
    process). ``checkpoint_steps``: also checkpoint every N training steps (0: at epoch ends only).
    ``decoder``: streamed data's JPEG decoder, ``cpu`` (Pillow in a process pool) or ``dali``.
    """

    device: str = "cpu"
    data_root: str | None = None
    pack_mode: str = "auto"
    cuda_graphs: str = "auto"
    data_workers: int | None = None
    checkpoint_steps: int = 0
    decoder: str = "cpu"

    def __post_init__(self) -> None:
        for name, valid in (("pack_mode", PACK_MODES), ("cuda_graphs", GRAPH_MODES), ("decoder", DECODERS)):
            v = getattr(self, name)
            if v not in valid:
                raise ConfigError(f"--{_flag(name)}: unknown value {v!r}; valid: {', '.join(valid)}")
        if self.data_workers is not None and (not _is_int(self.data_workers) or self.data_workers < 0):
            raise ConfigError(f"--data-workers: must be >= 0 (0: decode in the training process), got {self.data_workers!r}")
        if not _is_int(self.checkpoint_steps) or self.checkpoint_steps < 0:
            raise ConfigError(f"--checkpoint-steps: must be >= 0 (0: at epoch ends only), got {self.checkpoint_steps!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Machine":
        """The settings named by the launch flags (a flag not defined keeps its default)."""
        return cls.from_mapping(vars(args))

    @classmethod
    def from_mapping(cls, attrs: Mapping[str, Any]) -> "Machine":
        """The settings named in ``attrs`` (any missing one takes its default): the launch flags'
        namespace, and the one compatibility path for an object pickled before this class (a SLURM
        ``TrainJob`` kept them as attributes of its own)."""
        return cls(**{n: attrs[n] for n in cls.names() if n in attrs})

    def replace(self, **changes: Any) -> "Machine":
        return dataclasses.replace(self, **changes)


# The launch flag of each setting: argparse keywords (type, choices, metavar, help), in FLAGS order.
FLAGS: dict[str, dict[str, Any]] = {
    "device": dict(default="auto", help="cpu, cuda, cuda:1, or auto (default)"),
    "data_root": dict(default=None, help="where datasets are (else $TSTUDY_DATA, ./data)"),
    "pack_mode": dict(default="auto", choices=PACK_MODES,
                      help="packed runs: one network (default on GPUs) or one after another (default on CPUs)"),
    "cuda_graphs": dict(default="auto", choices=GRAPH_MODES,
                        help="on GPUs, replay each training step as a CUDA graph where the runs allow it "
                             "(default auto)"),
    "data_workers": dict(type=int, default=None, metavar="N",
                         help="streamed data (imagenet, augment rrc_flip): JPEG decoder processes per training "
                              "process (default min(CPUs, 8); 0 decodes in the training process)"),
    "decoder": dict(default="cpu", choices=DECODERS,
                    help="streamed data: decode JPEGs with Pillow in worker processes (cpu, default) or with "
                         'NVIDIA DALI (dali: nvJPEG on the GPU; needs pip install "tstudy[dali]")'),
    "checkpoint_steps": dict(type=int, default=0, metavar="N",
                             help="also checkpoint every N training steps, so a stopped run resumes within its "
                                  "epoch (default 0: at epoch ends only)"),
}
assert set(FLAGS) == set(Machine.names()), "every machine setting has exactly one launch flag"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The launch flags of the machine settings (``--device``, ``--data-root``, ...)."""
    for name, kw in FLAGS.items():
        parser.add_argument(f"--{_flag(name)}", dest=name, **kw)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
