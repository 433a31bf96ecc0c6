"""Figure functions: each takes a results DataFrame (or a teacher's logits) and returns a Figure.

The figures of Frank & Davis (arXiv 2603.02430), plus a paired-difference figure:

* Fig. 1 :func:`acc_vs_temperature` — student accuracy vs T, one line per method.
* Fig. 2 :func:`acc_vs_temperature_by_duration` — one line per training length (epochs); one row
  of panels per method, one panel per (optimizer, batch size).
* Fig. 3 :func:`early_vs_final` — accuracy vs T at an earlier evaluation (left panel) and at the
  last epoch (right panel) of the same runs; a star marks each method's best T.
* Fig. 4 :func:`sorted_softmax` — the teacher's mean sorted softmax at each T (colour) and the
  label-smoothing distribution of the same entropy (grey).
* Fig. 5 :func:`relational` — KD vs its relational ablations (entropy-matched LS, shuffled
  non-target, top-k, TCKD-only, NCKD-only).
* :func:`paired_delta` — Δ accuracy vs T against the reference T of the same method, seed by
  seed, with paired 95 % intervals and a zero line.

One visual language (:mod:`analysis.style`): a method has the same colour + marker + line style
in every figure; the CE-only student is a grey dotted line, the teacher black. Every accuracy line
is the mean over seeds with a shaded band, by default the 95 % interval of the mean
(:func:`analysis.stats.mean_interval`), ``band="std"`` for ± 1 std; the legend title says which.
A line's gid is its label, its band's ``"<label>:band"``. More than :data:`MAX_LINES` lines are
split into facets (adjacent panels, same y-range). Setting columns in :data:`SIDE_BY_SIDE` that
vary are put in adjacent panels of one row with the same y-range. The y-axis fits the data and
bands; the teacher's accuracy is a corner annotation (gid ``"teacher:text"``), plus a dashed line
(gid ``"teacher"``) only where it lies within that range. Runs that diverged are drawn as red
crosses (gid ``"diverged"``) at their temperature, never dropped silently.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import textwrap
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from analysis import stats, style
from tstudy import losses as L

# Columns that define a "setting": students differing in these go to different panels.
# ``teacher_init`` is derived here from the teacher rows (scratch / imagenet-finetuned teacher).
SETTING_COLUMNS = ["dataset", "labels", "image_size", "teacher_model", "teacher_init", "model", "init",
                   "optimizer", "lr", "momentum", "nesterov", "batch_size", "epochs", "schedule", "milestones",
                   "gamma", "warmup_epochs", "weight_decay", "precision", "augment", "val_fraction"]
TEACHER_COLUMNS = ("teacher_model", "teacher_init", "teacher_id")
OPTIM_COLUMNS = ("optimizer", "lr", "weight_decay", "momentum", "batch_size", "schedule")
# The paper's studied axes: when one varies, its values go to adjacent panels of one row (same y-range).
SIDE_BY_SIDE = ["labels", "teacher_init", "init"]
MAX_LINES = 6  # more lines than this in one panel are split into facets
ACC_CEILING = stats.ACC_RANGE[1]  # accuracy axes: headroom stops a little past 100
BANDS = ("ci", "std")
BAND_TEXT = {"ci": "shaded: 95 % interval of the mean over seeds",
             "std": "shaded: ± 1 std over seeds"}
SPREAD = "mean over seeds"

# Fig. 5: the methods that alter the relational information the teacher gives, in legend order.
RELATIONAL = ("kd", "ls", "kd_shuffled", "kd_topk", "tckd", "nckd")
RELATIONAL_NAMES = {"kd": "KD", "ls": "LS, ε entropy-matched", "kd_shuffled": "KD, shuffled non-target",
                    "kd_topk": "KD, top-k non-target", "tckd": "TCKD only", "nckd": "NCKD only",
                    "ce": "CE only (no teacher)"}


def band_caption(band: str = "ci") -> str:
    """The sentence figures and report.md use for the shaded band."""
    _check_band(band)
    return BAND_TEXT[band] + (" (Student's t below 20 seeds, bootstrap from 20)" if band == "ci" else "")


def _check_band(band: str) -> None:
    if band not in BANDS:
        raise ValueError(f"band: expected one of {BANDS}, got {band!r}")


# --------------------------------------------------------------------------- table helpers
def with_teacher_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``teacher_init`` to student rows: the ``init`` of the teacher run they name (from the
    teacher rows of the same table; ``external`` for teacher files). No-op if already there."""
    if "teacher_init" in df or "teacher_id" not in df or df.empty:
        return df
    df = df.copy()
    if "init" in df and "role" in df:
        t = df[df["role"] == "teacher"].drop_duplicates("run_id").set_index("run_id")["init"]
        df["teacher_init"] = df["teacher_id"].map(t).astype(object)
        if "teacher_kind" in df and (df["teacher_kind"] == "external").any():
            df.loc[df["teacher_kind"] == "external", "teacher_init"] = "external"
    else:
        df["teacher_init"] = np.nan
    return df


def final_test_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Test-split rows at each run's last epoch (a diverged run keeps its last finite row)."""
    t = df[df["split"] == "test"]
    if t.empty:
        return t
    t = with_teacher_columns(t)
    last = t.groupby("run_id")["epoch"].transform("max")
    t = t[(t["epoch"] == last)]
    done = t["status"] == "done"
    return pd.concat([t[done & (t["epoch"] == t["epochs"])], t[~done]])


