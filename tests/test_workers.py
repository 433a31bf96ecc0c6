"""`tstudy launch --workers N`: N packs at once, teachers first, the same table as one worker
(bit for bit on the CPU at equal threads per run), one display line per worker on a terminal."""
import io

import pandas as pd
import pytest

from tstudy import RunConfig
from tstudy.cli import main
from tstudy.executors.workers import Progress, default_workers, gpu_slots
from tstudy.planning import Pack
from tstudy.results import collect
from tstudy.store import DONE, RunStore
from tstudy.study import load_study

VOLATILE = ["wall_time_s", "images_per_s", "git_commit", "host"]
STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=2)
study = Study(name="w", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=3, eval_epochs=(1,)),
              axes={"method": ["ce", "kd"], "temperature": [1, 4]}, seeds=[0, 1])
"""


def _table(f, root) -> pd.DataFrame:
    study = load_study(f)
    df, skipped = collect(study, RunStore(root, study.name))
    assert not skipped
    return df.drop(columns=VOLATILE).sort_values(["run_id", "epoch", "split"]).reset_index(drop=True)


@pytest.mark.parametrize("pack", [1, 2])
def test_two_workers_train_the_same_table_as_one(tmp_path, capsys, pack):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["launch", str(f), "--root", str(one), "--workers", "1", "--threads", "1", "--pack", str(pack)]) == 0
    capsys.readouterr()
    assert main(["launch", str(f), "--root", str(two), "--workers", "2", "--threads", "1", "--pack", str(pack)]) == 0
    cap = capsys.readouterr()
    assert "2 workers x 1 threads" in cap.out, cap.out
    assert "w0 [" in cap.err and "w1 [" in cap.err  # both workers trained
    a, b = _table(f, one), _table(f, two)
    assert len(a) and set(a["status"]) == {DONE}
    # the `pack` provenance column may differ (the last pack may be split between the workers)
    pd.testing.assert_frame_equal(a.drop(columns="pack"), b.drop(columns="pack"), check_exact=True)


def test_a_student_pack_starts_only_after_its_teacher(tmp_path):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    root = tmp_path / "r"
    assert main(["launch", str(f), "--root", str(root), "--workers", "2", "--threads", "1", "--pack", "2"]) == 0
    study = load_study(f)
    store = RunStore(root, "w")
    teacher = study.teachers()[0]
    done_at = (store.run_dir(teacher) / "model.pt").stat().st_mtime
    for r in study.runs():
        if r.method == "kd":  # each KD student's run directory was created after the teacher's weights
            assert (store.run_dir(r) / "config.json").stat().st_mtime >= done_at


def test_gpu_slots_pin_each_worker_to_one_gpu(monkeypatch):
    assert gpu_slots("cuda", 4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert gpu_slots("cuda:1", 2, ["0", "1"]) == [None, None] and gpu_slots("cpu", 2) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    assert default_workers("cuda") == 3 and gpu_slots("cuda", 3) == ["3", "5", "6"]
    assert default_workers("cpu") == 1 and default_workers("cuda:0") == 1


def test_a_terminal_shows_one_line_per_worker():
    out = io.StringIO()
    cfg = RunConfig(model="mlp_s", epochs=3)
    p = Progress(3, 2, tty=True, out=out)
    p.started(0, Pack((cfg,)))
    p.started(1, Pack((cfg.replace(seed=1), cfg.replace(seed=2))))
    assert sorted(p.bars) == [0, 1]  # one bar per worker, below the bar over all runs
    p.epoch(1, cfg.replace(seed=1), 1, {"train_loss": 0.5})
    p.close()
    text = out.getvalue()
    assert "w0 " in text and "w1 2 packed runs" in text


def test_bad_worker_counts_are_one_line(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), "--workers", "0"]) == 2
    assert "--workers: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), "--packs-per-job", "2"]) == 2
    assert "--packs-per-job: only with --executor slurm" in capsys.readouterr().err
    assert main(["launch", str(f), "--root", str(tmp_path / "r"), "--executor", "slurm", "--workers", "2",
                 "--dry-run"]) == 2
    assert "--workers: only with --executor local" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_worker_killed_fails_its_pack_and_the_others_go_on(tmp_path):
    """kill -9 of one worker: its run is failed (with the reason), a new worker takes its place,
    the other runs finish, and launching again finishes the killed run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    f = tmp_path / "slow.py"
    f.write_text('from tstudy import RunConfig, Study\n'
                 'study = Study(name="slow", base=RunConfig(model="mlp_s", epochs=4, batch_size=4, lr=0.01), '
                 'seeds=[0, 1, 2])\n')
    root = tmp_path / "root"
    cmd = [sys.executable, "-c", "import sys; from tstudy.cli import main; sys.exit(main())",
           "launch", str(f), "--root", str(root), "--workers", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store, runs = RunStore(root, "slow"), load_study(f).runs()
    deadline = time.time() + 120
    while time.time() < deadline and not any(store.state(r).epoch >= 1 for r in runs):
        time.sleep(0.05)
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if _ppid(p) == proc.pid and "spawn_main" in _cmdline(p.parent)]
    os.kill(children[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "FAILED: worker " in err and "died (exit code -9)" in err, err
    states = [store.state(r).status for r in runs]
    assert states.count(DONE) == 2, states
    assert main(["launch", str(f), "--root", str(root), "--workers", "2", "--threads", "1"]) == 0
    assert all(store.state(r).status == DONE for r in runs)


def _ppid(stat) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(d) -> str:
    try:
        return (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
