"""``<study>/results.manifest.json``: what ``results.parquet`` was made from.

For each run in the table: the :func:`~tstudy.store.stat_key` of its state files when it was
read, its role and state, where its rows are in the table, and the dtypes its own
``metrics.parquet`` reads as. A re-collect takes a run whose files are unchanged from the table
(its rows, cast back to those dtypes, are what the file gives) and reads only the others; when
nothing changed it writes nothing. The manifest is written after the table, atomically, and
names the table's own stat key: a table written by anything else (or a collect interrupted
between the two writes) makes it void, and the next collect reads every run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tstudy import atomic
from tstudy.store import stat_key

KEY = ["run_id", "epoch", "split"]  # a results table's rows are unique and sorted by these

MANIFEST = "results.manifest.json"
FORMAT = 2  # 2: the table gained the pair_id and val_fraction columns


@dataclass(frozen=True)
class Entry:
    """One run of the table."""

    run_id: str
    role: str
    status: str
    epoch: int
    reason: str
    start: int  # first row in the table
    n: int  # rows
    dtypes: int  # index into Manifest.dtypes: its metrics frame's columns and dtypes
    stamp: list  # files_stamp of its run directory when it was read


@dataclass(frozen=True)
class Unreadable:
    """A finished run left out because pandas cannot read its metrics.parquet."""

    run_id: str
    error: str  # the exception's name
    stamp: list


@dataclass(frozen=True)
class Manifest:
    runs: dict[str, Entry]  # in table order
    dtypes: list[list[list[str]]]  # [[column, dtype], ...] per metrics kind
    unreadable: dict[str, Unreadable]


def versions() -> dict[str, Any]:
    """What the table's bytes depend on besides the runs (a change voids the manifest); read
    without importing pandas, which a collect with nothing new never needs."""
    from importlib.metadata import version

    from tstudy import __version__

    return {"format": FORMAT, "tstudy": __version__, "pandas": version("pandas"), "pyarrow": version("pyarrow")}


def load(study_dir: Path, study: str, table: Path) -> Manifest | None:
    """The manifest of ``table``, or None when absent, unreadable, from other versions or
    another table."""
    try:
        raw = json.loads((study_dir / MANIFEST).read_text())
        if raw.get("study") != study or raw.get("table") != list(stat_key(os.stat(table))):
            return None
        if raw.get("versions") != versions():
            return None
        runs = {r[0]: Entry(*r) for r in raw["runs"]}
        return Manifest(runs, raw["dtypes"], {r[0]: Unreadable(*r) for r in raw["unreadable"]})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def write(study_dir: Path, study: str, table: Path, entries: Sequence[Entry], dtypes: list[list[list[str]]],
          unreadable: Sequence[Unreadable]) -> None:
    """Write the manifest of ``table`` (just written) atomically."""
    raw = {"study": study, "versions": versions(), "table": list(stat_key(os.stat(table))), "dtypes": dtypes,
           "runs": [[e.run_id, e.role, e.status, e.epoch, e.reason, e.start, e.n, e.dtypes, e.stamp] for e in entries],
           "unreadable": [[u.run_id, u.error, u.stamp] for u in unreadable]}
    atomic.write_bytes(study_dir / MANIFEST, json.dumps(raw, separators=(",", ":")).encode())
