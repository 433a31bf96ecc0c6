"""The local executor: carry out the plan on this machine, N packs at once (teachers first)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from tstudy.config import RunConfig
from tstudy.executors.workers import SKIPPED, Progress, run_packs
from tstudy.planning import Plan, make_plan, states_with_teachers
from tstudy.store import RunStore


def local_plan(runs: Sequence[RunConfig], store: RunStore, pack: int = 1) -> Plan:
    """The plan on this machine: state from disk only (a live lock marks a run as running)."""
    return make_plan(runs, states_with_teachers(runs, store.state), pack)


def run_local(runs: Sequence[RunConfig], store: RunStore, env: Any, progress: bool | None = None,
              out=None, pack: int = 1, workers: int = 1, threads: int | None = None,
              before: Callable[[], None] | None = None) -> dict[str, str]:
    """Train every pending run of ``runs`` (teachers first) with ``workers`` packs at once; with
    ``pack`` > 1, up to ``pack`` runs that differ only in their loss side train together (one
    pass over the data, one teacher forward). ``env``: the ``engine.RunEnv`` to train with (one
    worker) or whose machine settings the worker processes take (several). Returns {run id:
    final status}. A failed run does not stop the study; a student whose teacher ends other than
    done is skipped.
    ``before`` (the preflight checks) runs while the worker processes start, before any run."""
    out = out or sys.stderr
    plan = local_plan(runs, store, pack)
    results = {rid: SKIPPED for rid, _ in plan.blocked}
    for rid, why in plan.blocked:
        print(f"{rid}: skipped, {why}", file=out)
    tty = out.isatty() if progress is None else progress
    bar = Progress(len(plan.todo), workers, tty, out)
    outcomes = run_packs(plan.packs, store, env.machine, workers, threads, bar, env=env if workers == 1 else None,
                         before=before)
    results.update({rid: o.status for rid, o in outcomes.items()})
    return results