def _has_teacher(students: pd.DataFrame) -> pd.Series:
    if "teacher_id" not in students:
        return pd.Series(False, index=students.index)
    return students["teacher_id"].notna()


def _norm(v: object) -> str:
    """A setting value as text, every missing value (None, NaN) the same."""
    return "none" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def settings(students: pd.DataFrame) -> list[str]:
    """The setting columns that vary among these students (panel keys). Teacher columns vary only
    among students that have a teacher: a student without one (ce) belongs to every panel of
    its other settings. Missing values (None and NaN alike) count as one value, "none". If
    students sharing a setting still name different teachers (teachers differing in a field not
    listed here), ``teacher_id`` is added so different teachers are never averaged together."""
    has_t = _has_teacher(students)
    cols = []
    for c in SETTING_COLUMNS:
        if c not in students:
            continue
        vals = students.loc[has_t, c] if c in TEACHER_COLUMNS and has_t.any() else students[c]
        if vals.map(_norm).nunique() > 1:
            cols.append(c)
    if has_t.any() and students.loc[has_t, "teacher_id"].nunique() > 1:
        with_t = students[has_t]
        per = (with_t.groupby(cols, dropna=False)["teacher_id"].nunique() if cols
               else pd.Series([with_t["teacher_id"].nunique()]))
        if per.max() > 1:
            cols.append("teacher_id")
    return cols


