"""Issue 13, values and identity: checks that need the data run before launch (8), upper bounds
(9), `where` (10), warnings for parameters longer than the run (12), one run id per numeric
spelling (13), `--set` data fields with a teacher file (14), `--set method=ce` (15)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from tstudy import RunConfig, Study, TeacherFile
from tstudy.cli import main
from tstudy.errors import ConfigError
from tstudy.method_specs import method_spec
from tstudy.models import build_model
from tstudy.store import RunStore
from tstudy.study import load_study

TEACHER = RunConfig(model="mlp_l", epochs=2)
BASE = RunConfig(model="mlp_s", teacher=TEACHER, method="kd", epochs=2)

STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=2)
study = Study(name="edges", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=2),
              axes={AXES})
"""


def _study(tmp_path, axes: str, extra: str = "", name: str = "s.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(STUDY).replace("AXES", axes).replace("axes={", extra + "axes={"))
    return p


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tstudy: error: ") and "\n" not in err, err
    return err


# --------------------------------------------------------------------------- 8: checks on the data
def test_kd_topk_k_is_checked_against_the_classes():
    spec = method_spec("kd_topk")
    spec.check_data({"k": 9}, 10)  # all non-target classes: allowed
    with pytest.raises(ConfigError, match=r"^method_params\.k: must be at most 9 .*10-class.*got 1000$"):
        spec.check_data({"k": 1000}, 10)
    spec.check_data({"k": 1000}, 1001)
    method_spec("kd").check_data({}, 2)  # no parameter counts classes


def test_launch_refuses_k_beyond_the_classes_before_training(tmp_path, capsys):
    f = _study(tmp_path, '("method", "method_params"): [("kd_topk", {"k": 1000})]')
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root), "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert "method_params.k: must be at most 9" in err and "on digits" in err
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())  # nothing trained


def test_launch_refuses_a_teacher_file_whose_head_does_not_fit_the_classes(tmp_path, capsys):
    ckpt = tmp_path / "teacher5.pt"
    torch.save(build_model("mlp_l", 5, 1, 8).state_dict(), ckpt)  # 5 classes; digits has 10
    f = tmp_path / "s.py"
    f.write_text(textwrap.dedent(f"""
        from tstudy import RunConfig, Study, TeacherFile
        study = Study(name="ext", base=RunConfig(model="mlp_s", teacher=TeacherFile("mlp_l", {str(ckpt)!r}),
                                                 method="kd", epochs=1))
    """))
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root), "--device", "cpu"]) == 2
    err = _one_error_line(capsys)
    assert err.startswith("tstudy: error: teacher: ") and "10 classes" in err, err
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


# --------------------------------------------------------------------------- 9: upper bounds
@pytest.mark.parametrize("change, field, why", [
    ({"temperature": 1e308}, "temperature", "float32"),
    ({"epochs": 10**12}, "epochs", "typo"),
    ({"batch_size": 10**9}, "batch_size", "large-batch"),
    ({"image_size": 10**6}, "image_size", "memory"),
    ({"seed": 2**64}, "seed", "64-bit"),
])
def test_values_beyond_sane_bounds_are_refused_with_the_reason(change, field, why):
    with pytest.raises(ConfigError) as e:
        BASE.replace(**change)
    msg = str(e.value)
    assert msg.startswith(f"{field}: must be") and why in msg and "\n" not in msg, msg


def test_bounds_keep_large_but_real_values():
    BASE.replace(temperature=1000, epochs=9600, batch_size=65536, seed=2**63 - 1)
    TEACHER.replace(image_size=1024)


@pytest.mark.parametrize("value", ["temperature=1e308", "epochs=1000000000000", "batch_size=1000000000"])
def test_dry_run_refuses_values_beyond_the_bounds(tmp_path, capsys, value):
    f = _study(tmp_path, '"temperature": [1, 4]')
    assert main(["launch", str(f), "--root", str(tmp_path / "root"), "--dry-run", "--set", value]) == 2
    assert _one_error_line(capsys).startswith(f"tstudy: error: {value.split('=')[0]}: must be at most")
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------- 10: where
def test_where_must_return_a_bool():
    s = Study("s", BASE, axes={"method": ["ce", "kd"]}, where=lambda c: c.temperature and c.temperature > 2)
    with pytest.raises(ConfigError, match=r"^where: must return True or False, got None \(study 's', run "):
        s.runs()


def test_where_that_drops_every_run_is_refused():
    s = Study("s", BASE, axes={"temperature": [1, 2]}, where=lambda c: c.temperature > 8)
    with pytest.raises(ConfigError, match=r"^where: drops every run of study 's'"):
        s.runs()


def test_launch_of_a_study_whose_where_drops_everything_is_refused(tmp_path, capsys):
    f = _study(tmp_path, '"temperature": [1, 4]', extra="where=lambda c: c.temperature > 8, ")
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root)]) == 2
    assert "where: drops every run of study 'edges'" in _one_error_line(capsys)
    assert not root.exists()


# --------------------------------------------------------------------------- 12: warnings
def test_a_warm_up_longer_than_the_run_is_a_warning():
    dkd = BASE.replace(method="dkd", epochs=4)
    (line,) = dkd.warnings()
    assert line.startswith("method_params.warmup: dkd's warmup=20 epochs") and "4 epochs" in line
    assert dkd.replace(epochs=240).warnings() == []
    ctkd = BASE.replace(method="ctkd", epochs=4)
    assert [w.split(":")[0] for w in ctkd.warnings()] == ["method_params.lambda_epochs"]
    assert BASE.replace(method="tckd", epochs=4).warnings() == []  # no warm-up by default
    assert TEACHER.warnings() == []


