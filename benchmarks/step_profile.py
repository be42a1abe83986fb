"""Where the time of a training step goes: torch.profiler, grouped into the parts of MAAE.

MAAE's own code is profiled as it is (``maae.engine.train_step``, untouched). The benchmark only attaches
labels from the outside:

- forward hooks open a ``record_function`` range around every attention, dilated-convolution, FFM (the
  stage merge) and noise (ANG) module;
- the optimisers' step hooks open an ``optimiser`` range around each Adam step;
- the loop opens a ``data loading`` range around fetching a batch from the session's DataLoader.

Backward operators carry the autograd sequence number of the forward operator that created them, so each
backward node is charged to the part whose forward range created it. Every profiled operator's *self* time
goes to exactly one part; what no label claims (layer norms, input/output projections, residual adds, the
loss, gradient clipping, gradient accumulation) and the wall time outside any operator (Python) is ``other``;
torch's own ``Optimizer.step`` / ``Optimizer.zero_grad`` ranges count as ``optimiser``. The largest operators
of each part are listed as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import flop_counter
from maae.config import MAAEConfig
from maae.engine import Optimizers, train_step
from maae.model.attention import ChannelSelfAttention, DilatedConv, SpatialSelfAttention
from maae.model.ffm import BilinearMerge, FeatureFusionModule
from maae.model.noise import AdaptiveNoiseGenerator, FeatureJitter

ATTENTION = "attention"
DILATED_CONV = "dilated conv"
FFM = "FFM"
ANG = "ANG"
DATA_LOADING = "data loading"
OPTIMISER = "optimiser"
OTHER = "other"
CATEGORIES = (ATTENTION, DILATED_CONV, FFM, ANG, DATA_LOADING, OPTIMISER, OTHER)
LABEL_PREFIX = "maae-bench::"
BACKWARD_PREFIX = "autograd::engine::evaluate_function"
OPTIMIZER_RANGE_PREFIX = "Optimizer."
MODULE_CATEGORIES: tuple[tuple[type[nn.Module], str], ...] = (
    (SpatialSelfAttention, ATTENTION),
    (ChannelSelfAttention, ATTENTION),
    (DilatedConv, DILATED_CONV),
    (FeatureFusionModule, FFM),
    (BilinearMerge, FFM),
    (AdaptiveNoiseGenerator, ANG),
    (FeatureJitter, ANG),
)
TOP_OPS = 6
MICROSECONDS = 1e-6


@dataclass
class _Labels:
    """Hook handles and the open ranges of one labelled model (removed with :meth:`remove`)."""

    handles: list[Any]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _category_of(module: nn.Module) -> str | None:
    for kind, category in MODULE_CATEGORIES:
        if isinstance(module, kind):
            return category
    return None


def flops_by_part(model: nn.Module, stages: Sequence[torch.Tensor], total: int) -> dict[str, int]:
    """FLOPs (forward + backward) of each part in one training step on ``stages``; the rest is ``other``.

    Every labelled module is counted on its own: its inputs are captured during one forward pass of
    ``model``, then the module runs forward and backward on them (inputs that needed gradients in the model
    need them here too). ``FlopCounterMode``'s own per-module split is not used: it charges the backward of
    sibling modules whose gradients interleave (spatial and channel attention) to both.
    """
    captured: list[tuple[str, nn.Module, tuple[Any, ...]]] = []

    def capture(category: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append((category, module, tuple(
                arg.detach().requires_grad_(arg.requires_grad) if isinstance(arg, torch.Tensor) else
                [a.detach() for a in arg] if isinstance(arg, list | tuple) else arg for arg in args)))
        return hook

    handles = [module.register_forward_pre_hook(capture(category)) for module in model.modules()
               if (category := _category_of(module)) is not None]
    try:
        model.train()
        model(stages)
    finally:
        for handle in handles:
            handle.remove()
    parts = dict.fromkeys(CATEGORIES, 0)
    for category, module, args in captured:
        counter = flop_counter()
        with counter:
            output = module(*args)
            if output.requires_grad:
                output.backward(torch.ones_like(output))
        parts[category] += int(counter.get_total_flops())
    parts[OTHER] = max(0, total - sum(parts.values()))
    return parts


def attach_labels(model: nn.Module, optimizers: Optimizers) -> _Labels:
    """Open a profiler range named after its part around each labelled module and each optimiser step."""
    open_ranges: dict[int, list[record_function]] = {}

    def opener(category: str) -> Callable[..., None]:
        def enter(owner: Any, *args: Any) -> None:
            label = record_function(LABEL_PREFIX + category)
            label.__enter__()
            open_ranges.setdefault(id(owner), []).append(label)
        return enter

    def close(owner: Any, *args: Any) -> None:
        open_ranges[id(owner)].pop().__exit__(None, None, None)

    handles = []
    for module in model.modules():
        category = _category_of(module)
        if category is not None:
            handles.append(module.register_forward_pre_hook(opener(category)))
            handles.append(module.register_forward_hook(close))
    for optimizer in (optimizers.model, optimizers.noise):
        if optimizer is not None:
            handles.append(optimizer.register_step_pre_hook(opener(OPTIMISER)))
            handles.append(optimizer.register_step_post_hook(close))
    return _Labels(handles)


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def profile_training(
    model: nn.Module, optimizers: Optimizers, loader: Any, config: MAAEConfig, steps: int,
    device: torch.device, warmup: int = 1,
) -> dict[str, Any]:
    """Profile ``steps`` iterations of MAAE's training loop (fetch a batch, ``train_step``); the breakdown."""
    batches = _cycle(loader)

    def iteration() -> None:
        with record_function(LABEL_PREFIX + DATA_LOADING):
            stages = [stage.to(device) for stage in next(batches)]
        train_step(model, optimizers, stages, config)

    for _ in range(warmup):
        iteration()
    labels = attach_labels(model, optimizers)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                iteration()
            wall = time.perf_counter() - started
    finally:
        labels.remove()
    return breakdown(prof.events(), wall, steps)


def breakdown(events: Sequence[Any], wall_seconds: float, steps: int) -> dict[str, Any]:
    """Charge every event's self time to one part; the rest of the wall time is ``other``."""
    forward_category: dict[int, str] = {}
    memo: dict[int, str | None] = {}

    def label_of(event: Any) -> str | None:
        """The part named by the nearest enclosing label (forward ranges only)."""
        key = id(event)
        if key not in memo:
            if event.name.startswith(LABEL_PREFIX):
                memo[key] = event.name[len(LABEL_PREFIX):]
            elif event.name.startswith(OPTIMIZER_RANGE_PREFIX):  # torch's own step / zero_grad ranges
                memo[key] = OPTIMISER
            elif event.name.startswith(BACKWARD_PREFIX):
                memo[key] = None
            else:
                parent = event.cpu_parent
                memo[key] = label_of(parent) if parent is not None else None
        return memo[key]

    def backward_node(event: Any) -> Any | None:
        while event is not None:
            if event.name.startswith(BACKWARD_PREFIX):
                return event
            event = event.cpu_parent
        return None

    # Operators record the autograd sequence number current when they start; the one that creates node k is
    # the last to record k (later ones see k + 1), so the latest forward event with number k names its part.
    for event in sorted(events, key=lambda e: e.time_range.start):
        category = label_of(event)
        if category is not None and event.sequence_nr >= 0:
            forward_category[event.sequence_nr] = category

    seconds = dict.fromkeys(CATEGORIES, 0.0)
    ops: dict[str, dict[str, float]] = {name: {} for name in CATEGORIES}
    for event in events:
        self_seconds = event.self_cpu_time_total * MICROSECONDS
        category = label_of(event)
        if category is None:
            node = backward_node(event)
            if node is not None:
                category = forward_category.get(node.sequence_nr)
        if category is None or category not in seconds:
            category = OTHER
        ops[category][event.name] = ops[category].get(event.name, 0.0) + self_seconds
        seconds[category] += self_seconds
    attributed = sum(seconds.values())
    outside_ops = max(0.0, wall_seconds - attributed)
    seconds[OTHER] += outside_ops
    total = sum(seconds.values())
    return {
        "steps": steps,
        "wall_seconds_per_step": wall_seconds / steps,
        "ms_per_step": {name: 1e3 * value / steps for name, value in seconds.items()},
        "share": {name: value / total if total > 0 else None for name, value in seconds.items()},
        "top_ops_ms_per_step": {category: {name: 1e3 * value / steps for name, value in sorted(
            by_name.items(), key=lambda item: item[1], reverse=True)[:TOP_OPS]} for category, by_name in ops.items()},
        "other_outside_operators_ms_per_step": 1e3 * outside_ops / steps,
        "note": "self CPU time per part, profiler overhead included; backward ops are charged to the part that "
                "created them in the forward pass; gradient clipping and gradient accumulation are in other",
    }
