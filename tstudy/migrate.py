"""Move a root of the per-study layout (``<root>/<study>/runs/<id>/``, tstudy before the shared
run store) to the shared one (``<root>/runs/<id>/``), without retraining or losing any file.

Each run directory moves with one atomic rename, so an interrupted migration leaves every run
whole in one place or the other and the next call finishes the job (idempotent). A study's
record (``study.json``) lists its runs before any of them moves. A run in use by a live process
stays where it is until a later call. When two studies trained the same run (the reason for the
shared store), the better copy (finished, else further along) goes to the store and the other
is kept under ``<root>/.migrated/<study>/``, never deleted.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tstudy import atomic
from tstudy.lock import held_by_me, is_stale, read_lock
from tstudy.store import FINISHED, RECORD, RUNS, RunState, RunStore, read_record

KEPT = ".migrated"  # the second copies of runs trained twice
RUN_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class Migration:
    moved: int = 0
    duplicates: list[str] = field(default_factory=list)  # where the second copies went
    in_use: list[str] = field(default_factory=list)  # run directories left for a later call
    studies: list[str] = field(default_factory=list)

    def summary(self, root: str | Path) -> str:
        root = Path(root)
        text = (f"moved {self.moved} run director{'y' if self.moved == 1 else 'ies'} of "
                f"{len(self.studies)} stud{'y' if len(self.studies) == 1 else 'ies'} under {root} "
                f"to the shared run store {root / RUNS}")
        if self.duplicates:
            text += f"; {len(self.duplicates)} trained twice: second copies kept under {root / KEPT}"
        if self.in_use:
            text += f"; {len(self.in_use)} in use by a running process, left in place (migrate again later)"
        return text


def legacy_studies(root: str | Path) -> list[Path]:
    """The study folders under ``root`` that still hold a ``runs/`` folder of their own."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in (RUNS, KEPT)
            and not d.name.startswith(".") and (d / RUNS).is_dir()]


def migrate(root: str | Path, say: Callable[[str], None] | None = None) -> Migration:
    """Move every legacy run directory under ``root`` into the shared store (see the module)."""
    root = Path(root)
    report = Migration()
    for study_dir in legacy_studies(root):
        legacy = study_dir / RUNS
        names = sorted(p.name for p in legacy.iterdir())
        _list_runs(study_dir, [n for n in names if RUN_ID.match(n)])
        report.studies.append(study_dir.name)
        shared = root / RUNS
        shared.mkdir(exist_ok=True)
        for name in names:
            src, dst = legacy / name, shared / name
            if _in_use(src):
                report.in_use.append(str(src))
                continue
            if not dst.exists():
                os.rename(src, dst)
                report.moved += 1
                continue
            keep_new = _rank(src) > _rank(dst)
            aside = root / KEPT / study_dir.name / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            if keep_new and not _in_use(dst):
                os.rename(dst, aside)
                os.rename(src, dst)
            else:
                os.rename(src, aside)
            report.moved += 1
            report.duplicates.append(str(aside))
        try:
            legacy.rmdir()
        except OSError:
            pass  # runs in use remain
    if say and report.studies:
        say(report.summary(root))
    return report


def _list_runs(study_dir: Path, run_ids: list[str]) -> None:
    """Add ``run_ids`` to the study's record (before they move: an interrupted migration keeps them listed)."""
    rec = read_record(study_dir)
    listed = sorted(set(rec.get("runs", [])) | set(run_ids))
    if listed != rec.get("runs"):
        atomic.write_json(study_dir / RECORD, {"name": study_dir.name, "source": rec.get("source"), **rec,
                                               "runs": listed})


def _in_use(run_dir: Path) -> bool:
    info = read_lock(run_dir / "lock")
    return info is not None and not is_stale(info) and not held_by_me(info)


def _rank(run_dir: Path) -> tuple[int, int]:
    """Which copy of a run to keep: finished first, then the furthest along."""
    view = RunStore(run_dir.parent.parent, "")
    view.runs_dir = run_dir.parent
    st: RunState = view.state(run_dir.name)
    return int(st.status in FINISHED), st.epoch
