"""The SLURM executor: submit a study's missing runs as job arrays through submitit, and return.

- Teachers first: a student's job waits for its teacher's job (``afterok``); a teacher already
  done is not resubmitted and its students wait for nothing.
- Arrays are split into chunks no larger than the cluster's MaxArraySize.
- Each array task trains one run, or up to ``pack`` runs that differ only in their loss side
  (temperature, method, method parameters) together (``engine.train_runs``: shared batches and
  teacher pass, results equal to training them alone).
- The submitted callable is checkpointable: on preemption or time limit submitit requeues it and
  it resumes every run from its run directory's checkpoint (the engine writes no duplicate rows).
- Job ids are recorded in each run directory (``slurm.json``); logs (one line per epoch) go to
  ``<root>/<study>/slurm/``. State is read from disk; ``squeue`` only adds queued/running.
  Nothing here uses ``sacct``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit

from tstudy import atomic
from tstudy.config import RunConfig
from tstudy.errors import ConfigError
from tstudy.lock import read_lock
from tstudy.store import DONE, FINISHED, RUNNING, RunState, RunStore

DEFAULT_MAX_ARRAY_SIZE = 1001
RECORD = "slurm.json"
LOG_DIR = "slurm"
# sbatch options tstudy sets itself; extra options may not override them.
RESERVED_SBATCH = ("array", "output", "error", "dependency", "open-mode", "signal", "wrap", "parsable")
# squeue states of a job that will still run (or runs); DependencyNeverSatisfied never will.
ALIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                   "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})
NEVER = "DependencyNeverSatisfied"


# =========================================================================== options
@dataclass(frozen=True)
class SlurmOptions:
    """Cluster options for ``launch --executor slurm``; in a study file:
    ``Study(..., options={"slurm": {"partition": "gpu", "time": "04:00:00", "gpus_per_job": 1}})``.

    ``time`` is the limit per job in minutes (``from_mapping`` also takes SLURM's ``HH:MM:SS``,
    ``MM:SS``, ``D-HH[:MM[:SS]]``); a job reaching it is requeued up to ``max_timeouts`` times.
    ``mem`` is SLURM's ``--mem`` (``"16G"``); ``sbatch`` holds extra sbatch options (``{"exclude":
    "node3"}``); ``setup`` lines run before the job (``module load cuda``). ``pack``: up to this
    many runs differing only in their loss side share one job. ``log_dir`` defaults to
    ``<root>/<study>/slurm``.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem: str | None = None
    constraint: str | None = None
    sbatch: Mapping[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    array_parallelism: int = 256
    pack: int = 1
    max_timeouts: int = 20
    job_name: str | None = None
    log_dir: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> "SlurmOptions":
        """Build from a plain dict; unknown keys and bad values raise a one-line ConfigError."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"options['slurm']: expected a dict, got {d!r}")
        unknown = [k for k in d if k not in cls.names()]
        if unknown:
            raise ConfigError(f"slurm: unknown option {unknown[0]!r}; valid: {', '.join(cls.names())}")
        return cls(**d)

    def merged(self, overrides: Mapping[str, Any]) -> "SlurmOptions":
        """These options with ``overrides`` applied (``sbatch`` merged key by key)."""
        changes = dict(overrides)
        if "sbatch" in changes:
            changes["sbatch"] = {**self.sbatch, **_check_sbatch("sbatch", changes["sbatch"])}
        unknown = [k for k in changes if k not in self.names()]
        if unknown:
            raise ConfigError(f"slurm: unknown option {unknown[0]!r}; valid: {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)


def _check_str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or "\n" in v:
        raise ConfigError(f"slurm.{name}: expected a non-empty one-line string, got {v!r}")
    return v.strip()


def _as_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"slurm.{name}: expected an integer >= {lo}, got {v!r}")
    return v


def _int_check(lo: int) -> Callable[[str, Any], int]:
    return lambda name, v: _as_int(name, v, lo)


def _check_cpus(name: str, v: Any) -> int | None:
    return None if v is None else _as_int(name, v, 1)


def parse_time(v: Any, name: str = "time") -> int:
    """SLURM time limit -> whole minutes: 90, "90", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM[:SS]"."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v >= 1:
            return v
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", v)
        if m:
            days, a, b, c = (int(x) if x is not None else None for x in m.groups())
            if days is not None:  # D-HH[:MM[:SS]]
                seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
            elif c is not None:  # HH:MM:SS
                seconds = (a * 60 + b) * 60 + c
            elif b is not None:  # MM:SS
                seconds = a * 60 + b
            else:  # MM
                seconds = a * 60
            if seconds > 0:
                return math.ceil(seconds / 60)
    raise ConfigError(f"slurm.{name}: expected minutes > 0 or SLURM's HH:MM:SS / D-HH:MM:SS, got {v!r}")


def _check_mem(name: str, v: Any) -> str | None:
    if v is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT])B?\s*", v, re.I) if isinstance(v, str) else None
    if not m or int(m.group(1)) == 0:
        raise ConfigError(f"slurm.{name}: expected a size with a unit such as '16G' or '500M', got {v!r}")
    return f"{int(m.group(1))}{m.group(2).upper()}"


