"""The paper's published MVTec-AD numbers and how a study's results line up with them.

The tables ship as package data in ``study/report/reference/`` (transcribed from the MAAE paper, see its
README). Paper values are AUROC in percent; our metrics are fractions in [0, 1]. Everything returned here is
in percent so that a report shows both on one scale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from maae.errors import DataError

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
PAPER_AUROC_FILE = REFERENCE_DIR / "mvtec_paper_auroc.csv"
PAPER_ABLATION_FILE = REFERENCE_DIR / "mvtec_paper_ablation.csv"

# MVTec-AD in the paper's row order: the five textures first, then the ten objects.
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush",
                 "transistor", "zipper")
MVTEC_CATEGORIES = MVTEC_TEXTURES + MVTEC_OBJECTS
AVERAGE_ROW = "average"
# The methods a report sets beside ours: the paper's own model ("Ours" in the paper) and its main baseline.
OVERLAY_METHODS = ("MAAE", "UniAD")
PARADIGM_COLUMNS = ("unified", "separate")
LEVELS = {"image": "image_auroc", "pixel": "pixel_auroc"}
# The metrics the paper's tables report (image and pixel AUROC).
PAPER_METRICS = tuple(LEVELS.values())
PERCENT = 100.0


def normalise_category(name: object) -> str:
    """``"Metal Nut"``, ``"metal-nut"`` and ``" metal_nut "`` all become ``"metal_nut"``."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def is_mvtec(categories: Iterable[str]) -> bool:
    """True when there is at least one category and every one is an MVTec-AD category (after normalising)."""
    names = [normalise_category(c) for c in categories]
    return bool(names) and all(name in MVTEC_CATEGORIES for name in names)


def _read_reference(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: missing; the package's reference tables were not installed")
    frame = pd.read_csv(path)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def load_paper_auroc() -> pd.DataFrame:
    """Tables 1 and 2 of the paper: ``category, method, level, unified, separate`` (percent)."""
    frame = _read_reference(PAPER_AUROC_FILE, ("category", "method", "level", *PARADIGM_COLUMNS))
    frame["category"] = frame["category"].map(normalise_category)
    return frame


def load_paper_ablation() -> pd.DataFrame:
    """Table 3 of the paper: ``ang, ffm, mixed_attention`` (0/1) and ``image_auroc, pixel_auroc`` (percent)."""
    frame = _read_reference(PAPER_ABLATION_FILE, ("ang", "ffm", "mixed_attention", *LEVELS.values()))
    for column in ("ang", "ffm", "mixed_attention"):
        frame[column] = frame[column].astype(int).astype(bool)
    return frame


def overlay_column(method: str, level: str, paradigm: str) -> str:
    """Name of one paper column in :func:`paper_overlay`'s frame, e.g. ``MAAE image unified``."""
    return f"{method} {level} {paradigm}"


def paper_overlay(ours: pd.DataFrame, methods: Iterable[str] = OVERLAY_METHODS) -> pd.DataFrame:
    """Our per-category AUROC beside the paper's, one row per category plus a ``mean`` row.

    ``ours`` has a ``category`` column (any spelling) and ``image_auroc``/``pixel_auroc`` as fractions.
    The result holds ``category``, ``ours image``, ``ours pixel`` and for every method, level and paradigm
    the paper's value, all in percent. The ``mean`` row averages each column over the same categories as
    ours (like for like), which differs from the paper's stated averages when ours is a subset.
    """
    paper = load_paper_auroc()
    table = pd.DataFrame({"category": [normalise_category(c) for c in ours["category"]]})
    for level, metric in LEVELS.items():
        table[f"ours {level}"] = ours[metric].to_numpy(dtype=float) * PERCENT
    for method in methods:
        for level in LEVELS:
            rows = paper[(paper["method"] == method) & (paper["level"] == level)].set_index("category")
            for paradigm in PARADIGM_COLUMNS:
                table[overlay_column(method, level, paradigm)] = table["category"].map(rows[paradigm])
    mean_row = {"category": "mean", **table.drop(columns="category").mean(numeric_only=True).to_dict()}
    return pd.concat([table, pd.DataFrame([mean_row])], ignore_index=True)


def paper_averages(methods: Iterable[str] = OVERLAY_METHODS) -> pd.DataFrame:
    """The paper's own ``average`` rows: ``method, level, unified, separate`` (percent)."""
    paper = load_paper_auroc()
    rows = paper[(paper["category"] == AVERAGE_ROW) & paper["method"].isin(list(methods))]
    return rows[["method", "level", *PARADIGM_COLUMNS]].reset_index(drop=True)


def paper_ablation_value(
    table: pd.DataFrame, ang: bool, ffm: bool, mixed_attention: bool, metric: str
) -> float | None:
    """Table 3's value (percent, ``table`` from :func:`load_paper_ablation`) for one switch setting.

    None when Table 3 has no such row (it lists 6 of the 8 combinations).
    """
    match = table[(table["ang"] == ang) & (table["ffm"] == ffm) & (table["mixed_attention"] == mixed_attention)]
    return None if match.empty else float(match.iloc[0][metric])