def seed_stats(g: pd.DataFrame, value: str = "acc1", band: str = "std") -> pd.DataFrame:
    """Per temperature: mean, std (ddof=1; 0 for one seed), count, and the band ``low``/``high``:
    mean ± std (``band="std"``) or the 95 % interval of :func:`analysis.stats.mean_interval`
    (``"ci"``; zero width for one seed; an accuracy's cut at [0, 100])."""
    _check_band(band)
    rows = []
    for t, x in g.groupby("temperature", dropna=False)[value]:
        v = x.to_numpy(float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        if band == "ci":
            iv = stats.mean_interval(v)
            if value.startswith("acc"):  # an accuracy's interval is cut at [0, 100] (as recommend does)
                iv = stats.clipped(iv, *stats.ACC_RANGE)
            lo, hi = iv.low, iv.high
        else:
            lo, hi = v.mean() - sd, v.mean() + sd
        rows.append({"temperature": t, "mean": float(v.mean()), "std": sd, "count": len(v), "low": lo, "high": hi})
    return pd.DataFrame(rows, columns=["temperature", "mean", "std", "count", "low", "high"]).sort_values("temperature")


def method_looks(df: pd.DataFrame) -> dict[str, style.Look]:
    """One :class:`analysis.style.Look` per student method label of the whole table, so a
    method keeps its look in every figure of the study."""
    st = df[df["role"] == "student"] if "role" in df else df
    labels = st["method_label"].dropna().unique() if "method_label" in st else []
    return style.looks(labels)


def method_colors(df: pd.DataFrame) -> dict[str, str]:
    return {k: v.color for k, v in method_looks(df).items()}


def _panel_keys(students: pd.DataFrame, cols: list[str]) -> list[dict]:
    """One key per panel. Students without a teacher get no panel of their own when students
    with a teacher share their other settings (they are drawn in those panels)."""
    if not cols:
        return [{}]

    def keys(df: pd.DataFrame) -> list[dict]:
        return [dict(zip(cols, k if isinstance(k, tuple) else (k,)))
                for k, _ in df.groupby(cols, dropna=False, sort=True)]

    has_t = _has_teacher(students)
    if not has_t.any() or not any(c in TEACHER_COLUMNS for c in cols):
        return keys(students)
    out = keys(students[has_t])
    for k in keys(students[~has_t]):  # no-teacher students whose setting has no teacher panel
        if _select(students[has_t], {c: v for c, v in k.items() if c not in TEACHER_COLUMNS}).empty:
            out.append(k)
    return out


def _select(df: pd.DataFrame, key: dict) -> pd.DataFrame:
    """Rows matching the panel key; a missing teacher value matches any teacher."""
    for k, v in key.items():
        if pd.isna(v):
            match = df[k].isna()
        else:
            match = df[k].astype(str) == str(v)
            if k in TEACHER_COLUMNS:
                match |= df[k].isna()
        df = df[match]
    return df


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _panel_title(key: dict, extra: str = "") -> str:
    text = ", ".join(f"{k}={_fmt(v)}" for k, v in key.items()) if key else ""
    text = "; ".join(t for t in (extra, text) if t)
    return "\n".join(textwrap.wrap(text, 44)) if text else ""


def _facets(labels: list[str]) -> list[list[str]]:
    """The labels split into groups of at most :data:`MAX_LINES` lines of similar size; the
    references (ce) are drawn in every group."""
    refs = [lab for lab in labels if lab in style.REFERENCES]
    lines = [lab for lab in labels if lab not in style.REFERENCES]
    n = max(1, math.ceil(len(lines) / MAX_LINES))
    size = math.ceil(len(lines) / n) if lines else 0
    return [lines[i * size:(i + 1) * size] + refs for i in range(n)]


def _layout(students: pd.DataFrame, cols: list[str], labels: list[str], ncols_max: int = 3
            ) -> tuple[list[list[tuple[dict, list[str], str]]], bool]:
    """Rows of panels ``(key, labels, facet title)`` and whether each row shares one y-range.
    A varying :data:`SIDE_BY_SIDE` column puts its values in adjacent panels of one row; facets
    (more than :data:`MAX_LINES` lines) are adjacent panels too; other panels fill rows of
    ``ncols_max``."""
    keys = _panel_keys(students, cols)
    facets = _facets(labels)
    tag = (lambda i: f"methods {i + 1}/{len(facets)}") if len(facets) > 1 else (lambda i: "")
    sbs = next((c for c in SIDE_BY_SIDE if c in cols), None)
    rows: list[list[tuple[dict, list[str], str]]] = []
    if sbs:
        groups: dict[tuple, list[dict]] = {}
        for k in keys:
            groups.setdefault(tuple(_norm(v) for c, v in k.items() if c != sbs), []).append(k)
        for ks in groups.values():
            for i, f in enumerate(facets):
                rows.append([(k, f, tag(i)) for k in ks])
    elif len(facets) > 1:
        rows = [[(k, f, tag(i)) for i, f in enumerate(facets)] for k in keys]
    else:
        rows = [[(k, facets[0], "") for k in keys[i:i + ncols_max]] for i in range(0, len(keys), ncols_max)]
    return rows, bool(sbs) or len(facets) > 1


def _row_grid(lengths: list[int], w: float = 4.2, h: float = 3.2) -> tuple[plt.Figure, list[list[plt.Axes]]]:
    """A grid with ``lengths[i]`` panels in row ``i``; the unused slots are removed (no empty axes)."""
    ncols = max(1, max(lengths, default=1))
    nrows = max(1, len(lengths))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    out = []
    for r, n in enumerate(lengths or [1]):
        for ax in axes[r, n:]:
            fig.delaxes(ax)
        out.append(list(axes[r, :n]))
    return fig, out


def _grid(n: int, w: float = 4.2, h: float = 3.2, ncols_max: int = 3) -> tuple[plt.Figure, list[plt.Axes]]:
    ncols = max(1, min(n, ncols_max))
    lengths = [min(ncols, n - i) for i in range(0, n, ncols)]
    fig, rows = _row_grid(lengths, w, h)
    return fig, [ax for r in rows for ax in r]


def _temperature_axis(ax: plt.Axes, temps: Iterable[float]) -> None:
    ax.set_xscale("log", base=2)
    ts = sorted({float(t) for t in temps if pd.notna(t)})
    if ts and len(ts) <= 12:
        ax.set_xticks(ts)
        ax.set_xticklabels([f"{t:g}" for t in ts], fontsize=6.5 if len(ts) > 8 else None)
        ax.minorticks_off()
    ax.set_xlabel("temperature T (log scale)")


def _fit_y(axes: list[plt.Axes], ranges: list[tuple[float, float]], shared: bool,
           ceiling: float | None = None) -> None:
    """The y-axis fits the data and bands with a small margin and headroom for the corner
    annotations; that headroom stops at ``ceiling`` plus a tenth of the span when the data and
    bands stay below ``ceiling`` (an accuracy's 100; a ± std band may pass it). shared: one range
    for the whole row."""
    ok = [(lo, hi) for lo, hi in ranges if np.isfinite(lo) and np.isfinite(hi)]
    if not ok:
        return
    for ax, (lo, hi) in zip(axes, ranges):
        if shared:
            lo, hi = min(r[0] for r in ok), max(r[1] for r in ok)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            continue
        span = max(hi - lo, 1.0)
        top = hi + 0.18 * span
        if ceiling is not None and hi <= ceiling:
            top = min(top, ceiling + 0.1 * span)
        ax.set_ylim(lo - 0.06 * span, top)


def _range(*arrays) -> tuple[float, float]:
    v = np.concatenate([np.atleast_1d(np.asarray(a, float)) for a in arrays]) if arrays else np.array([])
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if len(v) else (math.nan, math.nan)


def _union(*ranges: tuple[float, float]) -> tuple[float, float]:
    return _range(*[list(r) for r in ranges])


def _teacher(ax: plt.Axes, teachers: pd.DataFrame, sel: pd.DataFrame, value: str) -> None:
    """The teacher these students name: a corner annotation (top left, inside the axes), plus a
    dashed line where its accuracy lies within the y-range (which it never changes)."""
    tsel = teachers
    if "teacher_id" in sel:  # the teachers these students name (none for ce-only panels)
        tsel = teachers[teachers["run_id"].isin(sel["teacher_id"].dropna().unique())]
    tsel = tsel[tsel["status"] == "done"] if "status" in tsel else tsel
    if not len(tsel):
        return
    m = float(tsel[value].mean())
    lo, hi = ax.get_ylim()
    where = ""
    if lo <= m <= hi:
        ax.axhline(m, color=style.TEACHER_COLOR, ls="--", lw=1, label="teacher", gid="teacher")
        ax.set_ylim(lo, hi)
    else:
        where = " (above)" if m > hi else " (below)"
    ax.text(0.02, 0.97, f"teacher {m:.1f}{where}", transform=ax.transAxes, ha="left", va="top", fontsize=6.5,
            gid="teacher:text", bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.0))


