"""analysis: every figure's plotted data equals what the results table implies (synthetic tables
and teacher profiles with known answers), the tables pick the right temperatures, write_report
writes what the data supports, the Frank & Davis study files expand (with overrides), and a tiny
real study goes from `tstudy launch` to `tstudy figures`."""
import math
import textwrap
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import figures, style, tables
from analysis.profiles import load_profile, study_profiles
from analysis.report import write_report
from tstudy import RunConfig, Study
from tstudy.cli import main
from tstudy.losses import ls_entropy
from tstudy.results import RESULTS
from tstudy.store import RunStore
from tstudy.study import load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies" / "frank_davis"
STUDY_FILES = ["fig1_methods.py", "fig2_duration_optimizer_batch.py", "fig3_early_vs_final.py",
               "fig4_softmax_entropy.py", "fig5_relational.py", "teacher_finetune.py", "student_init.py",
               "granularity.py"]
SEED_OFFSETS = (-1.0, 0.0, 1.0)  # per-seed deviations: mean = base, std (ddof=1) = 1


# --------------------------------------------------------------------------- synthetic tables
COMMON = dict(dataset="digits", labels="fine", image_size=None, lr=0.05, schedule="step", weight_decay=5e-4,
              precision="fp32", optimizer="sgd", batch_size=64, epochs=10)


def teacher_rows(run_id="T0", acc=90.0, init="scratch", model="mlp_l", epochs=10):
    return [dict(COMMON, run_id=run_id, role="teacher", status="done", epoch=epochs, split=s, acc1=acc,
                 temperature=np.nan, method="ce", method_label="ce", seed=0, model=model, init=init,
                 teacher_id=None, teacher_model=None, teacher_kind=None, epochs=epochs) for s in ("train", "test")]


_n = [0]


def student_rows(method, T, seed, acc, *, label=None, status="done", epochs=10, early=None, teacher="T0",
                 last_epoch=None, **kw):
    """One student run: a train+test row at the final epoch (or at ``last_epoch`` when diverged),
    plus test rows at the ``early`` {epoch: acc} points."""
    _n[0] += 1
    rid = f"s{_n[0]:05d}"
    base = dict(COMMON, run_id=rid, role="student", status=status, method=method, method_label=label or method,
                temperature=np.nan if T is None else float(T), seed=seed, model="mlp_s", init="scratch",
                teacher_id=None if method == "ce" else teacher, teacher_model=None if method == "ce" else "mlp_l",
                teacher_kind=None if method == "ce" else "trained")
    base.update(epochs=epochs, **kw)
    end = epochs if status == "done" else last_epoch
    rows = [dict(base, epoch=end, split=s, acc1=acc) for s in ("train", "test")]
    for e, a in (early or {}).items():
        rows.append(dict(base, epoch=e, split="test", acc1=a))
    return rows


def seeds_rows(method, T, mean, n=3, **kw):
    rows = []
    for seed, off in zip(range(n), SEED_OFFSETS if n == 3 else [0.0] * n):
        rows += student_rows(method, T, seed, mean + off, **kw)
    return rows


def frame(rows):
    return pd.DataFrame(rows)


def artists(fig_or_ax, gid):
    axes = fig_or_ax.axes if isinstance(fig_or_ax, plt.Figure) else [fig_or_ax]
    return [a for ax in axes for a in list(ax.get_lines()) + list(ax.collections) + list(ax.patches)
            if a.get_gid() == gid]


def line(ax, gid):
    found = [l for l in ax.get_lines() if l.get_gid() == gid]
    assert len(found) == 1, (gid, [l.get_gid() for l in ax.get_lines()])
    return found[0]


def band_has(coll, x, lo, hi):
    v = np.vstack([p.vertices for p in coll.get_paths()])
    at = v[np.isclose(v[:, 0], x)]
    return np.isclose(at[:, 1], lo).any() and np.isclose(at[:, 1], hi).any()


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_gid() != "early"]


def teacher_text(ax):
    found = [t.get_text() for t in ax.texts if t.get_gid() == "teacher:text"]
    return found[0] if found else None


KD = {1: 70.0, 2: 74.0, 4: 76.0}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- Fig. 1
def fig1_table():
    rows = teacher_rows(acc=88.0)
    for T, m in KD.items():
        rows += seeds_rows("kd", T, m)
    rows += seeds_rows("dkd", 1, 60.0) + seeds_rows("dkd", 4, 65.0)
    rows += seeds_rows("ce", None, 71.0)
    rows += student_rows("kd", 8, 0, np.nan, status="diverged", last_epoch=3)
    return frame(rows)


def test_fig1_plots_seed_means_std_references_and_diverged_runs():
    fig = figures.acc_vs_temperature(fig1_table(), band="std")
    (ax,) = visible_axes(fig)
    kd = line(ax, "kd")
    np.testing.assert_allclose(kd.get_xdata(), sorted(KD))
    np.testing.assert_allclose(kd.get_ydata(), [KD[t] for t in sorted(KD)])
    (band,) = artists(ax, "kd:band")
    assert all(band_has(band, t, KD[t] - 1, KD[t] + 1) for t in KD)
    np.testing.assert_allclose(line(ax, "dkd").get_ydata(), [60.0, 65.0])
    np.testing.assert_allclose(line(ax, "ce").get_ydata(), [71.0, 71.0])
    assert teacher_text(ax) == "teacher 88.0 (above)" and not artists(ax, "teacher")  # 88 > the data
    (div,) = artists(ax, "diverged")
    np.testing.assert_allclose(div.get_offsets()[:, 0], [8.0])
    assert ax.get_xscale() == "log"
    (legend,) = fig.legends
    assert "± 1 std" in legend.get_title().get_text()
    assert any("diverged" in t.get_text() for t in legend.get_texts())


