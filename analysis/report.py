"""`tstudy figures`: every figure the study's data supports, plus report.md with the tables.

Written under ``<root>/<study>/``: ``figures/<name>.pdf`` (TrueType fonts) and ``.png`` for

* ``acc_vs_temperature`` — Fig. 1 (any student run that uses a temperature),
* ``acc_vs_temperature_by_duration`` — Fig. 2 (students with more than one ``epochs`` value),
* ``early_vs_final`` — Fig. 3 (evaluations before the last epoch, e.g. from ``eval_epochs``),
* ``sorted_softmax`` (``sorted_softmax_<model>_<id>`` with several teachers) — Fig. 4 (a
  teacher profile on disk),
* ``relational`` — Fig. 5 (KD and at least one of ls / kd_shuffled / kd_topk / tckd / nckd),
* ``paired_delta`` — Δ accuracy vs T against the study's ``reference_temperature`` of the same
  method, seed by seed (a method with a run at the reference T and at another T),

``tables/recommendation.json`` (``tstudy recommend --json``'s records), ``tables/best_temperature.csv``
and ``tables/teacher_entropy.csv``, and ``report.md``: it opens with the recommendation (how T was
selected, the table, one sentence per setting and method), then what was run (and what is missing
or failed), the figures, expected best accuracy against the number of temperatures tried, and
the other tables.
"""
from __future__ import annotations

import collections
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd

from analysis import figures, recommend, style, tables
from analysis.profiles import study_profiles
from analysis.tables import best_temperature_table  # noqa: F401  (kept importable from here)
from tstudy import atomic
from tstudy.results import RESULTS
from tstudy.store import DIVERGED, RunStore
from tstudy.study import Study
from tstudy.text import counted

DEFAULT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # Fig. 4 / entropy table when no student uses T



