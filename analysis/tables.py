"""Tables: the best temperature per setting, paired differences against the CE and KD students,
and the teacher's softmax entropy per temperature."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis import figures, stats
from analysis.profiles import TeacherProfile
from tstudy import losses as L


def best_temperature_table(df: pd.DataFrame, value: str = "acc1") -> pd.DataFrame:
    """Per setting and method (temperature-using methods only): the best temperature by the mean
    over seeds of the final test ``value``, with its std and seed count, the runner-up temperature
    (mean, std) and whether the two mean ± std intervals overlap (``|m1 − m2| ≤ s1 + s2``; then
    the best T is not clearly better). Ties go to the smaller T. ``diverged`` counts the group's
    diverged runs (not in the means); ``temperatures`` is how many temperatures had a finished run.
    Settings are the setting columns that vary among the students (as the figures' panels)."""
    cols = ["method_label", "best_T", "best_mean", "best_std", "seeds", "runner_up_T", "runner_up_mean",
            "runner_up_std", "overlap", "diverged", "temperatures"]
    if df.empty or "split" not in df:
        return pd.DataFrame(columns=cols)
    rows = figures.final_test_rows(df)
    st = rows[(rows["role"] == "student") & rows["temperature"].notna()]
    if st.empty:
        return pd.DataFrame(columns=cols)
    keys = figures.settings(st) + ["method_label"]
    out = []
    for key, g in st.groupby(keys, dropna=False, sort=True):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        ok = g[g["status"] == "done"]
        rec.update(best_T=np.nan, best_mean=np.nan, best_std=np.nan, seeds=0, runner_up_T=np.nan,
                   runner_up_mean=np.nan, runner_up_std=np.nan, overlap=None,
                   diverged=int((g["status"] == "diverged").sum()), temperatures=0)
        if len(ok):
            s = figures.seed_stats(ok, value).sort_values(["mean", "temperature"], ascending=[False, True],
                                                           kind="mergesort").reset_index(drop=True)
            b = s.loc[0]
            rec.update(best_T=float(b["temperature"]), best_mean=float(b["mean"]), best_std=float(b["std"]),
                       seeds=int(b["count"]), temperatures=len(s))
            if len(s) > 1:
                r = s.loc[1]
                rec.update(runner_up_T=float(r["temperature"]), runner_up_mean=float(r["mean"]),
                           runner_up_std=float(r["std"]),
                           overlap=bool(abs(b["mean"] - r["mean"]) <= b["std"] + r["std"]))
        out.append(rec)
    return pd.DataFrame(out)


BASELINE_COLUMNS = ["method_label", "temperature", "baseline", "baseline_T", "n", "delta_mean", "delta_low",
                    "delta_high", "kind"]


def baseline_table(df: pd.DataFrame, value: str = "acc1") -> pd.DataFrame:
    """Per setting, method and temperature: the final test ``value`` minus that of a baseline
    student of the same setting, paired by seed (``n`` seeds in both), with the 95 % interval of
    :func:`analysis.stats.paired_difference`. Baselines: ``ce`` (the student without a teacher),
    ``kd`` at the same T, and ``kd`` at its best T by the mean (``kd_best``: what a method with a
    learned or per-sample T must beat). Finished runs only; a baseline missing gives no row."""
    rows = figures.final_test_rows(df) if not df.empty and "split" in df else pd.DataFrame()
    if rows.empty:
        return pd.DataFrame(columns=BASELINE_COLUMNS)
    st = rows[(rows["role"] == "student") & (rows["status"] == "done")]
    keys = figures.settings(st)
    out = []
    for key, g in (st.groupby(keys, dropna=False, sort=True) if keys else [((), st)]):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        g = g.assign(temperature=g["temperature"].fillna(-1.0))  # ce: no temperature
        by_seed = {(m, t): col for m, x in g.groupby("method_label", sort=True)
                   for t, col in stats.seed_matrix(x, value).items()}
        kd = {t: v for (m, t), v in by_seed.items() if m == "kd" and t > 0}
        kd_best = max(kd, key=lambda t: (kd[t].mean(), -t)) if kd else None
        for (m, t), v in by_seed.items():
            if m == "ce":
                continue
            base = [("ce", None, by_seed.get(("ce", -1.0)))]
            if m != "kd" and t > 0:
                base.append(("kd", t, kd.get(t)))
            if m != "kd" and kd_best is not None:
                base.append(("kd_best", kd_best, kd[kd_best]))
            for name, bt, b in base:
                if b is None:
                    continue
                d = stats.paired_difference(v, b)
                out.append({**rec, "method_label": m, "temperature": t if t > 0 else np.nan, "baseline": name,
                            "baseline_T": bt, "n": d.n, "delta_mean": d.mean, "delta_low": d.low,
                            "delta_high": d.high, "kind": d.kind})
    return pd.DataFrame(out, columns=[*keys, *BASELINE_COLUMNS])


def format_baseline_table(t: pd.DataFrame) -> pd.DataFrame:
    """``baseline_table`` with readable columns (strings) for report.md."""
    if t.empty:
        return t
    out = t.drop(columns=["baseline", "baseline_T", "delta_mean", "delta_low", "delta_high", "kind"]).copy()
    out["temperature"] = t["temperature"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    out.insert(out.columns.get_loc("temperature") + 1, "against", [
        b if b == "ce" else f"kd T={bt:g}" + (" (its best)" if b == "kd_best" else "")
        for b, bt in zip(t["baseline"], t["baseline_T"])])
    out["difference (95 % interval)"] = [
        f"{m:+.2f}" + ("" if k == "none" else f" [{lo:+.2f}, {hi:+.2f}]")
        for m, lo, hi, k in zip(t["delta_mean"], t["delta_low"], t["delta_high"], t["kind"])]
    return out.astype(str)


def format_best_table(t: pd.DataFrame, value: str = "acc1") -> pd.DataFrame:
    """``best_temperature_table`` with readable columns (strings) for report.md."""
    if t.empty:
        return t
    setting = [c for c in t.columns if c not in ("method_label", "best_T", "best_mean", "best_std", "seeds",
                                                  "runner_up_T", "runner_up_mean", "runner_up_std", "overlap",
                                                  "diverged", "temperatures")]
    pm = lambda m, s: "-" if pd.isna(m) else f"{m:.2f} ± {s:.2f}"  # noqa: E731
    tt = lambda v: "-" if pd.isna(v) else f"{v:g}"  # noqa: E731
    out = pd.DataFrame({c: t[c].map(figures._fmt) for c in setting})
    out["method"] = t["method_label"]
    out["best T"] = t["best_T"].map(tt)
    out[f"{value} (best)"] = [pm(m, s) for m, s in zip(t["best_mean"], t["best_std"])]
    out["runner-up T"] = t["runner_up_T"].map(tt)
    out[f"{value} (runner-up)"] = [pm(m, s) for m, s in zip(t["runner_up_mean"], t["runner_up_std"])]
    out["overlap"] = t["overlap"].map(lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v))
                                      else ("yes" if v else "no"))
    out["seeds"] = t["seeds"].astype(int).astype(str)
    out["diverged"] = t["diverged"].astype(int).astype(str)
    return out


