"""Running a trained model on new images: scores, heatmap overlays, and a CSV (how a study's winner deploys)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maae.backbone import backbone_fingerprint, build_backbone
from maae.checkpoint import LoadedRun
from maae.data import IMAGE_EXTENSIONS, load_image
from maae.errors import MAAEError
from maae.io import write_csv_atomic
from maae.model import AnomalyMapGenerator
from maae.model.anomaly_map import image_scores
from maae.visualize import overlay, save_png, scale_map

PREDICTION_COLUMNS = ("path", "model", "score", "relative_score", "heatmap")
# An anomaly map at twice the highest score seen on normal training images is drawn at full heat.
HEAT_CEILING_FACTOR = 2.0


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files given directly or found (recursively, sorted) in given folders."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                                and not p.stem.endswith("_mask")))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise MAAEError(f"{item}: not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
            found.append(item)
        else:
            raise MAAEError(f"{item}: no such image file or folder")
    if not found:
        raise MAAEError(f"no images found in {', '.join(map(str, inputs))}")
    return found


def predict(
    run: LoadedRun, images: Sequence[Path], out_dir: Path, *, category: str | None = None,
    device: torch.device | None = None, batch_size: int | None = None,
) -> pd.DataFrame:
    """Score ``images`` with the run's model; write ``heatmaps/*.png`` and ``predictions.csv`` to ``out_dir``."""
    config = run.config
    device = device or torch.device("cpu")
    key = run.model_key(category)
    model = run.models[key].to(device).eval()
    backbone = build_backbone(config.backbone, config.backbone_weights).to(device)
    fingerprint = backbone_fingerprint(config.backbone, config.backbone_weights)
    if run.backbone_fingerprint and fingerprint != run.backbone_fingerprint:
        raise MAAEError(f"{run.path}: trained with backbone weights {run.backbone_fingerprint}, "
                        f"but {fingerprint} resolved here")
    generator = AnomalyMapGenerator(config.image_size, config.anomaly_map_sigma).to(device)
    reference = run.normal_reference.get(key, {})
    low = reference.get("map_median", 0.0)
    ceiling = reference.get("score_p99")
    out_dir = Path(out_dir)
    rows = []
    step = batch_size or config.eval_batch_size
    for start in range(0, len(images), step):
        chunk = list(images[start:start + step])
        pixels = np.stack([load_image(path, config.image_size) for path in chunk])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device)
        with torch.no_grad():
            output = model(backbone(batch))
            maps = generator(output.reconstruction, output.target)
        scores = image_scores(maps).cpu().numpy()
        maps_np = maps.cpu().numpy()
        for offset, path in enumerate(chunk):
            high = HEAT_CEILING_FACTOR * ceiling if ceiling else float(maps_np[offset].max())
            heatmap_path = out_dir / "heatmaps" / f"{start + offset:05d}_{path.stem}.png"
            save_png(heatmap_path, overlay(pixels[offset], scale_map(maps_np[offset], low, high)))
            rows.append({
                "path": str(path), "model": key, "score": float(scores[offset]),
                "relative_score": float(scores[offset] / ceiling) if ceiling else float("nan"),
                "heatmap": str(heatmap_path.relative_to(out_dir)),
            })
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    write_csv_atomic(out_dir / "predictions.csv", frame)
    return frame
