"""Study expansion (axes x seeds, where, dedup, teachers first), overrides and study files."""
import textwrap
import time

import pytest

from tstudy import RunConfig, Study, load_study
from tstudy.errors import ConfigError
from tstudy.study import parse_sets

TEACHER = RunConfig(model="cnn_l", epochs=3)
BASE = RunConfig(model="cnn_s", teacher=TEACHER, method="kd", epochs=3)


def test_product_of_axes_and_seeds():
    s = Study("s", BASE, axes={"temperature": [1, 2, 4], "optimizer": ["sgd", "adamw"], "batch_size": [32, 64]},
              seeds=[0, 1])
    students = s.students()
    assert len(students) == 3 * 2 * 2 * 2
    assert len({c.run_id for c in students}) == len(students)
    runs = s.runs()
    assert len(runs) == len(students) + 1 and runs[0] == TEACHER


def test_where_filters():
    s = Study("s", BASE, axes={"temperature": [1, 2, 4, 8], "epochs": [2, 3]},
              where=lambda c: not (c.epochs == 2 and c.temperature > 2))
    assert len(s.students()) == 4 + 2


def test_ce_collapses_over_temperature_and_drops_teacher():
    s = Study("s", BASE, axes={"method": ["ce", "kd"], "temperature": [1, 2, 4, 8, 16]}, seeds=[0, 1, 2])
    students = s.students()
    ce = [c for c in students if c.method == "ce"]
    assert len(ce) == 3 and all(c.teacher is None and c.temperature is None for c in ce)
    assert len(students) == 3 + 15
    assert len(s.teachers()) == 1


def test_teachers_deduplicated_and_first():
    t2 = TEACHER.replace(seed=1)
    s = Study("s", BASE, axes={"teacher": [TEACHER, t2], "temperature": [2, 4]})
    runs = s.runs()
    assert [r.run_id for r in runs[:2]] == [TEACHER.run_id, t2.run_id]
    assert len(runs) == 2 + 4


def test_zipped_axis_pairs():
    big = RunConfig(model="mlp_l", epochs=3)
    s = Study("s", BASE, axes={("teacher", "model"): [(TEACHER, "cnn_s"), (big, "mlp_s")], "temperature": [1, 4]})
    pairs = {(c.teacher.model, c.model) for c in s.students()}
    assert pairs == {("cnn_l", "cnn_s"), ("mlp_l", "mlp_s")}


def test_method_axis_with_params():
    s = Study("s", BASE, axes={("method", "method_params"): [("kd", {}), ("kd", {"w_ce": 0.0, "w_kd": 1.0})]})
    assert len(s.students()) == 2


def test_derive_applies():
    s = Study("s", BASE, axes={"epochs": [2, 4]}, derive=lambda c: c.replace(eval_epochs=(c.epochs // 2,)))
    assert sorted(c.eval_epochs for c in s.students()) == [(1,), (2,)]


@pytest.mark.parametrize("kwargs, match", [
    ({"axes": {"temprature": [1]}}, "unknown field 'temprature'"),
    ({"axes": {"temperature": []}}, "is empty"),
    ({"axes": {"temperature": [1, 2, 1]}}, "duplicate value 1"),
    ({"axes": {"temperature": 4}}, "expected a list"),
    ({"axes": {"seed": [0, 1]}}, "seeds="),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "duplicate seeds"),
    ({"name": "bad name!"}, "name"),
    ({"axes": {("teacher", "model"): [(TEACHER,)]}}, "tuple of 2"),
])
def test_bad_studies(kwargs, match):
    args = {"name": "s", "base": BASE, **kwargs}
    with pytest.raises(ConfigError, match=match):
        Study(**args)


def test_bad_axis_value_names_field_and_run():
    s = Study("s", BASE, axes={"temperature": [1, 0]})
    with pytest.raises(ConfigError, match=r"^temperature: .*temperature=0"):
        s.students()


def test_kd_without_teacher_in_axis():
    s = Study("s", RunConfig(model="cnn_s"), axes={"method": ["ce", "kd"]})
    with pytest.raises(ConfigError, match="^teacher: method 'kd' needs a teacher"):
        s.students()


def test_expansion_is_fast():
    s = Study("big", BASE, axes={"temperature": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32], "optimizer": ["sgd", "adamw"],
                                 "batch_size": [32, 64, 128, 256, 512], "epochs": [1, 2, 3, 4, 5],
                                 "lr": [0.01, 0.05, 0.1, 0.2]}, seeds=[0, 1, 2, 3, 4])
    t0 = time.perf_counter()
    runs = s.runs()
    assert len(runs) == 10 * 2 * 5 * 5 * 4 * 5 + 1
    assert time.perf_counter() - t0 < 1.0


def test_override_replaces_axis_and_propagates_data_fields():
    s = Study("s", BASE, axes={"epochs": [2, 3], "temperature": [1, 2]})
    o = s.override(parse_sets(["epochs=5", "teacher.epochs=4", "lr=0.1"]))
    students = o.students()
    assert {c.epochs for c in students} == {5} and {c.lr for c in students} == {0.1}
    assert {c.teacher.epochs for c in students} == {4}
    o2 = s.override({"image_size": 16})
    assert {(c.image_size, c.teacher.image_size) for c in o2.students()} == {(16, 16)}
    with pytest.raises(ConfigError, match="unknown field 'epoch'"):
        s.override({"epoch": 2})


def test_parse_sets():
    assert parse_sets(["epochs=30", "dataset=tinyimagenet", "milestones=(0.5,0.75)"]) == {
        "epochs": 30, "dataset": "tinyimagenet", "milestones": (0.5, 0.75)}
    with pytest.raises(ConfigError, match="--set"):
        parse_sets(["epochs"])


def _write(tmp_path, text, name="s.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_load_study(tmp_path):
    p = _write(tmp_path, """
        from tstudy import RunConfig, Study
        study = Study(name="x", base=RunConfig(epochs=2), axes={"lr": [0.1, 0.2]})
    """)
    s = load_study(p)
    assert s.name == "x" and len(s.runs()) == 2 and s.source == str(p.resolve())


@pytest.mark.parametrize("text, match", [
    ("study = (\n", "syntax error .* line"),
    ("x = 1\n", "must define `study = Study"),
    ("study = 3\n", "found int"),
    ("from tstudy import RunConfig\nstudy = RunConfig(methodd='kd')\n", "line 2: TypeError"),
    ("from tstudy import RunConfig, Study\nstudy = Study(name='x', base=RunConfig(model='nope'))\n", "model: unknown model 'nope'"),
])
def test_bad_study_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_study(_write(tmp_path, text))


def test_missing_study_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(tmp_path / "nope.py")


def test_quickstart_study_shape():
    s = load_study("studies/quickstart.py")
    runs = s.runs()
    assert len(runs) == 1 + 3 + 15


@pytest.mark.parametrize("kwargs, match", [
    ({"where": lambda c: c.temperature > 2, "axes": {"method": ["ce", "kd"]}}, r"^where: TypeError: .*run "),
    ({"derive": lambda c: c.nope}, r"^derive: AttributeError"),
    ({"axes": {("method", "method_params"): [("kd", None)]}}, "^method_params: expected a dict"),
    ({"axes": {"method": ["kd"], ("method", "method_params"): [("kd", {})]}}, "already set by"),
    ({"options": {"slrum": {}}}, "options: unknown key 'slrum'; valid: local, slurm"),
    ({"options": {"slurm": {"partitoin": "gpu"}}}, "partitoin"),
])
def test_user_code_and_axes_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Study("s", BASE, **kwargs).runs()


def test_study_file_imports_a_helper_beside_it(tmp_path):
    (tmp_path / "my_recipe_helper.py").write_text("from tstudy import RunConfig\nBASE = RunConfig(epochs=3)\n")
    p = _write(tmp_path, """
        from my_recipe_helper import BASE
        from tstudy import Study
        study = Study(name="h", base=BASE, axes={"lr": [0.1, 0.2]})
    """)
    assert len(load_study(p).runs()) == 2
    import sys

    assert str(tmp_path) not in sys.path  # restored afterwards


def test_only_selects_a_chunk_with_its_teacher_and_keeps_the_run_ids(tmp_path, capsys):
    from tstudy.cli import main
    from tstudy.study import parse_only, restrict

    path = tmp_path / "s.py"
    path.write_text(
        "from tstudy import RunConfig, Study\n"
        "t = RunConfig(dataset='digits', model='mlp_l', epochs=2)\n"
        "study = Study('s', RunConfig(dataset='digits', model='mlp_s', teacher=t, method='kd', epochs=2),\n"
        "              axes={'method': ['ce', 'kd', 'ttm'], 'temperature': [1, 4]}, seeds=[0, 1])\n")
    study = load_study(path)
    chunk = restrict(study, parse_only(["method=ce,kd", "temperature=4"]))
    ids = {r.run_id: r for r in study.runs()}
    got = chunk.runs()
    assert got[0].run_id == study.runs()[0].run_id  # the teacher comes along
    assert {(r.method, r.temperature) for r in chunk.students()} == {("ce", None), ("kd", 4.0)}
    assert all(r.run_id in ids for r in got) and len(chunk.students()) == 4  # ce ignores T; 2 seeds
    assert main(["plan", str(path), "--root", str(tmp_path / "r"), "--only", "method=ttm", "--seeds", "1"]) == 0
    assert "3 runs (1 teacher, 2 students)" in capsys.readouterr().out


@pytest.mark.parametrize("flag, line", [
    ("method", "--only: expected FIELD=VALUE[,VALUE...], got 'method'"),
    ("colour=red", "--only: unknown field 'colour'; valid: "),
    ("teacher=x", "--only: teacher cannot be selected by value"),
    ("method=dkd", "--only: method=dkd selects none of the 6 student runs of study 'quickstart'"),
])
def test_only_mistakes_are_one_line(flag, line, capsys):
    from tstudy.cli import main

    assert main(["plan", "studies/quickstart.py", "--only", flag, "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1


def test_figure_note_is_a_string_and_changes_no_run_id():
    with pytest.raises(ConfigError, match="^figure_note: expected a string, got int$"):
        Study("s", RunConfig(), figure_note=3)
    assert Study("s", RunConfig(), figure_note="small").runs()[0].run_id == RunConfig().run_id
