"""A lock per run directory, so two launches never train the same run at once.

The lock file holds the owner's host, pid, SLURM job id and the time it was taken. A lock whose
owner is a dead process on this host, or whose SLURM job is the one now running (a requeue), is
stale and taken over. A lock left on another host outside SLURM cannot be judged from here:
``tstudy clean --stale-locks`` lists such locks and removes them after asking
(:func:`remove_if_unchanged`).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


class LockHeld(RuntimeError):
    """The run is locked by a live process."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "time": time.time()}


def read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: half-written by a crashed owner


def describe(info: dict | None) -> str:
    """A lock's owner for people: ``pid 12 on host h since 2026-01-02 03:04:05 (SLURM job 7)``."""
    if not info:
        return "an unknown owner (lock file unreadable)"
    t = info.get("time")
    since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float))
             else "an unknown time")
    job = f" (SLURM job {info['slurm_job']})" if info.get("slurm_job") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {since}{job}"


def on_this_host(info: dict | None) -> bool:
    return bool(info) and info.get("host") == socket.gethostname()


def held_by_me(info: dict | None) -> bool:
    """True when this very process owns the lock."""
    return on_this_host(info) and info.get("pid") == os.getpid()  # type: ignore[union-attr]


def is_stale(info: dict | None) -> bool:
    """True when the lock's owner cannot be running any more."""
    if info is None or not info:
        return True  # gone, or unreadable (locks are written whole, so only a damaged file is)
    me = _me()
    if info.get("host") == me["host"]:
        return not _pid_alive(int(info.get("pid", -1)))
    if info.get("slurm_job") and info.get("slurm_job") == me["slurm_job"]:
        return True  # our own job, requeued onto another node
    return False


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/lock``; raises LockHeld if a live owner has it.
    ``name``: another lock file in that folder (``collect.lock`` for a study's results)."""

    def __init__(self, run_dir: Path, name: str = "lock") -> None:
        self.path = Path(run_dir) / name
        self.label = f"run {self.path.parent.name}" if name == "lock" else str(self.path)  # for messages
        self.held = False

    def acquire(self) -> None:
        for _ in range(50):
            # Write the owner to a private file first, then hard-link it into place: the lock
            # appears complete or not at all, so no reader ever sees an empty lock.
            tmp = self.path.with_name(f".{self.path.name}-{socket.gethostname()}-{os.getpid()}")
            tmp.write_text(json.dumps(_me()))
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                info = read_lock(self.path)
                if not is_stale(info):
                    what = "being trained" if self.path.name == "lock" else "held"
                    raise LockHeld(f"{self.label} is {what} by {describe(info)}") from None
                self._take_over(info)
                continue
            finally:
                tmp.unlink(missing_ok=True)
            self.held = True
            return
        raise LockHeld(f"{self.label}: could not take its lock")

    def _take_over(self, seen: dict | None) -> None:
        """Remove a stale lock, guarded by ``<lock>.takeover`` so two takers cannot both win."""
        if _remove_guarded(self.path, seen) is None:
            time.sleep(0.05)

    def release(self) -> None:
        if self.held:
            info = read_lock(self.path)
            if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _remove_guarded(path: Path, seen: dict | None) -> bool | None:
    """Unlink the lock ``path`` if it still holds ``seen``, guarded by ``<lock>.takeover`` so two
    takers cannot both win: True when removed, False when it changed meanwhile, None when another
    taker holds the guard (try again)."""
    guard = path.with_name(f"{path.name}.takeover")
    try:
        gfd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > 60:  # a taker died mid-way
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return None
    os.close(gfd)
    try:
        if read_lock(path) != seen:  # taken over or released meanwhile
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)


def remove_if_unchanged(run_dir: Path, seen: dict | None, tries: int = 100) -> bool:
    """Remove ``run_dir/lock`` only if it still holds ``seen`` (the owner a person agreed to
    override); True when removed."""
    path = Path(run_dir) / "lock"
    for _ in range(tries):
        done = _remove_guarded(path, seen)
        if done is not None:
            return done
        time.sleep(0.05)
    return False