def test_fig1_separates_teachers_that_differ_in_init():
    rows = teacher_rows("T0", 80.0, init="scratch") + teacher_rows("T1", 85.0, init="imagenet")
    rows += seeds_rows("kd", 4, 70.0, teacher="T0") + seeds_rows("kd", 4, 75.0, teacher="T1")
    fig = figures.acc_vs_temperature(frame(rows))
    axes = visible_axes(fig)
    assert len(axes) == 2
    got = {ax.get_title(): (line(ax, "kd").get_ydata()[0], teacher_text(ax)) for ax in axes}
    assert got == {"teacher_init=imagenet": (75.0, "teacher 85.0 (above)"),
                   "teacher_init=scratch": (70.0, "teacher 80.0 (above)")}
    assert axes[0].get_ylim() == axes[1].get_ylim()  # teacher_init is SIDE_BY_SIDE: one row, one y-range


def test_fig1_students_without_teacher_join_the_panels_of_their_model():
    rows = teacher_rows("T0", 80.0, model="mlp_l") + teacher_rows("T1", 85.0, model="cnn_l")
    rows += seeds_rows("kd", 4, 70.0, teacher="T0") + seeds_rows("kd", 4, 75.0, teacher="T1", model="cnn_s",
                                                                teacher_model="cnn_l")
    rows += seeds_rows("ce", None, 60.0) + seeds_rows("ce", None, 65.0, model="cnn_s")
    rows += seeds_rows("ce", None, 50.0, model="mlp_m")  # no KD student of this model: a panel of its own
    df = frame(rows)
    assert figures.settings(figures.final_test_rows(df).query("role == 'student'")) == ["teacher_model", "model"]
    fig = figures.acc_vs_temperature(df)
    got = {ax.get_title(): (line(ax, "ce").get_ydata()[0],
                            line(ax, "kd").get_ydata()[0] if artists(ax, "kd") else None) for ax in visible_axes(fig)}
    assert got == {"teacher_model=cnn_l, model=cnn_s": (65.0, 75.0), "teacher_model=mlp_l, model=mlp_s": (60.0, 70.0),
                   "teacher_model=none, model=mlp_m": (50.0, None)}
    (alone,) = [ax for ax in visible_axes(fig) if ax.get_title().endswith("mlp_m")]
    assert not artists(alone, "teacher")  # no teacher line where no student has a teacher


# --------------------------------------------------------------------------- Fig. 2
def acc2(opt, bs, ep, T):
    return 50 + (5 if opt == "adamw" else 0) + bs / 64 + ep / 10 + T


def test_fig2_one_panel_per_optimizer_and_batch_one_line_per_duration():
    rows = teacher_rows()
    for opt in ("sgd", "adamw"):
        for bs in (64, 256):
            for ep in (10, 20):
                for T in (1, 4):
                    rows += seeds_rows("kd", T, acc2(opt, bs, ep, T), optimizer=opt, batch_size=bs, epochs=ep)
    rows += seeds_rows("dkd", 4, 10.0)  # another method: a row of its own
    fig = figures.acc_vs_temperature_by_duration(frame(rows))
    axes = [ax for ax in fig.axes if ax.get_gid() == "kd"]
    assert len(axes) == 4 and len(fig.axes) == 5  # kd: 4 panels; dkd: its one (sgd, 64); no empty slot
    (dkd,) = [ax for ax in fig.axes if ax.get_gid() == "dkd"]
    np.testing.assert_allclose(line(dkd, "epochs=10").get_ydata(), [10.0])
    seen = set()
    for ax in axes:
        key = dict(kv.split("=") for kv in ax.get_title().split("; ")[1].replace("\n", " ").split(", "))
        opt, bs = key["optimizer"], int(key["batch_size"])
        seen.add((opt, bs))
        for ep in (10, 20):
            ln = line(ax, f"epochs={ep}")
            np.testing.assert_allclose(ln.get_xdata(), [1, 4])
            np.testing.assert_allclose(ln.get_ydata(), [acc2(opt, bs, ep, T) for T in (1, 4)])
            assert artists(ax, f"epochs={ep}:band")
        assert not artists(ax, "dkd")
    assert seen == {("sgd", 64), ("sgd", 256), ("adamw", 64), ("adamw", 256)}


# --------------------------------------------------------------------------- Fig. 3
FINAL = {1: 70.0, 4: 74.0, 16: 72.0}
EARLY = {1: 50.0, 4: 45.0, 16: 40.0}


def fig3_table():
    rows = teacher_rows()
    for T in FINAL:
        for seed, off in enumerate(SEED_OFFSETS):
            rows += student_rows("kd", T, seed, FINAL[T] + off, early={5: EARLY[T] + off, 2: 0.0})
    rows += student_rows("kd", 1, 9, 0.0)  # no evaluation at epoch 5: not one of "the same runs"
    rows += student_rows("kd", 4, 8, np.nan, status="diverged", last_epoch=6, early={5: 10.0})
    return frame(rows)


