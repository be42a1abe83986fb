"""Benchmark 1: time per training epoch with the frozen-feature cache against recomputing the backbone.

Same model, data, seed and sampler order on both sides; the only difference is ``feature_cache``:

- cached: the backbone's four stages were computed once and are read from the (warm) on-disk cache;
- live (``feature_cache=False``): every batch is decoded from its image file and sent through the backbone.

Epochs of the two sessions alternate, and the speedup is the ratio of their median epoch times. The one-off
cost of filling the cache is reported too, with the number of epochs after which it has paid for itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from benchmarks.common import Outcome, Settings, at_least, info, interleave, median, timed
from maae.data import resolve_categories
from maae.engine import TrainingSession, prepare_data

NAME = "feature_cache"
TARGET_SPEEDUP = 3.0
FULL_CATEGORIES = 2
FULL_ROUNDS = 5
TINY_CATEGORIES = 1
TINY_ROUNDS = 1


def run(settings: Settings) -> Outcome:
    device = torch.device("cpu")
    categories = resolve_categories(settings.data_root, None)[: TINY_CATEGORIES if settings.tiny else FULL_CATEGORIES]
    rounds = TINY_ROUNDS if settings.tiny else FULL_ROUNDS
    cached_config = settings.config(feature_cache=True)
    live_config = cached_config.replace(feature_cache=False)
    # A cache folder of its own, so that filling it is really computed here (and timed once).
    cache_dir = settings.scratch(NAME) / "cache"
    build_seconds = timed(lambda: prepare_data(cached_config, settings.data_root, categories, device=device,
                                               cache_dir=cache_dir))
    cached_data = prepare_data(cached_config, settings.data_root, categories, device=device, cache_dir=cache_dir)
    live_data = prepare_data(live_config, settings.data_root, categories, device=device)
    cached = TrainingSession(cached_config, cached_data, device=device)
    live = TrainingSession(live_config, live_data, device=device)
    first_cached, first_live = cached.train_epoch(), live.train_epoch()  # warm-up, untimed
    epoch_seconds = interleave({"cached": lambda: cached.train_epoch().seconds,
                                "live": lambda: live.train_epoch().seconds}, rounds)
    cached_s, live_s = median(epoch_seconds["cached"]), median(epoch_seconds["live"])
    speedup = live_s / cached_s if cached_s > 0 else None
    saved_per_epoch = live_s - cached_s
    break_even = build_seconds / saved_per_epoch if saved_per_epoch > 0 else math.inf
    details = {
        "categories": categories,
        "train_images_per_epoch": first_cached.images,
        "config": {k: getattr(cached_config, k) for k in ("backbone", "image_size", "batch_size", "depth",
                                                           "hidden_dim")},
        "epoch_seconds": epoch_seconds,
        "median_epoch_seconds": {"cached": cached_s, "live": live_s},
        "images_per_second": {"cached": first_cached.images / cached_s, "live": first_live.images / live_s},
        "cache_build_seconds": build_seconds,
        "break_even_epochs": break_even if math.isfinite(break_even) else None,
        "first_epoch_loss": {"cached": first_cached.loss, "live": first_live.loss},
        "note": "cached features are stored in float16; the live path feeds float32 features, so losses "
                "differ slightly",
        "cache_dir": str(Path(cache_dir)),
    }
    checks = [
        at_least(NAME, "epoch speedup, live / cached", speedup, TARGET_SPEEDUP, "x"),
        info(NAME, "cached epoch", cached_s, "s"),
        info(NAME, "live epoch", live_s, "s"),
        info(NAME, "cache fill (once)", build_seconds, "s"),
    ]
    return Outcome({"feature_cache_speedup": speedup}, checks, details)