def _check_sbatch(name: str, v: Any) -> dict[str, Any]:
    if isinstance(v, (list, tuple)):
        v = parse_key_values(v, f"slurm.{name}")
    if not isinstance(v, Mapping):
        raise ConfigError(f"slurm.{name}: expected a dict of sbatch options, got {v!r}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        key = str(k).strip().lstrip("-").replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise ConfigError(f"slurm.{name}: {k!r} is not an sbatch option name")
        if key in RESERVED_SBATCH:
            raise ConfigError(f"slurm.{name}: --{key} is set by tstudy; reserved: {', '.join(RESERVED_SBATCH)}")
        if not (x is True or (isinstance(x, (str, int, float)) and not isinstance(x, bool) and "\n" not in str(x))):
            raise ConfigError(f"slurm.{name}: --{key} needs a one-line value (or True for a flag), got {x!r}")
        out[key] = x
    return out


def _check_setup(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"slurm.{name}: expected a list of shell lines, got {v!r}")
    return tuple(v)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "partition": _check_str, "account": _check_str, "qos": _check_str, "constraint": _check_str,
    "job_name": _check_str, "log_dir": _check_str,
    "time": lambda name, v: parse_time(v, name), "gpus_per_job": _int_check(0), "cpus_per_job": _check_cpus,
    "mem": _check_mem, "sbatch": _check_sbatch, "setup": _check_setup,
    "array_parallelism": _int_check(1), "pack": _int_check(1), "max_timeouts": _int_check(0),
}