def test_fig3_early_and_final_side_by_side_no_twin_axis_stars_at_best_T():
    fig = figures.early_vs_final(fig3_table(), early_epoch=5)
    assert len(fig.axes) == 2  # no twin axis
    ax_e, ax_f = fig.axes
    assert (ax_e.get_gid(), ax_f.get_gid()) == ("early", "final")
    assert ax_e.get_position().x1 < ax_f.get_position().x0  # early left of final, side by side
    assert "epoch 5" in ax_e.get_title() and "epoch 10" in ax_f.get_title()
    final, early = line(ax_f, "kd"), line(ax_e, "kd@5")
    np.testing.assert_allclose(final.get_xdata(), sorted(FINAL))
    np.testing.assert_allclose(final.get_ydata(), [FINAL[t] for t in sorted(FINAL)])
    np.testing.assert_allclose(early.get_xdata(), sorted(EARLY))
    np.testing.assert_allclose(early.get_ydata(), [EARLY[t] for t in sorted(EARLY)])
    assert final.get_color() == early.get_color() and final.get_marker() == early.get_marker()  # one look
    np.testing.assert_allclose(line(ax_f, "kd:best").get_xydata(), [[4, 74.0]])  # the best T moves
    np.testing.assert_allclose(line(ax_e, "kd@5:best").get_xydata(), [[1, 50.0]])
    assert artists(ax_f, "diverged")
    for ax in fig.axes:  # each panel fits its own data: the early panel is not stretched to the final's
        lo, hi = ax.get_ylim()
        ys = line(ax, "kd" if ax is ax_f else "kd@5").get_ydata()
        assert lo < min(ys) - 1 and hi > max(ys) + 1 and hi - lo < 3 * (max(ys) - min(ys) + 4)


def test_fig3_default_early_point_is_the_latest_at_or_before_half_training():
    fig = figures.early_vs_final(fig3_table())
    (early,) = [a for a in fig.axes if a.get_gid() == "early"]
    assert line(early, "kd@5")
    assert figures.early_epochs(fig3_table()) == [2, 5]


# --------------------------------------------------------------------------- Fig. 4
def np_softmax(x, T):
    z = x.astype(np.float64) / T
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def np_entropy(x, T):
    p = np_softmax(x, T)
    return float(np.mean(-(p * np.log(np.where(p > 0, p, 1))).sum(axis=1)))


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 30)) * 3.0
    x[np.arange(400), rng.integers(0, 30, 400)] += 8.0  # a confident teacher
    return x.astype(np.float16)


def test_fig4_sorted_curves_and_entropy_matched_label_smoothing(logits):
    temps = [1, 4, 16]
    fig = figures.sorted_softmax(logits, temps, top=20)
    c = logits.shape[1]
    right = []
    for T in temps:
        (ax,) = [a for a in fig.axes if a.get_gid() == f"T={T}"]
        teacher = np.array([p.get_width() for p in ax.patches if p.get_gid() == "teacher"])
        ls = np.array([p.get_width() for p in ax.patches if p.get_gid() == "ls_matched"])
        assert len(teacher) == len(ls) == 20
        assert np.all(np.diff(teacher) <= 1e-12) and np.all(np.diff(ls) <= 1e-12)  # sorted
        assert teacher.sum() <= 1 + 1e-12 and ls.sum() <= 1 + 1e-12
        ref = np.sort(np_softmax(logits, T), axis=1)[:, ::-1].mean(axis=0)[:20]
        np.testing.assert_allclose(teacher, ref, rtol=1e-9, atol=1e-12)
        hi, lo = ls[0], ls[1]
        np.testing.assert_allclose(ls[1:], lo)
        assert abs(hi + (c - 1) * lo - 1) < 1e-9  # a distribution over all C classes
        h_ls = -hi * math.log(hi) - (c - 1) * lo * math.log(lo)
        assert abs(h_ls - np_entropy(logits, T)) < 1e-4
        assert "shrinks" in ax.get_xlabel()
        right.append(ax.get_xlim()[1])
    assert right[0] > right[1] > right[2]  # the probability axis range shrinks as T grows


def test_entropy_table_matches_numpy_and_label_smoothing(tmp_path, logits):
    d = tmp_path / "T0"
    d.mkdir()
    np.savez(d / "teacher_profile.npz", train_logits=logits, train_labels=np.zeros(len(logits), np.int64),
             test_acc1=np.float64(91.0))
    prof = load_profile(d, "T0", "mlp_l")
    t = tables.teacher_entropy_table({"T0": prof}, [4, 1, 16])
    assert list(t["temperature"]) == [1, 4, 16] and prof.test_acc1 == 91.0
    for r in t.itertuples():
        h = np_entropy(logits, r.temperature)
        assert abs(r.entropy_nats - h) < 1e-9
        assert abs(r.entropy_frac - h / math.log(30)) < 1e-9
        assert abs(ls_entropy(r.ls_epsilon, 30) - h) < 1e-9
    assert t["entropy_nats"].is_monotonic_increasing


# --------------------------------------------------------------------------- Fig. 5
def fig5_table():
    rows = teacher_rows()
    for i, m in enumerate(["kd", "ls", "kd_shuffled", "tckd", "nckd", "dkd"]):
        for T in (1, 4):
            rows += seeds_rows(m, T, 60.0 + i + T)
    for T in (1, 4):
        rows += seeds_rows("kd_topk", T, 50.0 + T, label="kd_topk(k=5)")
    rows += seeds_rows("ls", None, 40.0, label="ls(epsilon=0.1)")  # fixed ε: not entropy-matched
    rows += seeds_rows("ce", None, 55.0)
    return frame(rows)


