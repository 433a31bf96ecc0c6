"""Statistics over seeds for a temperature study (scipy, numpy; pure functions of arrays/frames).

The design pairs runs by seed: within one setting, runs with the same seed start from the same
weights and see the same batches whatever their temperature and method
(``tests/test_paired_design.py``), so differences between temperatures are computed seed by
seed (paired) and seeds are resampled *jointly* across temperatures.

* :func:`mean_interval` — the mean over seeds with a two-sided interval: Student's t for n < 20
  (the percentile bootstrap under-covers at the handful of seeds a study has), the percentile
  bootstrap from 20 seeds on (no normality assumption once it is sound).
* :func:`paired_deltas` — per temperature, the paired difference against a reference temperature
  of the same method, with its interval.
* :func:`p_best` — P(T is best): the share of joint seed resamples in which T has the highest mean.
* :func:`near_best` — the temperatures not distinguishable from the best: all pairwise paired
  t-tests, Holm-corrected (family-wise error ``alpha``); T is excluded only when another
  temperature is significantly better than it. Without an effect every T stays with probability
  ≥ 1 − alpha, and the true best is kept with probability ≥ 1 − alpha.
* :func:`smoothed_optimum` — the optimum of a parabola in log2 T through the best temperature and
  its grid neighbours, with a joint-bootstrap interval.
* :func:`expected_best` — expected best accuracy against the number of temperatures tried
  (Dodge et al. 2019, "Show your work"), one seed per temperature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95
BOOTSTRAP_MIN_N = 20  # from this many seeds on, intervals are percentile bootstrap; t below
RESAMPLES = 4000
SEED = 20190  # resampling is seeded: the same table gives the same numbers


@dataclass(frozen=True)
class Interval:
    """A mean and a two-sided interval of it (``kind``: "t", "bootstrap", or "none" for n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    kind: str

    def as_list(self) -> list[float] | None:
        return None if self.kind == "none" else [self.low, self.high]


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def mean_interval(x: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Mean of ``x`` (NaNs dropped) with a ``level`` interval: t for n < 20, bootstrap from 20 on.
    A zero spread gives a zero-width interval."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    m = float(a.mean())
    if n < 2:
        return Interval(m, m, m, n, "none")
    if n >= BOOTSTRAP_MIN_N:
        means = a[_rng().integers(0, n, (RESAMPLES, n))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return Interval(m, float(lo), float(hi), n, "bootstrap")
    half = float(sps.t.ppf((1 + level) / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Interval(m, m - half, m + half, n, "t")


ACC_RANGE = (0.0, 100.0)  # where an accuracy (%) and its mean lie


def clipped(iv: Interval, low: float, high: float) -> Interval:
    """``iv`` intersected with the range the mean must lie in (e.g. an accuracy's [0, 100]): a t
    interval from two seeds can reach past 100 %; cutting it there loses no coverage."""
    return Interval(iv.mean, min(max(iv.low, low), high), max(min(iv.high, high), low), iv.n, iv.kind)


def seed_matrix(g: pd.DataFrame, value: str, column: str = "temperature", unit: str | Sequence[str] = "seed"
                ) -> pd.DataFrame:
    """Rows: pairing units (seeds), columns: ``column`` values (sorted), cells: ``value``
    (the mean if a unit has several rows for one cell)."""
    return g.pivot_table(index=unit, columns=column, values=value, aggfunc="mean").sort_index(axis=1)


def paired_difference(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Interval:
    """``a − b`` over the units present in both (paired), with its interval."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return mean_interval(both.iloc[:, 0] - both.iloc[:, 1], level)


def paired_deltas(students: pd.DataFrame, value: str, reference_T: float, keys: list[str],
                  level: float = LEVEL, unit: str | Sequence[str] = "seed") -> pd.DataFrame:
    """Per ``keys`` + ``method_label`` + temperature: the paired difference of ``value`` against
    the same method at ``reference_T`` (``n`` pairs, ``delta_mean``, ``delta_low``,
    ``delta_high``, ``kind``). Groups without a run at ``reference_T`` are left out; the reference
    itself appears with delta 0."""
    cols = [*keys, "method_label", "temperature", "n", "delta_mean", "delta_low", "delta_high", "kind"]
    st = students[students["temperature"].notna()]
    out = []
    for key, g in st.groupby([*keys, "method_label"], dropna=False, sort=True):
        m = seed_matrix(g, value, unit=unit)
        ref = _column(m, reference_T)
        if ref is None:
            continue
        rec = dict(zip([*keys, "method_label"], key if isinstance(key, tuple) else (key,)))
        for t in m.columns:
            d = paired_difference(m[t], ref, level)
            out.append({**rec, "temperature": float(t), "n": d.n, "delta_mean": d.mean, "delta_low": d.low,
                        "delta_high": d.high, "kind": d.kind})
    return pd.DataFrame(out, columns=cols)


def _column(m: pd.DataFrame, t: float) -> pd.Series | None:
    hit = [c for c in m.columns if math.isclose(float(c), float(t))]
    return m[hit[0]] if hit else None


def complete(m: pd.DataFrame) -> pd.DataFrame:
    """The units (rows) with a value at every temperature: what joint resampling needs."""
    return m.dropna(axis=0, how="any")


def p_best(m: pd.DataFrame, resamples: int = RESAMPLES) -> pd.Series:
    """P(T is best) per column of a unit × temperature matrix: resample the complete units with
    replacement, jointly across temperatures; in each resample the column with the highest mean
    wins (ties shared equally). With one complete unit the observed best gets 1."""
    c = complete(m)
    if c.empty:
        return pd.Series(np.nan, index=m.columns)
    a = c.to_numpy(float)
    n = len(a)
    idx = _rng().integers(0, n, (resamples, n)) if n > 1 else np.zeros((1, 1), int)
    means = a[idx].mean(axis=1)  # resamples × temperatures
    top = means >= means.max(axis=1, keepdims=True) - 1e-12
    share = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    return pd.Series(share, index=m.columns)


def _paired_p(d: np.ndarray) -> float:
    """Two-sided paired t-test p-value of differences ``d`` (a zero spread: 0 if the mean
    differs from 0, else 1; fewer than 2 pairs: 1)."""
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return 1.0
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if abs(d.mean()) > 0 else 1.0
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(2 * sps.t.sf(abs(t), len(d) - 1))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(p, float)
    order = np.argsort(p, kind="mergesort")
    k = len(p)
    adj = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out = np.empty(k)
    out[order] = adj
    return out


def near_best(m: pd.DataFrame, alpha: float = 1 - LEVEL) -> list[float]:
    """The temperatures not distinguishable from the best (see the module docstring): every
    pair of temperatures is compared by a paired t-test on the units that have both, the
    p-values Holm-corrected together; T is dropped when some T' has a higher mean and their
    difference is significant."""
    ts = list(m.columns)
    means = m.mean(axis=0)
    pairs = [(i, j) for i in range(len(ts)) for j in range(i + 1, len(ts))]
    adj = holm([_paired_p((m.iloc[:, i] - m.iloc[:, j]).to_numpy(float)) for i, j in pairs]) if pairs else []
    beaten = set()
    for (i, j), p in zip(pairs, adj):
        if p < alpha:
            beaten.add(j if means.iloc[i] > means.iloc[j] else i)
    return [float(t) for k, t in enumerate(ts) if k not in beaten and np.isfinite(means.iloc[k])]


def _vertices(temps: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per row of ``means`` (rows × temperatures): the log2-T optimum of the parabola through the
    best grid point and its two neighbours, clipped to them; the grid point itself at an edge of
    the grid or where the three points are not concave. Returns temperatures."""
    means = np.atleast_2d(means)
    x = np.log2(temps)
    b = np.nanargmax(means, axis=1)
    out = x[b].copy()
    inner = (b > 0) & (b < len(x) - 1)
    if inner.any():
        i = b[inner]
        r = np.arange(len(means))[inner]
        x0, x1, x2 = x[i - 1], x[i], x[i + 1]
        y0, y1, y2 = means[r, i - 1], means[r, i], means[r, i + 1]
        s01, s12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        a2 = (s12 - s01) / (x2 - x0)
        a1 = s01 - a2 * (x0 + x1)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(a2 < 0, np.clip(-a1 / (2 * a2), x0, x2), x1)
        out[inner] = v
    return 2.0 ** out


def smoothed_optimum(m: pd.DataFrame, level: float = LEVEL, resamples: int = 2000) -> Interval:
    """The temperature at the vertex of a parabola in log2 T through the best mean and its two
    grid neighbours (clipped to them), with a percentile interval over joint resamples of the
    complete units. ``kind`` "none" with fewer than 2 complete units or 3 temperatures
    (``mean`` is then the observed best)."""
    temps = np.asarray([float(t) for t in m.columns])
    obs = float(_vertices(temps, m.mean(axis=0).to_numpy(float))[0])
    c = complete(m)
    if len(c) < 2 or len(temps) < 3:
        return Interval(obs, obs, obs, len(c), "none")
    a = c.to_numpy(float)
    idx = _rng().integers(0, len(a), (resamples, len(a)))
    draws = np.log2(_vertices(temps, a[idx].mean(axis=1)))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(obs, float(2 ** lo), float(2 ** hi), len(c), "bootstrap")


def expected_best(values: Sequence[float], max_n: int | None = None) -> pd.DataFrame:
    """Dodge et al. (2019): the expected maximum of ``n`` draws with replacement from the observed
    ``values`` (one per run), ``n = 1..max_n``: E[max_n] = Σ_i v_(i)·((i/N)^n − ((i−1)/N)^n)
    with v sorted ascending. With one run per (temperature, seed), it is the best accuracy a
    researcher should expect after trying n temperatures (one seed each) from this grid."""
    v = np.sort(np.asarray(values, float)[np.isfinite(np.asarray(values, float))])
    big_n = len(v)
    if big_n == 0:
        return pd.DataFrame(columns=["n", "expected_best"])
    i = np.arange(1, big_n + 1)
    rows = []
    for n in range(1, (max_n or big_n) + 1):
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
        rows.append({"n": n, "expected_best": float((w * v).sum())})
    return pd.DataFrame(rows)
