"""The paper's published numbers: category names, MVTec-AD detection, the overlay, the package data."""

from __future__ import annotations

import pandas as pd
import pytest

from study.report.paper import (
    MVTEC_CATEGORIES,
    REFERENCE_DIR,
    is_mvtec,
    normalise_category,
    overlay_column,
    paper_overlay,
)
from tests.study.helpers import REPO_ROOT

SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"

@pytest.mark.parametrize("name", ["Metal Nut", "metal_nut", " metal-nut ", "METAL NUT"])
def test_category_names_are_normalised(name):
    assert normalise_category(name) == "metal_nut"


def test_mvtec_detection():
    assert is_mvtec(["Metal Nut", "carpet"])
    assert is_mvtec(MVTEC_CATEGORIES)
    assert not is_mvtec(["carpet", "brick"])
    assert not is_mvtec([])


def test_paper_overlay_joins_normalised_names_with_unified_and_separate_columns():
    ours = pd.DataFrame({"category": ["Metal Nut", "carpet"], "image_auroc": [0.95, 0.99],
                         "pixel_auroc": [0.90, 0.97]})
    overlay = paper_overlay(ours).set_index("category")
    # Values as printed in the paper's Tables 1 and 2 (unified / separate).
    assert overlay.loc["metal_nut", overlay_column("MAAE", "image", "unified")] == 99.8
    assert overlay.loc["metal_nut", overlay_column("UniAD", "image", "unified")] == 99.2
    assert overlay.loc["metal_nut", overlay_column("UniAD", "image", "separate")] == 99.0
    assert overlay.loc["carpet", overlay_column("MAAE", "pixel", "unified")] == 98.6
    assert overlay.loc["carpet", overlay_column("MAAE", "pixel", "separate")] == 97.8
    assert overlay.loc["metal_nut", "ours image"] == pytest.approx(95.0)  # fractions shown as percent
    assert overlay.loc["mean", "ours pixel"] == pytest.approx(93.5)
    assert overlay.loc["mean", overlay_column("MAAE", "image", "unified")] == pytest.approx((99.8 + 100.0) / 2)


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="the team's shared reference folder is not here")
def test_package_reference_tables_are_the_shared_ones():
    for name in ("mvtec_paper_auroc.csv", "mvtec_paper_ablation.csv"):
        assert (REFERENCE_DIR / name).read_bytes() == (SHARED_REFERENCE / name).read_bytes()