def test_fig5_shows_kd_and_its_relational_ablations_only():
    df = fig5_table()
    fig = figures.relational(df)
    (ax,) = visible_axes(fig)
    gids = {l.get_gid() for l in ax.get_lines()}
    assert gids == {"kd", "ls", "kd_shuffled", "kd_topk(k=5)", "tckd", "nckd", "ce"}  # teacher (90): a note
    for i, m in enumerate(["kd", "ls", "kd_shuffled", "tckd", "nckd"]):
        np.testing.assert_allclose(line(ax, m).get_ydata(), [61.0 + i, 64.0 + i])
    np.testing.assert_allclose(line(ax, "kd_topk(k=5)").get_ydata(), [51.0, 54.0])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "LS, ε entropy-matched" in texts and "KD, top-k non-target (k=5)" in texts
    assert figures.supports_relational(df) and not figures.supports_relational(fig1_table())
    fig1 = figures.acc_vs_temperature(df)  # a method keeps its colour across figures
    assert line(visible_axes(fig1)[0], "kd").get_color() == line(ax, "kd").get_color()


# --------------------------------------------------------------------------- tables
def test_best_temperature_table_picks_best_runner_up_and_overlap():
    rows = []
    rows += seeds_rows("kd", 2, 78.0) + seeds_rows("kd", 8, 75.0)
    rows += [r for s, a in enumerate((80.0, 80.5, 79.5)) for r in student_rows("kd", 4, s, a)]  # 80 ± 0.5
    rows += student_rows("kd", 16, 0, np.nan, status="diverged", last_epoch=2)
    rows += seeds_rows("dkd", 1, 70.0) + seeds_rows("dkd", 2, 69.5)  # 70 ± 1 vs 69.5 ± 1: overlap
    rows += seeds_rows("tckd", 4, 60.0) + seeds_rows("tckd", 2, 60.0)  # tie: the smaller T
    rows += seeds_rows("ce", None, 50.0)  # no temperature: not in the table
    t = tables.best_temperature_table(frame(rows)).set_index("method_label")
    assert set(t.index) == {"kd", "dkd", "tckd"}
    kd = t.loc["kd"]
    assert (kd.best_T, kd.runner_up_T, kd.seeds, kd.diverged, kd.temperatures) == (4, 2, 3, 1, 3)
    np.testing.assert_allclose([kd.best_mean, kd.best_std, kd.runner_up_mean, kd.runner_up_std], [80, 0.5, 78, 1])
    assert not kd.overlap  # |80 - 78| = 2 > 0.5 + 1
    dkd = t.loc["dkd"]
    assert (dkd.best_T, dkd.runner_up_T) == (1, 2) and bool(dkd.overlap)
    assert (t.loc["tckd"].best_T, t.loc["tckd"].runner_up_T) == (2, 4)
    md = tables.md_table(tables.format_best_table(t.reset_index()))
    assert "80.00 ± 0.50" in md and "| kd |" in md


def test_best_temperature_table_per_setting():
    rows = seeds_rows("kd", 1, 70.0, optimizer="adamw") + seeds_rows("kd", 8, 65.0, optimizer="adamw")
    rows += seeds_rows("kd", 1, 60.0) + seeds_rows("kd", 8, 66.0)
    t = tables.best_temperature_table(frame(rows)).set_index("optimizer")
    assert t.loc["adamw", "best_T"] == 1 and t.loc["sgd", "best_T"] == 8
    assert not t.loc["sgd", "overlap"]  # 66 ± 1 vs 60 ± 1


def test_overlap_rule():
    rows = []
    for T, vals in ((1, (10.0, 12.0)), (2, (13.0, 15.0)), (4, (20.0, 22.0)), (8, (23.5, 25.5))):
        for s, a in enumerate(vals):
            rows += student_rows("kd", T, s, a, label="kd")
    rows += [dict(r, method="dkd", method_label="dkd", run_id=r["run_id"] + "d") for r in rows if r["temperature"] <= 2]
    t = tables.best_temperature_table(frame(rows)).set_index("method_label")
    std = math.sqrt(2)  # two seeds 2 apart
    # kd: 24.5 ± 1.41 vs 21 ± 1.41: 3.5 > 2.83 -> no overlap; dkd: 14 vs 11: 3 > 2.83 -> no overlap
    assert t.loc["kd", "best_T"] == 8 and not t.loc["kd", "overlap"]
    np.testing.assert_allclose(t.loc["kd", "best_std"], std)
    assert t.loc["dkd", "best_T"] == 2 and not t.loc["dkd", "overlap"]


# --------------------------------------------------------------------------- report
def rich_table():
    rows = fig5_table().to_dict("records")
    for ep in (10, 20):
        for T in (1, 4):
            rows += seeds_rows("kd", T, 70.0 + T + ep / 10, epochs=ep, early={5: 50.0 + T})
    return frame(rows)


def test_write_report_writes_every_supported_figure_and_both_tables(tmp_path, logits):
    store = RunStore(tmp_path, "syn")
    store.study_dir.mkdir(parents=True)
    rich_table().to_parquet(store.study_dir / RESULTS)
    store.run_dir("T0").mkdir(parents=True)
    np.savez(store.run_dir("T0") / "teacher_profile.npz", train_logits=logits,
             train_labels=np.zeros(len(logits), np.int64), test_acc1=np.float64(93.0))
    study = Study(name="syn", base=RunConfig(dataset="digits", model="mlp_s", epochs=2))
    paths = write_report(study, store)
    figs = store.study_dir / "figures"
    stems = ["acc_vs_temperature", "acc_vs_temperature_by_duration", "early_vs_final", "sorted_softmax",
             "relational", "paired_delta"]
    for stem in stems:
        for ext in ("pdf", "png"):
            assert (figs / f"{stem}.{ext}") in paths and (figs / f"{stem}.{ext}").stat().st_size > 0
        assert b"/FontFile2" in (figs / f"{stem}.pdf").read_bytes()  # TrueType fonts
    assert (store.study_dir / "tables" / "best_temperature.csv").exists()
    ent = pd.read_csv(store.study_dir / "tables" / "teacher_entropy.csv")
    assert sorted(ent["temperature"]) == [1.0, 4.0]
    report = (store.study_dir / "report.md").read_text()
    for i, stem in enumerate(stems, 1):
        assert f"## Figure {i}" in report and f"(figures/{stem}.png)" in report
    assert "## Best temperature per setting" in report and "## Teacher softmax entropy per temperature" in report
    assert "1 not launched" in report and "Problems" not in report
    assert set(study_profiles(rich_table(), store)) == {"T0"}


