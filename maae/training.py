"""A whole training run in plain Python: data, epochs with progress, evaluation, output files.

Run folder contents (each written atomically; ``metrics.json`` is written last and marks a finished run):
``config.json``, ``checkpoint.pt`` (saved after every epoch, so ``--resume`` continues a killed run),
``per_category.csv``, ``scores.csv``, ``metrics.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from maae.checkpoint import CHECKPOINT_FILE, load_state
from maae.config import MAAEConfig
from maae.engine import (
    EpochStats,
    PreparedData,
    ProgressFn,
    TrainingSession,
    default_device,
    prepare_data,
)
from maae.errors import MAAEError
from maae.evaluation import Evaluation, evaluate, normal_score_reference, write_evaluation
from maae.io import save_torch_atomic, write_json_atomic


def print_progress(message: str) -> None:
    print(f"[maae] {message}", file=sys.stderr, flush=True)


def format_epoch(stats: EpochStats, total: int, prefix: str = "") -> str:
    noise = f" R(W)={stats.noise_penalty:.4f}" if stats.noise_penalty is not None else ""
    return (f"{prefix}epoch {stats.epoch}/{total} loss={stats.loss:.4f}{noise} "
            f"{stats.images_per_second:.1f} img/s ({stats.seconds:.1f}s)")


def run_config_payload(config: MAAEConfig, data: PreparedData) -> dict:
    return {"config": config.to_dict(), "data_root": str(data.root), "categories": data.categories,
            "backbone_fingerprint": data.backbone_fingerprint}


def save_checkpoint(out_dir: Path, session: TrainingSession, normal_reference: dict | None = None) -> None:
    state = session.state_dict()
    state["normal_reference"] = normal_reference or {}
    save_torch_atomic(Path(out_dir) / CHECKPOINT_FILE, state)


def train(
    config: MAAEConfig, data_root: Path, categories: Sequence[str] | None, out_dir: Path, *,
    resume: bool = False, progress: ProgressFn | None = print_progress, device: torch.device | None = None,
) -> Evaluation:
    """Train (unified or separate, per ``config.paradigm``), evaluate the last epoch, write the run folder."""
    out_dir = Path(out_dir)
    device = device or default_device()
    if (out_dir / "metrics.json").exists() and not resume:
        raise MAAEError(f"{out_dir}: already holds a finished run (metrics.json); choose another --out")
    started = time.perf_counter()
    data = prepare_data(config, data_root, categories, device=device, progress=progress)
    session = TrainingSession(config, data, device=device)
    if resume and (out_dir / CHECKPOINT_FILE).exists():
        state = load_state(out_dir)
        if state["config"] != config.to_dict() or state["categories"] != data.categories:
            raise MAAEError(f"{out_dir / CHECKPOINT_FILE}: --resume with a different config or categories")
        session.load_state_dict(state)
        if progress:
            progress(f"resumed at epoch {session.epoch}/{config.epochs}")
    write_json_atomic(out_dir / "config.json", run_config_payload(config, data))
    if progress:
        progress(f"training {config.paradigm} MAAE on {len(data.categories)} categories "
                 f"({', '.join(data.categories)}), {config.epochs} epochs, device {device}")
    while session.epoch < config.epochs:
        stats = session.train_epoch()
        save_checkpoint(out_dir, session)
        if progress:
            progress(format_epoch(stats, config.epochs))
    train_seconds = time.perf_counter() - started
    core_models = {key: session.core_model(key) for key in session.models}
    evaluation = evaluate(core_models, data, config, device=device)
    reference = normal_score_reference(core_models, data, config, device=device)
    save_checkpoint(out_dir, session, reference)
    write_evaluation(out_dir, evaluation, {"epochs": session.epoch, "seconds": round(train_seconds, 2)})
    if progress:
        progress(summary_line(evaluation) + f" ({time.perf_counter() - started:.0f}s) -> {out_dir}")
    return evaluation


def summary_line(evaluation: Evaluation) -> str:
    means = evaluation.means
    return ("mean image AUROC {:.3f}, pixel AUROC {:.3f}, AUPRO {:.3f}".format(
        means["image_auroc"], means["pixel_auroc"], means["aupro"]))
