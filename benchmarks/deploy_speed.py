"""Export parity and speed of the exported model: ONNX Runtime and TorchScript beside PyTorch, sweep preset.

Trains a sweep-preset run on one category of the embedded set for a few epochs (speed and parity do not
need a converged model), exports it to ONNX and TorchScript, then measures

- parity: the largest absolute difference between each exported file's image scores and PyTorch's, over
  every test image of the category (``predict --model`` against ``predict --checkpoint``);
- speed of the model alone (preprocessed batches of ``eval_batch_size``, no decoding or drawing), images/s,
  with 1 thread and with every core, the three runtimes timed in alternation (``ROUNDS`` rounds, median);
- speed of the whole ``predict`` (decoding, scoring, overlays at source resolution, CSV), images/s.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.deploy_speed [--epochs N] [--out FILE.json]``, or as
part of the suite (``benchmarks/run_all.py``, which calls :func:`run`: ``--threads`` threads beside 1, and the
suite's tiny model with ``--tiny``).
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

from benchmarks.common import BENCH_PRESET, Outcome, Settings, at_most, info
from maae.config import MAAEConfig

NAME = "deploy_speed"
CATEGORY = "brick"
EPOCHS = 5
TINY_EPOCHS = 1
ROUNDS = 5
WARMUP_BATCHES = 2
# The parity bar: an exported file's scores within this of PyTorch's on real images.
PARITY_TOLERANCE = 1e-4


def _train(config: MAAEConfig, data_root: Path, out: Path) -> None:
    from maae.training import train

    train(config, data_root, [CATEGORY], out, progress=None)


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


def measure(config: MAAEConfig, data_root: Path, work: Path, threads: list[int]) -> dict[str, Any]:
    """Train ``config`` on CATEGORY, export it both ways, and measure parity and speed (the module docstring)."""
    import onnxruntime

    from maae.checkpoint import load_run
    from maae.data import list_samples, load_image
    from maae.export import INPUT_NAME, OUTPUT_NAMES, export_run, load_exported
    from maae.predict import checkpoint_scorer, predict_images

    run_dir = work / "run"
    started = time.perf_counter()
    _train(config, data_root, run_dir)
    results: dict[str, Any] = {"category": CATEGORY, "epochs": config.epochs, "image_size": config.image_size,
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
    reference = frames["torch"]
    for name in files:
        results[f"{name}_max_score_difference"] = float(np.abs(frames[name].score.to_numpy()
                                                               - reference.score.to_numpy()).max())
        results[f"{name}_same_verdicts"] = bool((frames[name].is_anomalous == reference.is_anomalous).all())
    results["test_images"] = len(images)
    results["score_range"] = [float(reference.score.min()), float(reference.score.max())]

    size = run.config.image_size
    batch = np.stack([load_image(path, size) for path in images[: run.config.eval_batch_size]])
    batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    for count in threads:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = count
        session = onnxruntime.InferenceSession(str(files["onnx"]), options, providers=["CPUExecutionProvider"])
        runners = {"torch": scorers["torch"].score, "torchscript": scorers["torchscript"].score,
                   "onnxruntime": lambda b, s=session: s.run(list(OUTPUT_NAMES), {INPUT_NAME: b})}
        speed = _model_speed(runners, batch, count)
        for name, value in speed.items():
            results[f"model_images_per_s_{name}_{count}_threads"] = value
    results["batch"] = len(batch)
    results["threads"] = list(threads)
    results["torch_version"] = torch.__version__
    results["onnxruntime_version"] = onnxruntime.__version__
    return results


def run(settings: Settings) -> Outcome:
    """The suite's entry: the sweep preset (the tiny model with ``--tiny``), 1 thread and ``--threads``."""
    config = settings.config(epochs=TINY_EPOCHS if settings.tiny else EPOCHS)
    results = measure(config, settings.data_root, settings.scratch(NAME), sorted({1, settings.threads}))
    top = max(results["threads"])
    checks = [at_most(NAME, f"{name}: max |score - torch| on the test images", results[f"{name}_max_score_difference"],
                      PARITY_TOLERANCE) for name in ("onnx", "torchscript")]
    for runtime in ("torch", "torchscript", "onnxruntime"):
        for count in results["threads"]:
            checks.append(info(NAME, f"model images/s, {runtime}, {count} thread(s)",
                               results[f"model_images_per_s_{runtime}_{count}_threads"]))
    headline = {"deploy_torch_images_per_s": results[f"model_images_per_s_torch_{top}_threads"],
                "deploy_onnxruntime_images_per_s": results[f"model_images_per_s_onnxruntime_{top}_threads"],
                "deploy_onnx_max_score_difference": results["onnx_max_score_difference"]}
    return Outcome(headline, checks, results)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from maae.config import preset
    from maae.synthetic import embedded_data_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="maae-deploy-"))
    results = measure(preset(BENCH_PRESET).replace(epochs=args.epochs), embedded_data_root(0), work,
                      sorted({1, os.cpu_count() or 1}))
    print(pd.Series(results).to_string())
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
