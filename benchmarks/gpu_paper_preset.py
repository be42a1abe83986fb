"""The paper preset on a GPU: training throughput, MFU with bf16 autocast, and Ray Train's GPU path.

    .venv/bin/python benchmarks/gpu_paper_preset.py [--steps 20] [--batch-size 64] [--skip-ray] [--out PATH]

What it measures, on the first CUDA device:

1. Training images/s of the paper preset (EfficientNet-b4 at 256 px, 18 mixed-attention layers, batch 64):
   - ``cached``: ``maae.engine.train_step`` on precomputed backbone stages (what the feature cache gives);
   - ``live``: the frozen backbone plus ``train_step`` every step (``feature_cache=False``);
   each with bf16 autocast, and ``cached`` also in fp32 for comparison.
2. Achieved TFLOP/s (``FlopCounterMode`` FLOPs of one step / median step time) against the card's measured
   bf16 matmul rate (8192^3, same run): the model FLOP utilisation (MFU).
3. A tiny Ray Train ``TorchTrainer`` (1 worker, ``use_gpu=True``, NCCL backend) whose worker trains one epoch
   of maae's ``TrainingSession`` (quick preset, a small generated data set): proves the Ray Train GPU path.

The hub's b4 weights are not needed: the backbone is a randomly initialised timm ``efficientnet_b4`` saved to a
local file (``backbone_weights=<path>``); the inputs are random images. Speed does not depend on either.
Results go to ``benchmarks/results/gpu-<date>.json``. Without a CUDA GPU the script says so and exits with 0
having done nothing. ``--cpu-dry-run`` runs the same code on the CPU with tiny sizes (a check of the code
path, not a benchmark).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/ itself
    _SCRIPT_DIR = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _SCRIPT_DIR]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

NO_GPU_MESSAGE = ("gpu_paper_preset: no CUDA GPU is available (torch.cuda.is_available() is False); nothing was "
                  "measured. Run this script on a machine with an NVIDIA GPU.")
PAPER_PRESET = "paper"
RAY_CHECK_PRESET = "quick"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_MATMUL_SIZE = 8192
CPU_MATMUL_SIZE = 1024
MATMUL_REPEATS = 10
WARMUP_STEPS = 3
TERA = 1e12
MIB = 1024 * 1024
SEED = 0
# The data set of the Ray Train check: a few images per category at the quick preset's input size.
RAY_DATA = dict(train_per_category=16, test_good=4, test_per_defect=2, image_size=128)
RAY_CATEGORIES = 1
EXIT_FAILED = 1


@dataclass(frozen=True)
class Sizes:
    batch_size: int
    steps: int
    image_size: int
    depth: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_paper_preset.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per mode (default 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64, the paper's)")
    parser.add_argument("--skip-ray", action="store_true", help="skip the Ray Train TorchTrainer check")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/gpu-<YYYY-MM-DD>.json)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the code path on the CPU with tiny sizes (a check of this script, not a benchmark)")
    return parser


# ------------------------------------------------------------------------------------------ training ---

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    samples = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2]


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """The measured rate of a large ``size x size`` matmul in ``dtype`` (TFLOP/s, median of repeats)."""
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    for _ in range(WARMUP_STEPS):
        torch.mm(left, right)
    seconds = _median_seconds(lambda: torch.mm(left, right), MATMUL_REPEATS, device)
    return 2 * size ** 3 / seconds / TERA


def measure_training(device: torch.device, sizes: Sizes, work_dir: Path) -> dict[str, Any]:
    """Images/s, FLOPs and MFU of the paper preset's training step, cached and live, bf16 and fp32."""
    from benchmarks.common import count_flops, random_backbone_checkpoint
    from maae.backbone import build_backbone
    from maae.config import preset
    from maae.engine import build_optimizers, train_step
    from maae.model import build_model

    base = preset(PAPER_PRESET)
    weights = random_backbone_checkpoint(base.backbone, work_dir / f"{base.backbone}-random-init.pt")
    config = base.replace(backbone_weights=str(weights), batch_size=sizes.batch_size, image_size=sizes.image_size,
                          depth=sizes.depth, residual_every=min(base.residual_every, sizes.depth))
    backbone = build_backbone(config.backbone, config.backbone_weights).to(device)
    torch.manual_seed(SEED)
    images = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():
        cached_stages = [stage.float() for stage in backbone(images)]

    def autocast(enabled: bool) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()

    def mode(live: bool, bf16: bool) -> dict[str, Any]:
        torch.manual_seed(SEED)
        model = build_model(config, backbone.channels).to(device)
        optimizers = build_optimizers(model, config)

        def step() -> dict[str, float]:
            with autocast(bf16):
                if live:
                    with torch.no_grad():
                        stages = [stage.float() for stage in backbone(images)]
                else:
                    stages = cached_stages
                return train_step(model, optimizers, stages, config)

        for _ in range(WARMUP_STEPS):
            step()
        flops, by_op = count_flops(step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _median_seconds(step, sizes.steps, device)
        result = {"step_seconds": seconds, "images_per_second": config.batch_size / seconds,
                  "flops_per_step": flops, "achieved_tflops": flops / seconds / TERA, "flops_by_op": by_op,
                  "loss_after": step()["loss"]}
        if device.type == "cuda":
            result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        return result

    modes = {"cached_bf16": mode(live=False, bf16=True), "live_bf16": mode(live=True, bf16=True),
             "cached_fp32": mode(live=False, bf16=False)}
    size = GPU_MATMUL_SIZE if device.type == "cuda" else CPU_MATMUL_SIZE
    peak_bf16 = matmul_tflops(device, torch.bfloat16, size)
    peak_fp32 = matmul_tflops(device, torch.float32, size)
    for name, result in modes.items():
        peak = peak_fp32 if name.endswith("fp32") else peak_bf16
        result["mfu"] = result["achieved_tflops"] / peak
    return {
        "config": {k: getattr(config, k) for k in ("backbone", "image_size", "batch_size", "depth", "hidden_dim",
                                                    "num_heads", "dilation")},
        "backbone_weights": "randomly initialised timm efficientnet_b4 from a local file (speed does not depend "
                            "on weight values); random input images",
        "matmul_tflops": {"bf16": peak_bf16, "fp32": peak_fp32, "size": size},
        "modes": modes,
    }


# ----------------------------------------------------------------------------------------- Ray Train ---

def _ray_train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: one epoch of maae's TrainingSession on the worker's device."""
    import ray.train
    import ray.train.torch

    from maae.config import MAAEConfig
    from maae.engine import TrainingSession, prepare_data

    device = ray.train.torch.get_device()
    config = MAAEConfig.from_dict(loop_config["config"], source="gpu check config")
    data = prepare_data(config, Path(loop_config["data_root"]), loop_config["categories"], device=device,
                        cache_dir=Path(loop_config["cache_dir"]))
    session = TrainingSession(config, data, device=device, wrap_model=ray.train.torch.prepare_model)
    stats = session.train_epoch()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    metrics = {
        "loss": stats.loss, "images_per_second": stats.images_per_second, "device": str(device),
        "backend": torch.distributed.get_backend() if distributed else None,
        "world_size": torch.distributed.get_world_size() if distributed else 1,
        "model_device": str(next(session.core_model(next(iter(session.models))).parameters()).device),
        "torch_threads": torch.get_num_threads(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    # Ray Train keeps the metrics of reports that carry a checkpoint: attach a small one.
    with tempfile.TemporaryDirectory(prefix="maae-gpu-check-") as folder:
        (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train_check(use_gpu: bool, work_dir: Path) -> dict[str, Any]:
    """Fit a 1-worker TorchTrainer (NCCL on GPU, gloo on CPU) around maae's TrainingSession."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from maae.config import preset
    from maae.synthetic import generate_dataset
    from study.tune import cluster

    data_root = work_dir / "ray-data"
    categories = generate_dataset(data_root, seed=SEED, **RAY_DATA)[:RAY_CATEGORIES]
    config = preset(RAY_CHECK_PRESET).replace(epochs=1, image_size=RAY_DATA["image_size"])
    backend = "nccl" if use_gpu else "gloo"
    started = time.perf_counter()
    # A private local Ray, started the way study/run.py starts one (never an address left by another session).
    env_vars = {**cluster.STUDY_ENV, **cluster.LOCAL_ENV, "PYTHONPATH": str(REPO_ROOT)}
    os.environ.update({key: value for key, value in env_vars.items() if key != "PYTHONPATH"})
    cluster.start_local(os.cpu_count() or 1, env_vars)
    try:
        trainer = TorchTrainer(
            _ray_train_loop,
            train_loop_config={"config": config.to_dict(), "data_root": str(data_root), "categories": categories,
                               "cache_dir": str(work_dir / "ray-feature-cache")},
            torch_config=TorchConfig(backend=backend),
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu),
            run_config=ray.train.RunConfig(name="maae-gpu-check", storage_path=str(work_dir / "ray-train")),
        )
        result = trainer.fit()
    finally:
        ray.shutdown()
    metrics = dict(result.metrics or {})
    passed = metrics.get("backend") == backend and (not use_gpu or str(metrics.get("device", "")).startswith("cuda"))
    return {"requested_backend": backend, "use_gpu": use_gpu, "metrics": metrics, "seconds":
            time.perf_counter() - started, "passed": passed}


