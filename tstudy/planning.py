"""The planning core (torch-free): what to train, in which packs, after what.

From a study's runs, their states on disk and what a scheduler reports as queued or running,
:func:`make_plan` returns the ordered packs to train (teachers first) with their dependencies.
It is the one place that decides pending, ready, running and packing; the local and SLURM
executors only carry the plan out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tstudy.config import RunConfig, _short_hash
from tstudy.errors import ConfigError
from tstudy.store import DONE, FINISHED, RUNNING, RunState

# The fields in which runs of one pack may differ: they see the same batches, augmentation and
# teacher outputs, so they can train together (one pass over the data, one teacher forward).
LOSS_SIDE = ("temperature", "method", "method_params")


def pack_key(cfg: RunConfig) -> str:
    """Runs with equal keys differ only in their loss side and can be trained as one pack."""
    return _short_hash({k: v for k, v in cfg.canonical().items() if k not in LOSS_SIDE})


@dataclass(frozen=True)
class Pack:
    """Runs trained together; ``after``: the teacher run that must be done first (None: none)."""

    runs: tuple[RunConfig, ...]
    after: str | None = None

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(r.run_id for r in self.runs)

    def split(self, parts: int) -> list["Pack"]:
        """This pack as ``parts`` packs of near-equal size (larger first), order kept."""
        n = len(self.runs)
        parts = max(1, min(parts, n))
        sizes = [n // parts + (i < n % parts) for i in range(parts)]
        starts = [sum(sizes[:i]) for i in range(parts)]
        return [Pack(self.runs[a:a + k], self.after) for a, k in zip(starts, sizes)]


@dataclass(frozen=True)
class Plan:
    """Packs in launch order (a teacher's pack before its students'), the runs left alone
    because they are finished or active, and a note per run that cannot be planned."""

    packs: tuple[Pack, ...]
    finished: tuple[str, ...] = ()
    active: tuple[str, ...] = ()  # running here or elsewhere, or queued by the scheduler
    blocked: tuple[tuple[str, str], ...] = ()  # (run id, why): its teacher cannot become done

    @property
    def todo(self) -> list[RunConfig]:
        return [r for p in self.packs for r in p.runs]


def teacher_run(cfg: RunConfig) -> RunConfig | None:
    """The trained teacher a run depends on (external teacher files are not runs)."""
    return cfg.teacher if isinstance(cfg.teacher, RunConfig) else None


def pack_groups(runs: Sequence[RunConfig], pack: int) -> list[list[RunConfig]]:
    """Split runs (kept in order) into groups of at most ``pack`` runs with equal :func:`pack_key`."""
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ConfigError(f"--pack: must be an integer >= 1, got {pack!r}")
    groups: list[list[RunConfig]] = []
    open_: dict[str, list[RunConfig]] = {}
    for cfg in runs:
        key = pack_key(cfg)
        g = open_.get(key)
        if g is None or len(g) >= pack:
            g = open_[key] = []
            groups.append(g)
        g.append(cfg)
    return groups


def make_plan(runs: Sequence[RunConfig], states: Mapping[str, RunState], pack: int = 1,
              active: Mapping[str, str] | None = None, waitable: Iterable[str] | None = None) -> Plan:
    """The packs that launch trains.

    - finished (done, diverged): left alone;
    - active: ``running`` on disk (a live lock) or queued/running in ``active`` (scheduler ids): left alone;
    - every other run is pending. A pending student is *ready* when its teacher is done; it
      waits (``after``) for a teacher that is pending or active; otherwise (the teacher failed,
      diverged, or is neither in the study nor done) it is blocked, with the reason.

    ``waitable``: the active runs a student can wait for (default: all; SLURM can wait only for
    runs in a job it can name in a dependency).

    ``states`` must hold every run and every teacher named. Packs hold runs of one pack key, so
    one teacher, kept in the order of ``runs`` (teachers come first in a study's runs).
    """
    active = active or {}
    finished, busy, todo = [], [], []
    for r in runs:
        st = states[r.run_id]
        if st.status in FINISHED:
            finished.append(r.run_id)
        elif st.status == RUNNING or r.run_id in active:
            busy.append(r.run_id)
        else:
            todo.append(r)
    pending_ids = {r.run_id for r in todo}
    waiting_on = pending_ids | set(busy if waitable is None else waitable)
    ok, blocked = [], []
    for r in todo:
        t = teacher_run(r)
        if t is None or states[t.run_id].status == DONE or t.run_id in waiting_on:
            ok.append(r)
        else:
            st = states[t.run_id]
            why = f"its teacher {t.run_id} is {st.status}" + (" (not in a job this executor can wait for; launch again "
                                                             "when it is done)" if st.status == RUNNING else "")
            blocked.append((r.run_id, why))
    packs = []
    for g in pack_groups(ok, pack):
        t = teacher_run(g[0])
        after = t.run_id if t is not None and states[t.run_id].status != DONE else None
        packs.append(Pack(tuple(g), after))
    # teachers' packs first, keeping the study's order otherwise
    packs.sort(key=lambda p: p.after is not None)
    return Plan(tuple(packs), tuple(finished), tuple(busy), tuple(blocked))


def states_with_teachers(runs: Sequence[RunConfig], state) -> dict[str, RunState]:
    """``{run id: state(run)}`` for the runs and the teachers they name (``state``: a callable)."""
    out: dict[str, RunState] = {}
    for r in runs:
        for c in (r, teacher_run(r)):
            if c is not None and c.run_id not in out:
                out[c.run_id] = state(c)
    return out
