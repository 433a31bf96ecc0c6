"""Carry out a plan: N workers train packs at once, teachers first (torch-free at import).

One worker trains in this process; N > 1 workers are processes of their own (spawned, so each
sets its GPU and thread count before torch starts), each pinned to one GPU when there are GPUs.
A pack starts as soon as a worker is free and its teacher is done. The run locks (taken by the
engine) keep the guarantee that no run trains twice, also with two launches at once. Used by the
local executor and, inside one SLURM job holding several GPUs, by the SLURM executor.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tstudy.config import RunConfig
from tstudy.lock import describe, read_lock
from tstudy.machine import Machine
from tstudy.planning import Pack
from tstudy.preemption import checkpoint_requested, preempt_signal, request_checkpoint
from tstudy.store import DONE, FAILED, INCOMPLETE, RUNNING, RunStore

SKIPPED = "skipped"
POLL_S = 1.0


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [v.strip() for v in env.split(",") if v.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(device: str, workers: int, visible: Sequence[str] | None = None) -> list[str | None]:
    """The GPU each worker is pinned to (a ``CUDA_VISIBLE_DEVICES`` entry), round robin over the
    visible GPUs; ``None`` per worker on the CPU or for an explicit ``cuda:K`` (all on K)."""
    if device != "cuda":
        return [None] * workers
    visible = visible_gpus() if visible is None else visible
    return [visible[i % len(visible)] for i in range(workers)] if visible else [None] * workers


def default_workers(device: str) -> int:
    """One worker per visible GPU; one on the CPU (or on one named GPU, ``cuda:K``)."""
    return max(1, len(visible_gpus())) if device == "cuda" else 1


def run_packs(packs: Sequence[Pack], store: RunStore, machine: Machine, workers: int = 1,
              threads: int | None = None, progress: "Progress | None" = None, env: Any = None,
              gpus: Sequence[str | None] | None = None, before: Callable[[], None] | None = None
              ) -> dict[str, Outcome]:
    """Train ``packs`` (in plan order) with ``workers`` at once; returns {run id: outcome}.

    When fewer packs are left than workers, the pack a worker takes is split (once) so that the
    others get a share of it instead of idling (packing changes no run's result).

    A pack waits while its teacher (``Pack.after``) is pending here or running elsewhere (saying
    so once per teacher, with the lock's owner); when the teacher ends other than done, the pack
    is skipped. ``env``: a ready ``RunEnv`` for a single worker in this process (data already
    loaded by preflight). ``threads``: torch threads per worker (None: leave torch's default, one
    worker only). ``before``: called once the
    worker processes are starting (they import torch meanwhile) and before any pack is sent,
    e.g. the preflight checks: when it raises, the workers are stopped and nothing has run.
    On Ctrl-C (KeyboardInterrupt) the worker processes are stopped at once, each run keeping its
    last checkpoint, and the interrupt goes on to the caller.
    """
    progress = progress or Progress(sum(len(p.runs) for p in packs), workers, tty=False, out=sys.stderr)
    pool: _Pool = _InProcess(store, machine, threads, progress, env) if workers == 1 else \
        _Processes(store, machine, workers, threads, progress, gpus or gpu_slots(machine.device, workers))
    results: dict[str, Outcome] = {}
    remaining = list(packs)
    pieces: set[int] = set()  # packs already split (a piece is not split again)
    waited: set[str] = set()  # teachers trained elsewhere that we said we wait for
    try:
        if before is not None:
            before()
        while remaining or pool.busy():
            here = {r.run_id for p in remaining for r in p.runs} | pool.running_ids()
            for p in list(remaining):  # packs whose teacher will never be done here
                if p.after is not None and p.after not in here:
                    st = store.state(p.after)
                    if st.status != DONE and st.status != RUNNING:
                        remaining.remove(p)
                        for r in p.runs:
                            results[r.run_id] = Outcome(SKIPPED, f"its teacher {p.after} is {st.status}")
                        progress.skipped(p, f"teacher {p.after} is {st.status}")
                    elif st.status == RUNNING and p.after not in waited:  # trained by another process
                        waited.add(p.after)
                        owner = describe(read_lock(store.run_dir(p.after) / "lock"))
                        progress.say(f"waiting for teacher {p.after}, trained by {owner}")
            if remaining and _preempted():  # checkpointing for pre-emption: start nothing new
                for p in remaining:
                    results.update({r.run_id: Outcome(INCOMPLETE, "pre-empted before it started") for r in p.runs})
                remaining = []
            while pool.free() and (p := _first_ready(remaining, here, store)) is not None:
                i = remaining.index(p)
                remaining.remove(p)
                if len(remaining) + 1 < workers and id(p) not in pieces:  # the tail: fewer packs than workers
                    p, *rest = p.split(workers - len(remaining))
                    remaining[i:i] = rest
                    pieces.update(map(id, rest))
                pool.start(p)
            if not pool.busy():
                if remaining:  # waiting for a teacher trained by another launch
                    time.sleep(POLL_S)
                continue
            for pack, outcomes in pool.wait():
                results.update(outcomes)
                progress.finished(pack, outcomes, store)
    except KeyboardInterrupt:
        pool.stop()
        raise
    finally:
        pool.close()
        progress.close()
    return results


def _preempted() -> bool:
    """Whether a pre-emption signal asked this process to checkpoint and stop."""
    return checkpoint_requested()


def _forward_preemption(signum: int, frame: Any) -> None:
    """The launching process's handler: stop dispatching, and pass the signal to the worker processes."""
    _checkpoint_now(signum, frame)
    for child in mp.active_children():  # the training workers only, not decoder processes
        if not child.name.startswith("tstudy-worker-"):
            continue
        with contextlib.suppress(OSError):
            os.kill(child.pid, signum)


def _first_ready(remaining: list[Pack], here: set[str], store: RunStore) -> Pack | None:
    for p in remaining:
        if p.after is None or (p.after not in here and store.state(p.after).status == DONE):
            return p
    return None


# =========================================================================== pools
class _Pool:
    def free(self) -> bool: ...
    def busy(self) -> bool: ...
    def running_ids(self) -> set[str]: ...
    def start(self, pack: Pack) -> None: ...
    def wait(self) -> list[tuple[Pack, dict[str, Outcome]]]: ...
    def close(self) -> None: ...

    def stop(self) -> None:
        """Interrupted: stop training now (this process's own training stops by the interrupt)."""


class _InProcess(_Pool):
    """One worker: train in this process, one pack at a time."""

    def __init__(self, store: RunStore, machine: Machine, threads: int | None, progress: "Progress",
                 env: Any) -> None:
        if env is None:
            env = _make_env(machine)
        if threads:
            import torch

            torch.set_num_threads(threads)
        env.on_epoch = lambda cfg, epoch, info: progress.epoch(0, cfg, epoch, info)
        env.on_step = lambda cfg, epoch, step, steps: progress.step(0, epoch, step, steps)
        self.store, self.env, self.progress, self.pack = store, env, progress, None

    def free(self) -> bool:
        return self.pack is None

    def busy(self) -> bool:
        return self.pack is not None

    def running_ids(self) -> set[str]:
        return set(self.pack.run_ids) if self.pack else set()

    def start(self, pack: Pack) -> None:
        self.pack = pack

    def wait(self) -> list[tuple[Pack, dict[str, Outcome]]]:
        pack, self.pack = self.pack, None
        self.progress.started(0, pack)
        return [(pack, _train(pack, self.store, self.env))]

    def close(self) -> None:
        pass


class _Processes(_Pool):
    """N spawned worker processes (not daemons: they may start decoder processes), fed one pack
    at a time each, each over a pipe of its own (no shared queues: no semaphores for
    multiprocessing's resource tracker to warn about)."""

    def __init__(self, store: RunStore, machine: Machine, workers: int, threads: int | None,
                 progress: "Progress", gpus: Sequence[str | None]) -> None:
        self.ctx = mp.get_context("spawn")
        self.store, self.machine, self.progress = store, machine, progress
        self.threads = threads or 1
        self.gpus = list(gpus)
        self.slots: list[dict] = []
        try:
            for i in range(workers):
                self.slots.append({"proc": None, "conn": None, "pack": None})
                self._spawn(i)
        except BaseException:  # the workers started so far are not left behind
            self.slots = [s for s in self.slots if s["proc"] is not None]
            self.stop()
            raise

    def _spawn(self, i: int) -> None:
        conn, child = self.ctx.Pipe()
        # Not a daemon: a streamed run starts decoder processes (a daemon may have no children);
        # close() and stop() always join the workers.
        proc = self.ctx.Process(target=worker_main, name=f"tstudy-worker-{i}", daemon=False,
                                args=(i, self.gpus[i], self.threads, self.machine, str(self.store.root),
                                      self.store.study, child))
        with _sigint_ignored():  # a terminal's Ctrl-C reaches the workers too: this process stops them
            proc.start()
        child.close()
        self.slots[i].update(proc=proc, conn=conn, pack=None)

    def free(self) -> bool:
        return any(s["pack"] is None for s in self.slots)

    def busy(self) -> bool:
        return any(s["pack"] is not None for s in self.slots)

    def running_ids(self) -> set[str]:
        return {rid for s in self.slots if s["pack"] for rid in s["pack"].run_ids}

    def start(self, pack: Pack) -> None:
        i = next(i for i, s in enumerate(self.slots) if s["pack"] is None)
        self.slots[i]["pack"] = pack
        try:
            self.slots[i]["conn"].send(pack.runs)
        except OSError:  # the worker died while idle: a new one takes the pack
            self.slots[i]["conn"].close()
            self._spawn(i)
            self.slots[i]["pack"] = pack
            self.slots[i]["conn"].send(pack.runs)
        self.progress.started(i, pack)

    def wait(self) -> list[tuple[Pack, dict[str, Outcome]]]:
        """Handle worker events until at least one pack ends (or a worker dies)."""
        done: list[tuple[Pack, dict[str, Outcome]]] = []
        while not done:
            ready = mp_connection.wait([s["conn"] for s in self.slots if s["pack"] is not None], timeout=POLL_S)
            for i, s in enumerate(self.slots):
                if s["conn"] not in ready:
                    continue
                try:
                    kind, payload = s["conn"].recv()
                except (EOFError, OSError):  # the worker died: its pack fails, a new worker takes its place
                    s["proc"].join(timeout=5)
                    why = f"worker {i} died (exit code {s['proc'].exitcode})"
                    done.append((s["pack"], {rid: Outcome(FAILED, why) for rid in s["pack"].run_ids}))
                    s["conn"].close()
                    self._spawn(i)
                    continue
                if kind == "epoch":
                    self.progress.epoch(i, *payload)
                elif kind == "step":
                    self.progress.step(i, *payload)
                elif kind == "done":
                    pack, s["pack"] = s["pack"], None
                    done.append((pack, payload))
        return done

    def close(self) -> None:
        """Ask every worker to finish (None), then wait up to 10 s before terminating it."""
        for s in self.slots:
            if s["proc"].is_alive():
                try:
                    s["conn"].send(None)
                except OSError:  # already gone
                    pass
        self._join(10, lambda proc: proc.terminate())

    def stop(self) -> None:
        """Interrupted: stop every worker now. SIGTERM is a KeyboardInterrupt in a worker: the
        engine marks its runs interrupted (their checkpoints kept) and releases their locks."""
        for s in self.slots:
            if s["proc"].is_alive():
                s["proc"].terminate()
        self._join(30, lambda proc: proc.kill())

    def _join(self, seconds: float, force: Callable[[Any], None]) -> None:
        """Wait for the workers (``seconds`` in all), then ``force`` those still alive."""
        deadline = time.monotonic() + seconds
        for s in self.slots:
            s["proc"].join(timeout=max(0.1, deadline - time.monotonic()))
            if s["proc"].is_alive():
                force(s["proc"])
                s["proc"].join()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process while inside, and so in the processes started inside
    (an ignored signal stays ignored across exec, and Python then installs no handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _checkpoint_now(signum: int, frame: Any) -> None:
    request_checkpoint()  # the leaf module: safe while this process is still importing the engine


def worker_main(i: int, gpu: str | None, threads: int, machine: Machine, root: str, study: str, conn: Any) -> None:
    """A worker process: pin the GPU and threads, then train each pack it receives on ``conn``
    until None, sending ("epoch" | "step" | "done", payload) back.
    It ignores SIGINT (the launching process decides) and stops quietly on SIGTERM."""
    try:
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(preempt_signal(), _checkpoint_now)  # checkpoint at the next step boundary, then stop
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        import torch

        torch.set_num_threads(threads)
        env = _make_env(machine.replace(device="cuda") if gpu is not None else machine)
        env.on_epoch = lambda cfg, epoch, info: conn.send(("epoch", (cfg, epoch, _small(info))))
        env.on_step = lambda cfg, epoch, step, steps: conn.send(("step", (epoch, step, steps)))
        store = RunStore(root, study)
        while (runs := conn.recv()) is not None:
            conn.send(("done", _train(Pack(tuple(runs)), store, env)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # stopped by (or lost) the launching process
        pass


def _small(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str))}


def _make_env(machine: Machine) -> Any:
    from tstudy.engine import RunEnv

    return RunEnv(machine)


def _train(pack: Pack, store: RunStore, env: Any) -> dict[str, Outcome]:
    """``engine.train_runs`` on one pack; an unexpected error fails the pack's runs, not the pool."""
    from tstudy.engine import train_runs

    try:
        return {rid: Outcome(st.status, st.reason) for rid, st in train_runs(list(pack.runs), store, env).items()}
    except Exception as e:  # noqa: BLE001 - reported per run; the run directory has the details
        return {rid: Outcome(FAILED, f"{type(e).__name__}: {e}") for rid in pack.run_ids}


# =========================================================================== progress
class Progress:
    """On a terminal: a bar over all runs and one line per worker (its pack, epoch and the step
    inside the epoch); else one plain line per epoch, prefixed by the worker when there are
    several. With ``say`` (a job's log), each epoch is the run log's line."""

    def __init__(self, n_runs: int, workers: int, tty: bool, out: Any,
                 say: Callable[[str], None] | None = None) -> None:
        self.n, self.workers, self.tty, self.out, self.ended = n_runs, workers, tty, out, 0
        self.log = say is not None
        self.say = say or (self._write if tty else (lambda line: print(line, file=out, flush=True)))
        self.bars: dict[int, Any] = {}
        self.posts: dict[int, str] = {}  # each worker's last epoch summary
        self.total = None
        if tty:
            from tqdm import tqdm

            self.total = tqdm(total=n_runs, desc="runs", position=0, file=out, dynamic_ncols=True)

    def started(self, slot: int, pack: Pack) -> None:
        if not self.tty:
            return
        from tqdm import tqdm

        if slot in self.bars:
            self.bars.pop(slot).close()
        cfg = pack.runs[0]
        what = f"{cfg.run_id} {cfg.method}" if len(pack.runs) == 1 else f"{len(pack.runs)} packed runs"
        label = (f"w{slot} " if self.workers > 1 else "") + what
        self.bars[slot] = tqdm(total=cfg.epochs, desc=label, position=slot + 1, leave=False, file=self.out,
                               dynamic_ncols=True)
        self.posts[slot] = ""

    def _write(self, line: str) -> None:
        """A line above the bars (a plain print would break them)."""
        from tqdm import tqdm

        tqdm.write(line, file=self.out)

    def step(self, slot: int, epoch: int, step: int, steps: int) -> None:
        """Progress inside an epoch (on a terminal only): ``epoch E: step S/N`` on the worker's line."""
        bar = self.bars.get(slot)
        if bar is not None:
            post = self.posts.get(slot, "")
            bar.set_postfix_str((post + ", " if post else "") + f"epoch {epoch}: step {step}/{steps}")

    def epoch(self, slot: int, cfg: RunConfig, epoch: int, info: dict) -> None:
        acc = f" test_acc1 {info['test_acc1']:.2f}" if "test_acc1" in info else ""
        bar = self.bars.get(slot)
        if bar is not None:
            bar.n = epoch
            self.posts[slot] = f"loss {info['train_loss']:.3f}{acc}"
            bar.set_postfix_str(self.posts[slot])
        elif self.log:  # a job log: the run log's line, then the worker
            from tstudy.engine import epoch_line

            self.say(epoch_line(cfg, epoch, info) + (f" (worker {slot})" if self.workers > 1 else ""))
        elif not self.tty:
            who = f"w{slot} " if self.workers > 1 else ""
            self.say(f"{who}[{self.ended}/{self.n} done] {cfg.run_id} {cfg.method} T={cfg.temperature} "
                     f"seed={cfg.seed} epoch {epoch}/{cfg.epochs} loss {info['train_loss']:.4f}{acc}")

    def finished(self, pack: Pack, outcomes: dict[str, Outcome], store: RunStore) -> None:
        self.ended += len(pack.runs)
        if self.total is not None:
            self.total.update(len(pack.runs))
        for rid, o in outcomes.items():
            if o.status == FAILED:
                error = store.run_dir(rid) / "error.txt"
                self.say(f"{rid}: FAILED: {o.reason}" + (f" (see {error})" if error.exists() else ""))
            elif o.status == RUNNING:
                self.say(f"{rid}: skipped, {o.reason}")
            elif o.status != DONE:
                self.say(f"{rid}: {o.status}: {o.reason}")

    def skipped(self, pack: Pack, why: str) -> None:
        self.ended += len(pack.runs)
        if self.total is not None:
            self.total.update(len(pack.runs))
        for r in pack.runs:
            self.say(f"{r.run_id}: skipped, {why}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        if self.total is not None:
            self.total.close()
            self.total = None
