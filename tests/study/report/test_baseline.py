"""The nearest-neighbour patch baseline in every report: baseline.csv read (or computed by maae's baseline
when missing and the study is over) and shown beside the best setting; a data set without defects stops a
study before it starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from maae.baseline import default_baseline_config, run_baseline
from maae.config import MAAEConfig, preset
from study.report import write_report
from study.report.baseline import BASELINE_NAME, study_baseline, study_config
from study.report.load import load_results
from tests.conftest import TINY_CONFIG
from tests.study.report.fixtures import (
    EMBEDDED_CATEGORIES,
    report_sections,
    search_spec,
    search_study,
    write_baseline,
    write_study,
)

TINY_CATEGORIES = ("brick", "hex_nut")


def test_the_baseline_row_stands_beside_the_best_setting(tmp_path):
    folder = search_study(tmp_path)
    baseline = write_baseline(folder, EMBEDDED_CATEGORIES, image_auroc=0.99, pixel_auroc=0.97)
    text = write_report(folder).read_text(encoding="utf-8")
    sections = report_sections(text)
    mean = 100 * baseline["image_auroc"].mean()
    assert f"Best setting beside the {BASELINE_NAME}" in sections["summary"]
    assert f"<td class=\"text\">{BASELINE_NAME}</td><td class=\"text\">{mean:.2f}</td>" in sections["summary"]
    assert "best − baseline (pp)" in sections["summary"]
    assert "baseline Image AUROC" in sections["per-category"]
    markdown = (folder / "comparison.md").read_text(encoding="utf-8")
    assert f"| {BASELINE_NAME} | {mean:.2f} |" in markdown
    assert pd.read_csv(folder / "baseline.csv").equals(baseline)  # read, never rewritten


def test_a_report_without_a_baseline_says_why(tmp_path):
    running = write_study(tmp_path / "running", search_spec(status="running"))
    assert "still running" in study_baseline(load_results(running)).reason
    finished = search_study(tmp_path / "finished")  # study.json's data_root does not exist here
    sections = report_sections(write_report(finished).read_text(encoding="utf-8"))
    assert "there is no baseline row" in sections["summary"] and "/data/synthetic" in sections["summary"]
    assert not (finished / "baseline.csv").exists()


def test_the_report_computes_baseline_csv_with_maaes_baseline(tmp_path, tiny_data: Path, capsys):
    folder = write_study(tmp_path, search_spec(categories=TINY_CATEGORIES))
    config = MAAEConfig.from_dict({**preset("quick").to_dict(), **TINY_CONFIG})
    study = json.loads((folder / "study.json").read_text())
    study.update(data_root=str(tiny_data), base_config={k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in config.to_dict().items()})
    (folder / "study.json").write_text(json.dumps(study))
    assert study_config(study) == config
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    written = pd.read_csv(folder / "baseline.csv")
    assert list(written.columns) == ["category", "image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap",
                                     "pixel_f1_max"]
    expected = run_baseline(config, default_baseline_config(config), tiny_data, list(TINY_CATEGORIES))
    for _, row in written.iterrows():
        for metric, value in expected.evaluation.per_category[row["category"]].items():
            assert row[metric] == pytest.approx(value)
    assert "computed for this report" in sections["summary"]
    said = capsys.readouterr().err  # minutes on a new data set: the report says what it is doing
    assert f"[report] computing the {BASELINE_NAME} for this data set at {config.image_size} px" in said
    assert "[report] baseline memory bank:" in said
    assert f"{100 * written['image_auroc'].mean():.2f}" in sections["summary"]


def test_a_study_on_data_without_defects_stops_before_it_starts(tmp_path, tiny_data: Path, capsys):
    from study.cli import main

    good_only = tmp_path / "good_only"
    for category in TINY_CATEGORIES:
        shutil.copytree(tiny_data / category / "train", good_only / category / "train")
        shutil.copytree(tiny_data / category / "test" / "good", good_only / category / "test" / "good")
    results = tmp_path / "results"
    code = main(["--space", "search_spaces/ang.yaml", "--data", str(good_only), "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: --data {good_only}") and "no defective" in err[0]
    assert not results.exists() or not any(results.iterdir())
