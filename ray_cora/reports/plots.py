"""PNG plots of per-language results (pure: matplotlib's Agg backend, bytes out, no files).

>>> png = per_language_bar_chart({"en": {"R@5": 60.0}, "ja": {"R@5": 40.0}}, ["R@5"])
>>> png[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_IGNORED = ("macro", "all")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def per_language_bar_chart(per_language: dict[str, dict[str, float]], metrics: Sequence[str], *,
                           title: str = "") -> bytes:
    """Grouped bars: one group per language (``macro``/``all`` keys skipped), one bar per metric."""
    languages = [lang for lang in per_language if lang not in _IGNORED]
    if not languages or not metrics:
        raise ValueError("per_language_bar_chart needs at least one language and one metric")
    x = np.arange(len(languages))
    width = 0.8 / len(metrics)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(languages) * len(metrics) + 2), 4))
    highest = 0.0
    for i, metric in enumerate(metrics):
        values = [float(per_language[lang].get(metric) or 0.0) for lang in languages]
        highest = max([highest, *values])
        axes.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, label=metric)
    axes.set_ylim(0, max(5.0, 1.05 * highest))  # percentages: never below 0, even when all are 0
    axes.set_xticks(x, languages)
    axes.set_ylabel("%")
    axes.set_xlabel("question language")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", ncols=min(len(metrics), 5))
    if title:
        axes.set_title(title)
    return _png(figure)


def language_heatmap(counts: dict[str, dict[str, float]], *, title: str = "") -> bytes:
    """Rows = question language, columns = language of the retrieved passages; each row is shown
    as percentages of its total (like the CORA paper's Figure 3), raw values annotated."""
    rows = [lang for lang in counts if lang not in _IGNORED]
    columns = sorted({col for row in rows for col in counts[row]})
    if not rows or not columns:
        raise ValueError("language_heatmap needs at least one question language with counts")
    matrix = np.array([[float(counts[row].get(col, 0.0)) for col in columns] for row in rows])
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(100.0 * matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    figure, axes = plt.subplots(figsize=(max(4.0, 0.55 * len(columns) + 2), max(3.0, 0.45 * len(rows) + 1.5)))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("retrieved passage language")
    axes.set_ylabel("question language")
    if len(rows) * len(columns) <= 400:
        for r in range(len(rows)):
            for c in range(len(columns)):
                axes.text(c, r, f"{shares[r, c]:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if shares[r, c] > 60 else "black")
    figure.colorbar(image, ax=axes, label="% of retrieved passages")
    if title:
        axes.set_title(title)
    return _png(figure)