def test_write_report_without_temperature_runs(tmp_path):
    store = RunStore(tmp_path, "plain")
    store.study_dir.mkdir(parents=True)
    frame(teacher_rows() + seeds_rows("ce", None, 50.0)).to_parquet(store.study_dir / RESULTS)
    paths = write_report(Study(name="plain", base=RunConfig(dataset="digits", model="mlp_s", epochs=2)), store)
    assert paths == [store.study_dir / "report.md"]
    assert "_(no data)_" in (store.study_dir / "report.md").read_text()


# --------------------------------------------------------------------------- study files
@pytest.mark.parametrize("name", STUDY_FILES)
def test_frank_davis_study_files_expand_fast_and_take_overrides(name):
    study = load_study(STUDIES / name)
    assert study.description and "chosen" in study.description.lower() and "known" in study.description.lower()
    t0 = time.perf_counter()
    runs = study.runs()
    assert time.perf_counter() - t0 < 1.0
    students = study.students()
    temps = sorted({r.temperature for r in students if r.temperature is not None})
    assert temps[0] == 1 and temps[-1] == 40 and len(temps) >= 8
    assert {r.dataset for r in runs} == {"cifar100"} and len(study.seeds) >= 3
    sgd = [r for r in students if r.optimizer == "sgd"]
    assert sgd and all((r.lr, r.momentum, r.weight_decay) == (0.05, 0.9, 5e-4) for r in sgd)
    full = [r for r in sgd if r.epochs == 240 and r.batch_size == 64]
    assert full and all(r.milestone_epochs == (150, 180, 210) for r in full)
    small = study.override({"dataset": "tinyimagenet", "epochs": 30})
    sruns = small.runs()
    assert {r.dataset for r in sruns} == {"tinyimagenet"}
    assert {r.epochs for r in small.students()} == {30}
    assert all(r.milestone_epochs == (19, 22, 26) for r in small.students())
    assert all(e < 30 for r in small.students() for e in r.eval_epochs)
    assert len(small.students()) <= len(students)


def test_frank_davis_pairs_and_plan_prints_the_run_count(tmp_path, capsys):
    fig1 = load_study(STUDIES / "fig1_methods.py")
    pairs = {(r.teacher.model, r.model) for r in fig1.students() if r.teacher is not None}
    assert pairs == {("resnet56", "resnet20"), ("resnet32x4", "resnet8x4")}
    fig5 = load_study(STUDIES / "fig5_relational.py")
    assert {r.method for r in fig5.students()} == {"ce", "kd", "ls", "kd_shuffled", "kd_topk", "tckd", "nckd"}
    tf = load_study(STUDIES / "teacher_finetune.py")
    assert {str(t.init) for t in tf.teachers()} == {"None", "imagenet"}
    si = load_study(STUDIES / "student_init.py")
    assert {str(r.init) for r in si.students()} == {"None", "imagenet"}
    gr = load_study(STUDIES / "granularity.py")
    assert {(r.labels, r.teacher.labels) for r in gr.students()} == {("fine", "fine"), ("coarse", "coarse")}
    assert {(r.teacher.model, r.model) for r in gr.students()} == pairs
    f3 = load_study(STUDIES / "fig3_early_vs_final.py")
    assert all(r.eval_epochs == (60, 120, 180) for r in f3.students())
    for name in STUDY_FILES:
        n = len(load_study(STUDIES / name).runs())
        t0 = time.perf_counter()
        assert main(["plan", str(STUDIES / name), "--root", str(tmp_path)]) == 0
        assert time.perf_counter() - t0 < 1.0
        assert f": {n} runs (" in capsys.readouterr().out


# --------------------------------------------------------------------------- end to end
E2E = """
from tstudy import RunConfig, Study
teacher = RunConfig(dataset="digits", model="mlp_l", epochs=2)
study = Study(name="e2e", base=RunConfig(dataset="digits", model="mlp_s", teacher=teacher, method="kd", epochs=2,
                                         eval_epochs=(1,)),
              axes={"method": ["ce", "kd", "ls"], "temperature": [1, 4]}, seeds=[0])
"""


def test_end_to_end_launch_then_figures(tmp_path):
    f = tmp_path / "e2e.py"
    f.write_text(textwrap.dedent(E2E))
    root = tmp_path / "root"
    assert main(["launch", str(f), "--root", str(root), "--device", "cpu"]) == 0
    assert main(["figures", str(f), "--root", str(root)]) == 0
    sd = root / "e2e"
    for stem in ("acc_vs_temperature", "early_vs_final", "sorted_softmax", "relational", "paired_delta"):
        assert (sd / "figures" / f"{stem}.png").stat().st_size > 0
        assert (sd / "figures" / f"{stem}.pdf").stat().st_size > 0
    assert not (sd / "figures" / "acc_vs_temperature_by_duration.png").exists()  # one training length
    report = (sd / "report.md").read_text()
    assert "## Figure 1" in report and "## Figure 2" not in report
    assert all(f"## Figure {i}" in report for i in (3, 4, 5))
    df = pd.read_parquet(sd / RESULTS)
    ent = pd.read_csv(sd / "tables" / "teacher_entropy.csv").set_index("temperature")
    ls = figures.final_test_rows(df).query("method == 'ls'").set_index("temperature")
    for T in (1.0, 4.0):  # the ε the `ls` runs trained with = the table's entropy-matched ε
        assert abs(ls.loc[T, "diag_epsilon"] - ent.loc[T, "ls_epsilon"]) < 1e-6
    fig = figures.acc_vs_temperature(df)
    (ax,) = visible_axes(fig)
    final = figures.final_test_rows(df)
    for m in ("kd", "ls"):
        exp = final[final["method"] == m].sort_values("temperature")
        np.testing.assert_allclose(line(ax, m).get_ydata(), exp["acc1"].values)
    best = pd.read_csv(sd / "tables" / "best_temperature.csv")
    assert set(best["method_label"]) == {"kd", "ls"}