def _mark_diverged(ax: plt.Axes, bad: pd.DataFrame, ok: pd.DataFrame, value: str) -> tuple[float, float]:
    """Diverged runs: a red cross at their temperature, at the panel's lowest accuracy."""
    if not len(bad):
        return (math.nan, math.nan)
    y0 = float(ok[value].min()) if len(ok) and ok[value].notna().any() else 0.0
    ax.scatter(bad["temperature"].fillna(1.0), np.full(len(bad), y0), marker="x", color="red", zorder=5,
               label="diverged run (not in the mean)", gid="diverged")
    ax.text(0.98, 0.02, f"{len(bad)} diverged", transform=ax.transAxes, color="red", fontsize=6.5,
            ha="right", va="bottom")
    return (y0, y0)


def _figure_legend(fig: plt.Figure, title: str, extra: list | None = None, ncol: int = 4) -> None:
    """One legend for all panels, below them (labels de-duplicated across panels)."""
    seen: dict[str, object] = {}
    for h, label in extra or []:
        seen.setdefault(label, h)
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        across = _chars_across(fig, 7, em=0.6)
        caption = "\n".join(textwrap.wrap(title, across))
        fit = across // (max(len(label) for label in seen) + 6)  # an entry: its handle, label and gap
        fig.legend(list(seen.values()), list(seen.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=max(1, min(ncol, len(seen), fit)), fontsize=7, title=caption, title_fontsize=7,
                   frameon=False)


def _chars_across(fig: plt.Figure, points: float, em: float = 0.55) -> int:
    """About how many characters of a ``points``-sized font fit across the figure (an average
    character is ``em`` of the font size wide; small text runs wider), so titles and captions wrap
    to the figure instead of widening it."""
    return max(20, int(fig.get_size_inches()[0] * 72 / (em * points)))


_TITLE_NOTE: contextvars.ContextVar[str] = contextvars.ContextVar("title_note", default="")


@contextlib.contextmanager
def titled(note: str):
    """Within this block every figure's title carries ``note`` as its last line (a study's
    ``figure_note``, e.g. "small scale: ..."), so a figure cut out of its report still says it."""
    token = _TITLE_NOTE.set(note or "")
    try:
        yield
    finally:
        _TITLE_NOTE.reset(token)


def _title(fig: plt.Figure, title: str) -> str:
    """``title`` wrapped to the figure's width, with the note of :func:`titled` as the last line."""
    across = _chars_across(fig, FontProperties(size=plt.rcParams["figure.titlesize"]).get_size_in_points())
    note = _TITLE_NOTE.get()
    return "\n".join(textwrap.wrap(title, across) + (textwrap.wrap(f"({note})", across) if note else []))


def _finish(fig: plt.Figure, title: str, legend_title: str, extra: list | None = None, ncol: int = 4) -> None:
    fig.suptitle(_title(fig, title))
    fig.tight_layout()
    _figure_legend(fig, legend_title, extra, ncol)


def _legend_title(n: int | str, band: str, what: str = SPREAD) -> str:
    return f"{what} (n={n}); {band_caption(band)}"


# --------------------------------------------------------------------------- Fig. 1
def acc_vs_temperature(df: pd.DataFrame, value: str = "acc1", methods: Sequence[str] | None = None,
                       names: dict[str, str] | None = None, title: str = "Accuracy vs temperature",
                       band: str = "ci") -> plt.Figure:
    """Student test accuracy vs temperature, one line per method (mean over seeds, shaded band:
    ``band``), the CE-only student as a grey dotted reference, the teacher as a corner
    annotation; one panel per setting (facets beyond :data:`MAX_LINES` methods). Diverged runs
    are marked with an x at the bottom of the panel.

    ``methods`` restricts to these method names (in this legend order); ``names`` maps a method
    name to its legend text (gids stay the method labels)."""
    style.apply()
    _check_band(band)
    rows = final_test_rows(df)
    students = rows[rows["role"] == "student"]
    teachers = rows[rows["role"] == "teacher"]
    if methods is not None:
        students = students[students["method"].isin(methods)]
    labels = _ordered_labels(students, methods)
    layout, shared = _layout(students, settings(students), labels)
    fig, grid = _row_grid([len(r) for r in layout])
    looks = method_looks(df)
    for axes, row in zip(grid, layout):
        ranges = []
        for ax, (key, facet, tag) in zip(axes, row):
            ranges.append(_draw_methods(ax, _select(students, key), looks, value, band, order=facet, names=names))
            _temperature_axis(ax, students["temperature"])
            ax.set_ylabel(f"student test {value} (%)")
            ax.set_title(_panel_title(key, tag), fontsize=8)
        _fit_y(axes, ranges, shared, ACC_CEILING)
        for ax, (key, _, _) in zip(axes, row):
            _teacher(ax, teachers, _select(students, key), value)
    _finish(fig, title, _legend_title(_seeds_per_point(students), band))
    return fig


def _seeds_per_point(sel: pd.DataFrame) -> str:
    """How many seeds each point's mean is over (the n of the legend): ``"3"``, or ``"2-3"`` when
    the methods' or temperatures' finished runs have different numbers of seeds."""
    ok = sel[sel["status"] == "done"] if "status" in sel else sel
    if "seed" not in ok:
        return "0"
    keys = [c for c in ("method_label", "temperature") if c in ok]
    per = ok.groupby([ok[c].fillna(-1) for c in keys])["seed"].nunique() if keys else ok["seed"].agg(["nunique"])
    return _count_range(per)


def _count_range(counts: pd.Series) -> str:
    """``"3"`` when every count is 3, ``"3–5"`` when they range from 3 to 5 (``"0"``: none)."""
    if counts.empty:
        return "0"
    lo, hi = int(counts.min()), int(counts.max())
    return f"{hi}" if lo == hi else f"{lo}\u2013{hi}"


def _ordered_labels(students: pd.DataFrame, methods: Sequence[str] | None) -> list[str]:
    labels = sorted(students["method_label"].unique())
    if methods is None:
        return labels
    rank = {m: i for i, m in enumerate(methods)}
    first = students.drop_duplicates("method_label").set_index("method_label")["method"]
    return sorted(labels, key=lambda lab: (rank.get(first[lab], len(rank)), lab))


def _display(label: str, method: str, names: dict[str, str] | None) -> str:
    if not names or method not in names:
        return label
    extra = label[len(method):] if label.startswith(method) else ""
    return names[method] + (f" {extra}" if extra else "")


def _look(looks: dict[str, style.Look], label: str) -> style.Look:
    return looks.get(label) or style.looks([label])[label]


def _draw_methods(ax: plt.Axes, sel: pd.DataFrame, looks: dict, value: str, band: str = "ci",
                  order: list[str] | None = None, names: dict[str, str] | None = None) -> tuple[float, float]:
    """The methods' lines and bands; returns the y-range they cover."""
    ok = sel[sel["status"] == "done"]
    present = set(sel["method_label"].unique())
    ranges = []
    for label in [lab for lab in (order or sorted(present)) if lab in present]:
        g = ok[ok["method_label"] == label]
        if g.empty:
            continue
        shown = _display(label, str(g["method"].iloc[0]), names)
        lk = _look(looks, label)
        if g["temperature"].isna().all():  # methods without temperature (ce): a reference line
            s = seed_stats(g.assign(temperature=0.0), value, band).iloc[0]
            ax.axhline(s["mean"], color=lk.color, ls=lk.linestyle, lw=1.5, label=shown, gid=label)
            ax.axhspan(s["low"], s["high"], color=lk.color, alpha=0.12, lw=0, gid=f"{label}:band")
            ranges.append((s["low"], s["high"]))
            continue
        s = seed_stats(g, value, band)
        ax.plot(s["temperature"], s["mean"], ms=3.5, lw=1.3, label=shown, gid=label, **lk.line_kw())
        ax.fill_between(s["temperature"], s["low"], s["high"], color=lk.color, alpha=0.18, lw=0,
                        gid=f"{label}:band")
        ranges.append(_range(s["low"], s["high"], s["mean"]))
    ranges.append(_mark_diverged(ax, sel[sel["status"] == "diverged"], ok, value))
    return _union(*ranges)


# --------------------------------------------------------------------------- Fig. 2
def acc_vs_temperature_by_duration(df: pd.DataFrame, method: str | None = None, value: str = "acc1",
                                   band: str = "ci") -> plt.Figure:
    """Fig. 2: accuracy vs T for each training length; one row of panels per method (every
    method that uses T, or only ``method``, a method label), one panel per (optimizer, batch
    size) and any other varying setting (rows of at most 4 panels; where every method has a
    single panel, three methods a row; unused grid slots are removed). Line gids:
    ``"epochs=<E>"``; bands ``"epochs=<E>:band"``; a panel's gid is its method label. The
    y-axis is shared along a row when its panels differ only in optimisation settings."""
    style.apply()
    _check_band(band)
    rows = final_test_rows(df)
    students = rows[(rows["role"] == "student") & rows["temperature"].notna()]
    teachers = rows[rows["role"] == "teacher"]
    methods = [method] if method else sorted(students["method_label"].unique())
    students = students[students["method_label"].isin(methods)]
    cols = [c for c in settings(students) if c != "epochs"]
    for c in ("optimizer", "batch_size"):
        if c not in cols and c in students:
            cols.append(c)
    keys = _panel_keys(students, cols)
    per = {m: [k for k in keys if len(_select(students[students["method_label"] == m], k))] for m in methods}
    if all(len(ks) <= 1 for ks in per.values()):  # one panel per method: three methods a row
        cells = [(m, k) for m, ks in per.items() for k in ks]
        layout = [cells[i:i + 3] for i in range(0, len(cells), 3)]
    else:  # a row of panels per method (at most 4 a row)
        layout = [[(m, k) for k in ks[i:i + 4]] for m, ks in per.items() for i in range(0, len(ks), 4)]
    share = all(c in OPTIM_COLUMNS for c in cols)
    fig, grid = _row_grid([len(r) for r in layout])
    durations = sorted(students["epochs"].dropna().unique())
    colors = dict(zip(durations, sns.color_palette("viridis_r" if len(durations) > 1 else "colorblind",
                                                   max(len(durations), 1))))
    marks = {e: style.MARKERS[i % len(style.MARKERS)] for i, e in enumerate(durations)}
    for axes, row in zip(grid, layout):
        ranges = []
        for ax, (m, key) in zip(axes, row):
            sel = _select(students[students["method_label"] == m], key)
            ok = sel[sel["status"] == "done"]
            rs = []
            for e in durations:
                g = ok[ok["epochs"] == e]
                if g.empty:
                    continue
                s = seed_stats(g, value, band)
                gid = f"epochs={int(e)}"
                ax.plot(s["temperature"], s["mean"], marker=marks[e], ms=3.5, color=colors[e], label=f"{int(e)} epochs",
                        gid=gid)
                ax.fill_between(s["temperature"], s["low"], s["high"], color=colors[e], alpha=0.18, lw=0,
                                gid=f"{gid}:band")
                rs.append(_range(s["low"], s["high"], s["mean"]))
            rs.append(_mark_diverged(ax, sel[sel["status"] == "diverged"], ok, value))
            ranges.append(_union(*rs))
            _temperature_axis(ax, students["temperature"])
            ax.set_ylabel(f"student test {value} (%)")
            ax.set_title(_panel_title(key, m), fontsize=8)
            ax.set_gid(m)
        _fit_y(axes, ranges, share and len({m for m, _ in row}) == 1, ACC_CEILING)
        for ax, (m, key) in zip(axes, row):
            _teacher(ax, teachers, _select(students[students["method_label"] == m], key), value)
    _finish(fig, "Accuracy vs temperature by training length" + (f" ({methods[0]})" if len(methods) == 1
                                                                  else ", per method"),
            _legend_title(_seeds_per_point(students), band))
    return fig


# --------------------------------------------------------------------------- Fig. 3
def early_epochs(df: pd.DataFrame) -> list[int]:
    """Test evaluation epochs before the last one, over the students' done runs that use T."""
    t = df[(df["split"] == "test") & (df["role"] == "student") & (df["status"] == "done")
           & df["temperature"].notna()]
    return sorted(int(e) for e in t.loc[t["epoch"] < t["epochs"], "epoch"].unique())


def _pick_early(available: list[int], final: int) -> int:
    """The latest evaluation point at or before half the training, else the earliest one."""
    half = [e for e in available if e <= final / 2]
    return half[-1] if half else available[0]


def _best_star(ax: plt.Axes, s: pd.DataFrame, lk: style.Look, gid: str) -> None:
    i = int(np.nanargmax(s["mean"].to_numpy(float)))
    ax.plot([s["temperature"].iloc[i]], [s["mean"].iloc[i]], marker="*", ms=11, ls="none", color=lk.color,
            markeredgecolor="black", markeredgewidth=0.5, zorder=6, gid=gid)


def early_vs_final(df: pd.DataFrame, early_epoch: int | None = None, value: str = "acc1",
                   band: str = "ci") -> plt.Figure:
    """Fig. 3: per setting, two panels side by side on the same T axis: an earlier evaluation
    (left, axes gid ``"early"``, lines ``"<label>@<epoch>"``) and the last epoch (right, axes gid
    ``"final"``, lines = method labels) of the same runs, each titled with its epoch and with its
    own y-range. A star (gid ``"<line gid>:best"``) marks each method's best T (highest mean) in
    each panel, so the reader sees where the best T moves. ``early_epoch`` defaults, per setting,
    to the latest evaluation at or before half the training (else the earliest). Only runs with
    both points are averaged; diverged runs are marked in the last-epoch panel."""
    style.apply()
    _check_band(band)
    rows = final_test_rows(df)
    final = rows[(rows["role"] == "student") & rows["temperature"].notna()]
    teachers = rows[rows["role"] == "teacher"]
    full = with_teacher_columns(df)
    tests = full[(full["split"] == "test") & (full["role"] == "student")]
    labels = sorted(final["method_label"].unique())
    keys = _panel_keys(final, settings(final))
    facets = _facets(labels)
    layout = [(k, f, f"methods {i + 1}/{len(facets)}" if len(facets) > 1 else "")
              for k in keys for i, f in enumerate(facets)]
    fig, grid = _row_grid([2] * len(layout), w=4.2, h=3.2)
    looks = method_looks(df)
    for (ax_e, ax_f), (key, facet, tag) in zip(grid, layout):
        sel = _select(final, key)
        ok = sel[sel["status"] == "done"]
        avail = sorted(int(e) for e in _select(tests, key).query("status == 'done'")["epoch"].unique())
        last = int(ok["epochs"].max()) if len(ok) else 0
        avail = [e for e in avail if e < last]
        early = early_epoch if early_epoch is not None else (_pick_early(avail, last) if avail else None)
        early_rows = tests[(tests["epoch"] == early) & tests["run_id"].isin(ok["run_id"])] if early else tests.iloc[:0]
        ax_e.set_gid("early")
        ax_f.set_gid("final")
        r_e, r_f = [], []
        for label in facet:
            g = ok[ok["method_label"] == label]
            if early:
                g = g[g["run_id"].isin(early_rows["run_id"])]
            if g.empty:
                continue
            lk = _look(looks, label)
            s = seed_stats(g, value, band)
            ax_f.plot(s["temperature"], s["mean"], ms=3.5, lw=1.3, label=label, gid=label, **lk.line_kw())
            ax_f.fill_between(s["temperature"], s["low"], s["high"], color=lk.color, alpha=0.18, lw=0,
                              gid=f"{label}:band")
            _best_star(ax_f, s, lk, f"{label}:best")
            r_f.append(_range(s["low"], s["high"], s["mean"]))
            e_rows = early_rows[early_rows["run_id"].isin(g["run_id"])]
            if len(e_rows):
                es = seed_stats(e_rows, value, band)
                gid = f"{label}@{early}"
                ax_e.plot(es["temperature"], es["mean"], ms=3.5, lw=1.3, gid=gid, **lk.line_kw())
                ax_e.fill_between(es["temperature"], es["low"], es["high"], color=lk.color, alpha=0.18, lw=0,
                                  gid=f"{gid}:band")
                _best_star(ax_e, es, lk, f"{gid}:best")
                r_e.append(_range(es["low"], es["high"], es["mean"]))
        drawn = ok[ok["run_id"].isin(early_rows["run_id"])] if early else ok
        r_f.append(_mark_diverged(ax_f, sel[sel["status"] == "diverged"], drawn, value))
        for ax, r in ((ax_e, r_e), (ax_f, r_f)):
            _fit_y([ax], [_union(*r) if r else (math.nan, math.nan)], False, ACC_CEILING)
            _temperature_axis(ax, final["temperature"])
            ax.set_ylabel(f"student test {value} (%)")
        et = f"epoch {early} (earlier)" if early else "no earlier evaluation"
        ax_e.set_title(_panel_title(key, ", ".join(x for x in (tag, et) if x)), fontsize=8)
        ax_f.set_title(_panel_title(key, (f"{tag}, " if tag else "") + f"epoch {last} (last)"), fontsize=8)
        _teacher(ax_f, teachers, sel, value)
    star = Line2D([], [], marker="*", ms=9, ls="none", color="0.5", markeredgecolor="black", markeredgewidth=0.5)
    _finish(fig, "An earlier epoch (left) vs the last epoch (right) of the same runs",
            _legend_title(_seeds_per_point(final), band), extra=[(star, "best T of the method (highest mean)")])
    return fig


# --------------------------------------------------------------------------- Fig. 4
def softmax_profile(logits: np.ndarray | torch.Tensor, temperature: float, chunk: int = 8192) -> dict:
    """The teacher's mean *sorted* softmax at ``temperature`` over all rows (``sorted``, [C],
    descending), its mean per-sample entropy in nats (``entropy``, as ``ls`` matches it: rows in
    float64) and the mean top-1 probability (``max_prob``). Computed in float64, in chunks."""
    x = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
    n, c = x.shape
    if n == 0:
        raise ValueError("softmax_profile: no rows")
    total = torch.zeros(c, dtype=torch.float64)
    h = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, chunk):
        part = x[start:start + chunk].double()
        p = torch.softmax(part / temperature, dim=1)
        total += p.sort(dim=1, descending=True).values.sum(dim=0)
        h += L.softmax_entropy(part, temperature).sum()
    mean_sorted = (total / n).numpy()
    return {"sorted": mean_sorted, "entropy": float(h) / n, "max_prob": float(mean_sorted[0]), "num_classes": c}


