"""Bookkeeping at scale: ``python -m tstudy.bench --bookkeeping N``.

Builds a root holding a real study of N finished students and its teacher (N + 1 runs), then
times ``plan``, ``status``, ``collect`` (cold: no earlier table; warm: nothing new), ``figures``
(from a cold table, so a full collect included) and ``launch --dry-run --pack 8``, each as a
subprocess, with its peak memory (``ru_maxrss`` of that child, from ``os.wait4``); and ``plan``
of a study ten times as large on an empty root. Writes JSON under ``results/bench/``.

The study is the quickstart recipe (digits, a CNN teacher, CNN students, 30 epochs, evaluated at
10, 20 and 30) over ``ce`` and KD at 9 temperatures, with as many seeds as it takes to reach N
students. Training 10,000 students is not the point: the teacher, one ``ce`` student and one KD
student are trained for real, and every other run's directory is a copy of the files of the
trained run of its method, under its own run id with its own ``config.json`` (the JSON says so).
``--recipe tiny`` (MLPs, 2 epochs) makes the same root in seconds, for tests.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tstudy import atomic
from tstudy.config import RunConfig
from tstudy.store import SETTLE_NS, RunStore
from tstudy.study import Study, load_study

STUDY = "bookkeeping"
PLAN_STUDY = "bookkeeping_plan"
TEMPERATURES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)  # with ce: 10 students per seed
RECIPES = {
    # (teacher kwargs, student kwargs): the quickstart's, and a tiny one for tests
    "quickstart": ("dict(dataset='digits', model='cnn_l', method='ce', epochs=30, lr=0.05, milestones=(0.5, 0.75))",
                   "dict(dataset='digits', model='cnn_s', method='kd', epochs=30, lr=0.05, milestones=(0.5, 0.75), "
                   "eval_epochs=(10, 20))"),
    "tiny": ("dict(dataset='digits', model='mlp_l', method='ce', epochs=2)",
             "dict(dataset='digits', model='mlp_s', method='kd', epochs=2, eval_epochs=(1,))"),
}
# metrics.arrow (the run summary) names neither the run nor its directory: its copy stays valid
TEMPLATE_FILES = ("status.json", "metrics.parquet", "metrics.arrow", "model.pt", "log.txt", "teacher_profile.npz")


def study_source(name: str, students: int, recipe: str) -> str:
    """A study file of ``students`` students (ce and KD at 9 temperatures per seed) and one teacher."""
    teacher, base = RECIPES[recipe]
    return f'''"""Bookkeeping benchmark study: {students} students ({recipe} recipe), written by tstudy.bench."""
from tstudy import RunConfig, Study

TEMPERATURES = {list(TEMPERATURES)!r}
SEEDS, REST = divmod({students}, len(TEMPERATURES) + 1)
RANK = {{t: i + 1 for i, t in enumerate(TEMPERATURES)}}  # ce is 0


def keep(c):
    """All students of the first SEEDS seeds, and the first REST of the next seed."""
    return c.seed < SEEDS or (c.seed == SEEDS and (0 if c.method == "ce" else RANK[c.temperature]) < REST)


teacher = RunConfig(**{teacher})
study = Study(name={name!r}, base=RunConfig(teacher=teacher, **{base}),
              axes={{"method": ["ce", "kd"], "temperature": TEMPERATURES}},
              seeds=list(range(SEEDS + (REST > 0))), where=keep)
'''


def write_study(path: Path, name: str, students: int, recipe: str) -> Study:
    atomic.write_bytes(path, study_source(name, students, recipe).encode())
    return load_study(path)


def templates(study: Study) -> dict[str, RunConfig]:
    """The runs trained for real: the teacher, the first ce student, the first KD student."""
    runs = study.runs()
    out = {"teacher": runs[0]}
    for r in runs[1:]:
        out.setdefault(r.method, r)
    return out


def train_templates(study: Study, store: RunStore, say: Callable[[str], None]) -> dict[str, RunConfig]:
    from tstudy.engine import RunEnv
    from tstudy.executors.local import run_local

    chosen = templates(study)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        results = run_local(list(chosen.values()), store, RunEnv(device="cpu"), progress=False, out=quiet)
    bad = {k: v for k, v in results.items() if v != "done"}
    if bad:
        raise RuntimeError(f"template runs did not finish: {bad}")
    say(f"trained {len(chosen)} template runs ({', '.join(chosen)}) in {time.perf_counter() - t0:.1f} s")
    return chosen


def replicate(study: Study, store: RunStore, chosen: dict[str, RunConfig]) -> int:
    """Every other run of the study: the files of the trained run of its method, its own config.json."""
    n = 0
    for cfg in study.runs():
        src = store.run_dir(chosen[cfg.method] if cfg.run_id != chosen["teacher"].run_id else cfg)
        d = store.run_dir(cfg)
        if d == src:
            continue
        d.mkdir(parents=True)
        # the root is built under a temporary name and renamed into place when complete, so
        # these plain copies are never seen half-written
        (d / "config.json").write_bytes(atomic.json_bytes(cfg.to_dict()))
        for name in TEMPLATE_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, d / name)
        n += 1
    return n


def build_root(root: Path, students: int, recipe: str, say: Callable[[str], None]) -> Study:
    """``root`` with the study of ``students`` finished students (reused when already built)."""
    marker = root / "bookkeeping.json"
    want = {"students": students, "recipe": recipe}
    if marker.exists() and json.loads(marker.read_text()) == want:
        say(f"reusing {root}")
        return load_study(root / f"{STUDY}.py")
    if root.exists():
        raise SystemExit(f"{root} exists and is not a bookkeeping root of {want}; remove it or pick another")
    tmp = root.with_name(f".{root.name}.building-{os.getpid()}")
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    study = write_study(tmp / f"{STUDY}.py", STUDY, students, recipe)
    store = RunStore(tmp, STUDY)
    chosen = train_templates(study, store, say)
    n = replicate(study, store, chosen)
    store.claim(str(root / f"{STUDY}.py"), (r.run_id for r in study.runs()))
    atomic.write_json(tmp / "bookkeeping.json", want)
    os.rename(tmp, root)
    say(f"built {root}: {len(study.runs())} runs ({n} copied from the templates) in {time.perf_counter() - t0:.1f} s")
    time.sleep(SETTLE_NS / 1e9)  # runs finished this recently are read again by every collect (racy stat keys)
    return load_study(root / f"{STUDY}.py")


# Runs the command and reports its wall time and peak memory. It is a small process of its own:
# a child forked from this (large) process would count this process's memory as its own peak.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=sys.stdout, stderr=subprocess.STDOUT)
_, status, usage = os.wait4(p.pid, 0)
json.dump({"seconds": time.perf_counter() - t0, "cpu_seconds": usage.ru_utime + usage.ru_stime,
           "peak_mb": usage.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status)}, open(sys.argv[1], "w"))
"""


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``: wall seconds, CPU seconds (user + system: on a shared machine, what an idle
    one would take), peak resident memory of the process (MB), exit code, and the first and last
    lines it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    got = log.with_suffix(".json")
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-c", LAUNCHER, str(got), *cmd], stdout=out, stderr=subprocess.STDOUT,
                       env=env, check=True)
    r = json.loads(got.read_text())
    lines = log.read_text(errors="replace").strip().splitlines()
    return {"seconds": round(r["seconds"], 3), "cpu_seconds": round(r["cpu_seconds"], 3),
            "peak_mb": round(r["peak_mb"], 1), "rc": r["rc"], "head": lines[:2], "tail": lines[-2:]}


