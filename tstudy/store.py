"""Run directories and their state, read from disk (never from a scheduler).

Runs are shared by every study under a root: a run is identified by its config alone, so a
teacher (or any run) that several studies name is trained once. ``<root>/runs/<run_id>/`` holds
``config.json``, ``status.json``, ``metrics.parquet`` (all evaluation rows so far),
``metrics.arrow`` (the final rows for collect, :mod:`tstudy.run_summary`),
``checkpoint.pt`` (while training), ``model.pt`` (final weights), ``teacher_profile.npz`` (``ce``
runs: logits on the un-augmented training set), ``lock`` and ``log.txt``. A study keeps only its
own outputs under ``<root>/<study>/``: ``study.json`` (its file and the run ids it lists),
``results.parquet``, figures and ``report.md``. Every write is atomic.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tstudy import atomic
from tstudy.config import RunConfig, _defaults_of
from tstudy.errors import ConfigError
from tstudy.lock import LockHeld, RunLock, held_by_me, is_stale, on_this_host, read_lock

NOT_LAUNCHED, INCOMPLETE, RUNNING, DONE, FAILED, DIVERGED = (
    "not launched", "incomplete", "running", "done", "failed", "diverged")
FINISHED = (DONE, DIVERGED)  # final states: launch does not run these again
# status.json's "weights" of a done run whose model.pt was deleted on purpose (``release_weights``):
# its results stay final, only its weights are gone (a study kept in git keeps no student weights).
RELEASED = "released"
STATUSES = (INCOMPLETE, RUNNING, DONE, FAILED, DIVERGED)  # what a status.json may say
RUNS = "runs"  # <root>/runs: the shared run store (so no study may be called "runs")
RECORD = "study.json"
# The files a finished run's state is read from: while none of them changes (stat_key), neither
# does the state of a done or diverged run (a lock matters only to runs not finished).
STATE_FILES = ("config.json", "status.json", "metrics.parquet", "model.pt")
# File times are coarse (a clock tick, 2 s on some file systems): a file that changed this
# shortly before it was checked could change again without its stat_key changing, so such a
# check is not remembered (git's "racy" entries).
SETTLE_NS = 2_000_000_000


@dataclass(frozen=True)
class RunState:
    status: str
    epoch: int = 0  # last completed epoch on disk
    reason: str = ""


class RunStore:
    """The shared run directories under ``root``, seen by one study."""

    def __init__(self, root: str | Path, study: str) -> None:
        self.root = Path(root)
        self.study = study
        self.study_dir = self.root / study
        self.runs_dir = self.root / RUNS
        self._checked: dict[str, tuple[int, ...]] = {}  # files verified in this process, by stat_key

    def run_dir(self, cfg: RunConfig | str) -> Path:
        return self.runs_dir / (cfg if isinstance(cfg, str) else cfg.run_id)

    # ----------------------------------------------------------------- study identity
    def record(self) -> dict:
        """This study's ``study.json`` (``{}`` when absent or unreadable)."""
        return read_record(self.study_dir)

    def owner(self) -> str | None:
        """The study file that launched this study name under this root, if recorded."""
        return self.record().get("source")

    def claim_check(self, source: str | None) -> None:
        """Refuse a different study file using a name already taken under this root (while the
        first file still exists: a moved or renamed study file takes the name over)."""
        owner = self.owner()
        if owner and source and Path(owner) != Path(source) and Path(owner).exists():
            raise ConfigError(f"name: study {self.study!r} under {self.root} belongs to {owner}, "
                              f"not {source}; rename one of the studies or use another --root")

    def claim(self, source: str | None, run_ids: Iterable[str] = ()) -> None:
        """Record which study file owns this name (after :meth:`claim_check`) and add ``run_ids``
        to the runs it lists (kept: a run once listed stays listed, so ``clean`` of another
        study asks before deleting it)."""
        self.claim_check(source)
        rec = self.record()
        listed = set(rec.get("runs", []))
        new = {"name": self.study, "source": source or rec.get("source"),
               "runs": sorted(listed | set(run_ids))}
        if new != rec:
            self.study_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json(self.study_dir / RECORD, new)

    def listed_by_others(self, run_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{run id: [other studies under the root listing it]}`` for the shared ones."""
        wanted = set(run_ids)
        out: dict[str, list[str]] = {}
        for name, rec in study_records(self.root).items():
            if name != self.study:
                for rid in wanted.intersection(rec.get("runs", [])):
                    out.setdefault(rid, []).append(name)
        return out

    # ----------------------------------------------------------------- state
    def state(self, cfg: RunConfig | str) -> RunState:
        """The run's state from its files. A finished run's state depends only on
        :data:`STATE_FILES` (their content, or their absence)."""
        d = os.path.join(self.runs_dir, cfg if isinstance(cfg, str) else cfg.run_id)  # str: this runs 10,000s of times
        problem = self._config_problem(d, cfg)
        if problem is None:
            return RunState(NOT_LAUNCHED)
        if problem:
            return RunState(INCOMPLETE, reason=problem)
        status = read_status(d)
        s = status.get("status")
        if s not in STATUSES:  # status.json missing or damaged: a finished run stays finished
            recovered = self._recover_status(Path(d), cfg if isinstance(cfg, RunConfig) else None)
            if recovered is not None:
                return recovered
        epoch = _int(status.get("epoch", 0))
        if s in (DONE, DIVERGED):
            metrics = os.path.join(d, "metrics.parquet")
            st = _stat(metrics)
            weights = s == DONE and status.get("weights") != RELEASED  # released: results kept, model.pt not
            missing = [f for f, x in (("metrics.parquet", st),) + ((("model.pt", _stat(os.path.join(d, "model.pt"))),)
                                                                   if weights else ()) if x is None]
            if missing:
                return RunState(INCOMPLETE, epoch, f"status says {s} but {', '.join(missing)} is missing")
            if self._remembered(metrics, st, lambda p: "" if parquet_intact(p) else "truncated"):
                return RunState(INCOMPLETE, epoch, f"status says {s} but metrics.parquet is truncated or corrupt")
            return RunState(s, epoch, status.get("reason", ""))
        info = read_lock(Path(d) / "lock")
        if info is not None and not is_stale(info) and not held_by_me(info):
            return RunState(RUNNING, epoch)  # e.g. another process relaunching a failed run
        if s == FAILED:
            return RunState(FAILED, epoch, status.get("reason", ""))
        if status.get("reason"):
            return RunState(INCOMPLETE, epoch, status["reason"])
        return RunState(INCOMPLETE, epoch, "stopped before the end" if epoch else "never finished an epoch")

    def _recover_status(self, d: Path, cfg: RunConfig | None) -> RunState | None:
        """A done run whose status.json is missing or damaged but whose final files are intact
        (:func:`final_status`): its status.json rewritten from them (atomically, under the run's
        lock, the damaged file set aside, a line in log.txt) and DONE; None when not intact."""
        if cfg is None:
            cfg = RunConfig.from_dict(json.loads((d / "config.json").read_text()))  # checked by the caller
        if final_status(d, cfg) is None:
            return None
        try:
            if held_by_me(read_lock(d / "lock")):
                repair_status(d, cfg)
            else:
                with RunLock(d):
                    repair_status(d, cfg)
        except (LockHeld, OSError):
            pass  # another process holds the run, or the root is read-only: repaired at a later call
        return RunState(DONE, cfg.epochs)

    def _config_problem(self, d: str, cfg: RunConfig | str) -> str | None:
        """None without config.json; '' when it is the run's config; else the problem.

        A config.json holding ``cfg.to_dict()`` (which hashes to the run id) is recognised
        without building a RunConfig (:func:`is_config_of`); any other goes through
        :meth:`check_config`."""
        path = os.path.join(d, "config.json")
        st = _stat(path)
        if st is None:
            return None
        run_id = cfg if isinstance(cfg, str) else cfg.run_id

        def check(p: str) -> str:
            if isinstance(cfg, RunConfig) and is_config_of(p, cfg):
                return ""
            return self.check_config(Path(d), run_id)

        return self._remembered(path, st, check)

    def _remembered(self, path: str, st: os.stat_result, check: Callable[[str], str]) -> str:
        """``check(path)``: '' when the file is fine, else the problem. A fine result is
        remembered in this process while the file's :func:`stat_key` (``st``, taken before the
        check) stays the same: any write, rename over it or truncation changes it."""
        key = stat_key(st)
        if self._checked.get(path) == key:
            return ""
        problem = check(path)
        if not problem and settled([list(key)], time.time_ns()):
            self._checked[path] = key
        return problem

    @staticmethod
    def check_config(d: Path, run_id: str) -> str:
        """'' when config.json parses and hashes to the directory's run id, else the problem."""
        try:
            cfg = RunConfig.from_dict(json.loads((d / "config.json").read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            return f"config.json unreadable ({type(e).__name__}: {e})"
        if cfg.run_id != run_id:
            return f"config.json hashes to {cfg.run_id}, not to its directory {run_id}"
        return ""

    def states(self, cfgs: Iterable[RunConfig]) -> dict[str, RunState]:
        """``{run id: state}``; the store is listed once, so runs never launched cost no file access."""
        present = set(os.listdir(self.runs_dir)) if self.runs_dir.is_dir() else set()
        return {c.run_id: self.state(c) if c.run_id in present else RunState(NOT_LAUNCHED) for c in cfgs}

    def finished_elsewhere(self, run_ids: Iterable[str]) -> list[str]:
        """The run ids this study's record lists, not among ``run_ids`` (e.g. the runs of the
        study's own config when ``--set`` or ``--seeds`` changed the expansion), whose
        status.json says done or diverged: one small file read per run, no metrics."""
        others = set(self.record().get("runs", [])) - set(run_ids)
        return sorted(r for r in others if read_status(self.run_dir(r)).get("status") in FINISHED)

    def foreign_locks(self, run_ids: Iterable[str]) -> list[tuple[str, dict]]:
        """``(run id, lock)`` of the runs locked by a dead process on this host, or by a process on
        another host (which this host cannot check), or with an unreadable lock; not this
        process's locks, nor those of live processes here."""
        out = []
        for rid in sorted(set(run_ids)):
            info = read_lock(self.run_dir(rid) / "lock")
            if info is None or held_by_me(info):
                continue
            if is_stale(info) or not on_this_host(info):
                out.append((rid, info))
        return out

    def run_ids_on_disk(self) -> list[str]:
        if not self.runs_dir.exists():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir())

    def remove(self, run_id: str, only: tuple[str, ...] = (INCOMPLETE, FAILED)) -> bool:
        """Delete a run directory if, under its lock, its state is one of ``only`` (used by
        `clean` after confirmation: a run that a launch started meanwhile is left alone)."""
        d = self.run_dir(run_id)
        trash = d.with_name(f".trash-{run_id}-{os.getpid()}")
        try:
            with RunLock(d):
                if self.state(run_id).status not in only:
                    return False
                d.rename(trash)  # atomic: the run disappears at once, then is deleted
        except LockHeld:
            return False
        shutil.rmtree(trash)
        return True


def read_record(study_dir: Path) -> dict:
    try:
        rec = json.loads((study_dir / RECORD).read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def study_records(root: Path) -> dict[str, dict]:
    """``{study name: study.json}`` of every study recorded under ``root``."""
    if not root.is_dir():
        return {}
    return {d.name: rec for d in sorted(root.iterdir())
            if d.is_dir() and d.name != RUNS and (rec := read_record(d))}


def is_config_of(path: str | Path, cfg: RunConfig) -> bool:
    """True when the JSON in ``path`` is exactly ``cfg.to_dict()``: the same keys, and values of
    the same JSON types (``true`` is not ``1``, nor ``1`` ``1.0``); a field missing from it (a
    config.json written before the field existed) counts as its default, as in the run id. Then
    it parses back to ``cfg`` and hashes to its run id."""
    try:
        with open(path, "rb") as f:
            on_disk = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return _same_json(_with_defaults(on_disk), cfg.to_dict())


def _with_defaults(d: object) -> object:
    """A parsed config.json with the fields it lacks set to their defaults (JSON-ready), and so
    its teacher's when that is a trained run (no ``kind``)."""
    if type(d) is not dict:
        return d
    defaults = _defaults_of(RunConfig)
    if defaults.keys() - d.keys():
        d = {**defaults, **d}
    t = d.get("teacher")
    if type(t) is dict and "kind" not in t:
        d = {**d, "teacher": _with_defaults(t)}
    return d


def _same_json(a: object, b: object) -> bool:
    """``a == b`` for parsed JSON, with types kept apart (Python has ``True == 1 == 1.0``)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same_json(v, b[k]) for k, v in a.items())  # type: ignore[attr-defined,index]
    if type(a) is list:
        return len(a) == len(b) and all(map(_same_json, a, b))  # type: ignore[arg-type]
    return a == b


def _stat(path: str | Path) -> os.stat_result | None:
    """The file's stat, None when it does not exist (as ``Path.exists``)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is written, replaced (atomic rename) or truncated."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(stamp: Iterable[list[int] | None], now_ns: int) -> bool:
    """True when no file of ``stamp`` (stat_keys) changed within SETTLE_NS before ``now_ns``."""
    return all(k is None or max(k[2], k[3]) < now_ns - SETTLE_NS for k in stamp)


def files_stamp(d: str | Path, names: Iterable[str] = STATE_FILES) -> list[list[int] | None]:
    """The :func:`stat_key` of each file in ``d`` (None where absent)."""
    return [None if (st := _stat(os.path.join(d, name))) is None else list(stat_key(st)) for name in names]


def parquet_intact(path: str | Path) -> bool:
    """Cheap integrity check: a parquet file starts and ends with the magic bytes PAR1."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, 2)
            return head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:
        return False


def set_aside(path: Path) -> Path | None:
    """Rename a damaged file or folder to ``<name>.corrupt-<time>`` (never delete it)."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return target


UNREADABLE = "status.json unreadable"


def read_status(d: str | Path) -> dict:
    """The run's status.json; ``{}`` when absent; ``{"reason": UNREADABLE}`` (no status) when
    it cannot be parsed or is not an object."""
    try:
        with open(os.path.join(d, "status.json"), "rb") as f:
            status = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"reason": UNREADABLE}
    return status if isinstance(status, dict) else {"reason": UNREADABLE}


def _int(v: object) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def final_status(d: Path, cfg: RunConfig) -> dict | None:
    """The status.json of a done run rebuilt from its final files, or None unless they are all
    intact: model.pt a whole file (torch's zip format), metrics.parquet intact and holding the
    final epoch's rows, and no checkpoint.pt (a run stopped while finishing resumes from it).
    The caller has checked that config.json hashes to the run id."""
    if (d / "checkpoint.pt").exists() or not zipfile.is_zipfile(d / "model.pt"):
        return None
    if not parquet_intact(d / "metrics.parquet"):
        return None
    try:
        import pandas as pd

        rows = pd.read_parquet(d / "metrics.parquet")
        last = rows[rows["epoch"] == cfg.epochs]
    except Exception:  # noqa: BLE001 - unreadable despite its magic bytes, or no epoch column
        return None
    if last.empty:
        return None
    acc = {r["split"]: float(r["acc1"]) for _, r in last.iterrows() if "split" in r and "acc1" in r}
    extra = {k: float(last[k].iloc[-1]) for k in ("wall_time_s", "images_per_s") if k in last}
    return {"status": DONE, "epoch": cfg.epochs, **final_acc1(acc), **extra,
            "repaired": "rebuilt from model.pt and metrics.parquet"}


def final_acc1(acc1: dict[str, float]) -> dict[str, float | None]:
    """A done run's status fields from its last epoch's top-1 accuracy per split: test and train,
    and val for a run with a validation split."""
    out = {"test_acc1": acc1.get("test"), "train_acc1": acc1.get("train")}
    if "val" in acc1:
        out["val_acc1"] = acc1["val"]
    return out


def repair_status(d: Path, cfg: RunConfig) -> bool:
    """Rewrite a missing or damaged status.json of a done run from its final files (the caller
    holds the run's lock): the damaged file is set aside, the new one written atomically, and
    log.txt says so. False (nothing written) when status.json is valid or the files are not intact."""
    if read_status(d).get("status") in STATUSES:
        return False
    status = final_status(d, cfg)
    if status is None:
        return False
    aside = set_aside(d / "status.json")
    atomic.write_json(d / "status.json", status)
    log_line(d, ("status.json unreadable; set aside as " + aside.name if aside else "status.json missing")
             + "; the run's final files are intact (model.pt, metrics.parquet up to epoch "
             f"{cfg.epochs}): status.json rebuilt from them, nothing retrained")
    return True


def log_line(d: Path, line: str) -> None:
    """Append a time-stamped line to the run's log.txt."""
    with open(d / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def write_status(d: Path, status: str, **info: object) -> None:
    atomic.write_json(d / "status.json", {"status": status, **info})


def release_weights(d: Path) -> bool:
    """Delete a done run's ``model.pt`` on purpose, keeping it done: status.json first records
    ``"weights": "released"`` with the file's size and SHA-256, then the file goes (a crash between
    the two leaves a done run with its weights). False (nothing changed) unless the run is done
    with its weights, under its lock, now."""
    import hashlib

    try:
        with RunLock(d):
            status, model = read_status(d), d / "model.pt"
            if status.get("status") != DONE or status.get("weights") == RELEASED or not model.exists():
                return False
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            write_status(d, DONE, **{**{k: v for k, v in status.items() if k != "status"}, "weights": RELEASED,
                                     "model_pt_bytes": model.stat().st_size, "model_pt_sha256": digest})
            log_line(d, f"model.pt released (sha256 {digest[:16]}): results kept, weights deleted")
            model.unlink()
            return True
    except LockHeld:
        return False
