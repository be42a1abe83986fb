"""Seed repeats inside one trial (a space's ``repeats: k``): each seed trains exactly what it trains alone, a
group checkpoint resumes every seed exactly, a trial reports the means over its seeds and each seed's own
values, and a study writes them to its tables (against a real local Ray, 2 CPUs, tiny trials)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY, EpochStats, TrainingSession, default_device, prepare_data
from maae.evaluation import Evaluation
from maae.run_folder import is_finished, load_checkpoint
from study import cli
from study.protocol import METRIC_NAMES
from study.tune.seed_group import SeedGroup, seed_result, seed_run_folder, trial_seeds
from tests.study.helpers import CATEGORIES, kill_study_after_first_completed_trial, read_tables, study_args

UNIT_CATEGORIES = ["grass", "hex_nut"]
KILL_WAIT_S = 240


def tiny_run_config(overrides: list[str], **changes) -> MAAEConfig:
    values = dict(item.split("=", 1) for item in overrides)
    return MAAEConfig.from_dict({**values, **changes}, source="test")


def weights(session: TrainingSession) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in session.core_model(UNIFIED_KEY).state_dict().items()}


def assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


# ------------------------------------------------------------------------------- the group (no Ray) ---

def test_each_seed_of_a_group_trains_exactly_what_it_trains_alone(tiny_data: Path, tiny_overrides: list[str]):
    """The seeds share torch's global generators (ANG's noise, the loaders' seeds) only through their own
    streams: seed s of a group ends with the weights of a lone session with seed s, bit for bit."""
    config = tiny_run_config(tiny_overrides, epochs=2, seed=3)
    device = default_device()
    data = prepare_data(config, tiny_data, UNIT_CATEGORIES, device=device)
    group = SeedGroup(config, data, repeats=3, device=device)
    assert group.seeds == trial_seeds(3, 3) == [3, 4, 5]
    assert [run.config.seed for run in group.runs] == [3, 4, 5]
    for _ in range(config.epochs):
        stats = group.train_epoch()
        assert [s.epoch for s in stats] == [group.epoch] * 3
    assert group.epoch == 2
    trained = {run.seed: weights(run.session) for run in group.runs}
    for seed in group.seeds:
        alone = TrainingSession(config.replace(seed=seed), data, device=device)
        for _ in range(config.epochs):
            alone.train_epoch()
        assert_same_weights(weights(alone), trained[seed])
    # and the seeds are different runs
    assert not torch.equal(trained[3]["noise.weight"], trained[4]["noise.weight"])


def test_a_group_checkpoint_holds_every_seed_and_resumes_exactly(tiny_data: Path, tiny_overrides: list[str],
                                                                 tmp_path: Path):
    config = tiny_run_config(tiny_overrides, epochs=3)
    device = default_device()
    data = prepare_data(config, tiny_data, UNIT_CATEGORIES, device=device)
    straight = SeedGroup(config, data, repeats=2, device=device)
    for _ in range(3):
        straight.train_epoch()

    first = SeedGroup(config, data, repeats=2, device=device)
    first.train_epoch()
    folder = tmp_path / "checkpoint"
    first.write_resumable(folder)
    # the first seed's run folder, with the other seed's inside it
    assert seed_run_folder(folder, [0, 1], 0) == folder
    assert seed_run_folder(folder, [0, 1], 1) == folder / "seeds" / "seed_1"
    assert load_checkpoint(folder).config.seed == 0 and load_checkpoint(folder / "seeds" / "seed_1").config.seed == 1
    assert not (folder / "seeds" / "seed_0").exists()

    torch.manual_seed(12345)  # a new process would start from other generator states
    resumed = SeedGroup(config, data, repeats=2, device=device)
    resumed.load(folder)
    assert resumed.epoch == 1
    resumed.train_epoch()
    resumed.train_epoch()
    for expected, got in zip(straight.runs, resumed.runs, strict=True):
        assert_same_weights(weights(expected.session), weights(got.session))

    evaluations = resumed.finish(folder, seconds=1.0)
    for run, evaluation in zip(resumed.runs, evaluations, strict=True):
        run_folder = seed_run_folder(folder, resumed.seeds, run.seed)
        assert is_finished(run_folder)
        written = json.loads((run_folder / "metrics.json").read_text())
        assert written["image_auroc"] == pytest.approx(evaluation.means["image_auroc"])
        assert written["epochs"] == 3
        assert "image_fpr" in written  # measured at the thresholds calibrated on the validation split

    with pytest.raises(RuntimeError, match="seed 7"):  # a checkpoint of other seeds is refused
        SeedGroup(config.replace(seed=7), data, repeats=2, device=device).load(folder)


def evaluation(per_category: dict[str, dict[str, float]]) -> Evaluation:
    means = {name: sum(values[name] for values in per_category.values()) / len(per_category) for name in METRIC_NAMES}
    return Evaluation(per_category=per_category, means=means, scores=pd.DataFrame())


def metrics(value: float, **changes: float) -> dict[str, float]:
    return {**{name: value for name in METRIC_NAMES}, **changes}


def test_seed_result_reports_the_means_and_every_seeds_values():
    stats = [EpochStats(epoch=4, loss=1.0, images=10, seconds=1.0, noise_penalty=0.2),
             EpochStats(epoch=4, loss=3.0, images=30, seconds=1.0, noise_penalty=0.4)]
    evaluations = [evaluation({"a": metrics(0.5), "b": metrics(0.7, aupro=math.nan)}),
                   evaluation({"a": metrics(0.9), "b": metrics(0.3)})]
    result = seed_result([5, 6], stats, evaluations)
    assert result["seeds"] == [5, 6] and result["n_seeds"] == 2
    assert result["loss"] == pytest.approx(2.0) and result["noise_penalty"] == pytest.approx(0.3)
    assert result["images_per_second"] == pytest.approx(40 / 2.0)  # all images over all seconds
    assert result["image_auroc"] == pytest.approx((0.6 + 0.6) / 2)
    assert math.isnan(result["aupro"])  # undefined for one seed: undefined for the mean
    assert result["per_category"]["a"]["image_auroc"] == pytest.approx(0.7)
    assert result["per_category"]["b"]["pixel_auroc"] == pytest.approx(0.5)
    assert result["seed_per_category"]["6"]["a"]["image_auroc"] == pytest.approx(0.9)
    assert set(result["seed_metrics"]["5"]) == {"loss", *METRIC_NAMES} and result["seed_metrics"]["5"]["loss"] == 1.0
    assert result["seed_metrics"]["6"]["image_auroc"] == pytest.approx(0.6)
    # an epoch that was not evaluated: losses only; a final checkpoint reported again: evaluations only
    assert set(seed_result([5, 6], stats, None)["seed_metrics"]["5"]) == {"loss"}
    assert "loss" not in seed_result([5, 6], None, evaluations)
    assert seed_result([0], None, None) == {"seeds": [0], "n_seeds": 1}
    # one seed: its own values, unchanged
    single = seed_result([0], stats[:1], evaluations[:1])
    assert single["image_auroc"] == evaluations[0].means["image_auroc"] and single["loss"] == 1.0


# ------------------------------------------------------------------------------- a study (real Ray) ---

def seed_means(per_category: pd.DataFrame, trial_id: str) -> pd.DataFrame:
    """Per seed, the metrics' means over the categories (what each seed's run reports), from per_category.csv."""
    rows = per_category[per_category.trial_id == trial_id]
    return rows.groupby("seed")[list(METRIC_NAMES)].mean()


def reported_results(folder: Path) -> dict[str, list[dict]]:
    """Every result each trial reported to Tune (Tune's result.json), by trial id."""
    results: dict[str, list[dict]] = {}
    for path in (folder / "ray" / "tune").glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                result = json.loads(line)
                results.setdefault(result["trial_id"], []).append(result)
    return results


def test_a_study_with_two_seeds_per_trial_reports_their_means(
        tmp_path: Path, tiny_data: Path, ray_session: str, space_file: Callable[..., Path]) -> None:
    # Two DDP workers per trial: every rank trains both seeds in the same order (the one-worker path, Tune's
    # own trial process, is the resume test's below).
    space = space_file(tmp_path, "seeds", grid={"noise_intensity": [0.5, 2.0]}, eval_every=1, repeats=2)
    assert cli.main(study_args(space, tiny_data, tmp_path / "results", "--workers-per-trial", "2")) == 0
    folder = tmp_path / "results" / "seeds"
    study, trials, per_category, history = read_tables(folder)
    categories = CATEGORIES.split(",")
    assert study["status"] == "finished" and study["repeats"] == 2
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    assert list(trials.n_seeds) == [2, 2] and list(trials.seeds) == ["0;1", "0;1"] and set(trials.seed) == {0}
    assert list(per_category.columns[:3]) == ["trial_id", "seed", "category"]
    for row in trials.itertuples():
        mine = per_category[per_category.trial_id == row.trial_id]
        assert sorted(zip(mine.seed, mine.category, strict=True)) == [(s, c) for s in (0, 1) for c in categories]
        by_seed = seed_means(per_category, row.trial_id)
        for name in METRIC_NAMES:  # the trial's value is the mean over its seeds of each seed's value
            assert getattr(row, name) == pytest.approx(by_seed[name].mean()), name
        assert by_seed["pixel_auroc"].nunique() == 2  # two different runs, not one counted twice
        final = history[(history.trial_id == row.trial_id)].set_index("epoch")
        assert list(final.index) == [1, 2]
        assert final.loc[2, "image_auroc"] == pytest.approx(row.image_auroc)

    # Every epoch's result: the means (what Optuna and ASHA see) and each seed's own values.
    reported = reported_results(folder)
    assert set(reported) == set(trials.trial_id)
    for results in reported.values():
        evaluated = [r for r in results if r.get("evaluated")]
        assert [r["epoch"] for r in evaluated] == [1, 2]
        for result in evaluated:
            assert result["seeds"] == [0, 1] and result["n_seeds"] == 2 and result["world_size"] == 2
            seeds = result["seed_metrics"]
            for name in (*METRIC_NAMES, "loss"):
                assert result[name] == pytest.approx((seeds["0"][name] + seeds["1"][name]) / 2), name
            for category in categories:
                values = [result["seed_per_category"][s][category]["image_auroc"] for s in ("0", "1")]
                assert result["per_category"][category]["image_auroc"] == pytest.approx(sum(values) / 2)

    # best/: the first seed's run folder (what predict reads), the second seed's inside it.
    best = trials.loc[trials.image_auroc.idxmax()]
    assert study["best_trial_id"] == best.trial_id
    by_seed = seed_means(per_category, best.trial_id)
    for seed, run in ((0, folder / "best"), (1, folder / "best" / "seeds" / "seed_1")):
        assert is_finished(run)
        assert json.loads((run / "config.json").read_text())["config"]["seed"] == seed
        written = json.loads((run / "metrics.json").read_text())
        assert written["pixel_auroc"] == pytest.approx(by_seed.loc[seed, "pixel_auroc"])


def test_a_killed_study_with_seed_repeats_resumes(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        space_file: Callable[..., Path]) -> None:
    space = space_file(tmp_path, "seedresume", grid={"noise_intensity": [0.25, 0.5, 1.0]}, eval_every=1,
                       repeats=2, fixed={"epochs": 3})
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session, "--max-concurrent", "1")
    folder = tmp_path / "results" / "seedresume"
    # killed as soon as one trial has completed: two trials (4 seeds x 3 epochs) are left
    finished = kill_study_after_first_completed_trial(args, child_env, folder, tmp_path / "first.log", KILL_WAIT_S)
    kept = finished.set_index("trial_id")

    assert cli.main([*args, "--resume"]) == 0
    study, trials, per_category, history = read_tables(folder)
    assert study["status"] == "finished"
    assert len(trials) == 3 and set(trials.status) == {"completed"} and set(trials.n_seeds) == {2}
    trials = trials.set_index("trial_id")
    for tid in kept.index:  # finished trials are kept, not re-run
        for name in METRIC_NAMES:
            assert trials.loc[tid, name] == pytest.approx(kept.loc[tid, name])
    # one row per trial, seed and category: no seed lost or counted twice by the resume
    assert len(per_category) == 3 * 2 * len(CATEGORIES.split(","))
    assert not per_category.duplicated(["trial_id", "seed", "category"]).any()
    for tid in trials.index:
        by_seed = seed_means(per_category, tid)
        assert list(by_seed.index) == [0, 1]
        assert trials.loc[tid, "pixel_auroc"] == pytest.approx(by_seed["pixel_auroc"].mean())
    assert history.groupby("trial_id").epoch.max().eq(3).all()
