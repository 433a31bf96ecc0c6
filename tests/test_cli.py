"""The CLI end to end on a tiny digits study: launch, relaunch, delete-and-relaunch, collect,
figures (plotted data = table means), clean."""
import shutil
import textwrap

import matplotlib
import numpy as np
import pandas as pd
import pytest

from analysis.figures import acc_vs_temperature
from tstudy.cli import main
from tstudy.engine import RunEnv, train_run
from tstudy.results import config_columns
from tstudy.store import DONE, INCOMPLETE, RunStore
from tstudy.study import load_study

STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(model="mlp_l", epochs=2)
study = Study(name="tiny", base=RunConfig(model="mlp_s", teacher=teacher, method="kd", epochs=2, eval_epochs=(1,)),
              axes={"method": ["ce", "kd"], "temperature": [1, 4]}, seeds=[0, 1])
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    f = tmp / "tiny.py"
    f.write_text(textwrap.dedent(STUDY))
    root = tmp / "root"
    assert main(["launch", str(f), "--root", str(root), "--device", "cpu"]) == 0
    return f, root


def test_launch_trains_everything(launched, capsys):
    f, root = launched
    study = load_study(f)
    store = RunStore(root, "tiny")
    assert len(study.runs()) == 1 + 2 + 4
    assert all(store.state(r).status == DONE for r in study.runs())


def test_relaunch_launches_nothing_and_deleted_run_is_rerun(launched, capsys):
    f, root = launched
    capsys.readouterr()
    assert main(["launch", str(f), "--root", str(root)]) == 0
    assert "0 to launch" in capsys.readouterr().out
    study = load_study(f)
    store = RunStore(root, "tiny")
    victim = study.students()[-1]
    others = {r.run_id: (store.run_dir(r) / "status.json").stat().st_mtime_ns for r in study.runs() if r != victim}
    shutil.rmtree(store.run_dir(victim))
    assert main(["launch", str(f), "--root", str(root)]) == 0
    out = capsys.readouterr()
    assert "1 to launch" in out.out and victim.run_id in out.err
    assert store.state(victim).status == DONE
    assert {i: (store.run_dir(i) / "status.json").stat().st_mtime_ns for i in others} == others


def test_collect_schema(launched):
    f, root = launched
    assert main(["collect", str(f), "--root", str(root)]) == 0
    df = pd.read_parquet(root / "tiny" / "results.parquet")
    study = load_study(f)
    assert not df.duplicated(["run_id", "epoch", "split"]).any()
    assert len(df) == len(study.runs()) * 2 * 2 - 2  # the teacher: 2 epochs, no extra eval points
    expected = {"run_id", "role", "status", "epoch", "split", "acc1", "acc5", "loss", "temperature", "method",
                "method_label", "optimizer", "batch_size", "epochs", "seed", "lr", "model", "teacher_id",
                "teacher_model", "dataset", "train_loss", "train_ce", "tstudy_version", "git_commit",
                "torch_version", "device", "wall_time_s", "images_per_s", "study"}
    assert expected <= set(df.columns)
    assert set(config_columns(study.students()[0], "student")) <= set(df.columns)
    assert df["acc1"].between(0, 100).all() and df["epoch"].dtype.kind == "i"
    assert set(df["split"]) == {"train", "test"} and set(df["role"]) == {"teacher", "student"}
    assert df.loc[df["method"] == "ce", "temperature"].isna().all()


def test_figure_plots_the_table_means(launched):
    f, root = launched
    main(["collect", str(f), "--root", str(root)])
    df = pd.read_parquet(root / "tiny" / "results.parquet")
    fig = acc_vs_temperature(df)
    ax = fig.axes[0]
    lines = {l.get_gid(): l for l in ax.get_lines()}
    final = df[(df["split"] == "test") & (df["epoch"] == df["epochs"]) & (df["role"] == "student")]
    kd = final[final["method"] == "kd"].groupby("temperature")["acc1"].mean()
    np.testing.assert_allclose(lines["kd"].get_xdata(), kd.index.values)
    np.testing.assert_allclose(lines["kd"].get_ydata(), kd.values)
    ce = final[final["method"] == "ce"]["acc1"].mean()
    np.testing.assert_allclose(lines["ce"].get_ydata(), [ce, ce])
    teacher = df[(df["role"] == "teacher") & (df["split"] == "test") & (df["epoch"] == 2)]["acc1"].mean()
    note = [t.get_text() for t in ax.texts if t.get_gid() == "teacher:text"]  # a corner note, a line if in range
    assert len(note) == 1 and note[0].startswith(f"teacher {teacher:.1f}")
    if "teacher" in lines:
        np.testing.assert_allclose(lines["teacher"].get_ydata(), [teacher, teacher])
    assert ax.get_xscale() == "log"
    matplotlib.pyplot.close(fig)


def test_figures_command_writes_files(launched):
    f, root = launched
    assert main(["figures", str(f), "--root", str(root)]) == 0
    figs = root / "tiny" / "figures"
    assert (figs / "acc_vs_temperature.png").stat().st_size > 0
    pdf = (figs / "acc_vs_temperature.pdf").read_bytes()
    assert b"/FontFile2" in pdf  # TrueType fonts embedded (pdf.fonttype 42)
    assert "acc_vs_temperature.png" in (root / "tiny" / "report.md").read_text()


def test_plan_and_clean(tmp_path, capsys):
    f = tmp_path / "tiny.py"
    f.write_text(textwrap.dedent(STUDY))
    root = tmp_path / "root"
    study = load_study(f)
    store = RunStore(root, "tiny")
    teacher = study.runs()[0]
    train_run(teacher, store, RunEnv(stop_after_epoch=1))
    assert store.state(teacher).status == INCOMPLETE
    assert main(["plan", str(f), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "7 runs (1 teacher, 6 students)" in out and "1 incomplete" in out and "6 not launched" in out
    assert main(["clean", str(f), "--root", str(root), "--dry-run"]) == 0
    assert store.run_dir(teacher).exists()
    assert main(["clean", str(f), "--root", str(root), "--yes"]) == 0
    assert not store.run_dir(teacher).exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text(STUDY.replace('"temperature": [1, 4]', '"temperature": [1, -4]'))
    assert main(["launch", str(f), "--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tstudy: error: temperature:") and "\n" not in err
    assert not (tmp_path / "root").exists()  # nothing written
