"""Collect a study's run directories into one table: one row per (run, epoch, split).

The table is the runs' ``metrics.parquet`` rows, runs in study order, with each run's config
flattened into columns (:func:`config_columns`) and its ``status``, ``study`` and
``diverged_epoch``; runs neither done nor diverged are left out, with why. It is built
column-wise (:mod:`tstudy.results_table`). :func:`update_results` (``tstudy collect``) keeps
``results.parquet`` up to date and reads only the runs whose files changed since it was written
(:mod:`tstudy.results_manifest`).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tstudy import atomic, results_manifest
from tstudy.config import RunConfig, TeacherFile, WeightsFile
from tstudy.errors import ConfigError
from tstudy.lock import LockHeld, RunLock
from tstudy.results_manifest import KEY, MANIFEST, Entry, Manifest, Unreadable
from tstudy.store import DIVERGED, FINISHED, NOT_LAUNCHED, RunState, RunStore, files_stamp, settled
from tstudy.study import Study

if TYPE_CHECKING:  # pandas is imported only when a table is built: a collect with nothing new needs none
    import pandas as pd

    from tstudy.results_table import MetricsFrames, Rows

RESULTS = "results.parquet"
LOCK = "collect.lock"  # held while a collect reads and writes a study's table and manifest
LOCK_WAIT_S = 600.0


__all__ = ["RESULTS", "MANIFEST", "KEY", "Collected", "collect", "update_results", "write_results",
           "config_columns", "method_label"]


def config_columns(cfg: RunConfig, role: str) -> dict:
    """A run's config flattened into table columns; ``pair_id``: runs with equal ids are paired
    (same initial weights and batches: ``config.PAIR_FIELDS``)."""
    out: dict = {"run_id": cfg.run_id, "role": role, "pair_id": cfg.pair_id}
    for name in RunConfig.field_names():
        v = getattr(cfg, name)
        if name in ("teacher", "method_params"):
            continue
        if name == "init":
            v = "scratch" if v is None else ("file:" + v.sha256[:12] if isinstance(v, WeightsFile) else v)
        elif isinstance(v, tuple):
            v = ",".join(str(x) for x in v)
        out[name] = v
    out["teacher_id"] = cfg.teacher_id
    out["teacher_model"] = cfg.teacher_model
    out["teacher_kind"] = (None if cfg.teacher is None else
                           "external" if isinstance(cfg.teacher, TeacherFile) else "trained")
    for k, v in sorted(cfg.params.items()):
        out[f"param_{k}"] = v
    out["method_label"] = method_label(cfg)
    return out


def method_label(cfg: RunConfig) -> str:
    """'kd', or 'kd_topk(k=5)' when parameters are set: one line per label in figures."""
    if not cfg.params:
        return cfg.method
    return f"{cfg.method}(" + ",".join(f"{k}={v}" for k, v in sorted(cfg.params.items())) + ")"


@dataclass
class Collected:
    """What a collect found. ``table`` is None when ``results.parquet`` was already up to date."""

    table: pd.DataFrame | None
    skipped: list[str]  # one line per run left out, with why
    rows: int
    runs: int  # runs in the table
    read: int = 0  # metrics files read
    reused: int = 0  # runs taken from the previous table
    run_ids: tuple[str, ...] = ()  # every run of the study, in its order


@dataclass
class _Run:
    """A run going into the table."""

    index: int  # position in the study's runs
    cfg: RunConfig
    role: str
    state: RunState
    stamp: list | None  # files_stamp when first looked at (None: not tracked)
    cached: Entry | None  # its entry in the previous manifest, when its files are unchanged
    rows: Rows | None = None


def collect(study: Study, store: RunStore) -> tuple[pd.DataFrame, list[str]]:
    """The study's table, and one line per run left out (with why). Diverged runs are kept.
    Reads every run; writes nothing."""
    c, _ = _collect(study, store)
    assert c.table is not None
    return c.table, c.skipped


def update_results(study: Study, store: RunStore) -> tuple[Path, Collected]:
    """Bring ``<study>/results.parquet`` up to date: the table :func:`collect` gives, reading
    only the runs whose files changed since the table was written. Nothing is written when
    nothing changed; an interrupted collect leaves the previous table (every write is atomic)."""
    path = store.study_dir / RESULTS
    store.study_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(store.study_dir):
        manifest = results_manifest.load(store.study_dir, study.name, path) if path.exists() else None
        c, new = _collect(study, store, manifest, path)
        if c.table is not None:
            write_results(c.table, store)
            results_manifest.write(store.study_dir, study.name, path, *new)
    return path, c


def write_results(df: pd.DataFrame, store: RunStore) -> Path:
    store.study_dir.mkdir(parents=True, exist_ok=True)
    path = store.study_dir / RESULTS
    atomic.write_parquet(path, df)
    return path


# --------------------------------------------------------------------------- the work
def _collect(study: Study, store: RunStore, manifest: Manifest | None = None, table: Path | None = None
             ) -> tuple[Collected, tuple]:
    """(what was collected, the arguments of ``results_manifest.write`` for the new table). With
    ``table`` (and its ``manifest``), runs whose files are unchanged are taken from it, and a
    file found unreadable is not tried again while unchanged."""
    now_ns = time.time_ns()  # when the files are looked at
    runs = study.runs()
    ids = tuple(r.run_id for r in runs)
    teacher_ids = {t.run_id for t in study.teachers(runs)}
    present = set(os.listdir(store.runs_dir)) if store.runs_dir.is_dir() else set()
    skipped: dict[int, str] = {}
    unreadable: list[Unreadable] = []
    todo: list[_Run] = []
    for i, cfg in enumerate(runs):
        stamp = files_stamp(os.path.join(store.runs_dir, cfg.run_id)) if table is not None else None  # before reading
        cached = manifest.runs.get(cfg.run_id) if manifest else None
        bad = manifest.unreadable.get(cfg.run_id) if manifest else None
        if bad is not None and bad.stamp == stamp:
            skipped[i] = f"{cfg.run_id}: metrics.parquet unreadable ({bad.error})"
            unreadable.append(bad)
            continue
        if cached is not None and cached.stamp == stamp:
            state = RunState(cached.status, cached.epoch, cached.reason)
        else:
            cached = None
            state = store.state(cfg) if cfg.run_id in present else RunState(NOT_LAUNCHED)
        if state.status not in FINISHED:
            skipped[i] = f"{cfg.run_id}: {state.status}" + (f" ({state.reason})" if state.reason else "")
            continue
        todo.append(_Run(i, cfg, "teacher" if cfg.run_id in teacher_ids else "student", state, stamp, cached))

    if manifest and all(r.cached for r in todo) and [_key(r) for r in todo] == [
            (e.run_id, e.role, e.status, e.epoch) for e in manifest.runs.values()]:
        n = sum(e.n for e in manifest.runs.values())
        return Collected(None, _lines(skipped), n, len(todo), 0, len(todo), ids), ()

    import pandas as pd

    from tstudy.results_table import MetricsFrames, RunPart, assemble

    metrics = MetricsFrames()
    reused = _from_previous(metrics, [r for r in todo if r.cached], manifest, table)
    fresh = [r for r in todo if r.rows is None]
    for r, got in zip(fresh, metrics.read([os.path.join(store.runs_dir, r.cfg.run_id, "metrics.parquet") for r in fresh])):
        if isinstance(got, Exception):
            skipped[r.index] = f"{r.cfg.run_id}: metrics.parquet unreadable ({type(got).__name__})"
            unreadable.append(Unreadable(r.cfg.run_id, type(got).__name__, r.stamp))
        else:
            r.rows = got
    kept = [r for r in todo if r.rows is not None]
    parts = []
    for r in kept:
        if r.state.status == DIVERGED and metrics.is_empty(r.rows):
            r.rows = metrics.add(pd.DataFrame([{"epoch": r.state.epoch, "split": "test"}]), [1])[0]
        cols = config_columns(r.cfg, r.role)
        cols.update(status=r.state.status, study=study.name,
                    diverged_epoch=r.state.epoch if r.state.status == DIVERGED else None)
        parts.append(RunPart(r.rows, cols))
    df = assemble(metrics, parts)
    collected = Collected(df, _lines(skipped), len(df), len(kept), len(fresh), reused, ids)
    if table is None:
        return collected, ()
    entries, dtypes = _entries(kept, metrics, now_ns)
    return collected, (entries, dtypes, [u for u in unreadable if settled(u.stamp, now_ns)])


def _key(r: _Run) -> tuple:
    return (r.cfg.run_id, r.role, r.state.status, r.state.epoch)


def _lines(skipped: dict[int, str]) -> list[str]:
    return [skipped[i] for i in sorted(skipped)]


def _from_previous(metrics: MetricsFrames, runs: list[_Run], manifest: Manifest | None, table: Path | None) -> int:
    """Take the metrics rows of ``runs`` from the previous table, cast back to the dtypes their
    own files read as; runs that cannot be are left to be read. Returns how many were taken."""
    if not runs or manifest is None or table is None:
        return 0
    import pandas as pd

    try:
        prev = pd.read_parquet(table)
    except Exception:  # noqa: BLE001 - then every run is read from its files
        return 0
    kinds: dict[int, list[_Run]] = {}
    for r in runs:
        kinds.setdefault(r.cached.dtypes, []).append(r)
    taken = 0
    for k, members in kinds.items():
        try:
            frame = _cast_back(prev, members, manifest.dtypes[k])
        except Exception:  # noqa: BLE001 - a table edited by hand, a dtype this pandas cannot rebuild
            continue
        for r, rows in zip(members, metrics.add(frame, [r.cached.n for r in members])):
            r.rows = rows
        taken += len(members)
    return taken


def _cast_back(prev: pd.DataFrame, runs: list[_Run], dtypes: list[list[str]]) -> pd.DataFrame:
    """The metrics frames of ``runs`` (one kind) as their files read: their rows of ``prev``,
    their columns with the dtypes recorded (None for missing values of object columns)."""
    import numpy as np
    import pandas as pd

    from tstudy.results_table import row_ranges

    counts = np.array([r.cached.n for r in runs], dtype=np.int64)
    idx = row_ranges(np.array([r.cached.start for r in runs], dtype=np.int64), counts)
    if not (prev["run_id"].to_numpy()[idx] == np.repeat([r.cfg.run_id for r in runs], counts)).all():
        raise ValueError("the table's rows are not where the manifest says")
    part = prev.take(idx)
    out = {}
    for col, dtype in dtypes:
        s = part[col].reset_index(drop=True)
        t = pd.api.types.pandas_dtype(dtype)
        s = s if s.dtype == t else s.astype(t)
        out[col] = s.astype(object).where(s.notna(), None) if t == object else s
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(idx)), columns=[c for c, _ in dtypes])
    if [[c, str(t)] for c, t in frame.dtypes.items()] != dtypes:
        raise ValueError("dtypes differ")
    return frame


def _entries(runs: list[_Run], metrics: MetricsFrames, now_ns: int) -> tuple[list[Entry], list[list[list[str]]]]:
    """The manifest of the table just built from ``runs``, whose files were looked at ``now_ns``.
    A run whose files had just changed then is left out: it is read again next time."""
    import pandas as pd

    kinds: dict[int, int] = {}  # metrics frame -> index into dtypes (-1: this pandas cannot rebuild one)
    dtypes: list[list[list[str]]] = []
    entries, start = [], 0
    for r in runs:
        g = r.rows.group
        if g not in kinds:
            d = [[c, str(t)] for c, t in metrics.frames[g].dtypes.items()]
            rebuilt = all(pd.api.types.pandas_dtype(s) == t for (_, s), t in zip(d, metrics.frames[g].dtypes))
            kinds[g] = len(dtypes) if rebuilt else -1
            if rebuilt:
                dtypes.append(d)
        if kinds[g] >= 0 and settled(r.stamp, now_ns):  # else: read again next time
            entries.append(Entry(r.cfg.run_id, r.role, r.state.status, r.state.epoch, r.state.reason, start,
                                 r.rows.n, kinds[g], r.stamp))
        start += r.rows.n
    return entries, dtypes


@contextmanager
def _exclusive(study_dir: Path) -> Iterator[None]:
    """Hold ``<study>/collect.lock``: one collect at a time reads and writes a study's table
    and manifest (waiting up to LOCK_WAIT_S for another; a dead owner's lock is taken over)."""
    lock = RunLock(study_dir, LOCK)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            lock.acquire()
            break
        except LockHeld as e:
            if time.monotonic() > deadline:
                raise ConfigError(f"collect: {e}; remove {lock.path} if that process is gone") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()
