"""Write ``legacy_root.tar.gz``: a root in the per-study layout of tstudy before the shared run
store (commit 0bfd0a0), for tests/test_migrate.py. Run it with that tstudy on the path:

    git worktree add /tmp/old 0bfd0a0 && PYTHONPATH=/tmp/old python tests/data/make_legacy_root.py

Two studies name the same teacher, so each trained its own copy; ``beta``'s KD run stopped
after epoch 1 (a checkpoint, not done).
"""
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from tstudy.engine import RunEnv, train_run
from tstudy.executors.local import run_local
from tstudy.store import RunStore
from tstudy.study import load_study

ALPHA = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_s", epochs=2)
study = Study(name="alpha", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=3, eval_epochs=(1,)),
              axes={"temperature": [1, 4]})
"""
BETA = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_s", epochs=2)
study = Study(name="beta", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=3, temperature=2),
              axes={"method": ["ce", "kd"]})
"""

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(__file__).resolve().with_name("legacy_root.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "legacy"
        root = base / "root"
        base.mkdir()
        for name, text in (("alpha", ALPHA), ("beta", BETA)):
            (base / f"{name}.py").write_text(text)
            study = load_study(base / f"{name}.py")
            store = RunStore(root, name)
            store.claim(study.source)
            runs = study.runs()
            if name == "alpha":
                run_local(runs, store, RunEnv(), progress=False)
            else:
                teacher, ce, kd = runs
                run_local([teacher, ce], store, RunEnv(), progress=False)
                train_run(kd, store, RunEnv(stop_after_epoch=1))
        with tarfile.open(out, "w:gz") as tar:
            tar.add(base, arcname="legacy")
    print(out, os.path.getsize(out), "bytes", file=sys.stderr)
