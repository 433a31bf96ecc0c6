"""The SLURM executor: submit a study's missing runs as job arrays through submitit, and return.

- Teachers first: a student's job waits for its teacher's job (``afterok``); a teacher already
  done is not resubmitted and its students wait for nothing.
- Arrays are split into chunks no larger than the cluster's MaxArraySize.
- What to submit comes from the planning core (``tstudy.planning``), the same rules as the
  local executor; the queue adds what is queued or running. Each array task trains one pack
  (one run, or up to ``pack`` runs differing only in their loss side), or, on nodes with G GPUs,
  G packs at once (``packs_per_job``; the workers of ``executors.workers``, one per GPU).
- The submitted callable is checkpointable: on preemption or time limit submitit requeues it and
  it resumes every run from its run directory's checkpoint (the engine writes no duplicate rows).
- Job ids are recorded in each run directory (``slurm.json``); logs (one line per epoch) go to
  ``<root>/<study>/slurm/``. State is read from disk; ``squeue`` only adds queued/running.
  Nothing here uses ``sacct``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tstudy import atomic
from tstudy.config import RunConfig
from tstudy.errors import ConfigError
from tstudy.text import counted
from tstudy.executors.options import SlurmOptions, options_for
from tstudy.lock import read_lock
from tstudy.machine import Machine
from tstudy.planning import Pack, Plan, make_plan, states_with_teachers
from tstudy.store import DONE, FINISHED, INCOMPLETE, RUNNING, RunState, RunStore

DEFAULT_MAX_ARRAY_SIZE = 1001
RECORD = "slurm.json"
LOG_DIR = "slurm"
# squeue states of a job that will still run (or runs); DependencyNeverSatisfied never will.
ALIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                   "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})
NEVER = "DependencyNeverSatisfied"


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


# =========================================================================== arrays
@dataclass(frozen=True)
class ArrayPlan:
    """One job array: each entry of ``jobs`` is one array task (the packs it trains at once);
    ``after`` is the run id of the teacher every task waits for (None: wait for nothing)."""

    jobs: tuple[tuple[Pack, ...], ...]
    after: str | None = None

    @property
    def n_runs(self) -> int:
        return sum(len(p.runs) for job in self.jobs for p in job)


def plan_arrays(plan: Plan, packs_per_job: int = 1, max_array: int = DEFAULT_MAX_ARRAY_SIZE) -> list[ArrayPlan]:
    """The plan's packs as arrays, in order: those that wait for nothing (teachers among them)
    first, then one group per teacher waited for; ``packs_per_job`` packs per task, at most
    ``max_array`` tasks per array."""
    groups: dict[str | None, list[Pack]] = {None: []}
    for p in plan.packs:
        groups.setdefault(p.after, []).append(p)
    arrays = []
    for after, packs in groups.items():
        jobs = [tuple(c) for c in chunks(packs, packs_per_job)] if packs else []
        for chunk in chunks(jobs, max_array) if jobs else []:
            arrays.append(ArrayPlan(tuple(chunk), after))
    return arrays


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


def slurm_plan(runs: Sequence[RunConfig], store: RunStore, queue: Queue | None, pack: int = 1
               ) -> tuple[Plan, dict[str, str]]:
    """(the plan, {run id: live job id}): the planning core's rules, with what squeue says.

    A run whose job is queued or running is active (its students wait for that job); a run
    locked by a job that no longer runs is incomplete (resubmitted). A student can wait only for
    a teacher submitted now or in a live job; a teacher trained outside SLURM blocks it.
    """
    states = states_with_teachers(runs, store.state)
    live: dict[str, str] = {}
    for rid, st in states.items():
        if st.status in FINISHED:
            continue
        d = store.run_dir(rid)
        entry = queue.get(read_record(d).get("job_id")) if queue else None
        if entry is not None and entry.alive:
            live[rid] = entry.job_id
        elif st.status == RUNNING and _lock_job_dead(d, queue):
            states[rid] = RunState(INCOMPLETE, st.epoch, "its job is no longer running")
    return make_plan(runs, states, pack, active=live, waitable=live), live


# =========================================================================== the job
class TrainJob:
    """What one array task runs: its packs, one after another or (``workers`` > 1, one per GPU)
    at once, each run resuming from its run directory. Checkpointable (submitit duck-types
    :meth:`checkpoint`): on preemption or time limit submitit requeues the job and the new start
    resumes every run from disk."""

    def __init__(self, packs: Sequence[Sequence[RunConfig]], root: str, study: str, machine: Machine,
                 workers: int = 1) -> None:
        self.packs = tuple(tuple(p) for p in packs)
        self.root, self.study, self.machine, self.workers = root, study, machine, workers

    def settings(self) -> Machine:
        """The machine settings (a job pickled before :class:`Machine` kept them as attributes)."""
        return self.__dict__.get("machine") or Machine.from_mapping(self.__dict__)

    def job_packs(self) -> tuple[tuple[RunConfig, ...], ...]:
        """The packs (a job pickled before packs per job trained one pack, ``runs``)."""
        return getattr(self, "packs", None) or (tuple(self.runs),)

    def __call__(self) -> dict[str, str]:
        from tstudy.engine import resolve_device
        from tstudy.executors.workers import Progress, gpu_slots, run_packs
        from tstudy.preemption import preempt_signal

        packs = [Pack(p) for p in self.job_packs()]
        runs = [r for p in packs for r in p.runs]
        workers = max(1, min(getattr(self, "workers", 1), len(packs)))
        store = RunStore(self.root, self.study)
        machine = self.settings()
        machine = machine.replace(device=resolve_device(machine.device))
        threads = max(1, job_threads() // workers)
        start = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1
        _say(f"job {os.environ.get('SLURM_JOB_ID')} start #{start}, {len(runs)} run(s) in {len(packs)} pack(s), "
             f"{workers} at once on {machine.device}: "
             + ", ".join(f"{c.run_id} ({c.model} {c.method} T={c.temperature} seed={c.seed})" for c in runs))
        for cfg in runs:
            clear_dead_job_lock(store.run_dir(cfg))
        progress = Progress(len(runs), workers, tty=False, out=sys.stdout, say=_say)
        sig = preempt_signal()
        handover = _Handover(signal.getsignal(sig))
        signal.signal(sig, handover)  # requeue at once; every training process checkpoints at its next step
        try:
            outcomes = run_packs(packs, store, machine, workers, threads, progress,
                                 gpus=gpu_slots(machine.device, workers))
        finally:
            signal.signal(sig, handover.submitit)
        if handover.exit is not None:  # submitit requeued (or gave up on) this job: end as its handler would
            _say("pre-empted: runs checkpointed; this job ends (requeued by submitit)")
            raise handover.exit
        problems = []
        for run_id, o in outcomes.items():
            _say(f"run {run_id}: {o.status}" + (f": {o.reason}" if o.reason else ""))
            if o.status not in FINISHED:
                problems.append(f"{run_id} {o.status}: {o.reason}")
        if problems:  # a non-zero exit keeps `afterok` students from starting
            raise RuntimeError(f"{len(problems)} of {len(runs)} runs did not finish: " + "; ".join(problems))
        return {k: v.status for k, v in outcomes.items()}

    def checkpoint(self) -> Any:
        """Requeue this same job: every run resumes from its checkpoint on disk."""
        import submitit

        _say_now("preempted or timed out: requeued; runs resume from their checkpoints")
        return submitit.helpers.DelayedSubmission(self)


class _Handover:
    """The job's pre-emption handler: tell the training processes to checkpoint at their next step
    boundary (``workers._forward_preemption``), and at once run submitit's own handler (which calls
    :meth:`TrainJob.checkpoint`, requeues the job, then exits): its exit (or error) is kept in
    ``exit`` and raised once the training has stopped, so the job is requeued even when SLURM's kill
    comes before every run reaches a step boundary (an evaluation, a store build, a teacher wait)."""

    def __init__(self, submitit: Any) -> None:
        self.submitit, self.exit, self.called = submitit, None, False

    def __call__(self, signum: int, frame: Any) -> None:
        from tstudy.executors.workers import _forward_preemption

        _forward_preemption(signum, frame)
        if self.called or not callable(self.submitit):
            return
        self.called = True
        _say_now("pre-emption signal: requeueing now; the runs checkpoint at their next step")
        try:
            self.submitit(signum, frame)
        except (SystemExit, Exception) as e:  # noqa: BLE001 - raised after the training stops
            self.exit = e


def job_threads() -> int:
    """CPU threads for torch in a job: SLURM_CPUS_PER_TASK, else the CPUs this process may use."""
    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n and n.isdigit():
        return max(1, int(n))
    return max(1, len(os.sched_getaffinity(0)))


def _say(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tstudy: {line}", flush=True)


def _say_now(line: str) -> None:
    """``_say`` from a signal handler: straight to file descriptor 1 (a print there may be reentrant)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        return _say(line)
    with contextlib.suppress(OSError):
        os.write(fd, f"{time.strftime('%Y-%m-%d %H:%M:%S')} tstudy: {line}\n".encode())


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
def make_executor(folder: Path, opts: SlurmOptions, study: str, dependency: str | None) -> Any:
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_timeouts)
    ex.update_parameters(**sbatch_parameters(opts, study, dependency))
    return ex


