"""Nothing lost: hard kills, corrupt artifacts, divergence, bad study files, concurrent launches,
disk full and read-only roots. Every test uses real processes/files where the issue asks for it."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.figures import acc_vs_temperature
from tstudy import RunConfig
from tstudy.cli import main
from tstudy.engine import RunEnv, train_run
from tstudy.results import collect
from tstudy.store import DIVERGED, DONE, FAILED, INCOMPLETE, NOT_LAUNCHED, RUNNING, RunStore
from tstudy.study import load_study

VOLATILE = ["wall_time_s", "images_per_s", "host", "git_commit"]
ROOT = Path(__file__).resolve().parents[1]

# A single run slow enough (batch 4: ~340 steps per epoch) to be killed in the middle of an epoch.
SLOW = """
from tstudy import RunConfig, Study
study = Study(name="slow", base=RunConfig(model="mlp_s", epochs=8, batch_size=4, eval_epochs=(2, 4, 6), lr=0.01))
"""

TINY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=2)
study = Study(name="tiny", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=3, eval_epochs=(1,)),
              axes={"temperature": [1, 4]}, seeds=[0])
"""


def write(tmp_path: Path, text: str, name: str = "study.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def metrics(store: RunStore, cfg: RunConfig) -> pd.DataFrame:
    return pd.read_parquet(store.run_dir(cfg) / "metrics.parquet").drop(columns=VOLATILE)


def tstudy_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from tstudy.cli import main; sys.exit(main())", *args]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------- hard kill
def test_kill_9_mid_epoch_then_relaunch_matches_uninterrupted(tmp_path):
    f = write(tmp_path, SLOW)
    cfg = load_study(f).runs()[0]
    ref, killed = RunStore(tmp_path / "ref", "slow"), RunStore(tmp_path / "killed", "slow")
    proc = subprocess.Popen(tstudy_cmd("launch", str(f), "--root", str(killed.root)), env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status = killed.run_dir(cfg) / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(status.read_text()).get("epoch", 0) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(0.1)  # well inside epoch 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = killed.state(cfg)
    assert state.status == INCOMPLETE and 3 <= state.epoch < 8, state
    assert (killed.run_dir(cfg) / "lock").exists()  # a dead owner's lock, taken over below
    assert main(["launch", str(f), "--root", str(killed.root)]) == 0
    train_run(cfg, ref, RunEnv())
    assert killed.state(cfg).status == DONE
    pd.testing.assert_frame_equal(metrics(ref, cfg), metrics(killed, cfg))
    m = metrics(killed, cfg)
    assert sorted(zip(m["epoch"], m["split"])) == sorted((e, s) for e in (2, 4, 6, 8) for s in ("train", "test"))


@pytest.mark.parametrize("workers, to", [("1", "group"), ("2", "group"), ("2", "parent")])
def test_ctrl_c_is_one_line_exit_130_and_stops_the_workers(tmp_path, workers, to):
    """Ctrl-C on a terminal signals the whole process group ("group"); `kill -INT` only the
    launching process ("parent"): either way one line, exit code 130, every worker gone, and
    each run interrupted with its checkpoint, not left running."""
    f = write(tmp_path, SLOW.replace('lr=0.01))', 'lr=0.01), seeds=[0, 1])'))
    store = RunStore(tmp_path / "root", "slow")
    runs = load_study(f).runs()
    proc = subprocess.Popen(tstudy_cmd("launch", str(f), "--root", str(store.root), "--workers", workers,
                                       "--threads", "1"),
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    training = int(workers)  # runs training at once
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        epochs = [store.state(r).epoch for r in runs]
        if sum(e >= 1 for e in epochs) >= training:
            break
        time.sleep(0.05)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1] == ("tstudy: interrupted: launch of study 'slow' stopped; launch again to resume "
                         "(each run restarts from its last checkpoint)"), err
    assert sum(ln.startswith("tstudy:") for ln in lines) == 1, err
    for _ in range(300):  # the workers (same process group) are gone
        if not _live_in_group(proc.pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker processes outlived the interrupted launch: {_live_in_group(proc.pid)}")
    for r in runs:
        state = store.state(r)
        assert state.status in (INCOMPLETE, NOT_LAUNCHED), state
        assert not (store.run_dir(r) / "lock").exists()
    assert any(store.state(r).epoch >= 1 and "interrupted" in store.state(r).reason for r in runs)


def _live_in_group(pgid: int) -> list[str]:
    """The processes of a process group that still run (an exited process not yet reaped by
    init, e.g. multiprocessing's resource tracker, does not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(stat.parent.name)
    return live


# --------------------------------------------------------------------------- corrupt artifacts
@pytest.fixture
def tiny(tmp_path):
    f = write(tmp_path, TINY)
    study = load_study(f)
    store = RunStore(tmp_path / "root", "tiny")
    return f, study, store


def test_truncated_checkpoint_restarts_and_matches(tiny, tmp_path):
    f, study, store = tiny
    teacher, student = study.runs()[0], study.runs()[1]
    train_run(teacher, store, RunEnv())
    train_run(student, store, RunEnv(stop_after_epoch=2))
    ck = store.run_dir(student) / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    assert store.state(student).status == DONE
    assert list(store.run_dir(student).glob("checkpoint.pt.corrupt-*"))  # kept, not deleted
    ref = RunStore(tmp_path / "ref", "tiny")
    train_run(teacher, ref, RunEnv())
    train_run(student, ref, RunEnv())
    pd.testing.assert_frame_equal(metrics(ref, student), metrics(store, student))


def test_truncated_metrics_marks_incomplete_collect_skips_launch_recovers(tiny, capsys):
    f, study, store = tiny
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    victim = study.runs()[2]
    good = metrics(store, victim)
    m = store.run_dir(victim) / "metrics.parquet"
    m.write_bytes(m.read_bytes()[:-20])
    state = store.state(victim)
    assert state.status == INCOMPLETE and "metrics.parquet" in state.reason
    df, skipped = collect(study, store)
    assert victim.run_id not in set(df["run_id"]) and any(victim.run_id in s for s in skipped)
    capsys.readouterr()
    assert main(["collect", str(f), "--root", str(store.root)]) == 0
    assert f"left out {victim.run_id}" in capsys.readouterr().out
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    assert store.state(victim).status == DONE
    pd.testing.assert_frame_equal(good, metrics(store, victim))
    assert list(store.run_dir(victim).glob("metrics.parquet.corrupt-*"))


def test_config_json_of_another_run_is_set_aside(tiny):
    f, study, store = tiny
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    a, b = study.runs()[1], study.runs()[2]
    (store.run_dir(a) / "config.json").write_text(json.dumps(b.to_dict()))
    state = store.state(a)
    assert state.status == INCOMPLETE and "hashes to" in state.reason
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    assert store.state(a).status == DONE
    aside = list(store.run_dir(a).glob("corrupt-*"))
    assert aside and (aside[0] / "metrics.parquet").exists()
    assert json.loads((store.run_dir(a) / "config.json").read_text()) == a.to_dict()


def test_unreadable_status_is_incomplete_and_resumes(tiny):
    f, study, store = tiny
    teacher, student = study.runs()[0], study.runs()[1]
    train_run(teacher, store, RunEnv())
    train_run(student, store, RunEnv(stop_after_epoch=2))
    (store.run_dir(student) / "status.json").write_text("{not json")
    assert store.state(student).status == INCOMPLETE
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    assert store.state(student).status == DONE


# --------------------------------------------------------------------------- divergence
def test_divergence_ends_one_run_and_the_study_goes_on(tmp_path):
    f = write(tmp_path, TINY.replace('axes={"temperature": [1, 4]}',
                                     'axes={"temperature": [1, 4], "lr": [0.05, 1e30]}'))
    study = load_study(f)
    store = RunStore(tmp_path / "root", "tiny")
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    states = {r.run_id: store.state(r) for r in study.students()}
    bad = [r for r in study.students() if r.lr > 1]
    assert all(states[r.run_id].status == DIVERGED for r in bad)
    assert all(states[r.run_id].status == DONE for r in study.students() if r.lr < 1)
    assert all("non-finite" in states[r.run_id].reason for r in bad)
    assert main(["launch", str(f), "--root", str(store.root)]) == 0  # diverged is final: not rerun
    df, _ = collect(study, store)
    assert set(df.loc[df["status"] == "diverged", "run_id"]) == {r.run_id for r in bad}
    fig = acc_vs_temperature(df)
    marks = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "diverged"]
    assert marks and sum(len(c.get_offsets()) for c in marks) == len(bad)


# --------------------------------------------------------------------------- bad study files
BAD_STUDIES = [
    ('axes={"temprature": [1]}', "unknown field 'temprature'"),
    ('axes={"method": ["kdd"]}', "method: unknown method 'kdd'; valid: "),
    ('axes={"model": ["resnet2O"]}', "model: unknown model 'resnet2O'; valid: "),
    ('axes={"dataset": ["digitz"]}', "dataset: unknown dataset 'digitz'; valid: "),
    ('axes={"optimizer": ["sgdd"]}', "optimizer: unknown value 'sgdd'; valid: sgd, adam, adamw"),
    ('axes={"temperature": [0]}', "temperature: must be a finite number > 0"),
    ('axes={"temperature": [-2.0]}', "temperature: must be a finite number > 0"),
    ('axes={"temperature": [float("nan")]}', "temperature: must be a finite number > 0"),
    ('axes={"temperature": []}', "is empty"),
    ('axes={"temperature": [1, 2, 2]}', "duplicate value 2"),
    ('axes={"batch_size": [0]}', "batch_size: must be >= 1"),
    ('axes={"eval_epochs": [(5,)]}', "eval_epochs: epoch 5 is outside 1..epochs=3"),
    ('axes={"teacher": [None]}', "teacher: method 'kd' needs a teacher"),
    ('axes={"lr": [-0.1]}', "lr: must be a finite number > 0"),
    ('axes={"method_params": [{"alpha": 1}]}', "method_params: unknown parameter 'alpha' for method 'kd'"),
    ('axes={"method_params": [{"w_kd": -1}]}', "method_params.w_kd"),
    ('axes={("method", "temperature"): [("ctkd", 30)]}', "temperature: for method 'ctkd'"),
]


@pytest.mark.parametrize("axes, message", BAD_STUDIES)
def test_bad_study_rejected_before_anything_is_written(tmp_path, capsys, axes, message):
    f = write(tmp_path, TINY.replace('axes={"temperature": [1, 4]}', axes))
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tstudy: error: ") and "\n" not in err and message in err, err
    assert not root.exists()


@pytest.mark.parametrize("text, message", [
    ("from tstudy import RunConfig, Study\nstudy = Study(name='x', base=RunConfig(method='ce', "
     "teacher=RunConfig(model='mlp_l')))\n", "teacher: method 'ce' takes no teacher"),
    ("study = (\n", "syntax error"),
    ("from tstudy import RunConfig\nx = RunConfig()\n", "must define `study = Study(...)`"),
    ("from tstudy import RunConfig, Study\nstudy = Study(name='x', base=RunConfig(dataset='cifar100', "
     "model='resnet20', epochs=1))\n", "cifar100"),
])
def test_bad_study_files(tmp_path, capsys, text, message):
    f = write(tmp_path, text)
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_missing_data_root(tmp_path, capsys):
    f = write(tmp_path, TINY)
    assert main(["launch", str(f), "--root", str(tmp_path / "root"), "--data-root", "/no/such/dir"]) == 2
    assert "--data-root: '/no/such/dir' is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_two_studies_with_one_name_under_one_root(tmp_path, capsys):
    a = write(tmp_path, TINY, "a.py")
    b = write(tmp_path, TINY.replace('"temperature": [1, 4]', '"temperature": [2]'), "b.py")
    root = tmp_path / "root"
    assert main(["launch", str(a), "--root", str(root)]) == 0
    capsys.readouterr()
    assert main(["launch", str(b), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "name: study 'tiny'" in err and "belongs to" in err and str(a.resolve()) in err
    assert len(list((root / "runs").iterdir())) == 3  # b trained nothing


# --------------------------------------------------------------------------- concurrent launches
@pytest.mark.parametrize("workers", ["1", "2"])
def test_two_concurrent_launches_train_each_run_once(tmp_path, workers):
    f = write(tmp_path, TINY.replace('seeds=[0]', 'seeds=[0, 1, 2]'))
    root = tmp_path / "root"
    cmd = tstudy_cmd("launch", str(f), "--root", str(root), "--workers", workers, "--threads", "1")
    procs = [subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = load_study(f)
    store = RunStore(root, "tiny")
    for r in study.runs():
        assert store.state(r).status == DONE
        log = (store.run_dir(r) / "log.txt").read_text().splitlines()
        epochs = [line for line in log if f"{r.run_id} epoch " in line]
        assert len(epochs) == r.epochs, (r.run_id, log)  # trained once: one line per epoch


def test_live_lock_is_respected_and_dead_lock_taken_over(tiny):
    f, study, store = tiny
    teacher = study.runs()[0]
    d = store.run_dir(teacher)
    d.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (d / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        assert store.state(teacher).status in (RUNNING, "not launched")
        assert main(["launch", str(f), "--root", str(store.root)]) == 0
        assert store.state(teacher).status != DONE  # left to its live owner
        assert not (d / "model.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["launch", str(f), "--root", str(store.root)]) == 0  # owner dead: taken over
    assert all(store.state(r).status == DONE for r in study.runs())


# --------------------------------------------------------------------------- disk full, read-only
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def can_mount(tmp_path):
    probe = tmp_path / "probe"
    if not _mount_tmpfs(probe, "1m"):
        if os.environ.get("CI"):
            pytest.fail("CI must be able to mount a tmpfs (root) for the disk-full test")
        pytest.skip("cannot mount a tmpfs here (not root)")
    _umount(probe)


def test_disk_full_leaves_nothing_done_and_relaunch_finishes(tmp_path, can_mount, capsys):
    f = write(tmp_path, TINY)
    root = tmp_path / "small"
    assert _mount_tmpfs(root, "600k")  # the teacher's checkpoint (~1 MB) does not fit
    try:
        code = main(["launch", str(f), "--root", str(root)])
        study = load_study(f)
        store = RunStore(root, "tiny")
        states = [store.state(r).status for r in study.runs()]
        assert code == 1 and DONE not in states, states
        assert store.state(study.runs()[0]).status in (FAILED, INCOMPLETE)
        assert not list((store.run_dir(study.runs()[0])).glob(".tmp-*"))  # no half-written file left
    finally:
        _umount(root)
    assert main(["launch", str(f), "--root", str(root)]) == 0


def test_read_only_root_is_a_clear_error(tmp_path, can_mount, capsys):
    f = write(tmp_path, TINY)
    root = tmp_path / "ro"
    assert _mount_tmpfs(root, "1m")
    try:
        assert subprocess.run(["mount", "-o", "remount,ro", str(root)]).returncode == 0
        assert main(["launch", str(f), "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert "--root: cannot write under" in err and "read-only file system" in err
    finally:
        _umount(root)


def test_model_too_big_for_the_input_is_refused_before_launch(tmp_path, capsys):
    f = write(tmp_path, TINY.replace('axes={"temperature": [1, 4]}', 'axes={"model": ["tv_convnext_tiny"]}'))
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "tv_convnext_tiny" in err and "\n" not in err, err
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())
