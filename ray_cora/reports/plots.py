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
    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(languages) * len(metrics) + 2), 4))
    _grouped_bars(axes, per_language, languages, metrics)
    axes.set_xlabel("question language")
    if title:
        axes.set_title(title)
    return _png(figure)


def _grouped_bars(axes, per_language: dict[str, dict[str, float]], languages: Sequence[str],
                  series: Sequence[str], *, legend: bool = True) -> None:
    x = np.arange(len(languages))
    width = 0.8 / len(series)
    highest = 0.0
    for i, name in enumerate(series):
        values = [float(per_language[lang].get(name) or 0.0) for lang in languages]
        highest = max([highest, *values])
        axes.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    axes.set_ylim(0, max(5.0, 1.05 * highest))  # percentages: never below 0, even when all are 0
    axes.set_xticks(x, languages)
    axes.set_ylabel("%")
    axes.grid(axis="y", alpha=0.3)
    if legend:
        axes.legend(fontsize="small", ncols=min(len(series), 5))


def comparison_bar_chart(panels: dict[str, dict[str, dict[str, float | None]]], runs: Sequence[str], *,
                         title: str = "") -> bytes:
    """Runs side by side: one panel per metric (``{metric: {language: {run: value}}}``), one group of
    bars per language (a ``macro`` key drawn last, as the average), one bar per run.

    >>> png = comparison_bar_chart({"R@5": {"ja": {"dense": 40.0, "bm25": 60.0}}}, ["dense", "bm25"])
    >>> png[:4] == b"\\x89PNG"
    True
    """
    if not panels or not runs or not any(panels.values()):
        raise ValueError("comparison_bar_chart needs at least one metric, one language and one run")
    width = max(len(rows) for rows in panels.values())
    figure, axes_list = plt.subplots(len(panels), 1, squeeze=False, layout="constrained",
                                     figsize=(max(6.0, 0.35 * width * len(runs) + 2), 0.5 + 2.8 * len(panels)))
    for axes, (metric, rows) in zip(axes_list[:, 0], panels.items()):
        languages = [lang for lang in rows if lang not in _IGNORED] + [lang for lang in rows if lang == "macro"]
        _grouped_bars(axes, rows, languages, runs, legend=False)
        axes.set_title(metric, fontsize="medium")
    axes_list[-1, 0].set_xlabel("question language")
    # One legend for every panel, outside the bars.
    figure.legend(*axes_list[0, 0].get_legend_handles_labels(), loc="outside lower center",
                  ncols=min(len(runs), 6), fontsize="small")
    if title:
        figure.suptitle(title)
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