# ------------------------------------------------------------------------------------------------ main ---

def _summary(results: dict[str, Any]) -> str:
    lines = []
    training = results.get("training", {})
    for name, mode in training.get("modes", {}).items():
        lines.append(f"{name:12s} {mode['images_per_second']:9.1f} img/s  {mode['achieved_tflops']:8.2f} TFLOP/s  "
                     f"MFU {100 * mode['mfu']:5.1f}%")
    if "matmul_tflops" in training:
        peaks = training["matmul_tflops"]
        lines.append(f"matmul {peaks['size']}^3: bf16 {peaks['bf16']:.1f} TFLOP/s, fp32 {peaks['fp32']:.1f} TFLOP/s")
    ray_check = results.get("ray_train")
    if ray_check:
        verdict = "ok" if ray_check.get("passed") else "FAILED"
        lines.append(f"Ray Train check ({ray_check.get('requested_backend')}): {verdict} "
                     f"{ray_check.get('metrics') or ray_check.get('error')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        print("error: --steps and --batch-size expect integers >= 1", file=sys.stderr)
        return 2
    if args.cpu_dry_run:
        device = torch.device("cpu")
        sizes = Sizes(batch_size=2, steps=1, image_size=64, depth=1)
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        sizes = Sizes(batch_size=args.batch_size, steps=args.steps, image_size=256, depth=18)
    else:
        print(NO_GPU_MESSAGE)
        return 0

    from maae.io import write_json_atomic

    today = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS_DIR / f"gpu-{today}.json"
    results: dict[str, Any] = {
        "date": today, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": bool(args.cpu_dry_run),
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="maae-gpu-bench-") as scratch:
        work_dir = Path(scratch)
        try:
            results["training"] = measure_training(device, sizes, work_dir)
        except Exception as err:  # noqa: BLE001 - report it, still try the Ray check
            traceback.print_exc()
            results["training"] = {"error": f"{type(err).__name__}: {err}"}
            failed = True
        if not args.skip_ray:
            try:
                results["ray_train"] = ray_train_check(device.type == "cuda", work_dir)
                failed = failed or not results["ray_train"]["passed"]
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                results["ray_train"] = {"error": f"{type(err).__name__}: {err}", "passed": False}
                failed = True
    from benchmarks.common import finite

    write_json_atomic(out, finite(results))
    print(_summary(results))
    print(f"written: {out}")
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
