"""Smoke tests of the benchmark suite: ``run_all.py --tiny`` end to end, and the GPU script's no-GPU exit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADLINE_KEYS = ("feature_cache_speedup", "ray_overhead_ratio", "train_step_flops_fraction", "predict_images_per_s")
MEASURED_IN_TINY = ("feature_cache_speedup", "train_step_flops_fraction", "predict_images_per_s")
BENCHMARKS = ("feature_cache", "train_step", "growth", "inference", "ray_overhead")
PROFILE_PARTS = ("attention", "dilated conv", "FFM", "ANG", "data loading", "optimiser", "other")
SUITE_TIMEOUT_S = 60


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
    assert results["ray_overhead_ratio"] is None
    assert results["benchmarks"]["ray_overhead"]["details"]["ratio_null_reason"]
    assert results["mode"] == "tiny"
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    assert not [name for name, record in results["benchmarks"].items() if "error" in record]
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
