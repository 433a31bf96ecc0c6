"""Train the Tiny-ImageNet studies on one GPU within a time budget (how the committed results
were made): the teacher (once, its softmax profile exported), then the
student packs in priority order, each started only if it is expected to finish before the
deadline. After each step the run directories' small files are archived to ``--out``.

    PYTHONPATH=$PWD python studies/tiny_imagenet/gpu_session.py --data-root DIR --deadline 480 --out OUT

A CPU check on a few images per class: add ``--root /tmp/tin --set epochs=1 --set teacher.epochs=1
--set "eval_epochs=()" --set batch_size=256``.

Not a study file. The state lives in the run directories, so a second session continues
where the first stopped (finished runs are never retrained).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(HERE)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tstudy import atomic  # noqa: E402
from tstudy.engine import RunEnv, train_runs  # noqa: E402
from tstudy.executors.local import local_plan  # noqa: E402
from tstudy.store import RunStore  # noqa: E402
from tstudy.study import load_study  # noqa: E402

import tin_recipe  # noqa: E402

T_GRID = sorted({*np.round(np.geomspace(0.5, 64, 29), 4).tolist(), *map(float, tin_recipe.TEMPERATURES)})
SKIP = {"checkpoint.pt", "teacher_profile.npz", "lock"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def archive(root: Path, out: Path | None) -> None:
    """Small files of every run (no checkpoints, no raw teacher profile) and the exported teacher
    in results.tar.gz; the runs' weights in models.tar, split into parts of at most 15 MiB (the
    device returns files up to 16 MiB)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, keep in (("results.tar.gz", lambda p: p.name != "model.pt"),
                       ("models.tar", lambda p: p.name == "model.pt")):
        tmp = out / (name + ".tmp")
        mode = "w:gz" if name.endswith("gz") else "w"
        with tarfile.open(tmp, mode) as tar:
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.name not in SKIP and not p.name.endswith(".tmp") and keep(p):
                    tar.add(p, arcname=str(p.relative_to(root.parent)))
        os.replace(tmp, out / name)
    whole = out / "models.tar"
    for old in out.glob("models.tar.part*"):
        old.unlink()
    if whole.stat().st_size > 15 * 2**20:  # cat models.tar.part* > models.tar
        with open(whole, "rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(15 * 2**20), b"")):
                (out / f"models.tar.part{i:02d}").write_bytes(chunk)
        whole.unlink()


def export_teacher(store: RunStore, teacher, dest: Path) -> None:
    """The teacher's softmax statistics on the un-augmented training set at a grid of T (what
    Fig. 4 and the entropy table need) -> ``dest`` (``<root>/teacher/softmax_profile.npz``)."""
    from analysis.figures import softmax_profile
    from tstudy.teacher_profile import read_teacher_profile

    d = store.run_dir(teacher)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prof = read_teacher_profile(d)
    logits = torch.from_numpy(prof["train_logits"])
    rows = [softmax_profile(logits, t) for t in T_GRID]
    buf = io.BytesIO()
    np.savez(buf, temperatures=np.array(T_GRID), sorted=np.stack([r["sorted"] for r in rows]),
             entropy=np.array([r["entropy"] for r in rows]), max_prob=np.array([r["max_prob"] for r in rows]),
             test_acc1=prof["test_acc1"], test_acc5=prof["test_acc5"], n_train=len(prof["train_logits"]))
    atomic.write_bytes(dest, buf.getvalue())
    log(f"teacher exported: test acc1 {float(prof['test_acc1']):.2f}, acc5 {float(prof['test_acc5']):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(REPO / "results" / "tiny_imagenet"))
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--deadline", type=float, default=480, help="seconds from start: no pack starts that would end later")
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="FIELD=VALUE on every study (tests)")
    a = ap.parse_args()
    t_start = time.time()
    root, out = Path(a.root), Path(a.out) if a.out else None
    env = RunEnv(device="cuda" if torch.cuda.is_available() else "cpu", data_root=a.data_root)
    env.on_epoch = lambda cfg, e, info: log(
        f"{cfg.run_id} {cfg.method} T={cfg.temperature} s={cfg.seed} {cfg.precision} epoch {e}/{cfg.epochs} "
        f"loss {info['train_loss']:.3f}" + (f" acc1 {info['test_acc1']:.2f}" if "test_acc1" in info else ""))
    timings = []

    def load(name: str):
        from tstudy.study import parse_sets
        s = load_study(HERE / name)
        return s.override(parse_sets(a.sets)) if a.sets else s

    teacher_study = load("teacher.py")
    tstore = RunStore(root, teacher_study.name)
    (teacher,) = teacher_study.runs()
    t0 = time.time()
    train_runs([teacher], tstore, env)
    timings.append({"what": "teacher", "runs": [teacher.run_id], "k": 1, "seconds": time.time() - t0})
    log(f"teacher {teacher.run_id}: {tstore.state(teacher).status} in {time.time() - t0:.1f} s")
    profile = root / "teacher" / "softmax_profile.npz"
    if not profile.exists():
        export_teacher(tstore, teacher, profile)
    archive(root, out)

    tier1, prec = load("tier1.py"), load("precision_check.py")
    stores = {s.name: RunStore(root, s.name) for s in (tier1, prec)}
    plan = []  # (study, runs) in priority order
    for seed in tin_recipe.SEEDS:
        for method in ("kd", "ce"):
            plan.append((tier1, [r for r in tier1.runs() if r.method == method and r.seed == seed]))
    plan.append((prec, [r for r in prec.runs() if r.precision == "fp32"]))
    for seed in tin_recipe.SEEDS:
        plan.append((tier1, [r for r in tier1.runs() if r.method not in ("kd", "ce") and r.seed == seed]))
    per_unit = None  # measured seconds per (student-epoch-step unit), see cost()

    def cost(group) -> float:  # a pack's steps cost ~ (2 + K) units (teacher forward and overhead ~ 2 students)
        c = group[0]
        n_train = 100_000
        return c.epochs * -(-n_train // c.batch_size) * (2 + len(group)) * (2 if c.precision == "fp32" else 1)

    for study, runs in plan:
        store = stores[study.name]
        for group in (list(p.runs) for p in local_plan(runs, store, 32).packs):
            left = t_start + a.deadline - time.time()
            est = cost(group) * per_unit if per_unit else 0.0
            if est > left:
                log(f"skip {len(group)} {group[0].method}... seed {group[0].seed}: ~{est:.0f} s > {left:.0f} s left")
                continue
            t0 = time.time()
            res = train_runs(group, store, env)
            dt = time.time() - t0
            per_unit = dt / cost(group) if per_unit is None else max(per_unit, 0.5 * per_unit + 0.5 * dt / cost(group))
            timings.append({"what": study.name, "runs": [c.run_id for c in group], "k": len(group),
                            "methods": sorted({c.method for c in group}), "seed": group[0].seed,
                            "precision": group[0].precision, "seconds": dt,
                            "status": sorted({s.status for s in res.values()})})
            log(f"pack of {len(group)} ({', '.join(sorted({c.method for c in group}))}) seed {group[0].seed} "
                f"{group[0].precision}: {dt:.1f} s ({res and sorted({s.status for s in res.values()})})")
            atomic.write_json(root / "gpu_timings.json", {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                                                          "torch": torch.__version__, "packs": timings})
            archive(root, out)
    atomic.write_json(root / "gpu_timings.json", {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                                                  "torch": torch.__version__, "packs": timings})
    archive(root, out)
    log(f"done in {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
