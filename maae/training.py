"""A whole training run in plain Python: data, epochs with progress, evaluation, and the run folder.

The run folder's files and their order are :mod:`maae.run_folder`'s: ``config.json`` first, ``checkpoint.pt``
after every epoch (so ``--resume`` continues a killed run), and at the end the evaluation, with
``metrics.json`` last marking a finished run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from maae.config import MAAEConfig
from maae.engine import (
    EpochStats,
    ProgressFn,
    TrainingSession,
    default_device,
    prepare_data,
)
from maae.errors import MAAEError
from maae.evaluation import Evaluation, evaluate_finished
from maae.run_folder import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    is_finished,
    load_checkpoint,
    save_checkpoint,
    write_config,
    write_run,
)


def print_progress(message: str) -> None:
    print(f"[maae] {message}", file=sys.stderr, flush=True)


def format_epoch(stats: EpochStats, total: int, prefix: str = "") -> str:
    noise = f" R(W)={stats.noise_penalty:.4f}" if stats.noise_penalty is not None else ""
    return (f"{prefix}epoch {stats.epoch}/{total} loss={stats.loss:.4f}{noise} "
            f"{stats.images_per_second:.1f} img/s ({stats.seconds:.1f}s)")


def train(
    config: MAAEConfig, data_root: Path, categories: Sequence[str] | None, out_dir: Path, *,
    resume: bool = False, progress: ProgressFn | None = print_progress, device: torch.device | None = None,
) -> Evaluation:
    """Train (unified or separate, per ``config.paradigm``), evaluate the last epoch, write the run folder."""
    out_dir = Path(out_dir)
    device = device or default_device()
    if is_finished(out_dir) and not resume:
        raise MAAEError(f"{out_dir}: already holds a finished run ({METRICS_FILE}); choose another --out")
    started = time.perf_counter()
    data = prepare_data(config, data_root, categories, device=device, progress=progress)
    session = TrainingSession(config, data, device=device)
    if resume and (out_dir / CHECKPOINT_FILE).exists():
        checkpoint = load_checkpoint(out_dir)
        if not checkpoint.belongs_to(config, data.categories):
            raise MAAEError(f"{checkpoint.path}: --resume with a different config or categories")
        session.load_state_dict(checkpoint.state)
        if progress:
            progress(f"resumed at epoch {session.epoch}/{config.epochs}")
    write_config(out_dir, config, data)
    if progress:
        progress(f"training {config.paradigm} MAAE on {len(data.categories)} categories "
                 f"({', '.join(data.categories)}), {config.epochs} epochs, device {device}")
    while session.epoch < config.epochs:
        stats = session.train_epoch()
        save_checkpoint(out_dir, session)
        if progress:
            progress(format_epoch(stats, config.epochs))
    train_seconds = time.perf_counter() - started
    # The weights that checkpoint.pt deploys (the moving average when ema_decay is on), so metrics.json
    # describes exactly what evaluate and predict will load.
    evaluation, reference = evaluate_finished(session.evaluation_models(), data, config, device=device)
    write_run(out_dir, session, evaluation, normal_reference=reference, seconds=train_seconds)
    if progress:
        if config.validation_fraction == 0:
            progress("validation_fraction=0: no validation split, so no calibrated thresholds (predict gives "
                     "scores without verdicts)")
        progress(summary_line(evaluation) + f" ({time.perf_counter() - started:.0f}s) -> {out_dir}")
    return evaluation


def summary_line(evaluation: Evaluation) -> str:
    """The headline metrics, and for a calibrated run the test set's rates at the thresholds."""
    means = evaluation.means
    line = "mean image AUROC {:.3f}, pixel AUROC {:.3f}, AUPRO {:.3f}".format(
        means["image_auroc"], means["pixel_auroc"], means["aupro"])
    if evaluation.calibrated:
        target = next(iter(evaluation.thresholds.values())).target_fpr
        line += ("; at the thresholds calibrated for FPR {:.3g}: image FPR {:.3f}, recall {:.3f}; pixel FPR "
                 "{:.3f} ({:.3f} on good images), recall {:.3f}").format(
            target, means["image_fpr"], means["image_recall"], means["pixel_fpr"], means["pixel_fpr_good"],
            means["pixel_recall"])
    return line
