"""Export parity and speed of the exported model: ONNX Runtime and TorchScript beside PyTorch, quick preset.

Trains a quick-preset run on one category of the embedded set for a few epochs (speed and parity do not
need a converged model), exports it to ONNX and TorchScript, then measures

- parity: the largest absolute difference between each exported file's image scores and PyTorch's, over
  every test image of the category (``predict --model`` against ``predict --checkpoint``);
- speed of the model alone (preprocessed batches of ``eval_batch_size``, no decoding or drawing), images/s,
  with 1 thread and with every core, the three runtimes timed in alternation (``ROUNDS`` rounds, median);
- speed of the whole ``predict`` (decoding, scoring, overlays at source resolution, CSV), images/s.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.deploy_speed [--epochs N] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CATEGORY = "brick"
EPOCHS = 5
ROUNDS = 5
WARMUP_BATCHES = 2


def _train(data_root: Path, out: Path, epochs: int) -> None:
    from maae.config import preset
    from maae.training import train

    train(preset("quick").replace(epochs=epochs), data_root, [CATEGORY], out, progress=None)


def _model_speed(scorers: dict[str, Any], batch: np.ndarray, threads: int) -> dict[str, float]:
    """Images/s of each scorer on ``batch``, timed in alternation; median over rounds."""
    torch.set_num_threads(threads)
    for scorer in scorers.values():
        for _ in range(WARMUP_BATCHES):
            scorer(batch)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(ROUNDS):
        for name, scorer in scorers.items():
            started = time.perf_counter()
            scorer(batch)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(batch) / statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    import onnxruntime
    import pandas as pd

    from maae.checkpoint import load_run
    from maae.data import list_samples, load_image
    from maae.export import INPUT_NAME, OUTPUT_NAMES, export_run, load_exported
    from maae.predict import checkpoint_scorer, predict_images
    from maae.synthetic import embedded_data_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    data_root = embedded_data_root(0)
    work = Path(tempfile.mkdtemp(prefix="maae-deploy-"))
    run_dir = work / "run"
    started = time.perf_counter()
    _train(data_root, run_dir, args.epochs)
    results: dict[str, Any] = {"category": CATEGORY, "epochs": args.epochs,
                               "train_seconds": time.perf_counter() - started}
    files = {"onnx": work / "maae.onnx", "torchscript": work / "maae.pt"}
    for export_format, path in files.items():
        started = time.perf_counter()
        result = export_run(run_dir, export_format, path)
        results[f"{export_format}_export_seconds"] = time.perf_counter() - started
        results[f"{export_format}_file_mib"] = path.stat().st_size / 2**20
        results[f"{export_format}_check_batch_max_score_difference"] = result.max_score_difference

    images = [sample.image_path for sample in list_samples(data_root, CATEGORY, "test")]
    run = load_run(run_dir)
    scorers = {"torch": checkpoint_scorer(run), **{name: load_exported(path) for name, path in files.items()}}
    frames = {}
    for name, scorer in scorers.items():
        predict_images(scorer, images, work / f"warm_{name}")  # warm-up: first calls allocate
        started = time.perf_counter()
        frames[name] = predict_images(scorer, images, work / f"predict_{name}")
        results[f"predict_images_per_s_{name}"] = len(images) / (time.perf_counter() - started)
    reference = frames["torch"].score.to_numpy()
    for name in files:
        results[f"{name}_max_score_difference"] = float(np.abs(frames[name].score.to_numpy() - reference).max())
    results["test_images"] = len(images)
    results["score_range"] = [float(reference.min()), float(reference.max())]

    size = run.config.image_size
    batch = np.stack([load_image(path, size) for path in images[: run.config.eval_batch_size]])
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    cores = os.cpu_count() or 1
    for threads in sorted({1, cores}):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
        runners = {"torch": scorers["torch"].score, "torchscript": scorers["torchscript"].score,
                   "onnxruntime": lambda b, s=session: s.run(list(OUTPUT_NAMES), {INPUT_NAME: b})}
        speed = _model_speed(runners, batch, threads)
        for name, value in speed.items():
            results[f"model_images_per_s_{name}_{threads}_threads"] = value
    results["batch"] = len(batch)
    results["torch_version"] = torch.__version__
    results["onnxruntime_version"] = onnxruntime.__version__
    print(pd.Series(results).to_string())
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
