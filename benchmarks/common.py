"""What every benchmark shares: settings, result rows, interleaved timing, FLOP counting, subprocess helpers.

The machine the suite runs on is shared and noisy, so absolute times are context only. Every ratio is
measured side by side in one run: the candidates of a comparison are timed in alternation (the order rotates
every round, so slow drifts of the machine's load hit all of them alike) and compared by their medians.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from maae.config import MAAEConfig, preset

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The preset every benchmark measures: the 128 px settings that were the quick preset until 2026-12-03, so that
# the numbers stay comparable with the results recorded before (today's quick preset is 192 px; its cost per
# epoch against this one is lever_cost's quick_preset_epoch_ratio).
BENCH_PRESET = "sweep"
# --tiny: a model small enough for a seconds-scale smoke run (the test suite's tiny settings).
TINY_CONFIG = dict(image_size=64, hidden_dim=16, num_heads=2, depth=2, residual_every=1, dilation=1, epochs=1,
                   batch_size=4, eval_batch_size=8, anomaly_map_sigma=1.0)
# --tiny: the embedded generator at 64 px with a handful of images per category.
TINY_DATA = dict(train_per_category=8, test_good=3, test_per_defect=2, image_size=64)
GIGA = 1e9


@dataclass(frozen=True)
class Settings:
    """How the suite runs: full or ``--tiny``, CPU threads, and where data and scratch files live."""

    tiny: bool
    threads: int
    work_dir: Path
    data_root: Path
    feature_cache_dir: Path

    def config(self, **changes: Any) -> MAAEConfig:
        """The benchmarks' preset (shrunk in ``--tiny`` mode) with ``changes`` applied."""
        values = preset(BENCH_PRESET).to_dict()
        if self.tiny:
            values.update(TINY_CONFIG)
        values.update(changes)
        return MAAEConfig.from_dict(values, source="benchmark settings")

    def scratch(self, name: str) -> Path:
        """A fresh sub-folder of the work folder for one benchmark."""
        folder = self.work_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


# ------------------------------------------------------------------------------------------ results ---

@dataclass
class Check:
    """One row of the summary table: a measured value and, when the issue sets one, its target."""

    benchmark: str
    metric: str
    value: float | None
    target: str = ""
    passed: bool | None = None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "metric": self.metric, "value": self.value, "unit": self.unit,
                "target": self.target or None, "passed": self.passed}


def at_least(benchmark: str, metric: str, value: float | None, threshold: float, unit: str = "") -> Check:
    passed = None if value is None else value >= threshold
    return Check(benchmark, metric, value, f">= {threshold:g}{unit}", passed, unit)


def at_most(benchmark: str, metric: str, value: float | None, threshold: float, unit: str = "") -> Check:
    passed = None if value is None else value <= threshold
    return Check(benchmark, metric, value, f"<= {threshold:g}{unit}", passed, unit)


def info(benchmark: str, metric: str, value: float | None, unit: str = "") -> Check:
    """A row without a target (context for the reader)."""
    return Check(benchmark, metric, value, unit=unit)


@dataclass
class Outcome:
    """What one benchmark returns: its top-level numbers, its table rows, and everything else it measured."""

    headline: dict[str, float | None]
    checks: list[Check]
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- timing ---

def finite(value: Any) -> Any:
    """The value with every NaN or infinity replaced by None (so the file is strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleave(candidates: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every candidate once per round, rotating the order each round; each call returns its seconds.

    Returns every candidate's list of measurements (compare them by :func:`median`).
    """
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(float(candidates[name]()))
    return samples


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_average() -> float | None:
    """The machine's 1-minute load average (context for how noisy the times are)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of log(y) against log(x) by least squares: y ~ x^slope (None with fewer than two points)."""
    import numpy as np

    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0 and math.isfinite(y)]
    if len(pairs) < 2:
        return None
    log_x, log_y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(log_x, log_y, 1)[0])


# ---------------------------------------------------------------------------------------------- FLOPs ---

def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                             **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> torch.utils.flop_counter.FlopCounterMode:
    """``FlopCounterMode`` that also counts the CPU flash-attention kernels (torch's table lacks them)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention), in total and per aten operator."""
    counter = flop_counter()
    with counter:
        fn()
    per_op = {str(op).split(".")[-1]: int(flops) for op, flops in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), per_op


def matmul_seconds(size: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Callable[[], float]:
    """A timer of one ``size x size`` matmul (inputs made once); its FLOPs are ``2 size^3``."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)

    def run() -> float:
        started = time.perf_counter()
        torch.mm(left, right)
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    return run


# ---------------------------------------------------------------------------------------- processes ---

@dataclass
class CommandResult:
    """A finished subprocess: its wall time, exit status and output."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 8) -> str:
        """The last lines of stderr (else stdout): enough to say why a command failed."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


def run_command(command: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                cwd: Path = REPO_ROOT, unset: Sequence[str] = ()) -> CommandResult:
    """Run ``command`` to completion (wall time includes interpreter start-up); never raises on failure.

    ``env`` is added to this process's environment, after removing the variables named in ``unset``.
    """
    full_env = {key: value for key, value in os.environ.items() if key not in unset}
    full_env.update(env or {})
    python_path = [str(REPO_ROOT), *[p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    full_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    started = time.perf_counter()
    try:
        done = subprocess.run(list(command), cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        return CommandResult(time.perf_counter() - started, -1, _text(err.stdout),
                             _text(err.stderr) + f"\ntimed out after {timeout:.0f}s")
    return CommandResult(time.perf_counter() - started, done.returncode, done.stdout, done.stderr)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# --------------------------------------------------------------------------------------- backbones ---

def random_backbone_checkpoint(name: str, path: Path, seed: int = 0) -> Path:
    """Save the state dict of a randomly initialised timm classifier ``name`` to ``path`` (once).

    For timing only: a backbone's speed does not depend on its weight values, and this lets the paper's
    EfficientNet-b4 run without the hub download (``backbone_weights=<path>``).
    """
    path = Path(path)
    if path.is_file():
        return path
    import timm

    from maae.io import save_torch_atomic

    torch.manual_seed(seed)
    classifier = timm.create_model(name, pretrained=False)
    save_torch_atomic(path, classifier.state_dict())
    return path


# ------------------------------------------------------------------------------------ report baseline ---

def warm_report_baseline(config: MAAEConfig, data_root: Path, categories: Sequence[str] | None,
                         folder: Path) -> float:
    """Fill maae's cache of the patch baseline that a study's final report shows (computed once per data set,
    backbone and image size, beside the feature cache; a later study's report reads it in seconds), so that a
    timed study is timed as a user's second study on the data set, like the warm feature cache. Returns the
    seconds the fill took (a one-off, reported beside the timings)."""
    from study.report.baseline import compute_baseline

    started = time.perf_counter()
    compute_baseline(folder, config, data_root, list(categories or []))
    return time.perf_counter() - started
