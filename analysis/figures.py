"""Figure functions: each takes a results DataFrame (or a teacher's logits) and returns a Figure.

The figures of Frank & Davis (arXiv 2603.02430):

* Fig. 1 :func:`acc_vs_temperature` — student accuracy vs T, one line per method.
* Fig. 2 :func:`acc_vs_temperature_by_duration` — one line per training length (epochs), one
  panel per (optimizer, batch size).
* Fig. 3 :func:`early_vs_final` — accuracy vs T at the last epoch (colour, left axis) and at an
  earlier evaluation point of the same runs (greyscale, right axis).
* Fig. 4 :func:`sorted_softmax` — the teacher's mean sorted softmax at each T (colour) and the
  label-smoothing distribution of the same entropy (grey).
* Fig. 5 :func:`relational` — KD vs its relational ablations (entropy-matched LS, shuffled
  non-target, top-k, TCKD-only, NCKD-only).

Every accuracy line is the mean over seeds with a ±1 std band (stated in the legend title);
its artist's gid is the method label (``"<label>:std"`` for the band). Runs that diverged are
drawn as red crosses (gid ``"diverged"``) at their temperature, never dropped silently.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from analysis import style
from tstudy import losses as L

# Columns that define a "setting": students differing in these go to different panels.
# ``teacher_init`` is derived here from the teacher rows (scratch / imagenet-finetuned teacher).
SETTING_COLUMNS = ["dataset", "labels", "image_size", "teacher_model", "teacher_init", "model", "init",
                   "optimizer", "lr", "momentum", "nesterov", "batch_size", "epochs", "schedule", "milestones",
                   "gamma", "warmup_epochs", "weight_decay", "precision", "augment", "val_fraction"]
TEACHER_COLUMNS = ("teacher_model", "teacher_init", "teacher_id")
OPTIM_COLUMNS = ("optimizer", "lr", "weight_decay", "momentum", "batch_size", "schedule")
SPREAD = "mean ± std over seeds"

# Fig. 5: the methods that alter the relational information the teacher gives, in legend order.
RELATIONAL = ("kd", "ls", "kd_shuffled", "kd_topk", "tckd", "nckd")
RELATIONAL_NAMES = {"kd": "KD", "ls": "LS, ε entropy-matched", "kd_shuffled": "KD, shuffled non-target",
                    "kd_topk": "KD, top-k non-target", "tckd": "TCKD only", "nckd": "NCKD only",
                    "ce": "CE only (no teacher)"}


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


def settings(students: pd.DataFrame) -> list[str]:
    """The setting columns that vary among these students (panel keys). Teacher columns vary only
    among students that have a teacher: a student without one (ce) belongs to every panel of
    its other settings. If students sharing a setting still name different teachers (teachers
    differing in a field not listed here), ``teacher_id`` is added so different teachers are
    never averaged together."""
    has_t = _has_teacher(students)
    cols = []
    for c in SETTING_COLUMNS:
        if c not in students:
            continue
        vals = students.loc[has_t, c] if c in TEACHER_COLUMNS and has_t.any() else students[c]
        if vals.astype(str).nunique() > 1:
            cols.append(c)
    if has_t.any() and students.loc[has_t, "teacher_id"].nunique() > 1:
        with_t = students[has_t]
        per = (with_t.groupby(cols, dropna=False)["teacher_id"].nunique() if cols
               else pd.Series([with_t["teacher_id"].nunique()]))
        if per.max() > 1:
            cols.append("teacher_id")
    return cols


def seed_stats(g: pd.DataFrame, value: str = "acc1") -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for one seed) and count over seeds, per temperature."""
    s = g.groupby("temperature")[value].agg(["mean", "std", "count"]).reset_index()
    s["std"] = s["std"].fillna(0.0)
    return s.sort_values("temperature")


def method_colors(df: pd.DataFrame) -> dict[str, tuple]:
    """One colour per student method label of the whole table, so a method keeps its colour in
    every figure (seaborn's colour-blind palette without its grey, which is reserved for the
    greyscale curves; husl beyond 9 labels)."""
    st = df[df["role"] == "student"] if "role" in df else df
    labels = sorted(st["method_label"].dropna().unique()) if "method_label" in st else []
    colors = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]
    if len(labels) > len(colors):
        colors = sns.color_palette("husl", len(labels))
    return dict(zip(labels, colors))


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


def _panel_title(key: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in key.items()) if key else ""