def commands(root: Path, plan_root: Path) -> list[tuple[str, list[str], Callable[[], None] | None]]:
    """(name, tstudy arguments, preparation) in the order they are timed."""
    study, big = str(root / f"{STUDY}.py"), str(root / f"{PLAN_STUDY}.py")
    at = ["--root", str(root)]

    def drop_table() -> None:  # a cold collect: no table, no manifest from an earlier one
        from tstudy.results import MANIFEST, RESULTS

        for name in (RESULTS, MANIFEST):
            (root / STUDY / name).unlink(missing_ok=True)

    return [("plan", ["plan", study, *at], None),
            ("plan_10x_empty_root", ["plan", big, "--root", str(plan_root)], None),
            ("status", ["status", study, *at], None),
            ("collect_cold", ["collect", study, *at], drop_table),
            ("collect_warm", ["collect", study, *at], None),
            ("figures_cold", ["figures", study, *at], drop_table),
            ("launch_dry_run_pack8", ["launch", study, *at, "--dry-run", "--pack", "8"], None)]


def host_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "-", socket.gethostname().lower()).strip("-") or "host"


def run(students: int, recipe: str = "quickstart", keep: str | None = None, out: str | None = None,
        only: set[str] | None = None, say: Callable[[str], None] = print) -> dict:
    """Build (or reuse) the root, time the commands, write and return the report."""
    from tstudy.provenance import git_commit

    if students < 1:
        raise SystemExit(f"--bookkeeping: the number of students must be >= 1, got {students}")
    scratch = None
    if keep:
        root = Path(keep).resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="tstudy-bookkeeping-"))
        root = scratch / "root"
    try:
        load_before = os.getloadavg()
        study = build_root(root, students, recipe, say)
        write_study(root / f"{PLAN_STUDY}.py", PLAN_STUDY, 10 * students, recipe)
        plan_root = Path(tempfile.mkdtemp(prefix="tstudy-empty-root-"))
        rows = {}
        logs = root / "bench-logs"
        logs.mkdir(exist_ok=True)
        try:
            for name, args, prepare in commands(root, plan_root):
                if only and name not in only:
                    continue
                if prepare:
                    prepare()
                r = timed([sys.executable, "-m", "tstudy.cli", *args], logs / f"{name}.txt")
                rows[name] = r
                say(f"{name:22s} {r['seconds']:8.2f} s  (CPU {r['cpu_seconds']:6.2f} s)  {r['peak_mb']:8.1f} MB"
                    f"  rc {r['rc']}")
        finally:
            shutil.rmtree(plan_root, ignore_errors=True)
        import pandas as pd
        import pyarrow as pa

        table = root / STUDY / "results.parquet"
        report = {
            "students": students, "runs": len(study.runs()), "plan_10x_runs": 10 * students + 1, "recipe": recipe,
            "rows": len(pd.read_parquet(table, columns=["epoch"])) if table.exists() else None,
            "how": (f"the teacher, one ce and one KD student trained for real ({recipe} recipe); every other run "
                    "is a copy of the trained run of its method, under its own run id and config.json"),
            "commands": rows,
            "host": socket.gethostname(), "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "page_cache": "warm (the root was just built or read); cold means no earlier results table",
            "versions": {"python": platform.python_version(), "pandas": pd.__version__, "pyarrow": pa.__version__,
                         "tstudy_commit": git_commit()},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    path = Path(out) if out else Path("results/bench") / f"bookkeeping-{host_slug()}-{students}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, report)
    say(f"wrote {path}")
    return report
