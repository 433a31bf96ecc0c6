"""Pre-emption: the signal and this process's checkpoint request (stdlib only: imported by decoder
processes, workers, the engine and SLURM jobs alike; safe in a signal handler at any point of start-up)."""
from __future__ import annotations

import os
import signal
import threading

REQUESTED = threading.Event()  # set by a pre-emption signal: checkpoint at the next step and stop


def request_checkpoint() -> None:
    """Ask the training in this process to checkpoint at its next step boundary (or epoch end) and
    stop its runs (``incomplete``); safe to call from a signal handler."""
    REQUESTED.set()


def checkpoint_requested() -> bool:
    return REQUESTED.is_set()


def preempt_signal() -> int:
    """The signal submitit's jobs get before pre-emption or the time limit ($SUBMITIT_PREEMPT_SIGNAL, USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)
