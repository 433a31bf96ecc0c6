"""Committed findings: a study's results regenerated from the small run files kept in git.

``results/runs/<run id>/`` keeps each finished run's small files (config, status, metrics, log;
a teacher's profile and weights); ``results/<study>/`` keeps what was made from them
(``results.parquet``, ``report.md``, ``tables/``, ``figures/``). :func:`regenerate` rebuilds the
latter from the former in a fresh root, from the finished runs only (a run still training in the
source root is left out, so a study can be published chunk by chunk while the next chunk trains),
and :func:`compare` names every file whose numbers differ from the committed one.

``python -m analysis findings STUDY_FILE [--root results] [--check]``: regenerate into the root
(``--check``: only compare, exit 1 on a difference).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from tstudy.errors import ConfigError
from tstudy.results import RESULTS, update_results
from tstudy.store import DIVERGED, DONE, RunStore
from tstudy.study import Study

# Run files a finding is made from, where present: what git keeps of a run (never checkpoints or locks).
RUN_FILES = ("config.json", "status.json", "metrics.parquet", "metrics.arrow", "log.txt")
# Kept for teachers only (.gitignore): a student's weights are released before its study is published
# (``tstudy clean --weights``), so a student that still holds them here is not finished in a clean clone.
TEACHER_FILES = ("model.pt", "teacher_profile.npz")
# What a regeneration must reproduce exactly; the figures' PNG/PDF bytes depend on matplotlib's
# version and are compared through the tables they are drawn from.
COMPARED = (RESULTS, "report.md", "tables")


def finished_runs(study: Study, store: RunStore) -> list[str]:
    """Run ids (teachers first) of the study whose state on disk is final."""
    out = []
    for cfg in study.runs():
        if store.state(cfg).status in (DONE, DIVERGED):
            out.append(cfg.run_id)
    return out


def snapshot(study: Study, source: Path, dest: Path) -> list[str]:
    """Copy what git keeps of the study's finished runs from root ``source`` to root ``dest``; ids of
    the runs that are finished in ``dest`` (a student still holding its weights is not)."""
    src, dst = RunStore(source, study.name), RunStore(dest, study.name)
    teachers = {t.run_id for t in study.teachers()}
    ids = finished_runs(study, src)
    for rid in ids:
        d = dst.run_dir(rid)
        d.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES + (TEACHER_FILES if rid in teachers else ()):
            f = src.run_dir(rid) / name
            if f.exists():
                shutil.copy2(f, d / name)
    return finished_runs(study, dst)


def regenerate(study: Study, source: Path, dest: Path, band: str = "ci") -> Path:
    """Rebuild ``<dest>/<study>/`` (table, report, tables, figures) from the finished runs under
    ``source``; returns that folder."""
    from analysis.report import write_report

    kept = snapshot(study, source, dest)
    held = [r for r in finished_runs(study, RunStore(source, study.name)) if r not in kept]
    if held:
        raise ConfigError(f"findings: {len(held)} finished students of {study.name} still hold their weights "
                          f"(model.pt, which git does not keep), e.g. {held[0]}; release them first: "
                          "tstudy clean STUDY_FILE --weights")
    store = RunStore(dest, study.name)
    update_results(study, store)
    write_report(study, store, band=band)
    return store.study_dir


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    for name in COMPARED:
        p = folder / name
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else []):
            if f.is_file():
                out[str(f.relative_to(folder))] = f
    return out


def compare(made: Path, committed: Path) -> list[str]:
    """One line per difference between two study folders (in :data:`COMPARED`)."""
    a, b = _files(made), _files(committed)
    out = [f"{n}: not committed" for n in sorted(set(a) - set(b))]
    out += [f"{n}: committed but not regenerated" for n in sorted(set(b) - set(a))]
    for n in sorted(set(a) & set(b)):
        if n.endswith(".parquet"):
            x, y = pd.read_parquet(a[n]), pd.read_parquet(b[n])
            try:
                pd.testing.assert_frame_equal(x, y, check_exact=True)
            except AssertionError as e:
                out.append(f"{n}: {str(e).splitlines()[0]}")
        elif a[n].read_bytes() != b[n].read_bytes():
            out.append(f"{n}: differs")
    return out


def check(study: Study, root: Path, band: str = "ci") -> list[str]:
    """Regenerate in a temporary root from ``root``'s runs and compare with ``root``'s study folder."""
    with tempfile.TemporaryDirectory() as tmp:
        made = regenerate(study, root, Path(tmp), band)
        return compare(made, RunStore(root, study.name).study_dir)


def publish(study: Study, root: Path, band: str = "ci") -> Path:
    """Regenerate from ``root``'s finished runs and put the result in ``root``'s study folder
    (replacing the files of :data:`COMPARED` and the figures)."""
    with tempfile.TemporaryDirectory() as tmp:
        made = regenerate(study, root, Path(tmp), band)
        target = RunStore(root, study.name).study_dir
        target.mkdir(parents=True, exist_ok=True)
        for name in (*COMPARED, "figures"):
            src, dst = made / name, target / name
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            if src.is_dir():
                shutil.copytree(src, dst)
            elif src.exists():
                shutil.copy2(src, dst)
    return target