def _what_was_run(study: Study, store: RunStore, df: pd.DataFrame) -> str:
    runs = df.drop_duplicates("run_id") if len(df) else df
    students = df[df["role"] == "student"] if len(df) else df
    n_teachers = int((runs["role"] == "teacher").sum()) if len(runs) else 0
    status = runs["status"].value_counts().to_dict() if len(runs) else {}
    temps = sorted(students["temperature"].dropna().unique()) if len(students) else []
    line = (f"{counted(len(runs), 'run')} in the table ({counted(n_teachers, 'teacher')}, "
            f"{counted(len(runs) - n_teachers, 'student')}); "
            f"status: {status}. "
            f"Methods: {', '.join(sorted(students['method_label'].unique())) if len(students) else '-'}; "
            f"temperatures: {', '.join(f'{t:g}' for t in temps) or '-'}; "
            f"seeds: {', '.join(str(s) for s in sorted(students['seed'].unique())) if len(students) else '-'}.")
    for col in ("dataset", "model", "teacher_model", "optimizer", "batch_size", "epochs"):
        if len(students) and col in students and students[col].notna().any():
            vals = sorted({figures._fmt(v) for v in students[col].dropna().unique()})
            line += f" {col}: {', '.join(vals)};"
    try:
        planned = study.runs()
        in_table = set(runs["run_id"]) if len(runs) else set()
        missing = [(r.run_id, store.state(r)) for r in planned if r.run_id not in in_table]
    except Exception as e:  # noqa: BLE001 - the report is still useful without this line
        return line + f"\n\n(could not compare with the study's plan: {type(e).__name__}: {e})\n"
    line += f"\n\nThe study plans {counted(len(planned), 'run')}."
    if missing:
        counts = collections.Counter(s.status for _, s in missing)
        line += (" Not in the table (not shown in any figure): "
                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")
        bad = [(i, s) for i, s in missing if s.status not in ("not launched", "running")]
        for i, s in bad[:20]:
            line += f"\n- `{i}`: {s.status}" + (f" ({s.reason})" if s.reason else "")
        if len(bad) > 20:
            line += f"\n- ... and {len(bad) - 20} more"
    n_div = int((runs["status"] == DIVERGED).sum()) if len(runs) else 0
    if n_div:
        line += (f"\n\n{counted(n_div, 'diverged run')} {'is' if n_div == 1 else 'are'} marked with red crosses in the "
                 "figures (not in the means).")
    return line + "\n"


def _recommendation(records: list[dict]) -> str:
    if not records:
        return "No finished student run uses a temperature: nothing to recommend.\n"
    sel = records[0]["select"]
    return (recommend.selection_statement(records, sel) + " P(best): share of joint resamples of the seeds in "
            "which T has the highest mean; near-best: the temperatures no other is significantly better than "
            "(pairwise paired t-tests, Holm-corrected, 5 %); Δ: paired differences at the recommended T "
            "(`tstudy recommend` prints the same; `--json` for machines).\n\n"
            + tables.md_table(recommend.records_table(records)) + "\n"
            + "\n".join(f"- {r['sentence']}" for r in records) + "\n")


def _expected_best_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {k: figures._fmt(v) for k, v in r["setting"].items()}
        row["method"] = r["method"]
        row.update({f"n={i}": f"{v:.2f}" for i, v in enumerate(r["expected_best"], 1) if v is not None})
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def write_report(study: Study, store: RunStore, band: str = "ci") -> list[Path]:
    """Write the figures the data supports (PDF + PNG) under <study>/figures, the tables under
    <study>/tables, and <study>/report.md; return the paths written. ``band``: the shaded band
    around each mean over seeds, ``"ci"`` (95 % interval of the mean) or ``"std"`` (± 1 std)."""
    figures._check_band(band)
    shaded = figures.band_caption(band)
    shaded = shaded[:1].upper() + shaded[1:] + "."
    path = store.study_dir / RESULTS
    df = pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["run_id", "role", "split", "status"])
    out = store.study_dir / "figures"
    paths: list[Path] = []
    sections: list[tuple[str, str, str]] = []  # (heading, png path relative to report, caption)
    problems: list[str] = []

    def add(stem: str, heading: str, caption: str, make: Callable[[], object]) -> None:
        try:
            with figures.titled(study.figure_note):
                fig = make()
        except Exception as e:  # noqa: BLE001 - one broken figure must not lose the others
            warnings.warn(f"figure {stem}: {type(e).__name__}: {e}")
            problems.append(f"- figure `{stem}` could not be drawn: {type(e).__name__}: {e}")
            return
        clash = figures.overlapping_texts(fig)  # a layout real data can still break: say so, don't hide it
        if clash:
            problems.append(f"- figure `{stem}`: overlapping text, e.g. {clash[0][0]!r} and {clash[0][1]!r}")
        paths.extend(style.save(fig, out, stem))
        sections.append((heading, f"figures/{stem}.png", caption))

    students = df[df["role"] == "student"] if len(df) else df
    temp_students = students[students["temperature"].notna()] if len(students) else students
    if len(temp_students):
        n_methods = temp_students["method_label"].nunique()
        fig_title = ("Accuracy vs temperature, by KD method" if n_methods > 1
                     else f"Accuracy vs temperature ({temp_students['method_label'].iloc[0]})")
        add("acc_vs_temperature", ("Figure 1: " if n_methods > 1 else "") + fig_title,
            "Final test accuracy of the students, mean over seeds; " + shaded + " Grey dotted: methods without "
            "a temperature (CE only); the teacher's accuracy is noted in each panel's corner (dashed where it "
            "lies within the axis range).",
            lambda: figures.acc_vs_temperature(df, title=fig_title, band=band))
        if temp_students["epochs"].nunique() > 1:
            add("acc_vs_temperature_by_duration", "Figure 2: accuracy vs temperature by training length",
                "One line per number of epochs; panels per method (a row each when a method has several) and "
                "per optimizer and batch size. " + shaded,
                lambda: figures.acc_vs_temperature_by_duration(df, band=band))
        if figures.early_epochs(df):
            add("early_vs_final", "Figure 3: an earlier evaluation vs the last epoch",
                "Left: an earlier evaluation, right: the last epoch of the same runs (each panel its own "
                "y-range); a star marks each method's best T. " + shaded,
                lambda: figures.early_vs_final(df, band=band))
    profiles = study_profiles(df, store) if len(df) else {}
    temps = sorted(float(t) for t in temp_students["temperature"].unique()) if len(temp_students) else []
    temps = temps or list(DEFAULT_TEMPERATURES)
    for rid, prof in profiles.items():
        stem = "sorted_softmax" if len(profiles) == 1 else f"sorted_softmax_{prof.model}_{rid[:6]}"
        add(stem, f"Figure 4: teacher {prof.name}: sorted softmax vs entropy-matched label smoothing",
            f"Teacher test acc1 {prof.test_acc1:.2f}; {prof.logits.shape[0]} training samples, "
            f"{prof.num_classes} classes. The probability axis is scaled per panel.",
            lambda p=prof: figures.sorted_softmax(p.logits, temps, title=f"Teacher {p.name}: mean sorted softmax "
                                                  "(colour) vs entropy-matched label smoothing (grey)"))
    if len(df) and figures.supports_relational(df):
        add("relational", "Figure 5: relational information (KD and its ablations)",
            "KD, entropy-matched label smoothing, shuffled non-target, top-k, TCKD-only and NCKD-only "
            "students across temperatures. " + shaded, lambda: figures.relational(df, band=band))
    ref_T = study.reference_temperature
    if len(temp_students) and temp_students["temperature"].nunique() > 1 and \
            (temp_students["temperature"] - ref_T).abs().lt(1e-9).any():
        add("paired_delta", f"Figure 6: paired difference against T = {ref_T:g}",
            f"Per method, final test accuracy at T minus the same method's at T = {ref_T:g} (the study's "
            "reference_temperature), seed by seed; shaded: the paired 95 % interval. Above zero: better than "
            "the reference T.", lambda: figures.paired_delta(df, ref_T))

    try:
        records = recommend.recommend(df, reference_T=study.reference_temperature)
    except Exception as e:  # noqa: BLE001 - the figures and tables are still worth writing
        warnings.warn(f"recommendation: {type(e).__name__}: {e}")
        problems.append(f"- the recommendation could not be computed: {type(e).__name__}: {e}")
        records = []
    best = tables.best_temperature_table(df)
    entropy = tables.teacher_entropy_table(profiles, temps) if profiles else pd.DataFrame()
    baselines = tables.baseline_table(df)
    tdir = store.study_dir / "tables"
    for name, t in (("best_temperature", best), ("teacher_entropy", entropy), ("vs_baselines", baselines)):
        if len(t):
            tdir.mkdir(parents=True, exist_ok=True)
            p = tdir / f"{name}.csv"
            atomic.write_bytes(p, t.to_csv(index=False).encode())
            paths.append(p)
    if records:
        tdir.mkdir(parents=True, exist_ok=True)
        p = tdir / "recommendation.json"
        atomic.write_bytes(p, (recommend.render(records, as_json=True) + "\n").encode())
        paths.append(p)

    lines = [f"# {study.name}\n", study.description.strip() + "\n" if study.description else "",
             "## Recommended temperature\n", _recommendation(records),
             "## What was run\n", _what_was_run(study, store, df)]
    for heading, png, caption in sections:
        lines.append(f"## {heading}\n\n![{heading}]({png})\n\n{caption}\n")
    if problems:
        lines.append("## Problems\n\n" + "\n".join(problems) + "\n")
    lines.append("## Best temperature per setting by the mean (descriptive)\n\nFinal test acc1, mean ± std over "
                 "seeds; the runner-up temperature, and whether the two mean ± std intervals overlap. Overlapping "
                 "bands do not mean \"no difference\": the paired analysis above is the evidence.\n")
    lines.append(tables.md_table(tables.format_best_table(best)))
    if len(baselines):
        lines.append("## Paired differences against the CE and KD students\n\nFinal test acc1 of each method at each T "
                     "minus the CE student's, KD's at the same T and KD's at its best T (by the mean), seed by seed, "
                     "with the 95 % t interval over the paired seeds (n seeds in both).\n")
        lines.append(tables.md_table(tables.format_baseline_table(baselines)))
    if records:
        lines.append("## Expected best accuracy vs the number of temperatures tried\n\nDodge et al. (2019): the "
                     "expected best accuracy (on the split that selects T) after trying n temperatures of this grid, "
                     "one seed each, drawn at random; where it flattens, a larger grid is not worth it.\n")
        lines.append(tables.md_table(_expected_best_table(records)))
    if len(entropy):
        lines.append("## Teacher softmax entropy per temperature\n\nMean over the training samples of the "
                     "entropy of σ(v/T) (nats; log C is the uniform distribution's), and the label-smoothing "
                     "ε with the same entropy.\n")
        lines.append(tables.md_table(tables.format_entropy_table(entropy)))
    report = store.study_dir / "report.md"
    store.study_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(report, "\n".join(lines).encode())
    return paths + [report]


__all__ = ["write_report", "best_temperature_table"]
