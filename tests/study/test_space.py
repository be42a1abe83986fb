"""Search space files: the shipped ones load, bad ones give one line naming file and field (no Ray here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maae.config import PRESETS, MAAEConfig
from maae.errors import ConfigError
from study.space import (
    EVAL_FINAL_ONLY,
    KIND_GRID,
    KIND_SEARCH,
    SCHEDULER_ASHA,
    SCHEDULER_NONE,
    base_config,
    check_against_base,
    feature_variants,
    grid_combinations,
    hyperparameter_columns,
    hyperparameter_values,
    load_space,
    optuna_distributions,
    parse_space,
    stated_distributions,
    study_overrides,
    summary,
    trial_config,
)
from tests.study.helpers import REPO_ROOT

REPO = REPO_ROOT
SPACES = REPO / "search_spaces"
SHIPPED = ("ang", "attention", "ablation", "paradigm", "paper", "ang_pareto", "lever_resolution")


def write_space(tmp_path: Path, content: object, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
    return path


def one_line_error(path: Path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


MINIMAL_SEARCH = {"search": {"noise_intensity": {"low": 0.5, "high": 2.0}}}


# --------------------------------------------------------------------------------- shipped spaces ---

@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("preset_name", PRESETS)
def test_shipped_spaces_are_valid_with_every_preset(name: str, preset_name: str) -> None:
    space = load_space(SPACES / f"{name}.yaml")
    base = base_config(space, preset_name=preset_name)
    check_against_base(space, base)
    assert space.name == name
    assert space.metric == "image_auroc" and space.mode == "max"
    # No shipped space searches a degenerate axis: never both of ANG's weights (only their ratio matters).
    assert not {"lambda_ang", "lambda_re"} <= set(space.set_per_trial)


@pytest.mark.parametrize("name", ["ang", "ang_pareto"])
def test_ang_searches_the_noise_intensity_and_the_ratio_of_the_two_lambdas(name: str) -> None:
    space = load_space(SPACES / f"{name}.yaml")
    assert space.kind == KIND_SEARCH
    assert set(space.searched) == {"noise_intensity", "lambda_ratio"}
    assert space.set_per_trial == ("noise_intensity", "lambda_re")
    if name == "ang":
        assert space.scheduler.type == SCHEDULER_ASHA
    distributions = optuna_distributions(space)
    assert distributions["noise_intensity"].log is True and distributions["noise_intensity"].low > 0
    assert distributions["lambda_ratio"].log is True
    # The ratio reaches the paper's setting (lambda_re 1 / lambda_ang 0.6) and every ratio the old space did.
    assert distributions["lambda_ratio"].low <= 0.1 and distributions["lambda_ratio"].high >= 40
    base = base_config(space)
    config = trial_config(base, {"noise_intensity": 1.0, "lambda_ratio": 2.5})
    assert config.lambda_ang == base.lambda_ang == 0.6 and config.lambda_re == pytest.approx(1.5)
    assert "lambda_ratio" in (SPACES / f"{name}.yaml").read_text() and "Adam" in (SPACES / "ang.yaml").read_text()


def test_ablation_is_the_2x2x2_grid_with_three_seeds_per_trial() -> None:
    space = load_space(SPACES / "ablation.yaml")
    assert space.kind == KIND_GRID and space.scheduler.type == SCHEDULER_NONE
    assert space.grid["use_ang"] == (True, False) and space.grid["use_ffm"] == (True, False)
    assert space.grid["attention"] == ("mixed", "spatial")
    assert space.repeats >= 3 and "seed" not in space.grid
    combinations = grid_combinations(space)
    assert len(combinations) == space.total_trials == 8
    assert len({tuple(sorted(c.items())) for c in combinations}) == len(combinations)
    assert space.eval_every == EVAL_FINAL_ONLY


def test_paper_space_is_one_trial_at_the_paper_preset() -> None:
    space = load_space(SPACES / "paper.yaml")
    base = base_config(space)
    assert space.total_trials == 1
    assert base.backbone == "efficientnet_b4" and base.depth == 18 and base.epochs == 200


def test_paradigm_compares_unified_and_separate() -> None:
    space = load_space(SPACES / "paradigm.yaml")
    assert space.grid["paradigm"] == ("unified", "separate")


def test_multi_objective_space_has_no_asha() -> None:
    space = load_space(SPACES / "ang_pareto.yaml")
    assert space.metrics == ("image_auroc", "pixel_auroc") and space.multi_objective
    assert space.scheduler.type == SCHEDULER_NONE


def test_schema_readme_documents_every_key() -> None:
    text = (SPACES / "README.md").read_text(encoding="utf-8")
    for key in ("name", "description", "metric", "mode", "num_samples", "preset", "fixed", "search", "grid",
                "scheduler", "eval_every", "repeats", "lambda_ratio", "low", "high", "log", "step", "choices",
                "categorical"):
        assert f"`{key}`" in text, key


# -------------------------------------------------------------------------------------- parsing ---

def test_types_are_taken_from_maae_config_and_values_coerced(tmp_path: Path) -> None:
    path = write_space(tmp_path, {
        "name": "coerce",
        "fixed": {"epochs": 3.0, "use_ffm": "off"},
        "search": {"depth": {"low": 2, "high": 6, "step": 2}, "attention": ["mixed", "spatial"],
                   "lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    })
    space = load_space(path)
    assert space.fixed == {"epochs": 3, "use_ffm": False}
    kinds = {p.name: p.type for p in space.search}
    assert kinds == {"depth": "int", "attention": "categorical", "lr": "float"}
    distributions = optuna_distributions(space)
    assert distributions["depth"].step == 2
    assert list(distributions["attention"].choices) == ["mixed", "spatial"]


def test_layering_preset_then_fixed_then_overrides(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"preset": "quick", "fixed": {"epochs": 3, "depth": 4},
                                              **MINIMAL_SEARCH}))
    base = base_config(space, overrides={"epochs": 2})
    assert base.epochs == 2 and base.depth == 4 and base.image_size == 192  # the quick preset's size
    assert base_config(space, preset_name="paper").backbone == "efficientnet_b4"
    fixed = study_overrides(space, {"epochs": 2}, base)
    assert fixed == {"epochs": 2, "depth": 4}
    columns = hyperparameter_columns(space, fixed)
    assert columns[0] == "noise_intensity" and set(columns[1:3]) == {"epochs", "depth"} and columns[3] == "seed"
    assert trial_config(base, {"noise_intensity": 0.7}).noise_intensity == pytest.approx(0.7)


def test_overriding_a_searched_parameter_is_refused(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, MINIMAL_SEARCH))
    with pytest.raises(ConfigError, match="noise_intensity"):
        base_config(space, overrides={"noise_intensity": 1.0})


def test_a_combination_invalid_only_together_fails_per_trial_not_up_front(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"grid": {"depth": [1, 3], "residual_every": [1, 3]}}))
    base = base_config(space)
    check_against_base(space, base)  # each value is fine on its own
    with pytest.raises(ConfigError, match="trial parameters: .*residual_every") as info:
        trial_config(base, {"depth": 1, "residual_every": 3})
    assert info.value.field == "residual_every"


def test_a_space_naming_a_preset_that_no_longer_exists_is_told_where_its_settings_went(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: preset: 'standard' no longer exists, its settings are now"):
        load_space(write_space(tmp_path, {"preset": "standard", **MINIMAL_SEARCH}, "c.yaml"))


def test_a_value_is_checked_alone_and_a_clash_with_another_fields_value_where_both_meet(tmp_path: Path) -> None:
    # depth 2 is a valid depth; that the default residual_every (3) exceeds it is residual_every's problem
    space = load_space(write_space(tmp_path, {"fixed": {"depth": 2}}))
    assert space.fixed == {"depth": 2}
    with pytest.raises(ConfigError, match="fixed: field 'residual_every'") as info:
        base_config(space, preset_name="quick")
    assert info.value.field == "residual_every"
    with pytest.raises(ConfigError, match=r"--set: field 'depth'"):
        base_config(load_space(write_space(tmp_path, MINIMAL_SEARCH, "b.yaml")), overrides={"depth": 0})


def test_stated_distributions_of_a_search_and_of_a_grid(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    search = load_space(write_space(tmp_path, {"search": {"depth": {"low": 3, "high": 18, "step": 3},
                                                          "use_ffm": [True, False]}}, "a.yaml"))
    assert stated_distributions(search) == {"depth": IntDistribution(3, 18, step=3),
                                            "use_ffm": CategoricalDistribution([True, False])}
    grid = load_space(write_space(tmp_path, {"grid": {"attention": ["mixed", "spatial"], "lr": [1e-3, 1]}},
                                  "b.yaml"))
    assert stated_distributions(grid) == {"attention": CategoricalDistribution(["mixed", "spatial"]),
                                          "lr": CategoricalDistribution([1e-3, 1.0])}


def test_feature_variants_cover_searched_image_sizes(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"search": {"image_size": [64, 128], "lr": {"low": 1e-4,
                                                                                        "high": 1e-3}}}))
    sizes = sorted(v.image_size for v in feature_variants(space, base_config(space)))
    assert sizes == [64, 128]


def test_name_defaults_to_the_file_stem_and_overrides_apply(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, MINIMAL_SEARCH, name="my-study.yaml"))
    assert space.name == "my-study"
    changed = space.with_overrides(name="other", num_samples=3)
    assert changed.name == "other" and changed.num_samples == 3 and changed.total_trials == 3
    with pytest.raises(ConfigError, match="--name"):
        space.with_overrides(name="../escape")


def test_grid_without_axes_is_one_trial(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"name": "single", "fixed": {"epochs": 1}}))
    assert space.kind == KIND_GRID and space.total_trials == 1 and space.searched == ()


# ------------------------------------------------------------------------------------ bad input ---

def test_missing_file(tmp_path: Path) -> None:
    one_line_error(tmp_path / "nope.yaml", "does not exist")


def test_yaml_that_does_not_parse(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, "search:\n  lr: {low: 1\n high: [\n"), "not valid YAML", "line")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, "- just\n- a list\n"), "expected a mapping")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"serch": {}}), "unknown key 'serch'")


def test_unknown_hyperparameter(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"noise_intensty": {"low": 0.1, "high": 1.0}}}),
                   "search.noise_intensty", "unknown hyperparameter", "MAAEConfig field")


def test_unknown_hyperparameter_in_fixed_and_grid(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"fixed": {"epoch": 3}}, "a.yaml"), "fixed.epoch", "unknown")
    one_line_error(write_space(tmp_path, {"grid": {"sed": [0, 1]}}, "b.yaml"), "grid.sed", "unknown")


def test_low_above_high(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"lambda_ang": {"low": 2.0, "high": 1.0}}}),
                   "search.lambda_ang.low", "low <= high")


def test_log_range_needs_positive_low(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"lambda_re": {"low": 0.0, "high": 1.0, "log": True}}}),
                   "search.lambda_re.low", "log range needs low > 0")


def test_empty_choice_list(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"attention": {"choices": []}}}),
                   "search.attention.choices", "non-empty list")
    one_line_error(write_space(tmp_path, {"grid": {"seed": []}}, "g.yaml"), "grid.seed", "non-empty list")


def test_wrong_types(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"depth": {"type": "float", "low": 1, "high": 4}}}, "a.yaml"),
                   "search.depth.type", "int field")
    one_line_error(write_space(tmp_path, {"search": {"lr": {"low": "small", "high": 1.0}}}, "b.yaml"),
                   "search.lr.low", "expected a number")
    one_line_error(write_space(tmp_path, {"search": {"depth": {"low": 1.5, "high": 4}}}, "c.yaml"),
                   "search.depth.low", "integer")
    one_line_error(write_space(tmp_path, {"search": {"use_ang": {"low": 0, "high": 1}}}, "d.yaml"),
                   "search.use_ang.type", "bool field")
    one_line_error(write_space(tmp_path, {"grid": {"use_ffm": ["maybe"]}}, "e.yaml"), "grid.use_ffm", "bool")
    one_line_error(write_space(tmp_path, {"num_samples": "many", **MINIMAL_SEARCH}, "f.yaml"),
                   "num_samples", "integer >= 1")


def test_invalid_values_are_refused_up_front(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"attention": ["mixed", "linear"]}}, "a.yaml"),
                   "search.attention.choices", "attention")
    one_line_error(write_space(tmp_path, {"fixed": {"dilation": 0}}, "b.yaml"), "fixed.dilation", "dilation")
    space = load_space(write_space(tmp_path, {"search": {"lr": {"low": 1e-4, "high": 1.0}},
                                              "fixed": {"epochs": 1}}, "c.yaml"))
    check_against_base(space, base_config(space))
    one_line_error(write_space(tmp_path, {"grid": {"residual_every": [1, 40]}}, "d.yaml"), "grid.residual_every")
    space = load_space(write_space(tmp_path, {"grid": {"residual_every": [1, 12]}}, "e.yaml"))
    check_against_base(space, base_config(space, preset_name="paper"))  # depth 18
    with pytest.raises(ConfigError, match=r"grid\.residual_every.*depth \(6\)"):
        check_against_base(space, base_config(space, preset_name="quick"))  # depth 6


def test_metric_that_does_not_exist(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"metric": "accuracy", **MINIMAL_SEARCH}), "metric", "unknown metric",
                   "image_auroc")


def test_bad_mode_and_mismatched_objectives(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"mode": "maximise", **MINIMAL_SEARCH}, "a.yaml"), "mode")
    one_line_error(write_space(tmp_path, {"metric": ["image_auroc", "pixel_auroc"], "mode": ["max"],
                                          **MINIMAL_SEARCH}, "b.yaml"), "mode", "2 modes")


def test_asha_is_refused_for_multi_objective_and_needs_evaluations(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"metric": ["image_auroc", "aupro"], "scheduler": "asha",
                                          **MINIMAL_SEARCH}, "a.yaml"), "scheduler.type", "multi-objective")
    one_line_error(write_space(tmp_path, {"eval_every": "final", "scheduler": {"type": "asha"},
                                          **MINIMAL_SEARCH}, "b.yaml"), "eval_every", "ASHA")


def test_search_and_grid_together_and_varied_fixed(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"grid": {"seed": [0]}, **MINIMAL_SEARCH}, "a.yaml"), "not both")
    one_line_error(write_space(tmp_path, {"fixed": {"noise_intensity": 1.0}, **MINIMAL_SEARCH}, "b.yaml"),
                   "fixed.noise_intensity", "also varied")


def test_log_with_step_and_unknown_param_key(tmp_path: Path) -> None:
    one_line_error(write_space(tmp_path, {"search": {"lr": {"low": 1e-4, "high": 1e-2, "log": True,
                                                             "step": 1e-4}}}, "a.yaml"), "search.lr.step")
    one_line_error(write_space(tmp_path, {"search": {"lr": {"low": 1e-4, "hi": 1e-2}}}, "b.yaml"),
                   "search.lr", "unknown key 'hi'")


# ---------------------------------------------------------------------------------- seed repeats ---

def test_repeats_from_the_file_and_from_the_command_line(tmp_path: Path) -> None:
    plain = load_space(write_space(tmp_path, MINIMAL_SEARCH, "plain.yaml"))
    assert plain.repeats == 1 and "seeds per trial" not in summary(plain)
    space = load_space(write_space(tmp_path, {"repeats": 3, "grid": {"use_ang": [True, False]}}, "r.yaml"))
    assert space.repeats == 3 and space.total_trials == 2  # seeds live inside trials, not as more trials
    assert "3 seeds per trial" in summary(space)
    assert space.with_overrides(repeats="5").repeats == 5  # --repeats wins (as the flag's text)
    assert space.with_overrides(repeats=2).repeats == 2 and space.with_overrides().repeats == 3
    # The seed column stays: it holds each trial's first seed.
    assert hyperparameter_columns(space, {})[-1] == "seed"


@pytest.mark.parametrize("value", [0, -2, 1.5, "two", True, [2]])
def test_repeats_must_be_an_integer_of_at_least_one(tmp_path: Path, value: object) -> None:
    path = write_space(tmp_path, {"repeats": value, **MINIMAL_SEARCH})
    one_line_error(path, "repeats", "expected an integer >= 1")


@pytest.mark.parametrize("flag", ["0", "-1", "x", "2.5", ""])
def test_repeats_flag_must_be_an_integer_of_at_least_one(tmp_path: Path, flag: str) -> None:
    space = load_space(write_space(tmp_path, MINIMAL_SEARCH))
    with pytest.raises(ConfigError, match="^--repeats: expected an integer >= 1") as info:
        space.with_overrides(repeats=flag)
    assert "\n" not in str(info.value)


def test_repeats_together_with_a_seed_axis_is_refused(tmp_path: Path) -> None:
    grid = write_space(tmp_path, {"repeats": 2, "grid": {"use_ang": [True, False], "seed": [0, 1]}}, "g.yaml")
    one_line_error(grid, "repeats", "grid.seed", "one way to repeat seeds")
    search = write_space(tmp_path, {"repeats": 1, "search": {"seed": {"low": 0, "high": 9}}}, "s.yaml")
    one_line_error(search, "repeats", "search.seed")
    old_way = load_space(write_space(tmp_path, {"grid": {"seed": [0, 1]}}, "old.yaml"))  # the old way still works
    assert old_way.repeats == 1 and old_way.total_trials == 2
    with pytest.raises(ConfigError, match="^--repeats: .*grid.seed") as info:
        old_way.with_overrides(repeats="2")
    assert "\n" not in str(info.value)
    # A fixed seed is the first seed of every trial, not an axis: allowed.
    assert load_space(write_space(tmp_path, {"repeats": 2, "fixed": {"seed": 4}}, "f.yaml")).repeats == 2


# ------------------------------------------------------------------------------------ lambda_ratio ---

def test_lambda_ratio_sets_lambda_re_from_lambda_ang(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"fixed": {"lambda_ang": 0.5},
                                              "search": {"lambda_ratio": {"low": 0.5, "high": 8.0, "log": True}}}))
    base = base_config(space)
    check_against_base(space, base)
    assert trial_config(base, {"lambda_ratio": 4.0}).lambda_re == pytest.approx(2.0)
    assert trial_config(base, {"lambda_ratio": 4.0}).lambda_ang == 0.5
    columns = hyperparameter_columns(space, study_overrides(space, {}, base))
    assert columns == ["lambda_ratio", "lambda_re", "lambda_ang", "seed"]
    assert hyperparameter_values(base, columns, {"lambda_ratio": 4.0}) == {
        "lambda_ratio": 4.0, "lambda_re": pytest.approx(2.0), "lambda_ang": 0.5, "seed": 0}
    with pytest.raises(ConfigError, match="--set lambda_re"):  # lambda_re is the trial's, not the command line's
        base_config(space, overrides={"lambda_re": 1.0})
    assert base_config(space, overrides={"lambda_ang": 0.2}).lambda_ang == pytest.approx(0.2)
    grid = load_space(write_space(tmp_path, {"grid": {"lambda_ratio": [1, 2.5]}}, "grid.yaml"))
    assert grid.grid["lambda_ratio"] == (1.0, 2.5)
    assert stated_distributions(grid)["lambda_ratio"].choices == (1.0, 2.5)


def test_lambda_ratio_never_beside_the_axis_it_removes(tmp_path: Path) -> None:
    ratio = {"lambda_ratio": {"low": 0.5, "high": 8.0}}
    one_line_error(write_space(tmp_path, {"search": {**ratio, "lambda_ang": {"low": 0.1, "high": 1.0}}}, "a.yaml"),
                   "search.lambda_ang", "search.lambda_ratio")
    one_line_error(write_space(tmp_path, {"grid": {"lambda_ratio": [1.0], "lambda_re": [1.0]}}, "b.yaml"),
                   "grid.lambda_re", "grid.lambda_ratio")
    one_line_error(write_space(tmp_path, {"fixed": {"lambda_re": 2.0}, "search": ratio}, "c.yaml"),
                   "fixed.lambda_re", "lambda_ratio")
    one_line_error(write_space(tmp_path, {"fixed": {"lambda_ratio": 2.0}}, "d.yaml"), "fixed.lambda_ratio")
    one_line_error(write_space(tmp_path, {"search": {"lambda_ratio": {"low": -1.0, "high": 2.0}}}, "e.yaml"),
                   "search.lambda_ratio.low", ">= 0")
    one_line_error(write_space(tmp_path, {"grid": {"lambda_ratio": ["x"]}}, "f.yaml"), "grid.lambda_ratio")
    zero = load_space(write_space(tmp_path, {"fixed": {"lambda_ang": 0.0}, "search": ratio}, "g.yaml"))
    with pytest.raises(ConfigError, match="search.lambda_ratio: .*lambda_ang > 0"):  # no ratio to a zero weight
        check_against_base(zero, base_config(zero))


def test_parse_space_accepts_an_already_parsed_document() -> None:
    space = parse_space({"name": "x", **MINIMAL_SEARCH}, "inline.yaml")
    assert space.search[0].name == "noise_intensity"
    assert isinstance(base_config(space), MAAEConfig)


# --------------------------------------------------------------------------- command line (fast) ---

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "study" / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_space_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path) -> None:
    bad = write_space(tmp_path, {"name": "bad", "search": {"lambda_ang": {"low": 3, "high": 1}}})
    out = run_cli("--space", str(bad), "--results", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "search.lambda_ang.low" in lines[0] and str(bad) in lines[0]
    assert not (tmp_path / "results" / "bad").exists()


def test_cli_missing_space_file(tmp_path: Path) -> None:
    out = run_cli("--space", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "missing.yaml" in out.stderr and len(out.stderr.strip().splitlines()) == 1