def ls_sorted(epsilon: float, num_classes: int) -> np.ndarray:
    """The label-smoothing distribution ``(1−ε)·onehot + ε/C``, sorted: ``[1−ε+ε/C, ε/C, ...]``."""
    out = np.full(num_classes, epsilon / num_classes)
    out[0] = 1 - epsilon + epsilon / num_classes
    return out


def sorted_softmax(profile_logits: np.ndarray | torch.Tensor, temperatures: Sequence[float], top: int = 20,
                   title: str | None = None) -> plt.Figure:
    """Fig. 4: one panel per temperature; horizontal bars, class rank on the y-axis (1 = the
    sample's most probable class). Coloured bars (gid ``"teacher"``): the teacher's softmax at T,
    sorted per training sample and averaged, top ``top`` classes. Grey bars (gid
    ``"ls_matched"``): the label-smoothing distribution whose entropy equals the mean entropy of
    the FULL teacher distribution at T (ε from ``losses.match_ls_epsilon``). The probability
    (x) axis is scaled per panel, so its range shrinks as T grows; the axis label says so.
    Each panel's gid is ``"T=<T>"``."""
    style.apply()
    temps = [float(t) for t in temperatures]
    fig, axes = _grid(len(temps), w=3.0, h=3.6, ncols_max=min(len(temps), 6))
    colors = sns.color_palette("flare", max(len(temps), 1))
    c = int(np.asarray(profile_logits).shape[1])
    k = min(top, c)
    ranks = np.arange(1, k + 1)
    for i, (ax, t) in enumerate(zip(axes, temps)):
        prof = softmax_profile(profile_logits, t)
        eps = L.match_ls_epsilon(prof["entropy"], c)
        ls = ls_sorted(eps, c)
        ax.barh(ranks - 0.2, prof["sorted"][:k], height=0.4, color=colors[i], gid="teacher")
        ax.barh(ranks + 0.2, ls[:k], height=0.4, color="0.6", gid="ls_matched")
        ax.set_gid(f"T={t:g}")
        ax.set_ylim(k + 0.7, 0.3)
        ax.set_yticks([r for r in ranks if r == 1 or r % 5 == 0])
        xmax = max(prof["sorted"][0], ls[0])
        ax.set_xlim(0, xmax * 1.08)
        ax.set_title(f"T = {t:g}\nH = {prof['entropy']:.2f} nats, LS ε = {eps:.3f}", fontsize=8)
        ax.set_xlabel("mean sorted probability\n(x-scale per panel: shrinks as T grows)", fontsize=7)
    for ax in axes[::min(len(temps), 6)]:
        ax.set_ylabel(f"class rank (top {k} of {c})")
    handles = [Patch(color=colors[len(temps) // 2], label="teacher: σ(v/T) sorted per sample, mean over "
                     "training samples (colour: T)"),
               Patch(color="0.6", label=f"label smoothing with the same entropy (max: log C = {math.log(c):.2f} nats)")]
    fig.suptitle(_title(fig, title or "Teacher's mean sorted softmax (colour) vs entropy-matched label smoothing "
                                      "(grey)"))
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, -0.06), frameon=False)
    return fig


