"""Smoke tests of the benchmark suite: ``run_all.py --tiny`` end to end, and the GPU script's no-GPU exit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADLINE_KEYS = ("feature_cache_speedup", "feature_cache_ceiling", "ray_overhead_ratio", "ray_cost_per_trial_s",
                 "optuna_inprocess_ratio", "demo_cpu_utilisation", "demo_speedup_vs_baseline",
                 "train_step_flops_fraction", "predict_images_per_s", "trial_import_seconds",
                 "metrics_speedup_vs_sklearn", "quick_preset_epoch_ratio", "highres_preset_epoch_ratio")
MEASURED_IN_TINY = ("feature_cache_speedup", "feature_cache_ceiling", "train_step_flops_fraction",
                    "predict_images_per_s", "trial_import_seconds", "metrics_speedup_vs_sklearn",
                    "quick_preset_epoch_ratio", "highres_preset_epoch_ratio")
# Benchmarks that need Ray (or whole demos): --tiny reports null with the reason instead.
NULL_IN_TINY = {"ray_overhead": ("ray_overhead_ratio", "ray_cost_per_trial_s"),
                "optuna_inprocess": ("optuna_inprocess_ratio",),
                "demo": ("demo_cpu_utilisation", "demo_speedup_vs_baseline")}
BENCHMARKS = ("feature_cache", "train_step", "growth", "inference", "deploy_speed", "trial_start", "lever_cost",
              "ray_overhead", "optuna_inprocess", "demo")
PROFILE_PARTS = ("attention", "dilated conv", "FFM", "ANG", "data loading", "optimiser", "other")
# A guard against a hang, not a speed check (speed lives in the benchmarks themselves): generous, because a
# loaded machine can take minutes.
SUITE_TIMEOUT_S = 600


def test_tiny_suite_writes_every_headline_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "benchmarks/run_all.py", "--tiny", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for key in HEADLINE_KEYS:
        assert key in results, key
    for key in MEASURED_IN_TINY:
        value = results[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    for name, keys in NULL_IN_TINY.items():
        assert all(results[key] is None for key in keys), name
        details = results["benchmarks"][name]["details"]
        reason = details.get("ratio_null_reason") or details.get("null_reason")
        assert reason and "not run in --tiny mode" in reason, (name, reason)  # the command lines validated
    # the plain-Optuna peer itself runs in --tiny mode: every trial it was asked for completed
    peer = results["benchmarks"]["optuna_inprocess"]["details"]["peer"]
    assert [trial["state"] for trial in peer["trials"]] == ["COMPLETE"] * len(peer["trials"]) and peer["trials"]
    assert results["mode"] == "tiny"
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    assert not [name for name, record in results["benchmarks"].items() if "error" in record]
    levers = results["benchmarks"]["lever_cost"]["details"]["levers"]
    assert set(levers) == {"sweep", "image_size=192", "token_stride=8", "preset quick", "preset highres"}
    assert levers["sweep"]["changes"] == {} and all(row["changes"] for name, row in levers.items() if name != "sweep")
    assert levers["preset quick"]["changes"]["use_ffm"] is False  # the quick preset's merge, not sweep's
    assert levers["preset highres"]["changes"] == {**levers["preset quick"]["changes"],
                                                   "image_size": levers["preset highres"]["changes"]["image_size"]}
    assert levers["preset highres"]["changes"]["image_size"] > levers["preset quick"]["changes"]["image_size"]
    shares = results["benchmarks"]["train_step"]["details"]["profile"]["share"]
    assert set(shares) == set(PROFILE_PARTS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert {"benchmark", "metric", "value", "target", "passed"} <= set(results["checks"][0])
    header = done.stdout.splitlines()[0].split()
    assert header == ["benchmark", "metric", "value", "target", "result"]  # the printed table


def test_gpu_script_exits_cleanly_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU exit path cannot be exercised here")
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_paper_preset.py", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=SUITE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU" in done.stdout
    assert not out.exists()
