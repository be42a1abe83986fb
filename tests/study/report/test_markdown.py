"""``comparison.md``: the report's tables in the paper's layout."""

from __future__ import annotations

import pandas as pd

from study.report import write_report
from study.report.best import best_trial
from study.report.load import load_results
from tests.study.report.fixtures import grid_study


def test_markdown_has_the_papers_layout(tmp_path):
    folder = grid_study(tmp_path)
    write_report(folder)
    markdown = (folder / "comparison.md").read_text(encoding="utf-8")
    results = load_results(folder)
    best = best_trial(results)
    raw = pd.read_csv(folder / "per_category.csv")
    row = raw[(raw["trial_id"] == best.trial_id) & (raw["category"] == "Metal Nut")].iloc[0]
    assert (f"| metal_nut | {100 * row['image_auroc']:.1f} | {100 * row['pixel_auroc']:.1f} | 99.8 | 95.8 |"
            in markdown)
    assert "## Ablation" in markdown and "## Trials" in markdown