def _grid(n: int, w: float = 4.2, h: float = 3.2, ncols_max: int = 3, **kw) -> tuple[plt.Figure, list[plt.Axes]]:
    ncols = max(1, min(n, ncols_max))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _temperature_axis(ax: plt.Axes, temps: Iterable[float]) -> None:
    ax.set_xscale("log", base=2)
    ts = sorted({float(t) for t in temps if pd.notna(t)})
    if ts and len(ts) <= 12:
        ax.set_xticks(ts)
        ax.set_xticklabels([f"{t:g}" for t in ts])
        ax.minorticks_off()
    ax.set_xlabel("temperature T (log scale)")


def _teacher_line(ax: plt.Axes, teachers: pd.DataFrame, sel: pd.DataFrame, value: str) -> None:
    tsel = teachers
    if "teacher_id" in sel:  # the teachers these students name (none for ce-only panels)
        tsel = teachers[teachers["run_id"].isin(sel["teacher_id"].dropna().unique())]
    tsel = tsel[tsel["status"] == "done"] if "status" in tsel else tsel
    if len(tsel):
        m = tsel[value].mean()
        ax.axhline(m, color="black", ls="--", lw=1, label="teacher", gid="teacher")
        ax.text(0.99, m, f"teacher {m:.1f}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=6.5)


def _mark_diverged(ax: plt.Axes, bad: pd.DataFrame, ok: pd.DataFrame, value: str) -> None:
    """Diverged runs: a red cross at their temperature, at the panel's lowest accuracy."""
    if len(bad):
        y0 = ok[value].min() if len(ok) and ok[value].notna().any() else 0.0
        ax.scatter(bad["temperature"].fillna(1.0), np.full(len(bad), y0), marker="x", color="red", zorder=5,
                   label="diverged run (not in the mean)", gid="diverged")
        ax.text(0.01, 0.01, f"{len(bad)} diverged", transform=ax.transAxes, color="red", fontsize=6.5,
                ha="left", va="bottom")


def _figure_legend(fig: plt.Figure, title: str, extra: list | None = None, ncol: int = 4) -> None:
    """One legend for all panels, below them (labels de-duplicated across panels)."""
    seen: dict[str, object] = {}
    for h, label in extra or []:
        seen.setdefault(label, h)
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=max(1, min(ncol, len(seen))), fontsize=7, title=title, title_fontsize=7, frameon=False)


