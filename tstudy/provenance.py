"""Provenance recorded with every result row: versions, git commit, device, host, torch threads."""
from __future__ import annotations

import functools
import socket
import subprocess
from pathlib import Path

import torch

import tstudy


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the tstudy checkout in use (with '+dirty' if modified), or None."""
    here = Path(tstudy.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def info(device: torch.device) -> dict:
    """Where a run trained, as columns of its metrics rows: a number that moved between two launches
    of one run id moved with one of these (float sums in another order: ``threads`` on the CPU)."""
    return {"tstudy_version": tstudy.__version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "device": device_name(device), "host": socket.gethostname(), "threads": torch.get_num_threads()}