def teacher_entropy_table(profiles: Mapping[str, TeacherProfile] | Sequence[TeacherProfile],
                          temperatures: Sequence[float]) -> pd.DataFrame:
    """Per teacher and temperature: the mean entropy (nats) of the teacher's softmax at T over its
    training samples, the same as a fraction of ``log C``, the mean top-1 probability, and the
    label-smoothing ε whose entropy matches it (what method ``ls`` trains with)."""
    profs = list(profiles.values()) if isinstance(profiles, Mapping) else list(profiles)
    rows = []
    for p in profs:
        c = p.num_classes
        for t in sorted({float(x) for x in temperatures}):
            s = figures.softmax_profile(p.logits, t)
            rows.append({"teacher": p.name, "teacher_id": p.run_id, "classes": c, "temperature": t,
                         "entropy_nats": s["entropy"], "entropy_frac": s["entropy"] / math.log(c) if c > 1 else 0.0,
                         "max_prob": s["max_prob"], "ls_epsilon": L.match_ls_epsilon(s["entropy"], c),
                         "teacher_test_acc1": p.test_acc1})
    return pd.DataFrame(rows, columns=["teacher", "teacher_id", "classes", "temperature", "entropy_nats",
                                       "entropy_frac", "max_prob", "ls_epsilon", "teacher_test_acc1"])


def format_entropy_table(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return pd.DataFrame({"teacher": t["teacher"], "T": t["temperature"].map(lambda v: f"{v:g}"),
                         "entropy (nats)": t["entropy_nats"].map(lambda v: f"{v:.3f}"),
                         "entropy / log C": t["entropy_frac"].map(lambda v: f"{v:.3f}"),
                         "mean top-1 prob": t["max_prob"].map(lambda v: f"{v:.3f}"),
                         "matched LS ε": t["ls_epsilon"].map(lambda v: f"{v:.4f}")})


def md_table(df: pd.DataFrame) -> str:
    """A pandas frame as a GitHub markdown table (floats to 2 decimals)."""
    if df.empty:
        return "_(no data)_\n"
    cols = list(df.columns)
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
