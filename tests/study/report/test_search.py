"""The rebuilt Optuna study: distributions read with the study's own space parser, and importances."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from study.report.load import load_results
from study.report.search import build_search_study, infer_distributions, param_importances
from tests.study.report.fixtures import TrialSpec, search_spec, search_study, write_study


def test_distributions_come_from_the_space_else_from_values(tmp_path):
    results = load_results(search_study(tmp_path))
    distributions, sources = infer_distributions(results, ["noise_intensity", "lambda_ang", "attention"])
    assert distributions["noise_intensity"] == FloatDistribution(0.1, 2.0)
    assert distributions["lambda_ang"] == FloatDistribution(0.05, 2.0, log=True)
    assert distributions["attention"] == CategoricalDistribution(["mixed", "spatial"])
    assert set(sources.values()) == {"study.json space"}
    bare = load_results(write_study(tmp_path / "bare", search_spec(space={})))
    distributions, sources = infer_distributions(bare, ["noise_intensity", "attention"])
    values = bare.trials["noise_intensity"]
    assert distributions["noise_intensity"] == FloatDistribution(values.min(), values.max())
    assert distributions["attention"] == CategoricalDistribution(["mixed", "spatial"])
    assert all(source.startswith("trial values") for source in sources.values())


def test_importances_on_completed_trials(tmp_path):
    search = build_search_study(load_results(search_study(tmp_path)))
    assert search.finished_count == 7  # the completed trials; the stopped one trained fewer epochs
    importance = param_importances(search)
    assert importance.evaluator == "fANOVA"
    assert set(importance.values) == {"noise_intensity", "lambda_ang", "attention"}
    assert sum(importance.values.values()) == pytest.approx(1.0)


def test_importances_skipped_with_a_reason_when_too_few_trials(tmp_path):
    one = [TrialSpec("only", "completed", {"noise_intensity": 1.0, "lambda_ang": 0.6, "attention": "mixed",
                                           "seed": 0})]
    importance = param_importances(build_search_study(load_results(write_study(tmp_path, search_spec(trials=one)))))
    assert importance.values == {} and "1 trial(s) are at completed (final epoch)" in importance.note


def test_distributions_are_read_with_the_spaces_own_parser(tmp_path):
    """A stepped int range becomes Optuna's stepped IntDistribution, as the study's searcher had it."""
    space = {"name": "ang", "search": {"depth": {"type": "int", "low": 2, "high": 8, "step": 2},
                                       "attention": ["mixed", "spatial"]}}
    trials = [TrialSpec(f"t{depth}", "completed", {"depth": depth, "attention": attention, "seed": 0})
              for depth, attention in ((2, "mixed"), (4, "spatial"), (8, "mixed"))]
    results = load_results(write_study(tmp_path, search_spec(trials=trials, space=space,
                                                             searched=["depth", "attention"])))
    distributions, sources = infer_distributions(results, ["depth", "attention"])
    assert distributions["depth"] == IntDistribution(2, 8, step=2)
    assert distributions["attention"] == CategoricalDistribution(["mixed", "spatial"])
    assert set(sources.values()) == {"study.json space"}


def test_a_space_the_parser_refuses_falls_back_to_the_values_and_says_why(tmp_path):
    space = {"name": "ang", "search": {"noise_intensity": {"low": 2.0, "high": 0.1}}}  # low above high
    results = load_results(write_study(tmp_path / "bad", search_spec(space=space)))
    distributions, sources = infer_distributions(results, ["noise_intensity"])
    values = results.trials["noise_intensity"]
    assert distributions["noise_intensity"] == FloatDistribution(values.min(), values.max())
    assert "not a valid space" in sources["noise_intensity"] and "search.noise_intensity.low" in sources[
        "noise_intensity"]


def test_a_value_off_the_spaces_step_falls_back_to_the_values(tmp_path):
    space = {"name": "ang", "search": {"depth": {"type": "int", "low": 2, "high": 8, "step": 2}}}
    trials = [TrialSpec(f"t{depth}", "completed", {"depth": depth, "seed": 0}) for depth in (2, 3, 8)]
    results = load_results(write_study(tmp_path, search_spec(trials=trials, space=space, searched=["depth"])))
    distributions, sources = infer_distributions(results, ["depth"])
    assert distributions["depth"] == FloatDistribution(2.0, 8.0)
    assert "does not contain every value" in sources["depth"]
