"""Committed findings regenerate from their run files with every number equal
(``analysis.findings``): a study published from a root regenerates identically, a changed number
in a run file is named, a run still training is left out; and every study whose results are
committed under ``results/`` regenerates in CI (the real-data findings of the README)."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis import findings
from tstudy import Study
from tstudy.engine import RunEnv, train_run
from tstudy.store import RunStore, release_weights, write_status
from tstudy.study import load_study

REPO = Path(__file__).resolve().parents[1]
# results/<study>/ folders with a committed table, and the study file each was made from
COMMITTED = {"tin_cpu_tier1": "studies/tiny_imagenet/cpu_tier1.py",
             "tin_cpu_tier2": "studies/tiny_imagenet/cpu_tier2.py",
             "tin_cpu_tier3": "studies/tiny_imagenet/cpu_tier3.py"}


@pytest.fixture
def trained(tmp_path, kd_cfg):
    study = Study("f", kd_cfg, axes={"method": ["ce", "kd"], "temperature": [1, 4]}, seeds=[0, 1])
    root = tmp_path / "results"
    env = RunEnv()
    store = RunStore(root, study.name)
    for cfg in study.runs():
        train_run(cfg, store, env)
    for cfg in study.students():  # as a study kept in git: students without their weights
        assert release_weights(store.run_dir(cfg))
    return study, root


def test_a_published_study_regenerates_and_a_changed_number_is_named(trained):
    study, root = trained
    folder = findings.publish(study, root)
    assert {p.name for p in folder.iterdir()} >= {"results.parquet", "report.md", "tables", "figures"}
    assert (folder / "tables" / "recommendation.json").exists() and any((folder / "figures").glob("*.png"))
    assert findings.check(study, root) == []
    # KD vs the CE student, paired by seed, as the table of paired differences says
    df = pd.read_parquet(folder / "results.parquet")
    last = df[(df["split"] == "test") & (df["epoch"] == df["epochs"]) & (df["role"] == "student")]
    acc = {(m, t if t == t else None, s): a for m, t, s, a in last[["method", "temperature", "seed", "acc1"]].itertuples(index=False)}
    vs = pd.read_csv(folder / "tables" / "vs_baselines.csv")
    assert set(vs["baseline"]) == {"ce"} and sorted(vs["temperature"]) == [1.0, 4.0]
    for t in (1.0, 4.0):
        row = vs[vs["temperature"] == t].iloc[0]
        d = [acc[("kd", t, s)] - acc[("ce", None, s)] for s in (0, 1)]
        assert row["n"] == 2 and row["delta_mean"] == pytest.approx(sum(d) / 2)
        assert row["delta_low"] < row["delta_mean"] < row["delta_high"] or d[0] == d[1]
    assert "## Paired differences against the CE and KD students" in (folder / "report.md").read_text()
    # a third method (KD's rows, one point better) is paired against KD at its T and KD at its best T
    from analysis.tables import baseline_table
    kd = df[df["method"] == "kd"].assign(method="ttm", method_label="ttm", acc1=lambda x: x["acc1"] + 1.0,
                                         run_id=lambda x: "t" + x["run_id"])
    vs = baseline_table(pd.concat([df, kd], ignore_index=True)).set_index(["method_label", "temperature", "baseline"])
    kd_best = max((1.0, 4.0), key=lambda t: (sum(acc[("kd", t, s)] for s in (0, 1)), -t))
    for t in (1.0, 4.0):
        assert vs.loc[("ttm", t, "kd"), "delta_mean"] == pytest.approx(1.0)
        assert vs.loc[("ttm", t, "kd_best"), "baseline_T"] == kd_best
        want = sum(acc[("kd", t, s)] + 1.0 - acc[("kd", kd_best, s)] for s in (0, 1)) / 2
        assert vs.loc[("ttm", t, "kd_best"), "delta_mean"] == pytest.approx(want)
    d = RunStore(root, study.name).run_dir(study.runs()[-1])
    m = pd.read_parquet(d / "metrics.parquet")
    m.loc[m.index[-1], "acc1"] += 0.01
    m.to_parquet(d / "metrics.parquet")
    diffs = findings.check(study, root)
    assert any(line.startswith("results.parquet: ") for line in diffs)
    assert "tables/recommendation.json: differs" in diffs


def test_a_run_still_training_is_left_out_of_the_snapshot(trained, tmp_path):
    study, root = trained
    last = study.runs()[-1]
    write_status(RunStore(root, study.name).run_dir(last), "running", epoch=2)
    ids = findings.snapshot(study, root, tmp_path / "copy")
    assert last.run_id not in ids and len(ids) == len(study.runs()) - 1
    teacher, student = ids[0], study.students()[0].run_id  # a teacher keeps its weights, a student never
    for rid, names in ((teacher, findings.RUN_FILES + findings.TEACHER_FILES), (student, findings.RUN_FILES)):
        assert sorted(p.name for p in (tmp_path / "copy" / "runs" / rid).iterdir()) == sorted(
            n for n in names if (RunStore(root, study.name).run_dir(rid) / n).exists())
    assert (RunStore(root, study.name).run_dir(teacher) / "model.pt").exists()


def test_a_student_still_holding_its_weights_is_refused_as_git_would_lose_them(trained, tmp_path, capsys):
    """A student's model.pt is not kept in git, so a study published while one is held would not
    regenerate in a clean clone (the run is unfinished there): publish and check say so, exit 2."""
    import sys
    from unittest import mock

    from analysis.__main__ import _findings
    from tstudy.errors import ConfigError

    study, root = trained
    d = RunStore(root, study.name).run_dir(study.students()[1])
    status = json.loads((d / "status.json").read_text())
    write_status(d, status.pop("status"), **{k: v for k, v in status.items() if k != "weights"})
    (d / "model.pt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match=r"1 finished students of f still hold their weights .*clean STUDY_FILE --weights"):
        findings.publish(study, root)
    study_file = tmp_path / "f.py"
    study_file.write_text("")
    with mock.patch("tstudy.study.load_study", return_value=study):
        assert _findings([str(study_file), "--root", str(root), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m analysis: error: findings: 1 finished students") and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(n for n in COMMITTED if (REPO / "results" / n / "results.parquet").exists()))
def test_committed_findings_regenerate_with_every_number_equal(name):
    study = load_study(REPO / COMMITTED[name])
    assert study.name == name
    diffs = findings.check(study, REPO / "results")
    assert diffs == [], "\n".join(diffs)


def test_every_committed_study_folder_is_checked():
    kept = {p.parent.name for p in (REPO / "results").glob("*/results.parquet")}
    assert kept <= set(COMMITTED), f"add {sorted(kept - set(COMMITTED))} to COMMITTED"
