"""Benchmark: what each model-quality lever of issue 11 costs, per training epoch and per evaluation.

The README's lever table gives every lever's gain; its cost column came from studies that ran beside other
jobs. Here every lever setting is one :class:`maae.engine.TrainingSession` on the same unified training set
(all categories, the sweep preset the levers were measured on, with only that lever changed), and the sessions'
epochs are timed in alternation (the order rotates every round), so each cost is a ratio to the sweep preset's
epoch measured side by side in one run; the last row is the quick preset the levers led to. One evaluation
of every test set (anomaly maps, image scores, metrics) is timed the same way, since the scoring levers act only there.

Levers that change nothing but numbers (the learning-rate schedule, warm-up, ANG's own learning rate, the
image score's kind and sigma) are included anyway: a ratio near 1 is the measurement that says so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import BENCH_PRESET, Outcome, Settings, info, interleave, median
from maae.config import MAAEConfig, preset
from maae.engine import TrainingSession, prepare_data
from maae.evaluation import evaluate

NAME = "lever_cost"
REFERENCE = BENCH_PRESET
FULL_ROUNDS = 3
TINY_ROUNDS = 1


def changed_fields(config: MAAEConfig, base: MAAEConfig) -> dict[str, Any]:
    """The fields where ``config`` differs from ``base``, with ``config``'s values."""
    before = base.to_dict()
    return {key: value for key, value in config.to_dict().items() if before[key] != value}


@dataclass(frozen=True)
class Lever:
    """One row of the README's lever table: the config changes it makes to the sweep preset."""

    name: str
    changes: Mapping[str, Any]


# The lever table's rows, in its order (README "Levers for model quality"). ``preset quick`` is the preset the
# levers led to: its changes to the sweep preset they were measured on, three fields at once; ``preset highres``
# is quick at 256 px, beyond quick's budget.
LEVERS: tuple[Lever, ...] = (
    Lever(REFERENCE, {}),
    Lever("lr_schedule=cosine", {"lr_schedule": "cosine"}),
    Lever("ema_decay=0.99", {"ema_decay": 0.99}),
    Lever("image_score=topk_mean", {"image_score": "topk_mean"}),
    Lever("anomaly_map_sigma=1", {"anomaly_map_sigma": 1.0}),
    Lever("image_size=160", {"image_size": 160}),
    Lever("image_size=192", {"image_size": 192}),
    Lever("image_size=256", {"image_size": 256}),
    Lever("token_stride=8", {"token_stride": 8}),
    Lever("use_ffm=false", {"use_ffm": False}),
    Lever("loss=cosine", {"loss": "cosine"}),
    Lever("noise=fixed", {"noise": "fixed"}),
    Lever("noise=dropout", {"noise": "dropout"}),
    Lever("noise=ang_literal", {"noise": "ang_literal"}),
    Lever("noise=jitter", {"noise": "jitter"}),
    Lever("warmup_epochs=5", {"warmup_epochs": 5}),
    Lever("ang_lr=0.01", {"ang_lr": 0.01}),
    Lever("preset quick", changed_fields(preset("quick"), preset(BENCH_PRESET))),
    Lever("preset highres", changed_fields(preset("highres"), preset(BENCH_PRESET))),
)
TINY_LEVERS = (REFERENCE, "image_size=192", "token_stride=8", "preset quick", "preset highres")


def lever_config(settings: Settings, lever: Lever) -> MAAEConfig:
    """The sweep preset (shrunk with ``--tiny``) with the lever's changes; with ``--tiny`` an image size is
    scaled by its ratio to the sweep preset's (192 px -> 1.5x the tiny size), so the run stays tiny."""
    changes = dict(lever.changes)
    if settings.tiny and "image_size" in changes:
        changes["image_size"] = settings.config().image_size * changes["image_size"] // preset(BENCH_PRESET).image_size
    return settings.config(**changes)


class _Session:
    """One lever's training session and the timers of its epoch and its evaluation."""

    def __init__(self, config: MAAEConfig, settings: Settings) -> None:
        device = torch.device("cpu")
        self.config = config
        self.data = prepare_data(config, settings.data_root, None, device=device,
                                 cache_dir=settings.feature_cache_dir)
        self.session = TrainingSession(config, self.data, device=device)
        self.device = device
        self.first = self.session.train_epoch()  # warm-up, untimed (allocator, first-touch of the memory maps)

    def epoch_seconds(self) -> float:
        return self.session.train_epoch().seconds

    def evaluation_seconds(self) -> float:
        started = time.perf_counter()
        with torch.no_grad():
            evaluate(self.session.evaluation_models(), self.data, self.config, device=self.device)
        return time.perf_counter() - started


def run(settings: Settings) -> Outcome:
    levers = [lever for lever in LEVERS if not settings.tiny or lever.name in TINY_LEVERS]
    rounds = TINY_ROUNDS if settings.tiny else FULL_ROUNDS
    sessions: dict[str, _Session] = {}
    for lever in levers:
        started = time.perf_counter()
        sessions[lever.name] = _Session(lever_config(settings, lever), settings)
        print(f"[bench] {NAME}: {lever.name} ready in {time.perf_counter() - started:.0f}s", file=sys.stderr,
              flush=True)
    epochs = interleave({name: session.epoch_seconds for name, session in sessions.items()}, rounds)
    evaluations = interleave({name: session.evaluation_seconds for name, session in sessions.items()}, rounds)
    reference_epoch = median(epochs[REFERENCE])
    reference_evaluation = median(evaluations[REFERENCE])
    base = settings.config()
    rows: dict[str, dict[str, Any]] = {}
    checks = []
    for lever in levers:
        session = sessions[lever.name]
        epoch_s, evaluation_s = median(epochs[lever.name]), median(evaluations[lever.name])
        rows[lever.name] = {
            "changes": changed_fields(session.config, base),
            "epoch_seconds": epochs[lever.name], "median_epoch_seconds": epoch_s,
            "epoch_ratio": epoch_s / reference_epoch,
            "evaluation_seconds": evaluations[lever.name], "median_evaluation_seconds": evaluation_s,
            "evaluation_ratio": evaluation_s / reference_evaluation,
            "train_images_per_epoch": session.first.images,
        }
        checks.append(info(NAME, f"{lever.name}: s/epoch", epoch_s, "s"))
        if lever.name != REFERENCE:
            checks.append(info(NAME, f"{lever.name}: epoch / {REFERENCE}'s", epoch_s / reference_epoch, "x"))
    quick, highres = rows.get("preset quick"), rows.get("preset highres")
    headline = {"quick_preset_epoch_ratio": quick["epoch_ratio"] if quick else None,
                "highres_preset_epoch_ratio": highres["epoch_ratio"] if highres else None}
    details = {"rounds": rounds, "threads": settings.threads, "levers": rows,
               "note": "each lever is the sweep preset with only that change; medians over rounds timed in "
                       "alternation after one untimed warm-up epoch; evaluation = anomaly maps, image scores "
                       "and metrics of every test set"}
    return Outcome(headline, checks, details)
