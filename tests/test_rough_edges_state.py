"""Issue 13, identity and state: a finished run with a damaged status.json stays finished (16),
a way out of locks left on other hosts (17), lock owners in words and students that say they
wait (18), teacher training-set logits only for the methods that read them (19), finished runs
outside the current expansion mentioned (20), progress inside epochs and while decoding data (22)."""
import io
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tstudy import RunConfig
from tstudy.cli import main
from tstudy.executors import workers
from tstudy.executors.workers import SKIPPED, Progress, run_packs
from tstudy.lock import LockHeld, RunLock
from tstudy.machine import Machine
from tstudy.method_specs import method_spec
from tstudy.planning import Pack
from tstudy.store import DONE, FAILED, INCOMPLETE, RUNNING, RunStore, write_status
from tstudy.study import load_study

TINY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=2)
study = Study(name="tiny", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=3, eval_epochs=(1,)),
              axes={"temperature": [1, 4]}, seeds=[0])
"""
ELSEWHERE = {"host": "another-host.invalid", "pid": 4242, "slurm_job": None, "time": 1767225600.0}


@pytest.fixture(scope="module")
def launched_once(tmp_path_factory):
    """TINY launched once (a teacher and two KD students, all done); tests copy the root."""
    tmp = tmp_path_factory.mktemp("launched")
    f = tmp / "study.py"
    f.write_text(textwrap.dedent(TINY))
    assert main(["launch", str(f), "--root", str(tmp / "root")]) == 0
    return f, tmp / "root"


@pytest.fixture
def launched(launched_once, tmp_path):
    f, root = launched_once
    shutil.copytree(root, tmp_path / "root", copy_function=shutil.copy2)
    study = load_study(f)
    return f, study, RunStore(tmp_path / "root", "tiny")


def _files(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir() if p.is_file()}


# --------------------------------------------------------------------------- 16
@pytest.mark.parametrize("damage", ["unreadable", "missing", "not an object"])
def test_damaged_status_of_a_finished_teacher_keeps_it_finished(launched, capsys, damage):
    f, study, store = launched
    teacher = study.teachers()[0]
    d = store.run_dir(teacher)
    before = json.loads((d / "status.json").read_text())
    kept = {k: v for k, v in _files(d).items() if k in ("model.pt", "metrics.parquet", "teacher_profile.npz")}
    if damage == "missing":
        (d / "status.json").unlink()
    else:
        (d / "status.json").write_text("{not json" if damage == "unreadable" else "[1, 2]")
    assert store.state(teacher).status == DONE  # plan, status, collect: still finished
    assert main(["launch", str(f), "--root", str(store.root)]) == 0
    assert "0 to launch" in capsys.readouterr().out  # nothing trained again
    assert {k: v for k, v in _files(d).items() if k in kept} == kept  # model and metrics untouched
    assert not list(d.glob("metrics.parquet.corrupt-*")) and not list(d.glob("model.pt.corrupt-*"))
    after = json.loads((d / "status.json").read_text())
    assert after["status"] == DONE and after["epoch"] == teacher.epochs
    assert after["test_acc1"] == before["test_acc1"] and after["train_acc1"] == before["train_acc1"]
    assert len(list(d.glob("status.json.corrupt-*"))) == (0 if damage == "missing" else 1)  # set aside, kept
    log = (d / "log.txt").read_text()
    assert "status.json rebuilt" in log and "nothing retrained" in log
    assert sum(f"{teacher.run_id} epoch " in line for line in log.splitlines()) == teacher.epochs  # trained once


def test_damaged_status_without_the_final_rows_is_not_taken_as_done(launched):
    f, study, store = launched
    student = study.students()[0]
    d = store.run_dir(student)
    m = pd.read_parquet(d / "metrics.parquet")
    m[m["epoch"] < student.epochs].to_parquet(d / "metrics.parquet", index=False)  # final rows gone
    (d / "status.json").write_text("{not json")
    assert store.state(student).status == INCOMPLETE
    assert (d / "status.json").read_text() == "{not json"  # nothing rewritten


# --------------------------------------------------------------------------- 17
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clean_stale_locks_lists_owners_asks_and_removes_only_those(launched, capsys, monkeypatch):
    f, study, store = launched
    teacher, s1, s2 = study.runs()
    for cfg in (teacher, s1):
        (store.run_dir(cfg) / "status.json").write_text(json.dumps({"status": "running", "epoch": 1}))
    (store.run_dir(teacher) / "lock").write_text(json.dumps(ELSEWHERE))  # a launch died on another host
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = {"host": socket.gethostname(), "pid": sleeper.pid, "slurm_job": None, "time": time.time()}
    (store.run_dir(s1) / "lock").write_text(json.dumps(live))
    base = ["clean", str(f), "--root", str(store.root)]
    try:
        assert store.state(teacher).status == RUNNING  # forever, until the lock goes
        capsys.readouterr()
        assert main(base) == 0
        assert "--stale-locks" in capsys.readouterr().out  # plain clean points the way out
        assert main(base + ["--stale-locks", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"{teacher.run_id}: locked by pid 4242 on host another-host.invalid since 2026-01-0" in out
        assert "would remove 1 lock file" in out and s1.run_id not in out  # a live lock here is not listed
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        assert main(base + ["--stale-locks"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "tstudy: error: clean: not a terminal; pass --yes to remove the locks without asking"
        monkeypatch.setattr(sys, "stdin", _Tty("n\n"))
        assert main(base + ["--stale-locks"]) == 0
        assert "no lock removed" in capsys.readouterr().out and (store.run_dir(teacher) / "lock").exists()
        monkeypatch.setattr(sys, "stdin", _Tty("y\n"))
        assert main(base + ["--stale-locks"]) == 0
        assert "removed 1 lock file" in capsys.readouterr().out
        assert not (store.run_dir(teacher) / "lock").exists() and (store.run_dir(s1) / "lock").exists()
        assert store.state(teacher).status == INCOMPLETE and store.state(s1).status == RUNNING
    finally:
        sleeper.kill()
        sleeper.wait()
    # a dead process's lock on this host is listed too, and --yes removes it without asking
    assert main(base + ["--stale-locks", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"pid {sleeper.pid} on host {socket.gethostname()}" in out and "process gone" in out
    assert not (store.run_dir(s1) / "lock").exists() and s2.run_id not in out


# --------------------------------------------------------------------------- 18
def test_a_held_lock_names_host_pid_and_since(tmp_path):
    (tmp_path / "lock").write_text(json.dumps(ELSEWHERE))
    with pytest.raises(LockHeld) as e:
        RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert msg.startswith(f"run {tmp_path.name} is being trained by pid 4242 on host another-host.invalid since 20")
    assert "{" not in msg


def test_students_say_once_that_they_wait_for_a_teacher_trained_elsewhere(tmp_path, monkeypatch):
    store = RunStore(tmp_path, "s")
    teacher = RunConfig(model="mlp_l", epochs=2)
    student = RunConfig(model="mlp_s", teacher=teacher, method="kd", temperature=4.0, epochs=2)
    d = store.run_dir(teacher)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(teacher.to_dict()))
    (d / "lock").write_text(json.dumps(ELSEWHERE))
    assert store.state(teacher).status == RUNNING
    polls = []

    def poll(seconds: float) -> None:  # the other launch fails its teacher after a few polls
        polls.append(seconds)
        if len(polls) == 5:
            write_status(d, FAILED, reason="boom")
            (d / "lock").unlink()

    monkeypatch.setattr(workers.time, "sleep", poll)
    lines: list[str] = []
    progress = Progress(2, 1, tty=False, out=io.StringIO(), say=lines.append)
    packs = [Pack((student,), after=teacher.run_id), Pack((student.replace(temperature=2.0),), after=teacher.run_id)]
    out = run_packs(packs, store, Machine(), progress=progress, env=SimpleNamespace())
    assert {o.status for o in out.values()} == {SKIPPED} and len(polls) == 5
    waiting = [ln for ln in lines if ln.startswith("waiting for teacher")]
    assert waiting == [f"waiting for teacher {teacher.run_id}, trained by pid 4242 on host another-host.invalid "
                       f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ELSEWHERE['time']))}"]


# --------------------------------------------------------------------------- 19
def test_which_methods_need_the_teachers_train_logits():
    from tstudy.methods import method_class

    for get in (method_spec, method_class):  # the torch-free spec and the method agree
        assert get("ls").needs_teacher_train_logits() and not get("ls").needs_teacher_train_logits({"epsilon": 0.1})
        assert not any(get(m).needs_teacher_train_logits() for m in ("ce", "kd", "dkd", "ctkd", "ttm", "kd_topk"))


def test_a_kd_student_does_not_load_the_teachers_train_logits(tmp_path, teacher_cfg, kd_cfg, monkeypatch):
    import tstudy.engine as engine
    from tstudy.engine import RunEnv, train_run

    store = RunStore(tmp_path, "s")
    assert train_run(teacher_cfg, store, RunEnv()).status == DONE
    real, calls = engine.teacher_train_logits, []

    def loader(cfg, *args):
        calls.append(cfg.method)
        if cfg.method != "ls":
            raise AssertionError(f"{cfg.method} loaded the teacher's training-set logits")
        return real(cfg, *args)

    monkeypatch.setattr(engine, "teacher_train_logits", loader)
    env = RunEnv()
    assert train_run(kd_cfg, store, env).status == DONE, store.state(kd_cfg)
    assert calls == []
    assert train_run(kd_cfg.replace(method="ls"), store, env).status == DONE
    assert calls == ["ls"]


# --------------------------------------------------------------------------- 20
def test_plan_status_collect_mention_finished_runs_outside_the_expansion(launched, capsys, tmp_path):
    f, study, store = launched
    base = ["--root", str(store.root)]
    for cmd in ("plan", "status", "collect"):
        assert main([cmd, str(f), *base]) == 0
        assert "note:" not in capsys.readouterr().out
        assert main([cmd, str(f), *base, "--set", "weight_decay=1e-4"]) == 0
        out = capsys.readouterr().out
        # the teacher is shared (weight_decay is not a data field): the two KD students are elsewhere
        assert (f"note: 2 finished runs of study 'tiny' under {store.root} are not in this expansion (--set): "
                f"`tstudy status {f} --root {store.root}` without --set lists them") in out, out
    assert main(["plan", str(f), *base, "--seeds", "1"]) == 0
    assert "note: 2 finished runs of study 'tiny'" in capsys.readouterr().out  # the teacher has no seed axis
    changed = tmp_path / "changed.py"  # the study file edited: one temperature fewer
    changed.write_text(textwrap.dedent(TINY).replace("[1, 4]", "[1]"))
    assert main(["plan", str(changed), *base]) == 0
    assert (f"note: 1 finished run of study 'tiny' under {store.root} is no longer named by the study file; "
            f"their ids are in {store.study_dir / 'study.json'}") in capsys.readouterr().out


# --------------------------------------------------------------------------- 22
def test_the_engine_reports_steps_inside_an_epoch(tmp_path, teacher_cfg, monkeypatch):
    import tstudy.engine as engine
    from tstudy.engine import RunEnv, train_run

    calls = []
    cfg = teacher_cfg.replace(epochs=1, batch_size=256)
    monkeypatch.setattr(engine, "STEP_REPORT_S", 0.0)  # every step
    env = RunEnv(on_step=lambda c, epoch, step, steps: calls.append((c.run_id, epoch, step, steps)))
    assert train_run(cfg, RunStore(tmp_path, "s"), env).status == DONE
    assert calls == [(cfg.run_id, 1, i, 6) for i in range(1, 7)]  # 1347 images: 6 batches of 256
    calls.clear()
    monkeypatch.setattr(engine, "STEP_REPORT_S", 3600.0)  # at most once an hour: never in a short epoch
    assert train_run(cfg.replace(seed=1), RunStore(tmp_path, "s"), env).status == DONE
    assert calls == []


def test_a_terminal_shows_the_step_inside_the_epoch():
    out = io.StringIO()
    cfg = RunConfig(model="mlp_s", epochs=3)
    p = Progress(1, 1, tty=True, out=out)
    p.started(0, Pack((cfg,)))
    p.epoch(0, cfg, 1, {"train_loss": 0.5})
    p.step(0, 2, 17, 340)
    p.close()
    assert "loss 0.500, epoch 2: step 17/340" in out.getvalue()


def _fake_tinyimagenet(root: Path) -> None:
    from PIL import Image

    base = root / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ann = []
    for k, w in enumerate(wnids):
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (40 * i, 100 * k, 7)).save(base / "train" / w / "images" / f"{w}_{i}.JPEG")
        Image.new("RGB", (64, 64), (9, 9, 9 * k)).save(base / "val" / "images" / f"val_{k}.JPEG")
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")


def test_decoding_data_says_when_it_starts_and_ends(tmp_path, monkeypatch, capsys):
    from tstudy.data import load_dataset

    monkeypatch.setenv("TSTUDY_CACHE", str(tmp_path / "cache"))
    _fake_tinyimagenet(tmp_path / "data")
    d = load_dataset("tinyimagenet", tmp_path / "data")
    assert d.train_x.shape == (6, 3, 64, 64)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "decod" in ln]
    assert len(said) == 2, said
    assert said[0].startswith(f"tstudy: tinyimagenet: decoding 8 images from {tmp_path / 'data'}")
    assert said[1].startswith("tstudy: tinyimagenet: decoded 8 images in ") and said[1].endswith(" s")
    load_dataset("tinyimagenet", tmp_path / "data")  # from the cache: nothing decoded, nothing said
    assert "decod" not in capsys.readouterr().err