# --------------------------------------------------------------------------- readable figures (issue 14)
TEMPS11 = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40]
SEVEN = ["kd", "ctkd", "dtkd", "kd_topk", "ls", "ttm"]


def seven_method_table(teacher_acc=98.2, epochs_values=(10,)):
    """A 241-run-like digits study: 6 methods x 11 T x 3 seeds + ce, a near-perfect teacher, an
    early evaluation at epoch 5 far below the final accuracy."""
    rng = np.random.default_rng(0)
    rows = teacher_rows(acc=teacher_acc)
    for ep in epochs_values:
        for i, m in enumerate(SEVEN):
            for T in TEMPS11:
                base = 90 - 3 * abs(np.log2(T) - 2 - 0.3 * i) - i - (10 - ep) / 2
                for s in range(3):
                    rows += student_rows(m, T, s, base + rng.normal(0, 1), epochs=ep,
                                         early={5: base - 35 + 4 * np.log2(T) + rng.normal(0, 2)})
    for s in range(3):
        rows += student_rows("ce", None, s, 80 + rng.normal(0, 1))
    return frame(rows)


def quickstart_table():
    """The quickstart's shape: ce + kd at T in {1, 2, 4, 8, 16}, 3 seeds, evaluations at 10 and 20 of 30."""
    rows = teacher_rows(acc=97.5, epochs=30)
    for T in (1, 2, 4, 8, 16):
        for s, off in enumerate(SEED_OFFSETS):
            rows += student_rows("kd", T, s, 90 + T / 4 + off, epochs=30, early={10: 60 + T + off, 20: 85 + off})
    for s, off in enumerate(SEED_OFFSETS):
        rows += student_rows("ce", None, s, 88 + off, epochs=30, early={10: 55.0, 20: 80.0})
    return frame(rows)


def all_figures(df, band="ci"):
    yield "fig1", figures.acc_vs_temperature(df, band=band)
    yield "fig3", figures.early_vs_final(df, band=band)
    yield "delta", figures.paired_delta(df)
    if figures.supports_relational(df):
        yield "fig5", figures.relational(df, band=band)


@pytest.mark.parametrize("make", [seven_method_table, quickstart_table])
def test_no_two_texts_of_any_figure_overlap(make):
    df = make()
    for name, fig in all_figures(df):
        fig.set_dpi(60)
        assert figures.overlapping_texts(fig) == [], name
        plt.close(fig)
    dur = seven_method_table(epochs_values=(6, 10))
    fig = figures.acc_vs_temperature_by_duration(dur)
    fig.set_dpi(60)
    assert figures.overlapping_texts(fig) == []


def test_no_text_overlaps_in_facets_side_by_side_panels_and_fig4(logits):
    rows = []
    for lab in ("fine", "coarse"):
        rows += teacher_rows(f"T{lab}", 99.0)
        for i in range(8):
            for T in TEMPS11:
                rows += seeds_rows(f"method_{i}", T, 60.0 + i + np.log2(T), labels=lab, teacher=f"T{lab}")
    df = frame(rows)
    for fig in (figures.acc_vs_temperature(df), figures.paired_delta(df), figures.sorted_softmax(logits, TEMPS11[:6])):
        fig.set_dpi(60)
        assert figures.overlapping_texts(fig) == []


def test_overlap_check_sees_overlapping_texts():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one text")
    ax.text(0.5, 0.5, "another text")
    assert ("one text", "another text") in figures.overlapping_texts(fig)


def test_at_least_28_methods_get_pairwise_distinct_looks_and_keep_them():
    labels = [f"m{i:02d}" for i in range(28)] + ["ce"]
    looks = style.looks(labels)
    distinct = {(lk.color, lk.marker, lk.linestyle) for lab, lk in looks.items() if lab != "ce"}
    assert len(distinct) == 28
    assert len({lk.color for lab, lk in looks.items() if lab in labels[:7]}) == 7  # 7 methods: 7 colours
    assert looks["ce"] == style.REFERENCE_LOOK and looks["ce"].color not in style.OKABE_ITO
    assert style.looks(reversed(labels)) == looks  # order-independent: same method, same look
    df = seven_method_table()
    fig1, fig3 = figures.acc_vs_temperature(df), figures.early_vs_final(df)
    for m in SEVEN:
        a, b = line(fig1.axes[0], m), line(fig3.axes[1], m)
        assert (a.get_color(), a.get_marker(), a.get_linestyle()) == (b.get_color(), b.get_marker(), b.get_linestyle())


