"""`tstudy recommend` and analysis/stats.py: planted effects are found, their absence is not
invented, intervals have their stated kind and coverage, the CLI and JSON contract."""
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from analysis import recommend as R
from analysis import stats as S
from tstudy.cli import main

TEMPS = (1.0, 2.0, 4.0, 8.0, 16.0)
COMMON = dict(dataset="digits", labels="fine", model="mlp_s", init="scratch", optimizer="sgd", batch_size=64,
              lr=0.05, epochs=10, teacher_model="mlp_l", teacher_kind="trained")


def table(effect_T=4.0, effect=1.5, spread=3.0, noise=0.3, seeds=5, rng=0, methods=("kd",), ce=80.0,
          val_shift=None, extra=None) -> pd.DataFrame:
    """A results table in tstudy's shape: a teacher, CE students and ``methods`` over ``TEMPS``.
    Seed s shifts every run of that seed by a common offset (sd ``spread``): the paired design.
    At ``effect_T`` every seed gains ``effect`` points; within a seed, runs differ by ``noise``."""
    g = np.random.default_rng(rng)
    rows = [dict(COMMON, run_id="T0", role="teacher", status="done", epoch=10, split="test", acc1=95.0,
                 method="ce", method_label="ce", temperature=np.nan, seed=0, teacher_id=None, teacher_model=None,
                 teacher_kind=None)]
    n = 0
    for s in range(seeds):
        off = g.normal(0, spread)
        runs = [("ce", None, ce + off + g.normal(0, noise))]
        for m in methods:
            for t in TEMPS:
                runs.append((m, t, 82.0 + off + (effect if t == effect_T else 0.0) + g.normal(0, noise)))
        for m, t, acc in runs:
            n += 1
            base = dict(COMMON, run_id=f"r{n}", role="student", status="done", method=m, method_label=m,
                        temperature=np.nan if t is None else t, seed=s, teacher_id=None if m == "ce" else "T0",
                        **(extra or {}))
            if m == "ce":
                base.update(teacher_model=None, teacher_kind=None)
            rows.append(dict(base, epoch=10, split="test", acc1=acc))
            if val_shift is not None:
                rows.append(dict(base, epoch=10, split="val", acc1=acc + val_shift(t)))
    return pd.DataFrame(rows)


def one(records, method="kd"):
    (r,) = [r for r in records if r["method"] == method]
    return r


# --------------------------------------------------------------------------- the Done-when tests
def test_a_planted_effect_is_named_with_p_best_and_a_paired_interval_while_std_bands_overlap():
    df = table()
    r = one(R.recommend(df, select="final"))
    assert r["best_temperature"] == 4.0
    assert r["p_best"] >= 0.9
    d = S.paired_deltas(df[df["role"] == "student"], "acc1", 2.0, [])  # T=4 against its neighbour T=2
    row = d[(d["method_label"] == "kd") & (d["temperature"] == 4.0)].iloc[0]
    assert row["delta_low"] > 0 and row["n"] == 5
    # ... while the mean ± std bands over seeds overlap (what the old figures showed)
    st = df[(df["method"] == "kd")].groupby("temperature")["acc1"].agg(["mean", "std"])
    for t in (1.0, 2.0, 8.0, 16.0):
        assert abs(st.loc[4.0, "mean"] - st.loc[t, "mean"]) < st.loc[4.0, "std"] + st.loc[t, "std"]
    assert r["near_best_temperatures"] == [4.0]
    assert r["delta_vs_ce"] == pytest.approx(3.5, abs=0.6) and r["delta_vs_ce_ci"][0] > 0


def test_without_an_effect_the_near_best_set_holds_every_temperature():
    r = one(R.recommend(table(effect=0.0), select="final"))
    assert r["near_best_temperatures"] == list(TEMPS)
    assert r["p_best"] < 0.9


def test_the_near_best_set_keeps_every_temperature_in_at_least_95_percent_of_null_tables():
    """The family-wise guarantee, checked: 200 tables without an effect (5 T, 5 seeds)."""
    g = np.random.default_rng(0)
    kept = []
    for _ in range(200):
        m = pd.DataFrame(g.normal(0, 3, (5, 1)) + g.normal(0, 0.3, (5, len(TEMPS))), columns=TEMPS)
        kept.append(S.near_best(m) == list(TEMPS))
    assert np.mean(kept) >= 0.93