def submit(arrays: Sequence[ArrayPlan], store: RunStore, opts: SlurmOptions, live: Mapping[str, str],
           machine: Machine, out=None) -> dict[str, str]:
    """Submit the arrays in order; record each job in its runs' directories. Returns {run id: job id}."""
    out = out or sys.stdout
    folder = log_dir(store, opts)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _submit_arrays(arrays, store, opts, live, machine, out, folder)
    except BaseException:
        if created:  # nothing left behind by a submission that failed at once
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def _submit_arrays(arrays: Sequence[ArrayPlan], store: RunStore, opts: SlurmOptions, live: Mapping[str, str],
                   machine: Machine, out: Any, folder: Path) -> dict[str, str]:
    job_of = dict(live)
    root = str(store.root.resolve())
    if machine.data_root:  # the jobs start elsewhere: absolute paths
        machine = machine.replace(data_root=str(Path(machine.data_root).resolve()))
    for n_done, array in enumerate(arrays):
        dep = f"afterok:{job_of[array.after]}" if array.after else None
        ex = make_executor(folder, opts, store.study, dep)
        with _sbatch_failure(folder, n_done):
            with ex.batch():
                jobs = [ex.submit(TrainJob([p.runs for p in packs], root, store.study, machine,
                                           workers=min(opts.job_packs, len(packs))))
                        for packs in array.jobs]
        for job, packs in zip(jobs, array.jobs):
            runs = [r for p in packs for r in p.runs]
            for r in runs:
                write_record(store.run_dir(r), job, runs, dep)
                job_of[r.run_id] = str(job.job_id)
        first = str(jobs[0].job_id).partition("_")[0]
        print(f"  submitted {'array' if len(jobs) > 1 else 'job'} {first} ({counted(len(jobs), 'job')}, "
              f"{counted(array.n_runs, 'run')})" + (f" after {dep.split(':', 1)[1]}" if dep else ""), file=out)
    return job_of