def test_more_than_six_lines_are_split_into_facets_with_one_y_range():
    rows = teacher_rows()
    for i in range(8):
        for T in (1, 4):
            rows += seeds_rows(f"m{i}", T, 60.0 + i + T)
    rows += seeds_rows("ce", None, 55.0)
    fig = figures.acc_vs_temperature(frame(rows))
    axes = visible_axes(fig)
    assert len(axes) == 2
    per = [{l.get_gid() for l in ax.get_lines()} - {"ce", "teacher"} for ax in axes]
    assert per[0] | per[1] == {f"m{i}" for i in range(8)} and not per[0] & per[1]
    assert all(len(p) <= figures.MAX_LINES for p in per)
    assert all(artists(ax, "ce") for ax in axes) and axes[0].get_ylim() == axes[1].get_ylim()


def test_fig2_draws_every_method_and_has_no_empty_axes():
    fig = figures.acc_vs_temperature_by_duration(seven_method_table(epochs_values=(6, 10)))
    assert sorted(ax.get_gid() for ax in fig.axes) == sorted(SEVEN)  # one panel per method here
    for ax in fig.axes:
        assert ax.get_visible() and artists(ax, "epochs=6") and artists(ax, "epochs=10")


def test_teacher_annotation_never_changes_the_y_range():
    low = seven_method_table(teacher_acc=99.9)
    fig = figures.acc_vs_temperature(low)
    ax = fig.axes[0]
    no_teacher = figures.acc_vs_temperature(low[low["role"] == "student"]).axes[0]
    assert ax.get_ylim() == no_teacher.get_ylim() and ax.get_ylim()[1] < 99.9
    assert teacher_text(ax) == "teacher 99.9 (above)" and not artists(ax, "teacher")
    inside = figures.acc_vs_temperature(seven_method_table(teacher_acc=85.0)).axes[0]
    assert inside.get_ylim() == ax.get_ylim() and artists(inside, "teacher")  # dashed line where it fits
    (t,) = [t for t in inside.texts if t.get_gid() == "teacher:text"]
    assert t.get_position() == (0.02, 0.97) and t.get_transform() == inside.transAxes  # a corner, inside


def test_band_ci_is_the_stats_interval_and_std_the_std_and_the_caption_says_which():
    from analysis import stats
    df = fig1_table()
    ci = figures.acc_vs_temperature(df, band="ci")
    sd = figures.acc_vs_temperature(df, band="std")
    iv = stats.mean_interval([KD[4] + o for o in SEED_OFFSETS])
    assert band_has(artists(ci.axes[0], "kd:band")[0], 4, iv.low, iv.high)
    assert band_has(artists(sd.axes[0], "kd:band")[0], 4, KD[4] - 1, KD[4] + 1)
    assert "95 % interval" in ci.legends[0].get_title().get_text()
    assert "± 1 std" in sd.legends[0].get_title().get_text()
    assert figures.band_caption("ci") != figures.band_caption("std")
    near = frame(seeds_rows("kd", 1, 99.0) + seeds_rows("kd", 2, 98.0))  # a t interval past 100 % is cut there
    assert figures.seed_stats(figures.final_test_rows(near), band="ci")["high"].max() == 100.0
    with pytest.raises(ValueError):
        figures.acc_vs_temperature(df, band="sem")


def test_write_report_band_option_reaches_figures_and_captions(tmp_path):
    store = RunStore(tmp_path, "q")
    store.study_dir.mkdir(parents=True)
    quickstart_table().to_parquet(store.study_dir / RESULTS)
    study = Study(name="q", base=RunConfig(dataset="digits", model="mlp_s", epochs=2), reference_temperature=2)
    write_report(study, store, band="std")
    report = (store.study_dir / "report.md").read_text()
    assert figures.band_caption("std")[1:] in report and figures.band_caption("ci")[1:] not in report
    assert "## Figure 6: paired difference against T = 2" in report and "(figures/paired_delta.png)" in report
    from tstudy.cli import _parser  # the CLI flag: tstudy figures --band std
    assert _parser().parse_args(["figures", "s.py", "--band", "std"]).band == "std"
    assert _parser().parse_args(["figures", "s.py"]).band == "ci"
    (band,) = [a for a in _parser()._subparsers._group_actions[0].choices["figures"]._actions if a.dest == "band"]
    assert tuple(band.choices) == figures.BANDS  # the CLI offers the bands the figures draw


def test_a_figure_with_overlapping_text_is_listed_under_problems(tmp_path, monkeypatch):
    store = RunStore(tmp_path, "q")
    store.study_dir.mkdir(parents=True)
    quickstart_table().to_parquet(store.study_dir / RESULTS)
    study = Study(name="q", base=RunConfig(dataset="digits", model="mlp_s", epochs=2))
    write_report(study, store)
    assert "## Problems" not in (store.study_dir / "report.md").read_text()
    monkeypatch.setattr(figures, "overlapping_texts", lambda fig: [("teacher 98.2", "Accuracy vs temperature")])
    write_report(study, store)
    report = (store.study_dir / "report.md").read_text()
    assert "## Problems" in report and "- figure `acc_vs_temperature`: overlapping text" in report


def test_paired_delta_figure_plots_stats_paired_deltas_with_a_zero_line():
    from analysis import recommend, stats
    df = seven_method_table()
    fig = figures.paired_delta(df)
    ax = fig.axes[0]
    students = figures.final_test_rows(df).query("role == 'student' and status == 'done'")
    d = stats.paired_deltas(students, "acc1", recommend.REFERENCE_T, [])
    for m in SEVEN:
        g = d[d["method_label"] == m].sort_values("temperature")
        np.testing.assert_allclose(line(ax, m).get_ydata(), g["delta_mean"])
        i = list(g["temperature"]).index(8.0)
        assert band_has(artists(ax, f"{m}:band")[0], 8.0, g["delta_low"].iloc[i], g["delta_high"].iloc[i])
    np.testing.assert_allclose(line(ax, "zero").get_ydata(), [0, 0])
    np.testing.assert_allclose(line(ax, "reference").get_xdata(), [4, 4])
    np.testing.assert_allclose(line(figures.paired_delta(df, 8.0).axes[0], "kd").get_ydata()[5], 0.0)