def test_plan_warns_once_per_distinct_problem_without_torch(tmp_path):
    f = _study(tmp_path, '"method": ["kd", "dkd"], "temperature": [1, 2, 4]')
    code = textwrap.dedent(f"""
        import sys
        from tstudy.cli import main
        assert main(["plan", {str(f)!r}, "--root", {str(tmp_path / 'root')!r}]) == 0
        assert "torch" not in sys.modules
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("tstudy: warning: ")]
    assert warnings == ["tstudy: warning: method_params.warmup: dkd's warmup=20 epochs is longer than the run's "
                        "2 epochs, so it never completes (3 runs)"], r.stderr


def test_the_run_log_has_the_warning(tmp_path):
    from tstudy.engine import RunEnv, train_run

    store = RunStore(tmp_path / "root", "s")
    teacher = TEACHER.replace(epochs=1)
    train_run(teacher, store, RunEnv())
    dkd = BASE.replace(method="dkd", epochs=1, teacher=teacher)
    train_run(dkd, store, RunEnv())
    log = (store.run_dir(dkd) / "log.txt").read_text()
    assert "warning: method_params.warmup: dkd's warmup=20 epochs is longer than the run's 1 epochs" in log
    assert "warning" not in (store.run_dir(teacher) / "log.txt").read_text()


# --------------------------------------------------------------------------- 13: one id per spelling
def test_integral_float_milestones_are_the_int_milestones():
    ints = RunConfig(epochs=240, milestones=(150, 180, 210))
    floats = RunConfig(epochs=240, milestones=(150.0, 180.0, 210.0))
    assert floats.run_id == ints.run_id == "842fa442d2fbf6d5"  # the int spelling's id, unchanged
    assert floats.milestones == (150, 180, 210) and floats.milestone_epochs == (150, 180, 210)
    fractions = RunConfig(epochs=240, milestones=(0.625, 0.75, 0.875))
    assert fractions.milestones == (0.625, 0.75, 0.875) and fractions.run_id != ints.run_id


def test_negative_zero_is_zero():
    assert RunConfig(weight_decay=-0.0).run_id == RunConfig(weight_decay=0.0).run_id
    assert BASE.replace(method_params={"w_ce": -0.0}).run_id == BASE.replace(method_params={"w_ce": 0}).run_id


# --------------------------------------------------------------------------- 14: data fields, teacher file
@pytest.fixture
def teacher_file(tmp_path):
    ckpt = tmp_path / "teacher.pt"
    torch.save(build_model("mlp_l", 10, 1, 8).state_dict(), ckpt)
    return TeacherFile("mlp_l", str(ckpt))


def test_data_field_with_a_teacher_file_goes_to_the_student(teacher_file):
    s = Study("s", BASE.replace(teacher=teacher_file), axes={"temperature": [1, 4]})
    o = s.override({"dataset": "cifar10", "image_size": 16})
    assert {(c.dataset, c.image_size, c.teacher) for c in o.students()} == {("cifar10", 16, teacher_file)}
    with pytest.raises(ConfigError, match=r"^--set teacher\.epochs: the teacher is an external file"):
        s.override({"teacher.epochs": 3})


def test_set_dataset_on_a_teacher_file_study_plans(tmp_path, capsys, teacher_file):
    f = tmp_path / "s.py"
    f.write_text(textwrap.dedent(f"""
        from tstudy import RunConfig, Study, TeacherFile
        study = Study(name="ext", base=RunConfig(model="mlp_s", method="kd", epochs=1,
                                                 teacher=TeacherFile("mlp_l", {teacher_file.weights.path!r})))
    """))
    assert main(["plan", str(f), "--root", str(tmp_path / "root"), "--set", "dataset=tinyimagenet"]) == 0
    assert "1 run (0 teachers, 1 student)" in capsys.readouterr().out


# --------------------------------------------------------------------------- 15: --set method=ce
def test_set_method_ce_drops_the_teacher_as_a_method_axis_does():
    other = RunConfig(model="cnn_l", epochs=2)
    s = Study("s", BASE, axes={("teacher", "model"): [(TEACHER, "mlp_s"), (other, "cnn_s")],
                               "method": ["ce", "kd"], "temperature": [1, 4]}, seeds=[0, 1])
    ce = s.override({"method": "ce"})
    students = ce.students()
    assert all(c.method == "ce" and c.teacher is None for c in students) and not ce.teachers()
    assert {c.run_id for c in students} == {c.run_id for c in s.students() if c.method == "ce"}
    assert len(students) == 2 * 2  # one per student model and seed
    with pytest.raises(ConfigError, match=r"^--set teacher\.epochs: method 'ce' takes no teacher"):
        s.override({"method": "ce", "teacher.epochs": 3})


def test_set_method_resets_the_base_method_params_as_a_method_axis_does():
    s = Study("s", BASE.replace(method_params={"w_kd": 0.5}))
    (run,) = s.override({"method": "dkd"}).students()
    assert run.method == "dkd" and run.params == {}
    (run,) = s.override({"method": "ls", "method_params": {"epsilon": 0.1}}).students()
    assert run.teacher is None  # ls with a fixed epsilon takes no teacher


def test_cli_set_method_ce(tmp_path, capsys):
    f = _study(tmp_path, '"temperature": [1, 4]')
    assert main(["plan", str(f), "--root", str(tmp_path / "root"), "--set", "method=ce"]) == 0
    out = capsys.readouterr().out
    assert "1 run (0 teachers, 1 student)" in out
    study = load_study(f).override({"method": "ce"})
    assert [r.teacher for r in study.runs()] == [None]
