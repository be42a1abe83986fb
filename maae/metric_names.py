"""The names of MAAE's evaluation metrics, in report order, importable without the metric code itself.

:mod:`maae.metrics` computes them (and pulls in scikit-learn and SciPy); the study platform's processes
that only *name* metrics (a search space, the results tables, Tune's trial processes) import this module
instead, so they stay light.
"""

from __future__ import annotations

METRIC_NAMES: tuple[str, ...] = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_ap",
    "pixel_ap",
    "pixel_f1_max",
)

__all__ = ["METRIC_NAMES"]