# --------------------------------------------------------------------------- Fig. 1
def acc_vs_temperature(df: pd.DataFrame, value: str = "acc1", methods: Sequence[str] | None = None,
                       names: dict[str, str] | None = None, title: str = "Accuracy vs temperature") -> plt.Figure:
    """Student test accuracy vs temperature, one line per method (mean ± std over seeds, shaded),
    the CE-only student and the teacher as horizontal lines, one panel per setting. Diverged
    runs are marked with an x at the bottom of the panel.

    ``methods`` restricts to these method names (in this legend order); ``names`` maps a method
    name to its legend text (gids stay the method labels)."""
    style.apply()
    rows = final_test_rows(df)
    students = rows[rows["role"] == "student"]
    teachers = rows[rows["role"] == "teacher"]
    if methods is not None:
        students = students[students["method"].isin(methods)]
    panels = _panel_keys(students, settings(students))
    fig, axes = _grid(len(panels))
    labels = _ordered_labels(students, methods)
    colors = method_colors(df)
    for ax, key in zip(axes, panels):
        sel = _select(students, key)
        _draw_methods(ax, sel, colors, value, order=labels, names=names)
        _teacher_line(ax, teachers, sel, value)
        _temperature_axis(ax, students["temperature"])
        ax.set_ylabel(f"student test {value} (%)")
        ax.set_title(_panel_title(key), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _figure_legend(fig, f"{SPREAD} (n={_max_seeds(students)}); shaded: ± std")
    return fig


def _max_seeds(sel: pd.DataFrame) -> int:
    """How many seeds the finished runs span (the n of the legend)."""
    ok = sel[sel["status"] == "done"] if "status" in sel else sel
    return int(ok["seed"].nunique()) if "seed" in ok else 0


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


def _draw_methods(ax: plt.Axes, sel: pd.DataFrame, colors: dict, value: str, order: list[str] | None = None,
                  names: dict[str, str] | None = None) -> None:
    ok = sel[sel["status"] == "done"]
    present = set(sel["method_label"].unique())
    for label in [lab for lab in (order or sorted(present)) if lab in present]:
        g = ok[ok["method_label"] == label]
        if g.empty:
            continue
        shown = _display(label, str(g["method"].iloc[0]), names)
        if g["temperature"].isna().all():  # methods without temperature (ce): a reference line
            m, s = g[value].mean(), g[value].std(ddof=1) if len(g) > 1 else 0.0
            ax.axhline(m, color=colors[label], ls=":", lw=1.5, label=shown, gid=label)
            ax.axhspan(m - s, m + s, color=colors[label], alpha=0.12, gid=f"{label}:std")
            ax.text(0.01, m, f"{label} {m:.1f} ± {s:.1f}", transform=ax.get_yaxis_transform(), ha="left",
                    va="bottom", fontsize=6.5, color=colors[label])
            continue
        s = seed_stats(g, value)
        ax.plot(s["temperature"], s["mean"], marker="o", ms=3, color=colors[label], label=shown, gid=label)
        ax.fill_between(s["temperature"], s["mean"] - s["std"], s["mean"] + s["std"], color=colors[label],
                        alpha=0.2, gid=f"{label}:std")
    _mark_diverged(ax, sel[sel["status"] == "diverged"], ok, value)


# --------------------------------------------------------------------------- Fig. 2
def _default_method(students: pd.DataFrame) -> str | None:
    temp = students[students["temperature"].notna()]
    if temp.empty:
        return None
    if (temp["method_label"] == "kd").any():
        return "kd"
    return str(temp["method_label"].value_counts().index[0])


def acc_vs_temperature_by_duration(df: pd.DataFrame, method: str | None = None, value: str = "acc1") -> plt.Figure:
    """Fig. 2: accuracy vs T for each training length, one panel per (optimizer, batch size)
    (and per any other varying setting). One method (``method``: a method label; default
    ``kd`` if present, else the most common one). Line gids: ``"epochs=<E>"``; bands
    ``"epochs=<E>:std"``. The y-axis is shared when panels differ only in optimisation settings."""
    style.apply()
    rows = final_test_rows(df)
    students = rows[(rows["role"] == "student")]
    teachers = rows[rows["role"] == "teacher"]
    method = method or _default_method(students)
    students = students[(students["method_label"] == method) & students["temperature"].notna()]
    cols = [c for c in settings(students) if c != "epochs"]
    for c in ("optimizer", "batch_size"):
        if c not in cols and c in students:
            cols.append(c)
    panels = _panel_keys(students, cols)
    share = all(c in OPTIM_COLUMNS for c in cols)
    fig, axes = _grid(len(panels), sharey=share)
    durations = sorted(students["epochs"].dropna().unique())
    colors = dict(zip(durations, sns.color_palette("viridis_r" if len(durations) > 1 else "colorblind",
                                                   max(len(durations), 1))))
    for ax, key in zip(axes, panels):
        sel = _select(students, key)
        ok = sel[sel["status"] == "done"]
        for e in durations:
            g = ok[ok["epochs"] == e]
            if g.empty:
                continue
            s = seed_stats(g, value)
            gid = f"epochs={int(e)}"
            ax.plot(s["temperature"], s["mean"], marker="o", ms=3, color=colors[e], label=f"{int(e)} epochs", gid=gid)
            ax.fill_between(s["temperature"], s["mean"] - s["std"], s["mean"] + s["std"], color=colors[e],
                            alpha=0.2, gid=f"{gid}:std")
        _mark_diverged(ax, sel[sel["status"] == "diverged"], ok, value)
        _teacher_line(ax, teachers, sel, value)
        _temperature_axis(ax, students["temperature"])
        ax.set_ylabel(f"student test {value} (%)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.set_title(_panel_title(key), fontsize=8)
    fig.suptitle(f"Accuracy vs temperature by training length ({method})")
    fig.tight_layout()
    _figure_legend(fig, f"{SPREAD} (n={_max_seeds(students)}); shaded: ± std")
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


def early_vs_final(df: pd.DataFrame, early_epoch: int | None = None, value: str = "acc1") -> plt.Figure:
    """Fig. 3: accuracy vs T at the last epoch (colour, left y-axis; gid = method label) and at an
    earlier evaluation point of the same runs (greyscale, dashed, on a right-hand twin y-axis;
    gid ``"<label>@<epoch>"``). ``early_epoch`` defaults, per panel, to the latest evaluation at
    or before half the training (else the earliest). Only runs with both points are averaged;
    diverged runs are marked. The twin axis has gid ``"early"``."""
    style.apply()
    rows = final_test_rows(df)
    final = rows[(rows["role"] == "student") & rows["temperature"].notna()]
    teachers = rows[rows["role"] == "teacher"]
    full = with_teacher_columns(df)
    tests = full[(full["split"] == "test") & (full["role"] == "student")]
    panels = _panel_keys(final, settings(final))
    fig, axes = _grid(len(panels), w=4.8, h=3.4)
    labels = sorted(final["method_label"].unique())
    colors = method_colors(df)
    greys = dict(zip(labels, np.linspace(0.4, 0.7, max(len(labels), 1)) if len(labels) > 1 else [0.45]))
    markers = dict(zip(labels, "osD^v<>ph*"))
    for ax, key in zip(axes, panels):
        sel = _select(final, key)
        ok = sel[sel["status"] == "done"]
        avail = sorted(int(e) for e in _select(tests, key).query("status == 'done'")["epoch"].unique())
        last = int(ok["epochs"].max()) if len(ok) else 0
        avail = [e for e in avail if e < last]
        ax2 = ax.twinx()
        ax2.set_gid("early")
        ax2.grid(False)
        ax.set_zorder(ax2.get_zorder() + 1)  # colour (last epoch) drawn over grey (earlier epoch)
        ax.patch.set_visible(False)
        early = early_epoch if early_epoch is not None else (_pick_early(avail, last) if avail else None)
        early_rows = tests[(tests["epoch"] == early) & tests["run_id"].isin(ok["run_id"])] if early else tests.iloc[:0]
        for label in labels:
            g = ok[(ok["method_label"] == label) & ok["run_id"].isin(early_rows["run_id"])] if early else \
                ok[ok["method_label"] == label]
            if g.empty:
                continue
            s = seed_stats(g, value)
            ax.plot(s["temperature"], s["mean"], marker=markers[label], ms=3.5, color=colors[label],
                    label=label, gid=label)
            ax.fill_between(s["temperature"], s["mean"] - s["std"], s["mean"] + s["std"], color=colors[label],
                            alpha=0.2, gid=f"{label}:std")
            e_rows = early_rows[early_rows["run_id"].isin(g["run_id"])]
            if len(e_rows):
                es = seed_stats(e_rows, value)
                grey = str(greys[label])
                ax2.plot(es["temperature"], es["mean"], marker=markers[label], ms=3.5, color=grey, ls="--",
                         gid=f"{label}@{early}")
                ax2.fill_between(es["temperature"], es["mean"] - es["std"], es["mean"] + es["std"], color=grey,
                                 alpha=0.12, gid=f"{label}@{early}:std")
        _mark_diverged(ax, sel[sel["status"] == "diverged"], ok, value)
        _teacher_line(ax, teachers, sel, value)
        _temperature_axis(ax, final["temperature"])
        ax.set_ylabel(f"test {value} (%), epoch {last} (colour)")
        ax2.set_ylabel(f"test {value} (%), epoch {early} (grey)" if early else "(no earlier evaluation)",
                       color="0.35")
        ax2.tick_params(axis="y", colors="0.35")
        ax.set_title(_panel_title(key), fontsize=8)
    sep = " " if len(panels) > 1 else "\n"
    fig.suptitle(f"Last epoch (colour, left axis){sep}vs an earlier epoch (grey, dashed, right axis)")
    fig.tight_layout()
    key_lines = [(Line2D([], [], color="0.2", ls="-"), "last epoch (left axis)"),
                 (Line2D([], [], color="0.55", ls="--"), "earlier epoch, same runs (right axis); marker = method")]
    _figure_legend(fig, f"{SPREAD} (n={_max_seeds(final)}); shaded: ± std", extra=key_lines, ncol=3)
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
    fig.suptitle(title or "Teacher's mean sorted softmax (colour) vs entropy-matched label smoothing (grey)")
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, -0.06), frameon=False)
    return fig


# --------------------------------------------------------------------------- Fig. 5
def relational(df: pd.DataFrame, value: str = "acc1") -> plt.Figure:
    """Fig. 5: KD and the methods that alter the teacher's relational information
    (entropy-matched label smoothing, shuffled non-target, top-k non-target, TCKD-only,
    NCKD-only) across temperatures, with the CE-only student and the teacher as references.
    Label smoothing with a fixed ε (no temperature) is left out: it is not entropy-matched."""
    students = df[df["role"] == "student"]
    fixed_ls = students[(students["method"] == "ls") & students["temperature"].isna()]["run_id"].unique()
    df = df[~df["run_id"].isin(fixed_ls)]
    return acc_vs_temperature(df, value, methods=RELATIONAL + ("ce",), names=RELATIONAL_NAMES,
                              title="Relational information: KD and its ablations")


def supports_relational(df: pd.DataFrame) -> bool:
    """Fig. 5 applies when KD and at least one relational ablation (T-dependent) were run."""
    st = df[(df["role"] == "student") & df["temperature"].notna()]
    methods = set(st["method"].unique())
    return "kd" in methods and bool(methods & set(RELATIONAL[1:]))
