"""The results table, built column-wise: the table ``collect`` has always written, fast.

The table is, by definition, the concatenation in run order of one frame per run: the run's
``metrics.parquet`` as pandas reads it, with the run's config columns set on every row
(``frame[col] = [value] * len(frame)``, in order). Building 10,000 such frames and concatenating
them takes minutes, so here:

- the metrics files are read with pyarrow and grouped by *kind* (same schema, same columns with
  nulls, empty or not): one pandas conversion per kind, whose rows have exactly the dtypes each
  file would read as on its own;
- runs whose metrics kind and config columns (names and Python types) are equal share one
  frame, and each config column is set once per such frame;
- those frames are concatenated (pandas gives the same columns, in the same order, and the same
  dtypes as for the per-run frames, which each group stands for) and the rows put back in run
  order.

``tests/test_collect.py`` checks the result against the per-run implementation.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tstudy.results_manifest import KEY
from tstudy.run_summary import read_summary

FRONT = ["study", "run_id", "role", "status", "epoch", "split", "acc1", "acc5", "loss"]


@dataclass(frozen=True)
class Rows:
    """Where a run's metrics rows are: rows ``start`` to ``start + n`` of metrics frame ``group``."""

    group: int
    start: int
    n: int


@dataclass(frozen=True)
class RunPart:
    """One run's part of the table: its metrics rows and its config columns (in order)."""

    rows: Rows
    cols: dict[str, Any]


class MetricsFrames:
    """Frames of metrics rows, each holding runs whose metrics read with the same dtypes."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame, counts: Sequence[int]) -> list[Rows]:
        """Add a frame holding consecutive runs of ``counts`` rows each; their :class:`Rows`."""
        g = len(self.frames)
        self.frames.append(frame)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else []
        return [Rows(g, int(s), int(n)) for s, n in zip(starts, counts)]

    def read(self, paths: Sequence[str], summaries: bool = True) -> list[Rows | Exception]:
        """Read metrics files: per path its :class:`Rows`, or the exception pandas raises for it.
        With ``summaries``, a run's valid ``metrics.arrow`` next to its ``metrics.parquet``
        (:mod:`tstudy.run_summary`: the same arrow table) is read instead of the parquet file."""
        out: list[Rows | Exception | None] = [None] * len(paths)
        kinds: dict[tuple, _Kind] = {}
        nullable: dict[bytes, list[int]] = {}  # per schema: the columns whose dtype a null changes
        for i, path in enumerate(paths):
            t = read_summary(os.path.dirname(path)) if summaries else None
            if t is None:
                try:
                    with pa.OSFile(path) as f:
                        t = pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)
                except Exception:  # noqa: BLE001 - let pandas read it, or say why it cannot
                    out[i] = self._read_one(path)
                    continue
            schema = t.schema.serialize().to_pybytes()
            cols = nullable.get(schema)
            if cols is None:
                cols = nullable[schema] = [j for j, f in enumerate(t.schema) if not _null_keeps_dtype(f.type)]
            key = (schema, tuple(t.column(j).null_count > 0 for j in cols), t.num_rows == 0)
            kinds.setdefault(key, _Kind()).add(i, t)
        for kind in kinds.values():
            try:
                frame = _to_pandas(kind.tables())
            except Exception:  # noqa: BLE001 - never expected; then each file on its own
                for i in kind.members:
                    out[i] = self._read_one(paths[i])
                continue
            for i, rows in zip(kind.members, self.add(frame, kind.counts)):
                out[i] = rows
        return out  # type: ignore[return-value]

    def _read_one(self, path: str) -> Rows | Exception:
        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001
            return e
        return self.add(frame, [len(frame)])[0]

    def is_empty(self, rows: Rows) -> bool:
        """``DataFrame.empty`` of the run's own frame."""
        return rows.n == 0 or len(self.frames[rows.group].columns) == 0


class _Kind:
    """Metrics files of one kind as they are read, merged every so often: thousands of small
    tables cost far more memory than their rows."""

    MERGE = 256

    def __init__(self) -> None:
        self.members: list[int] = []
        self.counts: list[int] = []
        self.merged: list[pa.Table] = []
        self.pending: list[pa.Table] = []

    def add(self, i: int, t: pa.Table) -> None:
        self.members.append(i)
        self.counts.append(t.num_rows)
        self.pending.append(t)
        if len(self.pending) >= self.MERGE:
            self.merged.append(pa.concat_tables(self.pending).combine_chunks())
            self.pending = []

    def tables(self) -> list[pa.Table]:
        return self.merged + self.pending


def _null_keeps_dtype(t: pa.DataType) -> bool:
    """True for arrow types whose pandas dtype is the same with or without nulls (floats: NaN;
    strings: NaN; null: object); integers become float64 and booleans object."""
    return pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _to_pandas(tables: list[pa.Table]) -> pd.DataFrame:
    """Tables of one schema as one frame, converted exactly as ``pd.read_parquet`` converts a file
    (through a parquet buffer: the conversion is pandas' own, in every version)."""
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables(tables).combine_chunks(), buf)
    buf.seek(0)
    return pd.read_parquet(buf)


def assemble(metrics: MetricsFrames, parts: Sequence[RunPart]) -> pd.DataFrame:
    """The table: each run's metrics rows with its config columns, runs in order."""
    if not parts:
        return pd.DataFrame(columns=KEY)
    groups: dict[tuple, list[int]] = {}  # insertion order: by first run
    for j, p in enumerate(parts):
        key = (p.rows.group, tuple((k, type(v)) for k, v in p.cols.items()))
        groups.setdefault(key, []).append(j)
    ends = np.cumsum([p.rows.n for p in parts])
    frames, targets = [], []
    for (g, _), members in groups.items():
        rows = [parts[j].rows for j in members]
        counts = np.array([r.n for r in rows], dtype=np.int64)
        frame = metrics.frames[g].take(row_ranges(np.array([r.start for r in rows], dtype=np.int64), counts))
        for col in parts[members[0]].cols:
            values = np.empty(len(members), dtype=object)
            values[:] = [parts[j].cols[col] for j in members]
            frame[col] = np.repeat(values, counts).tolist()  # a list: pandas infers as for [v] * n
        frames.append(frame)
        targets.append(row_ranges(ends[members] - counts, counts))
    df = pd.concat(frames, ignore_index=True)
    order = np.empty(len(df), dtype=np.int64)
    order[np.concatenate(targets)] = np.arange(len(df))
    df = df.take(order).reset_index(drop=True)
    front = [c for c in FRONT if c in df]
    return df[front + [c for c in df.columns if c not in front]]


def row_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, counts)])``."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return np.arange(total, dtype=np.int64) + offsets