# --------------------------------------------------------------------------- Fig. 5
def relational(df: pd.DataFrame, value: str = "acc1", band: str = "ci") -> plt.Figure:
    """Fig. 5: KD and the methods that alter the teacher's relational information
    (entropy-matched label smoothing, shuffled non-target, top-k non-target, TCKD-only,
    NCKD-only) across temperatures, with the CE-only student and the teacher as references.
    Label smoothing with a fixed ε (no temperature) is left out: it is not entropy-matched."""
    students = df[df["role"] == "student"]
    fixed_ls = students[(students["method"] == "ls") & students["temperature"].isna()]["run_id"].unique()
    df = df[~df["run_id"].isin(fixed_ls)]
    return acc_vs_temperature(df, value, methods=RELATIONAL + ("ce",), names=RELATIONAL_NAMES,
                              title="Relational information: KD and its ablations", band=band)


def supports_relational(df: pd.DataFrame) -> bool:
    """Fig. 5 applies when KD and at least one relational ablation (T-dependent) were run."""
    st = df[(df["role"] == "student") & df["temperature"].notna()]
    methods = set(st["method"].unique())
    return "kd" in methods and bool(methods & set(RELATIONAL[1:]))


# --------------------------------------------------------------------------- paired differences
def paired_delta(df: pd.DataFrame, reference_T: float | None = None, value: str = "acc1") -> plt.Figure:
    """Δ accuracy vs T against ``reference_T`` (default: :data:`tstudy.study.REFERENCE_TEMPERATURE`;
    ``tstudy figures`` passes the study's ``reference_temperature``) of the same method and
    setting, seed by seed (:func:`analysis.stats.paired_deltas`), shaded: the paired 95 %
    interval; a zero line (gid ``"zero"``) and a dotted line at the reference T (gid
    ``"reference"``). Methods without a run at the reference T are left out. Line gids: method
    labels; bands ``"<label>:band"``."""
    from tstudy.study import REFERENCE_TEMPERATURE

    style.apply()
    ref = float(REFERENCE_TEMPERATURE if reference_T is None else reference_T)
    rows = final_test_rows(df)
    students = rows[(rows["role"] == "student") & rows["temperature"].notna()]
    ok = students[students["status"] == "done"]
    cols = settings(students)
    d = stats.paired_deltas(ok, value, ref, cols)
    labels = sorted(d["method_label"].unique())
    layout, shared = _layout(students, cols, labels)
    fig, grid = _row_grid([len(r) for r in layout])
    looks = method_looks(df)
    for axes, row in zip(grid, layout):
        ranges = []
        for ax, (key, facet, tag) in zip(axes, row):
            sel = _select(d, key)
            rs = [(0.0, 0.0)]
            for label in [lab for lab in facet if lab in set(sel["method_label"])]:
                g = sel[sel["method_label"] == label].sort_values("temperature")
                lk = _look(looks, label)
                lo, hi = g["delta_low"].fillna(g["delta_mean"]), g["delta_high"].fillna(g["delta_mean"])
                ax.plot(g["temperature"], g["delta_mean"], ms=3.5, lw=1.3, label=label, gid=label, **lk.line_kw())
                ax.fill_between(g["temperature"], lo, hi, color=lk.color, alpha=0.18, lw=0, gid=f"{label}:band")
                rs.append(_range(lo, hi, g["delta_mean"]))
            ranges.append(_union(*rs))
            ax.axhline(0.0, color="black", lw=0.8, gid="zero")
            ax.axvline(ref, color="0.5", ls=":", lw=1, gid="reference")
            _temperature_axis(ax, students["temperature"])
            ax.set_ylabel(f"Δ test {value} vs T = {ref:g} (points)")
            ax.set_title(_panel_title(key, tag), fontsize=8)
        _fit_y(axes, ranges, shared)
    _finish(fig, f"Paired difference vs T = {ref:g} (same method)",
            f"paired Δ, mean over seeds (n={_count_range(d['n']) if len(d) else '0'}); "
            "shaded: paired 95 % interval")
    return fig


# --------------------------------------------------------------------------- checks
def _texts(fig: plt.Figure) -> list:
    out = list(fig.texts)
    if fig._suptitle is not None and fig._suptitle not in out:
        out.append(fig._suptitle)
    for lg in fig.legends:
        out += [lg.get_title(), *lg.get_texts()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9 or axis.get_scale() == "log":
                    out += [lab for lab in (tick.label1, tick.label2) if lab.get_visible()]
        if ax.get_legend() is not None:
            out += [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    seen: set[int] = set()
    return [t for t in out if t.get_visible() and t.get_text().strip() and not (id(t) in seen or seen.add(id(t)))]


def overlapping_texts(fig: plt.Figure, tol: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of texts of ``fig`` (titles, axis and tick labels, legend texts, annotations) whose
    rendered bounding boxes overlap by more than ``tol`` pixels each way; ``[]`` is a readable
    figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = []
    for t in _texts(fig):
        if not t.get_visible():
            continue
        bb = t.get_window_extent(r)
        if bb.width > 0 and bb.height > 0:
            boxes.append((t.get_text(), bb))
    out = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i][1], boxes[j][1]
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            if w > tol and h > tol:
                out.append((boxes[i][0], boxes[j][0]))
    return out
