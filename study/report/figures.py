"""Plotly figures of the report (the Optuna ones come from ``optuna.visualization``).

Every function takes frames already in display units (percent) and returns a ``go.Figure``; none reads
files or decides what is shown: the section builders do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import roc_auc_score, roc_curve

TEMPLATE = "plotly_white"
HEATMAP_COLORSCALE = "Viridis"
HEATMAP_BASE_HEIGHT = 160
HEATMAP_ROW_HEIGHT = 26
HEATMAP_MAX_LABEL = 60
FIGURE_HEIGHT = 420
BAR_ROW_HEIGHT = 30
PAPER_MARKER_SIZE = 11
MARGIN = {"l": 60, "r": 30, "t": 50, "b": 60}


def _layout(fig: go.Figure, title: str, height: int = FIGURE_HEIGHT) -> go.Figure:
    fig.update_layout(title=title, template=TEMPLATE, height=height, margin=MARGIN)
    return fig


def _clip_label(label: str) -> str:
    return label if len(label) <= HEATMAP_MAX_LABEL else label[: HEATMAP_MAX_LABEL - 1] + "…"


def heatmap(matrix: pd.DataFrame, title: str, value_name: str) -> go.Figure:
    """Rows × categories, one cell per value (percent), the value written in each cell."""
    z = matrix.to_numpy(dtype=float)
    text = [["" if np.isnan(v) else f"{v:.1f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in matrix.columns], y=[_clip_label(str(i)) for i in matrix.index],
        text=text, texttemplate="%{text}", colorscale=HEATMAP_COLORSCALE,
        colorbar={"title": {"text": value_name}},
        hovertemplate="%{y}<br>%{x}: %{z:.2f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    left = min(HEATMAP_MAX_LABEL, max((len(str(i)) for i in matrix.index), default=10)) * 6 + 20
    fig = _layout(fig, title, HEATMAP_BASE_HEIGHT + HEATMAP_ROW_HEIGHT * len(matrix))
    fig.update_layout(margin={**MARGIN, "l": left})
    return fig


def roc_figure(scores: pd.DataFrame, categories: Sequence[str]) -> tuple[go.Figure | None, list[str]]:
    """Image-level ROC curve per category from ``scores.csv`` (label 1 = defective); notes for categories
    whose test images are all of one class (no ROC curve exists there)."""
    fig = go.Figure()
    notes = []
    for category in categories:
        rows = scores[scores["category"] == category]
        labels = rows["label"].astype(int).to_numpy()
        if rows.empty:
            notes.append(f"{category}: no test scores in best/scores.csv")
            continue
        if len(np.unique(labels)) < 2:
            notes.append(f"{category}: every test image has label {labels[0]}, so there is no ROC curve")
            continue
        fpr, tpr, _ = roc_curve(labels, rows["score"].to_numpy(dtype=float))
        area = roc_auc_score(labels, rows["score"].to_numpy(dtype=float))
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line={"shape": "hv"},
                                 name=f"{category} (AUROC {100 * area:.1f})"))
    if not fig.data:
        return None, notes
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"dash": "dot", "color": "grey"}))
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    return _layout(fig, "Image-level ROC per category (best trial)", FIGURE_HEIGHT + 80), notes


def spread_bars(
    labels: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    title: str, paper: Mapping[str, Sequence[float]] | None = None,
) -> go.Figure:
    """Horizontal grouped bars: ``series`` name -> (means, interval lows, interval highs) in percent, one bar
    per label with its (possibly asymmetric) interval as error bars (none where a bound is NaN); ``paper``
    name -> values drawn as diamonds beside them."""
    fig = go.Figure()
    names = [_clip_label(str(label)) for label in labels]
    for name, (means, lows, highs) in series.items():
        above = [0.0 if np.isnan(h) else h - m for m, h in zip(means, highs, strict=True)]
        below = [0.0 if np.isnan(low) else m - low for m, low in zip(means, lows, strict=True)]
        fig.add_trace(go.Bar(y=names, x=list(means), name=name, orientation="h",
                             error_x={"type": "data", "array": above, "arrayminus": below, "symmetric": False,
                                      "visible": True}))
    for name, values in (paper or {}).items():
        fig.add_trace(go.Scatter(y=names, x=list(values), name=name, mode="markers",
                                 marker={"symbol": "diamond", "size": PAPER_MARKER_SIZE}))
    fig.update_layout(barmode="group")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="percent")
    height = HEATMAP_BASE_HEIGHT + BAR_ROW_HEIGHT * len(labels) * max(1, len(series))
    return _layout(fig, title, height)


def grouped_bars(categories: Sequence[str], columns: Mapping[str, Sequence[float]], title: str) -> go.Figure:
    """Vertical grouped bars: one group per category, one bar per column (percent)."""
    fig = go.Figure([go.Bar(x=list(categories), y=list(values), name=name) for name, values in columns.items()])
    finite = [v for values in columns.values() for v in values if v is not None and np.isfinite(v)]
    low = min(finite, default=0.0)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="AUROC (%)", range=[max(0.0, low - 5.0), 100.5])
    return _layout(fig, title)


def learning_curves(history: pd.DataFrame, metric: str, labels: Mapping[str, str], title: str) -> go.Figure:
    """``metric`` (percent) against epoch, one line per trial in ``labels`` (trial id -> legend name)."""
    fig = go.Figure()
    for trial_id, name in labels.items():
        rows = history[history["trial_id"] == trial_id].sort_values("epoch")
        if not rows.empty and rows[metric].notna().any():
            fig.add_trace(go.Scatter(x=rows["epoch"], y=rows[metric], mode="lines+markers", name=name))
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title=f"{metric} (%)")
    return _layout(fig, title)


def importance_bars(importances: Mapping[str, float], title: str) -> go.Figure:
    """Horizontal bars of normalised importances, the most important on top."""
    ordered = sorted(importances.items(), key=lambda item: item[1], reverse=True)
    fig = go.Figure(go.Bar(x=[v for _, v in ordered], y=[k for k, _ in ordered], orientation="h",
                           text=[f"{v:.2f}" for _, v in ordered], textposition="auto"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="importance (sums to 1)", range=[0, 1])
    return _layout(fig, title, HEATMAP_BASE_HEIGHT + BAR_ROW_HEIGHT * len(ordered))
