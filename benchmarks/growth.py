"""Benchmark 5: how a training step's time and memory grow with tokens N, depth and batch size.

Each sweep changes one thing of the sweep preset and measures, per point, the median step time (points timed
in alternation), the FLOPs of the step, and the activation memory the step keeps for backward (the bytes of
the distinct tensors autograd saves, counted with ``saved_tensors_hooks``: exact, and free of the noise of a
shared machine). A log-log fit gives the measured exponent, to hold against the expected one:

- tokens N (image size / 16, squared): linear layers and the dilated convolution grow like N, spatial
  attention like N^2 (N x N scores), the channel branch's q/k/v projections (length-N vectors) like N^2 and
  its C x C scores like N; so the step's exponent lies between 1 and 2 (the FLOP count's own exponent says
  where). The CPU flash-attention kernel never stores the N x N scores, so memory should grow like N.
- depth: 1 (plus the fixed cost of FFM and the projections, so slightly below 1).
- batch: 1.

The inputs are random tensors with the backbone's stage shapes: a step's cost does not depend on their values.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import Outcome, Settings, count_flops, fit_exponent, info, interleave, median, torch_threads
from maae.backbone import build_backbone
from maae.config import MAAEConfig
from maae.engine import build_optimizers, train_step
from maae.model import build_model

NAME = "growth"
SEED = 0
BACKBONE_STRIDE = 16
EXPECTED = {"tokens": "between 1 and 2", "depth": "1", "batch": "1"}
EXPECTED_RANGE = {"tokens": (1.0, 2.0), "depth": (1.0, 1.0), "batch": (1.0, 1.0)}


@dataclass(frozen=True)
class Sweeps:
    image_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    batches: tuple[int, ...]
    rounds: int


FULL = Sweeps(image_sizes=(64, 96, 128, 160, 192), depths=(3, 6, 12), batches=(4, 8, 16, 32), rounds=3)
TINY = Sweeps(image_sizes=(64, 96), depths=(1, 2), batches=(2, 4), rounds=1)


def random_stages(config: MAAEConfig, stage_channels: tuple[int, ...]) -> list[torch.Tensor]:
    """Random features with the backbone's stage shapes (strides 2, 4, 8, 16) for one batch."""
    generator = torch.Generator().manual_seed(SEED)
    return [
        torch.randn(config.batch_size, channels, config.image_size // 2 ** (index + 1),
                    config.image_size // 2 ** (index + 1), generator=generator)
        for index, channels in enumerate(stage_channels)
    ]


def saved_activation_bytes(step: Callable[[], Any], parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward during ``step``, ``parameters`` excluded."""
    excluded = {parameter.untyped_storage().data_ptr() for parameter in parameters}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


class _Point:
    """One configuration of a sweep, ready to step."""

    def __init__(self, config: MAAEConfig, stage_channels: tuple[int, ...], threads: int) -> None:
        torch.manual_seed(SEED)
        self.config = config
        self.threads = threads
        self.model = build_model(config, stage_channels)
        self.optimizers = build_optimizers(self.model, config)
        self.stages = random_stages(config, stage_channels)

    def step(self) -> None:
        with torch_threads(self.threads):
            train_step(self.model, self.optimizers, self.stages, self.config)

    def timer(self) -> float:
        started = time.perf_counter()
        self.step()
        return time.perf_counter() - started


def _sweep(axis: str, points: dict[float, _Point], rounds: int) -> dict[str, Any]:
    rows = []
    for x, point in points.items():
        flops, _ = count_flops(point.step)
        memory = saved_activation_bytes(point.step, point.model.parameters())
        rows.append({axis: x, "flops": flops, "activation_bytes": memory})
    samples = interleave({str(x): point.timer for x, point in points.items()}, rounds)
    for row in rows:
        row["step_seconds"] = median(samples[str(row[axis])])
    xs = [row[axis] for row in rows]
    return {
        "rows": rows,
        "exponent_time": fit_exponent(xs, [row["step_seconds"] for row in rows]),
        "exponent_flops": fit_exponent(xs, [row["flops"] for row in rows]),
        "exponent_memory": fit_exponent(xs, [row["activation_bytes"] for row in rows]),
        "expected": EXPECTED[axis],
    }


def run(settings: Settings) -> Outcome:
    sweeps = TINY if settings.tiny else FULL
    base = settings.config()
    stage_channels = tuple(build_backbone(base.backbone, base.backbone_weights).channels)
    threads = settings.threads

    def point(**changes: Any) -> _Point:
        return _Point(base.replace(**changes), stage_channels, threads)

    results = {
        "tokens": _sweep("tokens", {(size // BACKBONE_STRIDE) ** 2: point(image_size=size)
                                    for size in sweeps.image_sizes}, sweeps.rounds),
        "depth": _sweep("depth", {depth: point(depth=depth, residual_every=min(base.residual_every, depth))
                                  for depth in sweeps.depths}, sweeps.rounds),
        "batch": _sweep("batch", {batch: point(batch_size=batch) for batch in sweeps.batches}, sweeps.rounds),
    }
    checks = []
    for axis, result in results.items():
        checks.append(info(NAME, f"time exponent in {axis} (expected {result['expected']})",
                           result["exponent_time"]))
        checks.append(info(NAME, f"FLOP exponent in {axis}", result["exponent_flops"]))
        checks.append(info(NAME, f"activation-memory exponent in {axis}", result["exponent_memory"]))
    headline = {f"growth_time_exponent_{axis}": result["exponent_time"] for axis, result in results.items()}
    details = {"base_config": {k: getattr(base, k) for k in ("image_size", "depth", "batch_size", "hidden_dim")},
               "threads": threads, "sweeps": results,
               "memory_note": "activation memory = distinct tensors saved for backward (exact, not RSS)"}
    return Outcome(headline, checks, details)
