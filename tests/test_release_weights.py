"""`tstudy clean STUDY --weights`: a finished student's model.pt deleted on purpose stays a done run
with its results (collect, launch and a fresh clone of a study kept in git agree), its teacher keeps
its weights, and nothing else is touched."""
import json

import pytest

from tstudy.cli import main
from tstudy.store import DONE, RELEASED, RunStore, release_weights
from tstudy.study import load_study

STUDY = '''
from tstudy import RunConfig, Study
teacher = RunConfig(dataset="digits", model="mlp_l", epochs=2, lr=0.05)
study = Study(name="w", base=RunConfig(dataset="digits", model="mlp_s", teacher=teacher, method="kd", epochs=2,
              lr=0.05), axes={"method": ["ce", "kd"], "temperature": [1, 4]}, seeds=[0])
'''


@pytest.fixture
def launched(tmp_path):
    path = tmp_path / "w.py"
    path.write_text(STUDY)
    root = tmp_path / "root"
    assert main(["launch", str(path), "--root", str(root)]) == 0
    return path, root, load_study(path)


def test_released_students_stay_done_and_the_teacher_keeps_its_weights(launched, capsys):
    path, root, study = launched
    store = RunStore(root, study.name)
    assert main(["collect", str(path), "--root", str(root)]) == 0
    before = (root / "w" / "results.parquet").read_bytes()
    capsys.readouterr()
    assert main(["clean", str(path), "--root", str(root), "--weights", "--dry-run"]) == 0
    assert "would delete the weights of 3 students' model.pt" in capsys.readouterr().out
    assert main(["clean", str(path), "--root", str(root), "--weights", "--yes"]) == 0
    assert "released the weights of 3 runs" in capsys.readouterr().out
    teacher = study.teachers()[0]
    assert (store.run_dir(teacher) / "model.pt").exists()
    for r in study.students():
        d = store.run_dir(r)
        status = json.loads((d / "status.json").read_text())
        assert not (d / "model.pt").exists() and status["weights"] == RELEASED and len(status["model_pt_sha256"]) == 64
        assert store.state(r).status == DONE
    assert main(["launch", str(path), "--root", str(root)]) == 0
    assert "0 to launch" in capsys.readouterr().out  # nothing retrained
    assert main(["collect", str(path), "--root", str(root)]) == 0
    from pandas import read_parquet
    from io import BytesIO

    assert read_parquet(BytesIO(before)).equals(read_parquet(root / "w" / "results.parquet"))
    assert main(["clean", str(path), "--root", str(root), "--weights", "--yes"]) == 0
    assert "no student weights to release" in capsys.readouterr().out


def test_release_needs_a_done_run_with_its_weights_and_a_missing_file_is_still_incomplete(launched):
    _, root, study = launched
    store = RunStore(root, study.name)
    kd = study.students()[1]
    d = store.run_dir(kd)
    (d / "model.pt").unlink()  # lost, not released: the run must train again
    assert store.state(kd).status != DONE and not release_weights(d)


def test_clean_weights_and_stale_locks_are_two_commands(launched, capsys):
    path, root, _ = launched
    assert main(["clean", str(path), "--root", str(root), "--weights", "--stale-locks"]) == 2
    assert "clean: --stale-locks and --weights are two commands" in capsys.readouterr().err