def parse_key_values(items: Sequence[str], where: str) -> dict[str, Any]:
    """``["exclude=node3", "requeue"]`` -> ``{"exclude": "node3", "requeue": True}``."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}: expected KEY=VALUE, got {item!r}")
        key, sep, value = item.partition("=")
        out[key.strip()] = value if sep else True
    return out


# =========================================================================== sbatch parameters
def sbatch_parameters(opts: SlurmOptions, study: str, dependency: str | None = None) -> dict[str, Any]:
    """The parameters for ``submitit.SlurmExecutor.update_parameters`` of one array."""
    p: dict[str, Any] = {"job_name": opts.job_name or f"tstudy-{study}", "time": opts.time,
                         "array_parallelism": opts.array_parallelism}
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(opts, name):
            p[name] = getattr(opts, name)
    if opts.cpus_per_job:
        p["cpus_per_task"] = opts.cpus_per_job
    if opts.gpus_per_job:
        p["gpus_per_node"] = opts.gpus_per_job
    if opts.setup:
        p["setup"] = list(opts.setup)
    extra = dict(opts.sbatch)
    if opts.mem:
        extra["mem"] = opts.mem  # passed through as is: submitit's own `mem` wants gigabytes
    if dependency:
        p["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"  # a failed teacher cancels its students' jobs
    if extra:
        p["additional_parameters"] = extra
    return p


def parse_max_array_size(config_text: str) -> int:
    """MaxArraySize from ``scontrol show config`` output; 1001 (SLURM's default) when absent."""
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", config_text, re.M)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def cluster_max_array_size() -> int:
    """The cluster's MaxArraySize (1001 when ``scontrol`` cannot tell)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(out.stdout) if out.returncode == 0 else DEFAULT_MAX_ARRAY_SIZE


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive chunks of at most ``size`` items (MaxArraySize 0 disables arrays: size 1)."""
    size = max(1, size)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# =========================================================================== planning
def make_packs(runs: Sequence[RunConfig], k: int) -> list[tuple[RunConfig, ...]]:
    """Packs of at most ``k`` runs with equal ``engine.pack_key`` (order kept), one per job."""
    from tstudy.executors.local import pack_groups  # imports torch: not at module level (plan/status stay light)

    return [tuple(g) for g in pack_groups(runs, k)]


@dataclass(frozen=True)
class ArrayPlan:
    """One job array: each entry of ``jobs`` is one array task (the runs it trains, in order);
    ``after`` is the run id of the teacher every task waits for (None: wait for nothing)."""

    jobs: tuple[tuple[RunConfig, ...], ...]
    after: str | None = None


def plan_arrays(todo: Sequence[RunConfig], waits_for: Callable[[RunConfig], str | None], pack: int = 1,
                max_array: int = DEFAULT_MAX_ARRAY_SIZE) -> list[ArrayPlan]:
    """Arrays to submit, in order: those that wait for nothing (teachers among them) first, then
    one group per teacher being waited for; each split to at most ``max_array`` tasks."""
    groups: dict[str | None, list[RunConfig]] = {None: []}
    for r in todo:
        groups.setdefault(waits_for(r), []).append(r)
    plans = []
    for after, runs in groups.items():
        for chunk in chunks(make_packs(runs, pack), max_array):
            plans.append(ArrayPlan(tuple(chunk), after))
    return plans


# =========================================================================== the queue
@dataclass(frozen=True)
class QueueEntry:
    job_id: str  # as tstudy records it: 12 or 12_3 (array task)
    raw_id: str  # SLURM_JOB_ID of a started job (array tasks have their own)
    state: str
    reason: str

    @property
    def alive(self) -> bool:
        return self.state in ALIVE and self.reason != NEVER


@dataclass
class Queue:
    """What ``squeue`` says about this user's jobs, by job id and by SLURM_JOB_ID."""

    by_id: dict[str, QueueEntry]
    by_raw: dict[str, QueueEntry]

    def get(self, job_id: str | None) -> QueueEntry | None:
        return self.by_id.get(str(job_id)) if job_id else None


SQUEUE_FORMAT = "%i|%A|%T|%r"


def parse_squeue(text: str) -> Queue:
    """Parse ``squeue -h -r -t all -o '%i|%A|%T|%r'``."""
    by_id, by_raw = {}, {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        e = QueueEntry(*parts)
        by_id[e.job_id] = e
        if e.state != "PENDING" or "_" not in e.job_id:  # a pending array task shows its array's id
            by_raw[e.raw_id] = e
    return Queue(by_id, by_raw)


def read_queue() -> Queue | None:
    """This user's jobs from ``squeue`` (finished ones too, while SLURM keeps them); None when
    squeue is missing or fails."""
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", SQUEUE_FORMAT]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_squeue(out.stdout) if out.returncode == 0 else None


# =========================================================================== records
def read_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def write_record(run_dir: Path, job: Any, runs: Sequence[RunConfig], dependency: str | None) -> dict:
    """Record a submission in ``run_dir/slurm.json`` (earlier job ids kept in ``previous_jobs``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_record(run_dir)
    array_id, _, task = str(job.job_id).partition("_")
    rec = {"job_id": str(job.job_id), "array_job_id": array_id, "array_task": int(task) if task else None,
           "runs": [r.run_id for r in runs], "dependency": dependency,
           "submitted": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
           "previous_jobs": old.get("previous_jobs", []) + ([old["job_id"]] if old.get("job_id") else [])}
    atomic.write_json(run_dir / RECORD, rec)
    return rec


def log_tail(paths: Sequence[str | None], limit: int = 240) -> str:
    """The most telling line of a job's logs: the last exception, else SLURM's last ``***`` line,
    else the last out-of-memory/kill line, else the last line."""
    lines: list[str] = []
    for p in paths:
        if not p:
            continue
        try:
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                lines += [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
    for pattern in (r"^[\w.]+(Error|Exception|Interrupt)\b", r"\*\*\*", r"\boom\b|oom[-_ ]kill|out of memory|killed"):
        telling = [ln for ln in lines if re.search(pattern, ln, re.I)]
        if telling:
            return telling[-1][:limit]
    return (lines or [""])[-1][:limit]


# =========================================================================== what to launch
def _lock_job_dead(run_dir: Path, queue: Queue | None) -> bool:
    """True when the run's lock belongs to a SLURM job that squeue says is not running."""
    info = read_lock(run_dir / "lock") or {}
    job = info.get("slurm_job")
    if not job or queue is None:
        return False
    e = queue.by_raw.get(str(job))
    return e is None or e.state not in ACTIVE


def launch_plan(runs: Sequence[RunConfig], store: RunStore, queue: Queue | None
                ) -> tuple[list[RunConfig], dict[str, str], list[str]]:
    """(runs to submit, {teacher run id: live job id to wait for}, lines about runs left alone).

    A run is left alone when finished, queued or running; a student is left alone when its
    teacher can neither be waited for nor is submitted now (e.g. diverged, or trained outside SLURM).
    """
    todo, live, notes = [], {}, []
    states = {r.run_id: store.state(r) for r in runs}
    for r in runs:
        st, d = states[r.run_id], store.run_dir(r)
        if st.status in FINISHED:
            continue
        entry = queue.get(read_record(d).get("job_id")) if queue else None
        if entry is not None and entry.alive:
            live[r.run_id] = entry.job_id
            continue
        if st.status == RUNNING and not _lock_job_dead(d, queue):
            continue
        todo.append(r)
    submit_ids = {r.run_id for r in todo}
    out = []
    for r in todo:
        t = r.teacher
        if isinstance(t, RunConfig) and t.run_id not in submit_ids and t.run_id not in live:
            ts = states.get(t.run_id) or store.state(t)
            if ts.status != DONE:
                notes.append(f"{r.run_id}: not submitted, its teacher {t.run_id} is {ts.status}")
                continue
        out.append(r)
    return out, live, notes


def waits_for_fn(todo: Sequence[RunConfig], live: Mapping[str, str]) -> Callable[[RunConfig], str | None]:
    """The teacher run id a run must wait for (None when it has none or it is done)."""
    submitted = {r.run_id for r in todo}

    def waits_for(r: RunConfig) -> str | None:
        t = r.teacher
        if isinstance(t, RunConfig) and (t.run_id in submitted or t.run_id in live):
            return t.run_id
        return None

    return waits_for


# =========================================================================== the job
class TrainJob(submitit.helpers.Checkpointable):
    """What one array task runs: ``engine.train_runs`` on its pack of runs (one run unless
    packed), each resuming from its run directory. On preemption or time limit submitit calls
    :meth:`checkpoint` and requeues the job; the new start resumes from disk."""

    def __init__(self, runs: Sequence[RunConfig], root: str, study: str, device: str = "auto",
                 data_root: str | None = None, pack_mode: str = "auto", cuda_graphs: str = "auto") -> None:
        self.runs = tuple(runs)
        self.root, self.study, self.device, self.data_root = root, study, device, data_root
        self.pack_mode, self.cuda_graphs = pack_mode, cuda_graphs

    def __call__(self) -> dict[str, str]:
        import torch

        from tstudy.engine import RunEnv, resolve_device, train_runs

        torch.set_num_threads(job_threads())
        store = RunStore(self.root, self.study)
        env = RunEnv(device=resolve_device(self.device), data_root=self.data_root, on_epoch=print_epoch,
                     pack_mode=getattr(self, "pack_mode", "auto"),  # jobs pickled before these existed
                     cuda_graphs=getattr(self, "cuda_graphs", "auto"))
        start = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1
        _say(f"job {os.environ.get('SLURM_JOB_ID')} start #{start}, {len(self.runs)} run(s) on {env.device}: "
             + ", ".join(f"{c.run_id} ({c.model} {c.method} T={c.temperature} seed={c.seed})" for c in self.runs))
        for cfg in self.runs:
            clear_dead_job_lock(store.run_dir(cfg))
        states = train_runs(list(self.runs), store, env)
        problems = []
        for run_id, state in states.items():
            _say(f"run {run_id}: {state.status}" + (f": {state.reason}" if state.reason else ""))
            if state.status not in FINISHED:
                problems.append(f"{run_id} {state.status}: {state.reason}")
        if problems:  # a non-zero exit keeps `afterok` students from starting
            raise RuntimeError(f"{len(problems)} of {len(self.runs)} runs did not finish: " + "; ".join(problems))
        return {k: v.status for k, v in states.items()}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Requeue this same job: every run resumes from its checkpoint on disk."""
        _say("preempted or timed out: requeued; runs resume from their checkpoints")
        return submitit.helpers.DelayedSubmission(self)


def job_threads() -> int:
    """CPU threads for torch in a job: SLURM_CPUS_PER_TASK, else the CPUs this process may use."""
    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n and n.isdigit():
        return max(1, int(n))
    return max(1, len(os.sched_getaffinity(0)))


def print_epoch(cfg: RunConfig, epoch: int, info: dict) -> None:
    """One line per epoch in the job's log."""
    from tstudy.engine import epoch_line

    _say(epoch_line(cfg, epoch, info))


def _say(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tstudy: {line}", flush=True)


def clear_dead_job_lock(run_dir: Path) -> None:
    """Remove a lock left on another host by a SLURM job that no longer runs (the lock module
    itself recognises dead PIDs on this host and this job's own requeue)."""
    info = read_lock(run_dir / "lock") or {}
    job = info.get("slurm_job")
    if not job or info.get("host") == socket.gethostname() or str(job) == os.environ.get("SLURM_JOB_ID"):
        return
    if _lock_job_dead(run_dir, read_queue()):
        _say(f"{run_dir.name}: lock of job {job} on {info.get('host')} is stale (job not running); taking over")
        (run_dir / "lock").unlink(missing_ok=True)


# =========================================================================== submission
def make_executor(folder: Path, opts: SlurmOptions, study: str, dependency: str | None
                  ) -> submitit.SlurmExecutor:
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_timeouts)
    ex.update_parameters(**sbatch_parameters(opts, study, dependency))
    return ex


def submit(plans: Sequence[ArrayPlan], store: RunStore, opts: SlurmOptions, live: Mapping[str, str],
           device: str, data_root: str | None, out=None, pack_mode: str = "auto",
           cuda_graphs: str = "auto") -> dict[str, str]:
    """Submit the arrays in order; record each job in its runs' directories. Returns {run id: job id}."""
    out = out or sys.stdout
    folder = log_dir(store, opts)
    folder.mkdir(parents=True, exist_ok=True)
    job_of = dict(live)
    root = str(store.root.resolve())
    data_root = str(Path(data_root).resolve()) if data_root else None
    for plan in plans:
        dep = f"afterok:{job_of[plan.after]}" if plan.after else None
        ex = make_executor(folder, opts, store.study, dep)
        with ex.batch():
            jobs = [ex.submit(TrainJob(runs, root, store.study, device, data_root, pack_mode, cuda_graphs)) for runs in plan.jobs]
        for job, runs in zip(jobs, plan.jobs):
            for r in runs:
                write_record(store.run_dir(r), job, runs, dep)
                job_of[r.run_id] = str(job.job_id)
        n_runs = sum(len(j) for j in plan.jobs)
        first = str(jobs[0].job_id).partition("_")[0]
        print(f"  submitted {'array' if len(jobs) > 1 else 'job'} {first} ({_n(len(jobs), 'job')}, {_n(n_runs, 'run')})"
              + (f" after {dep.split(':', 1)[1]}" if dep else ""), file=out)
    return job_of


def log_dir(store: RunStore, opts: SlurmOptions) -> Path:
    return Path(opts.log_dir).expanduser().resolve() if opts.log_dir else (store.study_dir / LOG_DIR).resolve()


# =========================================================================== CLI glue
CLI_FLAGS = {  # launch flag dest -> SlurmOptions field
    "partition": "partition", "account": "account", "qos": "qos", "slurm_time": "time",
    "gpus": "gpus_per_job", "cpus": "cpus_per_job", "mem": "mem", "constraint": "constraint",
    "sbatch": "sbatch", "setup": "setup", "array_parallelism": "array_parallelism", "pack": "pack",
}


def add_cli_flags(p: argparse.ArgumentParser) -> None:
    """The SLURM flags of ``tstudy launch`` (they override the study's ``options['slurm']``)."""
    g = p.add_argument_group("SLURM (--executor slurm; override the study's options['slurm'])")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--time", dest="slurm_time", metavar="TIME", help="per job: minutes or HH:MM:SS (default 60)")
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs per job")
    g.add_argument("--cpus", type=int, metavar="N", help="CPUs per job (torch uses that many threads)")
    g.add_argument("--mem", metavar="SIZE", help="memory per job, e.g. 16G")
    g.add_argument("--constraint")
    g.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="extra sbatch option (repeatable)")
    g.add_argument("--setup", action="append", metavar="LINE", help="shell line run before the job (repeatable)")
    g.add_argument("--array-parallelism", type=int, metavar="N", help="at most N tasks of an array at once")
    p.add_argument("--pack", type=int, metavar="K",
                   help="train up to K runs differing only in their loss side together (SLURM: in one job)")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SLURM options given on the command line."""
    out = {}
    for dest, name in CLI_FLAGS.items():
        v = getattr(args, dest, None)
        if v is not None and v != []:
            out[name] = parse_key_values(v, "--sbatch") if name == "sbatch" else v
    return out


def options_for(study_options: Mapping[str, Any], args: argparse.Namespace) -> SlurmOptions:
    return SlurmOptions.from_mapping(study_options.get("slurm")).merged(cli_overrides(args))


def reject_slurm_flags(args: argparse.Namespace) -> None:
    """For other executors: SLURM flags (all but --pack) are an error, not silently ignored."""
    for dest in CLI_FLAGS:
        if dest != "pack" and getattr(args, dest, None) not in (None, []):
            flag = "--time" if dest == "slurm_time" else "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag}: only with --executor slurm")


def launch(study: Any, store: RunStore, args: argparse.Namespace, out=None) -> int:
    """``tstudy launch --executor slurm``: submit what is missing, print job ids, return."""
    out = out or sys.stdout
    from tstudy.preflight import preflight

    opts = options_for(study.options, args)
    queue = read_queue()
    runs = study.runs()
    todo, live, notes = launch_plan(runs, store, queue)
    max_array = cluster_max_array_size() if shutil.which("scontrol") else DEFAULT_MAX_ARRAY_SIZE
    plans = plan_arrays(todo, waits_for_fn(todo, live), opts.pack, max_array)
    n_jobs = sum(len(p.jobs) for p in plans)
    print(f"study {study.name}: {_n(len(runs), 'run')}, {len(todo)} to submit as {_n(n_jobs, 'SLURM job')} in "
          f"{_n(len(plans), 'array')}, {len(live)} already queued or running"
          + (f" (pack {opts.pack})" if opts.pack > 1 else ""), file=out)
    for line in notes:
        print(f"  {line}", file=out)
    if args.dry_run:
        print_plan(plans, live, opts, study.name, out)
        return 0
    if not plans:
        return 0
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("--executor slurm: sbatch/srun not found; run this on a SLURM login node")
    preflight(study, store, todo, args.data_root)
    cancel_never_satisfied(runs, store, queue)
    submit(plans, store, opts, live, args.device, args.data_root, out, args.pack_mode, args.cuda_graphs)
    print(f"logs: {log_dir(store, opts)}/   follow with: tstudy status {study.source or study.name}"
          + (f" --root {args.root}" if args.root != "results" else ""), file=out)
    return 0


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def print_plan(plans: Sequence[ArrayPlan], live: Mapping[str, str], opts: SlurmOptions, study: str, out,
               per_array: int = 5) -> None:
    """The arrays ``launch`` would submit (the first ``per_array`` jobs of each) and the sbatch options."""
    for i, p in enumerate(plans):
        after = f" after teacher {p.after}" + (f" (job {live[p.after]})" if p.after in live else "") if p.after else ""
        print(f"  would submit array {i} of {_n(len(p.jobs), 'job')}{after}", file=out)
        for runs in p.jobs[:per_array]:
            if len(runs) == 1:
                r = runs[0]
                print(f"    {r.run_id} {r.model} {r.method} T={r.temperature} seed={r.seed}", file=out)
            else:
                print(f"    [{len(runs)} packed, {runs[0].model} seed={runs[0].seed}] "
                      + ", ".join(f"{r.method} T={r.temperature}" for r in runs), file=out)
        if len(p.jobs) > per_array:
            print(f"    ... {len(p.jobs) - per_array} more jobs", file=out)
    print(f"  sbatch parameters: {sbatch_parameters(opts, study)}", file=out)


def cancel_never_satisfied(runs: Sequence[RunConfig], store: RunStore, queue: Queue | None) -> None:
    """Cancel our jobs stuck on a dependency that can never be met (they are resubmitted)."""
    if queue is None:
        return
    ids = {e.job_id for r in runs if (e := queue.get(read_record(store.run_dir(r)).get("job_id")))
           and e.reason == NEVER}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60)


# =========================================================================== status
def run_note(store: RunStore, cfg: RunConfig, state: RunState, queue: Queue | None) -> tuple[str, str] | None:
    """(kind, text) that SLURM adds about an unfinished run with a job, kind one of queued,
    running, ended, unknown; None when the run is finished or was never submitted."""
    if state.status in FINISHED:
        return None
    rec = read_record(store.run_dir(cfg))
    job = rec.get("job_id")
    if not job:
        return None
    if queue is None:
        return "unknown", f"job {job} (squeue unavailable)"
    e = queue.get(job)
    if (e is not None and e.state in ACTIVE) or (state.status == RUNNING and (e is None or e.alive)):
        return "running", f"job {job} running"
    if e is not None and e.alive:
        return "queued", f"job {job} queued" + (f" ({e.reason})" if e.reason not in ("", "None") else "")
    ended = f"job {job} ended {e.state}" if e is not None else f"job {job} is no longer queued"
    t = cfg.teacher
    if isinstance(t, RunConfig) and (ts := store.state(t)).status != DONE:
        return "ended", f"{ended}: its teacher {t.run_id} is {ts.status}"
    tail = log_tail([rec.get("stderr"), rec.get("stdout")])
    return "ended", ended + (f": {tail}" if tail else "") + f" (log: {rec.get('stderr')})"


def status_lines(runs: Sequence[RunConfig], store: RunStore, show_all: bool = False, limit: int = 200) -> list[str]:
    """Lines for ``tstudy status``: counts of queued/running/ended SLURM jobs and a note per
    unfinished run that has one. Empty when no run of the study was ever submitted to SLURM."""
    have = [r for r in runs if (store.run_dir(r) / RECORD).exists()]
    if not have:
        return []
    queue = read_queue()
    notes = {r.run_id: n for r in have if (n := run_note(store, r, store.state(r), queue))}
    counts: dict[str, int] = {}
    for kind, _ in notes.values():
        counts[kind] = counts.get(kind, 0) + 1
    order = ("queued", "running", "ended", "unknown")
    head = "slurm: " + (", ".join(f"{counts[k]} {k}" for k in order if k in counts) + " (runs not done, by job)"
                        if counts else "no unfinished jobs")
    lines = [head + ("" if queue is not None else "; squeue unavailable: state from disk only")]
    items = list(notes.items())
    shown = items if show_all or len(items) <= limit else items[:limit]
    lines += [f"  {rid:16}  {text}" for rid, (_, text) in shown]
    if len(shown) < len(items):
        lines.append(f"  ... {len(items) - len(shown)} more (pass --all)")
    return lines