# what submitit writes before sbatch has answered: the pickled jobs, the sbatch script
_SUBMISSION_FILE = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")


@contextlib.contextmanager
def _sbatch_failure(folder: Path, submitted: int) -> Iterator[None]:
    """Around one array's submission: when it fails (or is interrupted), remove the files
    submitit wrote for it; a failed ``sbatch`` becomes one line with sbatch's own message
    (which submitit prints to stderr itself: captured here and folded into that line)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    before = set(os.listdir(folder))
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException as e:
        for name in set(os.listdir(folder)) - before:
            if _SUBMISSION_FILE.fullmatch(name):
                (folder / name).unlink(missing_ok=True)
        if not isinstance(e, (FailedJobError, FailedSubmissionError, OSError)):
            sys.stderr.write(captured.getvalue())
            raise
        lines = [ln.strip() for ln in f"{e}\n{captured.getvalue()}".splitlines() if ln.strip()]
        why = "; ".join(dict.fromkeys(lines))[:500] or type(e).__name__
        raise ConfigError(f"--executor slurm: submitting failed: {why}"
                          + (f" ({counted(submitted, 'array')} above submitted; launching again submits the rest)"
                             if submitted else " (nothing submitted)")) from None
    sys.stderr.write(captured.getvalue())


def log_dir(store: RunStore, opts: SlurmOptions) -> Path:
    return Path(opts.log_dir).expanduser().resolve() if opts.log_dir else (store.study_dir / LOG_DIR).resolve()


def launch(study: Any, store: RunStore, args: argparse.Namespace, machine: Machine, out=None) -> int:
    """``tstudy launch --executor slurm``: submit what is missing, print job ids, return."""
    out = out or sys.stdout
    from tstudy.preflight import check_device, preflight

    opts = options_for(study.options, args, "slurm")
    check_device(machine.device, here=False)  # the jobs' nodes have their own GPUs
    queue = read_queue()
    runs = study.runs()
    plan, live = slurm_plan(runs, store, queue, opts.pack)
    max_array = cluster_max_array_size() if shutil.which("scontrol") else DEFAULT_MAX_ARRAY_SIZE
    arrays = plan_arrays(plan, opts.job_packs, max_array)
    n_jobs = sum(len(a.jobs) for a in arrays)
    n_live = sum(r.run_id in live for r in runs)
    print(f"study {study.name}: {counted(len(runs), 'run')}, {len(plan.todo)} to submit as {counted(n_jobs, 'SLURM job')} in "
          f"{counted(len(arrays), 'array')}, {n_live} already queued or running"
          + (f" (pack {opts.pack})" if opts.pack > 1 else "")
          + (f" ({opts.job_packs} packs per job)" if opts.job_packs > 1 else ""), file=out)
    for rid, why in plan.blocked:
        print(f"  {rid}: not submitted, {why}", file=out)
    if args.dry_run:
        preflight(study, store, plan.todo, machine.data_root, dry_run=True)
        print_plan(arrays, live, opts, study.name, out)
        return 0
    if not arrays:
        return 0
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("--executor slurm: sbatch/srun not found; run this on a SLURM login node")
    preflight(study, store, plan.todo, machine.data_root)
    cancel_never_satisfied(runs, store, queue)
    submit(arrays, store, opts, live, machine, out)
    print(f"logs: {log_dir(store, opts)}/   follow with: tstudy status {study.source or study.name}"
          + (f" --root {args.root}" if args.root != "results" else ""), file=out)
    return 0


def print_plan(arrays: Sequence[ArrayPlan], live: Mapping[str, str], opts: SlurmOptions, study: str, out,
               per_array: int = 5) -> None:
    """The arrays ``launch`` would submit (the first ``per_array`` jobs of each) and the sbatch options."""
    for i, a in enumerate(arrays):
        after = f" after teacher {a.after}" + (f" (job {live[a.after]})" if a.after in live else "") if a.after else ""
        print(f"  would submit array {i} of {counted(len(a.jobs), 'job')}{after}", file=out)
        for packs in a.jobs[:per_array]:
            if len(packs) > 1:
                print(f"    [one job, {len(packs)} packs at once]", file=out)
            for p in packs:
                print(("      " if len(packs) > 1 else "    ") + _describe(p.runs), file=out)
        if len(a.jobs) > per_array:
            print(f"    ... {len(a.jobs) - per_array} more jobs", file=out)
    print(f"  sbatch parameters: {sbatch_parameters(opts, study)}", file=out)


def _describe(runs: Sequence[RunConfig]) -> str:
    if len(runs) == 1:
        r = runs[0]
        return f"{r.run_id} {r.model} {r.method} T={r.temperature} seed={r.seed}"
    return (f"[{len(runs)} packed, {runs[0].model} seed={runs[0].seed}] "
            + ", ".join(f"{r.method} T={r.temperature}" for r in runs))


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


def status_lines(runs: Sequence[RunConfig], store: RunStore, show_all: bool = False, limit: int = 200,
                 states: Mapping[str, RunState] | None = None) -> list[str]:
    """Lines for ``tstudy status``: counts of queued/running/ended SLURM jobs and a note per
    unfinished run that has one. Empty when no run of the study was ever submitted to SLURM.
    ``states``: the runs' states when already read."""
    have = [r for r in runs if (store.run_dir(r) / RECORD).exists()]
    if not have:
        return []
    queue = read_queue()
    states = states or {}
    notes = {r.run_id: n for r in have
             if (n := run_note(store, r, states.get(r.run_id) or store.state(r), queue))}
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
