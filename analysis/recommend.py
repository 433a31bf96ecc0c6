"""The recommendation of T per setting and method, from a results table (``tstudy recommend``,
``python -m analysis recommend results.parquet``, and the table that opens ``report.md``).

Selection (``select``):

* ``final`` — each run's last-epoch test accuracy chooses T and is reported (T chosen on test).
* ``best`` — each run's best evaluated epoch: by validation accuracy where the table has a
  validation split (``val_fraction``), else by test accuracy; test accuracy at that epoch is
  reported. T is chosen on the split that chose the epoch.
* ``val`` — last-epoch validation accuracy chooses T; last-epoch test accuracy is reported.

Default: ``val`` when the table has validation rows, else ``final``. Whatever chose T, the
record says so (``selected_on``): a T chosen on test makes its own accuracy optimistic.

Settings: by default, the setting columns that vary among the students (as the figures'
panels). ``by`` names them instead; the varying columns left out become part of the pairing
unit with the seed (a recommendation across them: e.g. ``by=["optimizer"]`` over several batch
sizes pairs runs by (seed, batch size)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from analysis import figures, stats
from tstudy.errors import ConfigError
from tstudy.study import REFERENCE_TEMPERATURE as REFERENCE_T

SELECTS = ("final", "best", "val")
TEACHERLESS = "ce"  # the student without a teacher: the baseline every gain is measured against
FEW_SEEDS = 5  # below it, paired tests over seeds (df = n - 1) tell only large gaps apart


@dataclass(frozen=True)
class Selected:
    """One value per finished student run: ``select_value`` chose T, ``test_value`` is reported."""

    runs: pd.DataFrame  # one row per run: config columns, select_value, test_value, status
    selected_on: str  # "test" or "val"
    select: str


def resolve_select(df: pd.DataFrame, select: str | None) -> str:
    has_val = bool(len(df)) and "split" in df and (df["split"] == "val").any()
    if select is None:
        return "val" if has_val else "final"
    if select not in SELECTS:
        raise ConfigError(f"--select: expected one of {', '.join(SELECTS)}, got {select!r}")
    if select == "val" and not has_val:
        raise ConfigError("--select val: the table has no validation rows; set val_fraction > 0 in the study "
                          "(or use --select final|best, which choose T on test)")
    return select


def select_runs(df: pd.DataFrame, select: str | None = None, value: str = "acc1") -> Selected:
    """Per student run: the value that chooses T and the test value reported (see the module)."""
    select = resolve_select(df, select)
    st = figures.with_teacher_columns(df[df["role"] == "student"]) if len(df) else df
    test = st[st["split"] == "test"]
    val = st[st["split"] == "val"]
    has_val = len(val) > 0
    cfg = test.sort_values("epoch").groupby("run_id", sort=False).tail(1).set_index("run_id")
    last_test = _at_last_epoch(test, value)
    if select == "final":
        sel, rep, on = last_test, last_test, "test"
    elif select == "val":
        sel, rep, on = _at_last_epoch(val, value), last_test, "val"
    else:
        chooser = val if has_val else test
        idx = chooser.sort_values(["run_id", value, "epoch"], ascending=[True, False, True]) \
            .drop_duplicates("run_id").set_index("run_id")
        sel = idx[value]
        t_at = test.set_index(["run_id", "epoch"])[value]
        rep = pd.Series([t_at.get((r, e), np.nan) for r, e in zip(idx.index, idx["epoch"])], index=idx.index)
        on = "val" if has_val else "test"
    runs = cfg.drop(columns=[c for c in (value, "split", "epoch") if c in cfg]).copy()
    runs["select_value"] = sel.reindex(runs.index)
    runs["test_value"] = rep.reindex(runs.index)
    return Selected(runs.reset_index(), on, select)


def _at_last_epoch(rows: pd.DataFrame, value: str) -> pd.Series:
    """Per run, ``value`` at its last evaluated epoch (for a done run, its final epoch)."""
    if rows.empty:
        return pd.Series(dtype=float)
    last = rows.sort_values("epoch").groupby("run_id").tail(1)
    return last.set_index("run_id")[value]


def setting_keys(students: pd.DataFrame, by: list[str] | None) -> tuple[list[str], list[str]]:
    """(setting columns, pairing unit columns). ``by`` replaces the default setting columns."""
    varying = figures.settings(students)
    if by is None:
        return varying, ["seed"]
    allowed = sorted(c for c in figures.SETTING_COLUMNS + ["teacher_id"] if c in students)
    bad = [b for b in by if b not in allowed]
    if bad:
        raise ConfigError(f"--by: unknown field {bad[0]!r}; fields of this table: {', '.join(allowed)}")
    return list(by), ["seed", *[c for c in varying if c not in by]]


def recommend(df: pd.DataFrame, by: list[str] | None = None, select: str | None = None,
              reference_T: float = REFERENCE_T, value: str = "acc1") -> list[dict]:
    """One record per setting and temperature-using method (see ``records_columns``)."""
    if not len(df) or "split" not in df:
        return []
    chosen = select_runs(df, select, value)
    runs = chosen.runs
    students = runs[runs["status"] == "done"]
    if students.empty:
        return []
    keys, unit = setting_keys(students, by)
    unit_noteacher = [u for u in unit if u not in figures.TEACHER_COLUMNS]
    ce = students[students["method"] == TEACHERLESS]
    out = []
    temp = students[students["temperature"].notna()]
    for key, g in temp.groupby([*keys, "method_label"], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        setting = dict(zip(keys, key[:-1]))
        label = key[-1]
        diverged = runs[(runs["status"] != "done") & (runs["method_label"] == label)]
        diverged = int(len(figures._select(diverged, setting))) if len(diverged) else 0
        rec = _record(g, setting, label, unit, chosen, reference_T, value,
                      ce=_ce_reference(ce, setting, unit, unit_noteacher),
                      kd_ref=_same_setting(temp, setting, "kd", reference_T, unit),
                      ls=_ls_same_setting(temp, setting, unit), diverged=diverged)
        out.append(rec)
    return out


def _same_setting(temp: pd.DataFrame, setting: dict, label: str, t: float, unit: list[str]) -> pd.Series | None:
    g = figures._select(temp[temp["method_label"] == label], setting)
    if g.empty:
        return None
    col = stats._column(stats.seed_matrix(g, "test_value", unit=unit), t)
    return col


def _ls_same_setting(temp: pd.DataFrame, setting: dict, unit: list[str]) -> pd.DataFrame | None:
    g = figures._select(temp[temp["method"] == "ls"], setting)
    return None if g.empty else stats.seed_matrix(g, "test_value", unit=unit)


def _ce_reference(ce: pd.DataFrame, setting: dict, unit: list[str], unit_noteacher: list[str]) -> pd.Series | None:
    """The CE students of this setting (teacher fields ignored: CE has no teacher), indexed like
    the setting's pairing units (a CE run serves every teacher's unit of its seed)."""
    if ce.empty:
        return None
    g = figures._select(ce, {k: v for k, v in setting.items() if k not in figures.TEACHER_COLUMNS})
    if g.empty:
        return None
    s = g.groupby(unit_noteacher)["test_value"].mean()
    if unit == unit_noteacher:
        return s
    return _Broadcast(s, unit, unit_noteacher)  # type: ignore[return-value]


class _Broadcast:
    """A CE series looked up by the units of a teacher setting (teacher levels dropped)."""

    def __init__(self, s: pd.Series, unit: list[str], keep: list[str]) -> None:
        self.s, self.unit, self.keep = s, unit, keep

    def like(self, index: pd.Index) -> pd.Series:
        frame = index.to_frame(index=False)
        keys = pd.MultiIndex.from_frame(frame[self.keep]) if len(self.keep) > 1 else pd.Index(frame[self.keep[0]])
        return pd.Series(self.s.reindex(keys).to_numpy(), index=index)


def _paired(a: pd.Series, b: pd.Series | _Broadcast | None) -> stats.Interval | None:
    if b is None:
        return None
    if isinstance(b, _Broadcast):
        b = b.like(a.index)
    d = stats.paired_difference(a, b)
    return d if d.n else None


def _record(g: pd.DataFrame, setting: dict, label: str, unit: list[str], chosen: Selected, reference_T: float,
            value: str, ce, kd_ref, ls, diverged: int) -> dict:
    m_sel = stats.seed_matrix(g, "select_value", unit=unit)
    m_test = stats.seed_matrix(g, "test_value", unit=unit)
    means = m_sel.mean(axis=0)
    best = float(means.index[int(np.nanargmax(means.to_numpy(float)))])  # ties: the smaller T (sorted)
    pb = stats.p_best(m_sel)
    near = stats.near_best(m_sel)
    smooth = stats.smoothed_optimum(m_sel)
    acc = stats.clipped(stats.mean_interval(m_test[best]), *stats.ACC_RANGE)  # an accuracy's mean lies in [0, 100]
    at_best = m_test[best]
    d_ce = _paired(at_best, ce)
    d_kd = _paired(at_best, kd_ref) if kd_ref is not None else None
    d_ls = _paired(at_best, stats._column(ls, best)) if ls is not None and label != "ls" and \
        stats._column(ls, best) is not None else None
    eb = stats.expected_best(g["select_value"].to_numpy(float), max_n=len(m_sel.columns))
    rec = {
        "setting": {k: _plain(v) for k, v in setting.items()},
        "method": label,
        "value": value,
        "select": chosen.select,
        "selected_on": chosen.selected_on,
        "best_temperature": best,
        "p_best": _num(pb.get(best)),
        "near_best_temperatures": near,
        "temperatures": [float(t) for t in m_sel.columns],
        "acc_mean": _num(acc.mean),
        "ci_low": _num(acc.low),
        "ci_high": _num(acc.high),
        "interval": acc.kind,
        "n_seeds": int(at_best.notna().sum()),
        "smoothed_temperature": _num(smooth.mean),
        "smoothed_ci": _ci(smooth),
        "best_at_edge": grid_edge(best, [float(t) for t in m_sel.columns]),
        "reference_temperature": float(reference_T),
        "delta_vs_ce": _num(d_ce.mean) if d_ce else None,
        "delta_vs_ce_ci": _ci(d_ce),
        "delta_vs_kd_ref": _num(d_kd.mean) if d_kd else None,
        "delta_vs_kd_ref_ci": _ci(d_kd),
        "delta_vs_ls_same_T": _num(d_ls.mean) if d_ls else None,
        "delta_vs_ls_same_T_ci": _ci(d_ls),
        "expected_best": [_num(v) for v in eb["expected_best"]],
        "diverged": diverged,
    }
    rec["sentence"] = sentence(rec)
    return rec


def grid_edge(best: float, temps: Sequence[float]) -> str | None:
    """"lowest"/"highest" when ``best`` is the grid's smallest/largest of 3 or more temperatures:
    the optimum may lie beyond the grid; None otherwise."""
    if len(temps) < 3:
        return None
    return "lowest" if best == min(temps) else "highest" if best == max(temps) else None


def _plain(v: object) -> object:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    return v


def _num(v: object) -> float | None:
    return None if v is None or not np.isfinite(float(v)) else round(float(v), 6)


def _ci(iv: stats.Interval | None) -> list[float] | None:
    if iv is None or iv.kind == "none":
        return None
    return [round(iv.low, 6), round(iv.high, 6)]


def _t(v: float) -> str:
    return f"{v:g}"


def sentence(r: dict) -> str:
    """One plain sentence for a record."""
    where = ", ".join(f"{k}={figures._fmt(v)}" for k, v in r["setting"].items())
    head = f"{r['method']}" + (f" ({where})" if where else "")
    ci = (f", {95} % {r['interval']}-interval {r['ci_low']:.2f} to {r['ci_high']:.2f}" if r["interval"] != "none"
          else " (one seed: no interval)")
    s = (f"{head}: T = {_t(r['best_temperature'])} gives {r['value']} {r['acc_mean']:.2f}{ci}, "
         f"{r['n_seeds']} seed{'s' if r['n_seeds'] != 1 else ''}; P(best) = {r['p_best']:.2f}")
    others = [t for t in r["near_best_temperatures"] if t != r["best_temperature"]]
    s += (f"; T = {', '.join(_t(t) for t in others)} {'is' if len(others) == 1 else 'are'} not distinguishable "
          "from it" if others else "; every other T is significantly worse")
    if len(others) == len(r["temperatures"]) - 1 and 1 < r["n_seeds"] < FEW_SEEDS and others:
        s += f" (with {r['n_seeds']} seeds only large gaps are significant: run {FEW_SEEDS} or more)"
    if r["best_at_edge"]:
        beyond = "below" if r["best_at_edge"] == "lowest" else "above"
        s += (f"; T = {_t(r['best_temperature'])} is the {r['best_at_edge']} temperature tried, so the optimum "
              f"may lie {beyond} it: extend the grid")
    if r["delta_vs_ce"] is not None:
        s += f"; {_gain(r['delta_vs_ce'], r['delta_vs_ce_ci'])} over the CE student"
    if r["delta_vs_kd_ref"] is not None and not _is_reference(r):
        s += f"; {_gain(r['delta_vs_kd_ref'], r['delta_vs_kd_ref_ci'])} over KD at T = {_t(r['reference_temperature'])}"
    s += f". T was chosen on {'the validation split' if r['selected_on'] == 'val' else 'the test split (optimistic)'}."
    return s


def _is_reference(r: dict) -> bool:
    """The record is KD at its reference temperature: no gain over itself to report."""
    return r["method"] == "kd" and r["best_temperature"] == r["reference_temperature"]


def _gain(d: float, ci: list[float] | None) -> str:
    if ci is None:
        return f"{d:+.2f} points (no interval)"
    verdict = "" if ci[0] <= 0 <= ci[1] else (", a real gain" if d > 0 else ", a real loss")
    return f"{d:+.2f} points (paired 95 % CI {ci[0]:+.2f} to {ci[1]:+.2f}{verdict})"


def selection_statement(records: list[dict], select: str) -> str:
    """How T was selected, for the report."""
    on = {r["selected_on"] for r in records}
    if on == {"val"}:
        return (f"T was selected on the validation split carved from the training set (`val_fraction`; "
                f"`--select {select}`); the accuracies are on the test split.")
    return (f"T was selected on the **test** split (`--select {select}`; the study has no validation split): "
            "the accuracy at the chosen T is optimistic. Set `val_fraction` in the study to select on a "
            "validation split.")


def records_table(records: list[dict]) -> pd.DataFrame:
    """The records as a readable table (report.md)."""
    def iv(lo: float | None, hi: float | None) -> str:
        return "-" if lo is None else f"{lo:.2f} to {hi:.2f}"

    rows = []
    for r in records:
        row = {k: figures._fmt(v) for k, v in r["setting"].items()}
        row.update({
            "method": r["method"], "T": _t(r["best_temperature"]),
            f"{r['value']} (95 % CI)": f"{r['acc_mean']:.2f} ({iv(r['ci_low'], r['ci_high'])})",
            "P(best)": f"{r['p_best']:.2f}",
            "near-best T": ", ".join(_t(t) for t in r["near_best_temperatures"]),
            "smoothed T (CI)": {"lowest": "≤ ", "highest": "≥ "}.get(r["best_at_edge"], "")
            + f"{r['smoothed_temperature']:.3g}" + (
                f" ({r['smoothed_ci'][0]:.3g} to {r['smoothed_ci'][1]:.3g})"
                if r["smoothed_ci"] and r["smoothed_ci"][0] != r["smoothed_ci"][1] else ""),
            "Δ vs CE (CI)": "-" if r["delta_vs_ce"] is None else f"{r['delta_vs_ce']:+.2f} ("
            + ("-" if r["delta_vs_ce_ci"] is None else f"{r['delta_vs_ce_ci'][0]:+.2f} to {r['delta_vs_ce_ci'][1]:+.2f}") + ")",
            f"Δ vs KD T={_t(r['reference_temperature'])} (CI)": "-" if r["delta_vs_kd_ref"] is None else
            "(the reference)" if _is_reference(r) else
            f"{r['delta_vs_kd_ref']:+.2f} (" + ("-" if r["delta_vs_kd_ref_ci"] is None else
                                               f"{r['delta_vs_kd_ref_ci'][0]:+.2f} to {r['delta_vs_kd_ref_ci'][1]:+.2f}") + ")",
            "seeds": str(r["n_seeds"]),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def parse_by(text: str | None) -> list[str] | None:
    """``--by optimizer,batch_size`` -> ``["optimizer", "batch_size"]``."""
    if text is None:
        return None
    fields = [f.strip() for f in text.split(",") if f.strip()]
    if not fields:
        raise ConfigError("--by: expected FIELD[,FIELD...], e.g. --by optimizer,batch_size")
    return fields


def render(records: list[dict], as_json: bool) -> str:
    """What ``recommend`` prints: one JSON record per line, or the table and one sentence each."""
    if as_json:
        import json

        return "\n".join(json.dumps(r, sort_keys=True, allow_nan=False) for r in records)
    if not records:
        return "no finished student run uses a temperature: nothing to recommend"
    from analysis.tables import md_table

    lines = [selection_statement(records, records[0]["select"]), "", md_table(records_table(records))]
    lines += [f"- {r['sentence']}" for r in records]
    return "\n".join(lines)


def recommend_table(path: str, by: str | None, select: str | None, reference_T: float, as_json: bool) -> str:
    """``python -m analysis recommend results.parquet``: any results table, no study file needed."""
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"results table: {path!r} is not a file (give a results.parquet)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's input, said in one line
        raise ConfigError(f"results table: {path!r} is not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in ("run_id", "role", "split", "epoch", "status", "method", "method_label", "temperature",
                           "seed") if c not in df]
    if missing:
        raise ConfigError(f"results table: {path!r} lacks the column(s) {', '.join(missing)} of a tstudy table")
    return render(recommend(df, parse_by(by), select, reference_T), as_json)
