"""One look for every figure: seaborn's whitegrid, TrueType fonts in PDFs, and one :class:`Look`
(colour, marker, line style) per method.

Colours are Okabe & Ito's colour-blind-safe palette (black reserved for the teacher, grey for the
CE-only student); markers and line styles multiply them: look ``i`` takes colour ``i mod 7``,
marker ``i mod 6`` and line style ``(i // 7) mod 4``, so the first 42 methods get pairwise
distinct (colour, marker) pairs and no two of the first 7 share a colour. The assignment follows
the sorted method labels of the whole study table, so a method keeps its look in every figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

# Okabe & Ito (2008), without black: most distinct first, the pale yellow last.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P")  # not "*": Fig. 3 marks the best T with a star
LINESTYLES = ("-", "--", "-.", ":")
TEACHER_COLOR = "black"
CE_COLOR = "0.45"
REFERENCES = ("ce",)  # methods drawn as grey reference lines, never given a palette look


@dataclass(frozen=True)
class Look:
    color: str
    marker: str
    linestyle: str

    def line_kw(self) -> dict:
        return {"color": self.color, "marker": self.marker, "ls": self.linestyle}


def look(i: int) -> Look:
    """The ``i``-th look (0-based)."""
    return Look(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)],
                LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)])


REFERENCE_LOOK = Look(CE_COLOR, "", ":")


def looks(labels: Iterable[str]) -> dict[str, Look]:
    """One look per label: references (``ce``) grey and dotted, the others in sorted order."""
    labels = sorted(set(labels))
    out = {lab: REFERENCE_LOOK for lab in labels if lab in REFERENCES}
    for i, lab in enumerate(lab for lab in labels if lab not in REFERENCES):
        out[lab] = look(i)
    return out


def apply() -> None:
    sns.set_theme(style="whitegrid", context="paper")
    plt.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "figure.dpi": 120, "savefig.dpi": 150,
                         "savefig.bbox": "tight"})


def palette(labels: list[str]) -> dict[str, str]:
    """Colours of :func:`looks` (kept for callers that only need a colour)."""
    return {k: v.color for k, v in looks(labels).items()}


def save(fig: "plt.Figure", out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.pdf`` (TrueType fonts) and ``stem.png``; close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.pdf", out_dir / f"{stem}.png"]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths
