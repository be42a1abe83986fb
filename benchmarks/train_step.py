"""Benchmark 3: how close MAAE's training step comes to the machine's matmul rate, and where its time goes.

- FLOPs of one ``maae.engine.train_step`` (forward + backward) are counted with ``FlopCounterMode``;
  achieved FLOP/s = FLOPs / median step time. The peak is a 2048 x 2048 fp32 matmul timed in alternation
  with the steps, at the same thread count. ``train_step_flops_fraction`` = achieved / peak, for the code as
  it ships (eager fp32) at the suite's thread count.
- The step is profiled (see :mod:`benchmarks.step_profile`) and its time split into attention, dilated conv,
  FFM, ANG, data loading, optimiser and other.
- Variants the ecosystem offers (thread count, channels-last, bf16 autocast, ``torch.compile``, batch size)
  are timed in alternation with the baseline, each from the same initial weights, batch and noise seeds; the
  losses of a few steps are compared with the baseline's to say whether the variant changes results. A variant
  that changes memory layouts (channels-last) would draw ANG's noise in another order (``randn_like`` keeps
  the layout), which changes the numbers but not the maths: it is compared with the noise switched off.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from benchmarks.common import (
    GIGA,
    Outcome,
    Settings,
    at_least,
    count_flops,
    info,
    interleave,
    matmul_seconds,
    median,
    torch_threads,
)
from benchmarks.step_profile import CATEGORIES, flops_by_part, profile_training
from maae.config import MAAEConfig
from maae.data import resolve_categories
from maae.engine import UNIFIED_KEY, Optimizers, TrainingSession, build_optimizers, prepare_data, train_step
from maae.model import build_model

NAME = "train_step"
TARGET_FRACTION = 0.40
MATMUL_SIZE = 2048
SEED = 0
# Relative change of the loss (over RESULT_STEPS steps) below which a variant "does not change results".
LOSS_TOLERANCE = 1e-3
RESULT_STEPS = 3


@dataclass(frozen=True)
class Sizes:
    categories: int
    rounds: int
    profile_steps: int
    batch_sizes: tuple[int, ...]
    thread_counts: tuple[int, ...]
    compile: bool
    matmul_size: int


FULL = Sizes(categories=2, rounds=8, profile_steps=6, batch_sizes=(8, 16, 32, 64), thread_counts=(1, 2),
             compile=True, matmul_size=MATMUL_SIZE)
TINY = Sizes(categories=1, rounds=2, profile_steps=2, batch_sizes=(2, 4), thread_counts=(1,), compile=False,
             matmul_size=256)


@dataclass
class Variant:
    """One way of running the step: how to prepare the model and inputs, and the context to step in."""

    name: str
    description: str
    threads: int
    prepare: Callable[[nn.Module], nn.Module] = lambda model: model
    inputs: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda stages: stages
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    config_changes: dict[str, Any] = field(default_factory=dict)
    # How to build the optimisers (default: maae.engine.build_optimizers).
    optimizers: Callable[[nn.Module, MAAEConfig], Optimizers] = build_optimizers
    # Compare results with the noise off (noise_intensity=0): for variants that reorder the noise draws.
    check_without_noise: bool = False


class StepHarness:
    """Fresh copies of one initial model, and batches of any size from the real cached training features."""

    def __init__(self, config: MAAEConfig, stage_channels: tuple[int, ...], dataset: Any) -> None:
        self.config = config
        self.stage_channels = stage_channels
        self.dataset = dataset
        torch.manual_seed(SEED)
        self.initial_state = copy.deepcopy(build_model(config, stage_channels).state_dict())

    def batch(self, size: int) -> list[torch.Tensor]:
        """The first ``size`` training items (repeated if the data set is smaller)."""
        items = [self.dataset[index % len(self.dataset)] for index in range(size)]
        return list(default_collate(items))

    def fresh_model(self, config: MAAEConfig) -> nn.Module:
        model = build_model(config, self.stage_channels)
        model.load_state_dict(self.initial_state)
        return model


@dataclass
class _Prepared:
    variant: Variant
    config: MAAEConfig
    model: nn.Module
    optimizers: Optimizers
    stages: list[torch.Tensor]

    def step(self) -> dict[str, float]:
        with torch_threads(self.variant.threads), self.variant.context():
            return train_step(self.model, self.optimizers, self.stages, self.config)

    def timer(self) -> float:
        started = time.perf_counter()
        self.step()
        return time.perf_counter() - started


def _prepare(harness: StepHarness, variant: Variant, without_noise: bool = False) -> _Prepared:
    changes = {**variant.config_changes, **({"noise_intensity": 0.0} if without_noise else {})}
    config = harness.config.replace(**changes)
    model = variant.prepare(harness.fresh_model(config))
    optimizers = variant.optimizers(model, config)
    stages = variant.inputs(harness.batch(config.batch_size))
    return _Prepared(variant, config, model, optimizers, stages)


def _losses(prepared: _Prepared, steps: int) -> list[float]:
    """Losses of ``steps`` steps, each after seeding the noise generator the same way."""
    losses = []
    for index in range(steps):
        torch.manual_seed(SEED + index)
        losses.append(prepared.step()["loss"])
    return losses


def _relative_change(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference, strict=True))


def _channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)


def _channels_last_inputs(stages: list[torch.Tensor]) -> list[torch.Tensor]:
    return [stage.contiguous(memory_format=torch.channels_last) for stage in stages]


def _bf16_autocast() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def _same_random_numbers_as_eager() -> Iterator[None]:
    """Make inductor draw ANG's noise with torch's eager generator, so losses are comparable with eager."""
    import torch._inductor.config as inductor_config

    previous = inductor_config.fallback_random
    inductor_config.fallback_random = True
    try:
        yield
    finally:
        inductor_config.fallback_random = previous


def _sdpa_math() -> contextlib.AbstractContextManager:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model)


def _fused_adam(model: nn.Module, config: MAAEConfig) -> Optimizers:
    """maae's two Adams (auto encoder; ANG's W) with ``fused=True`` (one kernel over all parameters)."""
    ang = model.adaptive_noise
    noise_ids = {id(p) for p in ang.parameters()} if ang is not None else set()
    params = [p for p in model.parameters() if id(p) not in noise_ids and p.requires_grad]
    return Optimizers(torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True),
                      torch.optim.Adam(ang.parameters(), lr=config.lr, fused=True) if ang is not None else None)


def variants(settings: Settings, sizes: Sizes) -> list[Variant]:
    base = settings.threads
    found = [Variant("baseline", f"eager fp32, {base} thread(s), as maae ships", base)]
    for count in sizes.thread_counts:
        if count != base:
            found.append(Variant(f"threads={count}", f"torch.set_num_threads({count})", count))
    found.append(Variant("channels_last", "model and stages in channels-last memory format", base,
                         prepare=_channels_last, inputs=_channels_last_inputs, check_without_noise=True))
    found.append(Variant("sdpa_math", "scaled_dot_product_attention forced to the math backend", base,
                         context=_sdpa_math))
    found.append(Variant("fused_adam", "torch.optim.Adam(..., fused=True) for both optimisers", base,
                         optimizers=_fused_adam))
    found.append(Variant("bf16_autocast", "torch.autocast('cpu', dtype=torch.bfloat16)", base,
                         context=_bf16_autocast))
    if sizes.compile:
        found.append(Variant("torch_compile", "torch.compile(model) (inductor, default mode)", base,
                             prepare=_compiled, context=_same_random_numbers_as_eager))
    return found


def _measure_variants(harness: StepHarness, chosen: list[Variant], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    prepared: dict[str, _Prepared] = {}
    baseline = chosen[0]
    reference = {False: _losses(_prepare(harness, baseline), RESULT_STEPS),
                 True: _losses(_prepare(harness, baseline, without_noise=True), RESULT_STEPS)}
    for variant in chosen:
        try:
            item = _prepare(harness, variant)
            started = time.perf_counter()
            losses = _losses(item, RESULT_STEPS)  # the first step also compiles, for torch.compile
            first_seconds = time.perf_counter() - started
            if variant.check_without_noise:
                losses = _losses(_prepare(harness, variant, without_noise=True), RESULT_STEPS)
        except Exception as err:  # noqa: BLE001 - a variant the platform cannot run is reported, not fatal
            results[variant.name] = {"description": variant.description, "error": f"{type(err).__name__}: {err}"}
            continue
        prepared[variant.name] = item
        results[variant.name] = {"description": variant.description, "threads": variant.threads,
                                 "losses": losses, "compared_without_noise": variant.check_without_noise,
                                 "first_steps_seconds": first_seconds}
    samples = interleave({name: item.timer for name, item in prepared.items()}, rounds)
    base_seconds = median(samples[baseline.name])
    for name, item_samples in samples.items():
        seconds = median(item_samples)
        change = _relative_change(results[name]["losses"],
                                  reference[results[name]["compared_without_noise"]])
        results[name].update({
            "step_seconds": seconds, "step_seconds_samples": item_samples,
            "speedup_vs_baseline": base_seconds / seconds if seconds > 0 else None,
            "loss_relative_change": change, "same_results": change <= LOSS_TOLERANCE,
        })
    return results


def _measure_batch_sizes(harness: StepHarness, sizes: Sizes, threads: int) -> dict[str, Any]:
    prepared = {
        size: _prepare(harness, Variant(f"batch={size}", "", threads, config_changes={"batch_size": size}))
        for size in sizes.batch_sizes
    }
    for item in prepared.values():
        item.step()  # warm-up
    samples = interleave({str(size): item.timer for size, item in prepared.items()}, sizes.rounds)
    return {size: {"step_seconds": median(samples[size]), "images_per_second": int(size) / median(samples[size])}
            for size in samples}


def _peak_matmul(sizes: Sizes, thread_counts: tuple[int, ...], rounds: int) -> dict[int, float]:
    """FLOP/s of a large fp32 matmul at each thread count (median of alternating runs)."""
    timer = matmul_seconds(sizes.matmul_size)
    flops = 2 * sizes.matmul_size ** 3

    def at(count: int) -> Callable[[], float]:
        def run() -> float:
            with torch_threads(count):
                return timer()
        return run

    samples = interleave({str(count): at(count) for count in thread_counts}, rounds)
    return {int(count): flops / median(values) for count, values in samples.items()}


def run(settings: Settings) -> Outcome:
    sizes = TINY if settings.tiny else FULL
    device = torch.device("cpu")
    config = settings.config()
    categories = resolve_categories(settings.data_root, None)[: sizes.categories]
    data = prepare_data(config, settings.data_root, categories, device=device, cache_dir=settings.feature_cache_dir)
    session = TrainingSession(config, data, device=device)
    loader = session.loaders[UNIFIED_KEY]
    harness = StepHarness(config, data.stage_channels, loader.dataset)
    threads = settings.threads
    thread_counts = tuple(sorted({threads, *sizes.thread_counts}))

    # FLOPs of one step, then step times in alternation with the peak matmul.
    model = harness.fresh_model(config)
    optimizers = build_optimizers(model, config)
    batch = harness.batch(config.batch_size)
    with torch_threads(threads):
        flops, flops_by_op = count_flops(lambda: train_step(model, optimizers, batch, config))
        train_step(model, optimizers, batch, config)  # warm-up
    matmul = matmul_seconds(sizes.matmul_size)

    def step_timer() -> float:
        with torch_threads(threads):
            started = time.perf_counter()
            train_step(model, optimizers, batch, config)
            return time.perf_counter() - started

    def matmul_timer() -> float:
        with torch_threads(threads):
            return matmul()

    samples = interleave({"step": step_timer, "matmul": matmul_timer}, sizes.rounds)
    step_s = median(samples["step"])
    peak = 2 * sizes.matmul_size ** 3 / median(samples["matmul"])
    achieved = flops / step_s
    fraction = achieved / peak

    # Where the time goes (the session's own model, optimisers and DataLoader).
    with torch_threads(threads):
        profile = profile_training(session.models[UNIFIED_KEY], session.optimizers[UNIFIED_KEY], loader, config,
                                   sizes.profile_steps, device)

    part_flops = flops_by_part(harness.fresh_model(config), batch, flops)
    profile["flops_per_step_by_part"] = part_flops
    profile["achieved_gflops_per_second_by_part"] = {
        part: part_flops[part] / (profile["ms_per_step"][part] * 1e-3) / GIGA
        for part in CATEGORIES if part_flops[part] > 0 and profile["ms_per_step"][part] > 0}
    variant_results = _measure_variants(harness, variants(settings, sizes), sizes.rounds)
    peaks = _peak_matmul(sizes, thread_counts, sizes.rounds)
    for result in variant_results.values():
        if "step_seconds" in result:
            result["achieved_gflops"] = flops / result["step_seconds"] / GIGA
            result["flops_fraction_of_matmul"] = flops / result["step_seconds"] / peaks[result["threads"]]
    batch_results = _measure_batch_sizes(harness, sizes, threads)

    details = {
        "config": {k: getattr(config, k) for k in ("backbone", "image_size", "batch_size", "depth", "hidden_dim",
                                                    "num_heads", "dilation", "attention", "use_ffm", "use_ang")},
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "flops_per_step": flops,
        "flops_by_op": flops_by_op,
        "step_seconds": step_s,
        "step_seconds_samples": samples["step"],
        "achieved_gflops": achieved / GIGA,
        "peak_matmul_gflops": peak / GIGA,
        "peak_matmul_gflops_by_threads": {str(k): v / GIGA for k, v in peaks.items()},
        "matmul": f"{sizes.matmul_size}x{sizes.matmul_size} fp32 torch.mm",
        "matmul_note": "the peak is what torch.mm reaches here (its BLAS is in environment.blas); on AMD CPUs MKL "
                       "may stay below the core's peak, so a part (e.g. oneDNN convolutions) can exceed it",
        "profile": profile,
        "variants": variant_results,
        "batch_sizes": batch_results,
        "loss_tolerance": LOSS_TOLERANCE,
    }
    checks = [
        at_least(NAME, "achieved / peak-matmul FLOP/s", fraction, TARGET_FRACTION),
        info(NAME, "achieved", achieved / GIGA, " GFLOP/s"),
        info(NAME, "peak matmul", peak / GIGA, " GFLOP/s"),
        info(NAME, "step time", step_s, "s"),
    ]
    for category in CATEGORIES:
        checks.append(info(NAME, f"profile share: {category}", profile["share"][category]))
    for name, result in variant_results.items():
        if name != "baseline" and "speedup_vs_baseline" in result:
            same = "same results" if result["same_results"] else "CHANGES results"
            checks.append(info(NAME, f"variant {name} speedup ({same})", result["speedup_vs_baseline"], "x"))
    headline = {"train_step_flops_fraction": fraction, "train_step_seconds": step_s,
                "train_step_achieved_gflops": achieved / GIGA}
    return Outcome(headline, checks, details)
