"""Benchmark 4: images/s and peak memory of ``maae.predict.predict`` at the sweep and the paper preset.

Each preset runs in a fresh Python process, so that its peak resident memory is its own: the child loads the
run, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), calls ``predict`` once (cold: it builds the
backbone, allocates its buffers, writes the heatmaps) and reads the peak (``VmHWM``); peak minus the resident
memory before the call is the memory ``predict`` needs. (``ru_maxrss`` is not used: Linux carries it over
from the forked parent across ``exec``, so a child started by a big parent reports the parent's size.)
A second call on the same images gives the steady images/s (it still rebuilds the backbone, as every call
of ``predict`` does). ``predict_images_per_s`` is the sweep preset's steady value.

- sweep: a checkpoint trained here for one epoch on cached features of the embedded set.
- paper: EfficientNet-b4 at 256 px with the paper's 18-layer auto encoder, on a few images. The hub weights
  are not reachable offline, so the backbone is a randomly initialised timm ``efficientnet_b4`` saved to a
  local file (``backbone_weights=<path>``) and the auto encoder is untrained: timing and memory do not
  depend on weight values.

Run as ``python -m benchmarks.inference --child SPEC.json`` it is the child process itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_PRESET,
    PYTHON,
    Outcome,
    Settings,
    info,
    random_backbone_checkpoint,
    run_command,
)

NAME = "inference"
PAPER_PRESET = "paper"
RANDOM_WEIGHTS_NOTE = ("paper preset: randomly initialised timm efficientnet_b4 backbone from a local file and an "
                       "untrained auto encoder; timing and memory are independent of weight values")
KIB = 1024
MIB = 1024 * 1024
CHILD_TIMEOUT_S = 900
# Writing 5 to /proc/PID/clear_refs resets the peak resident set size (VmHWM) to the current one.
CLEAR_PEAK_RSS = "5"


@dataclass(frozen=True)
class Sizes:
    sweep_categories: int
    paper_images: int
    train_epochs: int


FULL = Sizes(sweep_categories=2, paper_images=8, train_epochs=1)
TINY = Sizes(sweep_categories=1, paper_images=1, train_epochs=1)


# ------------------------------------------------------------------------------------------- parent ---

def _sweep_checkpoint(settings: Settings, sizes: Sizes, folder: Path) -> tuple[Path, list[Path]]:
    """Train the sweep preset briefly on cached features; return the run folder and the test images."""
    import torch

    from maae.data import list_samples, resolve_categories
    from maae.engine import TrainingSession, prepare_data
    from maae.run_folder import save_checkpoint

    config = settings.config(epochs=sizes.train_epochs)
    categories = resolve_categories(settings.data_root, None)[: sizes.sweep_categories]
    device = torch.device("cpu")
    data = prepare_data(config, settings.data_root, categories, device=device, cache_dir=settings.feature_cache_dir)
    session = TrainingSession(config, data, device=device)
    while session.epoch < config.epochs:
        session.train_epoch()
    save_checkpoint(folder, session)
    images = [sample.image_path for category in categories for sample in list_samples(settings.data_root,
                                                                                        category, "test")]
    return folder, images


def _paper_checkpoint(settings: Settings, sizes: Sizes, folder: Path) -> tuple[Path, list[Path]]:
    """An untrained paper-preset run over a random-init EfficientNet-b4 file; a few test images."""
    import timm
    import torch

    from maae.backbone import FEATURE_STAGES, backbone_fingerprint
    from maae.config import preset
    from maae.data import list_samples, resolve_categories
    from maae.engine import UNIFIED_KEY
    from maae.model import build_model
    from maae.run_folder import save_models

    base = preset(PAPER_PRESET)
    weights = random_backbone_checkpoint(base.backbone, settings.work_dir / f"{base.backbone}-random-init.pt")
    config = base.replace(backbone_weights=str(weights))
    channels = tuple(timm.create_model(config.backbone, pretrained=False, features_only=True,
                                       out_indices=FEATURE_STAGES).feature_info.channels())
    categories = resolve_categories(settings.data_root, None)[:1]
    torch.manual_seed(0)
    model = build_model(config, channels)
    save_models(folder, config, {UNIFIED_KEY: model}, categories=categories, stage_channels=channels,
                backbone_fingerprint=backbone_fingerprint(config.backbone, config.backbone_weights))
    images = [s.image_path for s in list_samples(settings.data_root, categories[0], "test")][: sizes.paper_images]
    return folder, images


def _run_child(settings: Settings, runs: dict[str, tuple[Path, list[Path]]]) -> dict[str, Any]:
    """One child process predicting each named run in turn; its results by name."""
    folder = settings.scratch(f"{NAME}-{'-'.join(runs)}")
    spec = {"threads": settings.threads,
            "runs": [{"name": name, "checkpoint": str(checkpoint), "images": [str(p) for p in images],
                      "out": str(folder / name)} for name, (checkpoint, images) in runs.items()]}
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    done = run_command([PYTHON, "-m", "benchmarks.inference", "--child", str(spec_file)], timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"predict child for {', '.join(runs)} failed: {done.tail()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(settings: Settings) -> Outcome:
    sizes = TINY if settings.tiny else FULL
    runs = {BENCH_PRESET: _sweep_checkpoint(settings, sizes, settings.scratch(f"{NAME}-{BENCH_PRESET}-run")),
            PAPER_PRESET: _paper_checkpoint(settings, sizes, settings.scratch(f"{NAME}-paper-run"))}
    if settings.tiny:  # one process for both (saves a Python start-up; the peak mark is reset between them)
        results = _run_child(settings, runs)
    else:  # a fresh process per preset: nothing of one preset's allocations is left for the other to reuse
        results = {name: _run_child(settings, {name: run})[name] for name, run in runs.items()}
    sweep, paper = results[BENCH_PRESET], results[PAPER_PRESET]
    paper["note"] = RANDOM_WEIGHTS_NOTE
    checks = [
        info(NAME, "sweep: images/s (steady)", sweep["images_per_second"]),
        info(NAME, "sweep: peak memory of predict", sweep["peak_delta_mib"], " MiB"),
        info(NAME, "paper: images/s (steady, random b4)", paper["images_per_second"]),
        info(NAME, "paper: peak memory of predict", paper["peak_delta_mib"], " MiB"),
    ]
    headline = {"predict_images_per_s": sweep["images_per_second"],
                "predict_peak_memory_mib": sweep["peak_delta_mib"],
                "predict_paper_images_per_s": paper["images_per_second"],
                "predict_paper_peak_memory_mib": paper["peak_delta_mib"]}
    return Outcome(headline, checks, {BENCH_PRESET: sweep, "paper": paper, "threads": settings.threads})


# -------------------------------------------------------------------------------------------- child ---

def _status_bytes(field: str) -> int:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * KIB  # the kernel writes kB
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def _reset_peak_rss() -> bool:
    """Set the peak-RSS mark to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text(CLEAR_PEAK_RSS)
    except OSError:
        return False
    return True


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Each run of ``spec``: load it, predict twice; times and peak memory by run name."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    return {run["name"]: _predict_run(run) for run in spec["runs"]}