def test_side_by_side_axes_put_values_in_one_row_with_one_y_range():
    rows = []
    for lab, acc in (("fine", 70.0), ("coarse", 85.0)):
        rows += teacher_rows(f"T{lab}", 90.0)
        for T in (1, 4):
            rows += seeds_rows("kd", T, acc + T, labels=lab, teacher=f"T{lab}")
    fig = figures.acc_vs_temperature(frame(rows))
    a, b = fig.axes
    assert {a.get_title(), b.get_title()} == {"labels=fine", "labels=coarse"}
    assert a.get_ylim() == b.get_ylim() and abs(a.get_position().y0 - b.get_position().y0) < 1e-9
    assert figures.SIDE_BY_SIDE == ["labels", "teacher_init", "init"]


def test_missing_setting_values_are_one_value_and_no_rows_are_lost():
    rows = seeds_rows("kd", 1, 70.0, image_size=None) + seeds_rows("kd", 4, 72.0, image_size=np.nan)
    rows += seeds_rows("kd", 1, 60.0, image_size=64) + seeds_rows("kd", 4, 62.0, image_size=64)
    df = frame(rows)
    st = figures.final_test_rows(df).query("role == 'student'")
    assert figures.settings(st) == ["image_size"]
    fig = figures.acc_vs_temperature(df)
    got = {ax.get_title(): list(line(ax, "kd").get_ydata()) for ax in fig.axes}
    assert got == {"image_size=64": [60.0, 62.0], "image_size=none": [70.0, 72.0]}


def test_student_init_side_by_side_per_model_row_with_a_missing_init():
    rows = teacher_rows()
    for model, add in (("tv_resnet18", 0.0), ("tv_mobilenet_v2", 10.0)):
        for init, acc in ((None, 60.0), ("imagenet", 70.0)):
            for T in (1, 4):
                rows += seeds_rows("kd", T, acc + add + T, model=model, init=init)
    fig = figures.acc_vs_temperature(frame(rows))
    assert len(fig.axes) == 4
    rows_of = {}
    for ax in fig.axes:
        rows_of.setdefault(round(ax.get_position().y0, 6), []).append(ax)
    assert sorted(len(r) for r in rows_of.values()) == [2, 2]
    for r in rows_of.values():
        keys = [dict(kv.split("=") for kv in ax.get_title().split(", ")) for ax in r]
        assert sorted(k["init"] for k in keys) == ["imagenet", "none"] and r[0].get_ylim() == r[1].get_ylim()
        assert len({k["model"] for k in keys}) == 1  # one model per row


def test_accuracy_axes_stop_a_little_past_100():
    """A band reaching 100 % (few seeds, a wide t interval) gets no headroom far past 100."""
    rows = []
    for seed, (a, b) in enumerate([(30.0, 94.0), (60.0, 95.0), (90.0, 96.0)]):
        rows += student_rows("kd", 1, seed, a) + student_rows("kd", 2, seed, b)
    ax = figures.acc_vs_temperature(frame(rows)).axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 0 and 100 < hi <= 100 + 0.1 * 100 + 1e-9  # the band is cut at [0, 100]
    assert figures.overlapping_texts(ax.figure) == []


@pytest.mark.parametrize("draw", [figures.acc_vs_temperature, figures.relational, figures.paired_delta])
def test_a_one_panel_figure_wraps_its_title_and_caption_instead_of_widening(draw):
    """The title, the caption and the legend's columns fit the panel's width: the saved (tight)
    figure is no wider than the figure itself, and the title is one line when it fits."""
    fig = draw(fig5_table())
    fig.canvas.draw()
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width
    assert width <= fig.get_size_inches()[0] * 1.02
    assert figures.overlapping_texts(fig) == []
    title = fig._suptitle.get_text()
    assert len(title.replace("\n", " ")) > 40 or "\n" not in title
    plt.close(fig)


def test_a_study_figure_note_ends_every_title_and_the_legend_counts_seeds_per_point():
    """``figures.titled`` (a study's ``figure_note``) puts the note under each title, without
    overlap; a table whose points have 2 or 3 seeds says n=2–3, not the largest count."""
    rows = []
    for seed in (0, 1, 2):
        rows += student_rows("kd", 1, seed, 50.0 + seed) + student_rows("kd", 4, seed, 52.0 + seed)
    rows += student_rows("ttm", 1, 0, 55.0) + student_rows("ttm", 1, 1, 56.0)
    with figures.titled("small scale, CPU"):
        fig = figures.acc_vs_temperature(frame(rows))
    assert fig._suptitle.get_text().endswith("\n(small scale, CPU)")
    assert figures.overlapping_texts(fig) == []
    legend = " ".join(t.get_text() for lg in fig.legends for t in [lg.get_title()])
    assert "(n=2\u20133)" in legend
    assert "small scale" not in figures.acc_vs_temperature(frame(rows))._suptitle.get_text()
    rows += student_rows("ttm", 4, 0, 57.0) + student_rows("ttm", 4, 1, 58.0)  # ttm's pairs: 2 seeds, kd's: 3
    legend = " ".join(t.get_text() for lg in figures.paired_delta(frame(rows)).legends for t in [lg.get_title()])
    assert "(n=2\u20133)" in legend
    plt.close("all")
