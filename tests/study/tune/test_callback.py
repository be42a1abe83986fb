"""The Tune callback's pieces that need no running study: the report refresher never breaks a study, and a
trial's hyperparameter columns come from its merged config."""

from __future__ import annotations

from pathlib import Path

import pytest

from maae.config import preset
from study.tune.callback import ReportRefresher, hyper_values, write_report_safely


def test_report_problems_never_break_the_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert write_report_safely(tmp_path / "not-a-study", False) is True  # warned once, no exception
    assert "warning" in capsys.readouterr().err
    refresher = ReportRefresher(tmp_path / "not-a-study")
    refresher.request()
    refresher.close()
    assert not (tmp_path / "not-a-study" / "report.html").exists()


def test_hyperparameter_columns_are_the_trials_config_values() -> None:
    base = preset("quick")
    values = hyper_values(base, ("noise_intensity", "depth", "seed"), {"noise_intensity": 2})
    assert values == {"noise_intensity": 2.0, "depth": base.depth, "seed": base.seed}
    assert isinstance(values["noise_intensity"], float)  # coerced like the trial's own config