def _predict_run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from maae.checkpoint import load_run
    from maae.predict import predict

    loaded = load_run(Path(spec["checkpoint"]))
    # maae imports timm only when a backbone is built: import it here, so that the peak below is predict's
    # working memory and not the size of a module import.
    importlib.import_module("timm")
    images = [Path(p) for p in spec["images"]]
    out = Path(spec["out"])
    reset = _reset_peak_rss()
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    predict(loaded, images, out / "cold")
    cold = time.perf_counter() - started
    peak = _status_bytes("VmHWM")
    started = time.perf_counter()
    predict(loaded, images, out / "steady")
    steady = time.perf_counter() - started
    config = loaded.config
    return {
        "images": len(images), "backbone": config.backbone, "image_size": config.image_size,
        "depth": config.depth, "hidden_dim": config.hidden_dim, "eval_batch_size": config.eval_batch_size,
        "threads": torch.get_num_threads(),
        "cold_seconds": cold, "steady_seconds": steady,
        "images_per_second": len(images) / steady, "cold_images_per_second": len(images) / cold,
        "rss_before_mib": before / MIB, "peak_rss_mib": peak / MIB, "peak_delta_mib": (peak - before) / MIB,
        "peak_method": "VmHWM after clear_refs reset" if reset else "VmHWM since process start (reset refused)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="child process of the inference benchmark")
    parser.add_argument("--child", required=True, help="JSON spec written by the parent")
    args = parser.parse_args(argv)
    result = child(json.loads(Path(args.child).read_text()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
