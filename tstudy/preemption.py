"""The pre-emption signal (stdlib only: imported by decoder processes, workers and SLURM jobs alike)."""
from __future__ import annotations

import os
import signal


def preempt_signal() -> int:
    """The signal submitit's jobs get before pre-emption or the time limit ($SUBMITIT_PREEMPT_SIGNAL, USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)
