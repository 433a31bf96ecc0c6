"""The run store shared by every study under a root: a run named by two studies trains once,
each study sees exactly its runs, `clean` asks before deleting another study's run, and roots of
the per-study layout (tstudy before the shared store) migrate with every file intact."""
import hashlib
import json
import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from tstudy.cli import main
from tstudy.migrate import legacy_studies, migrate
from tstudy.store import DONE, INCOMPLETE, RunStore, write_status
from tstudy.study import load_study

TEACHER = 'teacher = RunConfig(model="mlp_s", epochs=2)\n'
STUDY = """
from tstudy import RunConfig, Study
{teacher}study = Study(name="{name}", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=2, temperature={t}))
"""
LEGACY = Path(__file__).with_name("data") / "legacy_root.tar.gz"  # see data/make_legacy_root.py


def _study(tmp_path: Path, name: str, t: float) -> Path:
    f = tmp_path / f"{name}.py"
    f.write_text(STUDY.format(teacher=TEACHER, name=name, t=t))
    return f


def test_two_studies_naming_one_teacher_train_it_once(tmp_path, capsys):
    a, b = _study(tmp_path, "a", 1), _study(tmp_path, "b", 4)
    root = tmp_path / "root"
    assert main(["launch", str(a), "--root", str(root)]) == 0
    teacher = load_study(a).teachers()[0]
    assert teacher.run_id == load_study(b).teachers()[0].run_id
    model = root / "runs" / teacher.run_id / "model.pt"
    before = (model.stat().st_mtime_ns, model.read_bytes())
    capsys.readouterr()
    assert main(["launch", str(b), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 1 done or running, 1 to launch" in out  # b's teacher is a's
    assert (model.stat().st_mtime_ns, model.read_bytes()) == before
    log = (model.parent / "log.txt").read_text()
    assert log.count(f"{teacher.run_id} epoch 2/2") == 1  # trained once
    for f, name in ((a, "a"), (b, "b")):
        assert main(["status", str(f), "--root", str(root)]) == 0
        out = capsys.readouterr().out
        assert "2 done" in out and teacher.run_id in out
        assert main(["collect", str(f), "--root", str(root)]) == 0
        assert "2 runs" in capsys.readouterr().out  # exactly its own runs
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "runs"]
    assert sorted(p.name for p in (root / "a").iterdir()) == ["results.manifest.json", "results.parquet", "study.json"]


def test_clean_asks_before_deleting_a_run_another_study_lists(tmp_path, capsys, monkeypatch):
    a, b = _study(tmp_path, "a", 1), _study(tmp_path, "b", 4)
    root = tmp_path / "root"
    assert main(["launch", str(a), "--root", str(root)]) == 0
    assert main(["launch", str(b), "--root", str(root)]) == 0
    teacher = load_study(a).teachers()[0]
    d = root / "runs" / teacher.run_id
    (d / "model.pt").unlink()
    write_status(d, "failed", reason="test")
    capsys.readouterr()
    assert main(["clean", str(a), "--root", str(root), "--dry-run"]) == 0
    assert "[also listed by b]" in capsys.readouterr().out
    assert main(["clean", str(a), "--root", str(root), "--yes"]) == 0
    assert "left 1 run directories that other studies list too" in capsys.readouterr().out and d.exists()
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    questions = []
    monkeypatch.setattr("builtins.input", lambda q: questions.append(q) or "y")
    assert main(["clean", str(a), "--root", str(root)]) == 0
    assert "1 of them listed by other studies" in questions[0] and not d.exists()


def test_a_study_may_not_be_called_runs(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY.format(teacher=TEACHER, name="runs", t=1))
    assert main(["plan", str(f)]) == 2
    assert "name: 'runs' is reserved" in capsys.readouterr().err


# --------------------------------------------------------------------------- migration
def _files(root: Path) -> dict[str, str]:
    """{path relative to root: sha256} of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def legacy(tmp_path) -> Path:
    """A root written by tstudy before the shared store: studies alpha and beta each trained the
    same teacher; beta's KD run stopped after epoch 1."""
    with tarfile.open(LEGACY) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "legacy"


def _expected_moves(root: Path) -> dict[tuple[str, str], set[str]]:
    """Each legacy run file's contents, keyed by (run id, the file's name within its run)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rel, sha in _files(root).items():
        parts = Path(rel).parts
        if len(parts) >= 4 and parts[1] == "runs":
            out.setdefault((parts[2], "/".join(parts[3:])), set()).add(sha)
    return out


def _assert_all_kept(root: Path, expected: dict[tuple[str, str], set[str]]) -> None:
    """Every legacy run file is in the store or, for a second copy, under .migrated/."""
    after = _files(root)
    for (rid, name), shas in expected.items():
        found = {sha for k, sha in after.items() if k.endswith("/" + name)
                 and (k.startswith(f"runs/{rid}/") or (k.startswith(".migrated/") and f"/{rid}-" in k))}
        assert shas <= found, (rid, name)


def test_a_legacy_root_migrates_with_every_run_intact_and_nothing_retrained(legacy, capsys):
    root = legacy / "root"
    before = _files(root)
    expected = _expected_moves(root)
    assert [d.name for d in legacy_studies(root)] == ["alpha", "beta"]
    assert main(["migrate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "moved 6 run directories of 2 studies" in out and "1 trained twice" in out
    assert len(_files(root)) == len(before)  # no file lost (the study records are rewritten in place)
    _assert_all_kept(root, expected)
    assert not legacy_studies(root) and not (root / "alpha" / "runs").exists()
    assert main(["migrate", str(root)]) == 0 and "nothing to migrate" in capsys.readouterr().out  # idempotent
    alpha, beta = load_study(legacy / "alpha.py"), load_study(legacy / "beta.py")
    store = RunStore(root, "alpha")
    assert all(store.state(r).status == DONE for r in alpha.runs())
    teacher, ce, kd = beta.runs()
    assert RunStore(root, "beta").state(kd).status == INCOMPLETE and RunStore(root, "beta").state(kd).epoch == 1
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("model.pt")}
    assert main(["launch", str(legacy / "alpha.py"), "--root", str(root)]) == 0
    assert "3 runs, 3 done or running, 0 to launch" in capsys.readouterr().out
    assert main(["launch", str(legacy / "beta.py"), "--root", str(root)]) == 0
    assert "3 runs, 2 done or running, 1 to launch" in capsys.readouterr().out  # only the stopped run
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing retrained
    log = (root / "runs" / kd.run_id / "log.txt").read_text()
    assert f"{kd.run_id} epoch 2/2" not in log and "epoch 2/3" in log  # resumed at epoch 2


def test_first_use_of_a_legacy_root_migrates_it(legacy, capsys):
    assert main(["status", str(legacy / "alpha.py"), "--root", str(legacy / "root")]) == 0
    cap = capsys.readouterr()
    assert "tstudy: moved 6 run directories" in cap.err and "3 done" in cap.out
    assert not legacy_studies(legacy / "root")


def test_an_interrupted_migration_finishes_on_the_next_call(legacy, monkeypatch):
    root = legacy / "root"
    expected = _expected_moves(root)
    real_rename, calls = os.rename, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped between two moves
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(KeyboardInterrupt):
        migrate(root)
    monkeypatch.setattr(os, "rename", real_rename)
    assert legacy_studies(root)  # half done
    report = migrate(root)
    assert report.moved == 6 - 2 and not legacy_studies(root)
    _assert_all_kept(root, expected)
    for study, n in (("alpha", 3), ("beta", 3)):  # every run the legacy folders held is listed
        assert len(json.loads((root / study / "study.json").read_text())["runs"]) == n


def test_a_run_in_use_is_left_for_a_later_migration(legacy):
    import socket
    import subprocess
    import sys

    root = legacy / "root"
    d = next((root / "alpha" / "runs").iterdir())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        report = migrate(root)
        assert report.in_use == [str(d)] and d.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert migrate(root).moved == 1 and not d.exists() and (root / "runs" / d.name).is_dir()