# --------------------------------------------------------------------------- stats
def test_mean_interval_is_t_below_20_seeds_and_bootstrap_from_20():
    x = [1.0, 2.0, 4.0]
    iv = S.mean_interval(x)
    half = 4.302653 * np.std(x, ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert iv.kind == "t" and iv.low == pytest.approx(np.mean(x) - half) and iv.high == pytest.approx(np.mean(x) + half)
    big = np.random.default_rng(1).normal(10, 2, 40)
    b = S.mean_interval(big)
    assert b.kind == "bootstrap" and b.low < 10.0 < b.high
    assert b.high - b.low == pytest.approx(2 * 1.96 * big.std(ddof=1) / math.sqrt(40), rel=0.15)
    assert S.mean_interval([3.0]).kind == "none" and S.mean_interval([]).n == 0


def test_t_intervals_cover_the_true_mean_95_percent_of_the_time():
    g = np.random.default_rng(2)
    hits = [(lambda iv: iv.low <= 0.0 <= iv.high)(S.mean_interval(g.normal(0, 1, 5))) for _ in range(2000)]
    assert 0.935 <= np.mean(hits) <= 0.965


def test_holm_adjusts_step_down_and_stays_monotone():
    np.testing.assert_allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(S.holm([0.5, 0.001]), [0.5, 0.002])


def test_expected_best_follows_dodge_et_al():
    v = [1.0, 2.0, 3.0]
    e = S.expected_best(v).set_index("n")["expected_best"]
    assert e[1] == pytest.approx(2.0)
    assert e[2] == pytest.approx(1 * 1 / 9 + 2 * 3 / 9 + 3 * 5 / 9)  # P(max = v_i) = (i² − (i−1)²)/9
    assert list(e) == sorted(e)  # more temperatures tried: never a lower expected best


def test_smoothed_optimum_lies_between_the_best_temperature_and_its_better_neighbour():
    df = table(effect=0.0, noise=0.0, spread=1.0)
    kd = df[df["method"] == "kd"].copy()
    bump = {1.0: 0.0, 2.0: 1.0, 4.0: 2.0, 8.0: 1.8, 16.0: 0.0}
    kd["acc1"] += kd["temperature"].map(bump)
    sm = S.smoothed_optimum(S.seed_matrix(kd, "acc1"))
    assert 4.0 < sm.mean < 8.0
    edge = S.smoothed_optimum(S.seed_matrix(kd.assign(acc1=kd["acc1"] + kd["temperature"]), "acc1"))
    assert edge.mean == 16.0  # the best at the grid's edge: no extrapolation


def test_p_best_resamples_seeds_jointly():
    m = pd.DataFrame({1.0: [10.0, 20.0, 30.0], 2.0: [10.5, 20.5, 30.5]})  # T=2 wins in every seed
    assert S.p_best(m)[2.0] == 1.0  # unpaired resampling would give far less: the seed spread is 10


# --------------------------------------------------------------------------- selection
def test_select_val_chooses_on_validation_and_reports_test():
    # validation favours T=8 by 2 points, test favours T=4 (the planted effect)
    df = table(val_shift=lambda t: 2.0 if t == 8.0 else 0.0)
    v = one(R.recommend(df))  # default: val, since the table has validation rows
    assert v["select"] == "val" and v["selected_on"] == "val" and v["best_temperature"] == 8.0
    test8 = df[(df["split"] == "test") & (df["method"] == "kd") & (df["temperature"] == 8.0)]["acc1"].mean()
    assert v["acc_mean"] == pytest.approx(test8, abs=1e-6)
    f = one(R.recommend(df, select="final"))
    assert f["selected_on"] == "test" and f["best_temperature"] == 4.0
    assert "test split (optimistic)" in f["sentence"]


def test_select_best_picks_each_runs_best_epoch():
    df = table(effect=0.0, noise=0.0)
    early = df[(df["role"] == "student") & (df["method"] == "kd")].copy()
    early["epoch"] = 5
    early.loc[early["temperature"] == 2.0, "acc1"] += 3.0  # T=2 peaked early
    df = pd.concat([df, early], ignore_index=True)
    b = one(R.recommend(df, select="best"))
    assert b["best_temperature"] == 2.0 and b["selected_on"] == "test"


def test_select_val_without_validation_rows_is_one_line_error():
    with pytest.raises(Exception, match=r"^--select val: the table has no validation rows"):
        R.recommend(table(), select="val")


def test_by_pools_other_settings_into_the_pairing_unit():
    a = table(extra={"batch_size": 64}, rng=3)
    b = table(extra={"batch_size": 128}, rng=4)
    b["run_id"] = "b" + b["run_id"]
    df = pd.concat([a, b[b["role"] == "student"]], ignore_index=True)
    per = R.recommend(df, select="final")
    assert sorted(r["setting"]["batch_size"] for r in per if r["method"] == "kd") == [64, 128]
    pooled = one(R.recommend(df, by=["optimizer"], select="final"))
    assert pooled["setting"] == {"optimizer": "sgd"} and pooled["n_seeds"] == 10 and pooled["best_temperature"] == 4.0
    with pytest.raises(Exception, match=r"^--by: unknown field 'optimiser'; fields of this table: .*optimizer"):
        R.recommend(df, by=["optimiser"])


def test_gains_against_kd_at_the_reference_and_ls_at_the_same_temperature():
    df = table(methods=("kd", "ls", "dkd"))
    d = one(R.recommend(df, select="final", reference_T=8.0), "dkd")
    assert d["reference_temperature"] == 8.0
    assert d["delta_vs_kd_ref"] == pytest.approx(1.5, abs=0.7) and d["delta_vs_kd_ref_ci"] is not None
    assert d["delta_vs_ls_same_T"] == pytest.approx(0.0, abs=0.7)
    assert one(R.recommend(df, select="final"), "ls")["delta_vs_ls_same_T"] is None


# --------------------------------------------------------------------------- CLI
STUDY = """
from tstudy import RunConfig, Study
teacher = RunConfig(dataset="digits", model="mlp_l", epochs=2, lr=0.05)
study = Study(name="rec", base=RunConfig(dataset="digits", model="mlp_s", teacher=teacher, method="kd",
              epochs=2, lr=0.05), axes={("method", "temperature"): [("ce", None), ("kd", 1.0), ("kd", 4.0)]},
              seeds=[0, 1], reference_temperature=1.0)
"""
JSON_FIELDS = {"setting", "method", "best_temperature", "p_best", "near_best_temperatures", "acc_mean", "ci_low",
               "ci_high", "delta_vs_ce", "delta_vs_ce_ci", "n_seeds"}


def test_recommend_cli_prints_json_records_and_the_analysis_module_reads_any_table(tmp_path, capsys):
    f = tmp_path / "rec.py"
    f.write_text(textwrap.dedent(STUDY))
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(f), "--root", str(root), "--json"]) == 0
    out, err = capsys.readouterr()
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert JSON_FIELDS <= set(rec) and rec["method"] == "kd" and rec["n_seeds"] == 2
    assert rec["reference_temperature"] == 1.0 and rec["best_temperature"] in (1.0, 4.0)
    assert rec["delta_vs_ce"] is not None and len(rec["delta_vs_ce_ci"]) == 2
    assert "results.parquet" in err  # the collect line goes to stderr, stdout stays JSON
    assert main(["recommend", str(f), "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "T was selected on the **test** split" in text and "P(best)" in text
    table_path = root / "rec" / "results.parquet"
    p = subprocess.run([sys.executable, "-m", "analysis", "recommend", str(table_path), "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[0])["acc_mean"] == rec["acc_mean"]
    bad = subprocess.run([sys.executable, "-m", "analysis", "recommend", str(tmp_path / "nope.parquet")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is not a file" in bad.stderr
    assert main(["figures", str(f), "--root", str(root)]) == 0
    report = (root / "rec" / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Recommended temperature"
    assert "T was selected on the **test** split" in report.split("## What was run")[0]
    assert json.loads((root / "rec" / "tables" / "recommendation.json").read_text().splitlines()[0]) == rec
    assert main(["recommend", str(f), "--root", str(root), "--by", "optimiser"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("tstudy: error: --by: unknown field")


@pytest.mark.parametrize("effect_T, edge", [(TEMPS[0], "lowest"), (TEMPS[-1], "highest"), (TEMPS[2], None)])
def test_a_best_temperature_at_the_grids_edge_says_to_extend_the_grid(effect_T, edge):
    r = one(R.recommend(table(effect_T=effect_T, effect=3.0), select="final"))
    assert r["best_temperature"] == effect_T and r["best_at_edge"] == edge
    assert ("extend the grid" in r["sentence"]) == (edge is not None)
    smoothed = R.records_table([r])["smoothed T (CI)"].iloc[0]
    assert smoothed.startswith({"lowest": "≤ ", "highest": "≥ ", None: ""}[edge] + f"{r['smoothed_temperature']:.3g}")
    assert R.grid_edge(1.0, [1.0, 2.0]) is None  # with two temperatures every best is an edge: nothing to say


@pytest.mark.parametrize("seeds, warned", [(3, True), (5, False)])
def test_a_near_best_set_of_every_temperature_from_few_seeds_says_why(seeds, warned):
    r = one(R.recommend(table(effect=0.0, seeds=seeds), select="final"))
    assert r["near_best_temperatures"] == list(TEMPS)
    assert ("only large gaps are significant" in r["sentence"]) == warned
